//! The frames: one valid frame of each kind a node meets (built from the node's addresses and the flows earlier
//! frames created), and mutations of them (bit flips, byte changes, truncation, trailing bytes, header fields).
use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{PROTO_TCP, PROTO_UDP};
use xvip::vrrp::packet::{Advert, ChecksumMode};

use crate::node::{self, NODE_IP, NODE_MAC, ROUTER_MAC, VIP};
use crate::support::frames::{
    self, ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_VLAN, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, checksum,
};

/// SplitMix64: small, fast, and reproducible from the seed the report prints.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn port(&mut self) -> u16 {
        self.next() as u16
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What a frame was built as. Mutations keep the kind of the frame they started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Random,
    ArpForVip,
    ArpOther,
    EchoToVip,
    TcpNatClient,
    TcpNatReply,
    UdpNatClient,
    UdpNatReply,
    TcpDsrClient,
    UdpDsrClient,
    IcmpErrorFromBackendSide,
    IcmpErrorFromClientSide,
    Vrrp,
    Vlan,
    Ipv6,
    Fragment,
    IpOptions,
    MartianSource,
    NotForVip,
    VipUnserved,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::Random,
        Kind::ArpForVip,
        Kind::ArpOther,
        Kind::EchoToVip,
        Kind::TcpNatClient,
        Kind::TcpNatReply,
        Kind::UdpNatClient,
        Kind::UdpNatReply,
        Kind::TcpDsrClient,
        Kind::UdpDsrClient,
        Kind::IcmpErrorFromBackendSide,
        Kind::IcmpErrorFromClientSide,
        Kind::Vrrp,
        Kind::Vlan,
        Kind::Ipv6,
        Kind::Fragment,
        Kind::IpOptions,
        Kind::MartianSource,
        Kind::NotForVip,
        Kind::VipUnserved,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Random => "random bytes",
            Kind::ArpForVip => "ARP request for the VIP",
            Kind::ArpOther => "other ARP",
            Kind::EchoToVip => "ICMP echo to the VIP",
            Kind::TcpNatClient => "TCP client->VIP (NAT)",
            Kind::TcpNatReply => "TCP backend reply (NAT)",
            Kind::UdpNatClient => "UDP client->VIP (NAT)",
            Kind::UdpNatReply => "UDP backend reply (NAT)",
            Kind::TcpDsrClient => "TCP client->VIP (DSR)",
            Kind::UdpDsrClient => "UDP client->VIP (DSR)",
            Kind::IcmpErrorFromBackendSide => "ICMP error, backend side",
            Kind::IcmpErrorFromClientSide => "ICMP error, client side",
            Kind::Vrrp => "VRRP advert",
            Kind::Vlan => "802.1Q/802.1ad tagged",
            Kind::Ipv6 => "IPv6",
            Kind::Fragment => "IPv4 fragment to the VIP",
            Kind::IpOptions => "IPv4 options to the VIP",
            Kind::MartianSource => "martian/self source",
            Kind::NotForVip => "not for the VIP",
            Kind::VipUnserved => "VIP, no service",
        }
    }
}

/// A NAT flow seen going out: what its client sent and what the program made of it.
#[derive(Clone, Copy, Debug)]
pub struct NatFlow {
    pub client: Ipv4Addr,
    pub client_mac: [u8; 6],
    pub client_port: u16,
    pub service_port: u16,
    pub protocol: u8,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
    pub nat_port: u16,
}

/// A DSR flow seen going out.
#[derive(Clone, Copy, Debug)]
pub struct DsrFlow {
    pub client: Ipv4Addr,
    pub client_mac: [u8; 6],
    pub client_port: u16,
    pub service_port: u16,
    pub protocol: u8,
}

/// Flows earlier frames created, so later frames can continue them, answer them, or report errors about them.
#[derive(Default)]
pub struct Pool {
    pub nat: Vec<NatFlow>,
    pub dsr: Vec<DsrFlow>,
}

const POOL_MAX: usize = 4096;

impl Pool {
    pub fn add_nat(&mut self, flow: NatFlow, rng: &mut Rng) {
        if self.nat.len() < POOL_MAX {
            self.nat.push(flow);
        } else {
            let i = rng.below(POOL_MAX as u64) as usize;
            self.nat[i] = flow;
        }
    }

    pub fn add_dsr(&mut self, flow: DsrFlow, rng: &mut Rng) {
        if self.dsr.len() < POOL_MAX {
            self.dsr.push(flow);
        } else {
            let i = rng.below(POOL_MAX as u64) as usize;
            self.dsr[i] = flow;
        }
    }

    fn nat_of(&self, protocol: u8, rng: &mut Rng) -> Option<NatFlow> {
        let matching: Vec<&NatFlow> = self.nat.iter().filter(|f| f.protocol == protocol).collect();
        (!matching.is_empty()).then(|| **rng.pick(&matching))
    }

