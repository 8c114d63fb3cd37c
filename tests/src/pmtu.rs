//! Path MTU discovery through the lab, IPv4 and IPv6: capture a real TCP packet of a connection on a host's
//! `eth0`, move its sequence number to what its sender has in flight, quote it in an ICMP "fragmentation needed"
//! (IPv4, RFC 1191) or ICMPv6 Packet Too Big (RFC 4443 §3.2) sent as a raw frame from a host, and read the path MTU
//! the receiving kernel then holds (`ip route get`). Used by `hostile6` and `pmtu`.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Lab, cmd, extra::RawSocket, frames, http, netns};

const ETH_LEN: usize = 14;
const PROTO_TCP: u8 = 6;

/// The TCP endpoints (source, destination) of an Ethernet frame carrying IPv4 (any header length) or IPv6 (TCP
/// straight after the fixed header), or `None` for anything else or a frame too short for the ports.
pub fn tcp_endpoints(frame: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let packet = frame.get(ETH_LEN..)?;
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        frames::ETH_IPV4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != PROTO_TCP {
                return None;
            }
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into(), packet.get(ihl..)?)
        }
        frames::ETH_IPV6 => {
            if *packet.get(6)? != PROTO_TCP {
                return None;
            }
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into(), packet.get(40..)?)
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

/// Captures, on `eth0` of `ns`, the TCP frames from `src` port `sport` (any port: `None`) to `dst` (any port)
/// that arrive while `work` runs, and for 300 ms after (the last ACKs).
///
/// # Panics
/// When the capture cannot start (a broken lab).
pub fn sniff<T: Send>(
    ns: &str,
    (src, sport): (IpAddr, Option<u16>),
    dst: IpAddr,
    work: impl FnOnce() -> T,
) -> (T, Vec<Vec<u8>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let flag = stop.clone();
    let capture = netns::spawn_in_netns(ns, move || {
        let socket = RawSocket::open("eth0")?;
        ready_tx.send(())?;
        let mut frames = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            if let Some(frame) = socket.recv()
                && let Some((from, to)) = tcp_endpoints(&frame)
                && from.ip() == src
                && sport.is_none_or(|p| from.port() == p)
                && to.ip() == dst
            {
                frames.push(frame);
            }
        }
        Ok(frames)
    })
    .expect("capture thread");
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("capture started");
    let out = work();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    (out, capture.join().expect("capture thread").expect("capture"))
}

/// The IP packet of the last frame `sniff` saw.
///
/// # Panics
/// When it saw none.
pub fn last_packet(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.last().map(|f| f[ETH_LEN..].to_vec()).expect("a captured packet")
}

/// `packet` (IPv4 or IPv6 + TCP, as captured) with its sequence number moved past its own payload (and SYN/FIN):
/// the sender's next sequence number, which its kernel accepts in an ICMP error about the flow (RFC 5927 §4.1:
/// Linux checks that the quoted sequence number is in flight), the TCP checksum recomputed. Bytes past the IP
/// packet's length (Ethernet padding) are cut off.
///
/// # Errors
/// When `packet` is not a whole IPv4/IPv6 TCP packet.
pub fn at_next_sequence(packet: &[u8]) -> Result<Vec<u8>> {
    let (header, total) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 && packet[9] == PROTO_TCP => {
            (usize::from(packet[0] & 0x0f) * 4, usize::from(u16::from_be_bytes([packet[2], packet[3]])))
        }
        Some(6) if packet.len() >= 40 && packet[6] == PROTO_TCP => {
            (40, 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]])))
        }
        _ => bail!("not an IPv4 or IPv6 TCP packet"),
    };
    let mut packet = packet.get(..total).context("a packet shorter than its IP length")?.to_vec();
    let tcp = packet.get_mut(header..).filter(|t| t.len() >= 20).context("no whole TCP header")?;
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let payload = tcp.len().checked_sub(data_offset).context("TCP data offset beyond the packet")?;
    let consumed = u32::try_from(payload)? + u32::from(tcp[13] & (frames::TCP_SYN | frames::TCP_FIN) != 0);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_add(consumed);
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[16..18].copy_from_slice(&[0, 0]);
    let checksum = if header == 40 {
        let address = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&packet[at..at + 16]).unwrap_or_default());
        frames::l4_checksum6(address(8), address(24), PROTO_TCP, &packet[40..])
    } else {
        // The IPv4 pseudo-header (RFC 793 §3.1): source, destination, zero, protocol, TCP length.
        let mut pseudo = packet[12..20].to_vec();
        pseudo.extend_from_slice(&[0, PROTO_TCP]);
        pseudo.extend_from_slice(&u16::try_from(total - header)?.to_be_bytes());
        pseudo.extend_from_slice(&packet[header..]);
        frames::checksum(&pseudo)
    };
    packet[header + 16..header + 18].copy_from_slice(&checksum.to_be_bytes());
    Ok(packet)
}

