//! BPF_PROG_TEST_RUN fixtures for a backend on the xvip node itself (a stacked node), over IPv4 and IPv6: the XDP
//! program hands its frames to the node's own stack (NAT: translated exactly as for a remote backend; DSR:
//! unchanged), and the egress program translates the local backend's NAT replies back and answers the node's own
//! ARP requests (and Neighbor Solicitations) for an active VIP. Exact input and output bytes; the expected frames
//! are built from scratch by `support::frames` (full RFC 1071 checksums). Needs root (loads BPF programs); nothing
//! is sent on any interface.
mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{
    FAMILY_IPV6, FORWARD_DSR, FORWARD_NAT, PROTO_TCP, PROTO_UDP, Reason, flow_hash, flow_hash6, group_seed,
    group_seed6, nat_port, router_slot,
};
use support::fixture::{
    BACKENDS, CLIENT, CLIENT_MAC, NODE_IP, NODE_MAC, ROUTER_MAC, VIP, VRID, XDP_PASS, XDP_TX, assert_delta, lan, run,
};
use support::frames::{self, TCP_ACK, TCP_PSH, TCP_SYN};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec, Vip6Spec};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// NAT services whose one backend is this node (`NODE_IP`, the address of `lan`): TCP 80 -> 8080, UDP 53 -> 5353;
/// a DSR service on TCP 443; and a NAT service on TCP 81 -> 8081 whose one backend is remote.
const HTTP: u16 = 80;
const HTTP_BACKEND: u16 = 8080;
const DNS: u16 = 53;
const DNS_BACKEND: u16 = 5353;
const HTTPS: u16 = 443;
const REMOTE: u16 = 81;
const REMOTE_BACKEND: u16 = 8081;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nbackend";
/// A client behind the fixture's router (198.51.100.0/24 via 10.77.0.254).
const REMOTE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn seed() -> u32 {
    group_seed(VIP.octets(), VRID)
}

fn service(port: u16, protocol: u8, forwarding: u8, backend: (Ipv4Addr, [u8; 6]), backend_port: u16) -> ServiceSpec {
    ServiceSpec {
        addresses: vec![VIP.into()],
        port,
        protocol,
        forwarding,
        backends: vec![BackendSpec {
            address: backend.0.into(),
            port: backend_port,
            weight: 1,
            healthy: true,
            // What the agent reports for a local backend: the MAC of the interface holding its address.
            mac: Some(backend.1),
            ifindex: 0,
        }],
    }
}

fn dataplane() -> DataPlane {
    // The fixture namespace first: the data plane reads the node's own addresses (NODE_IP among them) there.
    lan();
    let mut dp =
        DataPlane::load(LoadOptions { service_capacity: 4, ..LoadOptions::default() }).expect("loading (needs root)");
    dp.set_node(VIP, NODE_MAC, seed()).expect("set_node");
    dp.set_active(true).expect("set_active");
    let local = (NODE_IP, NODE_MAC);
    dp.apply_service("web", &service(HTTP, PROTO_TCP, FORWARD_NAT, local, HTTP_BACKEND)).expect("web");
    dp.apply_service("dns", &service(DNS, PROTO_UDP, FORWARD_NAT, local, DNS_BACKEND)).expect("dns");
    dp.apply_service("tls", &service(HTTPS, PROTO_TCP, FORWARD_DSR, local, HTTPS)).expect("tls");
    dp.apply_service("far", &service(REMOTE, PROTO_TCP, FORWARD_NAT, BACKENDS[0], REMOTE_BACKEND)).expect("far");
    dp
}

fn nport(client: Ipv4Addr, cport: u16, service: u16, protocol: u8) -> u16 {
    let hash = flow_hash(client.octets(), cport.to_be_bytes(), service.to_be_bytes(), protocol, seed());
    u16::from_be_bytes(nat_port(hash, 0))
}

