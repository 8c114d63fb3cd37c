//! BPF_PROG_TEST_RUN fixtures for the XDP program: input frame, expected verdict, exact expected output bytes, and
//! the counter that must move. Needs root (loads BPF programs); nothing is sent on any interface.
mod support;

use std::{collections::HashMap, net::Ipv4Addr};

use lb_common::{FORWARD_DSR, PROTO_TCP, PROTO_UDP, Reason, group_seed};
use support::fixture::{
    BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, ROUTER, ROUTER_MAC, VIP, VRID, XDP_DROP, XDP_PASS, XDP_TX,
    predicted_backend, run,
};
use support::frames::{self, TCP_ACK, TCP_PSH, TCP_SYN};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceId, ServiceSpec};

fn dataplane(active: bool) -> DataPlane {
    // The fixture namespace first: the data plane reads the node's own addresses from it.
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 2, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    dp.set_active(active).expect("set_active");
    dp
}

fn backend(i: usize, healthy: bool) -> BackendSpec {
    BackendSpec { address: BACKENDS[i].0.into(), port: 80, weight: 1, healthy, mac: Some(BACKENDS[i].1), ifindex: 0 }
}

fn dsr_service(healthy: [bool; 3]) -> ServiceSpec {
    ServiceSpec {
        addresses: vec![VIP.into()],
        port: 80,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: (0..3).map(|i| backend(i, healthy[i])).collect(),
    }
}

fn with_web(active: bool) -> DataPlane {
    let mut dp = dataplane(active);
    dp.apply_service("web", &dsr_service([true; 3])).expect("apply_service");
    dp
}

fn client_tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, dport, flags, b"GET / HTTP/1.1\r\n\r\n")
}

fn backend_of(frame: &[u8]) -> usize {
    BACKENDS.iter().position(|(_, mac)| frame[0..6] == mac[..]).expect("destination MAC is one of the backends")
}

#[test]
fn arp_request_for_vip_is_answered_in_place() {
    let mut dp = dataplane(true);
    let request = frames::arp_request(CLIENT_MAC, CLIENT, VIP);
    let out = run(&mut dp, &request, XDP_TX, Reason::ArpReply);
    let expected =
        frames::arp(frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_ARP), 2, NODE_MAC, VIP, CLIENT_MAC, CLIENT);
    assert_eq!(out, expected);
}

#[test]
fn arp_for_another_address_goes_to_the_kernel_untouched() {
    let mut dp = dataplane(true);
    let request = frames::arp_request(CLIENT_MAC, CLIENT, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request);
}

#[test]
fn arp_reply_and_gratuitous_arp_go_to_the_kernel() {
    let mut dp = dataplane(true);
    let reply = frames::arp(frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_ARP), 2, CLIENT_MAC, CLIENT, NODE_MAC, VIP);
    assert_eq!(run(&mut dp, &reply, XDP_PASS, Reason::PassArp), reply);
    let garp = frames::arp(frames::eth([0xff; 6], CLIENT_MAC, frames::ETH_ARP), 1, CLIENT_MAC, VIP, [0xff; 6], VIP);
    assert_eq!(run(&mut dp, &garp, XDP_PASS, Reason::PassArp), garp);
}

#[test]
fn inactive_node_never_answers_for_the_vip() {
    let mut dp = with_web(false);
    let request = frames::arp_request(CLIENT_MAC, CLIENT, VIP);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request);
    let syn = client_tcp(40000, 80, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropInactive), syn);
    let mut ping = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    ping.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 1, 1, b"abcdefgh")));
    assert_eq!(run(&mut dp, &ping, XDP_DROP, Reason::DropInactive), ping);
}

