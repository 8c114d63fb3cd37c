//! NAT forwarding: a client packet `client:cport -> VIP:svc` leaves as `VIP:nport -> backend:bport`, and the
//! backend's reply `backend:bport -> VIP:nport` leaves as `VIP:svc -> client:cport`. Nothing of a NAT flow goes
//! through the kernel's stack on this node; the VIP is not a kernel address, so every port is ours.
//!
//! # State
//! - `CONNTRACK[client flow] = (backend, nport)`: the forward direction; an established packet costs one lookup
//!   here and one in `NAT` (to check the translation is still this flow's, refresh it and record FINs).
//! - `NAT[(backend, bport, nport, protocol)] = (client, cport, svc, client MAC, ifindex, flags, last seen)`: the
//!   reverse direction, looked up by every reply.
//!
//! # The NAT port is a function of the flow
//! `nport` is `lb_common::nat_port(flow_hash, attempt)` for the first `attempt` (0..NAT_PORT_TRIES) whose reverse
//! entry is free, this flow's own, or reclaimable (see [`reclaimable`]). `flow_hash` is seeded per VRRP group, so
//! after a failover the new active node, with empty maps, derives the same port from the client's next packet and
//! the backend keeps seeing the same 4-tuple. It also means a client that reuses a source port reaches the backend
//! from the same NAT port again: the backend sees the same 4-tuple reuse (and the same client ISNs and timestamps)
//! a direct client would cause, which its TIME_WAIT handling accepts, instead of a pool port that a different
//! connection left in TIME_WAIT there.
//!
//! A flow that got a later candidate because earlier ones belonged to other live flows (a collision) gets the same
//! port on the new node only if those flows send before it does there: the order of first packets decides.
//!
//! # Lifetime
//! - RST (either way): translated and sent, then both entries are deleted. A later client packet rebuilds the
//!   same translation (the port is a function of the flow), so a spurious RST costs nothing lasting.
//! - FIN: recorded per side; once both sides have sent one and the grace time (`NAT_CLOSED_GRACE_NS`) has passed
//!   since the flow's last packet, another flow may take the port.
//! - UDP: idle for `NAT_UDP_TIMEOUT_NS` means gone: replies are no longer translated, the next client packet
//!   starts a new flow (fresh Maglev pick), another flow may take the port.
//! - Otherwise the LRU evicts the least recently used entries when the maps are full.
//!
//! # Checksums
//! Incremental (RFC 1624) over the changed words: addresses (two words each) in the IP header checksum and, by way
//! of the pseudo-header, in the TCP/UDP checksum, plus the ports in the latter. A UDP checksum of 0 stays 0.
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use lb_common::{
    Backend, FlowKey, FlowValue, NAT_FIN_BACKEND, NAT_FIN_CLIENT, NAT_PORT_TRIES, NAT_RST, NO_BACKEND, NatKey,
    NatValue, NodeConfig, PROTO_TCP, PROTO_UDP, Reason, ServiceValue, flow_hash, nat_port,
};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

use crate::{
    IP_LEN, L4, L4_OFF,
    csum::Delta,
    maps::{BACKENDS, CONNTRACK, NAT, closed_grace_ns, udp_timeout_ns},
    packet, send, set_macs,
};

/// Offset of the TCP checksum in the TCP header, and of the UDP checksum in the UDP header.
const TCP_CHECK_OFF: usize = 16;
const UDP_CHECK_OFF: usize = 6;

/// Offset of the quoted TCP/UDP header inside an ICMP error (RFC 792): after the 8-byte ICMP header and the
/// quoted IP header. Only a quoted header without options is handled, so this stays constant for the verifier.
const INNER_L4_OFF: usize = L4_OFF + Icmpv4Hdr::LEN + IP_LEN;