/// Runs the egress program over `frame` leaving through `lan`, checks the verdict and that exactly `reason` (or
/// nothing) was counted.
fn egress(dp: &mut DataPlane, frame: &[u8], action: u32, reason: Option<Reason>) -> Vec<u8> {
    let before = dp.counters().expect("counters");
    let out = dp.test_run_egress(frame, lan()).expect("test_run_egress");
    let after = dp.counters().expect("counters");
    assert_eq!(out.action, action, "verdict for {reason:?}");
    match reason {
        Some(r) => assert_delta(&before, &after, r),
        None => {
            for r in Reason::ALL {
                assert_eq!(after.reason(r), before.reason(r), "counter {} moved", r.name());
            }
        }
    }
    out.frame
}

fn assert_frame(out: &[u8], expected: &[u8]) {
    assert_eq!(frames::hex(out), frames::hex(expected));
    if out.len() > 34 && out[12..14] == [8, 0] {
        assert!(frames::ipv4_header_ok(out), "IP header checksum");
        assert!(frames::l4_ok(out), "TCP/UDP checksum");
    }
}

#[allow(clippy::too_many_arguments)]
fn tcp(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    frames::tcp_frame(dst_mac, src_mac, src, dst, sport, dport, flags, payload)
}

// ----- XDP: the client's frames to a local backend -----

#[test]
fn nat_flow_to_a_local_backend_is_translated_and_passed_to_the_node() {
    let mut dp = dataplane();
    let port = nport(CLIENT, 40001, HTTP, PROTO_TCP);
    // Exactly what a remote backend would get (VIP:nport -> backend:bport), left addressed to the node's MAC.
    let syn = tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40001, HTTP, TCP_SYN, b"");
    let out = run(&mut dp, &syn, XDP_PASS, Reason::NatForwardLocal);
    assert_frame(&out, &tcp(NODE_MAC, CLIENT_MAC, VIP, NODE_IP, port, HTTP_BACKEND, TCP_SYN, b""));
    let data = tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40001, HTTP, TCP_ACK | TCP_PSH, REQUEST);
    let out = run(&mut dp, &data, XDP_PASS, Reason::NatForwardLocal);
    assert_frame(&out, &tcp(NODE_MAC, CLIENT_MAC, VIP, NODE_IP, port, HTTP_BACKEND, TCP_ACK | TCP_PSH, REQUEST));
    let c = dp.counters().expect("counters");
    assert_eq!(c.backends[&("web".into(), NODE_IP.into(), HTTP_BACKEND)].packets, 2);
}

#[test]
fn dsr_flow_to_a_local_backend_is_passed_unchanged() {
    let mut dp = dataplane();
    let syn = tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40002, HTTPS, TCP_SYN, b"");
    let out = run(&mut dp, &syn, XDP_PASS, Reason::ForwardLocal);
    assert_frame(&out, &syn);
    let c = dp.counters().expect("counters");
    assert_eq!(c.backends[&("tls".into(), NODE_IP.into(), HTTPS)].packets, 1);
}

#[test]
fn a_remote_backend_still_gets_its_frames_by_xdp_tx() {
    let mut dp = dataplane();
    let port = nport(CLIENT, 40003, REMOTE, PROTO_TCP);
    let syn = tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40003, REMOTE, TCP_SYN, b"");
    let out = run(&mut dp, &syn, XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &tcp(BACKENDS[0].1, NODE_MAC, VIP, BACKENDS[0].0, port, REMOTE_BACKEND, TCP_SYN, b""));
}

// ----- egress: the local backend's replies -----

