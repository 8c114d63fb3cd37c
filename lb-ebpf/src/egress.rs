//! The egress program (TC, attached with tcx to every interface the XDP program serves): what a backend on this
//! node needs, since the XDP program only sees frames received from the wire.
//!
//! - **Replies of a local NAT backend.** The XDP program hands a local backend's frames to the node's stack
//!   translated exactly as for a remote one (`VIP:nport -> backend:bport`), so the backend answers
//!   `backend:bport -> VIP:nport` from this node. That reply is translated back here, as the XDP program translates
//!   a remote backend's (`nat_state::reply_seen` keeps the same TCP state, the route comes from the FIB the same way):
//!   `VIP:svc -> client:cport`, out towards the client's next hop. An IPv6 backend's reply alike (`nat6_reply`:
//!   the `NAT6` entry, the IPv6 FIB; IPv6 has no header checksum, and the pseudo-header's change is one
//!   difference, the VIP's terms cancelling).
//! - **The node's own ARP requests for an active VIP.** The reply above is routed to the VIP on-link, so the
//!   kernel asks for the VIP's MAC first, and nobody answers it (this node's XDP program answers only frames from
//!   the wire). While the VIP's router is active here, the request is turned into the answer (the VIP's MAC, which
//!   is this interface's) and handed back into the node (`bpf_redirect` to ingress). It makes an ordinary dynamic
//!   neighbour entry: the gratuitous ARPs of a peer that takes over replace it, and a dead agent leaves nothing
//!   that answers for the VIP.
//!
//! - **The node's own Neighbor Solicitations for an active IPv6 VIP**, for the same reason: one from a unicast
//!   address, hop limit 255, with a source link-layer address option (86 bytes, as the kernel sends them), whose
//!   target is an IPv6 VIP answered on this interface, becomes the Neighbor Advertisement the XDP program would
//!   send (`icmp6::write_advertisement`), handed back into the node.
//!
//! Everything else (and everything while the VIP's router is not active here) leaves untouched and uncounted. The
//! packet's bytes are changed only through the skb helpers, which keep a checksum the NIC or the stack completes
//! later (`CHECKSUM_PARTIAL`, normal for locally generated TCP) correct; they invalidate packet pointers, so every
//! header field is read before the first one.
use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::{PROTO_TCP, PROTO_UDP, Reason, ipv6_from_halves, nat_source_port_bit};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    csum::Delta,
    icmp6::{self, ADVERTISEMENT_LEN, ND_HOP_LIMIT, NEIGHBOR_SOLICITATION, OPTION_SOURCE_LL, SOLICITATION_LEN},
    maps::{Clock, NAT_SOURCE_PORTS},
    nat::{self, TCP_CHECK_OFF, UDP_CHECK_OFF},
    nat_state::{self, NatState},
    nat6, packet,
    parse::{self, ETH_LEN, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IP6_LEN, IPPROTO_ICMPV6, L4, L4_OFF, L4_OFF6},
    route::{self, NoRoute, Route},
    vip::{lookup_vip, lookup_vip6, may_answer},
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Offsets in the frame of the IPv4 header checksum and addresses.
const IP_CHECK_OFF: usize = ETH_LEN + 10;
const IP_SRC_OFF: usize = ETH_LEN + 12;
const IP_DST_OFF: usize = ETH_LEN + 16;
/// Offsets in the frame of the IPv6 addresses.
const IP6_SRC_OFF: usize = ETH_LEN + 8;
const IP6_DST_OFF: usize = ETH_LEN + 24;

/// What to do with a frame leaving the node, and the reason and router to count it under (none: untouched).
#[inline(always)]
pub fn process(ctx: &TcContext) -> (i32, Option<(Reason, u32)>) {
    // The headers the program reads must be in the linear part of the skb (they are for locally generated
    // packets; pulling is a no-op then).
    let wanted = (L4_OFF + TcpHdr::LEN).min(ctx.len() as usize);
    if packet::len(ctx) < wanted && ctx.pull_data(wanted as u32).is_err() {
        return (TC_ACT_OK as i32, None);
    }
    let Some(eth) = packet::at::<EthHdr>(ctx, 0) else {
        return (TC_ACT_OK as i32, None);
    };
    // SAFETY: bounds-checked by `at`.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*(ctx.skb.skb as *const __sk_buff)).ifindex };
    let clock = Clock::new();
    match ether_type {
        ETH_P_ARP => arp(ctx, eth, ifindex, &clock),
        ETH_P_IPV4 => ipv4(ctx, ifindex, &clock),
        ETH_P_IPV6 => ipv6(ctx, ifindex, &clock),
        _ => (TC_ACT_OK as i32, None),
    }
}

