//! BPF_PROG_TEST_RUN fixtures for IPv6 VIPs: Neighbor Solicitations answered with Neighbor Advertisements (to the
//! solicited-node group and unicast, duplicate address detection), ICMPv6 echo, nothing answered by a backup or a
//! node whose agent stopped beating, and what happens to malformed, truncated and extension-header packets and to
//! TCP/UDP to a port without a service. Exact output bytes; checksums computed here. Needs root.
mod support;

use std::net::Ipv6Addr;

use lb_common::{FAMILY_IPV6, Reason, router_slot};
use support::fixture::{CLIENT_MAC, NODE_MAC, XDP_DROP, XDP_PASS, XDP_TX, run};
use support::frames::{self, ETH_IPV6};
use xvip::dataplane::{DataPlane, LoadOptions, Vip6Spec, monotonic_ns};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);
const CLIENT6_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The IPv6 router of instance slot 0.
const ROUTER6: u32 = router_slot(0, FAMILY_IPV6);
const HBH: u8 = 0;
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;

fn dataplane(active: bool) -> DataPlane {
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: 0, interface: None }]).expect("set_vips6");
    dp.set_router_active(ROUTER6, active).expect("set_router_active");
    dp
}

/// Ethernet + IPv6 + `message` (ICMPv6, its checksum computed here).
fn icmp6_frame(dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, message: Vec<u8>) -> Vec<u8> {
    let mut f = frames::eth(dst_mac, CLIENT_MAC, ETH_IPV6);
    f.extend(frames::ipv6(src, dst, 58, hop_limit, &frames::icmp6(src, dst, message)));
    f
}

/// A solicitation for `target` from `src` to `target`'s solicited-node group, with the client's MAC as source
/// link-layer address.
fn multicast_ns(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let (group, group_mac) = frames::solicited_node(target);
    icmp6_frame(group_mac, src, group, 255, frames::neighbor_solicitation(target, Some(CLIENT_MAC)))
}

/// A solicitation for the VIP sent to the VIP itself (reachability confirmation).
fn unicast_ns(slla: Option<[u8; 6]>) -> Vec<u8> {
    icmp6_frame(NODE_MAC, CLIENT6, VIP6, 255, frames::neighbor_solicitation(VIP6, slla))
}

/// The advertisement the node must send to `to` at `to_mac`: from the VIP, hop limit 255, `flags`, the node's MAC
/// as target link-layer address.
fn advertisement(to_mac: [u8; 6], to: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut f = frames::eth(to_mac, NODE_MAC, ETH_IPV6);
    let na = frames::icmp6(VIP6, to, frames::neighbor_advertisement(VIP6, flags, NODE_MAC));
    f.extend(frames::ipv6(VIP6, to, 58, 255, &na));
    f
}

fn echo_request(src: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    icmp6_frame(NODE_MAC, src, VIP6, 64, frames::icmp6_echo(128, 0x1234, 7, payload))
}

/// `frame` with its IPv6 header's next header set to `ext` and an 8-byte extension header (next header 58) put in
/// front of the ICMPv6 message.
fn behind_extension(frame: &[u8], ext: u8) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    let len = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f[20] = ext;
    // Padding options (PadN) for hop-by-hop and destination options; a first, unfragmented fragment otherwise.
    f.extend_from_slice(&if ext == FRAGMENT { [58, 0, 0, 0, 0, 0, 0, 1] } else { [58, 0, 1, 4, 0, 0, 0, 0] });
    f.extend_from_slice(&frame[54..]);
    f
}

#[test]
fn a_solicitation_to_the_solicited_node_group_is_answered() {
    let mut dp = dataplane(true);
    let out = run(&mut dp, &multicast_ns(CLIENT6, VIP6), XDP_TX, Reason::NaReply);
    assert_eq!(out, advertisement(CLIENT_MAC, CLIENT6, 0x60));
    assert!(frames::icmp6_ok(&out), "the advertisement's checksum verifies");
    let counters = dp.counters().expect("counters");
    assert_eq!(counters.router_reason(ROUTER6, Reason::NaReply), 1, "counted for the IPv6 router");
}