/// A client packet to a NAT service.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    svc: &ServiceValue,
    l4: &L4,
) -> (u32, Reason) {
    let flow = FlowKey {
        client: ip.src_addr,
        client_port: l4.sport,
        service_port: l4.dport,
        protocol: l4.protocol,
        _pad: [0; 3],
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `eth` was bounds-checked by `at` in `process`.
    let client_mac = unsafe { (*eth).src_addr };
    let client = Client { mac: client_mac, ifindex: ctx.ingress_ifindex() as u32, now, fin: l4.fin() };

    // SAFETY: copied out at once.
    let old: Option<FlowValue> = unsafe { CONNTRACK.get(&flow) }.copied();
    let mut chosen: Option<(u32, [u8; 2])> = None;
    // Established: the pinned backend and port, if the backend may still take traffic and the reverse entry is
    // still this flow's. A SYN always starts over (a reused client port is a new connection).
    if !l4.syn()
        && let Some(pinned) = old
        && pinned.nat_port != [0, 0]
        && let Some(backend) = usable(pinned.backend, svc)
    {
        let key = NatKey {
            backend: backend.address,
            backend_port: backend.port,
            nat_port: pinned.nat_port,
            protocol: l4.protocol,
            _pad: [0; 3],
        };
        // Otherwise (evicted, taken over after this flow closed, or a UDP flow that aged out) the flow starts over
        // below, as after a failover.
        if let Some(entry) = NAT.get_ptr_mut(&key) {
            // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
            let entry = unsafe { &mut *entry };
            if owns(entry, &flow) && !(l4.protocol == PROTO_UDP && idle_for(entry, now) > udp_timeout_ns()) {
                client.refresh(entry);
                chosen = Some((pinned.backend, pinned.nat_port));
            }
        }
    }

    let (backend_id, port) = match chosen {
        Some(c) => c,
        None => {
            let hash = flow_hash(flow.client, flow.client_port, flow.service_port, flow.protocol, config.hash_seed);
            let Some(id) = crate::maglev_pick(svc, hash) else {
                return (XDP_DROP, Reason::DropInternal);
            };
            if id == NO_BACKEND {
                return (XDP_DROP, Reason::DropNoBackend);
            }
            let Some(backend) = BACKENDS.get(id) else {
                return (XDP_DROP, Reason::DropInternal);
            };
            let Some(port) = claim_port(backend, &flow, hash, &client) else {
                return (XDP_DROP, Reason::DropNatNoPort);
            };
            // The flow's previous translation (an old connection from the same client port to another backend)
            // would otherwise hold its port until the LRU evicts it.
            if let Some(previous) = old
                && previous.nat_port != [0, 0]
                && (previous.backend != id || previous.nat_port != port)
            {
                forget(previous, &flow);
            }
            let _ = CONNTRACK.insert(&flow, &FlowValue { backend: id, nat_port: port, _pad: [0; 2] }, 0);
            (id, port)
        }
    };

    let backend = match crate::take_backend(ctx, svc.index, backend_id) {
        Ok(b) => b,
        Err(reason) => return (XDP_DROP, reason),
    };

    if !translate(ctx, ip, l4.protocol, config.vip, backend.address, port, backend.port) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    if l4.rst() {
        let key = NatKey {
            backend: backend.address,
            backend_port: backend.port,
            nat_port: port,
            protocol: l4.protocol,
            _pad: [0; 3],
        };
        let _ = NAT.remove(&key);
        let _ = CONNTRACK.remove(&flow);
    }
    set_macs(eth, backend.mac, config.mac);
    send(ctx, backend.ifindex, Reason::NatForwardTx, Reason::NatForwardRedirect)
}

/// A packet from a NAT backend's (address, port) to the VIP: a reply, translated back to the client.
#[inline(always)]
pub fn reply(ctx: &XdpContext, eth: *mut EthHdr, ip: &mut Ipv4Hdr, config: &NodeConfig, l4: &L4) -> (u32, Reason) {
    let key = NatKey {
        backend: ip.src_addr,
        backend_port: l4.sport,
        nat_port: l4.dport,
        protocol: l4.protocol,
        _pad: [0; 3],
    };
    // Without an entry (a failover happened and the client has not sent since, or the flow ended) the kernel gets
    // it; it does not own the VIP and drops it, and the backend retransmits until the client's next packet has
    // rebuilt the translation.
    let Some(entry) = NAT.get_ptr_mut(&key) else {
        return (XDP_PASS, Reason::PassNatNoEntry);
    };
    // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
    let entry = unsafe { &mut *entry };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if l4.protocol == PROTO_UDP && idle_for(entry, now) > udp_timeout_ns() {
        return (XDP_PASS, Reason::PassNatNoEntry);
    }
    entry.last_seen_ns = now;
    if l4.fin() {
        entry.flags |= NAT_FIN_BACKEND;
    }
    let to: NatValue = *entry;
    if !translate(ctx, ip, l4.protocol, config.vip, to.client, to.service_port, to.client_port) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    if l4.rst() {
        let _ = NAT.remove(&key);
        let flow = FlowKey {
            client: to.client,
            client_port: to.client_port,
            service_port: to.service_port,
            protocol: l4.protocol,
            _pad: [0; 3],
        };
        let _ = CONNTRACK.remove(&flow);
    }
    set_macs(eth, to.client_mac, config.mac);
    send(ctx, to.ifindex, Reason::NatReplyTx, Reason::NatReplyRedirect)
}

/// An ICMP error (destination unreachable, including "fragmentation needed", or time exceeded) to the VIP. If it
/// is about a packet this node translated, it goes to the other end of the flow with everything translated as
/// that end expects: path MTU discovery and unreachable errors work through the NAT.
///
/// - About a packet sent to a backend (quoted `VIP:nport -> backend:bport`): to the client, quoting
///   `client:cport -> VIP:svc`, which is what the client sent.
/// - About a reply sent to a client (quoted `VIP:svc -> client:cport`): to the backend, quoting
///   `backend:bport -> VIP:nport`.
///
/// Either way the error comes from the VIP (the outer source), so no address behind the NAT shows, and the new
/// outer destination is the new quoted source. Other ICMP errors go to the kernel (`PassNoService`).
#[inline(always)]
pub fn icmp_error(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
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
    if inner.vihl != 0x45 || inner.src_addr != config.vip || (protocol != PROTO_TCP && protocol != PROTO_UDP) {
        return (XDP_PASS, Reason::PassNoService);
    }
    let quoted_sport = [ports[0], ports[1]];
    let quoted_dport = [ports[2], ports[3]];

    let key =
        NatKey { backend: inner.dst_addr, backend_port: quoted_dport, nat_port: quoted_sport, protocol, _pad: [0; 3] };
    // SAFETY: copied out at once.
    if let Some(to) = unsafe { NAT.get(&key) }.copied() {
        translate_icmp(ctx, ip, error, config.vip, total, to.client, to.client_port, to.service_port);
        set_macs(eth, to.client_mac, config.mac);
        return send(ctx, to.ifindex, Reason::NatIcmpToClient, Reason::NatIcmpToClient);
    }

    let flow = FlowKey {
        client: inner.dst_addr,
        client_port: quoted_dport,
        service_port: quoted_sport,
        protocol,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    if let Some(pinned) = unsafe { CONNTRACK.get(&flow) }.copied()
        && pinned.nat_port != [0, 0]
    {
        let Some(backend) = BACKENDS.get(pinned.backend) else {
            return (XDP_DROP, Reason::DropInternal);
        };
        let backend: Backend = *backend;
        if backend.mac == [0; 6] {
            return (XDP_DROP, Reason::DropBackendUnresolved);
        }
        translate_icmp(ctx, ip, error, config.vip, total, backend.address, backend.port, pinned.nat_port);
        set_macs(eth, backend.mac, config.mac);
        return send(ctx, backend.ifindex, Reason::NatIcmpToBackend, Reason::NatIcmpToBackend);
    }
    (XDP_PASS, Reason::PassNoService)
}

/// What a client packet tells about where the client is, for the reverse entry.
struct Client {
    mac: [u8; 6],
    ifindex: u32,
    now: u64,
    fin: bool,
}

impl Client {
    /// A fresh reverse entry for `flow` (a new connection: no FIN from the backend yet).
    #[inline(always)]
    fn entry(&self, flow: &FlowKey) -> NatValue {
        NatValue {
            client: flow.client,
            client_port: flow.client_port,
            service_port: flow.service_port,
            client_mac: self.mac,
            flags: if self.fin { NAT_FIN_CLIENT } else { 0 },
            _pad: 0,
            ifindex: self.ifindex,
            _pad2: 0,
            last_seen_ns: self.now,
        }
    }

    /// Updates the flow's own reverse entry with a client packet.
    #[inline(always)]
    fn refresh(&self, entry: &mut NatValue) {
        entry.last_seen_ns = self.now;
        if self.fin {
            entry.flags |= NAT_FIN_CLIENT;
        }
        // The client (or its router) may have changed MAC or interface; only write when it did.
        if entry.client_mac != self.mac {
            entry.client_mac = self.mac;
        }
        if entry.ifindex != self.ifindex {
            entry.ifindex = self.ifindex;
        }
    }
}

/// The backend in slot `id` if a pinned flow may keep using it: healthy, still of this service, MAC known.
#[inline(always)]
fn usable(id: u32, svc: &ServiceValue) -> Option<Backend> {
    let b = *BACKENDS.get(id)?;
    (b.healthy == 1 && u32::from(b.service) == svc.index && b.mac != [0; 6]).then_some(b)
}

#[inline(always)]
fn owns(entry: &NatValue, flow: &FlowKey) -> bool {
    entry.client == flow.client && entry.client_port == flow.client_port && entry.service_port == flow.service_port
}

/// Nanoseconds since the entry's last packet (0 if another CPU stamped it after `now` was read).
#[inline(always)]
fn idle_for(entry: &NatValue, now: u64) -> u64 {
    now.saturating_sub(entry.last_seen_ns)
}

/// Whether another flow may take this entry's port: UDP idle past its timeout, TCP reset, or TCP closed by both
/// sides and quiet for the grace time (late retransmissions and the last ACK still translate during it).
#[inline(always)]
fn reclaimable(entry: &NatValue, protocol: u8, now: u64) -> bool {
    if protocol == PROTO_UDP {
        return idle_for(entry, now) > udp_timeout_ns();
    }
    let closed = NAT_FIN_CLIENT | NAT_FIN_BACKEND;
    entry.flags & NAT_RST != 0 || (entry.flags & closed == closed && idle_for(entry, now) > closed_grace_ns())
}

/// Picks the flow's NAT port towards `backend`: the first candidate whose reverse entry is free, already this
/// flow's, or reclaimable, and writes the flow's reverse entry there. `None` when every candidate belongs to
/// another live flow.
///
/// Taking the first usable candidate in a fixed order (rather than, say, preferring a free one over a
/// reclaimable one) is what lets another node, which never saw the reclaimable entries, reach the same choice.
#[inline(always)]
fn claim_port(backend: &Backend, flow: &FlowKey, hash: u32, client: &Client) -> Option<[u8; 2]> {
    let value = client.entry(flow);
    // A fixed, small bound: the loop is unrolled or verified as a bounded loop.
    for attempt in 0..NAT_PORT_TRIES {
        let port = nat_port(hash, attempt);
        let key = NatKey {
            backend: backend.address,
            backend_port: backend.port,
            nat_port: port,
            protocol: flow.protocol,
            _pad: [0; 3],
        };
        // SAFETY: only read here.
        match unsafe { NAT.get(&key) } {
            // NOEXIST: if another CPU took it since the lookup, try the next candidate.
            None => {
                if NAT.insert(&key, &value, u64::from(BPF_NOEXIST)).is_ok() {
                    return Some(port);
                }
            }
            Some(entry) => {
                if owns(entry, flow) || reclaimable(entry, flow.protocol, client.now) {
                    if NAT.insert(&key, &value, 0).is_ok() {
                        return Some(port);
                    }
                }
            }
        }
    }
    None
}

/// Deletes the reverse entry of a flow's previous translation, if it is still the flow's.
#[inline(always)]
fn forget(previous: FlowValue, flow: &FlowKey) {
    let Some(backend) = BACKENDS.get(previous.backend) else {
        return;
    };
    let key = NatKey {
        backend: backend.address,
        backend_port: backend.port,
        nat_port: previous.nat_port,
        protocol: flow.protocol,
        _pad: [0; 3],
    };
    // SAFETY: only read.
    if unsafe { NAT.get(&key) }.is_some_and(|e| owns(e, flow)) {
        let _ = NAT.remove(&key);
    }
}

/// Rewrites addresses and ports of a TCP/UDP packet (20-byte IP header) and fixes both checksums incrementally.
/// `false` if the L4 header is not in the frame (cannot happen after the parsing in `ipv4`; the verifier needs the
/// check anyway).
#[inline(always)]
fn translate(
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
    // SAFETY: bounds-checked by `at`.
    let ports = unsafe { &mut *ports };
    let addresses = Delta::new().addr(ip.src_addr, src).addr(ip.dst_addr, dst);
    let l4 = addresses.word([ports[0], ports[1]], sport).word([ports[2], ports[3]], dport);
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
    *ports = [sport[0], sport[1], dport[0], dport[1]];
    ip.check = addresses.apply(ip.check);
    ip.src_addr = src;
    ip.dst_addr = dst;
    true
}

/// Rewrites an ICMP error in place: the outer header becomes `VIP -> peer`, the quoted packet
/// `peer:peer_port -> VIP:vip_port`. Fixes the outer IP checksum, the quoted IP checksum, the quoted TCP/UDP
/// checksum when the error quotes it, and the ICMP checksum (which covers everything quoted, RFC 792).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn translate_icmp(
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
