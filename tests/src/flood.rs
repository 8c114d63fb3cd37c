//! Spoofed traffic for the hostile tests and the soak: SYN and bare-ACK floods from random sources (IPv4 or IPv6,
//! the VIP's family), and VRRP adverts that every node must discard or ignore. Frames are sent from a [`RawSocket`] of a lab host (normally an
//! extra host on the bridge) and never leave the lab's namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xvip::vrrp::{ChecksumMode, packet::Advert};

use crate::extra::RawSocket;
use crate::frames::{self, TCP_ACK, TCP_SYN};
use crate::{http, netns};

/// The flood of the hostile tests (as in the report that led to them: 80,000 spoofed SYNs, with 20,000 bare ACKs).
pub const HOSTILE_SYNS: usize = 80_000;
pub const HOSTILE_ACKS: usize = 20_000;
/// Real connections a hostile test makes after the flood (during it: up to twice as many, while it lasts).
pub const REAL: usize = 200;
/// A real connection fails if its request is not answered within this (one SYN retransmission fits).
pub const PATIENCE: Duration = Duration::from_secs(3);

/// A client's long-lived keep-alive connection, a `GET /` every 50 ms until stopped: what a hijack attempt tries
/// to divert. `port` is its local port (what an attacker spoofs).
pub struct BusyClient {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<usize>>,
}

impl BusyClient {
    /// Opens the connection to `target` from namespace `client_ns` and starts its requests.
    pub fn start(client_ns: &str, target: SocketAddr) -> Result<BusyClient> {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = netns::spawn_in_netns(client_ns, move || {
            let mut conn = http::Connection::open(target, Duration::from_secs(2))?;
            port_tx.send(conn.local_addr()?.port())?;
            let mut answered = 0;
            while !stopped.load(Ordering::SeqCst) {
                conn.get("/", Duration::from_secs(2))?;
                answered += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(answered)
        })?;
        let port = port_rx.recv_timeout(Duration::from_secs(5)).context("the busy client did not connect")?;
        Ok(BusyClient { port, stop, thread })
    }

    /// Stops it; how many of its requests were answered (an error if one was not).
    pub fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().map_err(|_| anyhow::anyhow!("the busy client's thread panicked"))?
    }
}

