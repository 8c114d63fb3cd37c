//! The rules every frame the program sends out must keep, checked with `etherparse` (an independent parser) and
//! checksums summed here, never with the code under test.
//!
//! Checksums: an IPv4 header the program sends must verify (it acts on the header, so it must not act on a
//! corrupt one); an ICMP message it answers with must verify, and it answers only requests that verify (as a host
//! does). TCP, UDP and ICMP-error checksums of frames it forwards or translates must verify exactly when they did
//! on arrival: it neither breaks a good one nor hides a bad one (RFC 1624 incremental updates keep end-to-end
//! corruption visible to the receiver); a segment forwarded with the bad checksum it came with is counted, not a
//! violation, since checking every payload is the receiver's job.
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{ArpPacketSlice, Ipv4Slice, Ipv6Slice, LinkSlice, NetSlice, SlicedPacket, checksum::Sum16BitWords};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Every rule, with what it means; the report lists violations by these names.
pub const RULES: &[(&str, &str)] = &[
    ("unknown_verdict", "the program returned something other than ABORTED, DROP, PASS, TX or REDIRECT"),
    ("sent_while_backup", "a frame was sent (TX or redirect) while the node is backup"),
    ("malformed_output", "a frame sent does not parse as Ethernet + ARP/IPv4/IPv6 with consistent lengths"),
    (
        "malformed_passed_on",
        "a frame sent does not parse (see malformed_output); the frame that came in did not either",
    ),
    (
        "source_mac_not_node",
        "a frame sent does not carry, as its source, the MAC of the interface it leaves through (XDP_TX: the VIP's interface; a redirect: the node's second interface)",
    ),
    (
        "bad_destination_mac",
        "a frame sent goes to a zero, multicast or broadcast MAC, or to the MAC of the interface it leaves through",
    ),
    ("arp_reply_malformed", "an ARP frame sent is not a reply from the node's MAC and the VIP to the asker"),
    ("arp_reply_unasked", "an ARP reply was sent for something other than a request for the VIP"),
    ("sent_to_vip", "a frame sent is addressed to the VIP (ARP target, or IPv4 destination other than a DSR forward)"),
    ("sent_to_self", "a frame sent is addressed to one of the node's own addresses"),
    (
        "sent_to_martian",
        "a frame sent is addressed to 0/8, 127/8, multicast, 240/4, a broadcast address (IPv6: ::, ::1, multicast other than the answer to duplicate address detection)",
    ),
    (
        "ipv6_sent_malformed",
        "an IPv6 frame sent is not a DSR forward, an echo reply or a Neighbor Advertisement from the IPv6 VIP, hop limit 255 for the advertisement, Override set, the node's MAC as target link-layer address; Solicited to a unicast asker, or not Solicited to ff02::1 at 33:33:00:00:00:01",
    ),
    (
        "ipv6_sent_unasked",
        "an IPv6 frame was sent for something other than an echo request or solicitation for the IPv6 VIP",
    ),
    (
        "ipv6_forward_malformed",
        "an IPv6 DSR forward (TCP/UDP, or an ICMPv6 error, to the IPv6 VIP, sent to an IPv6 backend's MAC) is not the frame that came in with only its MACs changed, or that frame was not for a service of the IPv6 VIP (an error: did not quote a packet from the VIP's service port), had an extension header, or was UDP without a checksum",
    ),
    (
        "ipv6_nat_malformed",
        "an IPv6 NAT translation sent is not one: to a backend, not from the IPv6 VIP and a port of at least 1024 to an IPv6 NAT backend's address and port; to a client, not from the IPv6 VIP and the NAT service's port; or its payload differs from what came in, or a UDP checksum is 0, or an extension header was kept; an ICMPv6 error translated for the other end of a NAT flow does not quote that end's own packet to the VIP",
    ),
    (
        "martian_source_sent",
        "a frame sent has a martian or self source (for a DSR forward: the client's address is martian, the VIP or the node's)",
    ),
    (
        "source_not_vip",
        "an IPv4 frame the node sends on its own behalf (anything but a DSR forward) does not come from the VIP",
    ),
    ("ip_checksum_broken", "an IPv4 header sent does not verify, and it did on arrival"),
    ("ip_checksum_bad_passed_on", "an IPv4 header sent does not verify; it did not on arrival either"),
    ("l4_checksum_broken", "a TCP/UDP checksum sent does not verify, and it did on arrival"),
    ("l4_checksum_masked", "a TCP/UDP checksum sent verifies, but did not on arrival"),
    ("icmp_checksum_wrong", "an ICMP reply the node generated to an intact request does not verify"),
    ("answered_corrupt_request", "an ICMP request with a wrong checksum was answered"),
    ("icmp_checksum_broken", "a translated ICMP error does not verify, and it did on arrival"),
    ("icmp_checksum_masked", "a translated ICMP error verifies, but did not on arrival"),
    (
        "quoted_ip_checksum_broken",
        "the IPv4 header quoted in an ICMP error sent does not verify, and it did on arrival",
    ),
    ("icmp_error_misdirected", "an ICMP error sent does not go to the source of the packet it quotes"),
    ("nat_reverse_without_forward", "a NAT reverse entry whose client flow has no forward entry"),
    (
        "nat_reverse_forward_mismatch",
        "a NAT reverse entry whose client flow's forward entry names another NAT port or another backend (address and port) than the entry's",
    ),
    (
        "forwarded_off_pin",
        "a client packet was forwarded to a backend (NAT: from a NAT port) other than the one its live forward entry names after the run, or without a live forward entry",
    ),
    ("state_for_martian_client", "a connection or NAT entry was created for a martian or self-addressed client"),
    ("counter_sum", "the Reason counters did not move by exactly one per frame"),
];

