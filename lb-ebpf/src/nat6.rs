//! NAT to IPv6 backends: a client packet `[client]:cport -> [VIP]:svc` leaves as `[VIP]:nport -> [backend]:bport`,
//! and the backend's reply `[backend]:bport -> [VIP]:nport` leaves as `[VIP]:svc -> [client]:cport`, as `nat.rs`
//! does for IPv4, with the same rules: the NAT port is a function of the flow (`nat_port` over `flow_hash6`, seeded
//! per VIP), so a failover rebuilds the same translation from the client's next packet; the same TCP states,
//! reclaim and displacement rules and timeouts (the `NAT_*_TIMEOUT_NS` load-time constants); the reply route from
//! the kernel's FIB (`route::lookup6`), refreshed every `ROUTE_REFRESH_NS`, never from a received frame.
//!
//! # State
//! - `CONNTRACK6[client flow] = (backend slot and address, nport, checked)`: the forward direction. An established
//!   packet costs this one lookup, or none while its CPU's flow cache (`FLOW_CACHE6`) holds a fresh copy (then
//!   `xvip_xdp` sends it on before the tail call, [`cached`]); once a second (`NAT_CHECK_INTERVAL_NS`), and on
//!   every SYN/FIN/RST, it also confirms that the reverse entry is still the flow's own and refreshes it, as IPv4
//!   does (the rule is `nat_state::confirmed`).
//! - `NAT6[(backend, VIP, bport, nport, protocol)] = (client, cport, svc, flags, reply route, last seen)`: the
//!   reverse direction, looked up by every reply.
//!
//! # Checksums
//! IPv6 has no header checksum; the TCP/UDP checksum covers the addresses through the pseudo-header (RFC 8200
//! §8.1), so it is updated incrementally (RFC 1624) over the addresses (`Delta::addr6`; the VIP's terms cancel, see
//! [`translate`]) and the ports. A zero UDP checksum is invalid over IPv6 and never reaches here (`forward6` drops
//! it); a computed 0 is sent as 0xffff.
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    programs::XdpContext,
};
use lb_common::{
    Backend, FlowKey6, FlowValue6, NAT_PORT_TRIES, NO_BACKEND, NatKey6, NatValue6, NodeConfig, PROTO_TCP, PROTO_UDP,
    Reason, ServiceValue, flow_hash6_halves, ipv6_halves, nat_port,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    csum::Delta,
    flow_cache,
    forward::{self, set_macs},
    maps::{BACKEND_ADDRESSES6, BACKENDS, CONFIG, CONNTRACK6, Clock, NAT6},
    nat::{TCP_CHECK_OFF, UDP_CHECK_OFF},
    nat_state::{
        NatState, cached_route, confirm, confirmed, embryonic, fresh_flags, refresh, reply_seen, take, udp_expired,
    },
    packet,
    parse::{self, ETH_LEN, IP6_LEN, IPPROTO_ICMPV6, L4, L4_OFF6},
    route::{self, NoRoute},
    service::lookup_service6,
    vip::{NO_ROUTER, lookup_vip6, martian6},
};

