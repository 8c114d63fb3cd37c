//! BPF_PROG_TEST_RUN fixtures for several VIPs on one data plane: instance `a` (router 0) holds two addresses,
//! instance `b` (router 2) a third. ARP, echo and forwarding on a second address and a second instance, each
//! router's flag governing only its own addresses, services keyed by address, and the per-router counters. Exact
//! output bytes; backends predicted from the pure Maglev builder and the shared hash. Needs root.
mod support;

use std::net::Ipv4Addr;

use lb_common::{FAMILY_IPV4, FORWARD_DSR, MAGLEV_M, PROTO_TCP, Reason, flow_hash, group_seed, router_slot};
use support::fixture::{BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, XDP_DROP, XDP_PASS, XDP_TX, run};
use support::frames::{self, TCP_SYN};
use xvip::{
    dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceId, ServiceSpec, VipSpec},
    maglev,
};

const A1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
const A2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 251);
const B1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 252);
const VRID_A: u8 = 51;
const VRID_B: u8 = 52;

fn router_a() -> u32 {
    router_slot(0, FAMILY_IPV4)
}

fn router_b() -> u32 {
    router_slot(1, FAMILY_IPV4)
}

fn vips() -> Vec<VipSpec> {
    let vip = |address: Ipv4Addr, router: u32, vrid: u8| VipSpec {
        address,
        router,
        hash_seed: group_seed(address.octets(), vrid),
        interface: None,
    };
    vec![vip(A1, router_a(), VRID_A), vip(A2, router_a(), VRID_A), vip(B1, router_b(), VRID_B)]
}

fn backend(i: usize) -> BackendSpec {
    BackendSpec {
        address: BACKENDS[i].0.into(),
        port: 80,
        weight: 1,
        healthy: true,
        mac: Some(BACKENDS[i].1),
        ifindex: 0,
    }
}

/// a's web service: port 80 on both of a's addresses, backends 0 and 1; and 443 on a only.
fn web_a() -> ServiceSpec {
    ServiceSpec {
        addresses: vec![A1.into(), A2.into()],
        port: 80,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: vec![backend(0), backend(1)],
    }
}

fn tls_a() -> ServiceSpec {
    ServiceSpec { port: 443, backends: vec![BackendSpec { port: 443, ..backend(0) }], ..web_a() }
}

/// b's web service: port 80 on b's address, backend 2 only.
fn web_b() -> ServiceSpec {
    ServiceSpec {
        addresses: vec![B1.into()],
        port: 80,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: vec![backend(2)],
    }
}

fn dataplane(a_active: bool, b_active: bool) -> DataPlane {
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 3, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node_mac(NODE_MAC).expect("mac");
    dp.reconcile(&vips(), &services()).expect("reconcile");
    dp.set_router_active(router_a(), a_active).expect("a");
    dp.set_router_active(router_b(), b_active).expect("b");
    dp
}

fn syn(vip: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, vip, sport, dport, TCP_SYN, b"")
}

fn ping(vip: Ipv4Addr) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    f.extend(frames::ipv4(CLIENT, vip, 1, &frames::icmp_echo(8, 0x4242, 3, b"second instance")));
    f
}

/// The backend Maglev gives a flow to `vip`:`port` of `spec` with `vip`'s seed (independent of the program).
fn predicted(spec: &ServiceSpec, vip: Ipv4Addr, vrid: u8, sport: u16) -> [u8; 6] {
    let members: Vec<maglev::MaglevBackend> = spec
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| maglev::MaglevBackend { id: i as u32, key: format!("{}:{}", b.address, b.port), weight: 1 })
        .collect();
    let table = maglev::build(&members, MAGLEV_M).expect("maglev");
    let seed = group_seed(vip.octets(), vrid);
    let h = flow_hash(CLIENT.octets(), sport.to_be_bytes(), spec.port.to_be_bytes(), PROTO_TCP, seed);
    spec.backends[table[(h % MAGLEV_M) as usize] as usize].mac.expect("mac")
}