/// The node's ARP request for one of its active VIPs becomes the answer, redirected back into the node.
#[inline(always)]
fn arp(ctx: &TcContext, eth: *mut EthHdr, ifindex: u32, clock: &Clock) -> (i32, Option<(Reason, u32)>) {
    let Some(arp) = packet::at::<ArpHdr>(ctx, ETH_LEN) else {
        return (TC_ACT_OK as i32, None);
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
            return (TC_ACT_OK as i32, None);
        }
        let Some(vip) = lookup_vip(a.tpa) else {
            return (TC_ACT_OK as i32, None);
        };
        let router = vip.value.router;
        // Answered on the VIP's own interface only, as the XDP program answers, and only while active: a backup's
        // request goes out to the wire, where the active node answers it.
        let on_its_interface = vip.value.ifindex == 0 || vip.value.ifindex == ifindex;
        // A request from the VIP itself would be an announcement, not a question.
        if !on_its_interface || a.spa == vip.address || a.sha[0] & 1 != 0 || !may_answer(router, clock) {
            return (TC_ACT_OK as i32, None);
        }
        let (asker_mac, asker_ip) = (a.sha, a.spa);
        let mac = if vip.value.mac == [0; 6] { asker_mac } else { vip.value.mac };
        a.oper = ARP_REPLY.to_be_bytes();
        a.tha = asker_mac;
        a.tpa = asker_ip;
        a.sha = mac;
        a.spa = vip.address;
        (*eth).dst_addr = asker_mac;
        (*eth).src_addr = mac;
        // SAFETY: plain helper call.
        let action = bpf_redirect(ifindex, u64::from(BPF_F_INGRESS)) as i32;
        if action == TC_ACT_REDIRECT as i32 {
            (action, Some((Reason::ArpReplyLocal, router)))
        } else {
            (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)))
        }
    }
}

/// The node's Neighbor Solicitation for one of its active IPv6 VIPs becomes the advertisement, redirected back into
/// the node (see the module's doc).
#[inline(always)]
fn neighbor_solicitation(ctx: &TcContext, ifindex: u32, clock: &Clock) -> (i32, Option<(Reason, u32)>) {
    let untouched = (TC_ACT_OK as i32, None);
    if ctx.len() as usize != ADVERTISEMENT_LEN
        || (packet::len(ctx) < ADVERTISEMENT_LEN && ctx.pull_data(ADVERTISEMENT_LEN as u32).is_err())
    {
        return untouched;
    }
    let (Some(ip), Some(ns)) = (packet::at::<Ipv6Hdr>(ctx, ETH_LEN), packet::at::<[u8; 32]>(ctx, L4_OFF6)) else {
        return untouched;
    };
    // SAFETY: bounds-checked by `at`.
    let (ip, ns) = unsafe { (&*ip, &*ns) };
    // One 8-byte option after the 24-byte message: the source link-layer address.
    let solicitation = ip.vcf[0] >> 4 == 6
        && ip.next_hdr == IPPROTO_ICMPV6
        && ip.hop_limit == ND_HOP_LIMIT
        && u16::from_be_bytes(ip.payload_len) as usize == ADVERTISEMENT_LEN - L4_OFF6
        && ns[0] == NEIGHBOR_SOLICITATION
        && ns[1] == 0
        && ns[SOLICITATION_LEN] == OPTION_SOURCE_LL
        && ns[SOLICITATION_LEN + 1] == 1;
    // From an address: the node's own duplicate address detection is not a question to answer.
    if !solicitation || packet::halves(&ip.src_addr) == (0, 0) {
        return untouched;
    }
    let target = (ns[8..].as_ptr() as *const [u8; 16]).cast::<[u8; 16]>();
    // SAFETY: bytes 8..24 of the bounds-checked message.
    let Some(vip) = lookup_vip6(packet::halves(unsafe { &*target })) else {
        return untouched;
    };
    let router = vip.router;
    if (vip.ifindex != 0 && vip.ifindex != ifindex) || !may_answer(router, clock) {
        return untouched;
    }
    if !icmp6::write_advertisement(ctx, vip, false) {
        return (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)));
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(ifindex, u64::from(BPF_F_INGRESS)) } as i32;
    if action == TC_ACT_REDIRECT as i32 {
        (action, Some((Reason::NaReplyLocal, router)))
    } else {
        (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)))
    }
}

