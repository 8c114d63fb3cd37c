//! NAT forwarding: a client packet `client:cport -> VIP:svc` leaves as `VIP:nport -> backend:bport`, and the
//! backend's reply `backend:bport -> VIP:nport` leaves as `VIP:svc -> client:cport`. Nothing of a NAT flow goes
//! through the kernel's stack on this node; the VIP is not a kernel address, so every port is ours.
//!
//! # State
//! - `CONNTRACK[client flow] = (backend, nport, checked)`: the forward direction. An established packet costs this
//!   one lookup; once a second (`NAT_CHECK_INTERVAL_NS`) it also confirms that the reverse entry is still the
//!   flow's own and refreshes it.
//! - `NAT[(backend, VIP, bport, nport, protocol)] = (client, cport, svc, flags, reply route, last seen)`: the reverse
//!   direction, looked up by every reply. The reply route comes from the kernel's FIB (`route.rs`), refreshed
//!   every `ROUTE_REFRESH_NS`, never from the client's frames, so a spoofed frame cannot steer replies.
//!
//! # TCP state, and who may take a port
//! An entry is *embryonic* until the backend sends something that is neither a SYN/ACK nor a RST (`NAT_ESTABLISHED`):
//! a spoofed SYN only ever draws SYN/ACKs, a spoofed ACK a RST. Another flow may take a port whose entry is
//! - embryonic and idle for `NAT_EMBRYONIC_TIMEOUT_NS` (seconds);
//! - established and idle for `NAT_ESTABLISHED_TIMEOUT_NS` (over two hours);
//! - closed by a FIN from both sides or by a RST, and idle for `NAT_CLOSED_GRACE_NS`;
//! - UDP, idle for `NAT_UDP_TIMEOUT_NS`.
//!
//! "Idle" counts client packets and, once established, backend packets (a backend retransmitting its SYN/ACK to
//! a spoofed source does not keep the entry). A new connection (a SYN) whose candidates are all held may also
//! *displace* the first embryonic entry among them at once: under a flood of spoofed SYNs every held port is such
//! an entry, so real clients keep finding ports, and a real handshake (a round trip) is rarely the one displaced.
//!
//! A RST (either way) is translated and marks the flow closing; the flow's next client packet other than a RST
//! revives it, so a spoofed RST costs nothing lasting.
//!
//! # The NAT port is a function of the flow
//! `nport` is `lb_common::nat_port(flow_hash, attempt)` for the first `attempt` (0..NAT_PORT_TRIES) whose reverse
//! entry is free, this flow's own, or reclaimable. `flow_hash` is seeded per VIP from its VRRP group, so after a failover the
//! new active node, with empty maps, derives the same port from the client's next packet and the backend keeps
//! seeing the same 4-tuple. A client that reuses a source port reaches the backend from the same NAT port again:
//! the backend sees the 4-tuple reuse (and the same client ISNs and timestamps) a direct client would cause.
//!
//! # Checksums
//! Incremental (RFC 1624) over the changed words: addresses (two words each) in the IP header checksum and, by way
//! of the pseudo-header, in the TCP/UDP checksum, plus the ports in the latter. A UDP checksum of 0 stays 0.
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    programs::XdpContext,
};
use lb_common::{
    Backend, FlowKey, FlowValue, NAT_PORT_TRIES, NO_BACKEND, NatKey, NatValue, NodeConfig, PROTO_TCP, Reason,
    ServiceValue, flow_hash, nat_port,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum::Delta,
    flow_cache,
    forward::{self, set_macs},
    maps::{BACKENDS, CONNTRACK, NAT},
    nat_state::{
        NatState, cached_route, confirm, confirmed, embryonic, fresh_flags, refresh, reply_seen, take, udp_expired,
    },
    packet,
    parse::{L4, L4_OFF},
    route::{self, NoRoute},
    vip::{self, Vip},
};