#[test]
fn becoming_active_starts_answering() {
    let mut dp = dataplane(false);
    let request = frames::arp_request(CLIENT_MAC, CLIENT, VIP);
    run(&mut dp, &request, XDP_PASS, Reason::PassArp);
    dp.set_active(true).expect("set_active");
    run(&mut dp, &request, XDP_TX, Reason::ArpReply);
    dp.set_active(false).expect("set_active");
    run(&mut dp, &request, XDP_PASS, Reason::PassArp);
}

#[test]
fn echo_request_to_vip_is_answered_with_valid_checksums() {
    let mut dp = dataplane(true);
    let mut ping = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    ping.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 0x1234, 7, b"0123456789abcdef")));
    let out = run(&mut dp, &ping, XDP_TX, Reason::EchoReply);
    let mut expected = frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_IPV4);
    expected.extend(frames::ipv4(VIP, CLIENT, 1, &frames::icmp_echo(0, 0x1234, 7, b"0123456789abcdef")));
    assert_eq!(out, expected);
    assert_eq!(frames::checksum(&out[34..]), 0, "ICMP checksum verifies");
}

#[test]
fn other_icmp_to_vip_is_dropped() {
    let mut dp = dataplane(true);
    let mut reply = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    reply.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(0, 1, 1, b"x")));
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNoService), reply);
}

#[test]
fn syn_to_service_goes_to_the_maglev_backend_with_only_macs_changed() {
    let mut dp = with_web(true);
    let syn = client_tcp(40001, 80, TCP_SYN);
    let out = run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
    let b = predicted_backend(&dsr_service([true; 3]), 40001);
    let mut expected = syn.clone();
    expected[0..6].copy_from_slice(&BACKENDS[b].1);
    expected[6..12].copy_from_slice(&NODE_MAC);
    assert_eq!(out, expected);
    assert!(frames::ipv4_header_ok(&out) && frames::l4_ok(&out));
    let c = dp.counters().expect("counters");
    assert_eq!(c.services[&"web".into()].packets, 1);
    assert_eq!(c.services[&"web".into()].bytes, syn.len() as u64);
    assert_eq!(c.backends[&("web".into(), BACKENDS[b].0.into(), 80)].packets, 1);
}

#[test]
fn packets_of_one_flow_go_to_the_same_backend() {
    let mut dp = with_web(true);
    let first = backend_of(&run(&mut dp, &client_tcp(40002, 80, TCP_SYN), XDP_TX, Reason::ForwardTx));
    for _ in 0..5 {
        let out = run(&mut dp, &client_tcp(40002, 80, TCP_ACK | TCP_PSH), XDP_TX, Reason::ForwardTx);
        assert_eq!(backend_of(&out), first);
    }
    // Six packets, one new flow, on the backend and its service.
    let c = dp.counters().expect("counters");
    let traffic: Vec<_> = c.backends.values().filter(|t| t.packets > 0).collect();
    assert_eq!(traffic.iter().map(|t| (t.packets, t.new_flows)).collect::<Vec<_>>(), [(6, 1)]);
    assert_eq!(c.services[&ServiceId::from("web")].new_flows, 1);
}

#[test]
fn pinned_flow_survives_a_backend_set_change_while_its_backend_stays() {
    let mut dp = with_web(true);
    // Find flows on backends 0 and 1, then add nothing but take backend 2 out: flows pinned to 0 and 1 stay put.
    let mut pinned = Vec::new();
    for sport in 41000..41060 {
        let b = backend_of(&run(&mut dp, &client_tcp(sport, 80, TCP_SYN), XDP_TX, Reason::ForwardTx));
        if b != 2 {
            pinned.push((sport, b));
        }
    }
    dp.apply_service("web", &dsr_service([true, true, false])).expect("apply");
    for (sport, b) in &pinned {
        let out = run(&mut dp, &client_tcp(*sport, 80, TCP_ACK), XDP_TX, Reason::ForwardTx);
        assert_eq!(backend_of(&out), *b, "flow from port {sport} moved");
    }
}

