//! The socket load balancer for clients on the node itself (`cgroup/connect4`, `cgroup/getpeername4`, and for
//! unconnected UDP `cgroup/sendmsg4` and `cgroup/recvmsg4`; their IPv6 twins `connect6` ... `recvmsg6`).
//!
//! A process on an xvip node that connects to a VIP never reaches the XDP program (it sees only what arrives from
//! the wire), so its `connect()` is balanced instead: the destination VIP:port of a TCP or UDP connect becomes a
//! backend's address and port, picked from the service's live Maglev table (the one the XDP program uses) by the
//! socket's cookie (a backend at the node's own address is in that table once the agent has marked it local; until
//! then it gets its weight's share of the connects from `SOCKET_LOCAL`). The socket is then connected straight to
//! the backend: no packet of it ever goes through a VIP, so it works on every node, active or backup, and keeps
//! working across a failover. `getpeername()` reports VIP:port again (from `SOCKET_PEERS`, keyed by the socket's
//! cookie and the backend), so the application sees the address it asked for.
//!
//! An unconnected UDP socket names the destination with each datagram: `sendmsg4` picks the backend the same way
//! for each datagram to a VIP's UDP service (the same cookie, so the same backend while the table stays) and records
//! it in `SOCKET_PEERS` like `connect4`; `recvmsg4` turns the source of a datagram from that backend back into the
//! VIP and port, so `recvfrom()` reports the address the application sent to.
//!
//! The `*6` programs do the same for IPv6 sockets and IPv6 VIPs (`SOCKET_PEERS6`, the backends' addresses from
//! `BACKEND_ADDRESSES6`): the four calls are written once, over a [`Family`] ([`V4`], [`V6`]) that knows where its
//! addresses are and which maps it uses. An IPv6 socket that names an IPv4 VIP as an IPv4-mapped address
//! (`::ffff:a.b.c.d`, a dual-stack socket: Java's, for one) is balanced as an IPv4 socket is, its backend written
//! back as an IPv4-mapped address.
//!
//! Cgroup programs run for every process in the cgroup whatever its network namespace: only calls made in the
//! agent's own namespace are touched (`lb_common::socket_lb_applies`).
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    NO_BACKEND, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceValue, SocketPeer, SocketPeer6, SocketPeerKey, SocketPeerKey6,
    ipv6_halves, socket_hash, socket_lb_applies,
};

use crate::{
    forward::maglev_pick,
    maps::{BACKEND_ADDRESSES6, BACKENDS, SOCKET_LOCAL, SOCKET_PEERS, SOCKET_PEERS6, node_netns_cookie},
    service::{lookup_service, lookup_service6},
    vip::{lookup_vip, lookup_vip6},
};

/// What a cgroup sock_addr program returns to let the call go on (0 refuses it).
pub const PROCEED: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Where a balanced socket call goes (`A`: an IPv4 or IPv6 address, as its bytes).
pub enum Pick<A> {
    /// Not a VIP's service of this namespace: the call goes on untouched.
    Leave,
    /// A VIP's service without a healthy backend.
    Refuse,
    /// The backend's address and port (network byte order).
    Backend(A, [u8; 2]),
}

/// What the four calls need of an address family: where the call's address is in the context, how a VIP's
/// service picks a backend, and the family's `SOCKET_PEERS` map.
pub trait Family {
    /// An address as its bytes in network order.
    type Address: Copy;

    /// The call's protocol (TCP or UDP), address and port (network byte order: their bytes in memory are the
    /// address and port as on the wire), if it is TCP or UDP of this family.
    fn destination(addr: *mut bpf_sock_addr) -> Option<(u8, Self::Address, [u8; 2])>;

    /// The backend for a call to `vip_address:vip_port` over `protocol` made in the node's namespace, recorded in
    /// the family's `SOCKET_PEERS` under the socket's cookie and the backend (what `getpeername` and `recvmsg`
    /// answer from).
    fn balance(
        addr: *mut bpf_sock_addr,
        protocol: u8,
        vip_address: Self::Address,
        vip_port: [u8; 2],
    ) -> Pick<Self::Address>;

    /// The VIP and port recorded for this socket and the backend `ip:port`, if any.
    fn recorded(cookie: u64, protocol: u8, ip: Self::Address, port: [u8; 2]) -> Option<(Self::Address, [u8; 2])>;

    /// Writes `address:port` as the call's address.
    fn set_peer(addr: *mut bpf_sock_addr, address: Self::Address, port: [u8; 2]);
}

