//! `xvip trace`: while the agent has switched tracing on (the `TRACE` entry), one aya-log record per frame to a
//! VIP (IPv4 or IPv6) that matches the entry's filter, rate-limited per CPU (`lb_common::TraceState::admit`). The
//! record is a `lb_common::TraceRecord`: the frame as it arrived, the flow it belongs to, the backend and NAT port
//! it went to, the reason and the action.
//!
//! The program calls [`start`] before it touches a frame and [`finish`] after: switched off (the default), the
//! whole cost is the lookup of the `TRACE` entry in `start`. Everything else runs only while a client traces. The
//! record is built in the CPU's `TRACE_RECORD` entry, not on the stack: [`start`] writes the frame's headers there,
//! [`finish`] the rest, so tracing adds nothing to the stack the program's paths use.
use aya_ebpf::{bindings::BPF_RB_AVAIL_DATA, programs::XdpContext};
use aya_log_ebpf::{info, macro_support::AYA_LOGS};
use lb_common::{
    FlowKey, FlowKey6, MAX_ROUTERS, PROTO_TCP, PROTO_UDP, Reason, TRACE_IPV4, TRACE_IPV6, TRACE_TARGET, trace_halves4,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    maps::{CONNTRACK, CONNTRACK6, TRACE, TRACE_RECORD, TRACE_STATE, now_ns},
    packet,
    parse::{ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, L4_OFF, L4_OFF6},
};

/// Load-time constant (`lb_common::names::TRACE_HOOK`): 0 makes the verifier prune the hook, so a benchmark can
/// set the program with the hook next to the same program without it.
#[unsafe(no_mangle)]
static TRACE_HOOK: u32 = 1;

/// Room a record takes in the log ring: aya-log reserves 256 bytes for its 172 (the header with target, module,
/// file and line, then the 88-byte `TraceRecord`), plus the ring's 8-byte header. Below twice that free, a record
/// is counted as `ring_full` instead (the agent is not keeping up).
const RECORD_ROOM: u64 = 264;
/// The log ring's size (aya-log's `AYA_LOGS`).
const RING_BYTES: u64 = 1 << 17;

/// Whether tracing is on and the frame is IPv4 or IPv6 to a unicast address; if so, its headers are in the CPU's
/// `TRACE_RECORD` entry, for [`finish`].
#[inline(always)]
pub fn start(ctx: &XdpContext) -> bool {
    // SAFETY: reading a plain static.
    if unsafe { core::ptr::read_volatile(&TRACE_HOOK) } == 0 {
        return false;
    }
    if TRACE.get(0).is_none_or(|t| t.on == 0) {
        return false;
    }
    arrival(ctx).is_some()
}

// Inlined like everything here: as a BPF-to-BPF call, LLVM passes the context's fields as plain integers, which the
// verifier refuses to use as packet pointers.
#[inline(always)]
fn arrival(ctx: &XdpContext) -> Option<()> {
    // SAFETY: bounds-checked by `at`.
    let ether_type = u16::from_be_bytes(unsafe { *packet::at::<[u8; 2]>(ctx, 12)? });
    // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
    let r = unsafe { &mut *TRACE_RECORD.get_ptr_mut(0)? };
    let (l4_off, plain) = if ether_type == ETH_P_IPV4 {
        // SAFETY: bounds-checked by `at`.
        let ip = unsafe { &*packet::at::<Ipv4Hdr>(ctx, ETH_LEN)? };
        r.family = TRACE_IPV4;
        r.protocol = ip.proto as u8;
        // SAFETY: the header was bounds-checked by `at`.
        let (src, dst) = unsafe { (packet::load4(ip.src_addr.as_ptr()), packet::load4(ip.dst_addr.as_ptr())) };
        packet::store_halves(&mut r.from, trace_halves4(src));
        packet::store_halves(&mut r.to, trace_halves4(dst));
        (L4_OFF, ip.vihl == 0x45)
    } else if ether_type == ETH_P_IPV6 {
        // SAFETY: bounds-checked by `at`.
        let ip = unsafe { &*packet::at::<Ipv6Hdr>(ctx, ETH_LEN)? };
        let dst = packet::halves(&ip.dst_addr);
        // Multicast (Neighbor Solicitations to a VIP's solicited-node group): not addressed to a VIP, like ARP.
        if dst.0 >> 56 == 0xff {
            return None;
        }
        r.family = TRACE_IPV6;
        r.protocol = ip.next_hdr;
        packet::store_halves(&mut r.from, packet::halves(&ip.src_addr));
        packet::store_halves(&mut r.to, dst);
        // TCP or UDP right after the fixed header (anything else to a VIP is dropped before its ports matter).
        (L4_OFF6, true)
    } else {
        return None;
    };
    r.from_port = [0; 2];
    r.to_port = [0; 2];
    r.tcp_flags = 0;
    r.ifindex = ctx.ingress_ifindex() as u32;
    if plain
        && (r.protocol == PROTO_TCP || r.protocol == PROTO_UDP)
        && let Some(ports) = packet::at::<[u8; 4]>(ctx, l4_off)
    {
        // SAFETY: bounds-checked by `at`.
        let p = unsafe { *ports };
        r.from_port = [p[0], p[1]];
        r.to_port = [p[2], p[3]];
        if r.protocol == PROTO_TCP
            && let Some(flags) = packet::at::<u8>(ctx, l4_off + 13)
        {
            // SAFETY: bounds-checked by `at`.
            r.tcp_flags = unsafe { *flags };
        }
    }
    Some(())
}

