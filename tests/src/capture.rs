//! Packet captures on a lab host: VRRP adverts with tshark (what went over the wire, timed by the receiving
//! kernel), and an [`AdvertTap`] that times an event right after one of the active node's adverts.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Host, Lab, netns, process::ChildGuard, reach::PacketSocket};

/// One VRRP advert as captured: when (seconds, the capture's clock), from whom, with which priority and VRID.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeenAdvert {
    pub time: f64,
    pub src: Ipv4Addr,
    pub vrid: u8,
    pub priority: u8,
}

/// A running capture of VRRP adverts (IP protocol 112) on a host's `eth0`; stopped on drop.
pub struct AdvertCapture {
    child: Option<ChildGuard>,
}

impl AdvertCapture {
    /// Starts tshark in `host`'s namespace and waits until it captures.
    ///
    /// # Errors
    /// When tshark cannot start or does not report capturing within 10 s.
    pub fn start(lab: &Lab, host: &Host) -> Result<Self> {
        let mut child = lab.spawn(
            &host.ns,
            [
                "tshark",
                "-l",
                "-n",
                "-i",
                "eth0",
                "-f",
                "ip proto 112",
                "-T",
                "fields",
                "-e",
                "frame.time_epoch",
                "-e",
                "ip.src",
                "-e",
                "vrrp.virt_rtr_id",
                "-e",
                "vrrp.prio",
            ],
        )?;
        child.wait_for_log("Capturing on", Duration::from_secs(10)).context("tshark did not start capturing")?;
        Ok(AdvertCapture { child: Some(child) })
    }

    /// What was captured so far.
    pub fn adverts(&self) -> Vec<SeenAdvert> {
        let text = self.child.as_ref().map(ChildGuard::log).unwrap_or_default();
        parse(&text)
    }

    /// Stops the capture (SIGTERM; tshark flushes) and returns everything it saw.
    ///
    /// # Errors
    /// When tshark cannot be stopped.
    pub fn stop(mut self) -> Result<Vec<SeenAdvert>> {
        let Some(child) = self.child.take() else { bail!("capture already stopped") };
        let log = child.log_path().to_path_buf();
        child.stop()?;
        Ok(parse(&std::fs::read_to_string(&log).unwrap_or_default()))
    }
}

fn parse(text: &str) -> Vec<SeenAdvert> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 4 {
                return None;
            }
            Some(SeenAdvert {
                time: f[0].trim().parse().ok()?,
                src: f[1].trim().parse().ok()?,
                vrid: f[2].trim().parse().ok()?,
                priority: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// The largest time between consecutive adverts from `src` with a priority above 0, and where it ended.
pub fn largest_gap(adverts: &[SeenAdvert], src: Ipv4Addr) -> Option<(Duration, f64)> {
    let times: Vec<f64> = adverts.iter().filter(|a| a.src == src && a.priority > 0).map(|a| a.time).collect();
    times.windows(2).map(|w| (Duration::from_secs_f64((w[1] - w[0]).max(0.0)), w[1])).max_by(|a, b| a.0.cmp(&b.0))
}

/// Waits until `f` holds, polling every 20 ms.
///
/// # Errors
/// When it does not within `timeout`; `what` says what was awaited.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// The family of a VRRP advert on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Where an event fell in the active node's advert interval (see [`AdvertTap::right_after_advert`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    /// From reading the router's last IPv4 advert to the event's action having returned.
    pub since_v4: Duration,
    /// From reading the router's last IPv6 advert to the event's action having returned.
    pub since_v6: Duration,
    /// How long the action itself took (an `ip link` command, a signal).
    pub action_took: Duration,
}

/// Watches a lab host's interface (AF_PACKET, every frame) for the VRRP adverts of one router, told apart by VRID
/// and priority (the active node's), to set off an event at a known phase of the advert interval.
pub struct AdvertTap {
    socket: PacketSocket,
    vrid: u8,
    priority: u8,
}

const ETH_P_ALL: u16 = 3;

impl AdvertTap {
    /// Opens the tap on `host`'s interface.
    ///
    /// # Errors
    /// When the namespace or the interface cannot be used.
    pub fn open(host: &Host, vrid: u8, priority: u8) -> Result<Self> {
        let iface = host.iface.clone();
        let socket = netns::in_netns(&host.ns, move || PacketSocket::open_for(&iface, ETH_P_ALL))
            .with_context(|| format!("tapping {} for adverts", host.name))?;
        Ok(AdvertTap { socket, vrid, priority })
    }

    /// Runs `act` right after the router's IPv4 and IPv6 adverts of one interval are both read (the later of
    /// the two, read within `pair_within` of the other, sets it off): phase ~0 of the interval for both families,
    /// the worst case for a backup that must notice the silence (its outage ~ Master_Down_Interval). Frames queued
    /// before the call are dropped.
    ///
    /// # Errors
    /// When no such pair comes within `timeout`, the socket fails, or `act` does.
    pub fn right_after_advert(
        &self,
        timeout: Duration,
        pair_within: Duration,
        act: impl FnOnce() -> Result<()>,
    ) -> Result<Phase> {
        let mut buf = [0u8; 2048];
        while self.socket.recv(&mut buf, Duration::ZERO)?.is_some() {}
        let deadline = Instant::now() + timeout;
        let (mut last_v4, mut last_v6): (Option<Instant>, Option<Instant>) = (None, None);
        let (v4, v6) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no IPv4 and IPv6 adverts with VRID {} and priority {} within {pair_within:?} of each other in \
                     {timeout:?}",
                    self.vrid,
                    self.priority
                );
            }
            let Some(len) = self.socket.recv(&mut buf, left)? else { continue };
            let now = Instant::now();
            let other = match advert_of(&buf[..len], self.vrid, self.priority) {
                Some(Family::V4) => {
                    last_v4 = Some(now);
                    last_v6
                }
                Some(Family::V6) => {
                    last_v6 = Some(now);
                    last_v4
                }
                None => continue,
            };
            if let (Some(other), Some(v4), Some(v6)) = (other, last_v4, last_v6)
                && now - other <= pair_within
            {
                break (v4, v6);
            }
        };
        let started = Instant::now();
        act()?;
        let done = Instant::now();
        Ok(Phase { since_v4: done - v4, since_v6: done - v6, action_took: done - started })
    }
}