/// A client packet to an IPv6 NAT service, in the program `xvip_nat6` that `forward6` tail-calls (`NAT6_PROGRAMS`):
/// the frame is parsed again (it is unchanged since `xvip_xdp` parsed it); returns (verdict, reason, router).
///
/// A program of its own: inlined into `xvip_xdp`, whose frame is close to the 512-byte stack limit already, its
/// keys and values (a flow, a translation and its key) took the program over it, and a BPF-to-BPF call adds its
/// frame to the caller's. A tail call starts with a fresh stack.
#[inline(always)]
pub fn forward(ctx: &XdpContext) -> (u32, Reason, u32) {
    let (Some(eth), Some(ip), Some(config)) =
        (packet::at::<EthHdr>(ctx, 0), packet::at::<Ipv6Hdr>(ctx, ETH_LEN), CONFIG.get(0))
    else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &mut *ip };
    let Some(vip) = lookup_vip6(packet::halves(&ip.dst_addr)) else {
        return (XDP_DROP, Reason::DropInternal, NO_ROUTER);
    };
    let router = vip.router;
    let payload = usize::from(u16::from_be_bytes(ip.payload_len));
    let Ok(l4) = parse::l4_at(ctx, ip.next_hdr, L4_OFF6, payload) else {
        return (XDP_DROP, Reason::DropInternal, router);
    };
    let Some(svc) = lookup_service6(packet::halves(&ip.dst_addr), l4.dport, l4.protocol) else {
        return (XDP_DROP, Reason::DropNoService, router);
    };
    let (action, reason) = forward_frame(ctx, eth, ip, config, &svc, &l4, vip.hash_seed, Clock::new().now());
    (action, reason, router)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_frame(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    config: &NodeConfig,
    svc: &ServiceValue,
    l4: &L4,
    hash_seed: u32,
    now: u64,
) -> (u32, Reason) {
    // Addresses as halves throughout: keys are built from whole words (see `FlowKey6::from_halves`).
    let (client, vip_address) = (packet::halves(&ip.src_addr), packet::halves(&ip.dst_addr));
    let words = FlowKey6::words_of(client, vip_address, l4.sport, l4.dport, l4.protocol);
    let flow = FlowKey6::in_words(&words);

    // Established: the pinned backend and port, if the backend may still take traffic and (checked at most once a
    // second, and on every SYN/FIN/RST) the reverse entry is still this flow's. A SYN always starts over (a reused
    // client port is a new connection). A plain packet within that second that this CPU's flow cache could serve
    // never got here (`cached`, in `xvip_xdp`); every write or confirmation of the entry below goes to the cache.
    let generation = flow_cache::generation(config);
    let pinned_ptr = CONNTRACK6.get_ptr_mut(flow);
    if let Some(pinned) = pinned_ptr {
        // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
        let pinned = unsafe { &mut *pinned };
        if !l4.syn()
            && pinned.nat_port != [0, 0]
            && let Some(backend) = usable(pinned, svc)
        {
            let address = pinned.address_halves();
            if confirmed(pinned, l4, now) {
                flow_cache::put6(&words, pinned, generation, now);
                let (id, port) = (pinned.backend, pinned.nat_port);
                return to_backend(ctx, eth, ip, config, svc.index, id, port, address, &backend, false);
            }
            let key = NatKey6::from_halves(address, vip_address, backend.port, pinned.nat_port, l4.protocol);
            // Otherwise (evicted, taken over after this flow went idle, or a UDP flow that aged out) the flow
            // starts over below, as after a failover.
            if let Some(entry) = NAT6.get_ptr_mut(&key) {
                // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
                let entry = unsafe { &mut *entry };
                if owns(entry, flow) && !udp_expired(entry, l4.protocol, now) {
                    refresh(entry, l4, now);
                    confirm(pinned, l4, now);
                    flow_cache::put6(&words, pinned, generation, now);
                    let (id, port) = (pinned.backend, pinned.nat_port);
                    return to_backend(ctx, eth, ip, config, svc.index, id, port, address, &backend, false);
                }
            }
        }
    }

    // A new flow, or one starting over (as after a failover): its source is tested before it claims a port and
    // gets entries (an established flow's source was, when it got them).
    if martian6(client, vip_address, config) {
        return (XDP_DROP, Reason::DropMartianSource);
    }
    let hash = flow_hash6_halves(client, l4.sport, l4.dport, l4.protocol, hash_seed);
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
    let address = packet::halves(address);
    let Some(port) = claim_port(&backend, address, client, vip_address, flow, hash, l4, now) else {
        return (XDP_DROP, Reason::DropNatNoPort);
    };
    // The flow's previous translation, read where it is rather than copied (`nat::forward` copies it; this
    // program's stack has no room for that): the entry is rewritten only below.
    if let Some(previous) = pinned_ptr {
        // SAFETY: a valid map value, only read.
        let previous = unsafe { &*previous };
        if previous.nat_port != [0, 0] {
            forget(previous, flow, vip_address, (address, backend.port, port));
        }
    }
    // The port was just claimed: the reverse entry is the flow's as of now.
    let value = FlowValue6::nat(id, &backend, address, port, now);
    let recorded = match pinned_ptr {
        Some(pinned) => {
            // SAFETY: a valid map value; rewritten in place.
            unsafe { *pinned = value };
            true
        }
        None => CONNTRACK6.insert(flow, &value, 0).is_ok(),
    };
    if recorded {
        flow_cache::put6(&words, &value, generation, now);
    }
    to_backend(ctx, eth, ip, config, svc.index, id, port, address, &backend, recorded)
}