/// IPv4 sockets and VIPs (`user_ip4`, `SOCKET_PEERS`; a backend's address is in its `BACKENDS` slot).
pub struct V4;
/// IPv6 sockets and VIPs (`user_ip6`, `SOCKET_PEERS6`; a backend's address is in `BACKEND_ADDRESSES6`).
pub struct V6;

/// A `connect()` (TCP or UDP) to one of the node's VIPs on a service port of that protocol: sent to a backend
/// instead. A service without a healthy backend refuses the connect (ECONNREFUSED), as a client would want to
/// fail fast.
#[inline(always)]
pub fn connect<F: Family>(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some((protocol, ip, port)) = F::destination(addr) else {
        return PROCEED;
    };
    to_backend::<F>(addr, protocol, ip, port)
}

/// A datagram sent with a destination (`sendto()`, `sendmsg()` with a name: an unconnected UDP socket) to a UDP
/// service of one of the node's VIPs: its destination becomes a backend, picked as `connect` picks (by the
/// socket's cookie, so a socket's datagrams keep going to one backend while the service's table stays), and the
/// backend is remembered for `recvmsg` to turn its replies' source back into the VIP. A service without a healthy
/// backend refuses the send (ECONNREFUSED).
#[inline(always)]
pub fn sendmsg<F: Family>(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some((protocol, ip, port)) = F::destination(addr) else {
        return PROCEED;
    };
    if protocol != PROTO_UDP {
        return PROCEED;
    }
    to_backend::<F>(addr, protocol, ip, port)
}

/// A datagram received with its source asked for (`recvfrom()`, `recvmsg()` with a name) from a backend this
/// socket's datagrams to a VIP were sent to (keyed by the socket's cookie and the backend): the source becomes
/// that VIP and port, so the application sees the address it sent to. Anything else is left alone. The kernel
/// lets this hook refuse nothing: it always proceeds.
#[inline(always)]
pub fn recvmsg<F: Family>(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some((protocol, ip, port)) = F::destination(addr) else {
        return PROCEED;
    };
    if protocol != PROTO_UDP {
        return PROCEED;
    }
    // SAFETY: plain helper call on the program's context.
    if !socket_lb_applies(unsafe { bpf_get_netns_cookie(addr.cast()) }, node_netns_cookie()) {
        return PROCEED;
    }
    reverse::<F>(addr, protocol, ip, port);
    PROCEED
}

/// `getpeername()` of a socket `connect` sent to a backend: the VIP and port it asked for.
#[inline(always)]
pub fn getpeername<F: Family>(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some((protocol, ip, port)) = F::destination(addr) else {
        return PROCEED;
    };
    reverse::<F>(addr, protocol, ip, port);
    PROCEED
}

/// A call to `ip:port` over `protocol` goes to the backend [`Family::balance`] picks, is refused, or goes on
/// untouched.
#[inline(always)]
fn to_backend<F: Family>(addr: *mut bpf_sock_addr, protocol: u8, ip: F::Address, port: [u8; 2]) -> i32 {
    match F::balance(addr, protocol, ip, port) {
        Pick::Leave => PROCEED,
        Pick::Refuse => refuse(),
        Pick::Backend(backend, backend_port) => {
            F::set_peer(addr, backend, backend_port);
            PROCEED
        }
    }
}

/// A backend this socket was sent to becomes the VIP and port the socket asked for again.
#[inline(always)]
fn reverse<F: Family>(addr: *mut bpf_sock_addr, protocol: u8, ip: F::Address, port: [u8; 2]) {
    // SAFETY: plain helper call on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    if let Some((vip, vip_port)) = F::recorded(cookie, protocol, ip, port) {
        F::set_peer(addr, vip, vip_port);
    }
}

/// Whether the call was made in the node's network namespace, and the socket's cookie.
#[inline(always)]
fn node_socket(addr: *mut bpf_sock_addr) -> Option<u64> {
    // SAFETY: plain helper calls on the program's context.
    unsafe {
        socket_lb_applies(bpf_get_netns_cookie(addr.cast()), node_netns_cookie())
            .then(|| bpf_get_socket_cookie(addr.cast()))
    }
}

