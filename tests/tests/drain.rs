//! Draining a backend end to end in a netns lab (NAT): `weight = 0` applied by a reload takes no new connections,
//! keeps the established ones, shows in `xvip status` with the flows it still has, and the backend can then be
//! removed without a single failed request. Needs root.
use std::time::{Duration, Instant};

use xvip::status::BackendStatus;
use xvip_tests::{
    Lab, LabSpec,
    probe::{Probe, ProbeSpec, RequestLoop, StreamEnd},
    xvip::{NodeSpec, ServiceSpec, XvipNode, config},
};

const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// Long-lived connections wanted on the backend that drains.
const ON_DRAINED: usize = 3;

fn backend_status(node: &XvipNode, address: &str) -> BackendStatus {
    let status = node.status().expect("status");
    status.services[0].backends.iter().find(|b| b.address == address).cloned().unwrap_or_else(|| {
        panic!("{address} is not in the status: {:?}", status.services[0].backends);
    })
}

/// Rewrites the node's config with `spec` and reloads it.
fn reload(lab: &Lab, node: &mut XvipNode, spec: &NodeSpec) {
    std::fs::write(&node.config_path, config(lab, lab.node(1), spec, &node.socket)).expect("write config");
    node.signal(libc::SIGHUP).expect("SIGHUP");
}

/// Polls `check` on the node's status until it holds; panics with the node's log after `timeout`.
fn wait_until(node: &XvipNode, what: &str, timeout: Duration, check: impl Fn(&xvip::status::Status) -> bool) {
    let start = Instant::now();
    loop {
        if node.status().is_ok_and(|s| check(&s)) {
            return;
        }
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_drained_backend_keeps_its_connections_takes_no_new_ones_and_leaves_without_a_failed_request() {
    let lab = Lab::new(LabSpec::nat(2, 3)).expect("lab");
    lab.start_backends(&[BACKEND_PORT]).expect("backends");
    let service = ServiceSpec::http(&lab, SERVICE_PORT, BACKEND_PORT, "nat");
    let mut spec = NodeSpec::new(150).service(service);
    let mut node = lab.start_xvip(lab.node(1), &spec).expect("node1");
    node.wait_role("active", Duration::from_secs(3)).expect("active");
    wait_until(&node, "every backend healthy", Duration::from_secs(10), |s| {
        s.services[0].backends.iter().all(|b| b.healthy && b.mac.is_some())
    });
    let target = lab.vip_addr(SERVICE_PORT);
    let drained = lab.backend(1);
    let drained_address = drained.ip.to_string();

    // Long-lived keep-alive connections (a request every 100 ms) until ON_DRAINED of them sit on backend1.
    let mut loops = Vec::new();
    while loops.iter().filter(|l: &&RequestLoop| l.backend() == drained.name).count() < ON_DRAINED {
        assert!(loops.len() < 60, "60 connections and fewer than {ON_DRAINED} on {}", drained.name);
        let l = RequestLoop::start(&lab.client().ns, target, Duration::from_millis(100), Duration::from_secs(5))
            .expect("request loop");
        loops.push(l);
    }
    let (kept, others): (Vec<RequestLoop>, Vec<RequestLoop>) =
        loops.into_iter().partition(|l| l.backend() == drained.name);
    assert_eq!(backend_status(&node, &drained_address).flows, None, "nothing drains yet: no flow count");

    // New connections all along: every 20 ms, each on its own connection.
    let probe = Probe::start(
        &lab.client().ns,
        ProbeSpec { interval: Duration::from_millis(20), timeout: Duration::from_secs(1), ..ProbeSpec::http(target) },
    )
    .expect("probe");
    std::thread::sleep(Duration::from_millis(300));

    // Drain backend1.
    spec.services[0].weights.insert((drained.ip.into(), BACKEND_PORT), 0);
    reload(&lab, &mut node, &spec);
    let drain_started = Instant::now();
    wait_until(&node, "backend1 draining", Duration::from_secs(3), |s| {
        s.services[0].backends.iter().any(|b| b.address == drained_address && b.draining)
    });
    // Its flows: the kept connections, once probe connections opened before the reload have closed.
    wait_until(&node, "backend1's flows are the kept connections", Duration::from_secs(5), |s| {
        s.services[0].backends.iter().any(|b| b.address == drained_address && b.flows == Some(ON_DRAINED as u64))
    });
    let status = node.status().expect("status");
    let table = status.render();
    eprintln!("status while draining:\n{table}");
    assert!(table.contains(&format!("draining, {ON_DRAINED} flows left")), "{table}");
    let log = node.log();
    assert!(log.contains(&format!("backend {drained_address}:{BACKEND_PORT} of web is draining")), "{log}");

    // No new connection reaches it; the kept ones go on answering.
    let answered_at_drain: Vec<usize> = kept.iter().map(RequestLoop::answered).collect();
    let tally = lab.request_many(target, 150).expect("requests");
    eprintln!("150 new connections while draining: {:?}, failures {}", tally.per_backend, tally.failures);
    assert_eq!(tally.failures, 0, "{:?}", tally.errors);
    assert_eq!(tally.per_backend.get(&drained.name), None, "a drained backend took new connections: {tally:?}");
    assert_eq!(tally.per_backend.len(), 2, "{tally:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while kept.iter().zip(&answered_at_drain).any(|(l, before)| l.answered() < before + 5) {
        assert!(Instant::now() < deadline, "kept connections stopped answering while draining");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The clients finish: the count goes to 0.
    let kept_reports: Vec<_> = kept.into_iter().map(|l| l.stop().expect("loop")).collect();
    let closed_at = Instant::now();
    wait_until(&node, "backend1's flows at 0", Duration::from_secs(5), |s| {
        s.services[0].backends.iter().any(|b| b.address == drained_address && b.flows == Some(0))
    });
    let to_zero = closed_at.elapsed();

    // Now remove it.
    spec.services[0].backends.retain(|(address, _)| *address != drained.ip);
    spec.services[0].weights.clear();
    reload(&lab, &mut node, &spec);
    wait_until(&node, "backend1 removed", Duration::from_secs(3), |s| {
        s.services[0].backends.iter().all(|b| b.address != drained_address)
    });
    std::thread::sleep(Duration::from_millis(500));
    let report = probe.stop().expect("probe report");
    let other_reports: Vec<_> = others.into_iter().map(|l| l.stop().expect("loop")).collect();

    eprintln!(
        "drain then removal over {:.1} s: {}; {} kept connections answered {:?} requests ({:?}); flows reached 0 \
         {to_zero:?} after their clients closed; {} connections on other backends: {:?}",
        drain_started.elapsed().as_secs_f64(),
        report.summary(),
        kept_reports.len(),
        kept_reports.iter().map(|r| r.answered).collect::<Vec<_>>(),
        kept_reports.iter().map(|r| &r.end).collect::<Vec<_>>(),
        other_reports.len(),
        other_reports.iter().map(|r| &r.end).collect::<Vec<_>>(),
    );
    assert_eq!(report.failures, 0, "failed requests during drain and removal: {:?}", report.errors());
    assert!(report.successes > 50, "{}", report.summary());
    for r in kept_reports.iter().chain(&other_reports) {
        assert_eq!(r.end, StreamEnd::StillOpen, "a connection broke: {r:?}");
        assert_eq!(r.wrong_backend, 0, "{r:?}");
    }
}