#[test]
fn a_solicitation_from_a_link_local_address_is_answered_there() {
    let mut dp = dataplane(true);
    let out = run(&mut dp, &multicast_ns(CLIENT6_LL, VIP6), XDP_TX, Reason::NaReply);
    assert_eq!(out, advertisement(CLIENT_MAC, CLIENT6_LL, 0x60));
}

#[test]
fn a_unicast_solicitation_is_answered_with_or_without_the_askers_address() {
    let mut dp = dataplane(true);
    let expected = advertisement(CLIENT_MAC, CLIENT6, 0x60);
    assert_eq!(run(&mut dp, &unicast_ns(Some(CLIENT_MAC)), XDP_TX, Reason::NaReply), expected);
    // 24 bytes of solicitation: the frame grows by the 8 bytes of the target link-layer address option.
    let short = unicast_ns(None);
    assert_eq!(short.len() + 8, expected.len());
    assert_eq!(run(&mut dp, &short, XDP_TX, Reason::NaReply), expected);
}

#[test]
fn duplicate_address_detection_for_the_vip_is_answered_to_all_nodes() {
    let mut dp = dataplane(true);
    let (group, group_mac) = frames::solicited_node(VIP6);
    // From the unspecified address, with a nonce option (RFC 7527) instead of a source link-layer address.
    let mut ns = frames::neighbor_solicitation(VIP6, None);
    ns.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    let dad = icmp6_frame(group_mac, Ipv6Addr::UNSPECIFIED, group, 255, ns);
    let out = run(&mut dp, &dad, XDP_TX, Reason::NaReply);
    assert_eq!(out, advertisement([0x33, 0x33, 0, 0, 0, 1], ALL_NODES, 0x20), "Override only, to ff02::1");
    assert!(frames::icmp6_ok(&out));
    // With a source link-layer address it is not a valid solicitation (RFC 4861 §7.1.1).
    let bad = icmp6_frame(
        group_mac,
        Ipv6Addr::UNSPECIFIED,
        group,
        255,
        frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC)),
    );
    assert_eq!(run(&mut dp, &bad, XDP_PASS, Reason::PassNd), bad);
}

#[test]
fn solicitations_for_other_addresses_go_to_the_kernel_untouched() {
    let mut dp = dataplane(true);
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
    let ns = multicast_ns(CLIENT6, other);
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNd), ns);
    // The VIP as target, but sent to another address's group.
    let (group, group_mac) = frames::solicited_node(other);
    let wrong_group =
        icmp6_frame(group_mac, CLIENT6, group, 255, frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC)));
    assert_eq!(run(&mut dp, &wrong_group, XDP_PASS, Reason::PassNd), wrong_group);
}

#[test]
fn a_backup_answers_nothing() {
    let mut dp = dataplane(false);
    let ns = multicast_ns(CLIENT6, VIP6);
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNd), ns);
    // Addressed to the VIP: dropped, as for IPv4 (the kernel does not own it).
    let unicast = unicast_ns(Some(CLIENT_MAC));
    assert_eq!(run(&mut dp, &unicast, XDP_DROP, Reason::DropInactive), unicast);
    let echo = echo_request(CLIENT6, b"abcdefgh");
    assert_eq!(run(&mut dp, &echo, XDP_DROP, Reason::DropInactive), echo);
    let counters = dp.counters().expect("counters");
    assert_eq!(counters.router_reason(ROUTER6, Reason::PassNd), 1);
    // Becoming active starts answering; the IPv4 router's flag is another one.
    dp.set_router_active(0, true).expect("IPv4 router active");
    run(&mut dp, &ns, XDP_PASS, Reason::PassNd);
    dp.set_router_active(ROUTER6, true).expect("IPv6 router active");
    run(&mut dp, &ns, XDP_TX, Reason::NaReply);
}