    fn dsr_of(&self, protocol: u8, rng: &mut Rng) -> Option<DsrFlow> {
        let matching: Vec<&DsrFlow> = self.dsr.iter().filter(|f| f.protocol == protocol).collect();
        (!matching.is_empty()).then(|| **rng.pick(&matching))
    }
}

/// A client: its address and the MAC its frames carry (its own on-link, the router's otherwise).
fn client(rng: &mut Rng) -> (Ipv4Addr, [u8; 6]) {
    match rng.below(3) {
        0 => {
            let i = 10 + rng.below(10) as u8;
            (Ipv4Addr::new(10, 77, 0, i), [0x02, 0, 0, 0, 0, i])
        }
        1 => (Ipv4Addr::new(198, 51, 100, rng.byte()), ROUTER_MAC),
        _ => {
            // Any ordinary unicast address behind the router.
            let a = 1 + rng.below(223) as u8;
            let a = if a == 127 || a == 10 { 11 } else { a };
            (Ipv4Addr::new(a, rng.byte(), rng.byte(), 1 + rng.below(254) as u8), ROUTER_MAC)
        }
    }
}

fn client_port(rng: &mut Rng) -> u16 {
    1024 + rng.below(64512) as u16
}

fn tcp_flags(rng: &mut Rng) -> u8 {
    *rng.pick(&[TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN, TCP_RST, TCP_RST | TCP_ACK, TCP_ACK])
}

fn payload(rng: &mut Rng, max: u64) -> Vec<u8> {
    let n = rng.below(max + 1) as usize;
    rng.bytes(n)
}

/// Ethernet + IPv4 with the given protocol and L4 bytes (20-byte header, DF, correct checksum).
fn ip_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = frames::eth(dst_mac, src_mac, ETH_IPV4);
    f.extend_from_slice(&frames::ipv4(src, dst, protocol, l4));
    f
}

fn l4(protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    if protocol == PROTO_TCP {
        frames::tcp(src, dst, sport, dport, flags, data)
    } else {
        frames::udp(src, dst, sport, dport, data)
    }
}

/// A client packet to a service: continuing a known flow, or a new one.
fn client_packet(rng: &mut Rng, pool: &Pool, protocol: u8, ports: &[u16], dsr: bool) -> Vec<u8> {
    let known = if dsr {
        pool.dsr_of(protocol, rng).map(|f| (f.client, f.client_mac, f.client_port, f.service_port))
    } else {
        pool.nat_of(protocol, rng).map(|f| (f.client, f.client_mac, f.client_port, f.service_port))
    };
    let (src, mac, sport, dport, flags) = match known {
        Some((c, mac, cport, svc)) if !rng.one_in(3) => (c, mac, cport, svc, tcp_flags(rng)),
        _ => {
            let (c, mac) = client(rng);
            (c, mac, client_port(rng), *rng.pick(ports), if rng.one_in(8) { TCP_ACK } else { TCP_SYN })
        }
    };
    let data = payload(rng, 48);
    ip_frame(NODE_MAC, mac, src, VIP, protocol, &l4(protocol, src, VIP, sport, dport, flags, &data))
}

/// A backend's reply on a known NAT flow (or, before any, on a made-up one).
fn reply_packet(rng: &mut Rng, pool: &Pool, protocol: u8) -> Vec<u8> {
    let flow = pool.nat_of(protocol, rng).unwrap_or_else(|| {
        let (backend, port) =
            if protocol == PROTO_TCP { (node::BACKENDS[0].0, 8080) } else { (node::BACKENDS[1].0, 5353) };
        NatFlow {
            client: Ipv4Addr::new(198, 51, 100, 7),
            client_mac: ROUTER_MAC,
            client_port: 40000,
            service_port: 80,
            protocol,
            backend,
            backend_port: port,
            nat_port: client_port(rng),
        }
    });
    let flags =
        *rng.pick(&[TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN, TCP_RST, TCP_RST | TCP_ACK]);
    let data = payload(rng, 64);
    let segment = l4(protocol, flow.backend, VIP, flow.backend_port, flow.nat_port, flags, &data);
    ip_frame(NODE_MAC, node::backend_mac(flow.backend), flow.backend, VIP, protocol, &segment)
}

/// An ICMP error to the VIP quoting `quoted` (an IPv4 packet), from `src` behind `src_mac`.
fn icmp_error_frame(rng: &mut Rng, src: Ipv4Addr, src_mac: [u8; 6], quoted: &[u8]) -> Vec<u8> {
    let (kind, code, rest) = *rng.pick(&[
        (3u8, 4u8, [0u8, 0, 0x05, 0x78]),
        (3, 3, [0; 4]),
        (3, 1, [0; 4]),
        (11, 0, [0; 4]),
        (3, 13, [0; 4]),
    ]);
    // RFC 792 quotes the IP header and 8 bytes; RFC 1812 routers quote as much as fits in 576 bytes.
    let len = match rng.below(3) {
        0 => (20 + 8).min(quoted.len()),
        1 => (20 + 20).min(quoted.len()),
        _ => quoted.len(),
    };
    let message = frames::icmp_error(kind, code, rest, &quoted[..len]);
    ip_frame(NODE_MAC, src_mac, src, VIP, 1, &message)
}