/// An Ethernet frame with the ICMP error that announces next-hop MTU `mtu` for `quoted`, from `src` to `dst`:
/// for IPv4 destination unreachable, fragmentation needed (type 3 code 4, RFC 1191), for IPv6 Packet Too Big.
/// Header and ICMP checksums are correct.
///
/// # Errors
/// When `src` and `dst` are of different families.
pub fn too_big(
    to_mac: [u8; 6],
    from_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    mtu: u16,
    quoted: &[u8],
) -> Result<Vec<u8>> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let [hi, lo] = mtu.to_be_bytes();
            Ok(frames::icmp_error_frame(to_mac, from_mac, src, dst, 3, 4, [0, 0, hi, lo], quoted))
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut message = vec![2, 0, 0, 0];
            message.extend_from_slice(&u32::from(mtu).to_be_bytes());
            message.extend_from_slice(quoted);
            let message = frames::icmp6(src, dst, message);
            let mut frame = frames::eth(to_mac, from_mac, frames::ETH_IPV6);
            frame.extend_from_slice(&frames::ipv6(src, dst, 58, 64, &message));
            Ok(frame)
        }
        _ => bail!("an ICMP error from {src} to {dst}: mixed families"),
    }
}

/// Sends one raw Ethernet frame out of `eth0` of `ns`.
///
/// # Panics
/// When it cannot (a broken lab).
pub fn send_frame(ns: &str, frame: Vec<u8>) {
    netns::in_netns(ns, move || RawSocket::open("eth0")?.send(&frame)).expect("sending a frame");
}

/// The path MTU `ns`'s kernel holds for `destination` (`ip route get`: `mtu N` once an ICMP error made a route
/// exception), or `None`.
///
/// # Panics
/// When `ip route get` fails (a broken lab).
pub fn path_mtu(ns: &str, destination: IpAddr) -> Option<u32> {
    let family = if destination.is_ipv4() { "-4" } else { "-6" };
    let route = cmd::ip_in(ns, [family, "route", "get", &destination.to_string()]).expect("ip route get");
    mtu_of(&route)
}

/// The number after the word `mtu` in `ip route get`'s answer.
fn mtu_of(route: &str) -> Option<u32> {
    let mut words = route.split_whitespace();
    while let Some(word) = words.next() {
        if word == "mtu" {
            return words.next().and_then(|m| m.parse().ok());
        }
    }
    None
}

