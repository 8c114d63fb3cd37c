//! IPv6 frames: Neighbor Solicitations for a VIP (to its solicited-node group, or to the VIP itself) and echo
//! requests to a VIP are answered while the VIP's router may answer (`icmp6`); TCP and UDP to a VIP's service go
//! to an IPv6 backend (`forward6`: DSR, or NAT in `nat6`); anything else to an IPv6 VIP is dropped and counted. IPv6 not addressed
//! to a VIP goes to the kernel.
//!
//! What is handled for a VIP: the fixed 40-byte header directly followed by ICMPv6, TCP or UDP. A packet to a VIP
//! behind extension headers (hop-by-hop, routing, destination options, AH, mobility, HIP, shim6, experimental) is
//! dropped as `DropIpOptions`, a fragment as `DropFragment`: no client sends its pings or solicitations that way,
//! and walking headers of any length is not something the verifier can bound cheaply.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use lb_common::{NodeConfig, PROTO_TCP, PROTO_UDP, Reason, VipValue};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    forward6, icmp6,
    maps::Clock,
    packet,
    parse::{ETH_LEN, IP6_LEN, IPPROTO_ICMPV6},
    vip::{NO_ROUTER, lookup_vip6, martian6, may_answer},
};

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_AH: u8 = 51;
const NEXT_DEST_OPTIONS: u8 = 60;
const NEXT_MOBILITY: u8 = 135;
const NEXT_HIP: u8 = 139;
const NEXT_SHIM6: u8 = 140;
const NEXT_EXPERIMENT_1: u8 = 253;
const NEXT_EXPERIMENT_2: u8 = 254;

/// An IPv6 frame: (verdict, reason, router).
#[inline(always)]
pub fn process(ctx: &XdpContext, eth: *mut EthHdr, config: &NodeConfig, clock: &Clock) -> (u32, Reason, u32) {
    let Some(ip) = packet::at::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &mut *ip };
    let dst = packet::halves(&ip.dst_addr);
    if dst.0 >> 56 == 0xff {
        // Multicast: of it, only Neighbor Solicitations to a solicited-node group (ff02::1:ffXX:XXXX) may concern
        // a VIP, and then only in a well-formed header without extension headers.
        if ip.vcf[0] >> 4 == 6 && ip.next_hdr == IPPROTO_ICMPV6 && icmp6::solicited_node_group(dst) {
            return icmp6::multicast_solicitation(ctx, eth, ip, dst, config, clock);
        }
        return (XDP_PASS, Reason::PassNotVip, NO_ROUTER);
    }
    let Some(vip) = lookup_vip6(dst) else {
        return (XDP_PASS, Reason::PassNotVip, NO_ROUTER);
    };
    let (action, reason) = to_vip(ctx, eth, ip, config, vip, dst, clock);
    (action, reason, vip.router)
}

/// A frame addressed to an IPv6 VIP (`ip.dst_addr`, whose halves are `dst` and whose entry is `vip`). As for IPv4, nothing addressed to a VIP goes to the kernel, which does
/// not own it (with forwarding on it would route it on).
#[inline(always)]
fn to_vip(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    config: &NodeConfig,
    vip: &VipValue,
    dst: (u64, u64),
    clock: &Clock,
) -> (u32, Reason) {
    if !may_answer(vip.router, clock) {
        if vip.held != 0 {
            return (XDP_PASS, Reason::PassHeldVip);
        }
        return (XDP_DROP, Reason::DropInactive);
    }
    if ip.vcf[0] >> 4 != 6 {
        return (XDP_DROP, Reason::DropIpOptions);
    }
    let payload = usize::from(u16::from_be_bytes(ip.payload_len));
    if ETH_LEN + IP6_LEN + payload > packet::len(ctx) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    let src = packet::halves(&ip.src_addr);
    match ip.next_hdr {
        // Every ICMPv6 message draws an answer or a translation: sources no client can have stop here. TCP and UDP
        // are tested where a packet would make or change state (`forward6`, `nat6`), as for IPv4.
        IPPROTO_ICMPV6 if martian6(src, dst, config) => (XDP_DROP, Reason::DropMartianSource),
        IPPROTO_ICMPV6 => icmp6::to_vip(ctx, eth, ip, (src, dst), config, vip, payload),
        PROTO_TCP | PROTO_UDP => forward6::transport(ctx, eth, ip, config, vip, (src, dst), payload, clock),
        NEXT_FRAGMENT => (XDP_DROP, Reason::DropFragment),
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_AH | NEXT_DEST_OPTIONS | NEXT_MOBILITY | NEXT_HIP | NEXT_SHIM6
        | NEXT_EXPERIMENT_1 | NEXT_EXPERIMENT_2 => (XDP_DROP, Reason::DropIpOptions),
        _ => (XDP_DROP, Reason::DropNoService),
    }
}
