//! Who answers: ping, an ARP prober and an IPv6 Neighbor Solicitation prober that report every responder, and the
//! neighbour table.
//!
//! The ARP prober uses its own AF_PACKET socket instead of `arping`: it waits the whole window and reports every
//! MAC that answered, so two nodes claiming the VIP at once (a split brain) show up as two answers rather than
//! whichever came first.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::frames;
use crate::netns;
use crate::topology::MacAddr;

/// One ICMP echo from namespace `ns` to `addr`, waiting at most 1 s.
///
/// # Errors
/// When no reply arrives; the error holds ping's output.
pub fn ping(ns: &str, addr: Ipv4Addr) -> Result<()> {
    cmd::exec_in(ns, ["ping", "-c", "1", "-W", "1", "-q", &addr.to_string()])
        .with_context(|| format!("ping {addr} from {ns}"))
        .map(drop)
}

/// The MAC `ns` has in its neighbour table for `addr` on `iface`, if any (any state but FAILED/INCOMPLETE).
///
/// # Errors
/// When `ip neigh` fails.
pub fn neighbour(ns: &str, iface: &str, addr: Ipv4Addr) -> Result<Option<MacAddr>> {
    let out = cmd::ip_in(ns, ["neigh", "show", &addr.to_string(), "dev", iface])?;
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word == "lladdr" {
            return words.next().map(str::parse).transpose();
        }
    }
    Ok(None)
}