/// Emits the record of the decision about the frame [`start`] recorded, if it was addressed to a VIP (`router`
/// in range), matches the filter and the CPU's rate limit lets it through.
#[inline(always)]
pub fn finish(ctx: &XdpContext, action: u32, reason: Reason, router: u32) {
    if router >= MAX_ROUTERS {
        return;
    }
    let (Some(config), Some(r)) = (TRACE.get(0), TRACE_RECORD.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
    let r = unsafe { &mut *r };
    r.reason = reason as u8;
    r.action = action as u8;
    let (from, to) = (packet::halves(&r.from), packet::halves(&r.to));
    let mut client = from;
    let mut backend = (0, 0);
    r.client_port = r.from_port;
    r.service_port = r.to_port;
    r.backend_port = [0; 2];
    r.nat_port = [0; 2];
    match reason {
        // A backend's reply, translated: it now goes from VIP:service port to the client.
        Reason::NatReplyTx | Reason::NatReplyRedirect | Reason::PassNoNeighbour => {
            backend = from;
            r.backend_port = r.from_port;
            r.nat_port = r.to_port;
            if let Some((dst, sport, dport)) = sent(ctx, r.family) {
                client = dst;
                r.client_port = dport;
                r.service_port = sport;
            }
        }
        // A client's packet, translated: it now goes from VIP:NAT port to the backend.
        Reason::NatForwardTx | Reason::NatForwardRedirect | Reason::NatForwardLocal => {
            if let Some((dst, sport, dport)) = sent(ctx, r.family) {
                backend = dst;
                r.backend_port = dport;
                r.nat_port = sport;
            }
        }
        _ => {}
    }
    if !config.matches(r.family, client, to, r.service_port, r.protocol) {
        return;
    }
    let Some(state) = TRACE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
    let state = unsafe { &mut *state };
    if !state.admit(config, now_ns()) {
        return;
    }
    // DSR leaves the addresses alone: the flow's entry names its backend (a lookup only for records that go out).
    if matches!(reason, Reason::ForwardTx | Reason::ForwardRedirect | Reason::ForwardLocal) {
        if r.family == TRACE_IPV6 {
            let flow = FlowKey6::from_halves(from, to, r.from_port, r.to_port, r.protocol);
            // SAFETY: read at once.
            if let Some(pinned) = unsafe { CONNTRACK6.get(&flow) } {
                backend = packet::halves(&pinned.backend_address);
                r.backend_port = pinned.backend_port;
            }
        } else {
            let ipv4 = |a: (u64, u64)| ((a.0 >> 32) as u32).to_be_bytes();
            let flow = FlowKey::new(ipv4(from), ipv4(to), r.from_port, r.to_port, r.protocol);
            // SAFETY: read at once.
            if let Some(pinned) = unsafe { CONNTRACK.get(&flow) } {
                backend = trace_halves4(pinned.backend_address);
                r.backend_port = pinned.backend_port;
            }
        }
    }
    packet::store_halves(&mut r.client, client);
    packet::store_halves(&mut r.backend, backend);
    if RING_BYTES.saturating_sub(AYA_LOGS.query(u64::from(BPF_RB_AVAIL_DATA))) < 2 * RECORD_ROOM {
        state.ring_full += 1;
        return;
    }
    state.emitted += 1;
    let bytes: &[u8] = r.as_bytes();
    info!(ctx, target: TRACE_TARGET, "decision {:x}", bytes);
}

/// The destination (as `lb_common::trace_halves`) and ports of the frame as the program leaves it (after a NAT
/// rewrite).
#[inline(always)]
fn sent(ctx: &XdpContext, family: u8) -> Option<((u64, u64), [u8; 2], [u8; 2])> {
    let (dst, l4_off) = if family == TRACE_IPV6 {
        // SAFETY: bounds-checked by `at`.
        let ip = unsafe { &*packet::at::<Ipv6Hdr>(ctx, ETH_LEN)? };
        (packet::halves(&ip.dst_addr), L4_OFF6)
    } else {
        // SAFETY: bounds-checked by `at`.
        let ip = unsafe { &*packet::at::<Ipv4Hdr>(ctx, ETH_LEN)? };
        // SAFETY: as above.
        (trace_halves4(unsafe { packet::load4(ip.dst_addr.as_ptr()) }), L4_OFF)
    };
    // SAFETY: bounds-checked by `at`.
    let p = unsafe { *packet::at::<[u8; 4]>(ctx, l4_off)? };
    Some((dst, [p[0], p[1]], [p[2], p[3]]))
}
