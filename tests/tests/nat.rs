//! NAT forwarding end to end in a netns lab: HTTP through the VIP to three unmodified backends (no VIP on their
//! loopback, no route change: they answer the VIP, which is on their subnet, so their replies go to whichever node
//! answers ARP for it), and long-lived connections across failovers. Needs root.
//!
//! Which long-lived connections can survive a failover: the new active node starts with empty NAT maps and
//! rebuilds a flow's translation from the *client's* next packet (same hash, same backend, same NAT port). A
//! connection in which the client keeps sending (requests, or TCP keepalive probes) therefore survives; a pure
//! server-push stream, whose client only ACKs what it receives, receives nothing after the switch and so sends
//! nothing: it stalls until the client sends something. The survival tests use request/response loops; the
//! server-push test shows both cases.
use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use xvip_tests::{
    Lab, LabSpec,
    probe::{self, RequestLoop, StreamEnd, StreamWatch},
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// Long-lived connections per failover test.
const N: usize = 10;

fn lab() -> Lab {
    Lab::new(LabSpec::nat(2, 3)).expect("lab")
}

fn wait_healthy(node: &XvipNode) {
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
}

/// Starts node1 (150, active) and node2 (100, backup) with a NAT web service (80 -> 8080 on every backend) and
/// waits until both have healthy backends and the service answers through the VIP.
fn pair(lab: &Lab) -> (XvipNode, XvipNode) {
    lab.start_backends(&[BACKEND_PORT]).expect("backends");
    let service = ServiceSpec::http(lab, SERVICE_PORT, BACKEND_PORT, "nat");
    let n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150).service(service.clone())).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100).service(service)).expect("node2");
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
    wait_healthy(&n1);
    wait_healthy(&n2);
    for _ in 0..100 {
        if probe::http_get(&lab.client().ns, lab.vip_addr(SERVICE_PORT), "/", Duration::from_millis(500)).is_ok() {
            return (n1, n2);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the service never answered through the VIP:\n{}", n1.log());
}

fn dataplane_counter(node: &XvipNode, name: &str) -> u64 {
    node.status().map(|s| s.counters.dataplane.get(name).copied().unwrap_or(0)).unwrap_or(0)
}

#[test]
fn http_through_the_vip_reaches_every_backend_which_sees_the_vip_as_the_client() {
    let lab = lab();
    let (n1, _n2) = pair(&lab);
    let tally = lab.request_many(lab.vip_addr(SERVICE_PORT), 300).expect("requests");
    eprintln!("300 requests through the VIP: {:?}, failures {} {:?}", tally.per_backend, tally.failures, tally.errors);
    assert_eq!(tally.failures, 0, "{:?}", tally.errors);
    assert_eq!(tally.per_backend.len(), 3, "{:?}", tally.per_backend);
    for (backend, n) in &tally.per_backend {
        assert!((60..=141).contains(n), "{backend} got {n} of 300 (outside 20%..47%): {:?}", tally.per_backend);
    }

    // The backends see the VIP, from a NAT port, never the client.
    let response =
        probe::http_get(&lab.client().ns, lab.vip_addr(SERVICE_PORT), "/", Duration::from_secs(1)).expect("GET");
    let seen: SocketAddr = response.header("x-client").expect("X-Client header").parse().expect("X-Client address");
    assert_eq!(seen.ip(), IpAddr::V4(lab.vip()), "the backend saw {seen}");
    assert!(seen.port() >= 1024, "NAT ports start at 1024: {seen}");

    // Both directions went through XDP; the health checks (node address <-> backends) kept every backend up.
    let status = n1.status().expect("status");
    let c = &status.counters.dataplane;
    eprintln!("node1 data plane counters: {c:?}");
    assert!(c["nat_forward_tx"] >= 300 && c["nat_reply_tx"] >= 300, "{c:?}");
    assert_eq!(c["drop_nat_no_port"], 0);
    assert!(status.services[0].backends.iter().all(|b| b.healthy), "{:?}", status.services);
}

/// `TcpExtTCPSynRetrans` of a namespace: SYNs the kernel had to send again (a lost or refused attempt).
fn syn_retransmits(lab: &Lab, ns: &str) -> u64 {
    let netstat = lab.exec(ns, ["cat", "/proc/net/netstat"]).expect("netstat");
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let found = names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == "TCPSynRetrans");
        if let Some((_, v)) = found {
            return v.parse().expect("counter");
        }
    }
    panic!("no TCPSynRetrans in /proc/net/netstat:\n{netstat}");
}