/// Offset of the TCP checksum in the TCP header, and of the UDP checksum in the UDP header.
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// A client packet to a NAT service, at `now` (the frame's [`crate::maps::Clock`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    vip: &Vip,
    svc: &ServiceValue,
    flow: &FlowKey,
    l4: &L4,
    now: u64,
) -> (u32, Reason) {
    // Established: the pinned backend and port, if the backend may still take traffic and (checked at most once a
    // second, and on every SYN/FIN/RST) the reverse entry is still this flow's. A SYN always starts over (a
    // reused client port is a new connection).
    // The common case, a plain packet within that second, reads this CPU's flow cache while it holds a fresh copy
    // of the flow's entry (no hash lookup, see `flow_cache`); every write of the entry below goes to the cache too.
    let generation = flow_cache::generation(config);
    if l4.plain()
        && let Some(cached) = flow_cache::get(flow, generation, now)
        && cached.nat_port != [0, 0]
        && confirmed(cached, l4, now)
        && let Some(backend) = usable(cached, svc)
    {
        let (id, port) = (cached.backend, cached.nat_port);
        return to_backend(ctx, eth, ip, config, flow, svc.index, id, port, &backend, false);
    }
    let mut old: Option<FlowValue> = None;
    let pinned_ptr = CONNTRACK.get_ptr_mut(flow);
    if let Some(pinned) = pinned_ptr {
        // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
        let pinned = unsafe { &mut *pinned };
        if !l4.syn()
            && pinned.nat_port != [0, 0]
            && let Some(backend) = usable(pinned, svc)
        {
            if confirmed(pinned, l4, now) {
                flow_cache::put(flow, pinned, generation, now);
                let (id, port) = (pinned.backend, pinned.nat_port);
                return to_backend(ctx, eth, ip, config, flow, svc.index, id, port, &backend, false);
            }
            let key = NatKey::new(backend.address, vip.address, backend.port, pinned.nat_port, l4.protocol);
            // Otherwise (evicted, taken over after this flow went idle, or a UDP flow that aged out) the flow
            // starts over below, as after a failover.
            if let Some(entry) = NAT.get_ptr_mut(&key) {
                // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
                let entry = unsafe { &mut *entry };
                if owns(entry, flow) && !udp_expired(entry, l4.protocol, now) {
                    refresh(entry, l4, now);
                    confirm(pinned, l4, now);
                    flow_cache::put(flow, pinned, generation, now);
                    let (id, port) = (pinned.backend, pinned.nat_port);
                    return to_backend(ctx, eth, ip, config, flow, svc.index, id, port, &backend, false);
                }
            }
        }
        old = Some(*pinned);
    }

    // A new flow (or one starting over): its source is tested before it claims a port and gets entries (an
    // established flow's source was, when it got them). Its reply route is looked up by its first reply.
    if vip::martian(flow.client, vip, config) {
        return (XDP_DROP, Reason::DropMartianSource);
    }
    let hash = flow_hash(flow.client, flow.client_port, flow.service_port, flow.protocol, vip.value.hash_seed);
    let Some(id) = forward::maglev_pick(svc, hash) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    if id == NO_BACKEND {
        return (XDP_DROP, Reason::DropNoBackend);
    }
    let Some(backend) = BACKENDS.get(id) else {
        return (XDP_DROP, Reason::DropInternal);
    };
    let backend: Backend = *backend;
    let Some(port) = claim_port(&backend, flow, hash, l4, now) else {
        return (XDP_DROP, Reason::DropNatNoPort);
    };
    // The flow's previous translation (an old connection from the same client port to another backend) would
    // otherwise hold its port until it ages out.
    if let Some(previous) = old
        && previous.nat_port != [0, 0]
    {
        forget(previous, flow, NatKey::new(backend.address, flow.vip, backend.port, port, flow.protocol));
    }
    let value = FlowValue::new(id, &backend, port, now);
    let recorded = match pinned_ptr {
        Some(pinned) => {
            // SAFETY: a valid map value; rewriting it in place spares the LRU an element swap.
            unsafe { *pinned = value };
            true
        }
        None => CONNTRACK.insert(flow, &value, 0).is_ok(),
    };
    if recorded {
        flow_cache::put(flow, &value, generation, now);
    }
    to_backend(ctx, eth, ip, config, flow, svc.index, id, port, &backend, recorded)
}