#[test]
fn local_backend_reply_is_translated_back_on_egress() {
    let mut dp = dataplane();
    let port = nport(CLIENT, 40004, HTTP, PROTO_TCP);
    run(&mut dp, &tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40004, HTTP, TCP_SYN, b""), XDP_PASS, Reason::NatForwardLocal);
    // The node's stack sends the reply to the VIP, whose MAC it learned from the egress program: its own.
    let reply = tcp(NODE_MAC, NODE_MAC, NODE_IP, VIP, HTTP_BACKEND, port, TCP_SYN | TCP_ACK, b"");
    let out = egress(&mut dp, &reply, TC_ACT_OK, Some(Reason::NatReplyLocal));
    assert_frame(&out, &tcp(CLIENT_MAC, NODE_MAC, VIP, CLIENT, HTTP, 40004, TCP_SYN | TCP_ACK, b""));
    let reply = tcp(NODE_MAC, NODE_MAC, NODE_IP, VIP, HTTP_BACKEND, port, TCP_ACK | TCP_PSH, RESPONSE);
    let out = egress(&mut dp, &reply, TC_ACT_OK, Some(Reason::NatReplyLocal));
    assert_frame(&out, &tcp(CLIENT_MAC, NODE_MAC, VIP, CLIENT, HTTP, 40004, TCP_ACK | TCP_PSH, RESPONSE));
}

#[test]
fn local_backend_reply_to_a_routed_client_goes_to_the_router() {
    let mut dp = dataplane();
    let port = nport(REMOTE_CLIENT, 40005, HTTP, PROTO_TCP);
    let syn = tcp(NODE_MAC, ROUTER_MAC, REMOTE_CLIENT, VIP, 40005, HTTP, TCP_SYN, b"");
    run(&mut dp, &syn, XDP_PASS, Reason::NatForwardLocal);
    let reply = tcp(NODE_MAC, NODE_MAC, NODE_IP, VIP, HTTP_BACKEND, port, TCP_SYN | TCP_ACK, b"");
    let out = egress(&mut dp, &reply, TC_ACT_OK, Some(Reason::NatReplyLocal));
    assert_frame(&out, &tcp(ROUTER_MAC, NODE_MAC, VIP, REMOTE_CLIENT, HTTP, 40005, TCP_SYN | TCP_ACK, b""));
}

#[test]
fn local_backend_udp_reply_is_translated_back_on_egress() {
    let mut dp = dataplane();
    let port = nport(CLIENT, 40006, DNS, PROTO_UDP);
    let query = frames::udp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40006, DNS, b"query");
    let out = run(&mut dp, &query, XDP_PASS, Reason::NatForwardLocal);
    assert_frame(&out, &frames::udp_frame(NODE_MAC, CLIENT_MAC, VIP, NODE_IP, port, DNS_BACKEND, b"query"));
    let answer = frames::udp_frame(NODE_MAC, NODE_MAC, NODE_IP, VIP, DNS_BACKEND, port, b"answer");
    let out = egress(&mut dp, &answer, TC_ACT_OK, Some(Reason::NatReplyLocal));
    assert_frame(&out, &frames::udp_frame(CLIENT_MAC, NODE_MAC, VIP, CLIENT, DNS, 40006, b"answer"));
}

#[test]
fn egress_leaves_everything_else_alone() {
    let mut dp = dataplane();
    // The node's own traffic (a health check to a backend), a packet from a backend port without a translation,
    // and an ARP request for another address.
    let check = tcp(BACKENDS[0].1, NODE_MAC, NODE_IP, BACKENDS[0].0, 45000, REMOTE_BACKEND, TCP_SYN, b"");
    assert_eq!(egress(&mut dp, &check, TC_ACT_OK, None), check);
    let untranslated = tcp(NODE_MAC, NODE_MAC, NODE_IP, VIP, HTTP_BACKEND, 1234, TCP_ACK, b"");
    assert_eq!(egress(&mut dp, &untranslated, TC_ACT_OK, None), untranslated);
    let arp = frames::arp_request(NODE_MAC, NODE_IP, BACKENDS[1].0);
    assert_eq!(egress(&mut dp, &arp, TC_ACT_OK, None), arp);
}

// ----- egress: the node's own ARP request for the VIP -----