#[test]
fn a_node_whose_agent_stopped_beating_answers_nothing() {
    let mut dp = dataplane(true);
    let now = monotonic_ns().expect("clock");
    dp.set_heartbeat(now, 10_000_000_000).expect("beat");
    run(&mut dp, &multicast_ns(CLIENT6, VIP6), XDP_TX, Reason::NaReply);
    dp.set_heartbeat(now - 2_000_000_000, 300_000_000).expect("stale");
    let ns = multicast_ns(CLIENT6, VIP6);
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNd), ns);
    let echo = echo_request(CLIENT6, b"abcdefgh");
    assert_eq!(run(&mut dp, &echo, XDP_DROP, Reason::DropInactive), echo);
}

#[test]
fn a_solicitation_with_a_hop_limit_below_255_is_not_answered() {
    let mut dp = dataplane(true);
    let (group, group_mac) = frames::solicited_node(VIP6);
    let ns = icmp6_frame(group_mac, CLIENT6, group, 254, frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC)));
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNd), ns);
    let unicast = icmp6_frame(NODE_MAC, CLIENT6, VIP6, 254, frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC)));
    assert_eq!(run(&mut dp, &unicast, XDP_DROP, Reason::DropNd), unicast);
}

#[test]
fn invalid_solicitations_are_not_answered() {
    let mut dp = dataplane(true);
    let (group, group_mac) = frames::solicited_node(VIP6);
    let mut bad_checksum = multicast_ns(CLIENT6, VIP6);
    bad_checksum[57] ^= 1;
    let zero_length_option = {
        let mut m = frames::neighbor_solicitation(VIP6, None);
        m.extend_from_slice(&[1, 0, 2, 0, 0, 0, 0, 0x10]);
        icmp6_frame(group_mac, CLIENT6, group, 255, m)
    };
    let option_too_long = {
        let mut m = frames::neighbor_solicitation(VIP6, None);
        m.extend_from_slice(&[1, 2, 2, 0, 0, 0, 0, 0x10]);
        icmp6_frame(group_mac, CLIENT6, group, 255, m)
    };
    let code_1 = {
        let mut m = frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC));
        m[1] = 1;
        icmp6_frame(group_mac, CLIENT6, group, 255, m)
    };
    let too_long = {
        let mut m = frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC));
        m.extend_from_slice(&[14, 5].iter().copied().chain([0u8; 38]).collect::<Vec<_>>());
        icmp6_frame(group_mac, CLIENT6, group, 255, m)
    };
    // Not IPv6 at all (version 0): the kernel's.
    let mut version_0 = multicast_ns(CLIENT6, VIP6);
    version_0[14] = 0;
    assert_eq!(run(&mut dp, &version_0, XDP_PASS, Reason::PassNotVip), version_0);
    let from_the_vip = multicast_ns(VIP6, VIP6);
    let from_multicast_mac = {
        let mut f = multicast_ns(CLIENT6, VIP6);
        f[6] = 0x03;
        f
    };
    for (what, frame) in [
        ("bad checksum", bad_checksum),
        ("option of length 0", zero_length_option),
        ("option beyond the message", option_too_long),
        ("code 1", code_1),
        ("72 bytes", too_long),
        ("from the VIP", from_the_vip),
        ("from a multicast MAC", from_multicast_mac),
    ] {
        assert_eq!(run(&mut dp, &frame, XDP_PASS, Reason::PassNd), frame, "{what}");
    }
    let mut unicast_bad_checksum = unicast_ns(Some(CLIENT_MAC));
    unicast_bad_checksum[57] ^= 1;
    assert_eq!(run(&mut dp, &unicast_bad_checksum, XDP_DROP, Reason::DropNd), unicast_bad_checksum);
    // Sent to the VIP but asking for another address.
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
    let elsewhere = icmp6_frame(NODE_MAC, CLIENT6, VIP6, 255, frames::neighbor_solicitation(other, Some(CLIENT_MAC)));
    assert_eq!(run(&mut dp, &elsewhere, XDP_DROP, Reason::DropNd), elsewhere);
}

