//! ICMPv6 for IPv6 VIPs: Neighbor Solicitations answered with Neighbor Advertisements (RFC 4861 §7.2.4) and echo
//! requests with echo replies (RFC 4443 §4.2), in place, while the VIP's router may answer; errors handed to
//! `forward6` (one about a DSR backend's reply goes to that backend). Every other ICMPv6 message to a VIP is dropped
//! (`DropNoService`).
//!
//! A solicitation is answered only when it passes the receiver's checks of RFC 4861 §7.1.1 (hop limit 255, a
//! checksum that verifies, code 0, at least 24 bytes, the VIP as target, no option of length 0, and from the
//! unspecified address only to the solicited-node group and without a source link-layer address option), is at
//! most 64 bytes long, and comes from a MAC a host can have, on the VIP's interface. The advertisement carries the VIP's MAC in a target
//! link-layer address option, Override set, Solicited set (except for duplicate address detection, whose asker
//! has no address yet: then it goes to all nodes, ff02::1, as §7.2.4 says), hop limit 255, from the VIP.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use core::mem::offset_of;

use lb_common::{ECHO_MAX_LEN, NodeConfig, Reason, VipValue, martian_source6_halves};
use network_types::{eth::EthHdr, icmp::Icmpv6Hdr, ip::Ipv6Hdr};

use crate::{
    csum::{self, fold},
    forward::set_macs,
    icmp::message_ok,
    maps::Clock,
    packet,
    parse::{ETH_LEN, IP6_LEN, IPPROTO_ICMPV6, L4_OFF6},
    vip::{NO_ROUTER, is_local6, lookup_vip6, may_answer},
};

