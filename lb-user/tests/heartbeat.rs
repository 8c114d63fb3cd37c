//! The data plane's dead-man switch, with BPF_PROG_TEST_RUN: the program answers for the VIP (ARP, ping,
//! forwarding) only while the agent's heartbeat is younger than its limit. Needs root.
mod support;

use lb_common::{FORWARD_DSR, Heartbeat, PROTO_TCP, Reason, group_seed};
use support::fixture::{self, BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, VRID, XDP_DROP, XDP_PASS, XDP_TX, run};
use support::frames::{self, TCP_SYN};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec, monotonic_ns};

const SECOND: u64 = 1_000_000_000;

fn active_node() -> DataPlane {
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    dp.set_active(true).expect("set_active");
    dp.apply_service("web", &fixture::service(80, PROTO_TCP, FORWARD_DSR, 80)).expect("service");
    dp
}

fn arp() -> Vec<u8> {
    frames::arp_request(CLIENT_MAC, CLIENT, VIP)
}

fn syn() -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40_000, 80, TCP_SYN, b"")
}

#[test]
fn a_fresh_heartbeat_answers_a_stale_one_does_not() {
    let mut dp = active_node();
    let now = monotonic_ns().expect("clock");
    dp.set_heartbeat(now, 10 * SECOND).expect("beat");
    run(&mut dp, &arp(), XDP_TX, Reason::ArpReply);
    run(&mut dp, &syn(), XDP_TX, Reason::ForwardTx);
    // The agent last advertised 2 s ago and its limit is 300 ms: it hung, and a peer takes over now.
    dp.set_heartbeat(now - 2 * SECOND, 300_000_000).expect("stale");
    run(&mut dp, &arp(), XDP_PASS, Reason::PassArp);
    run(&mut dp, &syn(), XDP_DROP, Reason::DropInactive);
    let echo = {
        let mut f = frames::eth(NODE_MAC, CLIENT_MAC, 0x0800);
        f.extend_from_slice(&frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 1, 1, b"ping")));
        f
    };
    run(&mut dp, &echo, XDP_DROP, Reason::DropInactive);
    // The next advert refreshes it, and the node answers again.
    dp.set_heartbeat(monotonic_ns().expect("clock"), 300_000_000).expect("beat");
    run(&mut dp, &arp(), XDP_TX, Reason::ArpReply);
}

#[test]
fn a_zero_limit_turns_the_switch_off() {
    let mut dp = active_node();
    dp.set_heartbeat(0, 0).expect("off");
    run(&mut dp, &arp(), XDP_TX, Reason::ArpReply);
    assert_eq!(dp.heartbeat().expect("read"), {
        let mut expected = Heartbeat { last_ns: 0, max_age_ns: 0, ..Heartbeat::default() };
        expected.active[0] = 1;
        expected
    });
}

#[test]
fn a_fresh_heartbeat_does_not_make_a_backup_answer() {
    let mut dp = active_node();
    dp.set_active(false).expect("backup");
    dp.set_heartbeat(monotonic_ns().expect("clock"), 10 * SECOND).expect("beat");
    run(&mut dp, &arp(), XDP_PASS, Reason::PassArp);
}

#[test]
fn node_control_writes_the_active_flag_and_the_heartbeat_beside_the_data_plane() {
    let mut dp = active_node();
    dp.set_active(false).expect("backup");
    let mut node = dp.node_control().expect("node control");
    node.set_max_age(std::time::Duration::from_millis(300)).expect("max age");
    node.beat().expect("beat");
    node.set_active(0, true).expect("active");
    let beat = dp.heartbeat().expect("read");
    assert_eq!(beat.max_age_ns, 300_000_000);
    assert!(monotonic_ns().expect("clock") - beat.last_ns < SECOND);
    run(&mut dp, &arp(), XDP_TX, Reason::ArpReply);
    node.set_active(0, false).expect("backup");
    run(&mut dp, &arp(), XDP_PASS, Reason::PassArp);
}

#[test]
fn service_updates_never_undo_the_role_the_advert_path_set() {
    // The advert thread sets the role through `NodeControl` while another thread installs services through the
    // `DataPlane`, which rewrites `CONFIG` (e.g. the node's own addresses): the role must not live there.
    let mut dp = active_node();
    dp.set_active(false).expect("backup");
    let mut node = dp.node_control().expect("node control");
    node.set_active(0, true).expect("active");
    let backends = vec![BackendSpec {
        address: BACKENDS[0].0.into(),
        port: 80,
        weight: 1,
        healthy: true,
        mac: Some(BACKENDS[0].1),
        ifindex: 0,
    }];
    dp.apply_service(
        "web",
        &ServiceSpec { addresses: vec![VIP.into()], port: 80, protocol: PROTO_TCP, forwarding: FORWARD_DSR, backends },
    )
    .expect("service update");
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    run(&mut dp, &arp(), XDP_TX, Reason::ArpReply);
    node.set_active(0, false).expect("backup");
    dp.apply_service(
        "web",
        &ServiceSpec {
            addresses: vec![VIP.into()],
            port: 80,
            protocol: PROTO_TCP,
            forwarding: FORWARD_DSR,
            backends: vec![],
        },
    )
    .expect("service update");
    run(&mut dp, &arp(), XDP_PASS, Reason::PassArp);
}
