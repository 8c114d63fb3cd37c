//! xvip's XDP program: answers ARP and ping for each VIP while the VRRP router it belongs to is active on this
//! node, and sends traffic for the services configured on it to a backend chosen by Maglev, pinned per flow.
//!
//! Modules by concern, none calling back into this root: `vip` (which VIP a frame is for), `service` (which service
//! a VIP's port is), `parse` (header layout, L4 fields), `forward` (Maglev, backends, MAC rewrite, TX/redirect, the
//! DSR path), `forward6` (IPv6 services, DSR to IPv6 backends), `nat` (NAT both ways and its flow state), `nat6` (the same for IPv6), `icmp` (echo and ICMP errors through the NAT), `ipv6` and
//! `icmp6` (IPv6 VIPs: Neighbor Discovery and echo answered, the rest dropped), `route` (the
//! FIB: where packets to clients go), `socket` (the cgroup programs that balance the node's own clients' connects),
//! `trace` (`xvip trace`'s records, off unless a client traces), plus `maps`,
//! `packet`, `csum`.
//!
//! It reads its whole world from maps written by the agent (see `maps.rs` and `lb_common`). Each frame ends in
//! exactly one `Reason`, counted per CPU (and, for a frame to a VIP, for the VIP's router too), so the agent can
//! tell users what happened to every frame.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod csum;
mod egress;
mod flow_cache;
mod forward;
mod forward6;
mod icmp;
mod icmp6;
mod ipv6;
mod maps;
mod nat;
mod nat6;
mod nat_state;
mod packet;
mod parse;
mod route;
mod service;
mod socket;
mod trace;
mod vip;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{
    Endpoint, FORWARD_NAT, FlowKey, MAX_ROUTERS, NodeConfig, Reason, ServiceKey, ServiceValue, martian_source,
    nat_source_port_bit, router_counter,
};
use maps::{CONFIG, COUNTERS, Clock, NAT_BACKENDS, NAT_SOURCE_PORTS, ROUTER_COUNTERS};
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr};
use parse::{
    ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IP_LEN, IPPROTO_ICMP, Ipv4Words, L4,
};
use vip::{NO_ROUTER, Vip, lookup_vip, may_answer};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

// Inlined into the entry point the macro wraps around it: a call costs a return, and returns are expensive on
// kernels that mitigate return-address speculation (a "safe RET" thunk on every one).
#[xdp]
#[inline(always)]
pub fn xvip_xdp(ctx: XdpContext) -> u32 {
    let traced = trace::start(&ctx);
    let (action, reason, router) = process(&ctx);
    count(reason, router);
    if traced {
        trace::finish(&ctx, action, reason, router);
    }
    action
}

/// IPv6 NAT's client path (`nat6::forward`), tail-called by `xvip_xdp` for a client's packet to an IPv6 NAT
/// service: a program of its own for the stack it needs (see `nat6`). It counts (and traces) the frame itself.
#[xdp]
#[inline(always)]
pub fn xvip_nat6(ctx: XdpContext) -> u32 {
    let traced = trace::start(&ctx);
    let (action, reason, router) = nat6::forward(&ctx);
    count(reason, router);
    if traced {
        trace::finish(&ctx, action, reason, router);
    }
    action
}

/// ICMPv6 errors about IPv6 NAT flows (`nat6::icmp`), tail-called by `xvip_xdp` like `xvip_nat6`; it counts (and
/// traces) the frame itself.
#[xdp]
#[inline(always)]
pub fn xvip_nat6_icmp(ctx: XdpContext) -> u32 {
    let traced = trace::start(&ctx);
    let (action, reason, router) = nat6::icmp(&ctx);
    count(reason, router);
    if traced {
        trace::finish(&ctx, action, reason, router);
    }
    action
}

/// A do-nothing program for the receiving end of veth pairs: veth only delivers XDP_TX/XDP_REDIRECT frames to a
/// peer that runs an XDP program. Also the baseline of `cargo xtask bench xdp`.
#[xdp]
pub fn xvip_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The egress program of every interface the XDP program serves: the replies of a NAT backend on this node (which
/// the XDP program never sees: they are generated here) translated back to the client, and the node's own ARP
/// requests for an active VIP answered back into the node (`egress.rs`). Everything else leaves untouched and
/// uncounted.
#[classifier]
#[inline(always)]
pub fn xvip_egress(ctx: TcContext) -> i32 {
    let (action, counted) = egress::process(&ctx);
    if let Some((reason, router)) = counted {
        count(reason, router);
    }
    action
}

/// The socket load balancer for the node's own clients (see `socket.rs`): a TCP or UDP connect to a VIP's service
/// goes to a backend.
#[cgroup_sock_addr(connect4)]
pub fn xvip_connect4(ctx: SockAddrContext) -> i32 {
    socket::connect::<socket::V4>(&ctx)
}

/// What `getpeername()` reports for a socket `xvip_connect4` sent to a backend: the VIP and port it asked for.
#[cgroup_sock_addr(getpeername4)]
pub fn xvip_getpeername4(ctx: SockAddrContext) -> i32 {
    socket::getpeername::<socket::V4>(&ctx)
}

/// The socket load balancer for unconnected UDP (see `socket.rs`): a datagram sent to a VIP's UDP service goes to
/// a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn xvip_sendmsg4(ctx: SockAddrContext) -> i32 {
    socket::sendmsg::<socket::V4>(&ctx)
}