#[test]
fn the_nodes_arp_request_for_an_active_vip_is_answered_back_into_the_node() {
    let mut dp = dataplane();
    let request = frames::arp_request(NODE_MAC, NODE_IP, VIP);
    let out = egress(&mut dp, &request, TC_ACT_REDIRECT, Some(Reason::ArpReplyLocal));
    let answer = frames::arp(frames::eth(NODE_MAC, NODE_MAC, 0x0806), 2, NODE_MAC, VIP, NODE_MAC, NODE_IP);
    assert_frame(&out, &answer);
    // The kernel's unicast re-probe of a stale entry, too.
    let probe = frames::arp(frames::eth(NODE_MAC, NODE_MAC, 0x0806), 1, NODE_MAC, NODE_IP, [0; 6], VIP);
    let out = egress(&mut dp, &probe, TC_ACT_REDIRECT, Some(Reason::ArpReplyLocal));
    assert_frame(&out, &answer);
}

// ----- while backup: nothing -----

#[test]
fn while_backup_egress_answers_and_translates_nothing() {
    let mut dp = dataplane();
    let port = nport(CLIENT, 40007, HTTP, PROTO_TCP);
    run(&mut dp, &tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40007, HTTP, TCP_SYN, b""), XDP_PASS, Reason::NatForwardLocal);
    dp.set_active(false).expect("set_active");
    // The ARP request goes out to the wire, where the active node answers it.
    let request = frames::arp_request(NODE_MAC, NODE_IP, VIP);
    assert_eq!(egress(&mut dp, &request, TC_ACT_OK, None), request);
    // A local backend's reply leaves as the backend sent it: to the active node, which translates it.
    let reply = tcp(ROUTER_MAC, NODE_MAC, NODE_IP, VIP, HTTP_BACKEND, port, TCP_ACK, b"");
    assert_eq!(egress(&mut dp, &reply, TC_ACT_OK, None), reply);
    // And the client's frames to the VIP are not for this node.
    let syn = tcp(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40008, HTTP, TCP_SYN, b"");
    run(&mut dp, &syn, support::fixture::XDP_DROP, Reason::DropInactive);
}

#[test]
fn a_dead_agents_heartbeat_stops_the_egress_program_too() {
    let mut dp = dataplane();
    // A heartbeat far in the past with a 1 s limit: the agent is hung or dead.
    dp.set_heartbeat(1, 1_000_000_000).expect("set_heartbeat");
    let request = frames::arp_request(NODE_MAC, NODE_IP, VIP);
    assert_eq!(egress(&mut dp, &request, TC_ACT_OK, None), request);
}

#[test]
fn a_reply_without_a_route_to_the_client_is_dropped() {
    let mut dp = dataplane();
    let client = Ipv4Addr::new(203, 0, 113, 9);
    let port = nport(client, 40009, HTTP, PROTO_TCP);
    let syn = tcp(NODE_MAC, ROUTER_MAC, client, VIP, 40009, HTTP, TCP_SYN, b"");
    run(&mut dp, &syn, XDP_PASS, Reason::NatForwardLocal);
    let reply = tcp(NODE_MAC, NODE_MAC, NODE_IP, VIP, HTTP_BACKEND, port, TCP_SYN | TCP_ACK, b"");
    egress(&mut dp, &reply, TC_ACT_SHOT, Some(Reason::DropNoRoute));
}

// ----- egress: the node's own Neighbor Solicitation for an IPv6 VIP -----

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);
/// The node's own address on the link the VIP is answered on, and its link-local one.
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 5);
const NODE6_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);
const ROUTER6: u32 = router_slot(0, FAMILY_IPV6);

fn with_vip6() -> DataPlane {
    let mut dp = dataplane();
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: 0, interface: None }]).expect("set_vips6");
    dp.set_router_active(ROUTER6, true).expect("set_router_active");
    dp
}

