//! `xvip trace`: while the agent has switched tracing on (the `TRACE` entry), one aya-log record per frame to a
//! VIP that matches the entry's filter, rate-limited per CPU (`lb_common::TraceState::admit`). The record is a
//! `lb_common::TraceRecord`: the frame as it arrived, the flow it belongs to, the backend and NAT port it went to,
//! the reason and the action.
//!
//! The program calls [`start`] before it touches a frame and [`finish`] after: switched off (the default), the
//! whole cost is the lookup of the `TRACE` entry in `start`. Everything else runs only while a client traces.
use aya_ebpf::{bindings::BPF_RB_AVAIL_DATA, programs::XdpContext};
use aya_log_ebpf::{info, macro_support::AYA_LOGS};
use lb_common::{FlowKey, MAX_ROUTERS, PROTO_TCP, PROTO_UDP, Reason, TRACE_TARGET, TraceRecord};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{CONNTRACK, TRACE, TRACE_STATE, now_ns},
    packet,
    parse::{ETH_LEN, ETH_P_IPV4, L4_OFF},
};

/// Load-time constant (`lb_common::names::TRACE_HOOK`): 0 makes the verifier prune the hook, so a benchmark can
/// set the program with the hook next to the same program without it.
#[unsafe(no_mangle)]
static TRACE_HOOK: u32 = 1;

/// Room a record needs in the log ring (aya-log rounds a record of about 120 bytes up to 128); below twice that
/// free, a record is counted as `ring_full` instead (the agent is not keeping up).
const RECORD_ROOM: u64 = 256;
/// The log ring's size (aya-log's `AYA_LOGS`).
const RING_BYTES: u64 = 1 << 17;

/// The frame's headers as it arrived, before the program rewrote them.
pub struct Arrival {
    from: [u8; 4],
    to: [u8; 4],
    from_port: [u8; 2],
    to_port: [u8; 2],
    protocol: u8,
    tcp_flags: u8,
}

/// `Some` when tracing is on and the frame is IPv4: its headers, for [`finish`].
#[inline(always)]
pub fn start(ctx: &XdpContext) -> Option<Arrival> {
    // SAFETY: reading a plain static.
    if unsafe { core::ptr::read_volatile(&TRACE_HOOK) } == 0 {
        return None;
    }
    if TRACE.get(0)?.on == 0 {
        return None;
    }
    arrival(ctx)
}

// Inlined like everything here: as a BPF-to-BPF call, LLVM passes the context's fields as plain integers, which the
// verifier refuses to use as packet pointers.
#[inline(always)]
fn arrival(ctx: &XdpContext) -> Option<Arrival> {
    // SAFETY: bounds-checked by `at`.
    let ether_type = unsafe { *packet::at::<[u8; 2]>(ctx, 12)? };
    if u16::from_be_bytes(ether_type) != ETH_P_IPV4 {
        return None;
    }
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &*packet::at::<Ipv4Hdr>(ctx, ETH_LEN)? };
    let protocol = ip.proto as u8;
    let mut a =
        Arrival { from: ip.src_addr, to: ip.dst_addr, from_port: [0; 2], to_port: [0; 2], protocol, tcp_flags: 0 };
    if ip.vihl == 0x45
        && (protocol == PROTO_TCP || protocol == PROTO_UDP)
        && let Some(ports) = packet::at::<[u8; 4]>(ctx, L4_OFF)
    {
        // SAFETY: bounds-checked by `at`.
        let p = unsafe { *ports };
        a.from_port = [p[0], p[1]];
        a.to_port = [p[2], p[3]];
        if protocol == PROTO_TCP
            && let Some(flags) = packet::at::<u8>(ctx, L4_OFF + 13)
        {
            // SAFETY: bounds-checked by `at`.
            a.tcp_flags = unsafe { *flags };
        }
    }
    Some(a)
}

/// Emits the record of the decision about the frame `a` describes, if it was addressed to a VIP (`router` in
/// range), matches the filter and the CPU's rate limit lets it through.
#[inline(always)]
pub fn finish(ctx: &XdpContext, a: &Arrival, action: u32, reason: Reason, router: u32) {
    if router >= MAX_ROUTERS {
        return;
    }
    let Some(config) = TRACE.get(0) else {
        return;
    };
    let mut r = TraceRecord {
        from: a.from,
        to: a.to,
        from_port: a.from_port,
        to_port: a.to_port,
        client: a.from,
        client_port: a.from_port,
        service_port: a.to_port,
        ifindex: ctx.ingress_ifindex() as u32,
        reason: reason as u8,
        action: action as u8,
        protocol: a.protocol,
        tcp_flags: a.tcp_flags,
        ..TraceRecord::default()
    };
    match reason {
        // A backend's reply, translated: it now goes from VIP:service port to the client.
        Reason::NatReplyTx | Reason::NatReplyRedirect | Reason::PassNoNeighbour => {
            r.backend = a.from;
            r.backend_port = a.from_port;
            r.nat_port = a.to_port;
            if let Some((_, dst, sport, dport)) = sent(ctx) {
                r.client = dst;
                r.client_port = dport;
                r.service_port = sport;
            }
        }
        // A client's packet, translated: it now goes from VIP:NAT port to the backend.
        Reason::NatForwardTx | Reason::NatForwardRedirect | Reason::NatForwardLocal => {
            if let Some((_, dst, sport, dport)) = sent(ctx) {
                r.backend = dst;
                r.backend_port = dport;
                r.nat_port = sport;
            }
        }
        _ => {}
    }
    if !config.matches(r.client, r.to, r.service_port, r.protocol) {
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
    if reason == Reason::ForwardTx || reason == Reason::ForwardRedirect {
        let flow = FlowKey::new(a.from, a.to, a.from_port, a.to_port, a.protocol);
        // SAFETY: copied out at once.
        if let Some(pinned) = unsafe { CONNTRACK.get(&flow) } {
            r.backend = pinned.backend_address;
            r.backend_port = pinned.backend_port;
        }
    }
    if RING_BYTES.saturating_sub(AYA_LOGS.query(u64::from(BPF_RB_AVAIL_DATA))) < 2 * RECORD_ROOM {
        state.ring_full += 1;
        return;
    }
    state.emitted += 1;
    let bytes: &[u8] = r.as_bytes();
    info!(ctx, target: TRACE_TARGET, "decision {:x}", bytes);
}

/// Source, destination and ports of the frame as the program leaves it (after a NAT rewrite).
#[inline(always)]
fn sent(ctx: &XdpContext) -> Option<([u8; 4], [u8; 4], [u8; 2], [u8; 2])> {
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &*packet::at::<Ipv4Hdr>(ctx, ETH_LEN)? };
    // SAFETY: bounds-checked by `at`.
    let p = unsafe { *packet::at::<[u8; 4]>(ctx, L4_OFF)? };
    Some((ip.src_addr, ip.dst_addr, [p[0], p[1]], [p[2], p[3]]))
}