/// The source of a datagram from a backend `xvip_sendmsg4` sent this socket's datagrams to: the VIP and port.
#[cgroup_sock_addr(recvmsg4)]
pub fn xvip_recvmsg4(ctx: SockAddrContext) -> i32 {
    socket::recvmsg::<socket::V4>(&ctx)
}

/// `xvip_connect4` for IPv6 sockets and VIPs.
#[cgroup_sock_addr(connect6)]
pub fn xvip_connect6(ctx: SockAddrContext) -> i32 {
    socket::connect::<socket::V6>(&ctx)
}

/// `xvip_getpeername4` for IPv6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn xvip_getpeername6(ctx: SockAddrContext) -> i32 {
    socket::getpeername::<socket::V6>(&ctx)
}

/// `xvip_sendmsg4` for IPv6 sockets and VIPs.
#[cgroup_sock_addr(sendmsg6)]
pub fn xvip_sendmsg6(ctx: SockAddrContext) -> i32 {
    socket::sendmsg::<socket::V6>(&ctx)
}

/// `xvip_recvmsg4` for IPv6 sockets.
#[cgroup_sock_addr(recvmsg6)]
pub fn xvip_recvmsg6(ctx: SockAddrContext) -> i32 {
    socket::recvmsg::<socket::V6>(&ctx)
}

