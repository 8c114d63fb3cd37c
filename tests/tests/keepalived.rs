//! Interoperability with keepalived 2.2.7 (Debian, `vrrp_version 3`) on the wire, in a netns lab: the election in
//! both directions, graceful stops and link cuts either way, unicast peers, preemption, and tshark's independent
//! decoding of what xvip sends. Advert interval 100 ms on both sides. Needs root.
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use xvip_tests::{
    Keepalived, KeepalivedSpec, Lab, LabSpec,
    xvip::{InstanceSpec, NodeSpec, XvipNode},
};

const INTERVAL_MS: u64 = 100;
/// Added to the RFC bounds: process exit, the taking node's own scheduling and the polling, on a loaded machine
/// (a CI run beside other builds measured 194 ms for a graceful handover whose Skew_Time is 61 ms). A graceful
/// handover stays told apart from none: without the priority-0 advert the backup could take over at the earliest
/// 261 ms after the stop (Master_Down_Interval after an advert sent up to one interval before), above skew + slack.
const SLACK: Duration = Duration::from_millis(150);

fn lab() -> Lab {
    Lab::new(LabSpec { nodes: 2, backends: 1, ..LabSpec::default() }).expect("lab")
}

fn skew(priority: u8) -> Duration {
    Duration::from_micros((256 - u64::from(priority)) * INTERVAL_MS * 1000 / 256)
}

fn master_down(priority: u8) -> Duration {
    Duration::from_millis(3 * INTERVAL_MS) + skew(priority)
}

fn keepalived(lab: &Lab, priority: u8) -> Keepalived {
    let spec = KeepalivedSpec::new(lab.vip(), 51, priority).advert_int(0.1);
    lab.start_keepalived(lab.node(2), &spec).expect("keepalived")
}

fn owners(lab: &Lab) -> Vec<String> {
    let macs = lab.arp_probe(lab.client(), lab.vip()).expect("arp");
    macs.iter().map(|m| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone())).collect()
}