/// The call's family, protocol and port as the context holds them (4-byte loads, readable in every attach point
/// of both families), with the protocol as TCP or UDP only.
#[inline(always)]
fn call(addr: *mut bpf_sock_addr) -> Option<(u32, u8, [u8; 2])> {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (family, protocol, port) = unsafe {
        (
            core::ptr::read_volatile(&(*addr).user_family),
            core::ptr::read_volatile(&(*addr).protocol),
            core::ptr::read_volatile(&(*addr).user_port),
        )
    };
    let protocol = if protocol == u32::from(PROTO_TCP) {
        PROTO_TCP
    } else if protocol == u32::from(PROTO_UDP) {
        PROTO_UDP
    } else {
        return None;
    };
    Some((family, protocol, (port as u16).to_ne_bytes()))
}

impl Family for V4 {
    type Address = [u8; 4];

    #[inline(always)]
    fn destination(addr: *mut bpf_sock_addr) -> Option<(u8, [u8; 4], [u8; 2])> {
        let (family, protocol, port) = call(addr)?;
        if family != AF_INET {
            return None;
        }
        // SAFETY: readable in each IPv4 attach point (connect4, sendmsg4, recvmsg4, getpeername4).
        let ip = unsafe { core::ptr::read_volatile(&(*addr).user_ip4) };
        Some((protocol, ip.to_ne_bytes(), port))
    }

    #[inline(always)]
    fn balance(addr: *mut bpf_sock_addr, protocol: u8, vip_address: [u8; 4], vip_port: [u8; 2]) -> Pick<[u8; 4]> {
        let Some(vip) = lookup_vip(vip_address) else {
            return Pick::Leave;
        };
        let Some(cookie) = node_socket(addr) else {
            return Pick::Leave;
        };
        let Some(svc) = lookup_service(&ServiceKey::new(vip_address, vip_port, protocol)) else {
            return Pick::Leave;
        };
        let Some(id) = pick(&svc, socket_hash(cookie, vip.value.hash_seed)) else {
            return Pick::Refuse;
        };
        let Some(backend) = BACKENDS.get(id) else {
            return Pick::Refuse;
        };
        if backend.healthy != 1 || backend.address == [0; 4] {
            return Pick::Refuse;
        }
        let (backend_address, backend_port) = (backend.address, backend.port);
        let key = SocketPeerKey::new(cookie, backend_address, backend_port, protocol);
        let peer = SocketPeer { vip: vip_address, port: vip_port, _pad: [0; 2] };
        // SAFETY: copied out at once. An unconnected socket sends many datagrams: the entry is written only when
        // it is missing or names another VIP, not once per datagram.
        let known = unsafe { SOCKET_PEERS.get(&key) }.copied();
        if known.is_none_or(|k| k.vip != peer.vip || k.port != peer.port) {
            let _ = SOCKET_PEERS.insert(&key, &peer, 0);
        }
        Pick::Backend(backend_address, backend_port)
    }

    #[inline(always)]
    fn recorded(cookie: u64, protocol: u8, ip: [u8; 4], port: [u8; 2]) -> Option<([u8; 4], [u8; 2])> {
        // SAFETY: copied out at once.
        let peer = unsafe { SOCKET_PEERS.get(&SocketPeerKey::new(cookie, ip, port, protocol)) }.copied()?;
        Some((peer.vip, peer.port))
    }

    #[inline(always)]
    fn set_peer(addr: *mut bpf_sock_addr, address: [u8; 4], port: [u8; 2]) {
        // SAFETY: user_ip4 and user_port are writable in connect4, sendmsg4, recvmsg4 and getpeername4 (4-byte
        // stores).
        unsafe {
            core::ptr::write_volatile(&mut (*addr).user_ip4, u32::from_ne_bytes(address));
            core::ptr::write_volatile(&mut (*addr).user_port, u32::from(u16::from_ne_bytes(port)));
        }
    }
}

impl Family for V6 {
    type Address = [u8; 16];