/// A reply of a NAT backend on this node to an active VIP, translated back to the client; anything else untouched.
#[inline(always)]
fn ipv4(ctx: &TcContext, ifindex: u32, clock: &Clock) -> (i32, Option<(Reason, u32)>) {
    let untouched = (TC_ACT_OK as i32, None);
    let Some(ip) = packet::at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return untouched;
    };
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &*ip };
    let protocol = ip.proto as u8;
    if ip.vihl != 0x45 || u16::from_be_bytes(ip.frags) & 0x3fff != 0 || (protocol != PROTO_TCP && protocol != PROTO_UDP)
    {
        return untouched;
    }
    let Some(vip) = lookup_vip(ip.dst_addr) else {
        return untouched;
    };
    if !may_answer(vip.value.router, clock) {
        return untouched;
    }
    // The IP length, not the linear part's: a large (GSO) packet's payload may sit in fragments.
    let total = u16::from_be_bytes(ip.tot_len) as usize;
    let Ok(l4) = parse::l4(ctx, protocol, total) else {
        return untouched;
    };
    let Some((word, bit)) = nat_source_port_bit(protocol, u16::from_be_bytes(l4.sport)) else {
        return untouched;
    };
    if !NAT_SOURCE_PORTS.get(word).is_some_and(|w| *w & (1u64 << bit) != 0) {
        return untouched;
    }
    let Some(entry) = nat::reverse_entry(ip.src_addr, ip.dst_addr, &l4) else {
        return untouched;
    };
    let router = vip.value.router;
    // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
    let entry = unsafe { &mut *entry };
    let now = clock.now();
    if let Err(reason) = nat_state::reply_seen(entry, &l4, now) {
        return (TC_ACT_SHOT as i32, Some((reason, router)));
    }
    let (backend, client, client_port, service_port) =
        (ip.src_addr, entry.client, entry.client_port, entry.service_port);
    let route = match nat_state::cached_route(entry, now) {
        Some(route) => Ok(route),
        None => {
            let found = route::lookup_from(ctx.skb.skb as *mut _, ifindex, vip.address, client, protocol, total as u16);
            if let Ok(r) = &found {
                entry.set_route(r, now);
            }
            found
        }
    };
    let translation = Translation {
        protocol,
        from: (backend, vip.address, l4),
        to: (vip.address, client, service_port, client_port),
    };
    send_reply(ctx, ifindex, route, router, |ctx| translate(ctx, &translation))
}

/// IPv6 leaving the node: its Neighbor Solicitation for an active IPv6 VIP, or a reply of an IPv6 NAT backend on
/// this node (see the module's doc); anything else untouched.
#[inline(always)]
fn ipv6(ctx: &TcContext, ifindex: u32, clock: &Clock) -> (i32, Option<(Reason, u32)>) {
    // The fixed header is in the linear part (`process` pulled enough for it).
    let Some(ip) = packet::at::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return (TC_ACT_OK as i32, None);
    };
    // SAFETY: bounds-checked by `at`.
    let next = unsafe { (*ip).next_hdr };
    if next == IPPROTO_ICMPV6 {
        neighbor_solicitation(ctx, ifindex, clock)
    } else if next == PROTO_TCP || next == PROTO_UDP {
        nat6_reply(ctx, ifindex, clock)
    } else {
        (TC_ACT_OK as i32, None)
    }
}