const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
pub const NEIGHBOR_SOLICITATION: u8 = 135;
/// ICMPv6 errors (RFC 4443): destination unreachable, packet too big, time exceeded.
const DEST_UNREACHABLE: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Neighbor Discovery option types (RFC 4861 §4.6).
pub const OPTION_SOURCE_LL: u8 = 1;
const OPTION_TARGET_LL: u8 = 2;
/// Neighbor Advertisement flags (first byte of the word after the checksum): Solicited and Override.
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;
/// Neighbor Discovery messages are sent, and must be received, with hop limit 255 (they cannot have crossed a
/// router).
pub const ND_HOP_LIMIT: u8 = 255;
/// The hop limit of echo replies, a host's usual default.
const ECHO_HOP_LIMIT: u8 = 64;
/// The longest solicitation answered: the 24-byte message and 40 bytes of options (senders put one or two 8-byte
/// options: the source link-layer address, a nonce). Its checksum and options are checked in one pass of at most
/// 8 rounds, which keeps the verifier's work small.
const SOLICITATION_MAX_LEN: usize = 64;
/// The length of most solicitations: the message and one 8-byte option (the source link-layer address).
const USUAL_SOLICITATION_LEN: usize = SOLICITATION_LEN + 8;
/// All-nodes multicast (ff02::1, as its `ipv6_halves`) and its Ethernet group (RFC 2464 §7).
const ALL_NODES: (u64, u64) = (0xff02_0000_0000_0000, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// The first 13 bytes of every solicited-node group, ff02::1:ff00:0/104, as the high half and the next 5 bytes.
const SOLICITED_NODE_HIGH: u64 = 0xff02_0000_0000_0000;
const SOLICITED_NODE_NEXT: u64 = 0x0000_0001_ff;

/// A Neighbor Solicitation's fixed part (RFC 4861 §4.3); options follow.
#[repr(C)]
struct Solicitation {
    kind: u8,
    code: u8,
    check: [u8; 2],
    reserved: [u8; 4],
    target: [u8; 16],
}
pub const SOLICITATION_LEN: usize = core::mem::size_of::<Solicitation>();
const _: () = assert!(SOLICITATION_LEN == 24);

/// The whole answer: Ethernet, IPv6 and a Neighbor Advertisement with one target link-layer address option.
#[repr(C)]
struct Advertisement {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ether_type: [u8; 2],
    vcf: [u8; 4],
    payload_len: [u8; 2],
    next_hdr: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
    kind: u8,
    code: u8,
    check: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
    option: [u8; 2],
    mac: [u8; 6],
}
pub const ADVERTISEMENT_LEN: usize = core::mem::size_of::<Advertisement>();
const ADVERTISEMENT_ICMP_LEN: usize = ADVERTISEMENT_LEN - L4_OFF6;
const _: () = assert!(ADVERTISEMENT_LEN == 86 && ADVERTISEMENT_ICMP_LEN == 32);

/// Whether `dst` (as `ipv6_halves`) is a solicited-node multicast group, ff02::1:ffXX:XXXX (RFC 4291 §2.7.1).
#[inline(always)]
pub fn solicited_node_group((high, low): (u64, u64)) -> bool {
    high == SOLICITED_NODE_HIGH && low >> 24 == SOLICITED_NODE_NEXT
}

/// An ICMPv6 message (next header 58, no extension headers) to a solicited-node group (`dst`, the halves of
/// `ip.dst_addr`): a solicitation for one of our VIPs is answered, anything else goes to the kernel.
/// (verdict, reason, router)
#[inline(always)]
pub fn multicast_solicitation(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    dst: (u64, u64),
    config: &NodeConfig,
    clock: &Clock,
) -> (u32, Reason, u32) {
    let Some(ns) = packet::at::<Solicitation>(ctx, L4_OFF6) else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: bounds-checked by `at`.
    let ns = unsafe { &*ns };
    if ns.kind != NEIGHBOR_SOLICITATION {
        return (XDP_PASS, Reason::PassNotVip, NO_ROUTER);
    }
    let len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ETH_LEN + IP6_LEN + len > packet::len(ctx) {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    }
    let target = packet::halves(&ns.target);
    let Some(vip) = lookup_vip6(target) else {
        return (XDP_PASS, Reason::PassNd, NO_ROUTER);
    };
    let router = vip.router;
    // The group must be the target's own (its last 24 bits).
    let group_matches = (dst.1 ^ target.1) & 0xff_ffff == 0;
    if !group_matches || !may_answer(router, clock) {
        return (XDP_PASS, Reason::PassNd, router);
    }
    match valid_solicitation(ctx, eth, ip, ns, dst, target, config, vip, len) {
        Some(dad) => {
            let (action, reason) = answer(ctx, vip, dad);
            (action, reason, router)
        }
        None => (XDP_PASS, Reason::PassNd, router),
    }
}

/// ICMPv6 to the VIP itself (`ip.dst_addr`, whose entry is `vip`), `len` bytes (the payload length, checked
/// against the frame); the source passed the martian checks. `src` and `dst` are the addresses' halves.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn to_vip(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    (src, dst): ((u64, u64), (u64, u64)),
    config: &NodeConfig,
    vip: &VipValue,
    len: usize,
) -> (u32, Reason) {
    let Some(icmp) = packet::at::<Icmpv6Hdr>(ctx, L4_OFF6) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    if len < Icmpv6Hdr::LEN {
        return (XDP_PASS, Reason::PassTruncated);
    }
    // SAFETY: bounds-checked by `at`.
    let (kind, code) = unsafe { ((*icmp).type_, (*icmp).code) };
    match kind {
        ECHO_REQUEST if code == 0 => echo(ctx, eth, ip, (src, dst), icmp, config, vip, len),
        // About a packet a DSR backend sent from the VIP: to that backend (path MTU discovery).
        DEST_UNREACHABLE | PACKET_TOO_BIG | TIME_EXCEEDED => crate::forward6::icmp_error(ctx, eth, ip, config, len),
        NEIGHBOR_SOLICITATION => {
            let Some(ns) = packet::at::<Solicitation>(ctx, L4_OFF6) else {
                return (XDP_DROP, Reason::DropNd);
            };
            // SAFETY: bounds-checked by `at`.
            let ns = unsafe { &*ns };
            if packet::halves(&ns.target) != dst {
                return (XDP_DROP, Reason::DropNd);
            }
            match valid_solicitation(ctx, eth, ip, ns, dst, dst, config, vip, len) {
                // The unspecified source never gets here (a martian), so this is never duplicate address detection.
                Some(dad) => answer(ctx, vip, dad),
                None => (XDP_DROP, Reason::DropNd),
            }
        }
        _ => (XDP_DROP, Reason::DropNoService),
    }
}

