//! BPF_PROG_TEST_RUN fixtures for IPv6 services (DSR to IPv6 backends): a SYN goes to the backend Maglev picks
//! with only the MACs changed, later packets of the flow keep their pin, UDP is forwarded too; malformed,
//! truncated and extension-header packets and martian sources are dropped (or left to the kernel) before any
//! state is made. Exact output bytes; checksums computed here. Needs root.
mod support;

use std::net::{IpAddr, Ipv6Addr};

use lb_common::{
    FAMILY_IPV6, FORWARD_DSR, MAGLEV_M, PROTO_TCP, PROTO_UDP, Reason, flow_hash6, group_seed, group_seed6, router_slot,
};
use support::fixture::{BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, VRID, XDP_DROP, XDP_PASS, XDP_TX, run};
use support::frames::{self, ETH_IPV6, TCP_ACK, TCP_PSH, TCP_SYN};
use xvip::{
    dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceId, ServiceSpec, Vip6Spec},
    maglev,
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);
const ROUTER6: u32 = router_slot(0, FAMILY_IPV6);
const BACKENDS6: [(Ipv6Addr, [u8; 6]); 3] = [
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x21), [0x02, 0, 0, 0, 0, 0x31]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x22), [0x02, 0, 0, 0, 0, 0x32]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x23), [0x02, 0, 0, 0, 0, 0x33]),
];
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;

fn seed() -> u32 {
    group_seed6(VIP6.octets(), VRID)
}

fn backend(i: usize, weight: u8, healthy: bool) -> BackendSpec {
    BackendSpec {
        address: IpAddr::V6(BACKENDS6[i].0),
        port: 80,
        weight,
        healthy,
        mac: Some(BACKENDS6[i].1),
        ifindex: 0,
    }
}

fn service(protocol: u8, backends: Vec<BackendSpec>) -> ServiceSpec {
    ServiceSpec { addresses: vec![IpAddr::V6(VIP6)], port: 80, protocol, forwarding: FORWARD_DSR, backends }
}

fn all_up(protocol: u8) -> ServiceSpec {
    service(protocol, (0..3).map(|i| backend(i, 1, true)).collect())
}

fn dataplane() -> DataPlane {
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 2, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed(), interface: None }])
        .expect("set_vips6");
    dp.set_router_active(ROUTER6, true).expect("set_router_active");
    dp
}

fn with_web() -> DataPlane {
    let mut dp = dataplane();
    dp.apply_service("web", &all_up(PROTO_TCP)).expect("apply_service");
    dp
}

fn tcp_frame(src: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    f.extend(frames::ipv6(src, VIP6, 6, 64, &frames::tcp6(src, VIP6, sport, dport, flags, PAYLOAD)));
    f
}

fn udp_frame(sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    f.extend(frames::ipv6(CLIENT6, VIP6, 17, 64, &frames::udp6(CLIENT6, VIP6, sport, 80, payload)));
    f
}

/// `frame` as the backend `i` must receive it: only the MACs differ (to the backend, from the node).
fn to_backend(frame: &[u8], i: usize) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&BACKENDS6[i].1);
    f[6..12].copy_from_slice(&NODE_MAC);
    f
}

/// Which backend Maglev assigns a flow from `CLIENT6`:`sport`, from the pure table builder and the shared hash
/// (the data plane names IPv6 backends `[address]:port` in the table builder).
fn predicted(spec: &ServiceSpec, protocol: u8, sport: u16) -> usize {
    let members: Vec<maglev::MaglevBackend> = spec
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.usable())
        .map(|(i, b)| maglev::MaglevBackend {
            id: i as u32,
            key: format!("[{}]:{}", b.address, b.port),
            weight: b.weight,
        })
        .collect();
    let table = maglev::build(&members, MAGLEV_M).expect("maglev");
    let h = flow_hash6(&CLIENT6.octets(), sport.to_be_bytes(), 80u16.to_be_bytes(), protocol, seed());
    table[(h % MAGLEV_M) as usize] as usize
}

