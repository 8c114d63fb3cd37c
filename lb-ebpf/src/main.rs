//! xvip's XDP program: answers ARP and ping for the VIP while this node is the active VRRP router, and sends
//! traffic for the configured services to a backend chosen by Maglev, pinned per flow.
//!
//! Services are forwarded by DSR (only the MACs change) or by NAT (`nat.rs`: the VIP becomes the source, replies
//! come back through this program and are translated back).
//!
//! It reads its whole world from maps written by the agent (see `maps.rs` and `lb_common`). Each frame ends in
//! exactly one `Reason`, counted per CPU, so the agent can tell users what happened to every frame.
#![no_std]
#![no_main]

mod csum;
mod maps;
mod nat;
mod packet;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Backend, Endpoint, FORWARD_NAT, FlowKey, FlowValue, MAGLEV_CHUNK, MAGLEV_M, NO_BACKEND, NodeConfig, PROTO_TCP,
    PROTO_UDP, Reason, ServiceValue, Traffic, flow_hash, maglev_position, service_slot,
};
use maps::{
    BACKEND_STATS, BACKENDS, CONFIG, CONNTRACK, COUNTERS, HEARTBEAT, MAGLEV, NAT_BACKENDS, SERVICE_STATS, SERVICES,
};
use network_types::{arp::ArpHdr, eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

const ETH_LEN: usize = EthHdr::LEN;
const IP_LEN: usize = Ipv4Hdr::LEN;
const L4_OFF: usize = ETH_LEN + IP_LEN;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_IPV6: u16 = 0x86dd;

const IPPROTO_ICMP: u8 = 1;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
/// Byte 13 of the TCP header holds the flags (CWR ECE URG ACK PSH RST SYN FIN).
const TCP_FLAGS_OFF: usize = 13;

#[xdp]
pub fn xvip_xdp(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    count(reason);
    action
}

/// A do-nothing program for the receiving end of veth pairs: veth only delivers XDP_TX/XDP_REDIRECT frames to a
/// peer that runs an XDP program. Also the baseline of `cargo xtask bench xdp`.
#[xdp]
pub fn xvip_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let Some(eth) = packet::at::<EthHdr>(ctx, 0) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    // SAFETY: `at` checked that the header lies inside the frame.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let Some(config) = CONFIG.get(0) else {
        return (XDP_PASS, Reason::DropInternal);
    };
    match ether_type {
        ETH_P_ARP => arp(ctx, eth, config),
        ETH_P_IPV4 => ipv4(ctx, eth, config),
        ETH_P_8021Q | ETH_P_8021AD => (XDP_PASS, Reason::PassVlan),
        ETH_P_IPV6 => (XDP_PASS, Reason::PassNotIpv4),
        _ => (XDP_PASS, Reason::PassNotIpv4),
    }
}