/// Polls until keepalived holds the VIP; returns when it first did, measured from `since`.
fn wait_keepalived_holds(k: &Keepalived, since: Instant, timeout: Duration) -> Duration {
    loop {
        if k.holds_vip().expect("ip addr") {
            return since.elapsed();
        }
        assert!(since.elapsed() < timeout, "keepalived did not take the VIP within {timeout:?}:\n{}", k.log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn xvip(lab: &Lab, priority: u8) -> XvipNode {
    lab.start_xvip(lab.node(1), &NodeSpec::new(priority)).expect("xvip")
}

/// xvip on node1 at priority 150 (active), keepalived on node2 at 100.
fn xvip_over_keepalived(lab: &Lab) -> (XvipNode, Keepalived) {
    let k = keepalived(lab, 100);
    let x = xvip(lab, 150);
    x.wait_role("active", Duration::from_secs(3)).expect("xvip active");
    (x, k)
}

/// keepalived on node2 at priority 150 (master), xvip on node1 at 100 (backup).
fn keepalived_over_xvip(lab: &Lab) -> (XvipNode, Keepalived) {
    let x = xvip(lab, 100);
    let mut k = keepalived(lab, 150);
    k.wait_master(Duration::from_secs(3)).expect("keepalived master");
    x.wait_role("backup", Duration::from_secs(3)).expect("xvip backup");
    (x, k)
}

/// Prints the measured takeover (for the closing figures) and checks it against the RFC bound plus slack.
fn assert_takeover_within(took: Duration, bound: Duration, what: &str) {
    eprintln!("measured: {what} took {took:?} (bound {bound:?} + {SLACK:?})");
    assert!(took <= bound + SLACK, "{what}: {took:?} > {bound:?} + {SLACK:?}");
}

#[test]
fn xvip_with_higher_priority_is_active_and_keepalived_backs_up() {
    let lab = lab();
    let (x, mut k) = xvip_over_keepalived(&lab);
    k.wait_for_log("Entering BACKUP STATE", Duration::from_secs(3)).expect("keepalived backup");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!k.holds_vip().expect("ip"), "keepalived holds the VIP too:\n{}", k.log());
    assert_eq!(owners(&lab), vec!["node1".to_string()]);
    let status = x.status().expect("status");
    assert!(status.counters.adverts_received > 0 || status.counters.adverts_sent > 0);
    assert_eq!(status.counters.adverts_discarded, 0, "{:?}", status.counters.adverts_discarded_by_reason);
}

#[test]
fn keepalived_with_higher_priority_is_master_and_xvip_backs_up() {
    let lab = lab();
    let (x, _k) = keepalived_over_xvip(&lab);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(x.role().expect("role"), "backup");
    let status = x.status().expect("status");
    assert!(status.counters.adverts_received > 0, "{status:?}");
    assert_eq!(status.counters.adverts_discarded, 0, "{:?}", status.counters.adverts_discarded_by_reason);
    assert_eq!(status.active_router.as_deref(), Some(lab.node(2).ip.to_string().as_str()));
    assert_eq!(owners(&lab), vec!["node2".to_string()]);
}

#[test]
fn graceful_xvip_stop_hands_over_to_keepalived_within_skew_time() {
    let lab = lab();
    let (mut x, k) = xvip_over_keepalived(&lab);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    x.terminate().expect("SIGTERM");
    let took = wait_keepalived_holds(&k, t0, Duration::from_secs(2));
    assert_takeover_within(took, skew(100), "keepalived taking over after xvip's SIGTERM");
}

#[test]
fn graceful_keepalived_stop_hands_over_to_xvip_within_skew_time() {
    let lab = lab();
    let (x, k) = keepalived_over_xvip(&lab);
    // keepalived's own shutdown takes about a second, so it stops on another thread while xvip is watched.
    let stopper = std::thread::spawn(move || k.stop());
    let took = x.wait_role("active", Duration::from_secs(3)).expect("xvip takes over");
    stopper.join().expect("join").expect("keepalived stop");
    assert_takeover_within(took, skew(100), "xvip taking over after keepalived's SIGTERM");
}

#[test]
fn keepalived_takes_over_within_master_down_interval_when_xvips_link_goes_down() {
    let lab = lab();
    let (_x, k) = xvip_over_keepalived(&lab);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    lab.cut_link(lab.node(1)).expect("cut");
    let took = wait_keepalived_holds(&k, t0, Duration::from_secs(3));
    assert_takeover_within(took, master_down(100), "keepalived taking over after xvip's link went down");
}

#[test]
fn xvip_takes_over_within_master_down_interval_when_keepalived_link_goes_down() {
    let lab = lab();
    let (x, _k) = keepalived_over_xvip(&lab);
    std::thread::sleep(Duration::from_millis(300));
    lab.cut_link(lab.node(2)).expect("cut");
    let took = x.wait_role("active", Duration::from_secs(3)).expect("xvip takes over");
    assert_takeover_within(took, master_down(100), "xvip taking over after keepalived's link went down");
}

#[test]
fn unicast_peers_interoperate_both_ways() {
    let lab = lab();
    let (a, b) = (lab.node(1).ip, lab.node(2).ip);
    let spec = KeepalivedSpec::new(lab.vip(), 52, 100).advert_int(0.1).unicast(b, &[a]);
    let mut k = lab.start_keepalived(lab.node(2), &spec).expect("keepalived");
    let mut x = lab
        .start_xvip(lab.node(1), &NodeSpec { vrid: 52, unicast_peers: vec![b], ..NodeSpec::new(150) })
        .expect("xvip");
    x.wait_role("active", Duration::from_secs(3)).expect("xvip active over unicast");
    k.wait_for_log("Entering BACKUP STATE", Duration::from_secs(3)).expect("keepalived backup");
    assert_eq!(x.status().expect("status").counters.adverts_discarded, 0);
    // And the other way: xvip stops, keepalived takes over; xvip comes back at a lower priority and backs up.
    x.terminate().expect("SIGTERM");
    wait_keepalived_holds(&k, Instant::now(), Duration::from_secs(2));
    let x = lab
        .start_xvip(lab.node(1), &NodeSpec { vrid: 52, unicast_peers: vec![b], ..NodeSpec::new(90) })
        .expect("xvip again");
    x.wait_role("backup", Duration::from_secs(3)).expect("xvip backup over unicast");
    std::thread::sleep(Duration::from_millis(300));
    let status = x.status().expect("status");
    assert!(status.counters.adverts_received > 0 && status.counters.adverts_discarded == 0, "{status:?}");
}

#[test]
fn xvip_coming_back_with_higher_priority_preempts_keepalived() {
    let lab = lab();
    let mut k = keepalived(&lab, 100);
    k.wait_master(Duration::from_secs(3)).expect("keepalived master alone");
    let x = xvip(&lab, 150);
    let took = x.wait_role("active", Duration::from_secs(3)).expect("xvip preempts");
    k.wait_for_log("Entering BACKUP STATE", Duration::from_secs(2)).expect("keepalived backs off");
    eprintln!("measured: xvip preempted keepalived {took:?} after start");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!k.holds_vip().expect("ip"), "two holders:\n{}", k.log());
}

#[test]
fn tshark_decodes_xvips_adverts_as_valid_vrrpv3() {
    let lab = lab();
    let x = xvip(&lab, 150);
    x.wait_role("active", Duration::from_secs(3)).expect("active");
    let out = lab
        .exec(
            &lab.client().ns,
            [
                "tshark",
                "-i",
                "eth0",
                "-a",
                "duration:2",
                "-c",
                "5",
                "-f",
                "ip proto 112",
                "-o",
                "vrrp.v3_checksum_as_in_v2:FALSE",
                "-T",
                "fields",
                "-e",
                "ip.src",
                "-e",
                "ip.ttl",
                "-e",
                "vrrp.version",
                "-e",
                "vrrp.type",
                "-e",
                "vrrp.virt_rtr_id",
                "-e",
                "vrrp.prio",
                "-e",
                "vrrp.short_adver_int",
                "-e",
                "vrrp.checksum.status",
                "-e",
                "vrrp.ip_addr",
            ],
        )
        .expect("tshark");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "tshark saw too few adverts: {out}");
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            f,
            vec![
                lab.node(1).ip.to_string().as_str(),
                "255",
                "3",
                "1",
                "51",
                "150",
                "10",
                "1",
                lab.vip().to_string().as_str()
            ],
            "fields: src ttl version type vrid prio interval checksum-status (1 = good) vip"
        );
    }
}

