//! The socket load balancer for clients on the node itself (`cgroup/connect4`, `cgroup/getpeername4`).
//!
//! A process on an xvip node that connects to a VIP never reaches the XDP program (it sees only what arrives from
//! the wire), so its `connect()` is balanced instead: the destination VIP:port of a TCP connect becomes a backend's
//! address and port, picked from the service's live Maglev table (the one the XDP program uses) by the socket's
//! cookie (a backend at the node's own address is in that table once the agent has marked it local; until then it
//! gets its weight's share of the connects from `SOCKET_LOCAL`). The socket is then connected straight to the
//! backend: no packet of it ever goes through a VIP, so it
//! works on every node, active or backup, and keeps working across a failover. `getpeername()` reports VIP:port
//! again (from `SOCKET_PEERS`), so the application sees the address it asked for.
//!
//! Cgroup programs run for every process in the cgroup whatever its network namespace: only connects made in the
//! agent's own namespace are touched (`lb_common::socket_lb_applies`).
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{NO_BACKEND, PROTO_TCP, ServiceKey, SocketPeer, SocketPeerKey, socket_hash, socket_lb_applies};

use crate::{
    forward::maglev_pick,
    maps::{BACKENDS, SOCKET_LOCAL, SOCKET_PEERS, node_netns_cookie},
    service::lookup_service,
    vip::lookup_vip,
};

/// What a cgroup sock_addr program returns to let the call go on (0 refuses it).
pub const PROCEED: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;
const AF_INET: u32 = 2;

/// A `connect()` (TCP, IPv4) to one of the node's VIPs on a service port: sent to a backend instead. A service
/// without a healthy backend refuses the connect (ECONNREFUSED), as a client would want to fail fast.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context; these fields are readable in connect4.
    let (family, protocol, ip, port) = unsafe {
        (
            core::ptr::read_volatile(&(*addr).user_family),
            core::ptr::read_volatile(&(*addr).protocol),
            core::ptr::read_volatile(&(*addr).user_ip4),
            core::ptr::read_volatile(&(*addr).user_port),
        )
    };
    if family != AF_INET || protocol != u32::from(PROTO_TCP) {
        return PROCEED;
    }
    // Both stored in network byte order: their bytes in memory are the address and port as on the wire.
    let vip_address = ip.to_ne_bytes();
    let vip_port = (port as u16).to_ne_bytes();
    let Some(vip) = lookup_vip(vip_address) else {
        return PROCEED;
    };
    // SAFETY: plain helper call on the program's context.
    if !socket_lb_applies(unsafe { bpf_get_netns_cookie(addr.cast()) }, node_netns_cookie()) {
        return PROCEED;
    }
    let Some(svc) = lookup_service(&ServiceKey::new(vip_address, vip_port, PROTO_TCP)) else {
        return PROCEED;
    };
    // SAFETY: plain helper call on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    let hash = socket_hash(cookie, vip.value.hash_seed);
    // The service's backend on this node, if it is in no Maglev table yet (its MAC not known), takes its share first;
    // the rest go by the Maglev table. The share is decided by other bits of the hash than the Maglev slot.
    let local = SOCKET_LOCAL.get(svc.index).copied().unwrap_or_default();
    let id = if local.picks(hash.rotate_left(16)) {
        local.backend
    } else {
        match maglev_pick(&svc, hash) {
            Some(id) if id != NO_BACKEND => id,
            _ if local.backend != NO_BACKEND => local.backend,
            _ => return refuse(),
        }
    };
    let Some(backend) = BACKENDS.get(id) else {
        return refuse();
    };
    if backend.healthy != 1 || backend.address == [0; 4] {
        return refuse();
    }
    let (backend_address, backend_port) = (backend.address, backend.port);
    let key = SocketPeerKey::new(cookie, backend_address, backend_port, PROTO_TCP);
    let _ = SOCKET_PEERS.insert(&key, &SocketPeer { vip: vip_address, port: vip_port, _pad: [0; 2] }, 0);
    set_peer(addr, backend_address, backend_port);
    PROCEED
}

/// `getpeername()` of a socket `connect4` sent to a backend: the VIP and port it asked for.
#[inline(always)]
pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as in `connect4`.
    let (family, protocol, ip, port) = unsafe {
        (
            core::ptr::read_volatile(&(*addr).user_family),
            core::ptr::read_volatile(&(*addr).protocol),
            core::ptr::read_volatile(&(*addr).user_ip4),
            core::ptr::read_volatile(&(*addr).user_port),
        )
    };
    if family != AF_INET || protocol != u32::from(PROTO_TCP) {
        return PROCEED;
    }
    // SAFETY: plain helper call on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    let key = SocketPeerKey::new(cookie, ip.to_ne_bytes(), (port as u16).to_ne_bytes(), PROTO_TCP);
    // SAFETY: copied out at once.
    if let Some(peer) = unsafe { SOCKET_PEERS.get(&key) }.copied() {
        set_peer(addr, peer.vip, peer.port);
    }
    PROCEED
}

#[inline(always)]
fn set_peer(addr: *mut bpf_sock_addr, address: [u8; 4], port: [u8; 2]) {
    // SAFETY: user_ip4 and user_port are writable in connect4 and getpeername4 (4-byte stores).
    unsafe {
        core::ptr::write_volatile(&mut (*addr).user_ip4, u32::from_ne_bytes(address));
        core::ptr::write_volatile(&mut (*addr).user_port, u32::from(u16::from_ne_bytes(port)));
    }
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain helper call; the error the refused connect() returns instead of EPERM.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}