/// Connections from one client port, one after the other: the backend closes each first and holds TIME_WAIT on
/// its 4-tuple, which the next connection reuses at once. Returns the distinct (`X-Backend`, `X-Client`) pairs and
/// how many SYNs the client had to retransmit.
fn reuse_one_port(lab: &Lab, target: SocketAddrV4, local_port: u16, n: usize) -> (Vec<(String, String)>, u64) {
    let before = syn_retransmits(lab, &lab.client().ns);
    let seen = lab
        .in_netns(&lab.client().ns, move || {
            let mut seen = Vec::new();
            for i in 0..n {
                let response = xvip_tests::http::get_from_port(target, local_port, "/", Duration::from_secs(5))
                    .map_err(|e| anyhow::anyhow!("connection {i} from port {local_port} to {target}: {e}"))?;
                let header = |name| response.header(name).unwrap_or_default().to_owned();
                seen.push((header("x-backend"), header("x-client")));
            }
            Ok(seen)
        })
        .expect("connections");
    let after = syn_retransmits(lab, &lab.client().ns);
    let mut distinct = seen;
    distinct.sort();
    distinct.dedup();
    (distinct, after - before)
}

#[test]
fn a_reused_client_port_reaches_the_backend_as_a_direct_client_would() {
    let lab = lab();
    let _nodes = pair(&lab);
    // Directly to a backend: what a client reusing its port costs without a load balancer.
    let direct = SocketAddrV4::new(lab.backend(1).ip, BACKEND_PORT);
    let (direct_seen, direct_retransmits) = reuse_one_port(&lab, direct, 45001, 30);
    // Through the VIP: the NAT port is a function of the client flow, so the backend sees the same 4-tuple reused
    // (and the same client's ISNs and timestamps), which its TIME_WAIT handling accepts the same way.
    let vip = SocketAddrV4::new(lab.vip(), SERVICE_PORT);
    let (via_vip_seen, via_vip_retransmits) = reuse_one_port(&lab, vip, 45002, 30);
    eprintln!(
        "30 connections from one port: direct {direct_seen:?}, {direct_retransmits} SYN retransmits; \
         through the VIP {via_vip_seen:?}, {via_vip_retransmits} SYN retransmits"
    );
    assert_eq!(direct_seen.len(), 1);
    assert_eq!(via_vip_seen.len(), 1, "one backend and one NAT port for one client flow: {via_vip_seen:?}");
    let (backend, client_seen) = &via_vip_seen[0];
    assert!(client_seen.starts_with(&format!("{}:", lab.vip())), "{via_vip_seen:?}");
    // The reuse really met a TIME_WAIT each time: the backend holds one for the (VIP, NAT port) 4-tuple.
    let host = lab.host(backend).expect("the backend named in X-Backend");
    let time_wait = lab.exec(&host.ns, ["ss", "-Htan", "state", "time-wait"]).expect("ss");
    assert!(time_wait.contains(client_seen.as_str()), "no TIME_WAIT towards {client_seen} on {backend}:\n{time_wait}");
    assert_eq!(via_vip_retransmits, direct_retransmits, "no connection had to wait for a SYN retransmission");
}