/// The new flows counted for service `web` so far.
fn new_flows(dp: &DataPlane) -> u64 {
    dp.counters().expect("counters").services.get(&ServiceId::from("web")).map_or(0, |t| t.new_flows)
}

#[test]
fn a_syn_goes_to_the_maglev_pick_with_only_the_macs_changed() {
    let mut dp = with_web();
    assert!(dp.service_value6(VIP6, PROTO_TCP, 80).expect("read").is_some(), "SERVICES6 entry written");
    let mut seen = [false; 3];
    for sport in 40000..40040 {
        let syn = tcp_frame(CLIENT6, sport, 80, TCP_SYN);
        let out = run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
        let expected = predicted(&all_up(PROTO_TCP), PROTO_TCP, sport);
        assert_eq!(out, to_backend(&syn, expected), "client port {sport}");
        seen[expected] = true;
    }
    assert_eq!(seen, [true; 3], "flows spread over every backend");
    let c = dp.counters().expect("counters");
    assert_eq!(c.services[&ServiceId::from("web")].new_flows, 40);
    let per_backend: u64 = (0..3).map(|i| c.backends[&("web".into(), IpAddr::V6(BACKENDS6[i].0), 80)].packets).sum();
    assert_eq!(per_backend, 40, "each packet counted for its IPv6 backend");
}

#[test]
fn a_pinned_flow_keeps_its_backend_while_it_drains_and_a_new_syn_picks_again() {
    let mut dp = with_web();
    let sport = 40001;
    let syn = tcp_frame(CLIENT6, sport, 80, TCP_SYN);
    let pinned = predicted(&all_up(PROTO_TCP), PROTO_TCP, sport);
    assert_eq!(run(&mut dp, &syn, XDP_TX, Reason::ForwardTx), to_backend(&syn, pinned));
    // The pinned backend drains: out of the Maglev table, but healthy and in its slot.
    let draining = service(PROTO_TCP, (0..3).map(|i| backend(i, if i == pinned { 0 } else { 1 }, true)).collect());
    dp.apply_service("web", &draining).expect("drain");
    let ack = tcp_frame(CLIENT6, sport, 80, TCP_ACK | TCP_PSH);
    assert_eq!(run(&mut dp, &ack, XDP_TX, Reason::ForwardTx), to_backend(&ack, pinned), "the pin holds");
    assert_eq!(new_flows(&dp), 1, "a pinned packet starts no flow");
    // What `xvip status` shows for the draining backend: its one open flow.
    let flows = dp.flows_per_backend().expect("scan");
    assert_eq!(flows, [(("web".into(), IpAddr::V6(BACKENDS6[pinned].0), 80), 1)].into());
    let again = run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
    let repicked = predicted(&draining, PROTO_TCP, sport);
    assert_ne!(repicked, pinned);
    assert_eq!(again, to_backend(&syn, repicked), "a SYN takes a fresh pick");
    // The backend fails: its pinned flows move on at their next packet.
    let mut down = draining.clone();
    down.backends[repicked].healthy = false;
    dp.apply_service("web", &down).expect("down");
    let moved = run(&mut dp, &ack, XDP_TX, Reason::ForwardTx);
    assert_eq!(moved, to_backend(&ack, predicted(&down, PROTO_TCP, sport)));
}

#[test]
fn a_packet_without_a_pin_is_picked_like_a_syn() {
    let mut dp = with_web();
    let ack = tcp_frame(CLIENT6, 41000, 80, TCP_ACK);
    let expected = predicted(&all_up(PROTO_TCP), PROTO_TCP, 41000);
    assert_eq!(run(&mut dp, &ack, XDP_TX, Reason::ForwardTx), to_backend(&ack, expected));
    assert_eq!(new_flows(&dp), 1);
}