fn icmp_from_backend_side(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    let protocol = if rng.one_in(2) { PROTO_TCP } else { PROTO_UDP };
    let Some(f) = pool.nat_of(protocol, rng) else {
        return client_packet(rng, pool, PROTO_TCP, &node::NAT_TCP_PORTS, false);
    };
    // What this node sent to the backend: VIP:nat port -> backend:backend port.
    let data = payload(rng, 32);
    let inner = frames::ipv4(
        VIP,
        f.backend,
        protocol,
        &l4(protocol, VIP, f.backend, f.nat_port, f.backend_port, TCP_ACK, &data),
    );
    let (src, mac) = if rng.one_in(2) { (f.backend, node::backend_mac(f.backend)) } else { (node::ROUTER, ROUTER_MAC) };
    icmp_error_frame(rng, src, mac, &inner)
}

fn icmp_from_client_side(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    let protocol = if rng.one_in(2) { PROTO_TCP } else { PROTO_UDP };
    let Some(f) = pool.nat_of(protocol, rng) else {
        return client_packet(rng, pool, PROTO_UDP, &node::NAT_UDP_PORTS, false);
    };
    // What this node sent to the client: VIP:service port -> client:client port.
    let data = payload(rng, 32);
    let inner = frames::ipv4(
        VIP,
        f.client,
        protocol,
        &l4(protocol, VIP, f.client, f.service_port, f.client_port, TCP_ACK, &data),
    );
    let (src, mac) = if rng.one_in(2) { (f.client, f.client_mac) } else { (node::ROUTER, ROUTER_MAC) };
    icmp_error_frame(rng, src, mac, &inner)
}

fn echo(rng: &mut Rng, src: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let data = payload(rng, 64);
    ip_frame(NODE_MAC, mac, src, VIP, 1, &frames::icmp_echo(8, rng.port(), rng.port(), &data))
}

fn arp_for_vip(rng: &mut Rng) -> Vec<u8> {
    let (ip, mac) = client(rng);
    let (ip, mac) = if mac == ROUTER_MAC { (node::ROUTER, ROUTER_MAC) } else { (ip, mac) };
    let mut f = frames::arp_request(mac, ip, VIP);
    if rng.one_in(4) {
        // A unicast refresh (Linux re-validates a neighbour entry this way).
        f[..6].copy_from_slice(&NODE_MAC);
    }
    f
}

fn arp_other(rng: &mut Rng) -> Vec<u8> {
    let (ip, mac) = (Ipv4Addr::new(10, 77, 0, 12), [0x02, 0, 0, 0, 0, 12]);
    let bcast = [0xff; 6];
    match rng.below(5) {
        0 => frames::arp_request(mac, ip, NODE_IP),
        1 => frames::arp_request(mac, ip, Ipv4Addr::new(10, 77, 0, 99)),
        // Another node announcing the VIP (gratuitous ARP, request and reply forms).
        2 => frames::arp(frames::eth(bcast, node::PEER_MAC, ETH_ARP), 1, node::PEER_MAC, VIP, bcast, VIP),
        3 => frames::arp(frames::eth(NODE_MAC, mac, ETH_ARP), 2, mac, ip, NODE_MAC, VIP),
        // An address conflict probe for the VIP (RFC 5227: sender address 0.0.0.0).
        _ => frames::arp_request(mac, Ipv4Addr::UNSPECIFIED, VIP),
    }
}

fn vrrp(rng: &mut Rng) -> Vec<u8> {
    let advert = Advert { vrid: node::VRID, priority: rng.byte(), max_adver_int: 100, addresses: vec![VIP] };
    let mode = if rng.one_in(2) { ChecksumMode::PseudoHeader } else { ChecksumMode::Rfc9568 };
    let (dst, dst_mac) = match rng.below(3) {
        0 => (Ipv4Addr::new(224, 0, 0, 18), [0x01, 0x00, 0x5e, 0, 0, 0x12]),
        1 => (NODE_IP, NODE_MAC),
        _ => (VIP, NODE_MAC),
    };
    let message = advert.to_bytes(node::PEER, dst, mode).unwrap_or_default();
    let mut f = ip_frame(dst_mac, node::PEER_MAC, node::PEER, dst, 112, &message);
    // TTL 255 (RFC 5798 §5.1.1.3); the header checksum is recomputed by `fix_checksums`.
    f[22] = 255;
    fix_checksums(&mut f);
    f
}

