//! Load balancing end to end in a netns lab: distribution, health checks taking backends out and back, SIGHUP
//! reloads, and established connections across a failover. DSR forwarding (backends hold the VIP on lo).
//! Needs root.
use std::time::{Duration, Instant};

use xvip_tests::{
    Lab, LabSpec,
    probe::{StreamEnd, StreamWatch},
    xvip::{NodeSpec, ServiceSpec, XvipNode, config},
};

const PORT: u16 = 8080;

fn lab() -> Lab {
    let lab = Lab::new(LabSpec::dsr(2, 3)).expect("lab");
    lab.start_backends(&[PORT]).expect("backends");
    lab
}

fn service(lab: &Lab) -> ServiceSpec {
    ServiceSpec::http(lab, PORT, PORT, "dsr")
}

/// Waits until `n` backends of the first service are healthy; returns how long that took.
fn wait_healthy(node: &XvipNode, n: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = node.status().expect("status");
        let healthy = status.services[0].backends.iter().filter(|b| b.healthy && b.mac.is_some()).count();
        if healthy == n {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{healthy} healthy backends, not {n}, after {timeout:?}:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn active_node(lab: &Lab, spec: NodeSpec) -> XvipNode {
    let node = lab.start_xvip(lab.node(1), &spec).expect("node1");
    node.wait_role("active", Duration::from_secs(3)).expect("active");
    wait_healthy(&node, 3, Duration::from_secs(5));
    node
}

fn share(tally: &xvip_tests::probe::Tally, name: &str) -> f64 {
    tally.per_backend.get(name).copied().unwrap_or(0) as f64 / 300.0
}

#[test]
fn three_hundred_requests_reach_all_three_backends_evenly() {
    let lab = lab();
    let _node = active_node(&lab, NodeSpec::new(150).service(service(&lab)));
    let tally = lab.request_many(lab.vip_addr(PORT), 300).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
    eprintln!("measured: {:?}", tally.per_backend);
    for b in ["backend1", "backend2", "backend3"] {
        let s = share(&tally, b);
        assert!((0.20..=0.47).contains(&s), "{b} got {:.0}% of 300: {tally:?}", s * 100.0);
    }
}

#[test]
fn an_unready_backend_leaves_within_fall_intervals_and_returns_after_rise() {
    let lab = lab();
    let svc = service(&lab);
    let node = active_node(&lab, NodeSpec::new(150).service(svc.clone()));

    lab.set_backend_ready(2, false).expect("backend2 unready");
    let out = wait_healthy(&node, 2, Duration::from_secs(3));
    let bound = Duration::from_millis(u64::from(svc.fall * svc.interval_ms) + 100);
    eprintln!("measured: out after {out:?} (bound {bound:?})");
    assert!(out <= bound, "backend2 left after {out:?} > {bound:?}");
    let tally = lab.request_many(lab.vip_addr(PORT), 60).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_eq!(tally.per_backend.get("backend2"), None, "a new connection reached the unready backend: {tally:?}");

    lab.set_backend_ready(2, true).expect("backend2 ready");
    let back = wait_healthy(&node, 3, Duration::from_secs(3));
    let bound = Duration::from_millis(u64::from(svc.rise * svc.interval_ms) + 100);
    eprintln!("measured: back after {back:?} (bound {bound:?})");
    assert!(back <= bound, "backend2 came back after {back:?} > {bound:?}");
    let tally = lab.request_many(lab.vip_addr(PORT), 60).expect("requests");
    assert!(tally.per_backend.get("backend2").copied().unwrap_or(0) > 0, "{tally:?}");
}

#[test]
fn a_service_without_healthy_backends_lowers_priority_and_hands_the_vip_over() {
    let lab = lab();
    let svc = service(&lab);
    let n1 = lab
        .start_xvip(lab.node(1), &NodeSpec { backend_loss_penalty: 100, ..NodeSpec::new(150).service(svc.clone()) })
        .expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100).service(svc)).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    wait_healthy(&n1, 3, Duration::from_secs(5));
    // node1 alone loses its backends: block its health checks' source with a firewall rule in node1's namespace.
    lab.exec(&lab.node(1).ns, ["nft", "add", "table", "inet", "t"]).expect("nft");
    lab.exec(&lab.node(1).ns, ["nft", "add", "chain", "inet", "t", "out", "{ type filter hook output priority 0; }"])
        .expect("nft chain");
    lab.exec(&lab.node(1).ns, ["nft", "add", "rule", "inet", "t", "out", "tcp", "dport", "8080", "reject"])
        .expect("nft rule");
    n2.wait_role("active", Duration::from_secs(3)).expect("node2 takes over");
    n1.wait_role("backup", Duration::from_secs(1)).expect("node1 steps back");
    let status = n1.status().expect("status");
    assert_eq!(status.effective_priority, 50, "{status:?}");
    assert!(n1.log().contains("backend_loss_penalty 100"), "{}", n1.log());
}