#[test]
fn flows_pinned_to_an_unhealthy_backend_move_to_a_healthy_one() {
    let mut dp = with_web(true);
    let mut on_zero = Vec::new();
    for sport in 42000..42100 {
        if backend_of(&run(&mut dp, &client_tcp(sport, 80, TCP_SYN), XDP_TX, Reason::ForwardTx)) == 0 {
            on_zero.push(sport);
        }
    }
    assert!(!on_zero.is_empty());
    dp.apply_service("web", &dsr_service([false, true, true])).expect("apply");
    for sport in on_zero {
        let out = run(&mut dp, &client_tcp(sport, 80, TCP_ACK), XDP_TX, Reason::ForwardTx);
        assert_ne!(backend_of(&out), 0);
    }
}

#[test]
fn three_hundred_flows_spread_over_three_backends() {
    let mut dp = with_web(true);
    let mut per_backend: HashMap<usize, u32> = HashMap::new();
    for sport in 20000..20300 {
        let out = run(&mut dp, &client_tcp(sport, 80, TCP_SYN), XDP_TX, Reason::ForwardTx);
        *per_backend.entry(backend_of(&out)).or_default() += 1;
        assert_eq!(backend_of(&out), predicted_backend(&dsr_service([true; 3]), sport));
    }
    for b in 0..3 {
        let n = per_backend.get(&b).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "backend {b} got {n} of 300 flows: {per_backend:?}");
    }
}

#[test]
fn udp_service_is_forwarded() {
    let mut dp = dataplane(true);
    let spec = ServiceSpec { port: 53, protocol: PROTO_UDP, ..dsr_service([true; 3]) };
    let spec =
        ServiceSpec { backends: spec.backends.iter().map(|b| BackendSpec { port: 53, ..b.clone() }).collect(), ..spec };
    dp.apply_service("dns", &spec).expect("apply");
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    f.extend(frames::ipv4(CLIENT, VIP, 17, &frames::udp(CLIENT, VIP, 5353, 53, b"query")));
    let out = run(&mut dp, &f, XDP_TX, Reason::ForwardTx);
    assert_eq!(out[12..], f[12..]);
    backend_of(&out);
}

#[test]
fn non_service_port_goes_to_the_kernel() {
    let mut dp = with_web(true);
    let syn = client_tcp(40003, 8080, TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropNoService), syn);
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    f.extend(frames::ipv4(CLIENT, VIP, 17, &frames::udp(CLIENT, VIP, 5353, 80, b"x")));
    assert_eq!(run(&mut dp, &f, XDP_DROP, Reason::DropNoService), f, "UDP to a TCP service port");
}

#[test]
fn traffic_to_other_addresses_goes_to_the_kernel() {
    let mut dp = with_web(true);
    let other = frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, Ipv4Addr::new(10, 77, 0, 1), 1234, 80, TCP_SYN, b"");
    assert_eq!(run(&mut dp, &other, XDP_PASS, Reason::PassNotVip), other);
}

#[test]
fn service_without_healthy_backend_drops_and_counts() {
    let mut dp = dataplane(true);
    dp.apply_service("web", &dsr_service([false; 3])).expect("apply");
    run(&mut dp, &client_tcp(40004, 80, TCP_SYN), XDP_DROP, Reason::DropNoBackend);
    dp.apply_service("web", &dsr_service([false, true, false])).expect("apply");
    let out = run(&mut dp, &client_tcp(40004, 80, TCP_SYN), XDP_TX, Reason::ForwardTx);
    assert_eq!(backend_of(&out), 1);
}

#[test]
fn backend_without_mac_is_not_used() {
    let mut dp = dataplane(true);
    let mut spec = dsr_service([true; 3]);
    spec.backends[0].mac = None;
    spec.backends[2].mac = None;
    dp.apply_service("web", &spec).expect("apply");
    for sport in 43000..43030 {
        let out = run(&mut dp, &client_tcp(sport, 80, TCP_SYN), XDP_TX, Reason::ForwardTx);
        assert_eq!(backend_of(&out), 1);
    }
}