/// One of the plain kinds, for the wrappers (VLAN) to wrap.
fn plain(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    match rng.below(6) {
        0 => arp_for_vip(rng),
        1 => {
            let (c, mac) = client(rng);
            echo(rng, c, mac)
        }
        2 => client_packet(rng, pool, PROTO_TCP, &node::NAT_TCP_PORTS, false),
        3 => reply_packet(rng, pool, PROTO_TCP),
        4 => client_packet(rng, pool, PROTO_UDP, &node::DSR_UDP_PORTS, true),
        _ => icmp_from_backend_side(rng, pool),
    }
}

fn vlan(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    let inner = plain(rng, pool);
    let tci = (rng.port() & 0x0fff).max(1);
    let mut f = inner[..12].to_vec();
    if rng.one_in(4) {
        // 802.1ad outer tag, then 802.1Q.
        f.extend_from_slice(&0x88a8u16.to_be_bytes());
        f.extend_from_slice(&(rng.port() & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ETH_VLAN.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&inner[12..]);
    f
}

/// IPv6 with a correct upper-layer checksum: ICMPv6 echo or neighbour solicitation, TCP, UDP, sometimes behind a
/// hop-by-hop options header.
fn ipv6(rng: &mut Rng) -> Vec<u8> {
    let src = crate::node::CLIENT6;
    let vip6 = crate::node::VIP6;
    // TCP from a few client ports only, so Packet Too Big errors quoting the VIP's replies find their flows.
    let ipv6_client_port = |rng: &mut Rng| 40000 + rng.below(16) as u16;
    let (dst, dst_mac, next, body) = match rng.below(8) {
        0 => {
            // Neighbour solicitation for the address, to its solicited-node group.
            let o = vip6.octets();
            let group =
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]));
            let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&vip6.octets());
            m.extend_from_slice(&[1, 1, 0x02, 0, 0, 0, 0, 0x10]);
            (group, [0x33, 0x33, 0xff, o[13], o[14], o[15]], 58u8, m)
        }
        1 => {
            let mut m = vec![128, 0, 0, 0];
            m.extend_from_slice(&rng.bytes(4));
            m.extend(payload(rng, 32));
            (vip6, NODE_MAC, 58, m)
        }
        2 => {
            let port = ipv6_client_port(rng);
            let mut s = frames::tcp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, port, 80, TCP_SYN, &[]);
            s[16..18].copy_from_slice(&[0, 0]);
            (vip6, NODE_MAC, 6, s)
        }
        3 => {
            // Packet Too Big about a packet from the VIP: a DSR flow's reply to the client (pinned or not), a NAT
            // service's reply to the client, or a NAT flow's packet to a backend (from its first NAT port).
            let mut m = vec![2, 0, 0, 0, 0, 0, 5, 0];
            let cport = ipv6_client_port(rng);
            let (protocol, port, backend_port) = *rng.pick(&crate::node::NAT6);
            let hash = lb_common::flow_hash6(&src.octets(), cport.to_be_bytes(), port.to_be_bytes(), protocol, 0);
            let nport = u16::from_be_bytes(lb_common::nat_port(hash, 0));
            let (backend, _) = *rng.pick(&crate::node::BACKENDS6);
            let (to, sport, dport) = *rng.pick(&[(src, 80, cport), (src, port, cport), (backend, nport, backend_port)]);
            let tcp = frames::tcp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, sport, dport, 0x12, &[]);
            m.extend(frames::ipv6(vip6, to, 6, 64, &tcp));
            (vip6, NODE_MAC, 58, m)
        }
        5 | 6 => {
            // To a NAT service (TCP or UDP), from the few client ports the backends' replies below answer.
            let (protocol, port, _) = *rng.pick(&crate::node::NAT6);
            let cport = ipv6_client_port(rng);
            let mut s = if protocol == PROTO_TCP {
                let flags = if rng.one_in(3) { TCP_SYN } else { tcp_flags(rng) };
                frames::tcp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, cport, port, flags, &payload(rng, 32))
            } else {
                frames::udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, cport, port, &payload(rng, 32))
            };
            let at = if protocol == PROTO_TCP { 16 } else { 6 };
            s[at..at + 2].copy_from_slice(&[0, 0]);
            (vip6, NODE_MAC, protocol, s)
        }
        7 => {
            // A NAT backend's answer to the NAT port of one of those flows (its first candidate, most often).
            let (protocol, port, backend_port) = *rng.pick(&crate::node::NAT6);
            let (backend, mac) = *rng.pick(&crate::node::BACKENDS6);

            let cport = ipv6_client_port(rng);
            let hash = lb_common::flow_hash6(
                &crate::node::CLIENT6.octets(),
                cport.to_be_bytes(),
                port.to_be_bytes(),
                protocol,
                0,
            );
            let nport = u16::from_be_bytes(lb_common::nat_port(hash, u32::from(rng.one_in(4))));
            let mut s = if protocol == PROTO_TCP {
                let flags = *rng.pick(&[TCP_ACK, TCP_SYN | TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST]);
                frames::tcp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, backend_port, nport, flags, &payload(rng, 32))
            } else {
                frames::udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, backend_port, nport, &payload(rng, 32))
            };
            let at = if protocol == PROTO_TCP { 16 } else { 6 };
            s[at..at + 2].copy_from_slice(&[0, 0]);
            let mut f = frames::eth(NODE_MAC, mac, ETH_IPV6);
            let next = protocol;
            let c = {
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&backend.octets());
                pseudo.extend_from_slice(&vip6.octets());
                pseudo.extend_from_slice(&(s.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, next]);
                pseudo.extend_from_slice(&s);
                checksum(&pseudo)
            };
            s[at..at + 2].copy_from_slice(&c.to_be_bytes());
            f.extend(frames::ipv6(backend, vip6, next, 64, &s));
            return f;
        }
        _ => {
            let mut s =
                frames::udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, client_port(rng), 53, &payload(rng, 32));
            s[6..8].copy_from_slice(&[0, 0]);
            (vip6, NODE_MAC, 17, s)
        }
    };
    let mut body = body;
    let sum_at = match next {
        58 => 2,
        6 => 16,
        _ => 6,
    };
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    pseudo.extend_from_slice(&body);
    let c = checksum(&pseudo);
    body[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
    let (first_next, ext) = if rng.one_in(4) {
        // Hop-by-hop options: router alert (MLD), padded to 8 bytes.
        (0u8, vec![next, 0, 5, 2, 0, 0, 1, 0])
    } else {
        (next, Vec::new())
    };
    let mut f = frames::eth(dst_mac, [0x02, 0, 0, 0, 0, 0x10], ETH_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + body.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[first_next, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&ext);
    f.extend_from_slice(&body);
    f
}

fn fragment(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    let mut f = if rng.one_in(2) {
        client_packet(rng, pool, PROTO_TCP, &node::NAT_TCP_PORTS, false)
    } else {
        client_packet(rng, pool, PROTO_UDP, &node::NAT_UDP_PORTS, false)
    };
    let offset: u16 = if rng.one_in(2) { 0 } else { 1 + rng.below(180) as u16 };
    let more = offset == 0 || rng.one_in(2);
    let word = (u16::from(more) << 13) | offset | if rng.one_in(2) { 0 } else { 0x4000 };
    f[20..22].copy_from_slice(&word.to_be_bytes());
    fix_checksums(&mut f);
    f
}

fn ip_options(rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    let f = match rng.below(3) {
        0 => client_packet(rng, pool, PROTO_TCP, &node::NAT_TCP_PORTS, false),
        1 => client_packet(rng, pool, PROTO_TCP, &node::DSR_TCP_PORTS, true),
        _ => {
            let (c, mac) = client(rng);
            echo(rng, c, mac)
        }
    };
    let options: Vec<u8> = match rng.below(3) {
        0 => vec![0x94, 0x04, 0, 0],                                // router alert
        1 => vec![0x01, 0x01, 0x01, 0x00],                          // NOPs, end of list
        _ => [vec![0x07, 39, 4], vec![0; 36], vec![0x00]].concat(), // record route, maximal header
    };
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&options);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x40 | ((20 + options.len()) / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    fix_checksums(&mut out);
    out
}

/// Addresses no client can have: unspecified, loopback, multicast, limited and subnet broadcast, reserved, and the
/// node's own.
pub const MARTIANS: [Ipv4Addr; 11] = [
    Ipv4Addr::UNSPECIFIED,
    Ipv4Addr::new(0, 1, 2, 3),
    Ipv4Addr::LOCALHOST,
    Ipv4Addr::new(127, 9, 9, 9),
    Ipv4Addr::new(224, 0, 0, 5),
    Ipv4Addr::new(239, 1, 2, 3),
    Ipv4Addr::BROADCAST,
    Ipv4Addr::new(240, 0, 0, 1),
    Ipv4Addr::new(10, 77, 0, 255),
    VIP,
    NODE_IP,
];

fn martian_source(rng: &mut Rng) -> Vec<u8> {
    let src = *rng.pick(&MARTIANS);
    let mac = [0x02, 0, 0, 0, 0, 0x66];
    if rng.one_in(6) {
        return frames::arp_request(mac, src, VIP);
    }
    if rng.one_in(5) {
        return echo(rng, src, mac);
    }
    let (protocol, ports) = match rng.below(4) {
        0 => (PROTO_TCP, &node::NAT_TCP_PORTS[..]),
        1 => (PROTO_UDP, &node::NAT_UDP_PORTS[..]),
        2 => (PROTO_TCP, &node::DSR_TCP_PORTS[..]),
        _ => (PROTO_UDP, &node::DSR_UDP_PORTS[..]),
    };
    let flags = if rng.one_in(2) { TCP_SYN } else { TCP_ACK };
    let (sport, dport) = (client_port(rng), *rng.pick(ports));
    ip_frame(NODE_MAC, mac, src, VIP, protocol, &l4(protocol, src, VIP, sport, dport, flags, &payload(rng, 16)))
}

fn not_for_vip(rng: &mut Rng) -> Vec<u8> {
    let (c, mac) = (Ipv4Addr::new(10, 77, 0, 11), [0x02, 0, 0, 0, 0, 11]);
    match rng.below(5) {
        0 => {
            ip_frame(NODE_MAC, mac, c, NODE_IP, PROTO_TCP, &frames::tcp(c, NODE_IP, client_port(rng), 22, TCP_SYN, &[]))
        }
        1 => {
            let dst = Ipv4Addr::new(10, 77, 0, 255);
            ip_frame([0xff; 6], mac, c, dst, PROTO_UDP, &frames::udp(c, dst, 137, 137, &payload(rng, 32)))
        }
        2 => {
            let dst = Ipv4Addr::new(224, 0, 0, 251);
            ip_frame(
                [0x01, 0, 0x5e, 0, 0, 0xfb],
                mac,
                c,
                dst,
                PROTO_UDP,
                &frames::udp(c, dst, 5353, 5353, &payload(rng, 32)),
            )
        }
        3 => {
            // A backend answering the node's own health check.
            let (b, _) = node::BACKENDS[0];
            ip_frame(
                NODE_MAC,
                node::backend_mac(b),
                b,
                NODE_IP,
                PROTO_TCP,
                &frames::tcp(b, NODE_IP, 8080, client_port(rng), TCP_SYN | TCP_ACK, &[]),
            )
        }
        _ => ip_frame(NODE_MAC, mac, c, NODE_IP, 1, &frames::icmp_echo(8, 1, 1, &payload(rng, 16))),
    }
}

fn vip_unserved(rng: &mut Rng) -> Vec<u8> {
    let (c, mac) = client(rng);
    match rng.below(6) {
        0 => ip_frame(NODE_MAC, mac, c, VIP, PROTO_TCP, &frames::tcp(c, VIP, client_port(rng), 22, TCP_SYN, &[])),
        1 => ip_frame(NODE_MAC, mac, c, VIP, PROTO_UDP, &frames::udp(c, VIP, client_port(rng), 123, &payload(rng, 48))),
        2 => ip_frame(NODE_MAC, mac, c, VIP, 47, &payload(rng, 40)),
        3 => ip_frame(NODE_MAC, mac, c, VIP, 2, &frames::icmp_error(0x16, 0, [0; 4], &[])),
        // ICMP timestamp request, and an echo request with a non-zero code.
        4 => ip_frame(NODE_MAC, mac, c, VIP, 1, &frames::icmp_error(13, 0, [0, 1, 0, 1], &[0; 12])),
        _ => ip_frame(NODE_MAC, mac, c, VIP, 1, &frames::icmp_error(8, 1, [0, 1, 0, 1], &payload(rng, 8))),
    }
}

/// The shortest frame a driver hands to XDP: an Ethernet header.
pub const MIN_FRAME: usize = 14;

fn random(rng: &mut Rng) -> Vec<u8> {
    let len = MIN_FRAME + rng.below(1601 - MIN_FRAME as u64) as usize;
    let mut f = rng.bytes(len);
    if len >= 34 && rng.one_in(2) {
        // Random, but addressed to the node and the VIP, so it gets past the first checks.
        f[..6].copy_from_slice(&NODE_MAC);
        let ether_type = *rng.pick(&[ETH_IPV4, ETH_IPV4, ETH_IPV4, ETH_ARP, ETH_VLAN, ETH_IPV6]);
        f[12..14].copy_from_slice(&ether_type.to_be_bytes());
        if ether_type == ETH_IPV4 {
            f[14] = if rng.one_in(2) { 0x45 } else { f[14] };
            f[30..34].copy_from_slice(&VIP.octets());
        }
    }
    f
}

/// A valid frame of `kind`.
pub fn frame(kind: Kind, rng: &mut Rng, pool: &Pool) -> Vec<u8> {
    match kind {
        Kind::Random => random(rng),
        Kind::ArpForVip => arp_for_vip(rng),
        Kind::ArpOther => arp_other(rng),
        Kind::EchoToVip => {
            let (c, mac) = client(rng);
            echo(rng, c, mac)
        }
        Kind::TcpNatClient => client_packet(rng, pool, PROTO_TCP, &node::NAT_TCP_PORTS, false),
        Kind::TcpNatReply => reply_packet(rng, pool, PROTO_TCP),
        Kind::UdpNatClient => client_packet(rng, pool, PROTO_UDP, &node::NAT_UDP_PORTS, false),
        Kind::UdpNatReply => reply_packet(rng, pool, PROTO_UDP),
        Kind::TcpDsrClient => client_packet(rng, pool, PROTO_TCP, &node::DSR_TCP_PORTS, true),
        Kind::UdpDsrClient => client_packet(rng, pool, PROTO_UDP, &node::DSR_UDP_PORTS, true),
        Kind::IcmpErrorFromBackendSide => icmp_from_backend_side(rng, pool),
        Kind::IcmpErrorFromClientSide => icmp_from_client_side(rng, pool),
        Kind::Vrrp => vrrp(rng),
        Kind::Vlan => vlan(rng, pool),
        Kind::Ipv6 => ipv6(rng),
        Kind::Fragment => fragment(rng, pool),
        Kind::IpOptions => ip_options(rng, pool),
        Kind::MartianSource => martian_source(rng),
        Kind::NotForVip => not_for_vip(rng),
        Kind::VipUnserved => vip_unserved(rng),
    }
}

/// Picks a kind: the NAT and DSR paths, where the state is, get more frames than the rest.
pub fn pick_kind(rng: &mut Rng) -> Kind {
    const WEIGHTED: [(Kind, u64); 20] = [
        (Kind::Random, 6),
        (Kind::ArpForVip, 3),
        (Kind::ArpOther, 2),
        (Kind::EchoToVip, 3),
        (Kind::TcpNatClient, 12),
        (Kind::TcpNatReply, 10),
        (Kind::UdpNatClient, 6),
        (Kind::UdpNatReply, 6),
        (Kind::TcpDsrClient, 5),
        (Kind::UdpDsrClient, 3),
        (Kind::IcmpErrorFromBackendSide, 5),
        (Kind::IcmpErrorFromClientSide, 5),
        (Kind::Vrrp, 2),
        (Kind::Vlan, 3),
        (Kind::Ipv6, 3),
        (Kind::Fragment, 3),
        (Kind::IpOptions, 3),
        (Kind::MartianSource, 6),
        (Kind::NotForVip, 3),
        (Kind::VipUnserved, 3),
    ];
    let total: u64 = WEIGHTED.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total);
    for (kind, w) in WEIGHTED {
        if x < w {
            return kind;
        }
        x -= w;
    }
    Kind::Random
}