    #[inline(always)]
    fn destination(addr: *mut bpf_sock_addr) -> Option<(u8, [u8; 16], [u8; 2])> {
        let (family, protocol, port) = call(addr)?;
        if family != AF_INET6 {
            return None;
        }
        let mut ip = [0u8; 16];
        for i in 0..4 {
            // SAFETY: readable (4-byte loads) in each IPv6 attach point (connect6, sendmsg6, recvmsg6,
            // getpeername6).
            let word = unsafe { core::ptr::read_volatile(&(*addr).user_ip6[i]) };
            ip[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        Some((protocol, ip, port))
    }

    #[inline(always)]
    fn balance(addr: *mut bpf_sock_addr, protocol: u8, vip_address: [u8; 16], vip_port: [u8; 2]) -> Pick<[u8; 16]> {
        if let Some(v4) = ipv4_mapped(&vip_address) {
            return match V4::balance(addr, protocol, v4, vip_port) {
                Pick::Leave => Pick::Leave,
                Pick::Refuse => Pick::Refuse,
                Pick::Backend(backend, port) => Pick::Backend(to_ipv4_mapped(backend), port),
            };
        }
        let vip_halves = ipv6_halves(&vip_address);
        let Some(vip) = lookup_vip6(vip_halves) else {
            return Pick::Leave;
        };
        let Some(cookie) = node_socket(addr) else {
            return Pick::Leave;
        };
        let Some(svc) = lookup_service6(vip_halves, vip_port, protocol) else {
            return Pick::Leave;
        };
        let Some(id) = pick(&svc, socket_hash(cookie, vip.hash_seed)) else {
            return Pick::Refuse;
        };
        let (Some(backend), Some(address)) = (BACKENDS.get(id), BACKEND_ADDRESSES6.get(id)) else {
            return Pick::Refuse;
        };
        if backend.healthy != 1 || *address == [0; 16] {
            return Pick::Refuse;
        }
        let (backend_address, backend_port) = (*address, backend.port);
        let key = SocketPeerKey6::new(cookie, backend_address, backend_port, protocol);
        let peer = SocketPeer6 { vip: vip_address, port: vip_port, _pad: [0; 6] };
        // SAFETY: copied out at once; written only when missing or naming another VIP (as for IPv4).
        let known = unsafe { SOCKET_PEERS6.get(&key) }.copied();
        if known.is_none_or(|k| k.vip != peer.vip || k.port != peer.port) {
            let _ = SOCKET_PEERS6.insert(&key, &peer, 0);
        }
        Pick::Backend(backend_address, backend_port)
    }

    #[inline(always)]
    fn recorded(cookie: u64, protocol: u8, ip: [u8; 16], port: [u8; 2]) -> Option<([u8; 16], [u8; 2])> {
        if let Some(v4) = ipv4_mapped(&ip) {
            let (vip, vip_port) = V4::recorded(cookie, protocol, v4, port)?;
            return Some((to_ipv4_mapped(vip), vip_port));
        }
        // SAFETY: copied out at once.
        let peer = unsafe { SOCKET_PEERS6.get(&SocketPeerKey6::new(cookie, ip, port, protocol)) }.copied()?;
        Some((peer.vip, peer.port))
    }

    #[inline(always)]
    fn set_peer(addr: *mut bpf_sock_addr, address: [u8; 16], port: [u8; 2]) {
        // SAFETY: user_ip6 (4-byte stores) and user_port are writable in connect6, sendmsg6, recvmsg6 and
        // getpeername6.
        unsafe {
            for i in 0..4 {
                let word = [address[4 * i], address[4 * i + 1], address[4 * i + 2], address[4 * i + 3]];
                core::ptr::write_volatile(&mut (*addr).user_ip6[i], u32::from_ne_bytes(word));
            }
            core::ptr::write_volatile(&mut (*addr).user_port, u32::from(u16::from_ne_bytes(port)));
        }
    }
}

/// The IPv4 address in an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), if it is one.
#[inline(always)]
fn ipv4_mapped(address: &[u8; 16]) -> Option<[u8; 4]> {
    let [prefix @ .., a, b, c, d] = *address;
    (prefix == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).then_some([a, b, c, d])
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn to_ipv4_mapped([a, b, c, d]: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// The backend slot for a socket whose hash is `hash` calling `svc`; `None`: the service has no backend to take it.
/// The service's backend on this node, if it is in no Maglev table yet (its MAC not known), takes its share first;
/// the rest go by the Maglev table. The share is decided by other bits of the hash than the Maglev slot.
#[inline(always)]
fn pick(svc: &ServiceValue, hash: u32) -> Option<u32> {
    let local = SOCKET_LOCAL.get(svc.index).copied().unwrap_or_default();
    if local.picks(hash.rotate_left(16)) {
        return Some(local.backend);
    }
    match maglev_pick(svc, hash) {
        Some(id) if id != NO_BACKEND => Some(id),
        _ if local.backend != NO_BACKEND => Some(local.backend),
        _ => None,
    }
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain helper call; the error the refused connect() or sendmsg() returns instead of EPERM.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}