/// The kernel's solicitation for `target` from `src`: to the target's solicited-node group, or (`unicast`, a
/// reachability probe of a stale entry) to the target itself; hop limit `hop_limit`, the node's MAC as source
/// link-layer address.
fn solicitation(src: Ipv6Addr, target: Ipv6Addr, unicast: bool, hop_limit: u8) -> Vec<u8> {
    let (dst, dst_mac) = if unicast { (target, NODE_MAC) } else { frames::solicited_node(target) };
    let mut f = frames::eth(dst_mac, NODE_MAC, frames::ETH_IPV6);
    let ns = frames::icmp6(src, dst, frames::neighbor_solicitation(target, Some(NODE_MAC)));
    f.extend(frames::ipv6(src, dst, 58, hop_limit, &ns));
    f
}

/// The advertisement the node must get back: from the VIP to `to`, Solicited and Override, the node's MAC.
fn advertisement(to: Ipv6Addr) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, NODE_MAC, frames::ETH_IPV6);
    let na = frames::icmp6(VIP6, to, frames::neighbor_advertisement(VIP6, 0x60, NODE_MAC));
    f.extend(frames::ipv6(VIP6, to, 58, 255, &na));
    f
}

#[test]
fn the_nodes_neighbor_solicitation_for_an_active_ipv6_vip_is_answered_back_into_the_node() {
    let mut dp = with_vip6();
    for (src, unicast) in [(NODE6, false), (NODE6_LL, false), (NODE6, true)] {
        let request = solicitation(src, VIP6, unicast, 255);
        let out = egress(&mut dp, &request, TC_ACT_REDIRECT, Some(Reason::NaReplyLocal));
        assert_frame(&out, &advertisement(src));
        assert!(frames::icmp6_ok(&out), "the advertisement's checksum verifies");
    }
    let counters = dp.counters().expect("counters");
    assert_eq!(counters.router_reason(ROUTER6, Reason::NaReplyLocal), 3, "counted for the IPv6 router");
}

#[test]
fn other_solicitations_leave_the_node_untouched() {
    let mut dp = with_vip6();
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x251);
    // Duplicate address detection (from ::, without the option), a hop limit below 255, another target.
    let (group, group_mac) = frames::solicited_node(VIP6);
    let mut dad = frames::eth(group_mac, NODE_MAC, frames::ETH_IPV6);
    let ns = frames::neighbor_solicitation(VIP6, None);
    dad.extend(frames::ipv6(Ipv6Addr::UNSPECIFIED, group, 58, 255, &frames::icmp6(Ipv6Addr::UNSPECIFIED, group, ns)));
    for request in [dad, solicitation(NODE6, VIP6, false, 64), solicitation(NODE6, other, false, 255)] {
        assert_eq!(egress(&mut dp, &request, TC_ACT_OK, None), request);
    }
    // While the IPv6 router is backup the question goes out to the wire, where the active node answers it.
    dp.set_router_active(ROUTER6, false).expect("set_router_active");
    let request = solicitation(NODE6, VIP6, false, 255);
    assert_eq!(egress(&mut dp, &request, TC_ACT_OK, None), request);
}

// ----- IPv6: a backend at the node's own IPv6 address -----

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);

fn seed6() -> u32 {
    group_seed6(VIP6.octets(), VRID)
}