/// Opens `N` request/response loops through the VIP, waits until each has a few answers, runs `failover`, then
/// waits until every loop has answered again or given up. Returns (survivors, reports).
fn loops_across(lab: &Lab, failover: impl FnOnce()) -> (usize, Vec<probe::LoopReport>) {
    let loops: Vec<RequestLoop> = (0..N)
        .map(|_| {
            RequestLoop::start(
                &lab.client().ns,
                lab.vip_addr(SERVICE_PORT),
                Duration::from_millis(100),
                Duration::from_secs(15),
            )
            .expect("request loop")
        })
        .collect();
    let backends: Vec<&str> = loops.iter().map(RequestLoop::backend).collect();
    eprintln!("{N} connections on backends {backends:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while loops.iter().any(|l| l.answered() < 3) {
        assert!(Instant::now() < deadline, "loops never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before: Vec<usize> = loops.iter().map(RequestLoop::answered).collect();
    failover();
    // TCP retransmissions reach the new node within a few RTOs; every loop either answers again or fails.
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
    for r in &reports {
        eprintln!(
            "  {} seen as {}: {} answers, longest gap {:?}, end {:?}, wrong backend {}",
            r.backend, r.client_seen, r.answered, r.longest_gap, r.end, r.wrong_backend
        );
    }
    (survivors, reports)
}

#[test]
fn long_lived_connections_survive_a_graceful_handover() {
    let lab = lab();
    let (mut n1, n2) = pair(&lab);
    let (survivors, _) = loops_across(&lab, || {
        n1.terminate().expect("SIGTERM node1");
        n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    });
    let (carried, no_entry) = (dataplane_counter(&n2, "nat_forward_tx"), dataplane_counter(&n2, "drop_nat_no_entry"));
    eprintln!(
        "graceful handover: {survivors} of {N} connections survived; node2 translated {carried} client packets and \
         dropped {no_entry} replies without translation"
    );
    assert_eq!(survivors, N, "{survivors} of {N} survived:\n{}", n2.log());
    assert!(carried >= 5 * N as u64, "node2 carried the connections after the handover ({carried} packets)");
}

#[test]
fn long_lived_connections_survive_the_active_node_losing_its_link() {
    let lab = lab();
    let (_n1, n2) = pair(&lab);
    let (survivors, _) = loops_across(&lab, || {
        lab.cut_link(lab.node(1)).expect("cut node1");
        n2.wait_role("active", Duration::from_secs(3)).expect("node2 takes over");
    });
    let (carried, no_entry) = (dataplane_counter(&n2, "nat_forward_tx"), dataplane_counter(&n2, "drop_nat_no_entry"));
    eprintln!(
        "link down: {survivors} of {N} connections survived; node2 translated {carried} client packets and passed \
         {no_entry} replies without translation"
    );
    assert_eq!(survivors, N, "{survivors} of {N} survived:\n{}", n2.log());
    assert!(carried >= 5 * N as u64, "node2 carried the connections after the failover ({carried} packets)");
}

#[test]
fn a_server_push_stream_resumes_after_a_handover_once_its_client_sends() {
    let lab = lab();
    let (mut n1, n2) = pair(&lab);
    let target = lab.vip_addr(SERVICE_PORT);
    let timeout = Duration::from_secs(2);
    let open = |keepalive| {
        (0..N / 2)
            .map(|_| StreamWatch::start_with_keepalive(&lab.client().ns, target, timeout, keepalive).expect("stream"))
            .collect::<Vec<_>>()
    };
    // Silent clients: they only ACK what they receive. Chatty ones: a keepalive probe after 1 s of silence.
    let silent = open(None);
    let chatty = open(Some(Duration::from_secs(1)));
    std::thread::sleep(Duration::from_millis(300));
    n1.terminate().expect("SIGTERM node1");
    n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    let at_switch: Vec<usize> = silent.iter().chain(&chatty).map(StreamWatch::lines).collect();
    // Long enough for a keepalive probe (1 s) and the backend's next retransmission (RTO backoff).
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = |streams: &[StreamWatch], from: &[usize]| {
        streams.iter().zip(from).filter(|(s, before)| s.lines() >= *before + 10).count()
    };
    while resumed(&chatty, &at_switch[N / 2..]) < chatty.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (silent_resumed, chatty_resumed) =
        (resumed(&silent, &at_switch[..N / 2]), resumed(&chatty, &at_switch[N / 2..]));
    let no_entry = dataplane_counter(&n2, "drop_nat_no_entry");
    let reports: Vec<_> = silent.into_iter().chain(chatty).map(|s| s.stop().expect("stream report")).collect();
    for r in &reports {
        eprintln!("  {}: {} lines, longest gap {:?}, end {:?}", r.backend, r.lines, r.longest_gap, r.end);
    }
    eprintln!(
        "server push across a graceful handover: {silent_resumed} of {} silent clients and {chatty_resumed} of {} \
         clients with keepalive resumed; node2 dropped {no_entry} replies without translation",
        N / 2,
        N / 2
    );
    assert_eq!(chatty_resumed, N / 2, "a client that sends rebuilds the translation");
}

/// The backend that served a response (its `X-Backend` header).
fn served_by(response: &xvip_tests::http::Response) -> String {
    response.header("x-backend").unwrap_or_default().to_owned()
}

/// One connection from each of `ports` to `target` in turn; the backend that served each.
fn backends_of_ports(lab: &Lab, target: SocketAddrV4, ports: &[u16]) -> Vec<String> {
    let ports = ports.to_vec();
    lab.in_netns(&lab.client().ns, move || {
        ports
            .iter()
            .map(|&p| {
                xvip_tests::http::get_from_port(target, p, "/", Duration::from_secs(5))
                    .map(|r| served_by(&r))
                    .map_err(|e| anyhow::anyhow!("GET from port {p}: {e}"))
            })
            .collect()
    })
    .expect("connections from fixed ports")
}

#[test]
fn a_node_active_again_keeps_nothing_from_its_last_active_period() {
    // The soak found this: node2, active earlier while a backend was out, had pinned a connection from client
    // port P to another backend than the full table gives. When it took over again, a long-lived connection from
    // the same port P (opened through node1 under the full table) was sent to that old backend and reset.
    let lab = lab();
    lab.start_backends(&[BACKEND_PORT]).expect("backends");
    let service = ServiceSpec::http(&lab, SERVICE_PORT, BACKEND_PORT, "nat");
    let n2 = lab.start_xvip(lab.node(2), &NodeSpec::new(100).service(service.clone())).expect("node2");
    n2.wait_role("active", Duration::from_secs(5)).expect("node2 active");
    wait_healthy(&n2);
    let target = SocketAddrV4::new(lab.vip(), SERVICE_PORT);
    // Under backend1 and backend2 only.
    lab.set_backend_ready(3, false).expect("backend3 unready");
    let deadline = Instant::now() + Duration::from_secs(5);
    while n2
        .status()
        .is_ok_and(|s| s.services[0].backends.iter().any(|b| b.address == lab.backend(3).ip.to_string() && b.healthy))
    {
        assert!(Instant::now() < deadline, "node2 never took backend3 out:\n{}", n2.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ports: Vec<u16> = (0..24).map(|i| 40_000 + 7 * i).collect();
    let before = backends_of_ports(&lab, target, &ports);
    lab.set_backend_ready(3, true).expect("backend3 ready");
    wait_healthy(&n2);
    // node1 comes and preempts: node2 is a backup and, from now on, knows nothing the peer will do.
    let mut n1 = lab.start_xvip(lab.node(1), &NodeSpec::new(150).service(service)).expect("node1");
    n1.wait_role("active", Duration::from_secs(10)).expect("node1 preempts");
    n2.wait_role("backup", Duration::from_secs(2)).expect("node2 backup");
    wait_healthy(&n1);
    let after = backends_of_ports(&lab, target, &ports);
    let moved: Vec<(u16, String)> = ports
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(p, (_, a))| (*p, a.clone()))
        .collect();
    eprintln!("ports whose backend differs between the two tables: {moved:?}");
    assert!(!moved.is_empty(), "no port moved with backend3 back: before {before:?}, after {after:?}");

    // Long-lived connections from those ports through node1; node1 dies; node2 must carry them to their backends.
    let survived = lab
        .in_netns(&lab.client().ns, || {
            let mut connections = Vec::new();
            for (port, backend) in &moved {
                let mut c = xvip_tests::http::Connection::open_from_port(target, *port, Duration::from_secs(5))?;
                let first = served_by(&c.get("/", Duration::from_secs(5))?);
                anyhow::ensure!(&first == backend, "port {port}: {first}, expected {backend}");
                connections.push((*port, backend.clone(), c));
            }
            n1.kill()?;
            n2.wait_role("active", Duration::from_secs(3))?;
            Ok(connections
                .into_iter()
                .map(|(port, backend, mut c)| {
                    let answer = c.get("/", Duration::from_secs(5)).map(|r| served_by(&r));
                    (port, backend, answer.map_err(|e| e.to_string()))
                })
                .collect::<Vec<_>>())
        })
        .expect("long-lived connections");
    for (port, backend, answer) in &survived {
        assert_eq!(answer.as_ref(), Ok(backend), "the connection from port {port} to {backend}:\n{}", n2.log());
    }
    assert!(n2.log().contains("forgot"), "node2 forgot its flows when it left the active role:\n{}", n2.log());
}

/// Whether backend `n`'s health, as `node` sees it, is `healthy`.
fn backend_healthy(lab: &Lab, node: &XvipNode, n: usize) -> bool {
    let address = lab.backend(n).ip.to_string();
    node.status().is_ok_and(|s| s.services.iter().flat_map(|s| &s.backends).any(|b| b.address == address && b.healthy))
}

#[test]
fn a_backend_back_from_a_link_loss_learns_the_vip_at_once() {
    // The soak found this: a backend that tried to reach the VIP while its link was cut kept that neighbour entry
    // unresolved after the link came back, and held its SYN/ACKs until its next ARP retry (retrans_time, 1 s by
    // default): the new connections sent to it meanwhile failed. The active node announces the VIP when such a
    // backend passes its check again. backend1 retries only every 5 s here, so only that announcement resolves
    // the entry within the test.
    let lab = lab();
    let (n1, _n2) = pair(&lab);
    let backend = lab.backend(1).clone();
    lab.exec(&backend.ns, ["sysctl", "-q", "-w", "net.ipv4.neigh.eth0.retrans_time_ms=5000"]).expect("sysctl");
    lab.cut_link(&backend).expect("cut backend1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_healthy(&lab, &n1, 1) {
        assert!(Instant::now() < deadline, "node1 never took backend1 out:\n{}", n1.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Something to send to the VIP while cut off (a reply the backend owes, here a ping): the entry is pending.
    let _ = lab.exec(&backend.ns, ["ping", "-c", "1", "-W", "1", &lab.vip().to_string()]);
    let pending = lab.exec(&backend.ns, ["ip", "neigh", "show", &lab.vip().to_string(), "dev", "eth0"]).expect("ip");
    assert!(pending.contains("INCOMPLETE") || pending.contains("FAILED"), "not pending: {pending}");
    lab.restore_link(&backend).expect("restore backend1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backend_healthy(&lab, &n1, 1) {
        assert!(Instant::now() < deadline, "node1 never took backend1 back:\n{}", n1.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let back = Instant::now();
    let node1 = lab.node(1).mac;
    loop {
        if lab.neighbour(&backend, lab.vip()).expect("ip neigh") == Some(node1) {
            break;
        }
        let entry = lab.exec(&backend.ns, ["ip", "neigh", "show", &lab.vip().to_string(), "dev", "eth0"]);
        assert!(back.elapsed() < Duration::from_millis(500), "backend1 still has {entry:?} for the VIP");
        std::thread::sleep(Duration::from_millis(10));
    }
}
