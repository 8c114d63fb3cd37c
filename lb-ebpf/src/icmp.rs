//! ICMP to the VIP: echo requests are answered; destination unreachable (including "fragmentation needed") and
//! time exceeded errors about NAT flows go to the other end of the flow, translated as that end expects, so path
//! MTU discovery and unreachable errors work through the NAT; those about a DSR backend's packet to a client go to
//! that backend as they are (it holds the VIP). Everything else is dropped (`DropNoService`).
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use lb_common::{
    Backend, ECHO_MAX_LEN, FORWARD_DSR, FORWARD_NAT, FlowKey, NatKey, NodeConfig, PROTO_TCP, PROTO_UDP, Reason,
    ServiceKey,
};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

use crate::{
    csum::{self, Delta},
    forward::{self, set_macs},
    maps::{BACKENDS, CONNTRACK, NAT},
    nat::{TCP_CHECK_OFF, UDP_CHECK_OFF},
    packet,
    parse::{IP_LEN, L4_OFF},
    route::{self, NoRoute},
    service,
    vip::Vip,
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Offset of the quoted TCP/UDP header inside an ICMP error (RFC 792): after the 8-byte ICMP header and the
/// quoted IP header. Only a quoted header without options is handled, so this stays constant for the verifier.
const INNER_L4_OFF: usize = L4_OFF + Icmpv4Hdr::LEN + IP_LEN;

/// ICMP to the VIP (the source already passed the martian checks).
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    vip: &Vip,
    total: usize,
) -> (u32, Reason) {
    let Some(icmp) = packet::at::<Icmpv4Hdr>(ctx, L4_OFF) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    if total < IP_LEN + Icmpv4Hdr::LEN {
        return (XDP_PASS, Reason::PassTruncated);
    }
    // SAFETY: bounds-checked by `at`.
    let (kind, code) = unsafe { ((*icmp).type_, (*icmp).code) };
    match kind {
        ICMP_ECHO_REQUEST if code == 0 => echo(ctx, eth, ip, icmp, config, vip, total - IP_LEN),
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => error(ctx, eth, ip, config, vip.address, total),
        _ => (XDP_DROP, Reason::DropNoService),
    }
}

/// Answers an ICMP echo request to the VIP (`len` bytes of ICMP) in place: type 8 -> 0, checksum adjusted,
/// addresses swapped, and sent back out of the interface it came in on, to the MAC it came from, from the MAC the
/// VIP is answered with ([`VipValue::mac`](lb_common::VipValue), its interface's), as an ARP reply is. Only a request whose checksum verifies is answered, as a host does, and only from a
/// MAC a host can have (unicast, not zero, not the node's): the source MAC of a corrupt or forged frame is not a
/// destination (`DropMartianSource`). Asking the FIB instead would cost about 400 ns per ping (measured with
/// `cargo xtask bench xdp`), ten times the rest of this path, and fail on nodes without IPv4 forwarding.
#[inline(always)]
fn echo(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    icmp: *mut Icmpv4Hdr,
    config: &NodeConfig,
    vip: &Vip,
    len: usize,
) -> (u32, Reason) {
    // SAFETY: bounds-checked by `at` in `process`.
    let asker_mac = unsafe { (*eth).src_addr };
    if asker_mac[0] & 1 != 0 || asker_mac == [0; 6] || asker_mac == config.mac || asker_mac == vip.value.mac {
        return (XDP_DROP, Reason::DropMartianSource);
    }
    if len > ECHO_MAX_LEN {
        return (XDP_DROP, Reason::DropEchoTooLong);
    }
    if !message_ok::<L4_OFF>(ctx, len, 0) {
        return (XDP_DROP, Reason::DropIcmpChecksum);
    }
    // SAFETY: bounds-checked by `at` in `handle`.
    let icmp = unsafe { &mut *icmp };
    // The type is the high byte of the first 16-bit word; the code (0) stays. A reply whose other words are all
    // zero (identifier, sequence, data) needs 0xffff, the only checksum that verifies then; the update gives 0x0000
    // there, and 0xffff verifies wherever 0x0000 does.
    let check = csum::replace16(icmp.check, u16::from(ICMP_ECHO_REQUEST) << 8, u16::from(ICMP_ECHO_REPLY) << 8);
    icmp.check = if check == [0, 0] { [0xff, 0xff] } else { check };
    icmp.type_ = ICMP_ECHO_REPLY;
    // Swapping source and destination leaves the IP header checksum unchanged.
    // SAFETY: the IP header was bounds-checked by `at` in `process`; its addresses are bytes 12..20.
    unsafe {
        let addresses = (ip as *mut Ipv4Hdr as *mut u8).add(12);
        let (source, destination) = (packet::load4(addresses), packet::load4(addresses.add(4)));
        packet::store4(addresses, destination);
        packet::store4(addresses.add(4), source);
    }
    set_macs(eth, asker_mac, vip.value.mac);
    (XDP_TX, Reason::EchoReply)
}