/// A reply of an IPv6 NAT backend on this node to an active IPv6 VIP, `[backend]:bport -> [VIP]:nport`, translated
/// back to the client as `ipv4` translates an IPv4 one (and as the XDP program, `nat6::reply`, a remote backend's).
#[inline(always)]
fn nat6_reply(ctx: &TcContext, ifindex: u32, clock: &Clock) -> (i32, Option<(Reason, u32)>) {
    let untouched = (TC_ACT_OK as i32, None);
    let wanted = (L4_OFF6 + TcpHdr::LEN).min(ctx.len() as usize);
    if packet::len(ctx) < wanted && ctx.pull_data(wanted as u32).is_err() {
        return untouched;
    }
    let Some(ip) = packet::at::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return untouched;
    };
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &*ip };
    let protocol = ip.next_hdr;
    // Extension headers are not walked (the XDP program does not either): the transport header follows directly.
    if ip.vcf[0] >> 4 != 6 || (protocol != PROTO_TCP && protocol != PROTO_UDP) {
        return untouched;
    }
    let (backend, vip_address) = (packet::halves(&ip.src_addr), packet::halves(&ip.dst_addr));
    let Some(vip) = lookup_vip6(vip_address) else {
        return untouched;
    };
    let router = vip.router;
    if !may_answer(router, clock) {
        return untouched;
    }
    let payload = usize::from(u16::from_be_bytes(ip.payload_len));
    let Ok(l4) = parse::l4_at(ctx, protocol, L4_OFF6, payload) else {
        return untouched;
    };
    let Some((word, bit)) = nat_source_port_bit(protocol, u16::from_be_bytes(l4.sport)) else {
        return untouched;
    };
    if !NAT_SOURCE_PORTS.get(word).is_some_and(|w| *w & (1u64 << bit) != 0) {
        return untouched;
    }
    let Some(entry) = nat6::reverse_entry(ip, &l4) else {
        return untouched;
    };
    // SAFETY: a valid map value; concurrent writers on other CPUs only store whole fields.
    let entry = unsafe { &mut *entry };
    let now = clock.now();
    if let Err(reason) = nat_state::reply_seen(entry, &l4, now) {
        return (TC_ACT_SHOT as i32, Some((reason, router)));
    }
    let (client, client_port, service_port) = (packet::halves(&entry.client), entry.client_port, entry.service_port);
    let route = match nat_state::cached_route(entry, now) {
        Some(route) => Ok(route),
        None => {
            let length = (IP6_LEN as u16).saturating_add(payload as u16);
            let found = route::lookup6_from(ctx.skb.skb as *mut _, ifindex, vip_address, client, protocol, length);
            if let Ok(r) = &found {
                entry.set_route(r, now);
            }
            found
        }
    };
    let translation =
        Translation6 { protocol, from: (backend, vip_address, l4), to: (client, service_port, client_port) };
    send_reply(ctx, ifindex, route, router, |ctx| translate6(ctx, &translation))
}

/// Sends a local NAT backend's reply on towards the client: `translate` rewrites it (`false`: a helper failed, and
/// half a rewrite must not leave), then it goes to the route's next hop, or through the kernel's own next-hop
/// resolution when the neighbour is not known yet.
#[inline(always)]
fn send_reply(
    ctx: &TcContext,
    ifindex: u32,
    route: Result<Route, NoRoute>,
    router: u32,
    translate: impl FnOnce(&TcContext) -> bool,
) -> (i32, Option<(Reason, u32)>) {
    match route {
        Ok(route) => {
            if !translate(ctx) || !set_macs(ctx, &route) {
                return (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)));
            }
            if route.ifindex == ifindex {
                return (TC_ACT_OK as i32, Some((Reason::NatReplyLocal, router)));
            }
            // SAFETY: plain helper call.
            let action = unsafe { bpf_redirect(route.ifindex, 0) } as i32;
            if action == TC_ACT_REDIRECT as i32 {
                (action, Some((Reason::NatReplyLocal, router)))
            } else {
                (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)))
            }
        }
        Err(NoRoute::Neighbour) => {
            // The kernel resolves the next hop (a FIB lookup and ARP or Neighbor Discovery of its own) and sends
            // the packet on; the next reply finds the neighbour.
            if !translate(ctx) {
                return (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)));
            }
            // SAFETY: no parameters: the kernel looks the next hop up itself.
            let action = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32;
            if action == TC_ACT_REDIRECT as i32 {
                (action, Some((Reason::PassNoNeighbour, router)))
            } else {
                (TC_ACT_SHOT as i32, Some((Reason::DropInternal, router)))
            }
        }
        Err(no) => (TC_ACT_SHOT as i32, Some((no.reason(), router))),
    }
}

/// A rewrite of a TCP/UDP packet's addresses and ports: `from` (source, destination, the ports in `L4`) to `to`
/// (source, destination, source port, destination port).
struct Translation {
    protocol: u8,
    from: ([u8; 4], [u8; 4], L4),
    to: ([u8; 4], [u8; 4], [u8; 2], [u8; 2]),
}