/// The checks of RFC 4861 §7.1.1 and ours (see the module's doc) on a solicitation of `len` bytes whose target is
/// the VIP of `vip` (`target`, as `ipv6_halves`; `dst` the halves of `ip.dst_addr`).
/// `Some(true)`: valid, duplicate address detection (from the unspecified address); `Some(false)`: valid, from an
/// address; `None`: not to be answered.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn valid_solicitation(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &Ipv6Hdr,
    ns: &Solicitation,
    dst: (u64, u64),
    target: (u64, u64),
    config: &NodeConfig,
    vip: &VipValue,
    len: usize,
) -> Option<bool> {
    if ip.hop_limit != ND_HOP_LIMIT || ns.code != 0 || len < SOLICITATION_LEN || len > SOLICITATION_MAX_LEN {
        return None;
    }
    // SAFETY: bounds-checked by `at` in `process`.
    let asker_mac = unsafe { (*eth).src_addr };
    let unicast_asker = asker_mac[0] & 1 == 0 && asker_mac != [0; 6] && asker_mac != config.mac && asker_mac != vip.mac;
    let on_its_interface = vip.ifindex == 0 || vip.ifindex as usize == ctx.ingress_ifindex();
    if !unicast_asker || !on_its_interface {
        return None;
    }
    let src = packet::halves(&ip.src_addr);
    let unspecified = src == (0, 0);
    if !unspecified && (martian_source6_halves(src, target) || is_local6(config, src)) {
        return None;
    }
    let source_ll = scan_solicitation(ctx, len, pseudo_header_sum(ip, len))?;
    // Duplicate address detection is sent to the solicited-node group, without a source link-layer address.
    if unspecified && (source_ll || !solicited_node_group(dst)) {
        return None;
    }
    Some(unspecified)
}

/// One pass over a solicitation of `len` bytes (24 to [`SOLICITATION_MAX_LEN`]) in 8-byte chunks: its checksum
/// with the pseudo-header's sum `seed` must verify (as in `icmp::message_ok`), and its options, from byte 24 on,
/// must each have a length above 0 and together fill the message exactly (options are multiples of 8 bytes, so
/// each starts a chunk). Returns whether a source link-layer address option is among them.
///
/// The usual solicitation, the message and one 8-byte option, is read after one bounds check: a chunk at a time,
/// each checked, measured 8 to 14 ns slower (`cargo xtask bench xdp --compare`, see BENCHMARKS.md).
#[inline(always)]
fn scan_solicitation(ctx: &XdpContext, len: usize, seed: u64) -> Option<bool> {
    let add = |sum: u64, chunk: [u8; 8]| {
        let v = u64::from_ne_bytes(chunk);
        sum + (v & 0xffff_ffff) + (v >> 32)
    };
    if len == USUAL_SOLICITATION_LEN {
        let p = packet::at::<[u8; USUAL_SOLICITATION_LEN]>(ctx, L4_OFF6)? as *const u8;
        // SAFETY: bounds-checked by `at`; word loads.
        let chunks = unsafe { [packet::load8(p), packet::load8(p.add(8)), packet::load8(p.add(16))] };
        // SAFETY: as above.
        let option = unsafe { packet::load8(p.add(SOLICITATION_LEN)) };
        // One option filling the 8 bytes left: length 1.
        if option[1] != 1 {
            return None;
        }
        let sum = add(add(add(add(seed, chunks[0]), chunks[1]), chunks[2]), option);
        return csum::sum_verifies(sum).then_some(option[0] == OPTION_SOURCE_LL);
    }
    if len % 8 != 0 {
        return None;
    }
    let chunks = len / 8;
    let mut sum = seed;
    let mut next_option = SOLICITATION_LEN / 8;
    let mut source_ll = false;
    let mut i = 0;
    while i < SOLICITATION_MAX_LEN / 8 {
        if i >= chunks {
            break;
        }
        let p = packet::at::<[u8; 8]>(ctx, L4_OFF6 + i * 8)?;
        // SAFETY: bounds-checked by `at`; one word load.
        let chunk = unsafe { packet::load8(p as *const u8) };
        if i == next_option {
            if chunk[1] == 0 {
                return None;
            }
            source_ll |= chunk[0] == OPTION_SOURCE_LL;
            next_option += usize::from(chunk[1]);
        }
        sum = add(sum, chunk);
        i += 1;
    }
    if next_option != chunks {
        return None;
    }
    csum::sum_verifies(sum).then_some(source_ll)
}