#[test]
fn an_echo_request_to_the_vip_is_answered() {
    let mut dp = dataplane(true);
    let payload: Vec<u8> = (0..=200u8).collect();
    let request = echo_request(CLIENT6, &payload);
    let out = run(&mut dp, &request, XDP_TX, Reason::EchoReply);
    let mut expected = frames::eth(CLIENT_MAC, NODE_MAC, ETH_IPV6);
    let reply = frames::icmp6(VIP6, CLIENT6, frames::icmp6_echo(129, 0x1234, 7, &payload));
    expected.extend(frames::ipv6(VIP6, CLIENT6, 58, 64, &reply));
    assert_eq!(out, expected);
    assert!(frames::icmp6_ok(&out), "the reply's checksum verifies");
    // Odd lengths too.
    let out = run(&mut dp, &echo_request(CLIENT6_LL, b"odd"), XDP_TX, Reason::EchoReply);
    assert!(frames::icmp6_ok(&out));
}

#[test]
fn echo_requests_that_a_host_would_not_answer_are_dropped() {
    let mut dp = dataplane(true);
    let mut bad = echo_request(CLIENT6, b"abcdefgh");
    bad[60] ^= 0x40;
    assert_eq!(run(&mut dp, &bad, XDP_DROP, Reason::DropIcmpChecksum), bad);
    let mut from_multicast_mac = echo_request(CLIENT6, b"abcdefgh");
    from_multicast_mac[6] = 0x01;
    assert_eq!(run(&mut dp, &from_multicast_mac, XDP_DROP, Reason::DropMartianSource), from_multicast_mac);
    let loopback = echo_request(Ipv6Addr::LOCALHOST, b"abcdefgh");
    assert_eq!(run(&mut dp, &loopback, XDP_DROP, Reason::DropMartianSource), loopback);
    let from_vip = echo_request(VIP6, b"abcdefgh");
    assert_eq!(run(&mut dp, &from_vip, XDP_DROP, Reason::DropMartianSource), from_vip);
    let long = echo_request(CLIENT6, &vec![7u8; 3100]);
    assert_eq!(run(&mut dp, &long, XDP_DROP, Reason::DropEchoTooLong), long);
}

/// The node's own IPv6 addresses are sources no client can have, as its IPv4 ones are: a ping to the VIP from one
/// is dropped, a solicitation for the VIP from one is left to the kernel. Its link-local addresses are not refused:
/// another host may hold the same one on another link (here the client's, which the node holds on `wan`).
#[test]
fn the_nodes_own_ipv6_addresses_are_martian_sources() {
    let own = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
    support::fixture::ip(&format!("-6 addr add {own}/64 dev lan nodad"));
    support::fixture::ip(&format!("-6 addr add {CLIENT6_LL}/64 dev wan nodad"));
    // Writing the IPv6 VIPs reads the node's addresses.
    let mut dp = dataplane(true);
    let echo = echo_request(own, b"abcdefgh");
    assert_eq!(run(&mut dp, &echo, XDP_DROP, Reason::DropMartianSource), echo);
    let ns = multicast_ns(own, VIP6);
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNd), ns);
    run(&mut dp, &echo_request(CLIENT6_LL, b"abcdefgh"), XDP_TX, Reason::EchoReply);
    run(&mut dp, &multicast_ns(CLIENT6, VIP6), XDP_TX, Reason::NaReply);
    // An address the node no longer has is a client's again once the data plane is written.
    support::fixture::ip(&format!("-6 addr del {own}/64 dev lan"));
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");
    run(&mut dp, &echo_request(own, b"abcdefgh"), XDP_TX, Reason::EchoReply);
}