/// What a flood does to real clients: `GET /` on `target` from namespace `client_ns`, one at a time and at least
/// `spacing` apart, each given [`PATIENCE`], until `n` were tried or (if given) `while_running` turns false; how
/// many were tried and how many failed.
pub fn real_connections(
    client_ns: &str,
    target: SocketAddr,
    n: usize,
    spacing: Duration,
    while_running: Option<Arc<AtomicBool>>,
) -> (usize, usize) {
    let (tried, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (t, f) = (tried.clone(), failed.clone());
    netns::in_netns(client_ns, move || {
        for _ in 0..n {
            if while_running.as_ref().is_some_and(|r| !r.load(Ordering::SeqCst)) {
                break;
            }
            t.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            if http::get(target, "/", PATIENCE).is_err() {
                f.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(spacing.saturating_sub(started.elapsed()));
        }
        Ok(())
    })
    .expect("client");
    (tried.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
}

/// xorshift64: reproducible randomness without a dependency. The state must not be 0 (a 0 seed is replaced).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A random unicast address outside the lab (never martian: those are dropped before any state is made,
    /// which would make a flood toothless).
    pub fn source(&mut self) -> Ipv4Addr {
        loop {
            let a = Ipv4Addr::from(self.next_u64() as u32);
            let first = a.octets()[0];
            if first != 0 && first != 10 && first != 127 && first < 224 {
                return a;
            }
        }
    }

    /// A random global unicast IPv6 address (`2000::/3`), outside the lab (`fd00:77::/64`) and never martian
    /// (unspecified, loopback, multicast, IPv4-mapped).
    pub fn source6(&mut self) -> Ipv6Addr {
        let high = (self.next_u64() & !(0b111 << 61)) | (0b001 << 61);
        Ipv6Addr::from((u128::from(high) << 64) | u128::from(self.next_u64()))
    }
}

/// A SYN and bare-ACK flood at one service of the VIP.
#[derive(Clone, Debug)]
pub struct Flood {
    /// The active node's MAC (where clients send frames for the VIP).
    pub to_mac: [u8; 6],
    /// The sending host's own MAC.
    pub from_mac: [u8; 6],
    /// An IPv4 or IPv6 VIP: the spoofed sources are of its family.
    pub vip: IpAddr,
    pub port: u16,
    pub syns: usize,
    pub acks: usize,
    /// Frames sent back to back before a 10 ms pause: the rate is about 100 × `batch` frames per second.
    pub batch: usize,
    /// The flood stops after this long whatever happens.
    pub time_limit: Duration,
    pub seed: u64,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub frames: usize,
    pub took: Duration,
}

impl Flood {
    /// Sends the flood on `socket`: SYNs and ACKs interleaved evenly, each from a random source and port.
    ///
    /// # Errors
    /// When a frame cannot be sent.
    pub fn send(&self, socket: &RawSocket) -> Result<Sent> {
        let mut rng = XorShift::new(self.seed);
        let total = self.syns + self.acks;
        let started = Instant::now();
        let mut sent = 0;
        while sent < total && started.elapsed() < self.time_limit {
            for _ in 0..self.batch.max(1) {
                if sent == total {
                    break;
                }
                // Bresenham: the ACKs spread evenly over the flood.
                let ack = (sent + 1) * self.acks / total > sent * self.acks / total;
                let flags = if ack { TCP_ACK } else { TCP_SYN };
                let frame = match self.vip {
                    IpAddr::V4(vip) => {
                        let source = rng.source();
                        let sport = 1024 + rng.below(64_000) as u16;
                        frames::tcp_frame(self.to_mac, self.from_mac, source, vip, sport, self.port, flags, b"")
                    }
                    IpAddr::V6(vip) => {
                        let source = rng.source6();
                        let sport = 1024 + rng.below(64_000) as u16;
                        tcp6_frame(self.to_mac, self.from_mac, source, vip, sport, self.port, flags)
                    }
                };
                socket.send(&frame).context("sending a flood frame")?;
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Sent { frames: sent, took: started.elapsed() })
    }
}

/// A whole Ethernet + IPv6 (hop limit 64) + TCP frame without payload, checksum correct.
pub fn tcp6_frame(
    to_mac: [u8; 6],
    from_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut frame = frames::eth(to_mac, from_mac, frames::ETH_IPV6);
    frame.extend_from_slice(&frames::ipv6(src, dst, 6, 64, &frames::tcp6(src, dst, sport, dport, flags, b"")));
    frame
}

/// A VRRP advert as an on-link host would send it to 224.0.0.18 (IPv4 TTL `ttl`), with its checksum broken when
/// `corrupt`: the kinds a node must discard (TTL below 255, bad checksum, another VRID, other addresses) or may
/// only answer (a lower priority).
pub fn advert_frame(from_mac: [u8; 6], from: Ipv4Addr, advert: &Advert, ttl: u8, corrupt: bool) -> Result<Vec<u8>> {
    let group = Ipv4Addr::new(224, 0, 0, 18);
    let mut message = advert.to_bytes(from, group, ChecksumMode::PseudoHeader).context("encoding an advert")?;
    if corrupt {
        message[6] ^= 0x5a;
    }
    let mut ip = frames::ipv4(from, group, 112, &message);
    ip[8] = ttl;
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    // The IPv4 multicast MAC of 224.0.0.18.
    let mut frame = frames::eth([0x01, 0x00, 0x5e, 0x00, 0x00, 0x12], from_mac, frames::ETH_IPV4);
    frame.extend_from_slice(&ip);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_never_martian_or_in_the_lab() {
        let mut rng = XorShift::new(7);
        for _ in 0..10_000 {
            let first = rng.source().octets()[0];
            assert!(first != 0 && first != 10 && first != 127 && first < 224);
        }
    }

    #[test]
    fn ipv6_sources_are_global_unicast_outside_the_lab() {
        let mut rng = XorShift::new(7);
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let a = rng.source6();
            assert_eq!(a.segments()[0] >> 13, 0b001, "{a} is in 2000::/3");
            distinct.insert(a);
        }
        assert_eq!(distinct.len(), 10_000, "sources repeat");
    }

    #[test]
    fn an_ipv6_flood_frame_is_tcp_to_the_vip_with_a_correct_checksum() {
        let (src, vip) = (XorShift::new(3).source6(), "fd00:77::250".parse::<Ipv6Addr>().expect("address"));
        let frame = tcp6_frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], src, vip, 4242, 80, TCP_SYN);
        assert_eq!(frame.len(), 14 + 40 + 20);
        assert_eq!(frame[12..14], [0x86, 0xdd]);
        assert_eq!(frame[20], 6, "next header TCP");
        assert_eq!(frame[22..38], src.octets());
        assert_eq!(frame[38..54], vip.octets());
        assert_eq!(frame[54 + 13], TCP_SYN);
        assert_eq!(frames::l4_checksum6(src, vip, 6, &frame[54..]), 0, "the TCP checksum verifies");
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (mut a, mut b) = (XorShift::new(42), XorShift::new(42));
        assert_eq!((0..5).map(|_| a.next_u64()).collect::<Vec<_>>(), (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(XorShift::new(0).next_u64(), 0, "a zero seed is replaced");
    }

    #[test]
    fn an_advert_frame_has_ttl_and_checksums_as_asked() {
        let advert =
            Advert { vrid: 51, priority: 1, max_adver_int: 10, addresses: vec![Ipv4Addr::new(10, 77, 1, 250)] };
        let from = Ipv4Addr::new(10, 77, 1, 254);
        let good = advert_frame([2, 0, 0, 0, 0, 1], from, &advert, 255, false).expect("frame");
        assert!(frames::ipv4_header_ok(&good));
        assert_eq!(good[14 + 8], 255);
        let parsed = xvip::vrrp::packet::Packet::new_checked(&good[34..]).expect("vrrp");
        assert_eq!(parsed.verify_checksum(from, Ipv4Addr::new(224, 0, 0, 18)), Some(ChecksumMode::PseudoHeader));
        let bad = advert_frame([2, 0, 0, 0, 0, 1], from, &advert, 64, true).expect("frame");
        assert!(frames::ipv4_header_ok(&bad));
        assert_eq!(bad[14 + 8], 64);
        let parsed = xvip::vrrp::packet::Packet::new_checked(&bad[34..]).expect("vrrp");
        assert_eq!(parsed.verify_checksum(from, Ipv4Addr::new(224, 0, 0, 18)), None);
    }
}