#[test]
fn sighup_adds_and_removes_backends_without_losing_other_connections() {
    let lab = lab();
    let mut svc = service(&lab);
    svc.backends.truncate(2); // backend1 and backend2
    let mut spec = NodeSpec::new(150).service(svc.clone());
    let mut node = lab.start_xvip(lab.node(1), &spec).expect("node1");
    node.wait_role("active", Duration::from_secs(3)).expect("active");
    wait_healthy(&node, 2, Duration::from_secs(5));

    // At least 8 streams, and more (32 at most) until one is on backend2: the flow hash spreads them evenly, but 8
    // all land on backend1 once in 256 runs.
    let mut watches: Vec<StreamWatch> = Vec::new();
    while watches.len() < 8 || (watches.len() < 32 && !watches.iter().any(|w| w.backend() == "backend2")) {
        watches.push(StreamWatch::start(&lab.client().ns, lab.vip_addr(PORT), Duration::from_secs(2)).expect("stream"));
    }
    let on: Vec<&str> = watches.iter().map(StreamWatch::backend).collect();
    assert!(on.contains(&"backend2"), "no stream on backend2 in {}: {on:?}", on.len());

    // Remove backend1, add backend3.
    spec.services[0].backends = vec![(lab.backend(2).ip.into(), PORT), (lab.backend(3).ip.into(), PORT)];
    std::fs::write(&node.config_path, config(&lab, lab.node(1), &spec, &node.socket)).expect("write config");
    node.signal(libc::SIGHUP).expect("SIGHUP");
    let wanted = vec![lab.backend(2).ip.to_string(), lab.backend(3).ip.to_string()];
    let start = Instant::now();
    loop {
        let status = node.status().expect("status");
        let b = &status.services[0].backends;
        let addrs: Vec<String> = b.iter().map(|b| b.address.clone()).collect();
        if addrs == wanted && b.iter().all(|b| b.healthy && b.mac.is_some()) {
            assert_eq!(status.role, "active", "the reload dropped the VIP");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "reload not applied: {status:?}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));

    for w in watches {
        let backend = w.backend().to_string();
        let report = w.stop().expect("report");
        if backend == "backend2" {
            assert_eq!(report.end, StreamEnd::StillOpen, "a backend2 stream died in the reload: {report:?}");
            assert!(report.longest_gap < Duration::from_millis(500), "{report:?}");
        }
    }
    let tally = lab.request_many(lab.vip_addr(PORT), 60).expect("requests");
    assert!(tally.per_backend.get("backend3").copied().unwrap_or(0) > 0, "the new backend gets no traffic: {tally:?}");
    assert_eq!(tally.per_backend.get("backend1"), None, "the removed backend still gets traffic: {tally:?}");
    assert!(node.log().contains("reload: "), "{}", node.log());
}

#[test]
fn sighup_with_a_bad_config_keeps_the_running_one() {
    let lab = lab();
    let mut node = active_node(&lab, NodeSpec::new(150).service(service(&lab)));
    let before = node.status().expect("status");
    std::fs::write(&node.config_path, "interface = \"eth0\"\n[vrrp]\npriority = 300\n").expect("write");
    node.signal(libc::SIGHUP).expect("SIGHUP");
    std::thread::sleep(Duration::from_millis(300));
    let log = node.log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(log.contains(":3:12: vrrp.priority"), "the problem is located: {log}");
    let after = node.status().expect("still answering");
    assert_eq!(after.role, "active");
    assert_eq!(
        after.services,
        before
            .services
            .iter()
            .cloned()
            .map(|mut s| {
                for (b, a) in s.backends.iter_mut().zip(&after.services[0].backends) {
                    b.packets = a.packets;
                    b.bytes = a.bytes;
                }
                s
            })
            .collect::<Vec<_>>()
    );
    let tally = lab.request_many(lab.vip_addr(PORT), 30).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
}

#[test]
fn long_lived_connections_survive_a_graceful_failover_and_a_link_cut() {
    let lab = lab();
    let svc = service(&lab);
    let mut n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150).service(svc.clone())).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100).service(svc.clone())).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
    wait_healthy(&n1, 3, Duration::from_secs(5));
    wait_healthy(&n2, 3, Duration::from_secs(5));

    let watches: Vec<StreamWatch> = (0..10)
        .map(|_| StreamWatch::start(&lab.client().ns, lab.vip_addr(PORT), Duration::from_secs(2)).expect("stream"))
        .collect();
    n1.terminate().expect("SIGTERM node1");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    std::thread::sleep(Duration::from_millis(500));

    // Bring node1 back (it preempts), then cut its link: node2 takes over again.
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150).service(svc)).expect("node1 again");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 preempts");
    std::thread::sleep(Duration::from_millis(300));
    lab.cut_link(lab.node(1)).expect("cut node1");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over again");
    std::thread::sleep(Duration::from_millis(500));

    let mut survived = 0;
    for w in watches {
        let report = w.stop().expect("report");
        if report.end == StreamEnd::StillOpen {
            survived += 1;
        } else {
            eprintln!("lost: {report:?}");
        }
    }
    eprintln!("measured: {survived} of 10 streams survived a graceful handover, a preemption and a link cut");
    assert_eq!(survived, 10);
}

#[test]
fn sighup_beyond_the_loaded_service_capacity_is_refused() {
    let lab = lab();
    let mut spec = NodeSpec::new(150).service(service(&lab));
    let mut node = lab.start_xvip(lab.node(1), &spec).expect("node1");
    node.wait_role("active", Duration::from_secs(3)).expect("active");
    // The data plane is sized for max(service tables, 8) at start (one per service here, IPv4 only): nine need a
    // restart.
    for port in 9001..9009 {
        let mut extra = service(&lab);
        extra.name = format!("extra{port}");
        extra.port = port;
        extra.forwarding = "nat".into();
        extra.check = "none".into();
        spec.services.push(extra);
    }
    std::fs::write(&node.config_path, config(&lab, lab.node(1), &spec, &node.socket)).expect("write");
    node.signal(libc::SIGHUP).expect("SIGHUP");
    std::thread::sleep(Duration::from_millis(300));
    let log = node.log();
    assert!(log.contains("reload refused: 9 service tables") && log.contains("restart xvip"), "{log}");
    let status = node.status().expect("status");
    assert_eq!(status.services.len(), 1, "the running config changed");
    assert_eq!(status.role, "active");
}
