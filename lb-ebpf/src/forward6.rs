//! IPv6 services: TCP and UDP to an IPv6 VIP's port, sent to an IPv6 backend by DSR (only the MACs change; the
//! backend holds the VIP and answers the client directly) or through the NAT (`nat6`, which also takes the NAT
//! backends' replies). The Maglev tables are the IPv4 ones (an IPv6 service
//! is one more service index, its backends more `BACKENDS` slots, their addresses in `BACKEND_ADDRESSES6`); flows
//! are pinned in `CONNTRACK6`. The sending helpers are `forward`'s. An ICMPv6 error about a packet a backend sent
//! from the VIP (a Packet Too Big on the way to the client) goes to that backend, unchanged but for the MACs, so path
//! MTU discovery works through DSR.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use lb_common::{
    Backend, Endpoint6, FORWARD_DSR, FORWARD_NAT, FlowKey6, FlowValue6, NAT6_ICMP_SLOT, NAT6_SLOT, NO_BACKEND,
    NodeConfig, PROTO_TCP, PROTO_UDP, Reason, ServiceValue, VipValue, flow_hash6_halves, ipv6_from_halves,
    nat_source_port_bit,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    flow_cache, forward,
    maps::{BACKEND_ADDRESSES6, BACKENDS, CONNTRACK6, Clock, NAT_BACKENDS6, NAT_SOURCE_PORTS, NAT6_PROGRAMS},
    nat6, packet,
    parse::{self, IP6_LEN, L4, L4_OFF6},
    service::lookup_service6,
    vip::martian6,
};

/// Offset of the UDP checksum in the frame (after the fixed IPv6 header).
const UDP_CHECKSUM_OFF6: usize = L4_OFF6 + 6;
/// Where an ICMPv6 error's quoted packet starts (after the 8-byte ICMPv6 header), and its upper-layer header.
const QUOTED_OFF6: usize = L4_OFF6 + 8;
const QUOTED_L4_OFF6: usize = QUOTED_OFF6 + IP6_LEN;

/// A TCP or UDP packet to an IPv6 VIP (`vip`), whose `payload` bytes after the fixed header lie inside the frame
/// (its source not yet tested: see `vip::martian6`); `src` and `dst` are its addresses' halves.
#[inline(always)]
pub fn transport(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    config: &NodeConfig,
    vip: &VipValue,
    (src, dst): ((u64, u64), (u64, u64)),
    payload: usize,
    clock: &Clock,
) -> (u32, Reason) {
    let l4 = match parse::l4_at(ctx, ip.next_hdr, L4_OFF6, payload) {
        Ok(l4) => l4,
        Err(Reason::PassTruncated) => return (XDP_PASS, Reason::PassTruncated),
        Err(reason) => return (XDP_DROP, reason),
    };
    // A UDP checksum is mandatory over IPv6 (RFC 8200 §8.1): a receiver discards a zero one.
    if l4.protocol == PROTO_UDP {
        let Some(checksum) = packet::at::<[u8; 2]>(ctx, UDP_CHECKSUM_OFF6) else {
            return (XDP_PASS, Reason::PassTruncated);
        };
        // SAFETY: bounds-checked by `at`.
        if unsafe { *checksum } == [0, 0] {
            return (XDP_DROP, Reason::DropMalformedL4);
        }
    }
    // A NAT backend's reply, recognised by its source before the service lookup (as for IPv4, `main.rs`): the
    // port bit first, then its reverse entry; a backend's packet without one is not a client's.
    if let Some((word, bit)) = nat_source_port_bit(l4.protocol, u16::from_be_bytes(l4.sport))
        && NAT_SOURCE_PORTS.get(word).is_some_and(|w| *w & (1u64 << bit) != 0)
    {
        // A reply changes its flow's state: its source must be one a backend can have.
        if martian6(src, dst, config) {
            return (XDP_DROP, Reason::DropMartianSource);
        }
        if let Some(entry) = nat6::reverse_entry(ip, &l4) {
            return nat6::reply(ctx, eth, ip, &l4, entry, clock.now());
        }
        let from = Endpoint6::new(ipv6_from_halves(src), l4.sport, l4.protocol);
        // SAFETY: only tested for presence.
        if unsafe { NAT_BACKENDS6.get(&from) }.is_some() {
            return (XDP_DROP, Reason::DropNatNoEntry);
        }
    }
    let Some(svc) = lookup_service6(dst, l4.dport, l4.protocol) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    if svc.forwarding == FORWARD_NAT {
        // An established flow's packet that the flow cache can serve is sent here, sparing the tail call.
        if let Some(verdict) = nat6::cached(ctx, eth, ip, config, &svc, &l4, (src, dst), clock.now()) {
            return verdict;
        }
        return nat6_program(ctx);
    }
    if svc.forwarding != FORWARD_DSR {
        return (XDP_DROP, Reason::DropIpv6Transport);
    }
    dsr(ctx, eth, (src, dst), config, vip, &svc, &l4, clock)
}

/// Hands the frame to `xvip_nat6` (`nat6::forward`), which counts it; returns only if the tail call failed.
#[inline(always)]
fn nat6_program(ctx: &XdpContext) -> (u32, Reason) {
    // SAFETY: the map holds XDP programs only, written by the agent at load.
    unsafe { NAT6_PROGRAMS.tail_call(ctx, NAT6_SLOT) };
    (XDP_DROP, Reason::DropIpv6Transport)
}

