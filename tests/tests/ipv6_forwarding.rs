//! IPv6 forwarding end to end in a netns lab: an xvip node whose only VIP is IPv6 balances HTTP from an IPv6 client
//! over three IPv6 backends by DSR (each holds the VIP on `lo` and answers the client directly) and by NAT (the
//! backends see the VIP as the client; replies come back through the node); a backend whose health check fails
//! gets no new connection, and gets them again once it is back; NAT connections survive a failover to a second
//! node. IPv6 is turned on, without DAD, for the client, the nodes and the backends only. Needs root.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use xvip_tests::{
    Lab, LabSpec, cmd, ipv6,
    probe::{self, RequestLoop, StreamEnd},
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

const PORT: u16 = 8080;
const BACKENDS: u16 = 3;

fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

/// `fd00:77::2N`: backend N's IPv6 address.
fn backend6(n: u16) -> Ipv6Addr {
    ipv6::address(0x20 + n)
}

/// A lab with IPv6 on the client (fd00:77::10), node1 (fd00:77::1) and the three backends, each holding the VIP on
/// `lo` and serving HTTP on `[::]:PORT` (IPv4 too: with `dual_stack`, they hold the IPv4 VIP on `lo` as well).
fn lab_with(dual_stack: bool) -> Lab {
    let spec = if dual_stack { LabSpec::dsr(2, usize::from(BACKENDS)) } else { LabSpec::nat(2, usize::from(BACKENDS)) };
    let lab = Lab::new(spec).expect("lab");
    ipv6::enable(lab.client(), 0x10).expect("IPv6 on the client");
    ipv6::enable(lab.node(1), 1).expect("IPv6 on node1");
    for n in 1..=BACKENDS {
        let host = lab.backend(usize::from(n));
        ipv6::enable(host, 0x20 + n).expect("IPv6 on a backend");
        cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"]).expect("IPv6 on lo");
        cmd::ip_in(&host.ns, ["-6", "addr", "add", &format!("{}/128", vip6()), "dev", "lo"]).expect("VIP on lo");
        lab.start_backend_listening(usize::from(n), &[PORT], true).expect("lab-backend");
    }
    lab
}

fn lab() -> Lab {
    lab_with(false)
}

fn service(lab: &Lab) -> ServiceSpec {
    ServiceSpec {
        backends: (1..=BACKENDS).map(|n| (IpAddr::V6(backend6(n)), PORT)).collect(),
        ..ServiceSpec::http(lab, PORT, PORT, "dsr")
    }
}

/// node1 with the IPv6 VIP as its only address, active, every backend healthy with its MAC known.
fn active_node(lab: &Lab) -> XvipNode {
    let spec = NodeSpec { vip4: false, vip6: vec![vip6()], ..NodeSpec::new(150).service(service(lab)) };
    let node = lab.start_xvip(lab.node(1), &spec).expect("xvip");
    node.wait_role("active", Duration::from_secs(5)).expect("active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    node
}

fn target() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(vip6()), PORT)
}