#[test]
fn udp_is_forwarded_and_a_zero_checksum_is_dropped() {
    let mut dp = dataplane();
    dp.apply_service("dns", &all_up(PROTO_UDP)).expect("apply_service");
    let datagram = udp_frame(5353, b"query");
    let expected = predicted(&all_up(PROTO_UDP), PROTO_UDP, 5353);
    assert_eq!(run(&mut dp, &datagram, XDP_TX, Reason::ForwardTx), to_backend(&datagram, expected));
    let mut zero = udp_frame(5354, b"query");
    zero[60..62].copy_from_slice(&[0, 0]);
    assert_eq!(run(&mut dp, &zero, XDP_DROP, Reason::DropMalformedL4), zero, "mandatory over IPv6");
    let mut short_length = udp_frame(5355, b"query");
    short_length[58..60].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(run(&mut dp, &short_length, XDP_DROP, Reason::DropMalformedL4), short_length);
}

#[test]
fn a_port_without_a_service_is_dropped() {
    let mut dp = with_web();
    let other = tcp_frame(CLIENT6, 40000, 81, TCP_SYN);
    assert_eq!(run(&mut dp, &other, XDP_DROP, Reason::DropNoService), other);
    dp.remove_service("web").expect("remove");
    assert_eq!(dp.service_value6(VIP6, PROTO_TCP, 80).expect("read"), None, "SERVICES6 entry removed");
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropNoService), syn);
}

#[test]
fn a_service_without_a_usable_backend_drops_without_state() {
    let mut dp = dataplane();
    dp.apply_service("web", &service(PROTO_TCP, (0..3).map(|i| backend(i, 1, false)).collect())).expect("apply");
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropNoBackend), syn);
    assert_eq!(new_flows(&dp), 0);
}

#[test]
fn malformed_and_truncated_transport_headers_make_no_state() {
    let mut dp = with_web();
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    // Data offset 4 words: shorter than a TCP header.
    let mut short_offset = syn.clone();
    short_offset[66] = 0x40;
    assert_eq!(run(&mut dp, &short_offset, XDP_DROP, Reason::DropMalformedL4), short_offset);
    // Data offset beyond the packet.
    let mut long_offset = syn.clone();
    long_offset[66] = 0xf0;
    assert_eq!(run(&mut dp, &long_offset, XDP_DROP, Reason::DropMalformedL4), long_offset);
    // The payload length claims more than the frame holds.
    let cut = syn[..syn.len() - 4].to_vec();
    assert_eq!(run(&mut dp, &cut, XDP_PASS, Reason::PassTruncated), cut);
    // Less than a TCP header after the IPv6 header.
    let mut tiny = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    tiny.extend(frames::ipv6(CLIENT6, VIP6, 6, 64, &[0x9c, 0x40, 0, 80, 0, 0, 0, 1]));
    assert_eq!(run(&mut dp, &tiny, XDP_PASS, Reason::PassTruncated), tiny);
    assert_eq!(new_flows(&dp), 0);
}

#[test]
fn transport_behind_extension_headers_is_dropped() {
    let mut dp = with_web();
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    for (ext, reason) in [(DEST_OPTIONS, Reason::DropIpOptions), (FRAGMENT, Reason::DropFragment)] {
        let mut f = syn[..54].to_vec();
        let len = u16::from_be_bytes([f[18], f[19]]) + 8;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        f[20] = ext;
        f.extend_from_slice(&if ext == FRAGMENT { [6, 0, 0, 0, 0, 0, 0, 1] } else { [6, 0, 1, 4, 0, 0, 0, 0] });
        f.extend_from_slice(&syn[54..]);
        assert_eq!(run(&mut dp, &f, XDP_DROP, reason), f, "extension header {ext}");
    }
    assert_eq!(new_flows(&dp), 0);
}

#[test]
fn martian_sources_are_dropped_before_any_state() {
    let mut dp = with_web();
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().expect("address");
    for source in [Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST, all_nodes, mapped, VIP6] {
        let syn = tcp_frame(source, 40000, 80, TCP_SYN);
        assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropMartianSource), syn, "from {source}");
    }
    assert_eq!(new_flows(&dp), 0, "no flow recorded");
}

#[test]
fn a_backup_forwards_nothing() {
    let mut dp = with_web();
    dp.set_router_active(ROUTER6, false).expect("backup");
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropInactive), syn);
}