#[test]
fn arp_for_the_second_address_of_an_instance_is_answered_with_that_address() {
    let mut dp = dataplane(true, true);
    let out = run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, A2), XDP_TX, Reason::ArpReply);
    let expected = frames::arp(frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_ARP), 2, NODE_MAC, A2, CLIENT_MAC, CLIENT);
    assert_eq!(out, expected);
    let c = dp.counters().expect("counters");
    assert_eq!(c.router_reason(router_a(), Reason::ArpReply), 1, "counted for a's router");
    assert_eq!(c.router_reason(router_b(), Reason::ArpReply), 0);
}

#[test]
fn echo_to_a_second_instance_is_answered_with_valid_checksums() {
    let mut dp = dataplane(true, true);
    let out = run(&mut dp, &ping(B1), XDP_TX, Reason::EchoReply);
    let mut expected = frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_IPV4);
    expected.extend(frames::ipv4(B1, CLIENT, 1, &frames::icmp_echo(0, 0x4242, 3, b"second instance")));
    assert_eq!(out, expected);
    assert_eq!(frames::checksum(&out[34..]), 0, "ICMP checksum verifies");
    assert_eq!(dp.counters().expect("counters").router_reason(router_b(), Reason::EchoReply), 1);
}

#[test]
fn a_service_is_answered_on_every_address_of_its_instance_with_each_addresses_seed() {
    let mut dp = dataplane(true, true);
    for (vip, sport) in [(A1, 40_001u16), (A2, 40_001), (A2, 40_002), (A2, 51_000)] {
        let input = syn(vip, sport, 80);
        let out = run(&mut dp, &input, XDP_TX, Reason::ForwardTx);
        let mut expected = input.clone();
        expected[0..6].copy_from_slice(&predicted(&web_a(), vip, VRID_A, sport));
        expected[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(out, expected, "{vip}:80 from port {sport}");
    }
}

#[test]
fn a_second_instances_service_goes_to_its_own_backends_only() {
    let mut dp = dataplane(true, true);
    for sport in 40_000u16..40_016 {
        let input = syn(B1, sport, 80);
        let out = run(&mut dp, &input, XDP_TX, Reason::ForwardTx);
        let mut expected = input.clone();
        expected[0..6].copy_from_slice(&BACKENDS[2].1);
        expected[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(out, expected);
    }
    // 443 is a's only: on b's address it is no service.
    let input = syn(B1, 40_000, 443);
    assert_eq!(run(&mut dp, &input, XDP_DROP, Reason::DropNoService), input);
    let input = syn(A2, 40_000, 443);
    run(&mut dp, &input, XDP_TX, Reason::ForwardTx);
    let c = dp.counters().expect("counters");
    assert_eq!(c.services[&ServiceId::new("b", "web")].packets, 16);
    assert_eq!(c.services[&ServiceId::new("a", "tls")].packets, 1);
}

#[test]
fn each_routers_flag_governs_only_its_own_addresses() {
    // a backup for b, active for a (active/active seen from one node).
    let mut dp = dataplane(true, false);
    let request = frames::arp_request(CLIENT_MAC, CLIENT, B1);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request);
    let input = syn(B1, 40_000, 80);
    assert_eq!(run(&mut dp, &input, XDP_DROP, Reason::DropInactive), input);
    assert_eq!(run(&mut dp, &ping(B1), XDP_DROP, Reason::DropInactive), ping(B1));
    run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, A2), XDP_TX, Reason::ArpReply);
    run(&mut dp, &syn(A1, 40_000, 80), XDP_TX, Reason::ForwardTx);
    let c = dp.counters().expect("counters");
    assert_eq!(c.router_reason(router_b(), Reason::DropInactive), 2);
    assert_eq!(c.router_reason(router_a(), Reason::DropInactive), 0);
    // b takes over, a gives up: the other way round, nothing else changed.
    dp.set_router_active(router_b(), true).expect("b");
    dp.set_router_active(router_a(), false).expect("a");
    run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, B1), XDP_TX, Reason::ArpReply);
    run(&mut dp, &syn(B1, 40_000, 80), XDP_TX, Reason::ForwardTx);
    run(&mut dp, &syn(A2, 40_000, 80), XDP_DROP, Reason::DropInactive);
}

