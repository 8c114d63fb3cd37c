//! Sending a frame on: Maglev picks, backend slots and their counters, MAC rewrite, XDP_TX or `bpf_redirect`; and
//! the DSR service path (only the MACs change).
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    helpers::bpf_redirect,
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::{
    Backend, FlowKey, FlowValue, MAGLEV_CHUNK, MAGLEV_M, NO_BACKEND, NodeConfig, Reason, ServiceValue, Traffic,
    flow_hash, maglev_position,
};
use network_types::eth::EthHdr;

use crate::{
    flow_cache,
    maps::{BACKEND_STATS, BACKENDS, Clock, MAGLEV, SERVICE_STATS},
    packet,
    parse::L4,
    vip::{self, Vip},
};

/// A packet for a DSR service: to its pinned backend, or a fresh Maglev pick.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn dsr(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    config: &NodeConfig,
    vip: &Vip,
    svc: &ServiceValue,
    flow: &FlowKey,
    l4: &L4,
    clock: &Clock,
) -> (u32, Reason) {
    // A pinned flow keeps its backend while that backend is healthy, still of this service and still in the slot
    // it was pinned to (`Backend::keeps_pin`); a SYN always takes a fresh pick so a reused client port does not
    // inherit an old connection's backend.
    // The pin comes from this CPU's flow cache while it holds a fresh copy, else from `CONNTRACK` (`flow_cache`).
    let (generation, now) = (flow_cache::generation(config), clock.now());
    if !l4.syn() {
        let mut pinned = flow_cache::get(flow, generation, now);
        if !pinned.is_some_and(|p| kept(p, svc)) {
            pinned = flow_cache::refresh(flow, generation, now);
        }
        if let Some(p) = pinned
            && let Some(b) = BACKENDS.get(p.backend)
            && b.keeps_pin(p, svc.index)
        {
            return match take_backend(ctx, svc.index, p.backend, b, false) {
                Ok(()) => to_backend(ctx, eth, config, b, DSR_REASONS),
                Err(reason) => (XDP_DROP, reason),
            };
        }
    }
    // A new flow: its source is tested before it gets an entry (a pinned flow's source was, when it got one).
    if vip::martian(flow.client, vip, config) {
        return (XDP_DROP, Reason::DropMartianSource);
    }
    let hash = flow_hash(flow.client, l4.sport, l4.dport, l4.protocol, vip.value.hash_seed);
    let Some(id) = maglev_pick(svc, hash) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    if id == NO_BACKEND {
        return (XDP_DROP, Reason::DropNoBackend);
    }
    let Some(backend) = BACKENDS.get(id) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    let backend: Backend = *backend;
    if let Err(reason) = take_backend(ctx, svc.index, id, &backend, true) {
        return (XDP_DROP, reason);
    }
    flow_cache::pin(flow, &FlowValue::new(id, &backend, [0; 2], 0), generation, now);
    to_backend(ctx, eth, config, &backend, DSR_REASONS)
}

/// Whether `pinned` may still be followed for a packet of `svc` (see [`Backend::keeps_pin`]).
#[inline(always)]
fn kept(pinned: &FlowValue, svc: &ServiceValue) -> bool {
    BACKENDS.get(pinned.backend).is_some_and(|b| b.keeps_pin(pinned, svc.index))
}

/// What a DSR packet sent to a backend counts as: sent on the ingress interface, redirected, delivered locally.
pub const DSR_REASONS: [Reason; 3] = [Reason::ForwardTx, Reason::ForwardRedirect, Reason::ForwardLocal];

/// Whether a packet of service `service_index` may go to `backend` (slot `id`), counting it (and `new_flow`: the
/// packet starts a flow, a fresh pick about to be recorded in the connection table) for both if so; the drop
/// reason when the backend cannot be used (its MAC is not resolved yet).
#[inline(always)]
pub fn take_backend(
    ctx: &XdpContext,
    service_index: u32,
    id: u32,
    backend: &Backend,
    new_flow: bool,
) -> Result<(), Reason> {
    if backend.mac == [0; 6] {
        return Err(Reason::DropBackendUnresolved);
    }
    let bytes = packet::len(ctx) as u64;
    add_traffic(&SERVICE_STATS, service_index, bytes, new_flow);
    add_traffic(&BACKEND_STATS, id, bytes, new_flow);
    Ok(())
}

/// The backend in the slot of `hash` in the service's live Maglev table (`NO_BACKEND` when it has none).
#[inline(always)]
pub fn maglev_pick(svc: &ServiceValue, hash: u32) -> Option<u32> {
    let (element, offset) = maglev_position(svc.index, svc.table, hash % MAGLEV_M);
    let chunk = MAGLEV.get(element)?;
    // The mask keeps the index provably inside the chunk for the verifier.
    Some(chunk.slots[(offset & (MAGLEV_CHUNK - 1)) as usize])
}

/// Sends the frame to `backend`: its MAC as destination, the MAC of the interface it is reached through as source,
/// out of that interface. A backend on this node itself gets the frame through the node's own stack (`XDP_PASS`),
/// its Ethernet header as it arrived (addressed to the VIP's MAC, which is this interface's). `reasons`: sent on
/// the ingress interface, redirected, delivered locally.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    config: &NodeConfig,
    backend: &Backend,
    reasons: [Reason; 3],
) -> (u32, Reason) {
    let [tx, redirect, local] = reasons;
    if backend.local != 0 {
        return (XDP_PASS, local);
    }
    let src = if backend.src_mac == [0; 6] { config.mac } else { backend.src_mac };
    set_macs(eth, backend.mac, src);
    let egress = if backend.ifindex == 0 { config.ifindex } else { backend.ifindex };
    send(ctx, egress, tx, redirect)
}

/// Sets the frame's destination and source MACs: three 32-bit stores where the fields (byte arrays) would take
/// twelve byte stores (see [`packet::load4`]).
#[inline(always)]
pub fn set_macs(eth: *mut EthHdr, dst: [u8; 6], src: [u8; 6]) {
    let p = eth as *mut u8;
    // SAFETY: `eth` was bounds-checked by `at` in `process`: its 14 bytes are in the frame.
    unsafe {
        packet::store4(p, [dst[0], dst[1], dst[2], dst[3]]);
        packet::store4(p.add(4), [dst[4], dst[5], src[0], src[1]]);
        packet::store4(p.add(8), [src[2], src[3], src[4], src[5]]);
    }
}

/// Transmits the frame back out of the ingress interface (`ifindex` 0 or the ingress one) or redirects it to
/// `ifindex`, counting `tx` or `redirect`.
#[inline(always)]
pub fn send(ctx: &XdpContext, ifindex: u32, tx: Reason, redirect: Reason) -> (u32, Reason) {
    if ifindex == 0 || ifindex as usize == ctx.ingress_ifindex() {
        (XDP_TX, tx)
    } else {
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
        if action == XDP_REDIRECT { (XDP_REDIRECT, redirect) } else { (XDP_DROP, Reason::DropInternal) }
    }
}

#[inline(always)]
pub fn add_traffic(map: &PerCpuArray<Traffic>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(t) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
            (*t).new_flows += u64::from(new_flow);
        }
    }
}