#[test]
fn truncated_ipv6_goes_to_the_kernel() {
    let mut dp = dataplane(true);
    let request = echo_request(CLIENT6, b"abcdefgh");
    // Shorter than the IPv6 header.
    let header_cut = request[..40].to_vec();
    assert_eq!(run(&mut dp, &header_cut, XDP_PASS, Reason::PassTruncated), header_cut);
    // The payload length claims more than the frame holds.
    let body_cut = request[..request.len() - 4].to_vec();
    assert_eq!(run(&mut dp, &body_cut, XDP_PASS, Reason::PassTruncated), body_cut);
    // Less than an ICMPv6 header.
    let mut tiny = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    tiny.extend(frames::ipv6(CLIENT6, VIP6, 58, 64, &[128, 0, 0, 0]));
    assert_eq!(run(&mut dp, &tiny, XDP_PASS, Reason::PassTruncated), tiny);
    // A solicitation to the group cut inside its target.
    let ns = multicast_ns(CLIENT6, VIP6);
    let ns_cut = ns[..70].to_vec();
    assert_eq!(run(&mut dp, &ns_cut, XDP_PASS, Reason::PassTruncated), ns_cut);
    let ns_short_payload = {
        let mut f = ns.clone();
        f.truncate(ns.len() - 8);
        f
    };
    assert_eq!(run(&mut dp, &ns_short_payload, XDP_PASS, Reason::PassTruncated), ns_short_payload);
}

#[test]
fn extension_headers_in_front_of_icmpv6_to_the_vip_are_dropped() {
    let mut dp = dataplane(true);
    let echo = echo_request(CLIENT6, b"abcdefgh");
    for (ext, reason) in
        [(HBH, Reason::DropIpOptions), (DEST_OPTIONS, Reason::DropIpOptions), (FRAGMENT, Reason::DropFragment)]
    {
        let frame = behind_extension(&echo, ext);
        assert_eq!(run(&mut dp, &frame, XDP_DROP, reason), frame, "extension header {ext}");
    }
    let ns = behind_extension(&unicast_ns(Some(CLIENT_MAC)), HBH);
    assert_eq!(run(&mut dp, &ns, XDP_DROP, Reason::DropIpOptions), ns);
    // To the group: not a solicitation the program handles, the kernel's.
    let ns = behind_extension(&multicast_ns(CLIENT6, VIP6), HBH);
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNotVip), ns);
}

#[test]
fn other_ipv6_traffic_to_the_vip_is_dropped_and_counted() {
    let mut dp = dataplane(true);
    // TCP and UDP to a port without a service (forwarding: ipv6_forward.rs); a UDP length of 0 is malformed.
    for (next, reason) in [(6, Reason::DropNoService), (17, Reason::DropMalformedL4), (47, Reason::DropNoService)] {
        let mut f = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
        f.extend(frames::ipv6(
            CLIENT6,
            VIP6,
            next,
            64,
            &[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 2, 0xff, 0xff, 0, 0, 0, 0],
        ));
        assert_eq!(run(&mut dp, &f, XDP_DROP, reason), f, "next header {next}");
    }
    // An advertisement to the VIP: not something it answers.
    let na = icmp6_frame(NODE_MAC, CLIENT6, VIP6, 255, frames::neighbor_advertisement(CLIENT6, 0x60, CLIENT_MAC));
    assert_eq!(run(&mut dp, &na, XDP_DROP, Reason::DropNoService), na);
    // Version 4 in an IPv6 frame.
    let mut v4 = echo_request(CLIENT6, b"abcdefgh");
    v4[14] = 0x40;
    assert_eq!(run(&mut dp, &v4, XDP_DROP, Reason::DropIpOptions), v4);
}

#[test]
fn ipv6_not_for_a_vip_goes_to_the_kernel() {
    let mut dp = dataplane(true);
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
    let to_other = icmp6_frame(NODE_MAC, CLIENT6, other, 64, frames::icmp6_echo(128, 1, 1, b"x"));
    assert_eq!(run(&mut dp, &to_other, XDP_PASS, Reason::PassNotVip), to_other);
    let to_all = icmp6_frame([0x33, 0x33, 0, 0, 0, 1], CLIENT6, ALL_NODES, 64, frames::icmp6_echo(128, 1, 1, b"x"));
    assert_eq!(run(&mut dp, &to_all, XDP_PASS, Reason::PassNotVip), to_all);
    let lldp = frames::eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], CLIENT_MAC, 0x88cc);
    assert_eq!(run(&mut dp, &lldp, XDP_PASS, Reason::PassNotIpv4), lldp);
}