/// Whether the ICMP message of `len` bytes (at most [`ECHO_MAX_LEN`]) at offset `OFF` of the frame (after the IP
/// header) verifies: all its 16-bit words, checksum included, and `seed` (a pseudo-header's sum for ICMPv6, 0 for
/// ICMP, summed the same way) add up to 0xffff in one's complement (RFC 1071; a trailing odd byte is padded with a
/// zero byte). Summed 8 bytes at a time in host order, which RFC 1071 §2 shows gives the same result as big-endian
/// 16-bit words (byte swapped, and 0xffff is its own swap), two words per round: a loop of at most
/// `ECHO_MAX_LEN / 16` rounds the verifier can bound, each with one bounds check (half the loop overhead of one
/// word per round: a 64-byte ping takes four rounds; reading it after one bounds check measured no faster).
#[inline(always)]
pub fn message_ok<const OFF: usize>(ctx: &XdpContext, len: usize, seed: u64) -> bool {
    let rounds = len / 16;
    let mut sum: u64 = seed;
    let mut i = 0;
    while i < ECHO_MAX_LEN / 16 {
        if i >= rounds {
            break;
        }
        let Some(p) = packet::at::<[u8; 16]>(ctx, OFF + i * 16) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        let (a, b) = unsafe {
            let p = p as *const u8;
            (u64::from_ne_bytes(packet::load8(p)), u64::from_ne_bytes(packet::load8(p.add(8))))
        };
        // Folded every round: the sum stays below 2^35, and the verifier sees the same range after every round.
        sum = (sum & 0xffff_ffff) + (sum >> 32) + (a & 0xffff_ffff) + (a >> 32) + (b & 0xffff_ffff) + (b >> 32);
        i += 1;
    }
    let mut at = OFF + rounds * 16;
    let rest = len % 16;
    if rest & 8 != 0 {
        let Some(p) = packet::at::<[u8; 8]>(ctx, at) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        let v = u64::from_ne_bytes(unsafe { packet::load8(p as *const u8) });
        sum += (v & 0xffff_ffff) + (v >> 32);
        at += 8;
    }
    if rest & 4 != 0 {
        let Some(p) = packet::at::<[u8; 4]>(ctx, at) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        sum += u64::from(u32::from_ne_bytes(unsafe { packet::load4(p as *const u8) }));
        at += 4;
    }
    if rest & 2 != 0 {
        let Some(p) = packet::at::<[u8; 2]>(ctx, at) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        sum += u64::from(u16::from_ne_bytes(unsafe { *p }));
        at += 2;
    }
    if rest & 1 != 0 {
        // Read as the second byte of the two ending the message (a one-byte read at a variable offset compiles
        // to a bounds check the verifier cannot follow); the first of them was summed already.
        let Some(p) = packet::at::<[u8; 2]>(ctx, at - 1) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`. The odd byte is the first of a word whose second byte is 0.
        sum += u64::from(u16::from_ne_bytes([unsafe { (*p)[1] }, 0]));
    }
    csum::sum_verifies(sum)
}

/// An ICMP error to the VIP. If it is about a packet this node translated, it goes to the other end of the flow:
///
/// - About a packet sent to a backend (quoted `VIP:nport -> backend:bport`): to the client, quoting
///   `client:cport -> VIP:svc`, which is what the client sent. Routed by the FIB, like replies.
/// - About a reply sent to a client (quoted `VIP:svc -> client:cport`): to the backend, quoting
///   `backend:bport -> VIP:nport`, if the flow's pinned backend slot still belongs to the flow's service.
///
/// Either way the error comes from the VIP (the outer source), so no address behind the NAT shows, and the new
/// outer destination is the new quoted source.
///
/// About a DSR backend's packet to a client (quoted `VIP:svc -> client:cport`, a flow without a NAT port): to the
/// flow's pinned backend unchanged, if the pin still holds (`Backend::keeps_pin`), as the flow's packets go.
#[inline(always)]
fn error(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    vip: [u8; 4],
    total: usize,
) -> (u32, Reason) {
    // The ICMP header, the quoted IP header and the quoted ports (RFC 792 guarantees 8 bytes of the quoted
    // payload; the ports suffice), in one bounds check.
    let Some(error) = packet::at::<IcmpError>(ctx, L4_OFF) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    if total < IP_LEN + core::mem::size_of::<IcmpError>() {
        return (XDP_PASS, Reason::PassTruncated);
    }
    // SAFETY: bounds-checked by `at`.
    let error = unsafe { &mut *error };
    let (inner, ports) = (&error.inner, error.ports);
    let protocol = inner.proto;
    if inner.vihl != 0x45 || inner.src_addr != vip || (protocol != PROTO_TCP && protocol != PROTO_UDP) {
        return (XDP_DROP, Reason::DropNoService);
    }
    let quoted_sport = [ports[0], ports[1]];
    let quoted_dport = [ports[2], ports[3]];

    let key = NatKey::new(inner.dst_addr, vip, quoted_dport, quoted_sport, protocol);
    // SAFETY: copied out at once.
    if let Some(to) = unsafe { NAT.get(&key) }.copied() {
        let tot_len = u16::from_be_bytes(ip.tot_len);
        let route = route::lookup(ctx, vip, to.client, ip.proto as u8, tot_len);
        if let Err(no) = route
            && no != NoRoute::Neighbour
        {
            return (XDP_DROP, no.reason());
        }
        translate(ctx, ip, error, vip, total, to.client, to.client_port, to.service_port);
        let Ok(route) = route else {
            return (XDP_PASS, Reason::PassNoNeighbour);
        };
        set_macs(eth, route.next_hop_mac, route.egress_mac);
        return forward::send(ctx, route.ifindex, Reason::NatIcmpToClient, Reason::NatIcmpToClient);
    }

    let flow = FlowKey::new(inner.dst_addr, vip, quoted_dport, quoted_sport, protocol);
    // SAFETY: copied out at once.
    let Some(pinned) = unsafe { CONNTRACK.get(&flow) }.copied() else {
        return (XDP_DROP, Reason::DropNoService);
    };
    // The slot must still hold the flow's backend, of the flow's service: slots are reused when backends leave.
    let Some(svc) = service::lookup_service(&ServiceKey::new(vip, quoted_sport, protocol)) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    let Some(backend) = BACKENDS.get(pinned.backend) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    let backend: Backend = *backend;
    if pinned.nat_port == [0, 0] {
        // A DSR flow: its backend holds the VIP and sent the quoted packet itself, so the error goes to it as it
        // is (only the MACs change), like the flow's packets, and the backend learns the path MTU to the client.
        if svc.forwarding != FORWARD_DSR || !backend.keeps_pin(&pinned, svc.index) {
            return (XDP_DROP, Reason::DropNoService);
        }
        if let Err(reason) = forward::take_backend(ctx, svc.index, pinned.backend, &backend, false) {
            return (XDP_DROP, reason);
        }
        return forward::to_backend(ctx, eth, config, &backend, forward::DSR_REASONS);
    }
    if svc.forwarding != FORWARD_NAT || u32::from(backend.service) != svc.index || !pinned.holds(&backend) {
        return (XDP_DROP, Reason::DropNoService);
    }
    if backend.mac == [0; 6] {
        return (XDP_DROP, Reason::DropBackendUnresolved);
    }
    translate(ctx, ip, error, vip, total, backend.address, backend.port, pinned.nat_port);
    // A backend on this node gets it through the node's stack, like its flow's packets.
    forward::to_backend(ctx, eth, config, &backend, [Reason::NatIcmpToBackend; 3])
}

/// Rewrites an ICMP error in place: the outer header becomes `VIP -> peer`, the quoted packet
/// `peer:peer_port -> VIP:vip_port`. Fixes the outer IP checksum, the quoted IP checksum, the quoted TCP/UDP
/// checksum when the error quotes it, and the ICMP checksum (which covers everything quoted, RFC 792).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    ip: &mut Ipv4Hdr,
    error: &mut IcmpError,
    vip: [u8; 4],
    total: usize,
    peer: [u8; 4],
    peer_port: [u8; 2],
    vip_port: [u8; 2],
) {
    let protocol = error.inner.proto;
    let (icmp, inner, ports) = (&mut error.icmp, &mut error.inner, &mut error.ports);

    // The quoted packet: its addresses (IP checksum, and TCP/UDP pseudo-header) and ports.
    let addresses = Delta::new().addr(inner.src_addr, peer).addr(inner.dst_addr, vip);
    let inner_check = addresses.apply(inner.check);
    let port_words = Delta::new().word([ports[0], ports[1]], peer_port).word([ports[2], ports[3]], vip_port);
    let l4 = addresses.merge(port_words);
    // The ICMP checksum covers every quoted byte that changes.
    let mut quoted = addresses.word(inner.check, inner_check).merge(port_words);

    // The quoted TCP/UDP checksum, when the error carries it (often only 8 bytes of TCP are quoted).
    let quoted_l4_len = total.saturating_sub(IP_LEN + Icmpv4Hdr::LEN + IP_LEN);
    if protocol == PROTO_TCP {
        if quoted_l4_len >= TCP_CHECK_OFF + 2
            && let Some(check) = packet::at::<[u8; 2]>(ctx, INNER_L4_OFF + TCP_CHECK_OFF)
        {
            // SAFETY: bounds-checked by `at`.
            let check = unsafe { &mut *check };
            let new = l4.apply(*check);
            quoted = quoted.word(*check, new);
            *check = new;
        }
    } else if quoted_l4_len >= UDP_CHECK_OFF + 2
        && let Some(check) = packet::at::<[u8; 2]>(ctx, INNER_L4_OFF + UDP_CHECK_OFF)
    {
        // SAFETY: bounds-checked by `at`.
        let check = unsafe { &mut *check };
        let new = l4.apply_udp(*check);
        quoted = quoted.word(*check, new);
        *check = new;
    }
    icmp.check = quoted.apply(icmp.check);
    inner.check = inner_check;
    inner.src_addr = peer;
    inner.dst_addr = vip;
    *ports = [peer_port[0], peer_port[1], vip_port[0], vip_port[1]];

    // The outer header: from the VIP to the peer (an ICMP message has no pseudo-header).
    let outer = Delta::new().addr(ip.src_addr, vip).addr(ip.dst_addr, peer);
    ip.check = outer.apply(ip.check);
    ip.src_addr = vip;
    ip.dst_addr = peer;
}

/// The start of an ICMP error message (RFC 792): its header, the quoted IP header (without options: constant
/// offsets for the verifier) and the quoted ports.
#[repr(C)]
pub struct IcmpError {
    icmp: Icmpv4Hdr,
    inner: Ipv4Hdr,
    ports: [u8; 4],
}