/// The IPv6 VIP's services over one backend at `NODE6`, which the fixture namespace gives `lan` first (the data
/// plane reads the node's own addresses there): NAT on TCP 80 -> 8080 and UDP 53 -> 5353, DSR on TCP 443. IPv6
/// forwarding on, the client on-link.
fn dataplane6() -> DataPlane {
    lan();
    support::fixture::ip(&format!("addr replace {NODE6}/64 dev lan nodad"));
    let client_mac = CLIENT_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    support::fixture::ip(&format!("neigh replace {CLIENT6} lladdr {client_mac} dev lan nud permanent"));
    for iface in ["all", "lan"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"), "1").expect("enabling forwarding");
    }
    let mut dp =
        DataPlane::load(LoadOptions { service_capacity: 4, ..LoadOptions::default() }).expect("loading (needs root)");
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed6(), interface: None }])
        .expect("set_vips6");
    dp.set_router_active(ROUTER6, true).expect("set_router_active");
    let service = |port: u16, protocol: u8, forwarding: u8, backend_port: u16| ServiceSpec {
        addresses: vec![VIP6.into()],
        port,
        protocol,
        forwarding,
        backends: vec![BackendSpec {
            address: NODE6.into(),
            port: backend_port,
            weight: 1,
            healthy: true,
            mac: Some(NODE_MAC),
            ifindex: 0,
        }],
    };
    dp.apply_service("web6", &service(HTTP, PROTO_TCP, FORWARD_NAT, HTTP_BACKEND)).expect("web6");
    dp.apply_service("dns6", &service(DNS, PROTO_UDP, FORWARD_NAT, DNS_BACKEND)).expect("dns6");
    dp.apply_service("tls6", &service(HTTPS, PROTO_TCP, FORWARD_DSR, HTTPS)).expect("tls6");
    dp
}

fn nport6(client: Ipv6Addr, cport: u16, service: u16, protocol: u8) -> u16 {
    let hash = flow_hash6(&client.octets(), cport.to_be_bytes(), service.to_be_bytes(), protocol, seed6());
    u16::from_be_bytes(nat_port(hash, 0))
}

/// An IPv6 frame carrying `segment` (a `frames::tcp6` or `frames::udp6`, checksummed for these addresses).
fn frame6(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, next: u8, segment: &[u8]) -> Vec<u8> {
    let mut f = frames::eth(dst_mac, src_mac, frames::ETH_IPV6);
    f.extend(frames::ipv6(src, dst, next, 64, segment));
    f
}

fn tcp6(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    frame6(macs.0, macs.1, src, dst, PROTO_TCP, &frames::tcp6(src, dst, sport, dport, flags, payload))
}

#[test]
fn nat_flow_to_a_local_ipv6_backend_is_passed_to_the_node_and_its_replies_translated_back_on_egress() {
    let mut dp = dataplane6();
    let port = nport6(CLIENT6, 40001, HTTP, PROTO_TCP);
    let from_client = (NODE_MAC, CLIENT_MAC);
    // In: exactly what a remote backend would get ([VIP]:nport -> [backend]:bport), left addressed to the node.
    let syn = tcp6(from_client, CLIENT6, VIP6, 40001, HTTP, TCP_SYN, b"");
    let out = run(&mut dp, &syn, XDP_PASS, Reason::NatForwardLocal);
    frames::assert_frame6(&out, &tcp6(from_client, VIP6, NODE6, port, HTTP_BACKEND, TCP_SYN, b""));
    // Out: the node's stack answers the VIP (whose MAC the egress program told it: its own), and the egress
    // program turns that into the service's answer to the client, to the client's MAC.
    let reply = tcp6((NODE_MAC, NODE_MAC), NODE6, VIP6, HTTP_BACKEND, port, TCP_SYN | TCP_ACK, b"");
    let out = egress(&mut dp, &reply, TC_ACT_OK, Some(Reason::NatReplyLocal));
    frames::assert_frame6(&out, &tcp6((CLIENT_MAC, NODE_MAC), VIP6, CLIENT6, HTTP, 40001, TCP_SYN | TCP_ACK, b""));
    let data = tcp6(from_client, CLIENT6, VIP6, 40001, HTTP, TCP_ACK | TCP_PSH, REQUEST);
    let out = run(&mut dp, &data, XDP_PASS, Reason::NatForwardLocal);
    frames::assert_frame6(&out, &tcp6(from_client, VIP6, NODE6, port, HTTP_BACKEND, TCP_ACK | TCP_PSH, REQUEST));
    let reply = tcp6((NODE_MAC, NODE_MAC), NODE6, VIP6, HTTP_BACKEND, port, TCP_ACK | TCP_PSH, RESPONSE);
    let out = egress(&mut dp, &reply, TC_ACT_OK, Some(Reason::NatReplyLocal));
    frames::assert_frame6(&out, &tcp6((CLIENT_MAC, NODE_MAC), VIP6, CLIENT6, HTTP, 40001, TCP_ACK | TCP_PSH, RESPONSE));
    let c = dp.counters().expect("counters");
    assert_eq!(c.backends[&("web6".into(), NODE6.into(), HTTP_BACKEND)].packets, 2);
    assert_eq!(c.router_reason(ROUTER6, Reason::NatReplyLocal), 2, "counted for the IPv6 router");
}