#[test]
fn removed_service_port_goes_back_to_the_kernel() {
    let mut dp = with_web(true);
    run(&mut dp, &client_tcp(40005, 80, TCP_SYN), XDP_TX, Reason::ForwardTx);
    dp.remove_service("web").expect("remove");
    run(&mut dp, &client_tcp(40005, 80, TCP_SYN), XDP_DROP, Reason::DropNoService);
}

#[test]
fn vlan_tagged_and_other_ipv6_frames_go_to_the_kernel() {
    let mut dp = with_web(true);
    let mut vlan = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_VLAN);
    vlan.extend_from_slice(&[0, 10, 0x08, 0x00]);
    vlan.extend(frames::ipv4(CLIENT, VIP, 6, &frames::tcp(CLIENT, VIP, 1, 80, TCP_SYN, b"")));
    assert_eq!(run(&mut dp, &vlan, XDP_PASS, Reason::PassVlan), vlan);
    let mut v6 = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV6);
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    v6.extend_from_slice(&[0u8; 32]);
    v6.extend_from_slice(&[0u8; 8]);
    // IPv6 not addressed to an IPv6 VIP (there is none here); `tests/ipv6.rs` has the VIP's.
    assert_eq!(run(&mut dp, &v6, XDP_PASS, Reason::PassNotVip), v6);
}

#[test]
fn fragments_and_ip_options_to_the_vip_are_dropped() {
    let mut dp = with_web(true);
    let mut frag = client_tcp(40006, 80, TCP_SYN);
    frag[20] = 0x20; // more fragments
    let c = frames::checksum(&{
        let mut h = frag[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    run(&mut dp, &frag, XDP_DROP, Reason::DropFragment);

    let mut opts = client_tcp(40007, 80, TCP_SYN);
    opts[14] = 0x46; // IHL 6: one word of options
    run(&mut dp, &opts, XDP_DROP, Reason::DropIpOptions);
}

#[test]
fn every_truncation_of_a_real_frame_is_passed_untouched_or_dropped() {
    let mut dp = with_web(true);
    let syn = client_tcp(40008, 80, TCP_SYN);
    let arp = frames::arp_request(CLIENT_MAC, CLIENT, VIP);
    let mut ping = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    ping.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 1, 1, b"")));
    for full in [syn, arp, ping] {
        // BPF_PROG_TEST_RUN needs at least an Ethernet header.
        for len in 14..full.len() {
            let cut = &full[..len];
            let out = dp.test_run(cut).expect("test_run");
            assert!(
                out.action == XDP_PASS || out.action == XDP_DROP,
                "a {len}-byte cut of a {}-byte frame got verdict {}",
                full.len(),
                out.action
            );
            assert_eq!(out.frame, cut, "a {len}-byte cut was modified");
        }
    }
    let c = dp.counters().expect("counters");
    assert!(c.reason(Reason::PassTruncated) > 0);
    assert_eq!(c.reason(Reason::ForwardTx) + c.reason(Reason::ArpReply) + c.reason(Reason::EchoReply), 0);
}

#[test]
fn ip_total_length_beyond_the_frame_is_not_forwarded() {
    let mut dp = with_web(true);
    let mut syn = client_tcp(40009, 80, TCP_SYN);
    let claimed = (syn.len() - 14 + 100) as u16;
    syn[16..18].copy_from_slice(&claimed.to_be_bytes());
    fix_ip_checksum(&mut syn);
    assert_eq!(run(&mut dp, &syn, XDP_PASS, Reason::PassTruncated), syn);
}