/// What the checker knows about the node, from its configuration (not from the program).
pub struct Facts {
    pub vip: Ipv4Addr,
    /// The node's IPv6 VIP (answered with Neighbor Advertisements and echo replies; its services' TCP and UDP
    /// forwarded by DSR).
    pub vip6: Ipv6Addr,
    pub node_mac: [u8; 6],
    /// The node's own addresses other than the VIP.
    pub own: Vec<Ipv4Addr>,
    /// (network, prefix length) of the node's interfaces, for their broadcast addresses.
    pub subnets: Vec<(Ipv4Addr, u8)>,
    /// The backends' MACs: a DSR forward goes to one of them with the VIP as its IPv4 destination.
    pub backend_macs: Vec<[u8; 6]>,
    /// The MAC of the node's second interface: frames redirected there leave with it as their source.
    pub far_mac: [u8; 6],
    /// The backends' addresses: a NAT forward goes to one of them.
    pub backends: Vec<Ipv4Addr>,
    /// The IPv6 backends' MACs: an IPv6 DSR forward goes to one of them.
    pub backend6_macs: Vec<[u8; 6]>,
    /// (protocol, port) of the IPv6 VIP's services.
    pub services6: Vec<(u8, u16)>,
    /// The IPv6 backends' addresses, and the IPv6 VIP's NAT services: (protocol, service port, backend port).
    pub backends6: Vec<Ipv6Addr>,
    pub nat6: Vec<(u8, u16, u16)>,
}

impl Facts {
    /// Addresses nothing may be sent to, and no client can have (RFC 1812 §5.3.7, RFC 6890).
    pub fn martian(&self, a: Ipv4Addr) -> bool {
        let o = a.octets();
        o[0] == 0
            || o[0] == 127
            || a.is_multicast()
            || o[0] >= 240
            || self.subnets.iter().any(|&(net, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(net) & mask && u32::from(a) | mask == u32::MAX
            })
    }
}

/// One broken rule, with what was seen.
pub struct Finding {
    pub rule: &'static str,
    pub detail: String,
}

fn finding(rule: &'static str, detail: impl Into<String>) -> Finding {
    debug_assert!(RULES.iter().any(|(r, _)| *r == rule), "unlisted rule {rule}");
    Finding { rule, detail: detail.into() }
}

/// The IPv4 view of an untagged frame that parsed: addresses, ports, MACs.
#[derive(Clone, Copy, Debug)]
pub struct Ip4 {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// 0 for anything but an unfragmented TCP or UDP packet.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
}

/// The IPv4 view of a frame, if it is untagged Ethernet + IPv4 and parses.
pub fn ip4(frame: &[u8]) -> Option<Ip4> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        return None;
    };
    if !p.link_exts.is_empty() {
        return None;
    }
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return None;
    };
    let h = ip.header();
    let mut out = Ip4 {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        src: h.source_addr(),
        dst: h.destination_addr(),
        protocol: h.protocol().0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    let payload = &ip.payload().payload;
    if !ip.payload().fragmented && matches!(out.protocol, 6 | 17) && payload.len() >= 4 {
        out.sport = u16::from_be_bytes([payload[0], payload[1]]);
        out.dport = u16::from_be_bytes([payload[2], payload[3]]);
        if out.protocol == 6 && payload.len() >= 14 {
            out.tcp_flags = payload[13];
        }
    }
    Some(out)
}

/// Checks one run: `input` went in, the program returned `action` and left `output`.
pub fn frame(facts: &Facts, active: bool, input: &[u8], action: u32, output: &[u8]) -> Vec<Finding> {
    let mut found = Vec::new();
    match action {
        XDP_ABORTED | XDP_DROP | XDP_PASS => return found,
        XDP_TX | XDP_REDIRECT => {}
        other => {
            found.push(finding("unknown_verdict", format!("verdict {other}")));
            return found;
        }
    }
    if !active {
        found.push(finding("sent_while_backup", verdict_name(action)));
    }
    let packet = match SlicedPacket::from_ethernet(output) {
        Ok(p) => p,
        Err(e) => {
            let rule =
                if SlicedPacket::from_ethernet(input).is_ok() { "malformed_output" } else { "malformed_passed_on" };
            found.push(finding(rule, format!("etherparse: {e}")));
            return found;
        }
    };
    let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
        found.push(finding("malformed_output", "no Ethernet II header"));
        return found;
    };
    let dst_mac = eth.destination();
    // A frame carries the MAC of the interface it leaves through: XDP_TX sends it back out of the VIP's interface,
    // a redirect out of the node's only other one (towards the backends and clients behind it). A redirect with
    // that interface's MAC is right, not a violation: the next hop learned that MAC for this node's address there.
    let own_mac = if action == XDP_REDIRECT { facts.far_mac } else { facts.node_mac };
    if eth.source() != own_mac {
        found.push(finding(
            "source_mac_not_node",
            format!("source MAC {} towards {} (expected {})", mac(eth.source()), mac(dst_mac), mac(own_mac)),
        ));
    }
    // "The node's own" is the sending interface's MAC: a frame to it would come straight back. A frame out of one
    // interface to the other's MAC (an ARP request that claims it as its sender is answered there) reaches no
    // host of this node on that segment; the program knows only the VIP interface's MAC, and an asker may claim
    // any unicast MAC in any case.
    // The one multicast frame the program may send: its answer to duplicate address detection, to all nodes.
    let to_all_nodes = dst_mac == ALL_NODES_MAC
        && matches!(&packet.net, Some(NetSlice::Ipv6(ip)) if ip.header().destination_addr() == ALL_NODES);
    if dst_mac == [0; 6] || (dst_mac[0] & 1 == 1 && !to_all_nodes) || dst_mac == own_mac {
        found.push(finding("bad_destination_mac", format!("destination MAC {}", mac(dst_mac))));
    }
    let input_packet = SlicedPacket::from_ethernet(input).ok();
    let input_net = input_packet.as_ref().and_then(|p| p.net.as_ref());
    match &packet.net {
        None => found.push(finding("malformed_output", "neither ARP nor IP")),
        Some(NetSlice::Arp(arp)) => check_arp(facts, arp, dst_mac, input_net, &mut found),
        Some(NetSlice::Ipv4(ip)) => {
            let input_ip = match input_net {
                Some(NetSlice::Ipv4(i)) => Some(i),
                _ => None,
            };
            check_ipv4(facts, ip, dst_mac, input_ip, &mut found);
        }
        Some(NetSlice::Ipv6(ip)) => {
            let input_ip = match input_net {
                Some(NetSlice::Ipv6(i)) => Some(i),
                _ => None,
            };
            check_ipv6(facts, ip, dst_mac, input_ip, &mut found);
        }
    }
    found
}