/// Applies `t` with the skb helpers: checksums first (addresses through the pseudo-header), then the fields.
/// `false` if a helper failed (the packet is then dropped: half a rewrite must not leave).
#[inline(always)]
fn translate(ctx: &TcContext, t: &Translation) -> bool {
    let (src, dst, l4) = t.from;
    let (new_src, new_dst, new_sport, new_dport) = t.to;
    let (check_off, mangled) = if t.protocol == PROTO_TCP {
        (L4_OFF + TCP_CHECK_OFF, 0)
    } else {
        // A UDP checksum of 0 ("none") stays 0, a computed 0 is sent as 0xffff.
        (L4_OFF + UDP_CHECK_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let addr = |a: [u8; 4]| u64::from(u32::from_ne_bytes(a));
    let port = |p: [u8; 2]| u64::from(u16::from_ne_bytes(p));
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    ctx.l4_csum_replace(check_off, addr(src), addr(new_src), pseudo | 4).is_ok()
        && ctx.l4_csum_replace(check_off, addr(dst), addr(new_dst), pseudo | 4).is_ok()
        && ctx.l4_csum_replace(check_off, port(l4.sport), port(new_sport), mangled | 2).is_ok()
        && ctx.l4_csum_replace(check_off, port(l4.dport), port(new_dport), mangled | 2).is_ok()
        && ctx.l3_csum_replace(IP_CHECK_OFF, addr(src), addr(new_src), 4).is_ok()
        && ctx.l3_csum_replace(IP_CHECK_OFF, addr(dst), addr(new_dst), 4).is_ok()
        && ctx.store(IP_SRC_OFF, &new_src, 0).is_ok()
        && ctx.store(IP_DST_OFF, &new_dst, 0).is_ok()
        && ctx.store(L4_OFF, &[new_sport[0], new_sport[1], new_dport[0], new_dport[1]], 0).is_ok()
}

/// An IPv6 reply's rewrite: `from` (backend, VIP, the ports in `L4`) to `[VIP]:svc -> [client]:cport`, `to` being
/// (client, source port, destination port); addresses as [`lb_common::ipv6_halves`].
struct Translation6 {
    protocol: u8,
    from: ((u64, u64), (u64, u64), L4),
    to: ((u64, u64), [u8; 2], [u8; 2]),
}

/// Applies `t` with the skb helpers, as [`translate`]. IPv6 has no header checksum. The VIP moves from destination
/// to source, so its terms cancel out of the pseudo-header's change, which is then the backend's address leaving
/// and the client's coming in: one difference (`bpf_l4_csum_replace` of size 0) rather than eight word changes.
#[inline(always)]
fn translate6(ctx: &TcContext, t: &Translation6) -> bool {
    let (backend, vip, l4) = t.from;
    let (client, sport, dport) = t.to;
    let (check_off, mangled) = if t.protocol == PROTO_TCP {
        (L4_OFF6 + TCP_CHECK_OFF, 0)
    } else {
        (L4_OFF6 + UDP_CHECK_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let port = |p: [u8; 2]| u64::from(u16::from_ne_bytes(p));
    let addresses = u64::from(Delta::new().addr6(backend, client).wsum());
    let (vip, client) = (ipv6_from_halves(vip), ipv6_from_halves(client));
    ctx.l4_csum_replace(check_off, 0, addresses, u64::from(BPF_F_PSEUDO_HDR) | mangled).is_ok()
        && ctx.l4_csum_replace(check_off, port(l4.sport), port(sport), mangled | 2).is_ok()
        && ctx.l4_csum_replace(check_off, port(l4.dport), port(dport), mangled | 2).is_ok()
        && ctx.store(IP6_SRC_OFF, &vip, 0).is_ok()
        && ctx.store(IP6_DST_OFF, &client, 0).is_ok()
        && ctx.store(L4_OFF6, &[sport[0], sport[1], dport[0], dport[1]], 0).is_ok()
}

#[inline(always)]
fn set_macs(ctx: &TcContext, route: &Route) -> bool {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&route.next_hop_mac);
    macs[6..].copy_from_slice(&route.egress_mac);
    ctx.store(0, &macs, 0).is_ok()
}
