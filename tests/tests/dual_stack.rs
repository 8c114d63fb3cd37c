//! Dual stack failing over, end to end in a netns lab: two xvip nodes share one instance with an IPv4 and an IPv6
//! VIP, and one DSR service with three IPv4 and three IPv6 backends (each backend holds both VIPs on `lo`). An IPv4
//! and an IPv6 client (the lab's client, with both) balance over every backend; when the active node is killed
//! (SIGKILL) or stopped (SIGTERM) the backup answers both VIPs (ARP and Neighbor Advertisement) within the RFC 5798
//! bound, long-lived connections of both families survive, and the killed node answers for neither VIP.
//!
//! Bounds as in failover.rs (advert interval 100 ms, backup priority 100): Master_Down_Interval = 3 x 100 ms +
//! Skew_Time after a crash, Skew_Time after a graceful stop (its priority-0 advert), plus 100 ms slack. The IPv4
//! and IPv6 routers of the instance run the same timers, each on its own. IPv6 is turned on, without DAD, for the
//! client, both nodes and the backends. Needs root.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use xvip_tests::{
    Lab, LabSpec, MacAddr, cmd, ipv6,
    probe::{self, ProbeSpec, StreamEnd, StreamWatch},
    reach,
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

const PORT: u16 = 8080;
const BACKENDS: u16 = 3;
/// Long-lived connections per family.
const STREAMS: usize = 5;
const INTERVAL_MS: u64 = 100;
const SLACK: Duration = Duration::from_millis(100);
/// The client's IPv6 host number: `fd00:77::10`.
const CLIENT6: u16 = 0x10;

fn skew(priority: u8) -> Duration {
    Duration::from_micros((256 - u64::from(priority)) * INTERVAL_MS * 1000 / 256)
}

fn master_down(priority: u8) -> Duration {
    Duration::from_millis(3 * INTERVAL_MS) + skew(priority)
}

fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

/// `fd00:77::2N`: backend N's IPv6 address.
fn backend6(n: u16) -> Ipv6Addr {
    ipv6::address(0x20 + n)
}

/// A DSR lab (both nodes, three backends with the IPv4 VIP on `lo`), with IPv6 on the client (fd00:77::10), the
/// nodes (fd00:77::1 and ::2) and the backends (fd00:77::2N, the IPv6 VIP on `lo` too), each backend serving HTTP
/// on both families.
fn lab() -> Lab {
    let lab = Lab::new(LabSpec::dsr(2, usize::from(BACKENDS))).expect("lab");
    ipv6::enable(lab.client(), CLIENT6).expect("IPv6 on the client");
    ipv6::enable(lab.node(1), 1).expect("IPv6 on node1");
    ipv6::enable(lab.node(2), 2).expect("IPv6 on node2");
    for n in 1..=BACKENDS {
        let host = lab.backend(usize::from(n));
        ipv6::enable(host, 0x20 + n).expect("IPv6 on a backend");
        cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"]).expect("IPv6 on lo");
        cmd::ip_in(&host.ns, ["-6", "addr", "add", &format!("{}/128", vip6()), "dev", "lo"]).expect("VIP on lo");
        lab.start_backend_listening(usize::from(n), &[PORT], true).expect("lab-backend");
    }
    lab
}

/// One instance with both VIPs; the service balances IPv4 to the IPv4 backends and IPv6 to the IPv6 ones.
fn spec(lab: &Lab, priority: u8) -> NodeSpec {
    let mut service = ServiceSpec::http(lab, PORT, PORT, "dsr");
    service.backends.extend((1..=BACKENDS).map(|n| (IpAddr::V6(backend6(n)), PORT)));
    NodeSpec { vip6: vec![vip6()], ..NodeSpec::new(priority).service(service) }
}

fn target6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(vip6()), PORT)
}

/// The two targets, labelled by family.
fn targets(lab: &Lab) -> [(&'static str, SocketAddr); 2] {
    [("IPv4", lab.vip_addr(PORT)), ("IPv6", target6())]
}

/// Node names of whoever answers ARP (IPv4) and Neighbor Solicitations (IPv6) for the VIPs, from the client.
fn owners(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let name = |m: &MacAddr| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone());
    let arp = lab.arp_probe(lab.client(), lab.vip()).expect("ARP probe");
    let client = lab.client();
    let ns = reach::ns_probe(&client.ns, &client.iface, ipv6::address(CLIENT6), vip6(), Duration::from_millis(500))
        .expect("NS probe");
    (arp.iter().map(name).collect(), ns.iter().map(name).collect())
}

fn only(node: &str) -> (Vec<String>, Vec<String>) {
    (vec![node.to_string()], vec![node.to_string()])
}