/// Whether this node may answer for the VIP: it is the active router *and* its agent is alive, i.e. the heartbeat
/// the agent writes with every advert is younger than its limit (a dead-man switch: an agent that hangs stops
/// advertising, its peers take over after their down interval, and by then this node has stopped answering).
#[inline(always)]
fn may_answer(config: &NodeConfig) -> bool {
    if config.active != 1 {
        return false;
    }
    let Some(beat) = HEARTBEAT.get(0) else {
        return false;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    beat.max_age_ns == 0 || now.saturating_sub(beat.last_ns) <= beat.max_age_ns
}

/// Turns an ARP request for the VIP into the reply, in place (RFC 826), while active.
#[inline(always)]
fn arp(ctx: &XdpContext, eth: *mut EthHdr, config: &NodeConfig) -> (u32, Reason) {
    let Some(arp) = packet::at::<ArpHdr>(ctx, ETH_LEN) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    // SAFETY: both headers were bounds-checked by `at`.
    unsafe {
        let a = &mut *arp;
        let is_request_for_vip = a.htype == [0, 1]
            && a.ptype == ETH_P_IPV4.to_be_bytes()
            && a.hlen == 6
            && a.plen == 4
            && a.oper == ARP_REQUEST.to_be_bytes()
            && a.tpa == config.vip
            // A gratuitous ARP (sender = VIP) is another node announcing itself, not a question.
            && a.spa != config.vip
            && may_answer(config);
        if !is_request_for_vip {
            return (XDP_PASS, Reason::PassArp);
        }
        let asker_mac = a.sha;
        let asker_ip = a.spa;
        a.oper = ARP_REPLY.to_be_bytes();
        a.tha = asker_mac;
        a.tpa = asker_ip;
        a.sha = config.mac;
        a.spa = config.vip;
        (*eth).dst_addr = asker_mac;
        (*eth).src_addr = config.mac;
    }
    (XDP_TX, Reason::ArpReply)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: *mut EthHdr, config: &NodeConfig) -> (u32, Reason) {
    let Some(ip) = packet::at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    // SAFETY: bounds-checked by `at`.
    let ip = unsafe { &mut *ip };
    if ip.dst_addr != config.vip {
        return (XDP_PASS, Reason::PassNotVip);
    }
    if !may_answer(config) {
        return (XDP_PASS, Reason::PassInactive);
    }
    // Only plain 20-byte IPv4 headers are handled: the L4 header then sits at a constant offset.
    if ip.vihl != 0x45 {
        return (XDP_DROP, Reason::DropIpOptions);
    }
    let total = u16::from_be_bytes(ip.tot_len) as usize;
    if total < IP_LEN || ETH_LEN + total > packet::len(ctx) {
        return (XDP_PASS, Reason::PassTruncated);
    }
    // More-fragments flag or a fragment offset: there are no ports to hash.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return (XDP_DROP, Reason::DropFragment);
    }
    match ip.proto as u8 {
        IPPROTO_ICMP => icmp(ctx, eth, ip, config, total),
        PROTO_TCP => {
            let Some(tcp) = packet::at::<TcpHdr>(ctx, L4_OFF) else {
                return (XDP_PASS, Reason::PassTruncated);
            };
            if total < IP_LEN + TcpHdr::LEN {
                return (XDP_PASS, Reason::PassTruncated);
            }
            // SAFETY: bounds-checked by `at`.
            let (sport, dport, flags) = unsafe {
                let t = &*tcp;
                (t.source, t.dest, *((tcp as *const u8).add(TCP_FLAGS_OFF)))
            };
            transport(ctx, eth, ip, config, L4 { sport, dport, protocol: PROTO_TCP, flags })
        }
        PROTO_UDP => {
            let Some(udp) = packet::at::<UdpHdr>(ctx, L4_OFF) else {
                return (XDP_PASS, Reason::PassTruncated);
            };
            if total < IP_LEN + UdpHdr::LEN {
                return (XDP_PASS, Reason::PassTruncated);
            }
            // SAFETY: bounds-checked by `at`.
            let (sport, dport) = unsafe { ((*udp).src, (*udp).dst) };
            transport(ctx, eth, ip, config, L4 { sport, dport, protocol: PROTO_UDP, flags: 0 })
        }
        _ => (XDP_PASS, Reason::PassNoService),
    }
}

/// The ports and flags of a TCP or UDP packet to the VIP.
#[derive(Clone, Copy)]
pub struct L4 {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub protocol: u8,
    /// TCP flags (byte 13 of the header); 0 for UDP.
    pub flags: u8,
}