/// A client packet to an IPv6 NAT service that this CPU's flow cache can send on, served in `xvip_xdp` before the
/// tail call into `xvip_nat6` (measured 38 to 66 ns cheaper than the same in `xvip_nat6`: the tail call, and the
/// frame parsed and its VIP and service looked up again): a plain packet of an established flow whose cached copy
/// (`flow_cache::get6`) says its `NAT6` entry was confirmed less than a second ago (`nat_state::confirmed`) and
/// whose backend slot may still take its traffic, as `nat::forward` serves IPv4 ones. `None`: for `xvip_nat6`
/// ([`forward`]), which reads `CONNTRACK6`. `(client, vip_address)`: the frame's addresses as halves.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn cached(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    config: &NodeConfig,
    svc: &ServiceValue,
    l4: &L4,
    (client, vip_address): ((u64, u64), (u64, u64)),
    now: u64,
) -> Option<(u32, Reason)> {
    if !l4.plain() {
        return None;
    }
    let words = FlowKey6::words_of(client, vip_address, l4.sport, l4.dport, l4.protocol);
    let cached = flow_cache::get6(&words, flow_cache::generation(config), now)?;
    if cached.nat_port == [0, 0] || !confirmed(cached, l4, now) {
        return None;
    }
    let backend = usable(cached, svc)?;
    let (id, port) = (cached.backend, cached.nat_port);
    Some(to_backend(ctx, eth, ip, config, svc.index, id, port, cached.address_halves(), &backend, false))
}

/// Translates a client packet to `backend`, in slot `id` (at `address`), from `[VIP]:port` and sends it there.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    config: &NodeConfig,
    service_index: u32,
    id: u32,
    port: [u8; 2],
    address: (u64, u64),
    backend: &Backend,
    new_flow: bool,
) -> (u32, Reason) {
    if let Err(reason) = forward::take_backend(ctx, service_index, id, backend, new_flow) {
        return (XDP_DROP, reason);
    }
    if !translate(ctx, ip, ip.next_hdr, address, port, backend.port) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    let reasons = [Reason::NatForwardTx, Reason::NatForwardRedirect, Reason::NatForwardLocal];
    forward::to_backend(ctx, eth, config, backend, reasons)
}

/// The reverse entry a packet from an IPv6 NAT backend's `[address]:port` to `[VIP]:nport` belongs to, if any.
#[inline(always)]
pub fn reverse_entry(ip: &Ipv6Hdr, l4: &L4) -> Option<*mut NatValue6> {
    let key = NatKey6::from_halves(
        packet::halves(&ip.src_addr),
        packet::halves(&ip.dst_addr),
        l4.sport,
        l4.dport,
        l4.protocol,
    );
    NAT6.get_ptr_mut(&key)
}

/// A backend's packet with its reverse entry (see [`reverse_entry`]): a reply, translated back to the client.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv6Hdr,
    l4: &L4,
    entry: *mut NatValue6,
    now: u64,
) -> (u32, Reason) {
    let vip = packet::halves(&ip.dst_addr);
    // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
    let entry = unsafe { &mut *entry };
    if let Err(reason) = reply_seen(entry, l4, now) {
        return (XDP_DROP, reason);
    }
    let (client, client_port, service_port) = (packet::halves(&entry.client), entry.client_port, entry.service_port);
    let route = if let Some(route) = cached_route(entry, now) {
        route
    } else {
        let length = (IP6_LEN as u16).saturating_add(u16::from_be_bytes(ip.payload_len));
        match route::lookup6(ctx, vip, client, l4.protocol, length) {
            Ok(r) => {
                entry.set_route(&r, now);
                r
            }
            Err(NoRoute::Neighbour) => {
                // The kernel resolves the next hop and forwards this packet; the next reply finds the neighbour.
                if !translate(ctx, ip, l4.protocol, client, service_port, client_port) {
                    return (XDP_PASS, Reason::PassTruncated);
                }
                return (XDP_PASS, Reason::PassNoNeighbour);
            }
            Err(no) => return (XDP_DROP, no.reason()),
        }
    };
    if !translate(ctx, ip, l4.protocol, client, service_port, client_port) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    set_macs(eth, route.next_hop_mac, route.egress_mac);
    forward::send(ctx, route.ifindex, Reason::NatReplyTx, Reason::NatReplyRedirect)
}