/// Waits until both VIPs answer `GET /` from the client.
fn wait_answered(lab: &Lab, node: &XvipNode) {
    for (family, target) in targets(lab) {
        let start = Instant::now();
        while probe::http_get(&lab.client().ns, target, "/", Duration::from_millis(500)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "the {family} VIP never answered:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// node1 (150, active for both families) and node2 (100, backup), every backend healthy on both.
fn pair(lab: &Lab) -> (XvipNode, XvipNode) {
    let n1 = lab.start_xvip(lab.node(1), &spec(lab, 150)).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &spec(lab, 100)).expect("node2");
    n1.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(5)).expect("node2 backup");
    for node in [&n1, &n2] {
        node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    }
    wait_answered(lab, &n1);
    (n1, n2)
}

/// Both routers of node's instance (IPv4 and IPv6) are `role`.
fn wait_both(node: &XvipNode, role: &str, timeout: Duration) {
    node.wait_role(role, timeout).unwrap_or_else(|e| panic!("{e:#}:\n{}", node.log()));
    let start = Instant::now();
    loop {
        let status = node.status().expect("status");
        let instance = &status.instances[0];
        let v6 = instance.ipv6.as_ref().map(|r| r.role.clone());
        if instance.role == role && v6.as_deref() == Some(role) {
            return;
        }
        assert!(start.elapsed() < timeout, "not both {role}: {instance:?}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens `STREAMS` long-lived connections per family through the VIPs.
fn open_streams(lab: &Lab) -> Vec<(&'static str, StreamWatch)> {
    let mut watches = Vec::new();
    for (family, target) in targets(lab) {
        for _ in 0..STREAMS {
            let watch = StreamWatch::start(&lab.client().ns, target, Duration::from_secs(2)).expect("stream");
            watches.push((family, watch));
        }
    }
    watches
}

/// Stops the watches and returns how many of each family were still open: (IPv4, IPv6).
fn survivors(watches: Vec<(&'static str, StreamWatch)>) -> (usize, usize) {
    let (mut v4, mut v6) = (0, 0);
    for (family, watch) in watches {
        let report = watch.stop().expect("report");
        if report.end == StreamEnd::StillOpen {
            if family == "IPv4" { v4 += 1 } else { v6 += 1 }
        } else {
            eprintln!("lost an {family} stream: {report:?}");
        }
    }
    (v4, v6)
}

/// Runs a 10 ms client probe on each VIP around `disturb` (which must leave node2 active for both families) and
/// returns each family's longest outage with the probe's summary.
fn outages(lab: &Lab, n2: &XvipNode, disturb: impl FnOnce()) -> Vec<(&'static str, Duration, String)> {
    let probes: Vec<_> = targets(lab)
        .into_iter()
        .map(|(family, target)| (family, lab.probe(ProbeSpec::http(target)).expect("probe")))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    disturb();
    wait_both(n2, "active", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(500));
    probes
        .into_iter()
        .map(|(family, probe)| {
            let report = probe.stop().expect("probe report");
            (family, report.longest_gap, report.summary())
        })
        .collect()
}

/// Both families' requests spread over all of their backends.
fn assert_balanced(lab: &Lab, node: &XvipNode) {
    for (family, target) in targets(lab) {
        let tally = lab.request_many(target, 60).expect("requests");
        eprintln!("measured: {family} through {target}: {:?}", tally.per_backend);
        assert_eq!(tally.failures, 0, "{family}: {tally:?}\n{}", node.log());
        assert_eq!(tally.per_backend.len(), usize::from(BACKENDS), "{family}: every backend answers: {tally:?}");
    }
}

#[test]
fn sigkill_fails_both_families_over_keeps_their_connections_and_the_dead_node_answers_neither() {
    let lab = lab();
    let (mut n1, n2) = pair(&lab);
    wait_both(&n1, "active", Duration::from_secs(3));
    wait_both(&n2, "backup", Duration::from_secs(3));
    assert_eq!(owners(&lab), only("node1"), "node1 answers both VIPs before");
    assert_balanced(&lab, &n1);

    let watches = open_streams(&lab);
    let bound = master_down(100) + SLACK;
    let measured = outages(&lab, &n2, || n1.kill().expect("SIGKILL"));
    let (v4, v6) = survivors(watches);
    for (family, gap, summary) in &measured {
        eprintln!("measured: SIGKILL, {family}: outage {gap:?} (bound {bound:?}); {summary}");
    }
    eprintln!("measured: SIGKILL, established connections surviving: IPv4 {v4} of {STREAMS}, IPv6 {v6} of {STREAMS}");
    for (family, gap, summary) in &measured {
        assert!(*gap <= bound, "{family} outage {gap:?} > {bound:?}: {summary}\n{}", n2.log());
    }
    assert_eq!((v4, v6), (STREAMS, STREAMS), "survivors (IPv4, IPv6):\n{}", n2.log());

    // Only node2 answers for either VIP: the killed node's XDP program is gone with it.
    assert_eq!(owners(&lab), only("node2"), "only the live node answers for the VIPs");
    let link = lab.exec(&lab.node(1).ns, ["ip", "-d", "link", "show", "eth0"]).expect("ip link");
    assert!(!link.contains("prog/xdp"), "the killed node still has its XDP program: {link}");
    assert_balanced(&lab, &n2);
}

#[test]
fn a_graceful_stop_hands_both_families_over_within_skew_time_with_their_connections() {
    let lab = lab();
    let (mut n1, n2) = pair(&lab);
    wait_both(&n1, "active", Duration::from_secs(3));
    wait_both(&n2, "backup", Duration::from_secs(3));

    let watches = open_streams(&lab);
    let bound = skew(100) + SLACK;
    let measured = outages(&lab, &n2, || {
        let (code, _) = n1.terminate().expect("SIGTERM");
        assert_eq!(code, Some(0), "clean exit:\n{}", n1.log());
    });
    let (v4, v6) = survivors(watches);
    for (family, gap, summary) in &measured {
        eprintln!("measured: SIGTERM, {family}: outage {gap:?} (bound {bound:?}); {summary}");
    }
    eprintln!("measured: SIGTERM, established connections surviving: IPv4 {v4} of {STREAMS}, IPv6 {v6} of {STREAMS}");
    for (family, gap, summary) in &measured {
        assert!(*gap <= bound, "{family} outage {gap:?} > {bound:?}: {summary}\n{}", n2.log());
    }
    assert_eq!((v4, v6), (STREAMS, STREAMS), "survivors (IPv4, IPv6):\n{}", n2.log());
    assert_eq!(owners(&lab), only("node2"), "node2 answers both VIPs after the handover");
    assert_balanced(&lab, &n2);
}