impl L4 {
    /// A connection's first packet: SYN without ACK.
    #[inline(always)]
    pub fn syn(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    #[inline(always)]
    pub fn fin(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & TCP_FLAG_FIN != 0
    }

    #[inline(always)]
    pub fn rst(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & TCP_FLAG_RST != 0
    }
}

/// A TCP or UDP packet to the VIP: a NAT backend's reply, or a client's packet to a service.
#[inline(always)]
fn transport(ctx: &XdpContext, eth: *mut EthHdr, ip: &mut Ipv4Hdr, config: &NodeConfig, l4: L4) -> (u32, Reason) {
    // Replies are recognised by their source, a NAT backend's (address, port), before the service lookup: the NAT
    // port they are addressed to may equal a service port, and a reply without a translation (after a failover)
    // must go to the kernel rather than be mistaken for a new client flow.
    let from = Endpoint { address: ip.src_addr, port: l4.sport, protocol: l4.protocol, _pad: 0 };
    // SAFETY: only tested for presence.
    if unsafe { NAT_BACKENDS.get(&from) }.is_some() {
        return nat::reply(ctx, eth, ip, config, &l4);
    }
    service(ctx, eth, ip, config, &l4)
}

/// ICMP to the VIP: echo requests are answered, errors about NAT flows are translated (`nat::icmp_error`).
#[inline(always)]
fn icmp(ctx: &XdpContext, eth: *mut EthHdr, ip: &mut Ipv4Hdr, config: &NodeConfig, total: usize) -> (u32, Reason) {
    let Some(icmp) = packet::at::<Icmpv4Hdr>(ctx, L4_OFF) else {
        return (XDP_PASS, Reason::PassTruncated);
    };
    if total < IP_LEN + Icmpv4Hdr::LEN {
        return (XDP_PASS, Reason::PassTruncated);
    }
    // SAFETY: bounds-checked by `at`.
    let (kind, code) = unsafe { ((*icmp).type_, (*icmp).code) };
    match kind {
        ICMP_ECHO_REQUEST if code == 0 => echo(eth, ip, icmp),
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => nat::icmp_error(ctx, eth, ip, config, total),
        _ => (XDP_PASS, Reason::PassNoService),
    }
}

/// Answers an ICMP echo request to the VIP in place: swap addresses, type 8 -> 0, checksum adjusted.
#[inline(always)]
fn echo(eth: *mut EthHdr, ip: &mut Ipv4Hdr, icmp: *mut Icmpv4Hdr) -> (u32, Reason) {
    // SAFETY: bounds-checked by `at` in `icmp`.
    let icmp = unsafe { &mut *icmp };
    // The type is the high byte of the first 16-bit word; the code (0) stays.
    icmp.check = csum::replace16(icmp.check, u16::from(ICMP_ECHO_REQUEST) << 8, u16::from(ICMP_ECHO_REPLY) << 8);
    icmp.type_ = ICMP_ECHO_REPLY;
    // Swapping source and destination leaves the IP header checksum unchanged.
    core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
    // SAFETY: bounds-checked by `at` in `process`.
    unsafe {
        let e = &mut *eth;
        core::mem::swap(&mut e.src_addr, &mut e.dst_addr);
    }
    (XDP_TX, Reason::EchoReply)
}

/// Sends a packet for a configured service to its backend: DSR here (only the MACs change), NAT in `nat.rs`.
#[inline(always)]
fn service(ctx: &XdpContext, eth: *mut EthHdr, ip: &mut Ipv4Hdr, config: &NodeConfig, l4: &L4) -> (u32, Reason) {
    let Some(slot) = service_slot(l4.protocol, u16::from_be_bytes(l4.dport)) else {
        return (XDP_PASS, Reason::PassNoService);
    };
    let Some(svc) = SERVICES.get(slot) else {
        return (XDP_PASS, Reason::DropInternal);
    };
    let svc: ServiceValue = *svc;
    if svc.present != 1 {
        return (XDP_PASS, Reason::PassNoService);
    }
    if svc.forwarding == FORWARD_NAT {
        return nat::forward(ctx, eth, ip, config, &svc, l4);
    }
    let (client_port, service_port, protocol, syn) = (l4.sport, l4.dport, l4.protocol, l4.syn());
    let flow = FlowKey { client: ip.src_addr, client_port, service_port, protocol, _pad: [0; 3] };

    let mut chosen = NO_BACKEND;
    // A pinned flow keeps its backend while that backend is healthy; a SYN always takes a fresh pick so a
    // reused client port does not inherit an old connection's backend.
    if !syn {
        // SAFETY: read-only use of the value.
        if let Some(pinned) = unsafe { CONNTRACK.get(&flow) } {
            let id = pinned.backend;
            if let Some(b) = BACKENDS.get(id) {
                if b.healthy == 1 && u32::from(b.service) == svc.index {
                    chosen = id;
                }
            }
        }
    }
    if chosen == NO_BACKEND {
        let hash = flow_hash(ip.src_addr, client_port, service_port, protocol, config.hash_seed);
        let Some(id) = maglev_pick(&svc, hash) else {
            return (XDP_DROP, Reason::DropInternal);
        };
        if id == NO_BACKEND {
            return (XDP_DROP, Reason::DropNoBackend);
        }
        chosen = id;
        let _ = CONNTRACK.insert(&flow, &FlowValue { backend: chosen, nat_port: [0; 2], _pad: [0; 2] }, 0);
    }
    let backend = match take_backend(ctx, svc.index, chosen) {
        Ok(b) => b,
        Err(reason) => return (XDP_DROP, reason),
    };
    set_macs(eth, backend.mac, config.mac);
    send(ctx, backend.ifindex, Reason::ForwardTx, Reason::ForwardRedirect)
}

/// The backend a packet of service `service_index` goes to, with the packet counted for both; the drop reason when
/// the backend cannot be used (its MAC is not resolved yet).
#[inline(always)]
pub fn take_backend(ctx: &XdpContext, service_index: u32, id: u32) -> Result<Backend, Reason> {
    let Some(backend) = BACKENDS.get(id) else {
        return Err(Reason::DropInternal);
    };
    let backend: Backend = *backend;
    if backend.mac == [0; 6] {
        return Err(Reason::DropBackendUnresolved);
    }
    let bytes = packet::len(ctx) as u64;
    add_traffic(&SERVICE_STATS, service_index, bytes);
    add_traffic(&BACKEND_STATS, id, bytes);
    Ok(backend)
}

/// The backend in the slot of `hash` in the service's live Maglev table (`NO_BACKEND` when it has none).
#[inline(always)]
pub fn maglev_pick(svc: &ServiceValue, hash: u32) -> Option<u32> {
    let (element, offset) = maglev_position(svc.index, svc.table, hash % MAGLEV_M);
    let chunk = MAGLEV.get(element)?;
    // The mask keeps the index provably inside the chunk for the verifier.
    Some(chunk.slots[(offset & (MAGLEV_CHUNK - 1)) as usize])
}

#[inline(always)]
pub fn set_macs(eth: *mut EthHdr, dst: [u8; 6], src: [u8; 6]) {
    // SAFETY: `eth` was bounds-checked by `at` in `process`.
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
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
pub fn add_traffic(map: &aya_ebpf::maps::PerCpuArray<Traffic>, index: u32, bytes: u64) {
    if let Some(t) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