/// Translates a client packet of `flow` to `backend` from `VIP:port` and sends it there; `new_flow`: the packet
/// started a flow (counted per backend).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    flow: &FlowKey,
    service_index: u32,
    id: u32,
    port: [u8; 2],
    backend: &Backend,
    new_flow: bool,
) -> (u32, Reason) {
    if let Err(reason) = forward::take_backend(ctx, service_index, id, backend, new_flow) {
        return (XDP_DROP, reason);
    }
    if !translate(ctx, ip, flow.protocol, flow.vip, backend.address, port, backend.port) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    let reasons = [Reason::NatForwardTx, Reason::NatForwardRedirect, Reason::NatForwardLocal];
    forward::to_backend(ctx, eth, config, backend, reasons)
}

/// A packet from a NAT backend's (address, port) to the VIP with its reverse entry (see [`reverse_entry`]): a
/// reply, translated back to the client; `now` as for [`forward`].
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    l4: &L4,
    entry: *mut NatValue,
    now: u64,
) -> (u32, Reason) {
    // The VIP the backend's reply is addressed to, which the client's packet was (the reverse entry is keyed by it).
    let vip = ip.dst_addr;
    // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
    let entry = unsafe { &mut *entry };
    if let Err(reason) = reply_seen(entry, l4, now) {
        return (XDP_DROP, reason);
    }
    let (client, client_port, service_port) = (entry.client, entry.client_port, entry.service_port);
    let route = if let Some(route) = cached_route(entry, now) {
        route
    } else {
        match route::lookup(ctx, vip, client, l4.protocol, u16::from_be_bytes(ip.tot_len)) {
            Ok(r) => {
                entry.set_route(&r, now);
                r
            }
            Err(NoRoute::Neighbour) => {
                // The kernel resolves the next hop and forwards this packet; the next reply finds the neighbour.
                if !translate(ctx, ip, l4.protocol, vip, client, service_port, client_port) {
                    return (XDP_PASS, Reason::PassTruncated);
                }
                return (XDP_PASS, Reason::PassNoNeighbour);
            }
            Err(no) => return (XDP_DROP, no.reason()),
        }
    };
    if !translate(ctx, ip, l4.protocol, vip, client, service_port, client_port) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    set_macs(eth, route.next_hop_mac, route.egress_mac);
    forward::send(ctx, route.ifindex, Reason::NatReplyTx, Reason::NatReplyRedirect)
}

/// A fresh reverse entry for `flow` (a new connection).
#[inline(always)]
fn fresh_entry(flow: &FlowKey, l4: &L4, now: u64) -> NatValue {
    NatValue::new(flow.client, flow.client_port, flow.service_port, fresh_flags(l4), now)
}

/// The backend a pinned flow may keep using: still in its slot, healthy, still of this service, MAC known.
#[inline(always)]
fn usable(pinned: &FlowValue, svc: &ServiceValue) -> Option<Backend> {
    let b = *BACKENDS.get(pinned.backend)?;
    (b.keeps_pin(pinned, svc.index) && b.mac != [0; 6]).then_some(b)
}

#[inline(always)]
fn owns(entry: &NatValue, flow: &FlowKey) -> bool {
    entry.client == flow.client && entry.client_port == flow.client_port && entry.service_port == flow.service_port
}