/// Waits up to 2 s for `ns`'s kernel to hold path MTU `mtu` for `destination`; what it holds then.
pub fn wait_path_mtu(ns: &str, destination: IpAddr, mtu: u16) -> Option<u32> {
    let start = Instant::now();
    loop {
        let held = path_mtu(ns, destination);
        if held == Some(u32::from(mtu)) || start.elapsed() > Duration::from_secs(2) {
            return held;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A keep-alive connection from the lab's client to a target, one request answered, then idle (nothing in
/// flight) until [`finish`](Self::finish).
pub struct IdleConnection {
    /// The client's end.
    pub local: SocketAddr,
    done: mpsc::Sender<()>,
    client: JoinHandle<Result<bool>>,
}

impl IdleConnection {
    /// Opens it and waits for the first answer.
    ///
    /// # Panics
    /// When the connection or its first request fails within 5 s.
    pub fn open(lab: &Lab, target: SocketAddr) -> Self {
        let (local_tx, local_rx) = mpsc::channel();
        let (done, done_rx) = mpsc::channel::<()>();
        let client = netns::spawn_in_netns(&lab.client().ns, move || {
            let mut conn = http::Connection::open(target, Duration::from_secs(2))?;
            conn.get("/", Duration::from_secs(2))?;
            local_tx.send(conn.local_addr()?)?;
            let _ = done_rx.recv();
            Ok(conn.get("/", Duration::from_secs(2)).is_ok())
        })
        .expect("client thread");
        let local = local_rx.recv_timeout(Duration::from_secs(5)).expect("the client's first request answered");
        IdleConnection { local, done, client }
    }

    /// Makes one more request on the connection: whether it was answered.
    ///
    /// # Panics
    /// When the client thread failed.
    pub fn finish(self) -> bool {
        drop(self.done);
        self.client.join().expect("client thread").expect("client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 250);

    fn tcp4(flags: u8, payload: &[u8]) -> Vec<u8> {
        frames::tcp_frame([2; 6], [4; 6], A, B, 40000, 80, flags, payload)
    }

    #[test]
    fn tcp_endpoints_of_both_families_and_nothing_else() {
        let (a, b) = (SocketAddr::from((A, 40000)), SocketAddr::from((B, 80)));
        assert_eq!(tcp_endpoints(&tcp4(frames::TCP_ACK, b"")), Some((a, b)));
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = ("fd00:77::10".parse().expect("addr"), "fd00:77::250".parse().expect("a"));
        let mut six = frames::eth([2; 6], [4; 6], frames::ETH_IPV6);
        six.extend_from_slice(&frames::ipv6(s6, d6, 6, 64, &frames::tcp6(s6, d6, 1, 2, frames::TCP_ACK, b"")));
        assert_eq!(tcp_endpoints(&six), Some((SocketAddr::from((s6, 1)), SocketAddr::from((d6, 2)))));
        let udp = frames::udp_frame([2; 6], [4; 6], A, B, 1, 2, b"x");
        assert_eq!(tcp_endpoints(&udp), None, "UDP");
        assert_eq!(tcp_endpoints(&tcp4(frames::TCP_ACK, b"")[..35]), None, "truncated before the ports");
        assert_eq!(tcp_endpoints(&[]), None);
    }

    #[test]
    fn the_next_sequence_skips_the_payload_and_syn_and_keeps_the_checksum_right() {
        // The fixture's sequence number is 0x01020304.
        for (flags, payload, next) in [
            (frames::TCP_ACK, &b""[..], 0x0102_0304u32),
            (frames::TCP_ACK | frames::TCP_PSH, &b"hello"[..], 0x0102_0309),
            (frames::TCP_SYN, &b""[..], 0x0102_0305),
        ] {
            let mut frame = tcp4(flags, payload);
            frame.extend_from_slice(&[0; 6]); // Ethernet padding
            let moved = at_next_sequence(&frame[14..]).expect("a TCP packet");
            assert_eq!(moved.len(), frame.len() - 14 - 6, "padding cut off");
            assert_eq!(moved[24..28], next.to_be_bytes(), "flags {flags:#x}, {} bytes", payload.len());
            let mut check = frames::eth([2; 6], [4; 6], frames::ETH_IPV4);
            check.extend_from_slice(&moved);
            assert!(frames::ipv4_header_ok(&check) && frames::l4_ok(&check), "checksums of {moved:02x?}");
        }
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = ("fd00:77::10".parse().expect("addr"), "fd00:77::250".parse().expect("a"));
        let six = frames::ipv6(s6, d6, 6, 64, &frames::tcp6(s6, d6, 1, 2, frames::TCP_FIN | frames::TCP_ACK, b"ab"));
        let moved = at_next_sequence(&six).expect("a TCP packet");
        assert_eq!(moved[44..48], 0x0102_0307u32.to_be_bytes());
        assert_eq!(frames::l4_checksum6(s6, d6, 6, &moved[40..]), 0, "the TCP checksum verifies");
        assert!(at_next_sequence(&frames::ipv4(A, B, 17, &[0; 8])).is_err(), "UDP");
        assert!(at_next_sequence(&tcp4(frames::TCP_ACK, b"")[14..30]).is_err(), "truncated");
    }

    #[test]
    fn too_big_is_fragmentation_needed_over_ipv4_and_packet_too_big_over_ipv6() {
        let quoted = &tcp4(frames::TCP_ACK, b"")[14..];
        let v4 = too_big([2; 6], [4; 6], B.into(), A.into(), 1200, quoted).expect("IPv4");
        assert_eq!(v4[34..42], [3, 4, v4[36], v4[37], 0, 0, 0x04, 0xb0], "type 3 code 4, next-hop MTU 1200");
        assert!(frames::ipv4_header_ok(&v4) && frames::icmp_ok(&v4));
        assert_eq!(&v4[42..], quoted);
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = ("fd00:77::10".parse().expect("addr"), "fd00:77::250".parse().expect("a"));
        let v6 = too_big([2; 6], [4; 6], s6.into(), d6.into(), 1280, b"quoted").expect("IPv6");
        assert_eq!(v6[54..62], [2, 0, v6[56], v6[57], 0, 0, 0x05, 0x00], "Packet Too Big, MTU 1280");
        assert!(frames::icmp6_ok(&v6));
        assert!(too_big([2; 6], [4; 6], A.into(), d6.into(), 1280, b"").is_err(), "mixed families");
    }

    #[test]
    fn the_mtu_is_read_from_the_route_cache_line() {
        let cached = "10.77.1.250 dev eth0 src 10.77.1.10 uid 0 \n    cache expires 597sec mtu 1200 \n";
        assert_eq!(mtu_of(cached), Some(1200));
        assert_eq!(mtu_of("10.77.1.250 dev eth0 src 10.77.1.10 uid 0 \n    cache \n"), None);
    }
}