/// Empties `ns`'s neighbour table on `iface`, so the next packet to the VIP triggers a fresh ARP request.
///
/// # Errors
/// When `ip neigh flush` fails.
pub fn flush_neighbours(ns: &str, iface: &str) -> Result<()> {
    cmd::ip_in(ns, ["neigh", "flush", "dev", iface]).map(drop)
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// Sends an ARP request for `target` out of `iface` in namespace `ns` (from that interface's own MAC and IPv4
/// address, like a normal client) and returns every distinct sender MAC that replied within `window`, in order
/// of arrival. A second request goes out halfway through the window in case the first one was lost.
///
/// # Errors
/// When the namespace or the interface cannot be used.
pub fn arp_probe(ns: &str, iface: &str, target: Ipv4Addr, window: Duration) -> Result<Vec<MacAddr>> {
    let iface = iface.to_owned();
    netns::in_netns(ns, move || {
        let socket = PacketSocket::open(&iface)?;
        let request = arp_request(socket.mac, socket.ip, target);
        answers_within(&socket, &request, window, |frame| parse_reply(frame, target))
    })
}

/// Sends `request` on `socket`, again halfway through `window`, and returns every distinct MAC that `answer` finds
/// in the frames received within `window`, in order of arrival.
fn answers_within(
    socket: &PacketSocket,
    request: &[u8],
    window: Duration,
    answer: impl Fn(&[u8]) -> Option<MacAddr>,
) -> Result<Vec<MacAddr>> {
    let start = Instant::now();
    socket.send(request)?;
    let mut resent = false;
    let mut answers: Vec<MacAddr> = Vec::new();
    let mut buf = [0u8; 1600];
    loop {
        let now = start.elapsed();
        if now >= window {
            break;
        }
        if !resent && now >= window / 2 {
            socket.send(request)?;
            resent = true;
        }
        let next_event = if resent { window } else { window / 2 };
        let wait = next_event.saturating_sub(now).max(Duration::from_millis(1));
        let Some(len) = socket.recv(&mut buf, wait)? else { continue };
        if let Some(sender) = answer(&buf[..len])
            && !answers.contains(&sender)
        {
            answers.push(sender);
        }
    }
    Ok(answers)
}

/// Sends a Neighbor Solicitation for `target` out of `iface` in namespace `ns` (from `source`, an address of that
/// interface, to `target`'s solicited-node group, with the interface's MAC as source link-layer address) and
/// returns every distinct MAC that advertised `target` within `window`, in order of arrival: the IPv6 counterpart
/// of [`arp_probe`]. A second solicitation goes out halfway through the window.
///
/// # Errors
/// When the namespace or the interface cannot be used.
pub fn ns_probe(ns: &str, iface: &str, source: Ipv6Addr, target: Ipv6Addr, window: Duration) -> Result<Vec<MacAddr>> {
    let iface = iface.to_owned();
    netns::in_netns(ns, move || {
        let socket = PacketSocket::open_ipv6(&iface)?;
        let request = neighbor_solicitation(socket.mac, source, target);
        answers_within(&socket, &request, window, |frame| parse_advertisement(frame, target))
    })
}

/// Sends an ARP request for `target` every `period` for `duration` and returns, for each request, every distinct
/// MAC that answered before the next one went out: two nodes answering for the VIP at any moment show as a
/// request with two answers.
///
/// # Errors
/// When the namespace or the interface cannot be used.
pub fn arp_watch(ns: &str, iface: &str, target: Ipv4Addr, period: Duration, duration: Duration) -> Result<ArpRounds> {
    let iface = iface.to_owned();
    netns::in_netns(ns, move || {
        let socket = PacketSocket::open(&iface)?;
        let start = Instant::now();
        watch_rounds(&socket, target, period, start, || start.elapsed() >= duration)
    })
}

/// One request every `period` until `done`; the answers to each (see [`arp_watch`]), timed from `start`.
fn watch_rounds(
    socket: &PacketSocket,
    target: Ipv4Addr,
    period: Duration,
    start: Instant,
    done: impl Fn() -> bool,
) -> Result<ArpRounds> {
    let request = arp_request(socket.mac, socket.ip, target);
    let mut rounds = Vec::new();
    let mut buf = [0u8; 1600];
    while !done() {
        let sent = start.elapsed();
        socket.send(&request)?;
        let mut answers: Vec<MacAddr> = Vec::new();
        let until = sent + period;
        loop {
            let now = start.elapsed();
            if now >= until {
                break;
            }
            let Some(len) = socket.recv(&mut buf, until - now)? else { continue };
            if let Some(sender) = parse_reply(&buf[..len], target)
                && !answers.contains(&sender)
            {
                answers.push(sender);
            }
        }
        rounds.push((sent, answers));
    }
    Ok(rounds)
}

/// Every round of an ARP watch: when its request went out (from the watch's start) and the distinct MACs that
/// answered it.
pub type ArpRounds = Vec<(Duration, Vec<MacAddr>)>;

/// [`arp_watch`] in the background until stopped, for runs whose length is not known in advance (the soak).
#[derive(Debug)]
pub struct ArpWatch {
    stop: Arc<AtomicBool>,
    started_at: Instant,
    thread: Option<JoinHandle<Result<ArpRounds>>>,
}

impl ArpWatch {
    /// Starts asking from `iface` of namespace `ns` who has `target`, every `period`.
    ///
    /// # Errors
    /// When the thread cannot be started; a namespace or socket failure comes back from [`stop`](Self::stop).
    pub fn start(ns: &str, iface: &str, target: Ipv4Addr, period: Duration) -> Result<ArpWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let iface = iface.to_owned();
        let started_at = Instant::now();
        let thread = netns::spawn_in_netns(ns, move || {
            let socket = PacketSocket::open(&iface)?;
            watch_rounds(&socket, target, period, started_at, || flag.load(Ordering::Relaxed))
        })?;
        Ok(ArpWatch { stop, started_at, thread: Some(thread) })
    }

    /// The instant the rounds' times count from.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Stops and returns every round: when its request went out and the distinct MACs that answered it.
    ///
    /// # Errors
    /// When the watch could not enter the namespace or use the interface.
    pub fn stop(mut self) -> Result<ArpRounds> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or_else(|| anyhow::anyhow!("ARP watch already stopped"))?;
        match thread.join() {
            Ok(rounds) => rounds,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for ArpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn arp_request(mac: MacAddr, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// The sender MAC of an ARP reply about `target`, if `frame` is one.
fn parse_reply(frame: &[u8], target: Ipv4Addr) -> Option<MacAddr> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[14..];
    if arp[6..8] != ARP_REPLY.to_be_bytes() || arp[14..18] != target.octets() {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&arp[8..14]);
    Some(MacAddr(mac))
}

/// An Ethernet frame with a Neighbor Solicitation for `target` from `mac`/`source` to `target`'s solicited-node
/// group (hop limit 255, source link-layer address option).
fn neighbor_solicitation(mac: MacAddr, source: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let (group, group_mac) = frames::solicited_node(target);
    let message = frames::icmp6(source, group, frames::neighbor_solicitation(target, Some(mac.0)));
    let mut frame = frames::eth(group_mac, mac.0, ETH_P_IPV6);
    frame.extend_from_slice(&frames::ipv6(source, group, 58, 255, &message));
    frame
}

/// The MAC a Neighbor Advertisement for `target` announces (its target link-layer address option, else its
/// Ethernet source), if `frame` is one: Ethernet + IPv6 without extension headers + ICMPv6 type 136.
fn parse_advertisement(frame: &[u8], target: Ipv6Addr) -> Option<MacAddr> {
    if frame.len() < 78 || frame[12..14] != ETH_P_IPV6.to_be_bytes() || frame[20] != 58 || frame[54] != 136 {
        return None;
    }
    if frame[62..78] != target.octets() {
        return None;
    }
    let mut mac = [0u8; 6];
    match frame.get(78..86) {
        Some(option) if option[0] == 2 && option[1] == 1 => mac.copy_from_slice(&option[2..8]),
        _ => mac.copy_from_slice(&frame[6..12]),
    }
    Some(MacAddr(mac))
}

/// An AF_PACKET socket bound to one interface for ARP frames (or IPv6 ones, [`PacketSocket::open_ipv6`]), with
/// that interface's MAC and first IPv4 address.
pub(crate) struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    mac: MacAddr,
    ip: Ipv4Addr,
}

impl PacketSocket {
    fn open(iface: &str) -> Result<Self> {
        Self::open_for(iface, ETH_P_ARP)
    }

    fn open_ipv6(iface: &str) -> Result<Self> {
        Self::open_for(iface, ETH_P_IPV6)
    }

    /// Bound to `iface` for frames of `ether_type` (`ETH_P_ALL`, 3, for every frame).
    pub(crate) fn open_for(iface: &str, ether_type: u16) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {iface}"));
        }
        let (mac, ip) = interface_addresses(iface)?;
        let protocol = ether_type.to_be();
        // SAFETY: plain syscall.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(protocol)) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; we fill the fields bind needs.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("binding a packet socket to {iface}"));
        }
        Ok(PacketSocket { fd, mac, ip })
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sending on the packet socket");
        }
        Ok(())
    }

    /// One frame, or `None` when nothing arrived within `timeout`.
    pub(crate) fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        use std::os::fd::AsRawFd;
        let mut pollfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, ms) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(err).context("poll on the packet socket");
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(err).context("receiving on the packet socket");
        }
        Ok(Some(n as usize))
    }
}