/// Counts the frame under `reason`, node-wide and, for a frame to one of a router's VIPs, for that router.
#[inline(always)]
fn count(reason: Reason, router: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
    if router < MAX_ROUTERS
        && let Some(c) = ROUTER_COUNTERS.get_ptr_mut(router_counter(router, reason as u32))
    {
        // SAFETY: as above.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason, u32) {
    let Some(eth) = packet::at::<EthHdr>(ctx, 0) else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: `at` checked that the header lies inside the frame.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let Some(config) = CONFIG.get(0) else {
        return (XDP_PASS, Reason::DropInternal, NO_ROUTER);
    };
    let clock = Clock::new();
    match ether_type {
        ETH_P_ARP => arp(ctx, eth, config, &clock),
        ETH_P_IPV4 => ipv4(ctx, eth, config, &clock),
        ETH_P_IPV6 => ipv6::process(ctx, eth, config, &clock),
        ETH_P_8021Q | ETH_P_8021AD => (XDP_PASS, Reason::PassVlan, NO_ROUTER),
        _ => (XDP_PASS, Reason::PassNotIpv4, NO_ROUTER),
    }
}

/// Turns an ARP request for a VIP into the reply, in place (RFC 826), while its router is active, on the VIP's
/// interface (other interfaces the program serves carry backends or other instances, which reach the VIP through a
/// route).
#[inline(always)]
fn arp(ctx: &XdpContext, eth: *mut EthHdr, config: &NodeConfig, clock: &Clock) -> (u32, Reason, u32) {
    let Some(arp) = packet::at::<ArpHdr>(ctx, ETH_LEN) else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: both headers were bounds-checked by `at`.
    unsafe {
        let a = &mut *arp;
        let is_request = a.htype == [0, 1]
            && a.ptype == ETH_P_IPV4.to_be_bytes()
            && a.hlen == 6
            && a.plen == 4
            && a.oper == ARP_REQUEST.to_be_bytes();
        if !is_request {
            return (XDP_PASS, Reason::PassArp, NO_ROUTER);
        }
        let Some(vip) = lookup_vip(a.tpa) else {
            return (XDP_PASS, Reason::PassArp, NO_ROUTER);
        };
        let router = vip.value.router;
        let on_its_interface = vip.value.ifindex == 0 || vip.value.ifindex as usize == ctx.ingress_ifindex();
        // A gratuitous ARP (sender = VIP) is another node announcing itself, not a question; a sender no client can
        // be gets no answer either (0.0.0.0 is an address conflict probe, RFC 5227, which the owner answers).
        let client_sender = a.spa == [0; 4] || !(martian_source(a.spa, vip.address) || config.is_local(a.spa));
        // The answer goes to the sender's MAC: a unicast one, not ours.
        let unicast_asker = a.sha[0] & 1 == 0 && a.sha != [0; 6] && a.sha != config.mac && a.sha != vip.value.mac;
        if !on_its_interface || !client_sender || !unicast_asker || !may_answer(router, clock) {
            return (XDP_PASS, Reason::PassArp, router);
        }
        let asker_mac = a.sha;
        let asker_ip = a.spa;
        let mac = vip.value.mac;
        a.oper = ARP_REPLY.to_be_bytes();
        a.tha = asker_mac;
        a.tpa = asker_ip;
        a.sha = mac;
        a.spa = vip.address;
        (*eth).dst_addr = asker_mac;
        (*eth).src_addr = mac;
        (XDP_TX, Reason::ArpReply, router)
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: *mut EthHdr, config: &NodeConfig, clock: &Clock) -> (u32, Reason, u32) {
    let Some(ip) = packet::at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return (XDP_PASS, Reason::PassTruncated, NO_ROUTER);
    };
    // SAFETY: bounds-checked by `at`.
    let Some(vip) = lookup_vip(unsafe { parse::ipv4_dst(ip) }) else {
        return (XDP_PASS, Reason::PassNotVip, NO_ROUTER);
    };
    // SAFETY: bounds-checked by `at`.
    let (action, reason) = to_vip(ctx, eth, unsafe { &mut *ip }, config, &vip, clock);
    (action, reason, vip.value.router)
}

/// A frame addressed to `vip`.
#[inline(always)]
fn to_vip(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    vip: &Vip,
    clock: &Clock,
) -> (u32, Reason) {
    // Nothing to a VIP goes to the kernel, which does not own it: with forwarding on (Kubernetes nodes) it would
    // route it on, answer with redirects, or loop it through stale neighbour entries after a failover.
    if !may_answer(vip.value.router, clock) {
        // A VIP this node's kernel holds (a DSR backend here): the active node's DSR forwards are for that backend.
        if vip.value.held != 0 {
            return (XDP_PASS, Reason::PassHeldVip);
        }
        return (XDP_DROP, Reason::DropInactive);
    }
    // Only plain 20-byte IPv4 headers are handled: the L4 header then sits at a constant offset.
    if ip.vihl != 0x45 {
        return (XDP_DROP, Reason::DropIpOptions);
    }
    // SAFETY: `ip` was bounds-checked by `at`.
    let words = unsafe { Ipv4Words::load(ip) };
    // Nothing is read from a header that does not verify (every packet sent keeps it verifying: the checksum is
    // updated incrementally, RFC 1624).
    if !words.checksum_ok() {
        return (XDP_DROP, Reason::DropIpChecksum);
    }
    let total = words.total_len();
    if total < IP_LEN || ETH_LEN + total > packet::len(ctx) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    // More-fragments flag or a fragment offset: there are no ports to hash.
    if words.frags() & 0x3fff != 0 {
        return (XDP_DROP, Reason::DropFragment);
    }
    let source = words.src();
    let protocol = ip.proto as u8;
    if protocol == IPPROTO_ICMP {
        // Every ICMP message draws an answer or a translation: sources no client can have stop here.
        if vip::martian(source, vip, config) {
            return (XDP_DROP, Reason::DropMartianSource);
        }
        return icmp::handle(ctx, eth, ip, config, vip, total);
    }
    let l4 = match parse::l4(ctx, protocol, total) {
        Ok(l4) => l4,
        Err(Reason::PassTruncated) => return (XDP_PASS, Reason::PassTruncated),
        Err(reason) => return (XDP_DROP, reason),
    };
    transport(ctx, eth, ip, config, vip, source, &l4, clock)
}

/// A TCP or UDP packet from `source` to a VIP: a NAT backend's reply, or a client's packet to a service.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    config: &NodeConfig,
    vip: &Vip,
    source: [u8; 4],
    l4: &L4,
    clock: &Clock,
) -> (u32, Reason) {
    // Replies are recognised by their source, a NAT backend's (address, port), before the service lookup: the NAT
    // port they are addressed to may equal a service port, and a reply without a translation (after a failover)
    // must not be mistaken for a new client flow. A one-bit-per-port array spares every other packet the hash
    // lookups; a reply costs one (its reverse entry), a backend's packet without one a second (`NAT_BACKENDS`).
    if let Some((word, bit)) = nat_source_port_bit(l4.protocol, u16::from_be_bytes(l4.sport))
        && NAT_SOURCE_PORTS.get(word).is_some_and(|w| *w & (1u64 << bit) != 0)
    {
        // A reply changes its flow's state: its source must be one a backend can have.
        if vip::martian(source, vip, config) {
            return (XDP_DROP, Reason::DropMartianSource);
        }
        if let Some(entry) = nat::reverse_entry(source, vip.address, l4) {
            return nat::reply(ctx, eth, ip, l4, entry, clock.now());
        }
        let from = Endpoint::new(source, l4.sport, l4.protocol);
        // SAFETY: only tested for presence.
        if unsafe { NAT_BACKENDS.get(&from) }.is_some() {
            // After a failover until the client sends again, or after the flow aged out: the backend retransmits
            // until the client's next packet has rebuilt the translation.
            return (XDP_DROP, Reason::DropNatNoEntry);
        }
    }
    let Some(svc) = service::lookup_service(&ServiceKey::new(vip.address, l4.dport, l4.protocol)) else {
        return (XDP_DROP, Reason::DropNoService);
    };
    let svc: ServiceValue = svc;
    let flow = FlowKey::new(source, vip.address, l4.sport, l4.dport, l4.protocol);
    if svc.forwarding == FORWARD_NAT {
        return nat::forward(ctx, eth, ip, config, vip, &svc, &flow, l4, clock.now());
    }
    forward::dsr(ctx, eth, config, vip, &svc, &flow, l4, clock)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