/// The mutations, by name, for the report.
pub const MUTATIONS: [&str; 6] =
    ["bit flip", "byte set", "truncation", "trailing bytes", "header field", "checksums fixed"];

/// Applies 1..=4 mutations; returns the indices (into [`MUTATIONS`]) applied, in order.
pub fn mutate(frame: &mut Vec<u8>, rng: &mut Rng) -> Vec<usize> {
    let mut applied = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let m = match rng.below(10) {
            0..=1 => 0,
            2..=3 => 1,
            4 => 2,
            5 => 3,
            _ => 4,
        };
        match m {
            0 if !frame.is_empty() => {
                let i = rng.below(frame.len() as u64) as usize;
                frame[i] ^= 1 << rng.below(8);
            }
            1 if !frame.is_empty() => {
                let i = rng.below(frame.len() as u64) as usize;
                frame[i] = {
                    let r = rng.byte();
                    *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, r])
                };
            }
            2 => {
                // Down to an Ethernet header: nothing shorter reaches XDP (and BPF_PROG_TEST_RUN refuses it).
                let len = MIN_FRAME + rng.below(frame.len().saturating_sub(MIN_FRAME) as u64 + 1) as usize;
                frame.truncate(len);
            }
            3 => {
                let n = 1 + rng.below(64) as usize;
                let extra = rng.bytes(n);
                frame.extend_from_slice(&extra);
            }
            _ => header_field(frame, rng),
        }
        applied.push(m);
    }
    if rng.one_in(2) && fix_checksums(frame) {
        applied.push(5);
    }
    applied
}