/// Picks the flow's NAT port towards `backend`: the first candidate whose reverse entry is free, already this
/// flow's, or reclaimable, and writes the flow's reverse entry there. Failing that, a new connection displaces the
/// first candidate held by an embryonic entry. `None` when every candidate belongs to another live flow.
///
/// Taking the first usable candidate in a fixed order (rather than, say, preferring a free one over a
/// reclaimable one) is what lets another node, which never saw the reclaimable entries, reach the same choice.
#[inline(always)]
fn claim_port(backend: &Backend, flow: &FlowKey, hash: u32, l4: &L4, now: u64) -> Option<[u8; 2]> {
    let value = fresh_entry(flow, l4, now);
    let syn = l4.syn();
    let mut displace: Option<[u8; 2]> = None;
    // A fixed, small bound: the loop is unrolled or verified as a bounded loop.
    for attempt in 0..NAT_PORT_TRIES {
        let port = nat_port(hash, attempt);
        let key = NatKey::new(backend.address, flow.vip, backend.port, port, flow.protocol);
        match NAT.get_ptr_mut(&key) {
            // NOEXIST: if another CPU took it since the lookup, try the next candidate.
            None => {
                if NAT.insert(&key, &value, u64::from(BPF_NOEXIST)).is_ok() {
                    return Some(port);
                }
            }
            Some(entry) => {
                // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
                let entry = unsafe { &mut *entry };
                if take(entry, owns(entry, flow), syn, &value, l4, flow.protocol, now) {
                    return Some(port);
                }
                if syn && displace.is_none() && embryonic(entry) {
                    displace = Some(port);
                }
            }
        }
    }
    let port = displace?;
    let key = NatKey::new(backend.address, flow.vip, backend.port, port, flow.protocol);
    NAT.insert(&key, &value, 0).ok().map(|_| port)
}

/// The reverse entry a packet from a NAT backend's (`backend`, port) to `vip`:nport belongs to, if any.
#[inline(always)]
pub fn reverse_entry(backend: [u8; 4], vip: [u8; 4], l4: &L4) -> Option<*mut NatValue> {
    NAT.get_ptr_mut(&NatKey::new(backend, vip, l4.sport, l4.dport, l4.protocol))
}

/// Deletes the reverse entry of a flow's previous translation, if it is still the flow's and not the one the flow
/// has now (`current`: a flow that starts over towards the same backend, now in another slot, claims the same key
/// again). The flow's entry names its previous backend itself, whatever became of the slot since.
#[inline(always)]
fn forget(previous: FlowValue, flow: &FlowKey, current: NatKey) {
    let key = NatKey::new(previous.backend_address, flow.vip, previous.backend_port, previous.nat_port, flow.protocol);
    if key == current {
        return;
    }
    // SAFETY: only read.
    if unsafe { NAT.get(&key) }.is_some_and(|e| owns(e, flow)) {
        let _ = NAT.remove(&key);
    }
}

/// Rewrites addresses and ports of a TCP/UDP packet (20-byte IP header) and fixes both checksums incrementally.
/// `false` if the L4 header is not in the frame (cannot happen after the parsing in `ipv4`; the verifier needs the
/// check anyway). Word loads and stores (`packet::load4`): the header fields are byte arrays.
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    ip: &mut Ipv4Hdr,
    protocol: u8,
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
) -> bool {
    let Some(ports) = packet::at::<[u8; 4]>(ctx, L4_OFF) else {
        return false;
    };
    let ports = ports as *mut u8;
    let header = ip as *mut Ipv4Hdr as *mut u8;
    // SAFETY: the IP header and the ports were bounds-checked by `at`.
    let (old_src, old_dst, old_ports) =
        unsafe { (packet::load4(header.add(12)), packet::load4(header.add(16)), packet::load4(ports)) };
    let addresses = Delta::new().addr(old_src, src).addr(old_dst, dst);
    let l4 = addresses.word([old_ports[0], old_ports[1]], sport).word([old_ports[2], old_ports[3]], dport);
    if protocol == PROTO_TCP {
        let Some(check) = packet::at::<[u8; 2]>(ctx, L4_OFF + TCP_CHECK_OFF) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        unsafe { *check = l4.apply(*check) };
    } else {
        let Some(check) = packet::at::<[u8; 2]>(ctx, L4_OFF + UDP_CHECK_OFF) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        unsafe { *check = l4.apply_udp(*check) };
    }
    ip.check = addresses.apply(ip.check);
    // SAFETY: as above.
    unsafe {
        packet::store4(ports, [sport[0], sport[1], dport[0], dport[1]]);
        packet::store4(header.add(12), src);
        packet::store4(header.add(16), dst);
    }
    true
}