/// The backend a pinned flow may keep using: still in its slot, healthy, of this service, MAC known.
#[inline(always)]
fn usable(pinned: &FlowValue6, svc: &ServiceValue) -> Option<Backend> {
    let b = *BACKENDS.get(pinned.backend)?;
    let address = BACKEND_ADDRESSES6.get(pinned.backend)?;
    (pinned.keeps_pin(&b, packet::halves(address), svc.index) && b.mac != [0; 6]).then_some(b)
}

#[inline(always)]
fn owns(entry: &NatValue6, flow: &FlowKey6) -> bool {
    packet::halves(&entry.client) == ipv6_halves(&flow.client)
        && entry.client_port == flow.client_port
        && entry.service_port == flow.service_port
}

/// Picks the flow's NAT port towards `backend` (at `address`) as `nat::claim_port` does: the first candidate whose
/// reverse entry is free, this flow's, or reclaimable; failing that, a SYN displaces the first embryonic one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn claim_port(
    backend: &Backend,
    address: (u64, u64),
    client: (u64, u64),
    vip: (u64, u64),
    flow: &FlowKey6,
    hash: u32,
    l4: &L4,
    now: u64,
) -> Option<[u8; 2]> {
    let value = NatValue6::new(client, l4.sport, l4.dport, fresh_flags(l4), now);
    let syn = l4.syn();
    let mut displace: Option<[u8; 2]> = None;
    // One key, its port rewritten per candidate (the stack is 512 bytes for the whole program).
    let mut key = NatKey6::from_halves(address, vip, backend.port, [0, 0], l4.protocol);
    for attempt in 0..NAT_PORT_TRIES {
        let port = nat_port(hash, attempt);
        key.nat_port = port;
        match NAT6.get_ptr_mut(&key) {
            None => {
                if NAT6.insert(&key, &value, u64::from(BPF_NOEXIST)).is_ok() {
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
    key.nat_port = port;
    NAT6.insert(&key, &value, 0).ok().map(|_| port)
}

/// Deletes the reverse entry of a flow's previous translation if it is still the flow's and not the one it has
/// now (`current`: backend address, backend port, NAT port).
#[inline(always)]
fn forget(previous: &FlowValue6, flow: &FlowKey6, vip: (u64, u64), current: ((u64, u64), [u8; 2], [u8; 2])) {
    let address = ipv6_halves(&previous.backend_address);
    if (address, previous.backend_port, previous.nat_port) == current {
        return;
    }
    let key = NatKey6::from_halves(address, vip, previous.backend_port, previous.nat_port, flow.protocol);
    // SAFETY: only read.
    if unsafe { NAT6.get(&key) }.is_some_and(|e| owns(e, flow)) {
        let _ = NAT6.remove(&key);
    }
}

/// Where an ICMPv6 error's quoted packet starts (after the 8-byte ICMPv6 header), and its upper-layer header.
const QUOTED_OFF6: usize = L4_OFF6 + 8;
const QUOTED_L4_OFF6: usize = QUOTED_OFF6 + IP6_LEN;
/// The ICMPv6 checksum in the frame.
const ICMP6_CHECK_OFF: usize = L4_OFF6 + 2;

/// An ICMPv6 error (destination unreachable, Packet Too Big, time exceeded) to the VIP about a NAT flow, which
/// `forward6::icmp_error` handed over: about a packet to a backend (`[VIP]:nport -> [backend]:bport`, from a router
/// between the node and the backend) it goes to the client, about a reply (`[VIP]:svc -> [client]:cport`, from a
/// router on the way to the client) to the backend, the quoted packet translated as the packet itself was and the
/// checksums (the ICMPv6 one, the quoted TCP/UDP one when quoted) updated incrementally. Path MTU discovery works
/// through the NAT so. Anything else is dropped (`DropNoService`).
///
/// The program `xvip_nat6_icmp` (slot `NAT6_ICMP_SLOT` of `NAT6_PROGRAMS`), for the stack as [`forward`]; returns
/// (verdict, reason, router).
#[inline(always)]
pub fn icmp(ctx: &XdpContext) -> (u32, Reason, u32) {
    let (Some(eth), Some(ip), Some(config)) =
        (packet::at::<EthHdr>(ctx, 0), packet::at::<Ipv6Hdr>(ctx, ETH_LEN), CONFIG.get(0))
    else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &mut *ip };
    let Some(vip) = lookup_vip6(packet::halves(&ip.dst_addr)) else {
        return (XDP_DROP, Reason::DropInternal, NO_ROUTER);
    };
    let router = vip.router;
    let (action, reason) = icmp_error(ctx, eth, ip, config);
    (action, reason, router)
}

#[inline(always)]
fn icmp_error(ctx: &XdpContext, eth: *mut EthHdr, ip: &mut Ipv6Hdr, config: &NodeConfig) -> (u32, Reason) {
    let (Some(quoted), Some(ports)) =
        (packet::at::<Ipv6Hdr>(ctx, QUOTED_OFF6), packet::at::<[u8; 4]>(ctx, QUOTED_L4_OFF6))
    else {
        return (XDP_DROP, Reason::DropNoService);
    };
    // The message ends where the IPv6 payload does (the frame may carry padding after it): the quoted ports must
    // be in it, and the quoted checksum is updated only if it is.
    let end = L4_OFF6 + usize::from(u16::from_be_bytes(ip.payload_len));
    if end < QUOTED_L4_OFF6 + 4 || end > packet::len(ctx) {
        return (XDP_DROP, Reason::DropNoService);
    }
    // SAFETY: both bounds-checked by `at`.
    let (quoted, ports) = unsafe { (&mut *quoted, &mut *ports) };
    let protocol = quoted.next_hdr;
    let vip = packet::halves(&ip.dst_addr);
    let to = packet::halves(&quoted.dst_addr);
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    if packet::halves(&quoted.src_addr) != vip || !(protocol == PROTO_TCP || protocol == PROTO_UDP) {
        return (XDP_DROP, Reason::DropNoService);
    }
    // About a packet to a backend: its translation names the client.
    let key = NatKey6::from_halves(to, vip, dport, sport, protocol);
    // SAFETY: only read.
    if let Some(entry) = unsafe { NAT6.get(&key) } {
        let client = packet::halves(&entry.client);
        let (client_port, service_port) = (entry.client_port, entry.service_port);
        let length = (IP6_LEN as u16).saturating_add(u16::from_be_bytes(ip.payload_len));
        let route = match route::lookup6(ctx, vip, client, IPPROTO_ICMPV6, length) {
            Ok(r) => r,
            Err(NoRoute::Neighbour) => {
                if !translate_error(ctx, end, ip, quoted, ports, client, (client, vip), (client_port, service_port)) {
                    return (XDP_PASS, Reason::PassTruncated);
                }
                return (XDP_PASS, Reason::PassNoNeighbour);
            }
            Err(no) => return (XDP_DROP, no.reason()),
        };
        if !translate_error(ctx, end, ip, quoted, ports, client, (client, vip), (client_port, service_port)) {
            return (XDP_PASS, Reason::PassTruncated);
        }
        set_macs(eth, route.next_hop_mac, route.egress_mac);
        return forward::send(ctx, route.ifindex, Reason::NatIcmpToClient, Reason::NatIcmpToClient);
    }
    // About a reply to a client: the client's flow names the backend and the NAT port.
    let flow = FlowKey6::from_halves(to, vip, dport, sport, protocol);
    // SAFETY: only read.
    let Some(pinned) = (unsafe { CONNTRACK6.get(&flow) }) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    let Some(svc) = lookup_service6(vip, sport, protocol) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    if pinned.nat_port == [0, 0] {
        return (XDP_DROP, Reason::DropNoService);
    }
    let Some(backend) = usable(pinned, &svc) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    if let Err(reason) = forward::take_backend(ctx, svc.index, pinned.backend, &backend, false) {
        return (XDP_DROP, reason);
    }
    let address = packet::halves(&pinned.backend_address);
    if !translate_error(ctx, end, ip, quoted, ports, address, (address, vip), (backend.port, pinned.nat_port)) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    forward::to_backend(ctx, eth, config, &backend, [Reason::NatIcmpToBackend; 3])
}

/// Rewrites an ICMPv6 error for the other end of its NAT flow: the outer destination becomes `outer_dst`, the
/// quoted packet's addresses `quoted_addresses` (source, destination) and its ports `quoted_ports`; the quoted
/// TCP/UDP checksum (when the quote, which ends at frame offset `end`, holds it) and the ICMPv6 checksum are
/// updated incrementally. `false` if a
/// field is outside the frame (nothing changed then).
#[inline(always)]
fn translate_error(
    ctx: &XdpContext,
    end: usize,
    ip: &mut Ipv6Hdr,
    quoted: &mut Ipv6Hdr,
    ports: &mut [u8; 4],
    outer_dst: (u64, u64),
    quoted_addresses: ((u64, u64), (u64, u64)),
    quoted_ports: ([u8; 2], [u8; 2]),
) -> bool {
    let Some(icmp_check) = packet::at::<[u8; 2]>(ctx, ICMP6_CHECK_OFF) else {
        return false;
    };
    let (qsrc, qdst) = quoted_addresses;
    let (nsport, ndport) = quoted_ports;
    let inner = Delta::new().addr6(packet::halves(&quoted.src_addr), qsrc);
    let inner = inner.addr6(packet::halves(&quoted.dst_addr), qdst);
    let inner = inner.word([ports[0], ports[1]], nsport).word([ports[2], ports[3]], ndport);
    // The message holds the quoted header and ports; the pseudo-header the outer destination.
    let mut icmp = inner.addr6(packet::halves(&ip.dst_addr), outer_dst);
    if quoted.next_hdr == PROTO_TCP {
        if let Some(check) = packet::at::<[u8; 2]>(ctx, QUOTED_L4_OFF6 + TCP_CHECK_OFF)
            && QUOTED_L4_OFF6 + TCP_CHECK_OFF + 2 <= end
        {
            // SAFETY: bounds-checked by `at`.
            unsafe {
                let new = inner.apply(*check);
                icmp = icmp.word(*check, new);
                *check = new;
            }
        }
    } else if let Some(check) = packet::at::<[u8; 2]>(ctx, QUOTED_L4_OFF6 + UDP_CHECK_OFF)
        && QUOTED_L4_OFF6 + UDP_CHECK_OFF + 2 <= end
    {
        // SAFETY: bounds-checked by `at`.
        unsafe {
            let new = inner.apply_udp(*check);
            icmp = icmp.word(*check, new);
            *check = new;
        }
    }
    // SAFETY: bounds-checked by `at`.
    unsafe { *icmp_check = icmp.apply(*icmp_check) };
    *ports = [nsport[0], nsport[1], ndport[0], ndport[1]];
    packet::store_halves(&mut quoted.src_addr, qsrc);
    packet::store_halves(&mut quoted.dst_addr, qdst);
    packet::store_halves(&mut ip.dst_addr, outer_dst);
    true
}

/// Rewrites a TCP/UDP packet to the VIP (after the fixed IPv6 header) into one from the VIP to `dst`, with ports
/// `sport` and `dport`, and fixes its checksum incrementally. `false` if the L4 header is not in the frame (cannot
/// happen after the parsing in `forward6`).
///
/// The VIP moves from destination to source, so its terms cancel out of the checksum's change: the old source
/// leaves and `dst` comes in (one address's terms, not two: ~v + v is 0xffff, a zero of one's complement).
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    ip: &mut Ipv6Hdr,
    protocol: u8,
    dst: (u64, u64),
    sport: [u8; 2],
    dport: [u8; 2],
) -> bool {
    let Some(ports) = packet::at::<[u8; 4]>(ctx, L4_OFF6) else {
        return false;
    };
    let ports = ports as *mut u8;
    // SAFETY: bounds-checked by `at`; one word load (see `packet::load4`).
    let old = unsafe { packet::load4(ports) };
    let vip = packet::halves(&ip.dst_addr);
    let delta = Delta::new().addr6(packet::halves(&ip.src_addr), dst);
    let delta = delta.word([old[0], old[1]], sport).word([old[2], old[3]], dport);
    if protocol == PROTO_TCP {
        let Some(check) = packet::at::<[u8; 2]>(ctx, L4_OFF6 + TCP_CHECK_OFF) else {
            return false;
        };
        // SAFETY: bounds-checked by `at`.
        unsafe { *check = delta.apply(*check) };
    } else {
        let Some(check) = packet::at::<[u8; 2]>(ctx, L4_OFF6 + UDP_CHECK_OFF) else {
            return false;
        };
        // A zero UDP checksum never gets here (invalid over IPv6); a computed 0 goes out as 0xffff.
        // SAFETY: bounds-checked by `at`.
        unsafe { *check = delta.apply_udp(*check) };
    }
    // SAFETY: bounds-checked by `at`.
    unsafe { packet::store4(ports, [sport[0], sport[1], dport[0], dport[1]]) };
    packet::store_halves(&mut ip.src_addr, vip);
    packet::store_halves(&mut ip.dst_addr, dst);
    true
}