#[test]
fn a_backup_whose_kernel_holds_the_vip_hands_the_active_nodes_dsr_forwards_to_it() {
    let mut dp = with_web();
    // A DSR backend on this node: the VIP on its loopback.
    support::fixture::ip(&format!("-6 addr add {VIP6}/128 dev lo"));
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed(), interface: None }]).expect("vips6");
    dp.set_router_active(ROUTER6, false).expect("backup");
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_PASS, Reason::PassHeldVip), syn);
    // Active, it forwards as any active node.
    dp.set_router_active(ROUTER6, true).expect("active");
    run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
}

#[test]
fn leaving_the_active_role_forgets_the_ipv6_pins() {
    let mut dp = with_web();
    let sport = 40001;
    let syn = tcp_frame(CLIENT6, sport, 80, TCP_SYN);
    let pinned = predicted(&all_up(PROTO_TCP), PROTO_TCP, sport);
    run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
    let draining = service(PROTO_TCP, (0..3).map(|i| backend(i, if i == pinned { 0 } else { 1 }, true)).collect());
    dp.apply_service("web", &draining).expect("drain");
    let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x251));
    assert_eq!(dp.forget_flows(&[other, VIP.into()]).expect("forget"), (0, 0), "another VIP's flows only");
    assert_eq!(dp.forget_flows(&[IpAddr::V6(VIP6)]).expect("forget"), (1, 0));
    // Without its pin, the flow's next packet is picked afresh: not the draining backend.
    let ack = tcp_frame(CLIENT6, sport, 80, TCP_ACK);
    let out = run(&mut dp, &ack, XDP_TX, Reason::ForwardTx);
    assert_eq!(out, to_backend(&ack, predicted(&draining, PROTO_TCP, sport)));
}

#[test]
fn a_dual_stack_service_balances_each_family_to_its_own_backends() {
    let mut dp = dataplane();
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    dp.set_active(true).expect("IPv4 router active");
    let mut spec = all_up(PROTO_TCP);
    spec.addresses.insert(0, IpAddr::V4(VIP));
    spec.backends.extend(support::fixture::backends(80));
    dp.apply_service("web", &spec).expect("apply_service");
    for sport in 40000..40012 {
        let v6 = tcp_frame(CLIENT6, sport, 80, TCP_SYN);
        let out = run(&mut dp, &v6, XDP_TX, Reason::ForwardTx);
        assert_eq!(out, to_backend(&v6, predicted(&all_up(PROTO_TCP), PROTO_TCP, sport)), "IPv6 to IPv6");
        let v4 = frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, 80, TCP_SYN, PAYLOAD);
        let out = run(&mut dp, &v4, XDP_TX, Reason::ForwardTx);
        assert!(BACKENDS.iter().any(|(_, mac)| out[0..6] == mac[..]), "IPv4 to an IPv4 backend: {:02x?}", &out[0..6]);
        assert_eq!(out[12..], v4[12..], "only the MACs change");
    }
    let c = dp.counters().expect("counters");
    assert_eq!(c.services[&ServiceId::from("web")].new_flows, 24, "both families' flows under the one service");
    let v6: u64 = (0..3).map(|i| c.backends[&("web".into(), IpAddr::V6(BACKENDS6[i].0), 80)].packets).sum();
    let v4: u64 = BACKENDS.iter().map(|(a, _)| c.backends[&("web".into(), IpAddr::V4(*a), 80)].packets).sum();
    assert_eq!((v4, v6), (12, 12));
    // Back to IPv4 only: the IPv6 part goes.
    spec.addresses.truncate(1);
    spec.backends.retain(|b| b.address.is_ipv4());
    dp.apply_service("web", &spec).expect("IPv4 only");
    assert_eq!(dp.service_value6(VIP6, PROTO_TCP, 80).expect("read"), None);
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropNoService), syn);
}