#[test]
fn local_ipv6_backend_udp_reply_is_translated_back_on_egress() {
    let mut dp = dataplane6();
    let port = nport6(CLIENT6, 40002, DNS, PROTO_UDP);
    let query = frame6(NODE_MAC, CLIENT_MAC, CLIENT6, VIP6, PROTO_UDP, &frames::udp6(CLIENT6, VIP6, 40002, DNS, b"q"));
    let out = run(&mut dp, &query, XDP_PASS, Reason::NatForwardLocal);
    let translated = frames::udp6(VIP6, NODE6, port, DNS_BACKEND, b"q");
    frames::assert_frame6(&out, &frame6(NODE_MAC, CLIENT_MAC, VIP6, NODE6, PROTO_UDP, &translated));
    let answer = frames::udp6(NODE6, VIP6, DNS_BACKEND, port, b"answer");
    let out = egress(
        &mut dp,
        &frame6(NODE_MAC, NODE_MAC, NODE6, VIP6, PROTO_UDP, &answer),
        TC_ACT_OK,
        Some(Reason::NatReplyLocal),
    );
    let back = frames::udp6(VIP6, CLIENT6, DNS, 40002, b"answer");
    frames::assert_frame6(&out, &frame6(CLIENT_MAC, NODE_MAC, VIP6, CLIENT6, PROTO_UDP, &back));
}

#[test]
fn dsr_flow_to_a_local_ipv6_backend_is_passed_unchanged() {
    let mut dp = dataplane6();
    let syn = tcp6((NODE_MAC, CLIENT_MAC), CLIENT6, VIP6, 40003, HTTPS, TCP_SYN, b"");
    let out = run(&mut dp, &syn, XDP_PASS, Reason::ForwardLocal);
    frames::assert_frame6(&out, &syn);
}

#[test]
fn ipv6_egress_leaves_untranslated_and_backup_traffic_alone() {
    let mut dp = dataplane6();
    let port = nport6(CLIENT6, 40004, HTTP, PROTO_TCP);
    run(
        &mut dp,
        &tcp6((NODE_MAC, CLIENT_MAC), CLIENT6, VIP6, 40004, HTTP, TCP_SYN, b""),
        XDP_PASS,
        Reason::NatForwardLocal,
    );
    // From a backend port, but to a NAT port no flow has; and the node's own traffic to another address.
    let untranslated = tcp6((NODE_MAC, NODE_MAC), NODE6, VIP6, HTTP_BACKEND, port ^ 1, TCP_ACK, b"");
    assert_eq!(egress(&mut dp, &untranslated, TC_ACT_OK, None), untranslated);
    let own = tcp6((CLIENT_MAC, NODE_MAC), NODE6, CLIENT6, 45000, 22, TCP_SYN, b"");
    assert_eq!(egress(&mut dp, &own, TC_ACT_OK, None), own);
    // While the IPv6 router is backup, the reply leaves as the backend sent it (to the active node).
    dp.set_router_active(ROUTER6, false).expect("set_router_active");
    let reply = tcp6((NODE_MAC, NODE_MAC), NODE6, VIP6, HTTP_BACKEND, port, TCP_ACK, b"");
    assert_eq!(egress(&mut dp, &reply, TC_ACT_OK, None), reply);
}