/// Changes one header field of an Ethernet + IPv4 frame to a value chosen to hit edge cases.
fn header_field(frame: &mut [u8], rng: &mut Rng) {
    let Some(ip) = ipv4_offset(frame) else {
        if frame.len() >= 14 {
            let ether_type = {
                let r = rng.port();
                *rng.pick(&[ETH_IPV4, ETH_ARP, ETH_VLAN, ETH_IPV6, 0x88a8, 0x0000, r])
            };
            frame[12..14].copy_from_slice(&ether_type.to_be_bytes());
        }
        return;
    };
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    let l4 = ip + ihl.max(20);
    let set16 = |f: &mut [u8], at: usize, v: u16| {
        if f.len() >= at + 2 {
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
    };
    let set_addr = |f: &mut [u8], at: usize, a: Ipv4Addr| {
        if f.len() >= at + 4 {
            f[at..at + 4].copy_from_slice(&a.octets());
        }
    };
    match rng.below(16) {
        0 => {
            let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]);
            let v = *rng.pick(&[0, 19, 20, 21, 27, 28, 39, 40, total.wrapping_add(1), total.wrapping_sub(1), 0xffff]);
            set16(frame, ip + 2, v);
        }
        1 => frame[ip] = *rng.pick(&[0x44, 0x46, 0x4f, 0x55, 0x65, 0x40, 0x05]),
        2 => set16(frame, ip + 6, *rng.pick(&[0x2000, 0x0001, 0x3fff, 0x4000, 0x8000, 0x1fff])),
        3 => frame[ip + 8] = *rng.pick(&[0, 1, 255]),
        4 => frame[ip + 9] = *rng.pick(&[1, 6, 17, 2, 47, 112, 58, 0, 255]),
        5 => set_addr(frame, ip + 12, *rng.pick(&MARTIANS)),
        6 => set_addr(frame, ip + 16, *rng.pick(&[VIP, NODE_IP, Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 18)])),
        7 => set16(frame, l4, {
            let r = rng.port();
            *rng.pick(&[0, 80, 53, 443, 8080, 5353, 65535, r])
        }),
        8 => set16(frame, l4 + 2, {
            let r = rng.port();
            *rng.pick(&[0, 80, 53, 443, 514, 8443, 9000, 8080, 65535, r])
        }),
        9 => {
            if frame.len() > l4 + 13 {
                frame[l4 + 13] = {
                    let r = rng.byte();
                    *rng.pick(&[0, 0xff, TCP_SYN, TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST, TCP_FIN, r])
                };
            }
        }
        10 => {
            if frame.len() > l4 + 12 {
                frame[l4 + 12] = *rng.pick(&[0x00, 0x40, 0x50, 0xf0, 0x60]);
            }
        }
        11 => set16(frame, l4 + 4, *rng.pick(&[0, 7, 8, 9, 0xffff])),
        12 => {
            if frame.len() > l4 + 1 {
                frame[l4] = *rng.pick(&[0, 3, 5, 8, 11, 12, 13, 255]);
                frame[l4 + 1] = *rng.pick(&[0, 1, 3, 4, 255]);
            }
        }
        13 => {
            // The quoted header of an ICMP error: its IHL, protocol or source.
            let inner = l4 + 8;
            if frame.len() > inner + 12 {
                match rng.below(3) {
                    0 => frame[inner] = *rng.pick(&[0x46, 0x44, 0x4f]),
                    1 => frame[inner + 9] = *rng.pick(&[1, 6, 17, 47]),
                    _ => set_addr(frame, inner + 12, *rng.pick(&MARTIANS)),
                }
            }
        }
        14 => {
            let mac = *rng.pick(&[[0xff; 6], [0; 6], [0x01, 0, 0x5e, 0, 0, 1], NODE_MAC]);
            let at = if rng.one_in(2) { 0 } else { 6 };
            frame[at..at + 6].copy_from_slice(&mac);
        }
        _ => frame[ip + 1] = rng.byte(),
    }
}