fn check_arp(
    facts: &Facts,
    arp: &ArpPacketSlice,
    dst_mac: [u8; 6],
    input: Option<&NetSlice>,
    found: &mut Vec<Finding>,
) {
    let shape = arp.hw_addr_type().0 == 1
        && arp.proto_addr_type().0 == 0x0800
        && arp.hw_addr_size() == 6
        && arp.proto_addr_size() == 4;
    if !shape || arp.operation().0 != 2 {
        found.push(finding("arp_reply_malformed", format!("operation {}, shape ok {shape}", arp.operation().0)));
        return;
    }
    let sha = arp.sender_hw_addr();
    let spa = ipv4_of(arp.sender_protocol_addr());
    let tha = arp.target_hw_addr();
    let tpa = ipv4_of(arp.target_protocol_addr());
    if sha != facts.node_mac || spa != facts.vip || tha != dst_mac {
        found.push(finding(
            "arp_reply_malformed",
            format!("sender {} {spa}, target {} (frame to {})", mac_of(sha), mac_of(tha), mac(dst_mac)),
        ));
    }
    if tpa == facts.vip {
        found.push(finding("sent_to_vip", format!("ARP reply to {tpa}")));
    } else if tpa != Ipv4Addr::UNSPECIFIED && facts.martian(tpa) {
        // 0.0.0.0 is the sender of an address conflict probe (RFC 5227), which an owner answers.
        found.push(finding("sent_to_martian", format!("ARP reply to {tpa}")));
    } else if facts.own.contains(&tpa) {
        found.push(finding("sent_to_self", format!("ARP reply to {tpa}")));
    }
    let asked = match input {
        Some(NetSlice::Arp(a)) => {
            a.operation().0 == 1
                && a.proto_addr_size() == 4
                && ipv4_of(a.target_protocol_addr()) == facts.vip
                && ipv4_of(a.sender_protocol_addr()) != facts.vip
        }
        _ => false,
    };
    if !asked {
        found.push(finding("arp_reply_unasked", "the frame that came in was not an ARP request for the VIP"));
    }
}

fn check_ipv4(facts: &Facts, ip: &Ipv4Slice, dst_mac: [u8; 6], input: Option<&Ipv4Slice>, found: &mut Vec<Finding>) {
    let h = ip.header();
    let (src, dst) = (h.source_addr(), h.destination_addr());
    let input_src = input.map(|i| i.header().source_addr());
    // DSR: the client's packet, unchanged but for the MACs, to a backend that holds the VIP itself.
    let dsr_forward = dst == facts.vip && Some(src) == input_src && facts.backend_macs.contains(&dst_mac);
    if !sums_to_zero(Sum16BitWords::new().add_slice(h.slice())) {
        let was_ok = input.is_some_and(|i| sums_to_zero(Sum16BitWords::new().add_slice(i.header().slice())));
        let rule = if was_ok { "ip_checksum_broken" } else { "ip_checksum_bad_passed_on" };
        found.push(finding(rule, format!("{src} -> {dst}, checksum {:#06x}", h.header_checksum())));
    }
    if dsr_forward {
        if src == facts.vip || facts.martian(src) || facts.own.contains(&src) {
            found.push(finding("martian_source_sent", format!("DSR forward of {src} -> {dst} to {}", mac(dst_mac))));
        }
    } else {
        if dst == facts.vip {
            found.push(finding("sent_to_vip", format!("{src} -> {dst} (to {})", mac(dst_mac))));
        } else if facts.own.contains(&dst) {
            found.push(finding("sent_to_self", format!("{src} -> {dst}")));
        } else if facts.martian(dst) {
            found.push(finding("sent_to_martian", format!("{src} -> {dst}")));
        }
        if src != facts.vip {
            let rule =
                if facts.martian(src) || facts.own.contains(&src) { "martian_source_sent" } else { "source_not_vip" };
            found.push(finding(rule, format!("{src} -> {dst}, the frame came from {input_src:?}")));
        }
    }
    if ip.payload().fragmented {
        return;
    }
    let protocol = h.protocol().0;
    let segment = ip.payload().payload;
    let input_segment = input.filter(|i| !i.payload().fragmented && i.header().protocol().0 == protocol);
    match protocol {
        6 | 17 => {
            let ok = l4_ok(h.source(), h.destination(), protocol, segment);
            let was_ok = input_segment
                .map(|i| l4_ok(i.header().source(), i.header().destination(), protocol, i.payload().payload));
            if !ok && was_ok != Some(false) {
                found.push(finding("l4_checksum_broken", format!("{src} -> {dst} protocol {protocol}")));
            }
            if ok && was_ok == Some(false) {
                found.push(finding("l4_checksum_masked", format!("{src} -> {dst} protocol {protocol}")));
            }
        }
        1 => check_icmp(dst, segment, input_segment.map(|i| i.payload().payload), found),
        _ => {}
    }
}