#[test]
fn a_dsr_backend_behind_another_interface_gets_frames_from_that_interfaces_mac() {
    let mut dp = dataplane(true);
    let wan = support::fixture::ifindex("wan");
    let far = BackendSpec {
        address: Ipv4Addr::new(192, 0, 2, 21).into(),
        port: 80,
        weight: 1,
        healthy: true,
        mac: Some([0x02, 0, 0, 0, 0, 0x77]),
        ifindex: wan,
    };
    let spec = ServiceSpec {
        addresses: vec![VIP.into()],
        port: 80,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: vec![far],
    };
    dp.apply_service("far", &spec).expect("far");
    let syn = client_tcp(40100, 80, TCP_SYN);
    let out = run(&mut dp, &syn, support::fixture::XDP_REDIRECT, Reason::ForwardRedirect);
    let mut expected = syn.clone();
    expected[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    expected[6..12].copy_from_slice(&support::fixture::WAN_MAC);
    assert_eq!(out, expected, "only the MACs change: to the backend, from wan's MAC");
}

/// "Fragmentation needed" (RFC 792 type 3 code 4) with a next-hop MTU of 1400 (RFC 1191), from a router on the way
/// to the client, about a backend's reply (`VIP:80 -> client:sport`, which a DSR backend sends from the VIP).
fn frag_needed_about_reply(sport: u16) -> Vec<u8> {
    let reply =
        frames::tcp_frame(CLIENT_MAC, NODE_MAC, VIP, CLIENT, 80, sport, TCP_ACK | TCP_PSH, b"HTTP/1.1 200 OK\r\n");
    let quote = &reply[14..14 + 20 + 20 + 8];
    frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, 3, 4, [0, 0, 0x05, 0x78], quote)
}

#[test]
fn frag_needed_about_a_dsr_backends_reply_goes_to_that_backend_unchanged() {
    let mut dp = with_web(true);
    let b = backend_of(&run(&mut dp, &client_tcp(40110, 80, TCP_SYN), XDP_TX, Reason::ForwardTx));
    // The backend holds the VIP: it takes the error as it is and lowers its path MTU towards the client.
    let error = frag_needed_about_reply(40110);
    let out = run(&mut dp, &error, XDP_TX, Reason::ForwardTx);
    let mut expected = error.clone();
    expected[0..6].copy_from_slice(&BACKENDS[b].1);
    expected[6..12].copy_from_slice(&NODE_MAC);
    assert_eq!(out, expected, "only the MACs change: to the flow's backend, from the node's MAC");
    assert!(frames::ipv4_header_ok(&out) && frames::icmp_ok(&out));
}

#[test]
fn an_icmp_error_about_a_dsr_flow_whose_pin_no_longer_holds_is_dropped() {
    let mut dp = with_web(true);
    // A flow never seen: nobody to tell.
    let unknown = frag_needed_about_reply(40111);
    assert_eq!(run(&mut dp, &unknown, XDP_DROP, Reason::DropNoService), unknown);
    // A flow whose backend became unhealthy: its next packet goes elsewhere, and so does nothing of the old one's.
    let b = backend_of(&run(&mut dp, &client_tcp(40112, 80, TCP_SYN), XDP_TX, Reason::ForwardTx));
    let mut healthy = [true; 3];
    healthy[b] = false;
    dp.apply_service("web", &dsr_service(healthy)).expect("apply");
    let error = frag_needed_about_reply(40112);
    assert_eq!(run(&mut dp, &error, XDP_DROP, Reason::DropNoService), error);
}

#[test]
fn a_dsr_flow_from_the_nodes_own_address_creates_no_state() {
    let mut dp = with_web(true);
    let own = frames::tcp_frame(NODE_MAC, CLIENT_MAC, support::fixture::NODE_IP, VIP, 40101, 80, TCP_SYN, b"");
    assert_eq!(run(&mut dp, &own, XDP_DROP, Reason::DropMartianSource), own);
    let own_ack = frames::tcp_frame(NODE_MAC, CLIENT_MAC, support::fixture::NODE_IP, VIP, 40101, 80, TCP_ACK, b"");
    assert_eq!(run(&mut dp, &own_ack, XDP_DROP, Reason::DropMartianSource), own_ack);
}

