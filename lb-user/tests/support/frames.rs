//! Builds test frames byte by byte, with checksums computed here (RFC 1071), independently of the code under test.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::Ipv4Addr;

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_VLAN: u16 = 0x8100;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;

/// The Internet checksum (RFC 1071) of `data`, as stored in a header.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from(chunk[0]) << 8 };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// An ARP request "who has `tpa`, tell `spa`", broadcast.
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    arp(eth([0xff; 6], sha, ETH_ARP), 1, sha, spa, [0; 6], tpa)
}

pub fn arp(mut f: Vec<u8>, op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// An IPv4 header (20 bytes, no options, DF set) followed by `payload`, with a correct header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + segment.len());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, protocol]);
    p.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    p.extend_from_slice(segment);
    p
}

/// A TCP segment (20-byte header) with a correct checksum for `src` -> `dst`.
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    s.extend_from_slice(&(if flags & TCP_ACK != 0 { 0x0a0b_0c0du32 } else { 0 }).to_be_bytes());
    s.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    let c = checksum(&pseudo(src, dst, 6, &s));
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    let c = checksum(&pseudo(src, dst, 17, &s));
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

pub fn icmp_echo(kind: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let [i0, i1] = id.to_be_bytes();
    let [s0, s1] = seq.to_be_bytes();
    icmp_error(kind, 0, [i0, i1, s0, s1], payload)
}

/// A whole Ethernet + IPv4 + TCP frame.
#[expect(clippy::too_many_arguments, reason = "one argument per header field a fixture varies")]
pub fn tcp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ETH_IPV4);
    f.extend_from_slice(&ipv4(src, dst, 6, &tcp(src, dst, sport, dport, flags, payload)));
    f
}

/// Whether the IPv4 header checksum of an Ethernet frame verifies.
pub fn ipv4_header_ok(frame: &[u8]) -> bool {
    checksum(&frame[14..34]) == 0
}

/// Whether the L4 (TCP/UDP) checksum of an Ethernet + IPv4 (no options) frame verifies.
pub fn l4_ok(frame: &[u8]) -> bool {
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let segment = &frame[34..14 + total];
    checksum(&pseudo(src, dst, frame[23], segment)) == 0
}

/// A UDP datagram without a checksum (0: "not computed", RFC 768).
pub fn udp_unchecked(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

/// A whole Ethernet + IPv4 + UDP frame with a correct UDP checksum.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ETH_IPV4);
    f.extend_from_slice(&ipv4(src, dst, 17, &udp(src, dst, sport, dport, payload)));
    f
}

/// An ICMP error message (RFC 792): `kind`, `code`, the 4 bytes after the checksum (unused, or the next-hop MTU
/// of "fragmentation needed", RFC 1191), then the quoted start of the offending IP packet.
pub fn icmp_error(kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A whole Ethernet + IPv4 + ICMP error frame.
#[expect(clippy::too_many_arguments, reason = "one argument per header field a fixture varies")]
pub fn icmp_error_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ETH_IPV4);
    f.extend_from_slice(&ipv4(src, dst, 1, &icmp_error(kind, code, rest, quoted)));
    f
}

/// Whether the ICMP checksum of an Ethernet + IPv4 (no options) + ICMP frame verifies.
pub fn icmp_ok(frame: &[u8]) -> bool {
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    checksum(&frame[34..14 + total]) == 0
}

/// An IPv6 header (40 bytes, traffic class and flow label 0) with `next` and `hop_limit`, followed by `payload`.
pub fn ipv6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop_limit]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// The ICMPv6 checksum (RFC 4443 §2.3: over the RFC 8200 §8.1 pseudo-header and the message) of `message`, whose
/// checksum field (bytes 2..4) is taken as it is.
pub fn icmp6_checksum(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, message: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(message);
    checksum(&pseudo)
}

/// A TCP segment (20-byte header) with a correct checksum over the IPv6 pseudo-header for `src` -> `dst`.
pub fn tcp6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    s.extend_from_slice(&(if flags & TCP_ACK != 0 { 0x0a0b_0c0du32 } else { 0 }).to_be_bytes());
    s.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    let c = l4_checksum6(src, dst, 6, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram with a correct checksum over the IPv6 pseudo-header for `src` -> `dst`.
pub fn udp6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    let c = l4_checksum6(src, dst, 17, &s);
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// The checksum of an upper-layer `segment` of protocol `next` over the RFC 8200 §8.1 pseudo-header (its own
/// checksum field taken as it is).
pub fn l4_checksum6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, next: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

/// `message` (ICMPv6, checksum field zero) with its checksum filled in.
pub fn icmp6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, mut message: Vec<u8>) -> Vec<u8> {
    message[2..4].copy_from_slice(&[0, 0]);
    let c = icmp6_checksum(src, dst, &message);
    message[2..4].copy_from_slice(&c.to_be_bytes());
    message
}

/// A Neighbor Solicitation for `target` (RFC 4861 §4.3), with a source link-layer address option when `slla` is
/// given, checksum zero.
pub fn neighbor_solicitation(target: std::net::Ipv6Addr, slla: Option<[u8; 6]>) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if let Some(mac) = slla {
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&mac);
    }
    m
}

/// A Neighbor Advertisement for `target` with `flags` (R 0x80, S 0x40, O 0x20) and a target link-layer address
/// option (RFC 4861 §4.4), checksum zero.
pub fn neighbor_advertisement(target: std::net::Ipv6Addr, flags: u8, tlla: [u8; 6]) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&tlla);
    m
}

/// An ICMPv6 echo message (`kind` 128 request, 129 reply), checksum zero.
pub fn icmp6_echo(kind: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// The solicited-node group of `address` (RFC 4291 §2.7.1) and its Ethernet address (RFC 2464 §7).
pub fn solicited_node(address: std::net::Ipv6Addr) -> (std::net::Ipv6Addr, [u8; 6]) {
    let o = address.octets();
    let group =
        std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]));
    (group, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// Whether the ICMPv6 message of an Ethernet + IPv6 frame (no extension headers) verifies, recomputed here.
pub fn icmp6_ok(frame: &[u8]) -> bool {
    if frame.len() < 54 || frame[20] != 58 {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    let Some(message) = frame.get(54..54 + len) else {
        return false;
    };
    let src: [u8; 16] = frame[22..38].try_into().unwrap_or_default();
    let dst: [u8; 16] = frame[38..54].try_into().unwrap_or_default();
    icmp6_checksum(src.into(), dst.into(), message) == 0
}

/// A frame as hex, 16 bytes a line: what a failed comparison of two frames shows.
pub fn hex(frame: &[u8]) -> String {
    frame
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that the IPv6 TCP/UDP frame `out` is `expected` and, independently of the builder, that its TCP/UDP
/// checksum verifies over the pseudo-header of its own addresses.
pub fn assert_frame6(out: &[u8], expected: &[u8]) {
    assert_eq!(hex(out), hex(expected));
    let src: [u8; 16] = out[22..38].try_into().expect("source");
    let dst: [u8; 16] = out[38..54].try_into().expect("destination");
    assert_eq!(l4_checksum6(src.into(), dst.into(), out[20], &out[54..]), 0, "TCP/UDP checksum");
}