#[test]
fn a_reload_moves_and_removes_ipv6_services() {
    let mut dp = dataplane();
    let on = |port: u16| ServiceSpec { port, ..all_up(PROTO_TCP) };
    let (web, api) = (ServiceId::from("web"), ServiceId::from("api"));
    dp.reconcile_services(&[(web.clone(), on(80)), (api.clone(), on(81))]).expect("install");
    assert_eq!(dp.service_ids().count(), 2, "IPv6-only services are installed services");
    // web leaves, api takes its port.
    dp.reconcile_services(&[(api.clone(), on(80))]).expect("reload");
    assert!(dp.service_value6(VIP6, PROTO_TCP, 80).expect("read").is_some());
    assert_eq!(dp.service_value6(VIP6, PROTO_TCP, 81).expect("read"), None);
    let syn = tcp_frame(CLIENT6, 40000, 80, TCP_SYN);
    run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
    assert_eq!(dp.counters().expect("counters").services[&api].new_flows, 1, "port 80 is api's now");
    // Nothing configured: nothing answered.
    dp.reconcile_services(&[]).expect("empty");
    assert_eq!(dp.service_value6(VIP6, PROTO_TCP, 80).expect("read"), None);
    assert_eq!(dp.service_ids().count(), 0);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropNoService), syn);
}

/// A Packet Too Big (MTU 1280) from a router on the way to the client, to the VIP, quoting `quoted`.
fn packet_too_big(quoted: &[u8]) -> Vec<u8> {
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1);
    let mut message = vec![2, 0, 0, 0];
    message.extend_from_slice(&1280u32.to_be_bytes());
    message.extend_from_slice(quoted);
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    f.extend(frames::ipv6(router, VIP6, 58, 64, &frames::icmp6(router, VIP6, message)));
    f
}

/// What a backend sent the client from the VIP (its SYN/ACK with data), as an ICMPv6 error quotes it.
fn reply_from_vip(src: Ipv6Addr, client_port: u16) -> Vec<u8> {
    frames::ipv6(src, CLIENT6, 6, 64, &frames::tcp6(src, CLIENT6, 80, client_port, TCP_SYN | TCP_ACK, &[7; 1200]))
}

#[test]
fn a_packet_too_big_about_a_backends_reply_goes_to_that_backend() {
    let mut dp = with_web();
    let sport = 40007;
    let syn = tcp_frame(CLIENT6, sport, 80, TCP_SYN);
    let pinned = predicted(&all_up(PROTO_TCP), PROTO_TCP, sport);
    run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
    let ptb = packet_too_big(&reply_from_vip(VIP6, sport));
    assert!(frames::icmp6_ok(&ptb));
    assert_eq!(run(&mut dp, &ptb, XDP_TX, Reason::ForwardTx), to_backend(&ptb, pinned), "unchanged but the MACs");
    // Quoting only the first bytes of the packet (at least the headers) is enough.
    let short = packet_too_big(&reply_from_vip(VIP6, sport)[..44]);
    assert_eq!(run(&mut dp, &short, XDP_TX, Reason::ForwardTx), to_backend(&short, pinned));
    assert_eq!(new_flows(&dp), 1, "an error starts no flow");
}

#[test]
fn icmpv6_errors_about_nothing_of_ours_are_dropped() {
    let mut dp = with_web();
    let sport = 40007;
    run(&mut dp, &tcp_frame(CLIENT6, sport, 80, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x99);
    for (what, frame) in [
        ("a flow without a pin", packet_too_big(&reply_from_vip(VIP6, sport + 1))),
        ("a packet from another source", packet_too_big(&reply_from_vip(other, sport))),
        ("a quote without its ports", packet_too_big(&reply_from_vip(VIP6, sport)[..42])),
    ] {
        assert_eq!(run(&mut dp, &frame, XDP_DROP, Reason::DropNoService), frame, "{what}");
    }
    // The pinned backend failed: the flow moves at its next packet, the error has nowhere to go.
    let mut down = all_up(PROTO_TCP);
    down.backends[predicted(&all_up(PROTO_TCP), PROTO_TCP, sport)].healthy = false;
    dp.apply_service("web", &down).expect("down");
    let ptb = packet_too_big(&reply_from_vip(VIP6, sport));
    assert_eq!(run(&mut dp, &ptb, XDP_DROP, Reason::DropNoService), ptb);
}

/// 2001:db8:77::251 folds next to `VIP6` (`lb_common::vip6_fold` differs in the last bit), so its port 81 shares
/// `VIP6`'s port-80 `LISTENER6_SLOTS` slot and its port 80 `VIP6`'s port-81 one (`lb_common::listener6_slot`).
const NEIGHBOUR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x251);