#[test]
fn removing_an_instances_addresses_leaves_the_others_answering() {
    let mut dp = dataplane(true, true);
    let services = vec![(ServiceId::new("a", "web"), web_a()), (ServiceId::new("a", "tls"), tls_a())];
    let a_only: Vec<VipSpec> = vips().into_iter().filter(|v| v.address != B1).collect();
    dp.reconcile(&a_only, &services).expect("reconcile without b");
    let request = frames::arp_request(CLIENT_MAC, CLIENT, B1);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request, "b's address is no VIP any more");
    let input = syn(B1, 40_000, 80);
    assert_eq!(run(&mut dp, &input, XDP_PASS, Reason::PassNotVip), input);
    run(&mut dp, &syn(A2, 40_000, 80), XDP_TX, Reason::ForwardTx);
    assert!(dp.slot_owners().keys().all(|(vip, _, _)| *vip != B1), "{:?}", dp.slot_owners());
}

#[test]
fn a_frame_from_another_of_our_vips_is_a_martian() {
    let mut dp = dataplane(true, true);
    let input = frames::tcp_frame(NODE_MAC, CLIENT_MAC, B1, A1, 40_000, 80, TCP_SYN, b"");
    assert_eq!(run(&mut dp, &input, XDP_DROP, Reason::DropMartianSource), input);
}

/// 11.76.1.251 folds to A1's `VIP_SLOTS` slot, 11.76.1.253 to B1's (`lb_common::vip_fold`).
const SHARES_A1: Ipv4Addr = Ipv4Addr::new(11, 76, 1, 251);
const SHARES_B1: Ipv4Addr = Ipv4Addr::new(11, 76, 1, 253);

fn services() -> Vec<(ServiceId, ServiceSpec)> {
    vec![
        (ServiceId::new("a", "web"), web_a()),
        (ServiceId::new("a", "tls"), tls_a()),
        (ServiceId::new("b", "web"), web_b()),
    ]
}

fn arp_reply_from(vip: Ipv4Addr) -> Vec<u8> {
    frames::arp(frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_ARP), 2, NODE_MAC, vip, CLIENT_MAC, CLIENT)
}

#[test]
fn vips_sharing_a_slot_are_each_answered_and_an_address_in_one_vips_slot_is_not_a_vip() {
    assert_eq!(lb_common::vip_fold(SHARES_A1.octets()), lb_common::vip_fold(A1.octets()));
    assert_eq!(lb_common::vip_fold(SHARES_B1.octets()), lb_common::vip_fold(B1.octets()));
    let mut dp = dataplane(true, true);
    let mut with_neighbour = vips();
    with_neighbour.push(VipSpec {
        address: SHARES_A1,
        router: router_a(),
        hash_seed: group_seed(SHARES_A1.octets(), VRID_A),
        interface: None,
    });
    dp.reconcile(&with_neighbour, &services()).expect("a fourth address sharing A1's slot");
    for vip in [A1, SHARES_A1] {
        let out = run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, vip), XDP_TX, Reason::ArpReply);
        assert_eq!(out, arp_reply_from(vip), "{vip} shares its slot and is answered");
    }
    run(&mut dp, &syn(A1, 40_000, 80), XDP_TX, Reason::ForwardTx);
    // B1's slot holds B1 alone: another address folding there is no VIP.
    let request = frames::arp_request(CLIENT_MAC, CLIENT, SHARES_B1);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request);
    let input = syn(SHARES_B1, 40_000, 80);
    assert_eq!(run(&mut dp, &input, XDP_PASS, Reason::PassNotVip), input);

    // Back to one VIP in A1's slot: A1 still answered, its former neighbour no more.
    dp.reconcile(&vips(), &services()).expect("without the fourth address");
    let out = run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, A1), XDP_TX, Reason::ArpReply);
    assert_eq!(out, arp_reply_from(A1));
    let request = frames::arp_request(CLIENT_MAC, CLIENT, SHARES_A1);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request);
}