/// The MAC and IPv4 address of `iface` in the calling thread's namespace (SIOCGIFHWADDR, SIOCGIFADDR).
fn interface_addresses(iface: &str) -> Result<(MacAddr, Ipv4Addr)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if iface.len() >= libc::IFNAMSIZ {
        bail!("interface name {iface:?} is too long");
    }
    // SAFETY: plain syscall.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET)");
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = |code: libc::Ioctl| -> Result<libc::ifreq> {
        // SAFETY: a zeroed ifreq is valid; the name fits (checked above) and stays NUL-terminated.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: ifr is a valid ifreq for these two requests.
        if unsafe { libc::ioctl(fd.as_raw_fd(), code, &raw mut ifr) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("ioctl {code:#x} on {iface}"));
        }
        Ok(ifr)
    };
    let hw = request(libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    let inet = request(libc::SIOCGIFADDR).with_context(|| format!("{iface} has no IPv4 address"))?;
    // SAFETY: SIOCGIFADDR filled ifru_addr with a sockaddr_in.
    let sin: libc::sockaddr_in = unsafe { std::mem::transmute_copy(&inet.ifr_ifru.ifru_addr) };
    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok((MacAddr(mac), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_recognised_only_for_the_target() {
        let target = Ipv4Addr::new(10, 77, 1, 250);
        let responder = MacAddr([2, 0x77, 1, 0, 0, 1]);
        let mut reply = arp_request(responder, target, Ipv4Addr::new(10, 77, 1, 10));
        reply[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        assert_eq!(parse_reply(&reply, target), Some(responder));
        assert_eq!(parse_reply(&reply, Ipv4Addr::new(10, 77, 1, 251)), None);
        let request = arp_request(responder, Ipv4Addr::new(10, 77, 1, 10), target);
        assert_eq!(parse_reply(&request, target), None, "a request is not an answer");
    }

    #[test]
    fn advertisement_is_recognised_only_for_the_target() {
        let target = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x250);
        let client = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x10);
        let responder = MacAddr([2, 0x77, 1, 0, 0, 1]);
        let advertise = |target: Ipv6Addr, tlla: [u8; 6]| {
            let message = frames::icmp6(target, client, frames::neighbor_advertisement(target, 0x60, tlla));
            let mut frame = frames::eth([2, 0x77, 1, 0, 0, 0x10], [2, 0, 0, 0, 0, 0x99], ETH_P_IPV6);
            frame.extend_from_slice(&frames::ipv6(target, client, 58, 255, &message));
            frame
        };
        assert_eq!(parse_advertisement(&advertise(target, responder.0), target), Some(responder), "from the option");
        let other = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x251);
        assert_eq!(parse_advertisement(&advertise(other, responder.0), target), None);
        let solicitation = neighbor_solicitation(responder, client, target);
        assert_eq!(parse_advertisement(&solicitation, target), None, "a solicitation is not an answer");
        // The solicitation itself: to the solicited-node group's MAC, hop limit 255, a valid checksum.
        assert_eq!(solicitation[..6], [0x33, 0x33, 0xff, 0, 0x02, 0x50]);
        assert_eq!(solicitation[21], 255);
        assert!(frames::icmp6_ok(&solicitation));
    }
}