/// Recomputes the IPv4 header checksum of an Ethernet frame after a test changed a header field.
fn fix_ip_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

fn ping_from(src_mac: [u8; 6], src: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut ping = frames::eth(NODE_MAC, src_mac, frames::ETH_IPV4);
    ping.extend(frames::ipv4(src, VIP, 1, &frames::icmp_echo(8, 0x4242, 3, payload)));
    ping
}

fn pong_to(dst_mac: [u8; 6], dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut pong = frames::eth(dst_mac, NODE_MAC, frames::ETH_IPV4);
    pong.extend(frames::ipv4(VIP, dst, 1, &frames::icmp_echo(0, 0x4242, 3, payload)));
    pong
}

// ----- frames the random-frame run (lb-user/tests/frames) found mishandled -----

#[test]
fn an_echo_request_whose_icmp_checksum_does_not_verify_is_not_answered() {
    let mut dp = dataplane(true);
    let mut ping = ping_from(CLIENT_MAC, CLIENT, b"0123456789abcdef");
    ping[36] ^= 0x01;
    assert_eq!(run(&mut dp, &ping, XDP_DROP, Reason::DropIcmpChecksum), ping);
    // One wrong byte in the data, the checksum as it was: not answered either.
    let mut ping = ping_from(CLIENT_MAC, CLIENT, b"0123456789abcdef");
    ping[45] ^= 0x40;
    assert_eq!(run(&mut dp, &ping, XDP_DROP, Reason::DropIcmpChecksum), ping);
}

#[test]
fn echo_requests_of_every_length_up_to_the_bound_are_verified_and_answered() {
    let mut dp = dataplane(true);
    // Every remainder of the 8-byte summing loop, a full-size ping at MTU 1500 (`ping -s 1472`), the longest.
    for len in (0..=17).chain([1472, lb_common::ECHO_MAX_LEN - 8]) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let out = run(&mut dp, &ping_from(CLIENT_MAC, CLIENT, &payload), XDP_TX, Reason::EchoReply);
        assert_eq!(out, pong_to(CLIENT_MAC, CLIENT, &payload), "payload of {len} bytes");
        assert_eq!(frames::checksum(&out[34..]), 0, "ICMP checksum of the reply to {len} bytes");
    }
    let payload = vec![0x5a; lb_common::ECHO_MAX_LEN - 7];
    let ping = ping_from(CLIENT_MAC, CLIENT, &payload);
    assert_eq!(run(&mut dp, &ping, XDP_DROP, Reason::DropEchoTooLong), ping);
}

#[test]
fn the_reply_to_an_echo_request_of_all_zeros_carries_checksum_ffff() {
    // Identifier, sequence number and data all zero: the reply's words sum to zero, and only 0xffff verifies
    // (RFC 1624's incremental update gives 0x0000 there). Found by the random-frame run.
    let mut dp = dataplane(true);
    let mut ping = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    ping.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 0, 0, &[0; 8])));
    let out = run(&mut dp, &ping, XDP_TX, Reason::EchoReply);
    let mut pong = frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_IPV4);
    pong.extend(frames::ipv4(VIP, CLIENT, 1, &frames::icmp_echo(0, 0, 0, &[0; 8])));
    assert_eq!(out[36..38], [0xff, 0xff]);
    assert_eq!(out, pong);
    assert!(frames::icmp_ok(&out));
}