fn listener6(vip: Ipv6Addr, port: u16) -> u32 {
    lb_common::listener6_slot(lb_common::ipv6_halves(&vip.octets()), port.to_be_bytes(), PROTO_TCP)
}

/// A SYN from `CLIENT6`:`sport` to `vip`:`port`.
fn syn_to(vip: Ipv6Addr, sport: u16, port: u16) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    f.extend(frames::ipv6(CLIENT6, vip, 6, 64, &frames::tcp6(CLIENT6, vip, sport, port, TCP_SYN, PAYLOAD)));
    f
}

/// Service `web` on port 80 and `web81` on port 81 of both addresses, each over one backend of its own (backend 0
/// and backend 1), so the MAC a SYN leaves with says which service took it.
fn two_listeners_per_slot() -> DataPlane {
    let mut dp = dataplane();
    let seed6 = group_seed6(NEIGHBOUR6.octets(), VRID);
    dp.set_vips6(&[
        Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed(), interface: None },
        Vip6Spec { address: NEIGHBOUR6, router: ROUTER6, hash_seed: seed6, interface: None },
    ])
    .expect("set_vips6");
    let addresses = vec![IpAddr::V6(VIP6), IpAddr::V6(NEIGHBOUR6)];
    let web = ServiceSpec { addresses: addresses.clone(), ..service(PROTO_TCP, vec![backend(0, 1, true)]) };
    let web81 = ServiceSpec {
        addresses,
        port: 81,
        ..service(PROTO_TCP, vec![BackendSpec { port: 81, ..backend(1, 1, true) }])
    };
    dp.apply_service("web", &web).expect("web");
    dp.apply_service("web81", &web81).expect("web81");
    dp
}

#[test]
fn ipv6_listeners_sharing_a_slot_each_reach_their_own_service() {
    assert_eq!(listener6(NEIGHBOUR6, 81), listener6(VIP6, 80));
    assert_eq!(listener6(NEIGHBOUR6, 80), listener6(VIP6, 81));
    let mut dp = two_listeners_per_slot();
    for (vip, port, i) in [(VIP6, 80, 0), (NEIGHBOUR6, 81, 1), (VIP6, 81, 1), (NEIGHBOUR6, 80, 0)] {
        let input = syn_to(vip, 40_000, port);
        let out = run(&mut dp, &input, XDP_TX, Reason::ForwardTx);
        assert_eq!(out, to_backend(&input, i), "[{vip}]:{port}");
    }
    // Port 81 gone: each slot holds one listener again; port 80 still served, port 81 no more, on both addresses.
    dp.remove_service("web81").expect("remove web81");
    for vip in [VIP6, NEIGHBOUR6] {
        let input = syn_to(vip, 40_001, 80);
        assert_eq!(run(&mut dp, &input, XDP_TX, Reason::ForwardTx), to_backend(&input, 0), "[{vip}]:80");
        let input = syn_to(vip, 40_001, 81);
        assert_eq!(run(&mut dp, &input, XDP_DROP, Reason::DropNoService), input, "[{vip}]:81");
    }
}

#[test]
fn an_ipv6_port_in_another_listeners_slot_has_no_service() {
    // (NEIGHBOUR6, 81) folds to the slot (VIP6, 80) holds alone.
    assert_eq!(listener6(NEIGHBOUR6, 81), listener6(VIP6, 80));
    let mut dp = with_web();
    let seed6 = group_seed6(NEIGHBOUR6.octets(), VRID);
    dp.set_vips6(&[
        Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed(), interface: None },
        Vip6Spec { address: NEIGHBOUR6, router: ROUTER6, hash_seed: seed6, interface: None },
    ])
    .expect("set_vips6");
    let input = syn_to(NEIGHBOUR6, 40_000, 81);
    assert_eq!(run(&mut dp, &input, XDP_DROP, Reason::DropNoService), input);
    run(&mut dp, &syn_to(VIP6, 40_000, 80), XDP_TX, Reason::ForwardTx);
}
