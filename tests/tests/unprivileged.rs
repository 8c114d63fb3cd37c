//! The daemon as the systemd unit runs it: a non-root user with only the capabilities `deploy/xvip.service` grants
//! (read from the unit itself), applied with `setpriv` in a netns lab. Election, forwarding, status and the
//! graceful handover must all work. Needs root (to build the lab and drop to the user).
use std::{collections::BTreeSet, path::Path, time::Duration};

use xvip_tests::{
    Lab, LabSpec,
    probe::{self, ProbeSpec},
    xvip::{NodeSpec, RunAs, ServiceSpec},
};

const PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// `nobody`/`nogroup` on Debian: a user that owns nothing.
const NOBODY: u32 = 65534;

/// The capabilities a `Key=` line of the unit lists, as `setpriv` names them (`CAP_NET_RAW` -> `net_raw`).
fn unit_capabilities(unit: &str, key: &str) -> BTreeSet<String> {
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}= line"));
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase()).collect()
}

#[test]
fn a_non_root_daemon_with_the_units_capabilities_elects_forwards_and_hands_over() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/xvip.service"))
        .expect("deploy/xvip.service");
    let ambient = unit_capabilities(&unit, "AmbientCapabilities");
    let bounding = unit_capabilities(&unit, "CapabilityBoundingSet");
    assert_eq!(ambient, bounding, "the unit grants what it bounds, nothing held back for later");
    assert!(unit.lines().any(|l| l.trim() == "DynamicUser=yes"), "the unit runs as a non-root user");
    eprintln!("the unit grants: {ambient:?}");

    let lab = Lab::new(LabSpec::nat(2, 3)).expect("lab");
    lab.start_backends(&[BACKEND_PORT]).expect("backends");
    let service = ServiceSpec::http(&lab, PORT, BACKEND_PORT, "nat");
    let run_as = RunAs { uid: NOBODY, gid: NOBODY, capabilities: ambient.into_iter().collect() };
    let spec = NodeSpec { run_as: Some(run_as), ..NodeSpec::new(150).service(service.clone()) };
    let mut n1 = lab.start_xvip(lab.node(1), &spec).expect("node1 as nobody");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100).service(service)).expect("node2 as root");

    // It really runs as nobody, with only those capabilities in effect.
    let pid = n1.pid().expect("pid");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        proc_status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned()
    };
    eprintln!(
        "node1: Uid {} CapEff {} CapBnd {} NoNewPrivs {}",
        field("Uid:"),
        field("CapEff:"),
        field("CapBnd:"),
        field("NoNewPrivs:")
    );
    assert!(field("Uid:").split_whitespace().all(|u| u == NOBODY.to_string()), "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), field("CapBnd:"), "effective = bounding set");

    // Election: node1 (150) wins over node2 (100), so its adverts go out from its raw socket.
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
    let status = n1.status().expect("status from the non-root daemon's socket");
    assert!(status.counters.adverts_sent > 0 && status.counters.garps_sent > 0, "{status:?}");
    // Health checks and neighbour resolution work, so every backend is usable.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !n1.status().is_ok_and(|s| s.services[0].backends.iter().all(|b| b.healthy && b.mac.is_some())) {
        assert!(std::time::Instant::now() < deadline, "backends never usable:\n{}", n1.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Forwarding: the XDP program it attached answers ARP and balances NAT traffic over all three backends.
    let tally = lab.request_many(lab.vip_addr(PORT), 60).expect("requests");
    eprintln!(
        "60 requests through the VIP served by the non-root node: {:?}, failures {}",
        tally.per_backend, tally.failures
    );
    assert_eq!(tally.failures, 0, "{:?}", tally.errors);
    assert_eq!(tally.per_backend.len(), 3, "{tally:?}");
    let nat = n1.status().expect("status").counters.dataplane.get("nat_forward_tx").copied().unwrap_or(0);
    assert!(nat >= 60, "node1's XDP program translated them ({nat})");

    // Graceful stop: the priority-0 advert and the XDP detach work without root too; node2 takes over within
    // its Skew_Time, the bound the failover tests hold a root daemon to. The probe's requests have the failover
    // tests' short deadline: a NAT handshake caught in flight by the handover (its SYN through node1, its SYN/ACK
    // through node2, which has no translation for it) is lost and costs one request, not a 1 s SYN retransmission.
    let report_probe = probe::Probe::start(&lab.client().ns, ProbeSpec::http(lab.vip_addr(PORT))).expect("probe");
    std::thread::sleep(Duration::from_millis(200));
    let (code, took) = n1.terminate().expect("SIGTERM");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    std::thread::sleep(Duration::from_millis(300));
    let report = report_probe.stop().expect("probe report");
    eprintln!("graceful stop of the non-root node: exit {code:?} after {took:?}; client: {}", report.summary());
    assert_eq!(code, Some(0), "clean exit");
    // node2's Skew_Time at priority 100 with 100 ms adverts, plus the failover tests' 100 ms slack.
    let bound = Duration::from_micros((256 - 100) * 100_000 / 256) + Duration::from_millis(100);
    assert!(report.longest_gap <= bound, "outage {:?} > {bound:?}: {}", report.longest_gap, report.summary());
    let after = report
        .samples
        .iter()
        .filter(|s| s.outcome.is_ok() && s.started >= report.longest_gap_start + report.longest_gap)
        .count();
    assert!(after > 0, "node2 answered nothing after the handover: {}", report.summary());
}