fn check_icmp(dst: Ipv4Addr, message: &[u8], input: Option<&[u8]>, found: &mut Vec<Finding>) {
    let Some(&kind) = message.first() else {
        found.push(finding("malformed_output", "empty ICMP message"));
        return;
    };
    let ok = sums_to_zero(Sum16BitWords::new().add_slice(message));
    let was_ok = input.map(|m| sums_to_zero(Sum16BitWords::new().add_slice(m)));
    match kind {
        // Errors: translated, not generated.
        3 | 4 | 5 | 11 | 12 => {
            if !ok && was_ok != Some(false) {
                found.push(finding("icmp_checksum_broken", format!("type {kind} to {dst}")));
            }
            if ok && was_ok == Some(false) {
                found.push(finding("icmp_checksum_masked", format!("type {kind} to {dst}")));
            }
            let quoted = message.get(8..).unwrap_or_default();
            if quoted.len() >= 20 && quoted[0] >> 4 == 4 {
                let ihl = usize::from(quoted[0] & 0x0f) * 4;
                let quoted_src = ipv4_of(&quoted[12..16]);
                if quoted_src != dst {
                    found.push(finding("icmp_error_misdirected", format!("type {kind} to {dst} quotes {quoted_src}")));
                }
                let header_ok =
                    |q: &[u8]| q.len() >= ihl && ihl >= 20 && sums_to_zero(Sum16BitWords::new().add_slice(&q[..ihl]));
                let was = input.and_then(|m| m.get(8..)).map(header_ok);
                if !header_ok(quoted) && was == Some(true) {
                    found.push(finding("quoted_ip_checksum_broken", format!("type {kind} to {dst}")));
                }
            }
        }
        // Anything else is a reply the node generated (echo reply, today).
        _ => {
            if was_ok == Some(false) {
                found.push(finding("answered_corrupt_request", format!("type {kind} to {dst}, reply verifies: {ok}")));
            } else if !ok {
                found.push(finding("icmp_checksum_wrong", format!("type {kind} to {dst}")));
            }
        }
    }
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

fn check_ipv6(facts: &Facts, ip: &Ipv6Slice, dst_mac: [u8; 6], input: Option<&Ipv6Slice>, found: &mut Vec<Finding>) {
    let h = ip.header();
    let dst = h.destination_addr();
    if (dst.is_multicast() && dst != ALL_NODES) || dst.is_unspecified() || dst.is_loopback() {
        found.push(finding("sent_to_martian", format!("IPv6 to {dst}")));
    }
    // The program sends over IPv6 only its answers for the IPv6 VIP: echo replies and Neighbor Advertisements.
    let message = ip.payload().payload;
    let kind = (ip.payload().ip_number.0 == 58 && !ip.payload().fragmented).then(|| message.first().copied()).flatten();
    let asked = input.and_then(|i| {
        let m = i.payload().payload;
        (i.payload().ip_number.0 == 58 && !i.payload().fragmented).then(|| (m.first().copied(), m.get(8..24)))
    });
    let vip6 = facts.vip6.octets();
    let protocol = ip.payload().ip_number.0;
    let input_src = input.map(|i| i.header().source_addr());
    // DSR: the client's packet (or an ICMPv6 error about a backend's reply), unchanged but for the MACs, to a
    // backend that holds the IPv6 VIP itself.
    let error = protocol == 58 && matches!(kind, Some(1..=3));
    let dsr_forward = dst == facts.vip6
        && Some(h.source_addr()) == input_src
        && facts.backend6_macs.contains(&dst_mac)
        && (matches!(protocol, 6 | 17) || error);
    if dsr_forward {
        check_ipv6_forward(facts, ip, input, found);
    }
    // NAT: a client's packet translated to a backend, or a backend's reply translated to the client; both leave
    // from the VIP.
    let nat = !dsr_forward && h.source_addr() == facts.vip6 && matches!(protocol, 6 | 17);
    if nat {
        check_ipv6_nat(facts, ip, input, found);
    }
    // An ICMPv6 error about a NAT flow, translated for the other end: from the router that sent it.
    let nat_error = !dsr_forward
        && error
        && input.is_some_and(|i| {
            i.header().destination_addr() == facts.vip6 && i.header().source_addr() == h.source_addr()
        });
    if nat_error {
        // The quoted packet: the other end's own packet to the VIP (source: the error's destination).
        let quoted = message.get(8..48);
        let about_own = quoted.is_some_and(|q| q[8..24] == dst.octets() && q[24..40] == vip6);
        if !about_own {
            found.push(finding("ipv6_nat_malformed", format!("ICMPv6 error to {dst} quotes another packet")));
        }
    }
    match kind {
        _ if dsr_forward || nat || nat_error => {}
        Some(129) => {
            if h.source_addr() != facts.vip6 {
                found.push(finding("ipv6_sent_malformed", format!("echo reply from {}", h.source_addr())));
            }
            if !matches!(asked, Some((Some(128), _)))
                || input.map(|i| i.header().destination_addr()) != Some(facts.vip6)
            {
                found.push(finding("ipv6_sent_unasked", "echo reply"));
            }
        }
        Some(136) => {
            let flags = message.get(4).copied().unwrap_or(0);
            let to_all = dst == ALL_NODES && dst_mac == ALL_NODES_MAC;
            let well_formed = h.source_addr() == facts.vip6
                && h.hop_limit() == 255
                && message.len() == 32
                && message.get(8..24) == Some(&vip6[..])
                && message.get(24..26) == Some(&[2, 1][..])
                && message.get(26..32) == Some(&facts.node_mac[..])
                && if to_all { flags == 0x20 } else { flags == 0x60 && !dst.is_multicast() };
            if !well_formed {
                found.push(finding(
                    "ipv6_sent_malformed",
                    format!("advertisement {} -> {dst}, flags {flags:#x}, {} bytes", h.source_addr(), message.len()),
                ));
            }
            if asked != Some((Some(135), Some(&vip6[..]))) {
                found.push(finding("ipv6_sent_unasked", "neighbor advertisement"));
            }
        }
        _ => found
            .push(finding("ipv6_sent_malformed", format!("IPv6 to {dst}, next header {}", ip.payload().ip_number.0))),
    }
    if ip.payload().fragmented {
        return;
    }
    let protocol = ip.payload().ip_number.0;
    if !matches!(protocol, 6 | 17 | 58) {
        return;
    }
    let ok = l6_ok(h.source_addr(), dst, protocol, ip.payload().payload);
    let was_ok = input
        .filter(|i| !i.payload().fragmented && i.payload().ip_number.0 == protocol)
        .map(|i| l6_ok(i.header().source_addr(), i.header().destination_addr(), protocol, i.payload().payload));
    if !ok && was_ok != Some(false) {
        found.push(finding("l4_checksum_broken", format!("IPv6 to {dst} protocol {protocol}")));
    }
    if ok && was_ok == Some(false) {
        found.push(finding("l4_checksum_masked", format!("IPv6 to {dst} protocol {protocol}")));
    }
}

/// Whether a TCP or UDP segment's checksum verifies (a UDP checksum of 0 means none, RFC 768).
pub fn l4_ok(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> bool {
    let segment = match protocol {
        17 => {
            if segment.len() < 8 {
                return false;
            }
            if segment[6..8] == [0, 0] {
                return true;
            }
            let len = usize::from(u16::from_be_bytes([segment[4], segment[5]]));
            match segment.get(..len) {
                Some(s) if len >= 8 => s,
                _ => return false,
            }
        }
        _ => segment,
    };
    let Ok(len) = u16::try_from(segment.len()) else {
        return false;
    };
    sums_to_zero(
        Sum16BitWords::new()
            .add_4bytes(src)
            .add_4bytes(dst)
            .add_2bytes([0, protocol])
            .add_2bytes(len.to_be_bytes())
            .add_slice(segment),
    )
}

/// An IPv6 DSR forward (see the `ipv6_forward_malformed` rule); the checksum rules apply to it as to any frame.
fn check_ipv6_forward(facts: &Facts, ip: &Ipv6Slice, input: Option<&Ipv6Slice>, found: &mut Vec<Finding>) {
    let h = ip.header();
    let src = h.source_addr();
    let mapped = src.to_ipv4_mapped().is_some();
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() || mapped || src == facts.vip6 {
        found.push(finding("martian_source_sent", format!("IPv6 DSR forward from {src}")));
    }
    let protocol = ip.payload().ip_number.0;
    let segment = ip.payload().payload;
    let unchanged = input.is_some_and(|i| i.header().slice() == h.slice() && i.payload().payload == segment);
    let dport = segment.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
    let served = if protocol == 58 {
        // An error quoting a packet the VIP sent from a service port (after the 8-byte ICMPv6 header, the quoted
        // IPv6 header: next header at 6, source at 8..24; then its ports).
        let quoted = segment.get(8..).unwrap_or_default();
        let from_vip = quoted.get(8..24) == Some(&facts.vip6.octets()[..]);
        let service = quoted.get(6).copied().zip(quoted.get(40..42).map(|p| u16::from_be_bytes([p[0], p[1]])));
        from_vip && service.is_some_and(|s| facts.services6.contains(&s))
    } else {
        dport.is_some_and(|port| facts.services6.contains(&(protocol, port)))
    };
    let plain = h.next_header().0 == protocol && !ip.payload().fragmented;
    let udp_checksum = protocol != 17 || segment.get(6..8).is_some_and(|c| c != [0, 0]);
    if !(unchanged && served && plain && udp_checksum) {
        found.push(finding(
            "ipv6_forward_malformed",
            format!(
                "{src} -> {} protocol {protocol} port {dport:?}: unchanged {unchanged}, served {served}, no \
                 extension header {plain}, UDP checksum {udp_checksum}",
                h.destination_addr()
            ),
        ));
    }
}

/// An IPv6 NAT translation (see the `ipv6_nat_malformed` rule); the checksum rules apply to it as to any frame.
fn check_ipv6_nat(facts: &Facts, ip: &Ipv6Slice, input: Option<&Ipv6Slice>, found: &mut Vec<Finding>) {
    let h = ip.header();
    let protocol = ip.payload().ip_number.0;
    let segment = ip.payload().payload;
    let port = |s: &[u8], at: usize| s.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    let (sport, dport) = (port(segment, 0), port(segment, 2));
    let header_len = if protocol == 6 { segment.get(12).map_or(20, |b| usize::from(b >> 4) * 4) } else { 8 };
    let data = segment.get(header_len..);
    let came = input.map(|i| (i.header().source_addr(), i.payload().payload));
    let same_data = came.is_some_and(|(_, s)| s.get(header_len..) == data);
    let to_backend = facts.backends6.contains(&h.destination_addr())
        && facts.nat6.iter().any(|&(p, svc, bport)| {
            p == protocol && Some(bport) == dport && came.is_some_and(|(_, s)| port(s, 2) == Some(svc))
        })
        && sport.is_some_and(|p| p >= 1024);
    let to_client = came.is_some_and(|(from, s)| {
        facts.backends6.contains(&from)
            && facts
                .nat6
                .iter()
                .any(|&(p, svc, bport)| p == protocol && port(s, 0) == Some(bport) && sport == Some(svc))
    }) && !facts.backends6.contains(&h.destination_addr());
    let plain = h.next_header().0 == protocol && !ip.payload().fragmented;
    let udp_checksum = protocol != 17 || segment.get(6..8).is_some_and(|c| c != [0, 0]);
    if !((to_backend || to_client) && same_data && plain && udp_checksum) {
        found.push(finding(
            "ipv6_nat_malformed",
            format!(
                "[{}]:{sport:?} -> [{}]:{dport:?} protocol {protocol}: to a backend {to_backend}, to a client \
                 {to_client}, payload unchanged {same_data}, no extension header {plain}, UDP checksum {udp_checksum}",
                h.source_addr(),
                h.destination_addr()
            ),
        ));
    }
}

fn l6_ok(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, segment: &[u8]) -> bool {
    let Ok(len) = u32::try_from(segment.len()) else {
        return false;
    };
    sums_to_zero(
        Sum16BitWords::new()
            .add_16bytes(src.octets())
            .add_16bytes(dst.octets())
            .add_4bytes(len.to_be_bytes())
            .add_4bytes([0, 0, 0, protocol])
            .add_slice(segment),
    )
}

/// A checksummed region verifies when its words, checksum included, add up to 0xffff (RFC 1071).
fn sums_to_zero(sum: Sum16BitWords) -> bool {
    sum.ones_complement() == 0
}

fn ipv4_of(bytes: &[u8]) -> Ipv4Addr {
    match bytes {
        [a, b, c, d] => Ipv4Addr::new(*a, *b, *c, *d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

fn mac(m: [u8; 6]) -> String {
    mac_of(&m)
}

pub fn mac_of(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn verdict_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "ABORTED",
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        XDP_TX => "TX",
        XDP_REDIRECT => "REDIRECT",
        _ => "other",
    }
}

/// The checker checked: hand-built frames (support::frames, independent of both the program and etherparse) that
/// keep or break one rule each.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{BACKENDS, NODE_IP, NODE_MAC, ROUTER_MAC, VIP};
    use crate::support::frames::{self, TCP_ACK, TCP_SYN};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn facts() -> Facts {
        crate::facts()
    }

    fn rules(input: &[u8], action: u32, output: &[u8], active: bool) -> Vec<&'static str> {
        frame(&facts(), active, input, action, output).into_iter().map(|f| f.rule).collect()
    }

    /// A client's SYN to VIP:80 and its NAT translation VIP:40000 -> backend:8080, both with correct checksums.
    fn nat_forward() -> (Vec<u8>, Vec<u8>) {
        let (backend, mac) = BACKENDS[0];
        let input = frames::tcp_frame(NODE_MAC, ROUTER_MAC, CLIENT, VIP, 33000, 80, TCP_SYN, b"");
        let output = frames::tcp_frame(mac, NODE_MAC, VIP, backend, 40000, 8080, TCP_SYN, b"");
        (input, output)
    }

    /// A solicitation for the IPv6 VIP (to `dst` at `dst_mac`, from `src`) and the advertisement answering it.
    fn solicitation_and_answer(src: Ipv6Addr, flags: u8, to: Ipv6Addr, to_mac: [u8; 6]) -> (Vec<u8>, Vec<u8>) {
        let vip6 = crate::node::VIP6;
        let (group, group_mac) = frames::solicited_node(vip6);
        let client_mac = [0x02, 0, 0, 0, 0, 0x10];
        let slla = (!src.is_unspecified()).then_some(client_mac);
        let mut input = frames::eth(group_mac, client_mac, frames::ETH_IPV6);
        input.extend(frames::ipv6(
            src,
            group,
            58,
            255,
            &frames::icmp6(src, group, frames::neighbor_solicitation(vip6, slla)),
        ));
        let mut output = frames::eth(to_mac, NODE_MAC, frames::ETH_IPV6);
        let na = frames::icmp6(vip6, to, frames::neighbor_advertisement(vip6, flags, NODE_MAC));
        output.extend(frames::ipv6(vip6, to, 58, 255, &na));
        (input, output)
    }

    #[test]
    fn ipv6_nat_translations_are_judged() {
        let client = crate::node::CLIENT6;
        let vip6 = crate::node::VIP6;
        let (backend, mac) = crate::node::BACKENDS6[0];
        let frame = |dst_mac, src_mac, src, dst, sport, dport, payload: &[u8]| {
            let mut f = frames::eth(dst_mac, src_mac, frames::ETH_IPV6);
            f.extend(frames::ipv6(src, dst, 6, 64, &frames::tcp6(src, dst, sport, dport, TCP_ACK, payload)));
            f
        };
        let client_mac = [0x02, 0, 0, 0, 0, 0x10];
        let input = frame(NODE_MAC, client_mac, client, vip6, 40001, 8080, b"GET");
        let output = frame(mac, NODE_MAC, vip6, backend, 40000, 8081, b"GET");
        assert_eq!(rules(&input, XDP_TX, &output, true), Vec::<&str>::new());
        let reply = frame(NODE_MAC, mac, backend, vip6, 8081, 40000, b"OK");
        let back = frame(client_mac, NODE_MAC, vip6, client, 8080, 40001, b"OK");
        assert_eq!(rules(&reply, XDP_TX, &back, true), Vec::<&str>::new());
        // Another payload, another backend port, or a client's packet sent back to a client are not translations.
        let changed = frame(mac, NODE_MAC, vip6, backend, 40000, 8081, b"PUT");
        assert_eq!(rules(&input, XDP_TX, &changed, true), ["ipv6_nat_malformed"]);
        let wrong_port = frame(mac, NODE_MAC, vip6, backend, 40000, 9999, b"GET");
        assert_eq!(rules(&input, XDP_TX, &wrong_port, true), ["ipv6_nat_malformed"]);
        let reflected = frame(client_mac, NODE_MAC, vip6, client, 8080, 40001, b"GET");
        assert_eq!(rules(&input, XDP_TX, &reflected, true), ["ipv6_nat_malformed"]);
    }

    #[test]
    fn ipv6_nat_icmp_errors_must_quote_the_other_ends_packet() {
        let (client, vip6) = (crate::node::CLIENT6, crate::node::VIP6);
        let (backend, mac) = crate::node::BACKENDS6[0];
        let router = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
        let error = |dst_mac, src_mac, dst, quoted_src, quoted_dst| {
            let mut m = vec![2, 0, 0, 0, 0, 0, 5, 0];
            let tcp = frames::tcp6(quoted_src, quoted_dst, 8081, 40000, TCP_ACK, b"");
            m.extend(frames::ipv6(quoted_src, quoted_dst, 6, 64, &tcp));
            let mut f = frames::eth(dst_mac, src_mac, frames::ETH_IPV6);
            f.extend(frames::ipv6(router, dst, 58, 64, &frames::icmp6(router, dst, m)));
            f
        };
        let input = error(NODE_MAC, [0x02, 0, 0, 0, 0, 0xfe], vip6, vip6, client);
        let good = error(mac, NODE_MAC, backend, backend, vip6);
        assert_eq!(rules(&input, XDP_TX, &good, true), Vec::<&str>::new());
        let wrong = error(mac, NODE_MAC, backend, client, vip6);
        assert_eq!(rules(&input, XDP_TX, &wrong, true), ["ipv6_nat_malformed"]);
    }

    #[test]
    fn advertisements_for_the_ipv6_vip_are_judged() {
        let client: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        let client_mac = [0x02, 0, 0, 0, 0, 0x10];
        let (input, output) = solicitation_and_answer(client, 0x60, client, client_mac);
        assert_eq!(rules(&input, XDP_TX, &output, true), Vec::<&str>::new());
        // Duplicate address detection: to all nodes, Override only.
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let (input, output) = solicitation_and_answer(Ipv6Addr::UNSPECIFIED, 0x20, all, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(rules(&input, XDP_TX, &output, true), Vec::<&str>::new());
        // Solicited to all nodes, and a hop limit below 255, are malformed.
        let (input, output) = solicitation_and_answer(Ipv6Addr::UNSPECIFIED, 0x60, all, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(rules(&input, XDP_TX, &output, true), ["ipv6_sent_malformed"]);
        let (input, mut output) = solicitation_and_answer(client, 0x60, client, client_mac);
        output[21] = 64;
        assert_eq!(rules(&input, XDP_TX, &output, true), ["ipv6_sent_malformed"]);
        // An advertisement nobody asked for.
        let (_, output) = solicitation_and_answer(client, 0x60, client, client_mac);
        let unasked = frames::tcp_frame(NODE_MAC, ROUTER_MAC, CLIENT, VIP, 33000, 80, TCP_SYN, b"");
        assert_eq!(rules(&unasked, XDP_TX, &output, true), ["ipv6_sent_unasked"]);
    }

    #[test]
    fn ipv6_dsr_forwards_are_judged() {
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
        let vip6 = crate::node::VIP6;
        let backend_mac = crate::node::BACKENDS6[0].1;
        let forward = |segment: Vec<u8>| {
            let mut input = frames::eth(NODE_MAC, ROUTER_MAC, frames::ETH_IPV6);
            input.extend(frames::ipv6(client, vip6, 6, 64, &segment));
            let mut output = input.clone();
            output[0..6].copy_from_slice(&backend_mac);
            output[6..12].copy_from_slice(&NODE_MAC);
            (input, output)
        };
        let (input, output) = forward(frames::tcp6(client, vip6, 33000, 80, TCP_SYN, b""));
        assert_eq!(rules(&input, XDP_TX, &output, true), Vec::<&str>::new());
        // A changed byte, a port without a service, a martian source.
        let mut changed = output.clone();
        changed[21] = 63;
        assert_eq!(rules(&input, XDP_TX, &changed, true), ["ipv6_forward_malformed"]);
        let (input, output) = forward(frames::tcp6(client, vip6, 33000, 81, TCP_SYN, b""));
        assert_eq!(rules(&input, XDP_TX, &output, true), ["ipv6_forward_malformed"]);
        // An ICMPv6 error quoting a packet the VIP sent from port 80, and one quoting another source.
        let router = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
        let error = |from: Ipv6Addr| {
            let mut m = vec![2, 0, 0, 0, 0, 0, 5, 0];
            m.extend(frames::ipv6(from, client, 6, 64, &frames::tcp6(from, client, 80, 33000, TCP_SYN, b"")));
            let mut input = frames::eth(NODE_MAC, ROUTER_MAC, frames::ETH_IPV6);
            input.extend(frames::ipv6(router, vip6, 58, 64, &frames::icmp6(router, vip6, m)));
            let mut output = input.clone();
            output[0..6].copy_from_slice(&backend_mac);
            output[6..12].copy_from_slice(&NODE_MAC);
            (input, output)
        };
        let (input, output) = error(vip6);
        assert_eq!(rules(&input, XDP_TX, &output, true), Vec::<&str>::new());
        let (input, output) = error(client);
        assert_eq!(rules(&input, XDP_TX, &output, true), ["ipv6_forward_malformed"]);
        // To a MAC that is no IPv6 backend's: not a forward at all.
        let (input, mut output) = forward(frames::tcp6(client, vip6, 33000, 80, TCP_SYN, b""));
        output[0..6].copy_from_slice(&BACKENDS[0].1);
        assert_eq!(rules(&input, XDP_TX, &output, true), ["ipv6_sent_malformed"]);
    }

    #[test]
    fn a_correct_nat_forward_keeps_every_rule() {
        let (input, output) = nat_forward();
        assert_eq!(rules(&input, XDP_TX, &output, true), Vec::<&str>::new());
    }

    #[test]
    fn anything_sent_while_backup_is_a_violation() {
        let (input, output) = nat_forward();
        assert_eq!(rules(&input, XDP_TX, &output, false), ["sent_while_backup"]);
        assert!(rules(&input, XDP_PASS, &input, false).is_empty(), "passing is not sending");
    }

    #[test]
    fn checksums_broken_by_the_program_are_told_apart_from_bad_ones_passed_on() {
        let (input, mut output) = nat_forward();
        output[24] ^= 0x01;
        assert_eq!(rules(&input, XDP_TX, &output, true), ["ip_checksum_broken"]);
        let (input, mut output) = nat_forward();
        output[50] ^= 0x01;
        assert_eq!(rules(&input, XDP_TX, &output, true), ["l4_checksum_broken"]);
        // A segment that came in corrupt and goes out as corrupt is the receiver's to drop.
        let (mut input, mut output) = nat_forward();
        input[50] ^= 0x01;
        output[50] ^= 0x01;
        assert!(rules(&input, XDP_TX, &output, true).is_empty());
    }

    #[test]
    fn dsr_forward_may_carry_the_vip_but_only_a_real_client() {
        let (backend_mac, input) =
            (BACKENDS[1].1, frames::tcp_frame(NODE_MAC, ROUTER_MAC, CLIENT, VIP, 33000, 443, TCP_ACK, b"x"));
        let mut output = input.clone();
        output[..6].copy_from_slice(&backend_mac);
        output[6..12].copy_from_slice(&NODE_MAC);
        assert!(rules(&input, XDP_TX, &output, true).is_empty());
        let spoofed = frames::tcp_frame(NODE_MAC, ROUTER_MAC, Ipv4Addr::LOCALHOST, VIP, 33000, 443, TCP_ACK, b"x");
        let mut output = spoofed.clone();
        output[..6].copy_from_slice(&backend_mac);
        output[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(rules(&spoofed, XDP_TX, &output, true), ["martian_source_sent"]);
    }

    #[test]
    fn each_frame_carries_the_mac_of_the_interface_it_leaves_through() {
        let (input, mut output) = nat_forward();
        // XDP_TX leaves through the VIP's interface: its MAC, not the second interface's.
        output[6..12].copy_from_slice(&crate::node::FAR_MAC);
        assert_eq!(rules(&input, XDP_TX, &output, true), ["source_mac_not_node"]);
        // A redirect leaves through the second interface: its MAC, not the VIP interface's.
        assert!(rules(&input, XDP_REDIRECT, &output, true).is_empty());
        output[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(rules(&input, XDP_REDIRECT, &output, true), ["source_mac_not_node"]);
        // Sent to the MAC of the interface it leaves through: straight back to the node.
        let (input, mut output) = nat_forward();
        output[..6].copy_from_slice(&NODE_MAC);
        assert_eq!(rules(&input, XDP_TX, &output, true), ["bad_destination_mac"]);
    }

    #[test]
    fn replies_to_the_vip_the_node_or_a_martian_are_violations() {
        for (to, rule) in
            [(VIP, "sent_to_vip"), (NODE_IP, "sent_to_self"), (Ipv4Addr::new(127, 0, 0, 1), "sent_to_martian")]
        {
            let request = frames::icmp_echo(8, 1, 2, b"ping");
            let mut input = frames::eth(NODE_MAC, ROUTER_MAC, frames::ETH_IPV4);
            input.extend_from_slice(&frames::ipv4(to, VIP, 1, &request));
            let mut output = frames::eth(ROUTER_MAC, NODE_MAC, frames::ETH_IPV4);
            output.extend_from_slice(&frames::ipv4(VIP, to, 1, &frames::icmp_echo(0, 1, 2, b"ping")));
            assert_eq!(rules(&input, XDP_TX, &output, true), [rule], "echo reply to {to}");
        }
    }

    #[test]
    fn echo_reply_to_a_corrupt_request_and_from_a_foreign_mac() {
        let mut input = frames::eth(NODE_MAC, ROUTER_MAC, frames::ETH_IPV4);
        input.extend_from_slice(&frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 1, 2, b"ping")));
        let mut output = frames::eth(ROUTER_MAC, [0xff; 6], frames::ETH_IPV4);
        output.extend_from_slice(&frames::ipv4(VIP, CLIENT, 1, &frames::icmp_echo(0, 1, 2, b"ping")));
        assert_eq!(rules(&input, XDP_TX, &output, true), ["source_mac_not_node"]);
        input[40] ^= 0x01;
        output[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(rules(&input, XDP_TX, &output, true), ["answered_corrupt_request"]);
    }

    #[test]
    fn arp_replies_only_to_requests_for_the_vip() {
        let request = frames::arp_request([0x02, 0, 0, 0, 0, 0x10], Ipv4Addr::new(10, 77, 0, 10), VIP);
        let reply = |tpa: Ipv4Addr| {
            let eth = frames::eth([0x02, 0, 0, 0, 0, 0x10], NODE_MAC, frames::ETH_ARP);
            frames::arp(eth, 2, NODE_MAC, VIP, [0x02, 0, 0, 0, 0, 0x10], tpa)
        };
        assert!(rules(&request, XDP_TX, &reply(Ipv4Addr::new(10, 77, 0, 10)), true).is_empty());
        let other = frames::arp_request([0x02, 0, 0, 0, 0, 0x10], Ipv4Addr::new(10, 77, 0, 10), NODE_IP);
        assert_eq!(rules(&other, XDP_TX, &reply(Ipv4Addr::new(10, 77, 0, 10)), true), ["arp_reply_unasked"]);
        assert_eq!(rules(&request, XDP_TX, &reply(Ipv4Addr::new(224, 0, 0, 1)), true), ["sent_to_martian"]);
    }

    #[test]
    fn output_that_does_not_parse_is_malformed() {
        let (input, output) = nat_forward();
        assert_eq!(rules(&input, XDP_TX, &output[..40], true), ["malformed_output"]);
        assert_eq!(rules(&input[..40], XDP_TX, &output[..40], true), ["malformed_passed_on"]);
    }

    #[test]
    fn martians_include_the_subnet_broadcasts_but_not_ordinary_hosts() {
        let f = facts();
        for a in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 18], [255, 255, 255, 255], [240, 1, 1, 1], [10, 77, 0, 255]]
        {
            assert!(f.martian(Ipv4Addr::from(a)), "{a:?}");
        }
        for a in [[10, 77, 0, 10], [198, 51, 100, 7], [10, 78, 0, 31], [169, 254, 1, 1]] {
            assert!(!f.martian(Ipv4Addr::from(a)), "{a:?}");
        }
    }
}
