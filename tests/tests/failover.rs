//! VIP ownership and failover between xvip nodes, end to end in a netns lab. Bounds come from the RFC timers
//! (advert interval 100 ms): Master_Down_Interval = 3 x 100 ms + Skew_Time, Skew_Time = (256 - priority) x 100 ms
//! / 256. Needs root.
use std::time::Duration;

use xvip_tests::{
    Lab, LabSpec, MacAddr,
    probe::{self, ProbeSpec},
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

const INTERVAL_MS: u64 = 100;
const SLACK: Duration = Duration::from_millis(100);

fn lab(nodes: usize) -> Lab {
    Lab::new(LabSpec::dsr(nodes, 3)).expect("lab")
}

fn skew(priority: u8) -> Duration {
    Duration::from_micros((256 - u64::from(priority)) * INTERVAL_MS * 1000 / 256)
}

fn master_down(priority: u8) -> Duration {
    Duration::from_millis(3 * INTERVAL_MS) + skew(priority)
}

/// Who answers ARP for the VIP, by node name.
fn arp_owners(lab: &Lab) -> Vec<String> {
    let macs: Vec<MacAddr> = lab.arp_probe(lab.client(), lab.vip()).expect("arp probe");
    macs.iter().map(|m| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone())).collect()
}

#[test]
fn exactly_one_node_answers_arp_and_ping_for_the_vip_and_another_after_it_stops() {
    let lab = lab(2);
    let mut n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150)).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100)).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
    assert_eq!(arp_owners(&lab), vec!["node1".to_string()]);
    lab.ping(lab.client(), lab.vip()).expect("ping the VIP");

    let (code, took) = n1.terminate().expect("SIGTERM");
    assert_eq!(code, Some(0), "clean exit:\n{}", n1.log());
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    assert_eq!(arp_owners(&lab), vec!["node2".to_string()]);
    lab.ping(lab.client(), lab.vip()).expect("ping the VIP after failover");
    let log = n1.log();
    assert!(log.contains("role -> active") && log.contains("stopped"), "{log}");
}

/// Waits until the service answers through the VIP (first health checks passed, MACs resolved).
fn wait_service(lab: &Lab, node: &XvipNode) {
    let target = lab.vip_addr(8080);
    for _ in 0..100 {
        if probe::http_get(&lab.client().ns, target, "/", Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the service never answered through the VIP:\n{}", node.log());
}

/// Starts node1 (150, active) and node2 (100, backup) with a DSR web service, and a client probe.
fn pair_with_service(lab: &Lab) -> (XvipNode, XvipNode) {
    lab.start_backends(&[8080]).expect("backends");
    let service = ServiceSpec::http(lab, 8080, 8080, "dsr");
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150).service(service.clone())).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100).service(service)).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
    // Wait until the service answers through the VIP (health checks and MACs resolved).
    wait_service(lab, &n1);
    (n1, n2)
}

/// Runs a 10 ms client probe through the VIP around `disturb` (which must end with node2 active) and checks the
/// longest outage against `bound`.
fn outage_within(lab: &Lab, n2: &XvipNode, bound: Duration, disturb: impl FnOnce()) {
    let probe = lab.probe(ProbeSpec::http(lab.vip_addr(8080))).expect("probe");
    std::thread::sleep(Duration::from_millis(500));
    disturb();
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    std::thread::sleep(Duration::from_millis(500));
    let report = probe.stop().expect("probe report");
    eprintln!("measured: {}", report.summary());
    assert!(report.longest_gap <= bound, "outage {:?} > {bound:?}: {}", report.longest_gap, report.summary());
}

#[test]
fn graceful_stop_fails_over_within_skew_time() {
    let lab = lab(2);
    let (mut n1, n2) = pair_with_service(&lab);
    outage_within(&lab, &n2, skew(100) + SLACK, || {
        n1.terminate().expect("SIGTERM");
    });
}

#[test]
fn link_down_fails_over_within_master_down_interval() {
    let lab = lab(2);
    let (_n1, n2) = pair_with_service(&lab);
    outage_within(&lab, &n2, master_down(100) + SLACK, || lab.cut_link(lab.node(1)).expect("cut node1"));
}

#[test]
fn sigkill_fails_over_within_master_down_interval_and_the_dead_node_answers_nothing() {
    let lab = lab(2);
    let (mut n1, n2) = pair_with_service(&lab);
    outage_within(&lab, &n2, master_down(100) + SLACK, || n1.kill().expect("SIGKILL"));
    assert_eq!(arp_owners(&lab), vec!["node2".to_string()], "only the live node answers for the VIP");
    let link = lab.exec(&lab.node(1).ns, ["ip", "-d", "link", "show", "eth0"]).expect("ip link");
    assert!(!link.contains("prog/xdp"), "the killed node still has its XDP program: {link}");
}