#[test]
fn a_vip_moved_to_another_router_follows_that_routers_flag() {
    let mut dp = dataplane(true, false);
    run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, A2), XDP_TX, Reason::ArpReply);
    let moved: Vec<VipSpec> =
        vips().into_iter().map(|v| if v.address == A2 { VipSpec { router: router_b(), ..v } } else { v }).collect();
    dp.reconcile(&moved, &services()).expect("A2 to b's router");
    let request = frames::arp_request(CLIENT_MAC, CLIENT, A2);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request, "b is not active");
    run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, A1), XDP_TX, Reason::ArpReply);
    dp.set_router_active(router_b(), true).expect("b");
    let out = run(&mut dp, &frames::arp_request(CLIENT_MAC, CLIENT, A2), XDP_TX, Reason::ArpReply);
    assert_eq!(out, arp_reply_from(A2));
}

/// a's service on port 81: (A1, 81) shares `LISTENER_SLOTS` slot with (A2, 80) and (A2, 81) with (A1, 80)
/// (`lb_common::listener_slot`: the port xor the folded address).
fn web81_a() -> ServiceSpec {
    ServiceSpec { port: 81, backends: vec![BackendSpec { port: 81, ..backend(2) }], ..web_a() }
}

fn listener(vip: Ipv4Addr, port: u16) -> u32 {
    lb_common::listener_slot(&lb_common::ServiceKey::new(vip.octets(), port.to_be_bytes(), PROTO_TCP))
}

#[test]
fn listeners_sharing_a_slot_each_reach_their_own_service() {
    assert_eq!(listener(A1, 81), listener(A2, 80));
    assert_eq!(listener(A2, 81), listener(A1, 80));
    let mut dp = dataplane(true, true);
    // In place of a's port 443 (the data plane is loaded for 3 services).
    let with_81 = vec![
        (ServiceId::new("a", "web"), web_a()),
        (ServiceId::new("a", "web81"), web81_a()),
        (ServiceId::new("b", "web"), web_b()),
    ];
    dp.reconcile(&vips(), &with_81).expect("a's port 81");
    for (vip, port, spec) in [(A1, 80, web_a()), (A2, 80, web_a()), (A1, 81, web81_a()), (A2, 81, web81_a())] {
        let out = run(&mut dp, &syn(vip, 40_000, port), XDP_TX, Reason::ForwardTx);
        assert_eq!(out[0..6], predicted(&spec, vip, VRID_A, 40_000), "{vip}:{port}");
    }
    // Back to one listener per slot: port 80 still served, port 81 no more.
    dp.reconcile(&vips(), &services()).expect("without port 81");
    for vip in [A1, A2] {
        let out = run(&mut dp, &syn(vip, 40_001, 80), XDP_TX, Reason::ForwardTx);
        assert_eq!(out[0..6], predicted(&web_a(), vip, VRID_A, 40_001), "{vip}:80");
        run(&mut dp, &syn(vip, 40_001, 81), XDP_DROP, Reason::DropNoService);
    }
}

#[test]
fn a_port_in_another_listeners_slot_has_no_service() {
    // (B1, 86) folds to the slot (A1, 80) holds alone.
    assert_eq!(listener(B1, 86), listener(A1, 80));
    let mut dp = dataplane(true, true);
    run(&mut dp, &syn(B1, 40_000, 86), XDP_DROP, Reason::DropNoService);
    run(&mut dp, &syn(A1, 40_000, 80), XDP_TX, Reason::ForwardTx);
}