/// Where the IPv4 header starts, for untagged Ethernet + IPv4 frames with room for 20 bytes of it.
fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    (frame.len() >= 34 && frame[12..14] == ETH_IPV4.to_be_bytes()).then_some(14)
}

/// Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum of an untagged Ethernet + IPv4 frame as far
/// as the frame and its lengths allow; `false` if it is not such a frame.
pub fn fix_checksums(frame: &mut [u8]) -> bool {
    let Some(ip) = ipv4_offset(frame) else {
        return false;
    };
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if ihl < 20 || frame.len() < ip + ihl {
        return false;
    }
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[ip..ip + ihl]);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let fragment = u16::from_be_bytes([frame[ip + 6], frame[ip + 7]]) & 0x3fff != 0;
    if total < ihl || frame.len() < ip + total || fragment {
        return true;
    }
    let (l4, end) = (ip + ihl, ip + total);
    let protocol = frame[ip + 9];
    let at = match protocol {
        PROTO_TCP => l4 + 16,
        PROTO_UDP => l4 + 6,
        1 => l4 + 2,
        _ => return true,
    };
    if at + 2 > end {
        return true;
    }
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let c = if protocol == 1 {
        checksum(&frame[l4..end])
    } else {
        let mut pseudo = frame[ip + 12..ip + 20].to_vec();
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&((end - l4) as u16).to_be_bytes());
        pseudo.extend_from_slice(&frame[l4..end]);
        let c = checksum(&pseudo);
        if protocol == PROTO_UDP && c == 0 { 0xffff } else { c }
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}