/// The family of `frame` if it is a VRRP advert (IPv4 protocol or IPv6 next header 112, type 1) with `vrid` and
/// `priority`: Ethernet, no VLAN tag, no IPv6 extension header.
fn advert_of(frame: &[u8], vrid: u8, priority: u8) -> Option<Family> {
    const VRRP: u8 = 112;
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (family, vrrp) = match ether_type {
        0x0800 => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            if *frame.get(23)? != VRRP || ihl < 20 {
                return None;
            }
            (Family::V4, frame.get(14 + ihl..)?)
        }
        0x86dd => {
            if *frame.get(20)? != VRRP {
                return None;
            }
            (Family::V6, frame.get(54..)?)
        }
        _ => return None,
    };
    let header = vrrp.get(..3)?;
    (header[0] & 0x0f == 1 && header[1] == vrid && header[2] == priority).then_some(family)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames;

    #[test]
    fn adverts_are_told_apart_by_family_vrid_and_priority() {
        let advert = [0x31, 51, 150, 1, 0x00, 0x64, 0, 0, 10, 77, 1, 250];
        let v4 = |message: &[u8]| {
            let mut frame = frames::eth([1, 0, 0x5e, 0, 0, 0x12], [2, 0, 0, 0, 0, 1], frames::ETH_IPV4);
            frame.extend_from_slice(&frames::ipv4(
                Ipv4Addr::new(10, 77, 1, 1),
                Ipv4Addr::new(224, 0, 0, 18),
                112,
                message,
            ));
            frame
        };
        assert_eq!(advert_of(&v4(&advert), 51, 150), Some(Family::V4));
        assert_eq!(advert_of(&v4(&advert), 52, 150), None, "another VRID");
        assert_eq!(advert_of(&v4(&advert), 51, 100), None, "another priority (the backup's)");
        let mut other = advert;
        other[0] = 0x32;
        assert_eq!(advert_of(&v4(&other), 51, 150), None, "not an advert");
        let mut tcp = v4(&advert);
        tcp[23] = 6;
        assert_eq!(advert_of(&tcp, 51, 150), None, "not VRRP");
        let six = |next: u8| {
            let mut frame = frames::eth([0x33, 0x33, 0, 0, 0, 0x12], [2, 0, 0, 0, 0, 1], frames::ETH_IPV6);
            let (src, dst) = ("fe80::1".parse().expect("addr"), "ff02::12".parse().expect("addr"));
            frame.extend_from_slice(&frames::ipv6(src, dst, next, 255, &advert));
            frame
        };
        assert_eq!(advert_of(&six(112), 51, 150), Some(Family::V6));
        assert_eq!(advert_of(&six(58), 51, 150), None, "not VRRP");
        assert_eq!(advert_of(&v4(&advert)[..30], 51, 150), None, "truncated");
        assert_eq!(advert_of(&[], 51, 150), None);
    }

    #[test]
    fn parses_tshark_fields_and_finds_the_largest_gap_per_sender() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let text = "Capturing on 'eth0'\n1.000\t10.0.0.1\t51\t150\n1.100\t10.0.0.1\t51\t150\n1.150\t10.0.0.2\t51\t100\n\
                    1.350\t10.0.0.1\t51\t150\n1.360\t10.0.0.1\t51\t0\n2 packets dropped\n";
        let seen = parse(text);
        assert_eq!(seen.len(), 5);
        let (gap, at) = largest_gap(&seen, a).expect("gaps");
        assert_eq!((gap.as_millis(), at), (250, 1.35));
        assert_eq!(largest_gap(&seen, b), None, "one advert has no gap");
    }
}