#[test]
fn removed_ipv6_vips_are_no_longer_answered_and_bad_ones_are_refused() {
    let mut dp = dataplane(true);
    run(&mut dp, &multicast_ns(CLIENT6, VIP6), XDP_TX, Reason::NaReply);
    for bad in [Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST, ALL_NODES, "::ffff:10.0.0.1".parse().expect("address")] {
        let refused = dp.set_vips6(&[Vip6Spec { address: bad, router: ROUTER6, hash_seed: 0, interface: None }]);
        assert!(refused.is_err(), "{bad} refused");
    }
    assert_eq!(dp.vips6().len(), 1, "a refused set changes nothing");
    dp.set_vips6(&[]).expect("remove");
    assert!(dp.vips6().is_empty());
    let ns = multicast_ns(CLIENT6, VIP6);
    assert_eq!(run(&mut dp, &ns, XDP_PASS, Reason::PassNd), ns);
    let echo = echo_request(CLIENT6, b"abcdefgh");
    assert_eq!(run(&mut dp, &echo, XDP_PASS, Reason::PassNotVip), echo);
}

/// 2001:db8:77::1:251 folds to `VIP6`'s `VIP6_SLOTS` slot (`lb_common::vip6_fold` xors the address's words:
/// 0x0001 ^ 0x0251 = 0x0250), and so does 2001:db8:77::2:252.
const SHARES_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 1, 0x251);
const ALSO_IN_VIP6S_SLOT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 2, 0x252);

/// The advertisement for `vip` the node must send to `CLIENT6` (as [`advertisement`]).
fn advertisement_for(vip: Ipv6Addr) -> Vec<u8> {
    let mut f = frames::eth(CLIENT_MAC, NODE_MAC, ETH_IPV6);
    let na = frames::icmp6(vip, CLIENT6, frames::neighbor_advertisement(vip, 0x60, NODE_MAC));
    f.extend(frames::ipv6(vip, CLIENT6, 58, 255, &na));
    f
}

#[test]
fn ipv6_vips_sharing_a_slot_are_each_answered_and_an_address_in_one_vips_slot_is_not_a_vip() {
    let slot = |a: Ipv6Addr| lb_common::vip6_fold(lb_common::ipv6_halves(&a.octets()));
    assert_eq!(slot(SHARES_VIP6), slot(VIP6));
    assert_eq!(slot(ALSO_IN_VIP6S_SLOT), slot(VIP6));
    let mut dp = dataplane(true);
    let both = [VIP6, SHARES_VIP6].map(|address| Vip6Spec { address, router: ROUTER6, hash_seed: 0, interface: None });
    dp.set_vips6(&both).expect("two VIPs in one slot");
    for vip in [VIP6, SHARES_VIP6] {
        let out = run(&mut dp, &multicast_ns(CLIENT6, vip), XDP_TX, Reason::NaReply);
        assert_eq!(out, advertisement_for(vip), "{vip} shares its slot and is answered");
    }
    let request = multicast_ns(CLIENT6, ALSO_IN_VIP6S_SLOT);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassNd), request, "not a VIP: the hash decides");
    // Back to one VIP in the slot: VIP6 still answered, its former neighbour and another address folding there not.
    dp.set_vips6(&both[..1]).expect("VIP6 alone");
    assert_eq!(run(&mut dp, &multicast_ns(CLIENT6, VIP6), XDP_TX, Reason::NaReply), advertisement_for(VIP6));
    for other in [SHARES_VIP6, ALSO_IN_VIP6S_SLOT] {
        let request = multicast_ns(CLIENT6, other);
        assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassNd), request, "{other}");
    }
    // And a VIP that moves to another router is answered by that router's flag, read from its new element.
    let moved = Vip6Spec { address: VIP6, router: router_slot(1, FAMILY_IPV6), hash_seed: 0, interface: None };
    dp.set_vips6(&[moved]).expect("VIP6 to another router");
    let request = multicast_ns(CLIENT6, VIP6);
    assert_eq!(run(&mut dp, &request, XDP_PASS, Reason::PassNd), request, "its new router is not active");
}