/// Turns the solicitation (whose target is the VIP of `vip`) into the advertisement (see the module's doc),
/// resizing the frame to exactly the answer (most solicitations are already that size: one 8-byte option, as the
/// answer has). The target stays where it is: the two messages keep it at the same offset.
#[inline(always)]
fn answer(ctx: &XdpContext, vip: &VipValue, dad: bool) -> (u32, Reason) {
    let len = packet::len(ctx);
    if len != ADVERTISEMENT_LEN {
        // SAFETY: a helper call on this program's own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, ADVERTISEMENT_LEN as i32 - len as i32) } != 0 {
            return (XDP_DROP, Reason::DropInternal);
        }
    }
    if !write_advertisement(ctx, vip, dad) {
        return (XDP_DROP, Reason::DropInternal);
    }
    (XDP_TX, Reason::NaReply)
}

/// Rewrites the 86-byte frame `ctx` holds, a solicitation with one 8-byte option whose target is the VIP of `vip`,
/// into the advertisement (see the module's doc; `dad`: to all nodes). `false` if the frame is shorter (nothing
/// written). Shared with the egress program, which answers the node's own solicitations.
#[inline(always)]
pub fn write_advertisement(ctx: &impl packet::Frame, vip: &VipValue, dad: bool) -> bool {
    let Some(a) = packet::at::<Advertisement>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked by `at`.
    let a = unsafe { &mut *a };
    let p = a as *mut Advertisement as *mut u8;
    // Written as words (see `packet::load4`): the Ethernet addresses, the IPv6 header's first 8 bytes, the addresses,
    // the ICMPv6 header with the flags, the option. Everything is read before anything is written.
    let (dst, dst_mac, flags) = if dad {
        (ALL_NODES, ALL_NODES_MAC, FLAG_OVERRIDE)
    } else {
        // SAFETY: inside the 86 bytes (the asker's MAC and the EtherType).
        let m = unsafe { packet::load8(p.add(offset_of!(Advertisement, eth_src))) };
        (packet::halves(&a.src), [m[0], m[1], m[2], m[3], m[4], m[5]], FLAG_SOLICITED | FLAG_OVERRIDE)
    };
    let target = packet::halves(&a.target);
    let mac = vip.mac;
    let option = [OPTION_TARGET_LL, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
    // The checksum from scratch (RFC 8200 §8.1's pseudo-header, then the message), as big-endian 32-bit words
    // summed in 64 bits: the source is the target.
    let word = |x: u64| (x >> 32) + (x & 0xffff_ffff);
    let sum = 2 * (word(target.0) + word(target.1))
        + word(dst.0)
        + word(dst.1)
        + ADVERTISEMENT_ICMP_LEN as u64
        + u64::from(IPPROTO_ICMPV6)
        + (u64::from(NEIGHBOR_ADVERTISEMENT) << 24)
        + (u64::from(flags) << 24)
        + word(u64::from_be_bytes(option));
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let [c0, c1] = (!fold(sum as u32)).to_be_bytes();
    set_macs(p as *mut EthHdr, dst_mac, mac);
    let [l0, l1] = (ADVERTISEMENT_ICMP_LEN as u16).to_be_bytes();
    // SAFETY: every store lies inside the 86 bytes bounds-checked above.
    unsafe {
        packet::store8(p.add(offset_of!(Advertisement, vcf)), [0x60, 0, 0, 0, l0, l1, IPPROTO_ICMPV6, ND_HOP_LIMIT]);
        packet::store8(p.add(offset_of!(Advertisement, kind)), [NEIGHBOR_ADVERTISEMENT, 0, c0, c1, flags, 0, 0, 0]);
        packet::store8(p.add(offset_of!(Advertisement, option)), option);
    }
    packet::store_halves(&mut a.src, target);
    packet::store_halves(&mut a.dst, dst);
    true
}

/// Answers an echo request to the VIP (`len` bytes of ICMPv6) in place, as the IPv4 path does (`icmp::echo`): only
/// one whose checksum verifies, from a MAC a host can have, back out of the interface it came in on, to the MAC it
/// came from.
#[inline(always)]
fn echo(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    (src, dst): ((u64, u64), (u64, u64)),
    icmp: *mut Icmpv6Hdr,
    config: &NodeConfig,
    vip: &VipValue,
    len: usize,
) -> (u32, Reason) {
    // SAFETY: bounds-checked by `at` in `process`.
    let asker_mac = unsafe { (*eth).src_addr };
    if asker_mac[0] & 1 != 0 || asker_mac == [0; 6] || asker_mac == config.mac || asker_mac == vip.mac {
        return (XDP_DROP, Reason::DropMartianSource);
    }
    if len > ECHO_MAX_LEN {
        return (XDP_DROP, Reason::DropEchoTooLong);
    }
    if !message_ok::<L4_OFF6>(ctx, len, pseudo_header_sum(ip, len)) {
        return (XDP_DROP, Reason::DropIcmpChecksum);
    }
    // SAFETY: bounds-checked by `at` in `to_vip`.
    let icmp = unsafe { &mut *icmp };
    // The type is the high byte of the first word; swapping the addresses leaves the pseudo-header's sum alone.
    icmp.check = csum::replace16(icmp.check, u16::from(ECHO_REQUEST) << 8, u16::from(ECHO_REPLY) << 8);
    icmp.type_ = ECHO_REPLY;
    packet::store_halves(&mut ip.src_addr, dst);
    packet::store_halves(&mut ip.dst_addr, src);
    ip.hop_limit = ECHO_HOP_LIMIT;
    let mac = vip.mac;
    set_macs(eth, asker_mac, mac);
    (XDP_TX, Reason::EchoReply)
}

/// The ICMPv6 pseudo-header of `ip` (source, destination, upper-layer length `len`, next header 58; RFC 8200 §8.1)
/// summed as `icmp::message_ok` sums the message: 32-bit words in host order, the addresses read as 64-bit words.
#[inline(always)]
fn pseudo_header_sum(ip: &Ipv6Hdr, len: usize) -> u64 {
    let (src, dst) = (ip.src_addr.as_ptr(), ip.dst_addr.as_ptr());
    // SAFETY: the two addresses, inside the header the caller bounds-checked.
    let words =
        unsafe { [packet::load8(src), packet::load8(src.add(8)), packet::load8(dst), packet::load8(dst.add(8))] };
    let mut sum = 0u64;
    for v in words {
        let v = u64::from_ne_bytes(v);
        sum += (v & 0xffff_ffff) + (v >> 32);
    }
    sum + u64::from(u32::from_ne_bytes((len as u32).to_be_bytes()))
        + u64::from(u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]))
}