/// A packet for an IPv6 DSR service: to its pinned backend, or a fresh Maglev pick (as `forward::dsr`).
#[inline(always)]
fn dsr(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    (client, vip_address): ((u64, u64), (u64, u64)),
    config: &NodeConfig,
    vip: &VipValue,
    svc: &ServiceValue,
    l4: &L4,
    clock: &Clock,
) -> (u32, Reason) {
    // Built from whole words (see `FlowKey6::from_halves`).
    let key = FlowKey6::words_of(client, vip_address, l4.sport, l4.dport, l4.protocol);
    let flow = FlowKey6::from_words(key);
    let (generation, now) = (flow_cache::generation(config), clock.now());
    // A SYN always takes a fresh pick; any other packet keeps its pin while the slot still holds its backend,
    // healthy and of this service. The pin comes from this CPU's flow cache while it holds a fresh copy, else
    // from `CONNTRACK6` (`flow_cache`).
    if !l4.syn() {
        let mut pinned = flow_cache::get6(&key, generation, now).and_then(|p| holder(p, svc));
        if pinned.is_none() {
            pinned = flow_cache::refresh6(&key, &flow, generation, now).and_then(|p| holder(p, svc));
        }
        if let Some((id, b)) = pinned {
            return match forward::take_backend(ctx, svc.index, id, b, false) {
                Ok(()) => forward::to_backend(ctx, eth, config, b, forward::DSR_REASONS),
                Err(reason) => (XDP_DROP, reason),
            };
        }
    }
    // A new flow: its source is tested before it gets an entry (a pinned flow's source was, when it got one).
    if martian6(client, vip_address, config) {
        return (XDP_DROP, Reason::DropMartianSource);
    }
    let hash = flow_hash6_halves(client, l4.sport, l4.dport, l4.protocol, vip.hash_seed);
    let Some(id) = forward::maglev_pick(svc, hash) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    if id == NO_BACKEND {
        return (XDP_DROP, Reason::DropNoBackend);
    }
    let (Some(backend), Some(address)) = (BACKENDS.get(id), BACKEND_ADDRESSES6.get(id)) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    let backend: Backend = *backend;
    if let Err(reason) = forward::take_backend(ctx, svc.index, id, &backend, true) {
        return (XDP_DROP, reason);
    }
    // A DSR flow: no NAT port.
    let value = FlowValue6::nat(id, &backend, packet::halves(address), [0, 0], 0);
    flow_cache::pin6(&key, &flow, &value, generation, now);
    forward::to_backend(ctx, eth, config, &backend, forward::DSR_REASONS)
}

/// The slot and backend `pinned` may still be followed to for a packet of `svc` (see [`FlowValue6::keeps_pin`]).
#[inline(always)]
fn holder(pinned: &FlowValue6, svc: &ServiceValue) -> Option<(u32, &'static Backend)> {
    let id = pinned.backend;
    let (b, address) = (BACKENDS.get(id)?, BACKEND_ADDRESSES6.get(id)?);
    pinned.keeps_pin(b, packet::halves(address), svc.index).then_some((id, b))
}

/// An ICMPv6 error to the VIP (`ip.dst_addr`), `len` bytes of ICMPv6: when it quotes a packet of a DSR flow that a
/// backend sent from the VIP (VIP:service port -> client:port, TCP or UDP) and that flow is still pinned to its
/// backend, the error goes to that backend unchanged but for the MACs (the backend holds the VIP, and learns the
/// path MTU towards the client from it). Anything else is dropped as before (`DropNoService`).
#[inline(always)]
pub fn icmp_error(ctx: &XdpContext, eth: *mut EthHdr, ip: &Ipv6Hdr, config: &NodeConfig, len: usize) -> (u32, Reason) {
    let (Some(quoted), Some(ports)) =
        (packet::at::<Ipv6Hdr>(ctx, QUOTED_OFF6), packet::at::<[u8; 4]>(ctx, QUOTED_L4_OFF6))
    else {
        return (XDP_DROP, Reason::DropNoService);
    };
    if len < QUOTED_L4_OFF6 + 4 - L4_OFF6 {
        return (XDP_DROP, Reason::DropNoService);
    }
    // SAFETY: both bounds-checked by `at`.
    let (quoted, ports) = unsafe { (&*quoted, *ports) };
    let protocol = quoted.next_hdr;
    let vip_address = packet::halves(&ip.dst_addr);
    if !(protocol == PROTO_TCP || protocol == PROTO_UDP) || packet::halves(&quoted.src_addr) != vip_address {
        return (XDP_DROP, Reason::DropNoService);
    }
    let (service_port, client_port) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let svc = lookup_service6(vip_address, service_port, protocol);
    // About a NAT service's reply to a client, or (no service on the quoted source port: a NAT port) perhaps about
    // a NAT flow's packet to its backend: for `xvip_nat6_icmp`, which translates it or drops it.
    let Some(svc) = svc.filter(|s| s.forwarding != FORWARD_NAT) else {
        // SAFETY: the map holds XDP programs only, written by the agent at load.
        unsafe { NAT6_PROGRAMS.tail_call(ctx, NAT6_ICMP_SLOT) };
        return (XDP_DROP, Reason::DropIpv6Transport);
    };
    let flow =
        FlowKey6::from_halves(packet::halves(&quoted.dst_addr), vip_address, client_port, service_port, protocol);
    // SAFETY: read-only use of the value.
    let Some(pinned) = (unsafe { CONNTRACK6.get(&flow) }) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    let id = pinned.backend;
    let (Some(b), Some(address)) = (BACKENDS.get(id), BACKEND_ADDRESSES6.get(id)) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    if svc.forwarding != FORWARD_DSR || !pinned.keeps_pin(b, packet::halves(address), svc.index) {
        return (XDP_DROP, Reason::DropNoService);
    }
    if let Err(reason) = forward::take_backend(ctx, svc.index, id, b, false) {
        return (XDP_DROP, reason);
    }
    forward::to_backend(ctx, eth, config, b, [Reason::ForwardTx, Reason::ForwardRedirect, Reason::ForwardLocal])
}