#[test]
fn an_echo_request_from_a_mac_no_host_has_is_not_answered() {
    let mut dp = dataplane(true);
    for mac in [[0; 6], [0xff; 6], [0x01, 0, 0x5e, 0, 0, 1], NODE_MAC] {
        let ping = ping_from(mac, CLIENT, b"abcdefgh");
        assert_eq!(run(&mut dp, &ping, XDP_DROP, Reason::DropMartianSource), ping, "from {mac:02x?}");
    }
    // A request sent to the broadcast MAC is answered from the node's MAC, to the asker's.
    let mut ping = ping_from(CLIENT_MAC, CLIENT, b"abcdefgh");
    ping[..6].copy_from_slice(&[0xff; 6]);
    assert_eq!(run(&mut dp, &ping, XDP_TX, Reason::EchoReply), pong_to(CLIENT_MAC, CLIENT, b"abcdefgh"));
}

#[test]
fn a_packet_to_the_vip_whose_ip_header_checksum_does_not_verify_is_dropped() {
    let mut dp = with_web(true);
    let mut syn = client_tcp(40100, 80, TCP_SYN);
    syn[24] ^= 0x08;
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropIpChecksum), syn);
    let mut ping = ping_from(CLIENT_MAC, CLIENT, b"abcdefgh");
    ping[22] = 63;
    assert_eq!(run(&mut dp, &ping, XDP_DROP, Reason::DropIpChecksum), ping);
}

#[test]
fn tcp_and_udp_headers_that_do_not_fit_the_packet_are_dropped_not_forwarded() {
    let mut dp = with_web(true);
    // TCP data offset: 15 words (60 bytes) in a 38-byte segment, and 4 words (less than the fixed header).
    for offset in [0xf0, 0x40] {
        let mut syn = client_tcp(40101, 80, TCP_SYN);
        syn[46] = offset;
        assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropMalformedL4), syn, "data offset byte {offset:#x}");
    }
    // UDP length beyond the IP payload, and below the UDP header.
    for length in [200u16, 7] {
        let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
        f.extend(frames::ipv4(CLIENT, VIP, 17, &frames::udp(CLIENT, VIP, 40102, 80, b"query")));
        f[38..40].copy_from_slice(&length.to_be_bytes());
        assert_eq!(run(&mut dp, &f, XDP_DROP, Reason::DropMalformedL4), f, "UDP length {length}");
    }
    // A data offset that covers options inside the packet is fine.
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    f.extend(frames::ipv4(CLIENT, VIP, 6, &frames::tcp(CLIENT, VIP, 40103, 80, TCP_SYN, &[1, 1, 1, 0])));
    f[46] = 0x60;
    run(&mut dp, &f, XDP_TX, Reason::ForwardTx);
}

#[test]
fn arp_requests_for_the_vip_from_senders_no_client_can_be_go_to_the_kernel() {
    let mut dp = dataplane(true);
    let askers = [
        (CLIENT_MAC, Ipv4Addr::new(240, 0, 0, 1)),
        (CLIENT_MAC, Ipv4Addr::new(127, 0, 0, 1)),
        (CLIENT_MAC, Ipv4Addr::new(224, 0, 0, 18)),
        (CLIENT_MAC, Ipv4Addr::BROADCAST),
        (CLIENT_MAC, support::fixture::NODE_IP),
        ([0; 6], CLIENT),
        ([0x01, 0, 0x5e, 0, 0, 0x12], CLIENT),
        (NODE_MAC, CLIENT),
    ];
    for (sha, spa) in askers {
        let request = frames::arp_request(sha, spa, VIP);
        assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassArp), request, "asked by {spa} from {sha:02x?}");
    }
    // An address conflict probe (RFC 5227: sender 0.0.0.0) is answered, as the owner of an address must.
    let probe = frames::arp_request(CLIENT_MAC, Ipv4Addr::UNSPECIFIED, VIP);
    let out = run(&mut dp, &probe, XDP_TX, Reason::ArpReply);
    let expected = frames::arp(
        frames::eth(CLIENT_MAC, NODE_MAC, frames::ETH_ARP),
        2,
        NODE_MAC,
        VIP,
        CLIENT_MAC,
        Ipv4Addr::UNSPECIFIED,
    );
    assert_eq!(out, expected);
}