#[test]
fn higher_priority_node_coming_back_preempts() {
    let lab = lab(2);
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100)).expect("node2");
    n2.wait_role("active", Duration::from_secs(3)).expect("node2 alone becomes active");
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150)).expect("node1");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 preempts");
    n2.wait_role("backup", Duration::from_secs(1)).expect("node2 steps back");
    assert_eq!(arp_owners(&lab), vec!["node1".to_string()]);
}

#[test]
fn without_preempt_a_higher_priority_node_stays_backup() {
    let lab = lab(2);
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100)).expect("node2");
    n2.wait_role("active", Duration::from_secs(3)).expect("node2 alone becomes active");
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec { preempt: false, ..NodeSpec::new(150) }).expect("node1");
    n1.wait_role("backup", Duration::from_secs(3)).expect("node1 backup");
    std::thread::sleep(master_down(150) * 3);
    assert_eq!(n1.role().expect("role"), "backup", "node1 preempted although preempt = false");
    assert_eq!(arp_owners(&lab), vec!["node2".to_string()]);
}

#[test]
fn becoming_active_sends_a_gratuitous_arp_burst_and_repeats_it() {
    let lab = lab(2);
    // tshark in the client namespace, started before the node so both bursts are seen.
    let capture = lab
        .spawn(
            &lab.client().ns,
            [
                "tshark",
                "-l",
                "-i",
                "eth0",
                "-a",
                // Generous: loading and verifying the program can take seconds on a loaded machine, and both
                // bursts must fall inside the capture. The loop below stops it once ten are seen.
                "duration:15",
                "-f",
                "arp",
                "-T",
                "fields",
                "-e",
                "frame.time_relative",
                "-e",
                "arp.opcode",
                "-e",
                "arp.src.proto_ipv4",
                "-e",
                "arp.dst.proto_ipv4",
                "-e",
                "eth.dst",
            ],
        )
        .expect("tshark");
    std::thread::sleep(Duration::from_millis(1000));
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150)).expect("node1");
    n1.wait_role("active", Duration::from_secs(3)).expect("active");
    let log_path = capture.log_path().to_path_buf();
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    let vip = lab.vip().to_string();
    let garps = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let garps: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                // A gratuitous ARP request: sender and target are the VIP, broadcast.
                (f.len() == 5 && f[1] == "1" && f[2] == vip && f[3] == vip && f[4] == "ff:ff:ff:ff:ff:ff")
                    .then(|| f[0].parse().ok())
                    .flatten()
            })
            .collect();
        if garps.len() >= 10 || std::time::Instant::now() > deadline {
            break garps;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(capture);
    assert_eq!(garps.len(), 10, "5 at once and 5 after garp_repeat_delay_ms (1000 in the lab): {garps:?}");
    let first_burst = garps[4] - garps[0];
    let gap = garps[5] - garps[0];
    eprintln!("measured: first burst spans {first_burst:.3} s, second burst {gap:.3} s after the first");
    assert!(first_burst < 0.1, "the first burst is not at once: {garps:?}");
    assert!((0.9..1.5).contains(&gap), "the second burst is not 1 s later: {garps:?}");
    assert_eq!(n1.status().expect("status").counters.garps_sent, 10);
}

#[test]
fn a_node_that_loses_its_link_is_in_fault_and_without_preempt_does_not_take_the_vip_back() {
    let lab = lab(2);
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec { preempt: false, ..NodeSpec::new(150) }).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100)).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");

    lab.cut_link(lab.node(1)).expect("cut node1");
    n1.wait_role("fault", Duration::from_secs(2)).expect("node1 reports fault");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");

    lab.restore_link(lab.node(1)).expect("restore node1");
    n1.wait_role("backup", Duration::from_secs(2)).expect("node1 comes back as a backup");
    std::thread::sleep(master_down(150) * 3);
    assert_eq!(n1.role().expect("role"), "backup", "node1 took the VIP back although preempt = false");
    assert_eq!(n2.role().expect("role"), "active");
    assert_eq!(arp_owners(&lab), vec!["node2".to_string()]);
    assert!(n1.log().contains("role -> fault: link down on eth0"), "{}", n1.log());
}

#[test]
fn a_node_that_regains_its_link_preempts_through_the_election() {
    let lab = lab(2);
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150)).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100)).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    lab.cut_link(lab.node(1)).expect("cut node1");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    lab.restore_link(lab.node(1)).expect("restore node1");
    n1.wait_role("backup", Duration::from_secs(2)).expect("node1 starts as a backup");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 preempts after its down timer");
    n2.wait_role("backup", Duration::from_secs(1)).expect("node2 steps back");
    assert_eq!(arp_owners(&lab), vec!["node1".to_string()]);
}