/// The role of instance `name` on `x`, and its status.
fn instance(x: &XvipNode, name: &str) -> xvip::status::InstanceStatus {
    let status = x.status().expect("status");
    status.instances.into_iter().find(|i| i.name == name).expect("instance in status")
}

fn wait_instance(x: &XvipNode, name: &str, role: &str, timeout: Duration) {
    let start = Instant::now();
    while instance(x, name).role != role {
        assert!(start.elapsed() < timeout, "instance {name} is not {role}:\n{}", x.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_instances_with_address_lists_interoperate_with_keepalived_each_way() {
    let lab = lab();
    let vip = |n: u32| Ipv4Addr::from(u32::from(lab.vip()) + n);
    // a: two addresses, xvip preferred; b: one address, keepalived preferred.
    let spec = NodeSpec::new(0)
        .instance(InstanceSpec::new("a", &[vip(0), vip(1)], 51, 150))
        .instance(InstanceSpec::new("b", &[vip(2)], 52, 100));
    let k_spec =
        KeepalivedSpec::new(vip(0), 51, 100).advert_int(0.1).with_vips(&[vip(1)]).with_instance(KeepalivedSpec {
            instance: "VI_2".into(),
            ..KeepalivedSpec::new(vip(2), 52, 150).advert_int(0.1)
        });
    let k = lab.start_keepalived(lab.node(2), &k_spec).expect("keepalived");
    let x = lab.start_xvip(lab.node(1), &spec).expect("xvip");
    wait_instance(&x, "a", "active", Duration::from_secs(3));
    wait_instance(&x, "b", "backup", Duration::from_secs(3));
    let start = Instant::now();
    while !k.holds(vip(2)).expect("ip") {
        assert!(start.elapsed() < Duration::from_secs(3), "keepalived never held b's address:\n{}", k.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!k.holds(vip(0)).expect("ip") && !k.holds(vip(1)).expect("ip"), "keepalived holds a's:\n{}", k.log());
    for (n, owner) in [(0, "node1"), (1, "node1"), (2, "node2")] {
        let macs = lab.arp_probe(lab.client(), vip(n)).expect("arp");
        let names: Vec<String> =
            macs.iter().map(|m| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone())).collect();
        assert_eq!(names, vec![owner.to_string()], "who answers for {}", vip(n));
    }
    for name in ["a", "b"] {
        let i = instance(&x, name);
        assert!(i.counters.adverts_received > 0, "{name} heard keepalived: {i:?}");
        assert_eq!(i.counters.adverts_discarded, 0, "{name}: {:?}", i.counters.adverts_discarded_by_reason);
    }
    assert_eq!(instance(&x, "b").active_router.as_deref(), Some(lab.node(2).ip.to_string().as_str()));
    // keepalived stops: b moves to xvip, a does not move.
    let a_transitions = instance(&x, "a").transitions;
    let stopper = std::thread::spawn(move || k.stop());
    wait_instance(&x, "b", "active", Duration::from_secs(3));
    stopper.join().expect("join").expect("keepalived stop");
    assert_eq!(instance(&x, "a").transitions, a_transitions, "a changed role:\n{}", x.log());
}