/// Waits until a request through the VIP is answered (the client resolves the VIP first).
fn wait_answered(lab: &Lab, node: &XvipNode) {
    let start = Instant::now();
    while probe::http_get(&lab.client().ns, target(), "/", Duration::from_millis(500)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(5), "the VIP never answered over IPv6:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until backend `n`'s health in node's status is `healthy`.
fn wait_health(node: &XvipNode, n: u16, healthy: bool) {
    let address = backend6(n).to_string();
    let start = Instant::now();
    loop {
        let status = node.status().expect("status");
        if status.services[0].backends.iter().any(|b| b.address == address && b.healthy == healthy) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "backend{n} never became healthy={healthy}: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ipv6_requests_spread_over_the_ipv6_backends_and_avoid_a_failed_one() {
    let lab = lab();
    let node = active_node(&lab);
    wait_answered(&lab, &node);

    let tally = lab.request_many(target(), 90).expect("requests");
    eprintln!("measured: {:?}", tally.per_backend);
    assert_eq!(tally.failures, 0, "{tally:?}\n{}", node.log());
    for n in 1..=BACKENDS {
        let got = tally.per_backend.get(&format!("backend{n}")).copied().unwrap_or(0);
        assert!(got >= 10, "backend{n} got {got} of 90: {tally:?}");
    }
    // Status shows the IPv6 backends with their health, MAC and traffic.
    let status = node.status().expect("status");
    let backends = &status.services[0].backends;
    assert_eq!(backends.len(), usize::from(BACKENDS), "{backends:?}");
    for b in backends {
        assert!(b.address.parse::<Ipv6Addr>().is_ok(), "{b:?}");
        assert!(b.healthy && b.mac.is_some() && b.packets > 0, "{b:?}");
    }
    assert!(status.counters.dataplane.get("forward_tx").copied().unwrap_or(0) >= 90, "{:?}", status.counters);

    // backend2 stops: its check fails, and no new connection goes there.
    lab.stop_backend(2).expect("stop backend2");
    wait_health(&node, 2, false);
    let tally = lab.request_many(target(), 60).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_eq!(tally.per_backend.get("backend2"), None, "{tally:?}");
    assert!(tally.per_backend.len() == 2, "both others still answer: {tally:?}");

    // Back: it takes new connections again.
    lab.start_backend_listening(2, &[PORT], true).expect("restart backend2");
    wait_health(&node, 2, true);
    let tally = lab.request_many(target(), 60).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert!(tally.per_backend.get("backend2").copied().unwrap_or(0) > 0, "{tally:?}");
}

#[test]
fn a_dual_stack_service_balances_ipv4_to_its_ipv4_backends_and_ipv6_to_its_ipv6_ones() {
    let lab = lab_with(true);
    let mut svc = ServiceSpec::http(&lab, PORT, PORT, "dsr");
    svc.backends.extend(service(&lab).backends);
    let spec = NodeSpec { vip6: vec![vip6()], ..NodeSpec::new(150).service(svc) };
    let node = lab.start_xvip(lab.node(1), &spec).expect("xvip");
    node.wait_role("active", Duration::from_secs(5)).expect("active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    wait_answered(&lab, &node);

    let status = node.status().expect("status");
    assert_eq!(status.services[0].backends.len(), 2 * usize::from(BACKENDS), "{status:?}");
    let before: Vec<(String, u64)> =
        status.services[0].backends.iter().map(|b| (b.address.clone(), b.packets)).collect();
    for target in [target(), lab.vip_addr(PORT)] {
        let tally = lab.request_many(target, 60).expect("requests");
        eprintln!("measured through {target}: {:?}", tally.per_backend);
        assert_eq!(tally.failures, 0, "{tally:?}\n{}", node.log());
        assert_eq!(tally.per_backend.len(), usize::from(BACKENDS), "every backend answers: {tally:?}");
    }
    // Each family's packets went to its own backends: both families' backends carried traffic.
    let status = node.status().expect("status");
    for b in &status.services[0].backends {
        let was = before.iter().find(|(a, _)| *a == b.address).map_or(0, |(_, p)| *p);
        assert!(b.packets > was, "{} carried nothing: {:?}", b.address, status.services[0].backends);
    }
}

// ----- NAT to IPv6 backends -----

/// A NAT lab: IPv6 on the client, both nodes (IPv6 forwarding on, for the FIB lookups of replies) and the
/// backends, which serve HTTP on `[::]:PORT` and do not hold the VIP.
fn nat_lab() -> Lab {
    let lab = Lab::new(LabSpec::nat(2, usize::from(BACKENDS))).expect("lab");
    ipv6::enable(lab.client(), 0x10).expect("IPv6 on the client");
    for n in 1..=2u16 {
        let host = lab.node(usize::from(n));
        ipv6::enable(host, n).expect("IPv6 on a node");
        cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]).expect("IPv6 forwarding");
    }
    for n in 1..=BACKENDS {
        ipv6::enable(lab.backend(usize::from(n)), 0x20 + n).expect("IPv6 on a backend");
        lab.start_backend_listening(usize::from(n), &[PORT], true).expect("lab-backend");
    }
    lab
}

fn nat_spec(lab: &Lab, priority: u8) -> NodeSpec {
    let service = ServiceSpec { forwarding: "nat".into(), ..service(lab) };
    NodeSpec { vip4: false, vip6: vec![vip6()], ..NodeSpec::new(priority).service(service) }
}

#[test]
fn ipv6_nat_requests_spread_over_the_ipv6_backends_and_avoid_a_failed_one() {
    let lab = nat_lab();
    let node = lab.start_xvip(lab.node(1), &nat_spec(&lab, 150)).expect("xvip");
    node.wait_role("active", Duration::from_secs(5)).expect("active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    wait_answered(&lab, &node);

    let tally = lab.request_many(target(), 90).expect("requests");
    eprintln!("measured: {:?}", tally.per_backend);
    assert_eq!(tally.failures, 0, "{tally:?}\n{}", node.log());
    for n in 1..=BACKENDS {
        let got = tally.per_backend.get(&format!("backend{n}")).copied().unwrap_or(0);
        assert!(got >= 10, "backend{n} got {got} of 90: {tally:?}");
    }
    let counters = node.status().expect("status").counters.dataplane;
    assert!(counters.get("nat_forward_tx").copied().unwrap_or(0) >= 90, "{counters:?}");
    assert!(counters.get("nat_reply_tx").copied().unwrap_or(0) >= 90, "{counters:?}");
    assert_eq!(counters.get("forward_tx").copied().unwrap_or(0), 0, "nothing went by DSR: {counters:?}");
    // The backend sees the VIP as the client (a connection through the VIP reports who it came from).
    let watch = RequestLoop::start(&lab.client().ns, target(), Duration::from_millis(100), Duration::from_secs(5))
        .expect("request loop");
    let report = watch.stop().expect("loop report");
    let seen = report.client_seen.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| report.client_seen.parse());
    assert_eq!(seen.ok(), Some(IpAddr::V6(vip6())), "the backend saw {}", report.client_seen);

    lab.stop_backend(2).expect("stop backend2");
    wait_health(&node, 2, false);
    let tally = lab.request_many(target(), 60).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_eq!(tally.per_backend.get("backend2"), None, "{tally:?}");
    lab.start_backend_listening(2, &[PORT], true).expect("restart backend2");
    wait_health(&node, 2, true);
    let tally = lab.request_many(target(), 60).expect("requests");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert!(tally.per_backend.get("backend2").copied().unwrap_or(0) > 0, "{tally:?}");
}

#[test]
fn ipv6_nat_connections_survive_a_graceful_handover() {
    const N: usize = 6;
    let lab = nat_lab();
    let mut n1 = lab.start_xvip(lab.node(1), &nat_spec(&lab, 150)).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &nat_spec(&lab, 100)).expect("node2");
    n1.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(5)).expect("node2 backup");
    n1.wait_all_healthy(Duration::from_secs(10)).expect("node1 healthy");
    n2.wait_all_healthy(Duration::from_secs(10)).expect("node2 healthy");
    wait_answered(&lab, &n1);
    let loops: Vec<RequestLoop> = (0..N)
        .map(|_| {
            RequestLoop::start(&lab.client().ns, target(), Duration::from_millis(100), Duration::from_secs(15))
                .expect("request loop")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while loops.iter().any(|l| l.answered() < 3) {
        assert!(Instant::now() < deadline, "loops never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before: Vec<usize> = loops.iter().map(RequestLoop::answered).collect();
    n1.terminate().expect("SIGTERM node1");
    n2.wait_role("active", Duration::from_secs(3)).expect("node2 takes over");
    let deadline = Instant::now() + Duration::from_secs(30);
    while loops.iter().zip(&before).any(|(l, b)| !l.ended() && l.answered() < b + 5) {
        assert!(Instant::now() < deadline, "loops neither answered nor failed within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports: Vec<probe::LoopReport> = loops.into_iter().map(|l| l.stop().expect("loop report")).collect();
    let survivors = reports
        .iter()
        .zip(&before)
        .filter(|(r, b)| r.end == StreamEnd::StillOpen && r.wrong_backend == 0 && r.answered >= *b + 5)
        .count();
    let carried = n2.status().map(|s| s.counters.dataplane.get("nat_forward_tx").copied().unwrap_or(0)).unwrap_or(0);
    eprintln!("IPv6 NAT handover: {survivors} of {N} survived; node2 translated {carried} client packets");
    assert_eq!(survivors, N, "{survivors} of {N} survived:\n{}", n2.log());
    assert!(carried >= 5 * N as u64, "node2 carried the connections ({carried} packets)");
}
