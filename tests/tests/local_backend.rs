//! A backend on the xvip nodes themselves (a stacked control plane: every node runs the API server and xvip, and
//! lists every node as a backend), end to end in a netns lab: two nodes, each running a lab backend in its own
//! namespace, plus one ordinary backend; a client outside. Needs root.
//!
//! - The active node's own backend gets its Maglev share through the VIP, in NAT (its frames are translated as for
//!   a remote backend and handed to the node's stack; the egress program translates its replies back) and DSR
//!   (the frames are handed over unchanged; the backend holds the VIP on its loopback).
//! - Long-lived connections on every backend across a graceful handover and a link cut, counted per kind: flows
//!   on the old active node's own backend (which becomes a remote backend for the node taking over), flows on the
//!   new active node's own backend (remote before, local after), flows on the ordinary backend.
//! - After SIGKILL the dead node holds nothing: no program on its interface, no answer for the VIP, its own
//!   traffic to the VIP reaches the new active node, and its backend is reached again through the VIP.
//! - The same over IPv6 (an IPv6 VIP over the hosts' IPv6 addresses): each node's own backend gets its share in
//!   NAT and DSR, and NAT connections on every backend survive a graceful handover.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use xvip_tests::{
    ChildGuard, Lab, LabSpec, MacAddr, cmd, ipv6,
    probe::{self, RequestLoop, StreamEnd},
    udp::{UdpEcho, parse_echo},
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// Long-lived connections per failover test: enough that each of the three backends gets several.
const N: usize = 24;

/// Two nodes and one ordinary backend.
fn lab(dsr: bool) -> Lab {
    Lab::new(LabSpec {
        nodes: 2,
        backends: 1,
        vip_on_backends_lo: dsr,
        backend_bin: Some(env!("CARGO_BIN_EXE_lab-backend").into()),
    })
    .expect("lab")
}

/// A stacked lab: a lab backend in each node's namespace (named after the node) and in the ordinary backend,
/// and a service over all three. Under DSR the nodes hold the VIP on their loopback as every DSR backend does.
struct Stacked {
    lab: Lab,
    /// The lab backends running on the nodes, held until the test ends (stopped when dropped).
    _servers: Vec<ChildGuard>,
    service: ServiceSpec,
    /// More services of the nodes, after `service`.
    extra: Vec<ServiceSpec>,
    /// The IPv6 VIP, for a lab over IPv6 (the nodes then hold no IPv4 VIP).
    vip6: Option<Ipv6Addr>,
}

fn stacked(forwarding: &str) -> Stacked {
    stacked_over(forwarding, false)
}

/// `fd00:77::250`, the IPv6 labs' VIP; host N of [`ipv6::enable`] is `fd00:77::N`.
fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

/// The stacked lab, over IPv4 or (`over_ipv6`) IPv6: IPv6 on the client (`::10`), the nodes (`::1`, `::2`, with
/// IPv6 forwarding for the FIB lookups of NAT replies) and the backend (`::21`), the lab backends listening on
/// both families, a service on the IPv6 VIP over the hosts' IPv6 addresses.
fn stacked_over(forwarding: &str, over_ipv6: bool) -> Stacked {
    let dsr = forwarding == "dsr";
    // DSR backends answer from the VIP untranslated: they listen on the service port.
    let backend_port = if dsr { SERVICE_PORT } else { BACKEND_PORT };
    let lab = lab(dsr && !over_ipv6);
    if over_ipv6 {
        ipv6::enable(lab.client(), 0x10).expect("IPv6 on the client");
        let hosts = lab.nodes().iter().zip([1, 2]).chain([(lab.backend(1), 0x21)]);
        for (host, n) in hosts {
            ipv6::enable(host, n).expect("IPv6 on a node or backend");
            if dsr {
                cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"]).expect("lo");
                cmd::ip_in(&host.ns, ["-6", "addr", "add", &format!("{}/128", vip6()), "dev", "lo"]).expect("VIP");
            }
        }
        for node in lab.nodes() {
            cmd::exec_in(&node.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]).expect("forwarding");
        }
        lab.start_backend_listening(1, &[backend_port], true).expect("backend");
    } else {
        lab.start_backends(&[backend_port]).expect("backends");
    }
    let mut servers = Vec::new();
    for node in lab.nodes() {
        // Locally sent frames carry partial checksums on veth (TX offload); once they leave a node (a backup's
        // backend answering through the active node) the peer's XDP rewrites need full ones, as from any backend.
        lab.exec(&node.ns, ["ethtool", "-K", "eth0", "tx", "off"]).expect("tx offload off");
        if dsr && !over_ipv6 {
            let vip = format!("{}/32", lab.vip());
            lab.exec(&node.ns, ["ip", "addr", "add", &vip, "dev", "lo"]).expect("VIP on lo");
            for setting in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
                lab.exec(&node.ns, ["sysctl", "-q", "-w", setting]).expect("sysctl");
            }
        }
        let bin = env!("CARGO_BIN_EXE_lab-backend");
        let port = backend_port.to_string();
        let mut argv = vec![bin, "--name", node.name.as_str(), "--port", port.as_str()];
        if over_ipv6 {
            argv.push("--ipv6");
        }
        let mut server = lab.spawn(&node.ns, argv).expect("node backend");
        server.wait_for_log(xvip_tests::READY_LINE, Duration::from_secs(5)).expect("node backend ready");
        servers.push(server);
    }
    let mut service = ServiceSpec::http(&lab, SERVICE_PORT, backend_port, forwarding);
    service.backends = if over_ipv6 {
        [1, 2, 0x21].into_iter().map(|n| (IpAddr::V6(ipv6::address(n)), backend_port)).collect()
    } else {
        lab.nodes().iter().chain(lab.backends()).map(|h| (h.ip.into(), backend_port)).collect()
    };
    Stacked { lab, _servers: servers, service, extra: Vec::new(), vip6: over_ipv6.then(vip6) }
}

impl Stacked {
    /// Where clients reach the service: the IPv4 VIP, or the IPv6 one.
    fn target(&self) -> SocketAddr {
        match self.vip6 {
            Some(vip) => SocketAddr::new(IpAddr::V6(vip), SERVICE_PORT),
            None => self.lab.vip_addr(SERVICE_PORT),
        }
    }

    fn node_spec(&self, priority: u8) -> NodeSpec {
        let mut spec = NodeSpec::new(priority).service(self.service.clone());
        spec.services.extend(self.extra.iter().cloned());
        match self.vip6 {
            // With cgroup2 in the daemon's mount namespace, so the socket load balancer serves the nodes' own
            // clients (the IPv4 labs leave it off: their clients are the lab client).
            Some(vip) => NodeSpec { vip4: false, vip6: vec![vip], mount_cgroup2: true, ..spec },
            None => spec,
        }
    }

    /// node1 (150, active) and node2 (100, backup), both with every backend healthy, the service answering.
    fn start(&self) -> (XvipNode, XvipNode) {
        let lab = &self.lab;
        let n1 = lab.start_xvip(lab.node(1), &self.node_spec(150)).expect("node1");
        let n2 = lab.start_xvip(lab.node(2), &self.node_spec(100)).expect("node2");
        n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
        n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
        wait_healthy(&n1);
        wait_healthy(&n2);
        for _ in 0..100 {
            if probe::http_get(&lab.client().ns, self.target(), "/", Duration::from_millis(500)).is_ok() {
                return (n1, n2);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the service never answered through the VIP:\n{}", n1.log());
    }
}

fn wait_healthy(node: &XvipNode) {
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
}

fn counter(node: &XvipNode, name: &str) -> u64 {
    node.status().map(|s| s.counters.dataplane.get(name).copied().unwrap_or(0)).unwrap_or(0)
}

/// 90 new connections from the client through the VIP: every backend answers, the active node's own included.
fn spread(s: &Stacked) -> BTreeMap<String, usize> {
    let tally = s.lab.request_many(s.target(), 90).expect("requests");
    assert_eq!(tally.failures, 0, "failed requests: {:?}", tally.errors);
    for name in ["node1", "node2", "backend1"] {
        let n = tally.per_backend.get(name).copied().unwrap_or(0);
        assert!(n >= 10, "{name} answered {n} of 90 requests: {:?}", tally.per_backend);
    }
    tally.per_backend
}

#[test]
fn nat_the_active_nodes_own_backend_gets_its_share_and_sees_the_vip_as_the_client() {
    let s = stacked("nat");
    let (n1, _n2) = s.start();
    let per_backend = spread(&s);
    eprintln!("NAT, 90 requests through the VIP: {per_backend:?}");
    // Delivered by the XDP program to node1's own stack, answered through its egress program.
    let (delivered, replied, answered_arp) =
        (counter(&n1, "nat_forward_local"), counter(&n1, "nat_reply_local"), counter(&n1, "arp_replies_local"));
    eprintln!("node1: nat_forward_local {delivered}, nat_reply_local {replied}, arp_replies_local {answered_arp}");
    assert!(delivered >= 10 * 3 && replied >= 10 * 2, "node1's counters: {delivered} delivered, {replied} replies");
    assert!(answered_arp >= 1, "node1 answered its own ARP request for the VIP");
    // The local backend sees exactly what a remote one would: the VIP and a NAT port.
    let vip = s.lab.vip().to_string();
    for _ in 0..30 {
        let response = probe::http_get(&s.lab.client().ns, s.lab.vip_addr(SERVICE_PORT), "/", Duration::from_secs(1))
            .expect("GET");
        let client = response.header("x-client").unwrap_or_default().to_owned();
        assert!(client.starts_with(&format!("{vip}:")), "the backend saw {client}, not the VIP");
    }
    // node1 resolved the VIP to its own MAC (the egress program's answer), an ordinary dynamic entry.
    let node1 = s.lab.node(1);
    assert_eq!(s.lab.neighbour(node1, s.lab.vip()).expect("neigh"), Some(node1.mac));
}

#[test]
fn dsr_the_active_nodes_own_backend_gets_its_share() {
    let s = stacked("dsr");
    let (n1, n2) = s.start();
    let per_backend = spread(&s);
    let (delivered, held) = (counter(&n1, "forward_local"), counter(&n2, "pass_held_vip"));
    eprintln!(
        "DSR, 90 requests through the VIP: {per_backend:?}; node1 forward_local {delivered}, node2 pass_held_vip {held}"
    );
    assert!(delivered >= 10 * 3, "node1 delivered {delivered} packets to its own backend");
    // The backup hands the active node's forwards to its own backend to its kernel (the VIP is on its loopback).
    assert!(held >= 10 * 3, "node2 passed {held} packets to its own backend");
}

/// Counts of the survivors of a failover from node1 to node2, per backend.
#[derive(Debug, Default)]
struct Survival {
    /// (survived, total) of connections on node1's own backend, node2's own backend, backend1.
    per_backend: BTreeMap<String, (usize, usize)>,
}

impl Survival {
    fn total(&self) -> (usize, usize) {
        self.per_backend.values().fold((0, 0), |(s, t), (a, b)| (s + a, t + b))
    }
}

/// Opens `N` request/response loops through the VIP (new connections until each backend has at least 4), runs
/// `failover`, waits until every loop has answered 5 more times or ended.
fn loops_across(s: &Stacked, failover: impl FnOnce()) -> Survival {
    let mut loops: Vec<RequestLoop> = Vec::new();
    let start = || {
        RequestLoop::start(&s.lab.client().ns, s.target(), Duration::from_millis(100), Duration::from_secs(15))
            .expect("request loop")
    };
    while loops.len() < N {
        loops.push(start());
    }
    let mut extra = 0;
    while ["node1", "node2", "backend1"].iter().any(|b| loops.iter().filter(|l| l.backend() == *b).count() < 4) {
        assert!(extra < 60, "loops never spread over all three backends");
        loops.push(start());
        extra += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while loops.iter().any(|l| l.answered() < 3) {
        assert!(Instant::now() < deadline, "loops never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before: Vec<usize> = loops.iter().map(RequestLoop::answered).collect();
    failover();
    let deadline = Instant::now() + Duration::from_secs(30);
    while loops.iter().zip(&before).any(|(l, b)| !l.ended() && l.answered() < b + 5) {
        assert!(Instant::now() < deadline, "loops neither answered nor failed within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut survival = Survival::default();
    for (l, b) in loops.into_iter().zip(before) {
        let r = l.stop().expect("loop report");
        let survived = r.end == StreamEnd::StillOpen && r.wrong_backend == 0 && r.answered >= b + 5;
        let entry = survival.per_backend.entry(r.backend.clone()).or_default();
        entry.0 += usize::from(survived);
        entry.1 += 1;
        if !survived {
            eprintln!("  lost: {} seen as {}: {} answers, end {:?}", r.backend, r.client_seen, r.answered, r.end);
        }
    }
    survival
}

fn report(what: &str, survival: &Survival) {
    let (s, t) = survival.total();
    eprintln!("{what}: {s} of {t} connections survived");
    for (backend, (s, t)) in &survival.per_backend {
        let kind = match backend.as_str() {
            "node1" => "the old active node's own backend, remote for node2",
            "node2" => "remote before, node2's own backend after",
            _ => "an ordinary backend",
        };
        eprintln!("  {backend} ({kind}): {s} of {t}");
    }
}

#[test]
fn nat_long_lived_connections_on_every_backend_survive_a_graceful_handover() {
    nat_connections_survive_a_graceful_handover(false);
}

/// NAT connections on every backend, over IPv4 or IPv6, survive node1's graceful stop, and node2 serves its own
/// backend afterwards.
fn nat_connections_survive_a_graceful_handover(over_ipv6: bool) {
    let s = stacked_over("nat", over_ipv6);
    let (mut n1, n2) = s.start();
    let survival = loops_across(&s, || {
        n1.terminate().expect("SIGTERM node1");
        n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    });
    report(if over_ipv6 { "IPv6 NAT, graceful handover" } else { "NAT, graceful handover" }, &survival);
    let (survived, total) = survival.total();
    assert_eq!(survived, total, "{survived} of {total} survived:\n{}", n2.log());
    assert!(counter(&n2, "nat_forward_local") > 0 && counter(&n2, "nat_reply_local") > 0, "node2 served its own");
}

#[test]
fn nat_long_lived_connections_on_every_backend_survive_the_active_node_losing_its_link() {
    let s = stacked("nat");
    let (_n1, n2) = s.start();
    let survival = loops_across(&s, || {
        s.lab.cut_link(s.lab.node(1)).expect("cut node1");
        n2.wait_role("active", Duration::from_secs(3)).expect("node2 takes over");
    });
    report("NAT, link cut", &survival);
    // node1's own backend is cut off with it: its connections cannot survive, the others must.
    for (backend, (s, t)) in &survival.per_backend {
        if backend != "node1" {
            assert_eq!(s, t, "{backend}: {s} of {t} survived:\n{}", n2.log());
        }
    }
}

#[test]
fn dsr_long_lived_connections_on_every_backend_survive_a_graceful_handover() {
    let s = stacked("dsr");
    let (mut n1, n2) = s.start();
    let survival = loops_across(&s, || {
        n1.terminate().expect("SIGTERM node1");
        n2.wait_role("active", Duration::from_secs(2)).expect("node2 takes over");
    });
    report("DSR, graceful handover", &survival);
    let (survived, total) = survival.total();
    assert_eq!(survived, total, "{survived} of {total} survived:\n{}", n2.log());
}

#[test]
fn after_sigkill_the_dead_node_holds_nothing_and_its_backend_is_reached_through_the_new_active_node() {
    let s = stacked("nat");
    let (mut n1, n2) = s.start();
    spread(&s);
    let (lab, node1, node2) = (&s.lab, s.lab.node(1), s.lab.node(2));
    assert_eq!(lab.neighbour(node1, lab.vip()).expect("neigh"), Some(node1.mac), "node1 resolved the VIP to itself");
    n1.kill().expect("SIGKILL node1");
    n2.wait_role("active", Duration::from_secs(3)).expect("node2 takes over");
    // No program is left on node1's interface: the XDP and tcx links went with the process.
    let links = lab.exec(&node1.ns, ["bpftool", "net", "show", "dev", "eth0"]).expect("bpftool net");
    assert!(!links.contains("xvip"), "programs left on node1's eth0:\n{links}");
    // Only node2 answers ARP for the VIP.
    let answers: Vec<MacAddr> = lab.arp_probe(lab.client(), lab.vip()).expect("arp probe");
    assert_eq!(answers, vec![node2.mac], "ARP answers for the VIP");
    // node2's gratuitous ARPs replaced node1's entry for the VIP: node1's own traffic to the VIP (a client on the
    // dead node) reaches the new active node, which balances it like any client's.
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.neighbour(node1, lab.vip()).expect("neigh") != Some(node2.mac) {
        assert!(Instant::now() < deadline, "node1 still resolves the VIP to {:?}", lab.neighbour(node1, lab.vip()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let tally =
        probe::request_many(&node1.ns, lab.vip_addr(SERVICE_PORT), 30, Duration::from_secs(1)).expect("from node1");
    assert_eq!(tally.failures, 0, "node1 to the VIP: {:?}", tally.errors);
    // node1's backend still answers through the VIP (now a remote backend of node2), with node2 translating its
    // replies.
    let per_backend = spread(&s);
    eprintln!("after node1's SIGKILL, 90 requests through node2: {per_backend:?}");
}

// ----- over IPv6 -----

#[test]
fn ipv6_nat_the_active_nodes_own_backend_gets_its_share_and_sees_the_vip_as_the_client() {
    let s = stacked_over("nat", true);
    let (n1, _n2) = s.start();
    let per_backend = spread(&s);
    let (delivered, replied, answered) =
        (counter(&n1, "nat_forward_local"), counter(&n1, "nat_reply_local"), counter(&n1, "na_replies_local"));
    eprintln!(
        "IPv6 NAT, 90 requests through the VIP: {per_backend:?}; node1: nat_forward_local {delivered}, \
         nat_reply_local {replied}, na_replies_local {answered}"
    );
    assert!(delivered >= 10 * 3 && replied >= 10 * 2, "node1's counters: {delivered} delivered, {replied} replies");
    assert!(answered >= 1, "node1 answered its own Neighbor Solicitation for the VIP");
    // The local backend sees exactly what a remote one would: the VIP and a NAT port.
    let seen_as = format!("[{}]:", vip6());
    for _ in 0..30 {
        let response = probe::http_get(&s.lab.client().ns, s.target(), "/", Duration::from_secs(1)).expect("GET");
        let client = response.header("x-client").unwrap_or_default().to_owned();
        assert!(client.starts_with(&seen_as), "the backend saw {client}, not the VIP");
    }
}

#[test]
fn ipv6_dsr_the_active_nodes_own_backend_gets_its_share() {
    let s = stacked_over("dsr", true);
    let (n1, n2) = s.start();
    let per_backend = spread(&s);
    let (delivered, held) = (counter(&n1, "forward_local"), counter(&n2, "pass_held_vip"));
    eprintln!(
        "IPv6 DSR, 90 requests through the VIP: {per_backend:?}; node1 forward_local {delivered}, node2 \
         pass_held_vip {held}"
    );
    assert!(delivered >= 10 * 3, "node1 delivered {delivered} packets to its own backend");
    assert!(held >= 10 * 3, "node2 passed {held} packets to its own backend");
}

#[test]
fn ipv6_nat_long_lived_connections_on_every_backend_survive_a_graceful_handover() {
    nat_connections_survive_a_graceful_handover(true);
}

/// UDP port of the IPv6 echo service (no health check) in [`ipv6_local_clients_reach_every_backend_directly`].
const UDP_PORT: u16 = 5300;

/// One datagram from a new IPv6 socket in `ns` to `target`, sent unconnected (`sendto()`) or connected: (the
/// backend that echoed it, the sender it saw, the answer's source as `recvfrom()` reports it).
fn udp_ask6(
    lab: &Lab,
    ns: &str,
    target: SocketAddr,
    connected: bool,
) -> anyhow::Result<(String, SocketAddr, SocketAddr)> {
    lab.in_netns(ns, move || {
        let socket = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        if connected {
            socket.connect(target)?;
            anyhow::ensure!(socket.peer_addr()? == target, "getpeername() is {:?}", socket.peer_addr());
            socket.send(b"hello")?;
        } else {
            socket.send_to(b"hello", target)?;
        }
        let mut buf = [0u8; 1500];
        let (n, source) = socket.recv_from(&mut buf)?;
        let (backend, sender, _) = parse_echo(&buf[..n])?;
        Ok((backend, sender, source))
    })
}

#[test]
fn ipv6_local_clients_reach_every_backend_directly() {
    let mut s = stacked_over("nat", true);
    let echo_hosts = [(s.lab.node(1), 1), (s.lab.node(2), 2), (s.lab.backend(1), 0x21)];
    let _echoes: Vec<UdpEcho> = echo_hosts
        .iter()
        .map(|(h, _)| UdpEcho::start_on(&h.ns, &h.name, (Ipv6Addr::UNSPECIFIED, UDP_PORT).into()).expect("echo"))
        .collect();
    let mut udp =
        ServiceSpec { name: "echo".into(), protocol: "udp".into(), check: "none".into(), ..s.service.clone() };
    udp.port = UDP_PORT;
    udp.backends = echo_hosts.iter().map(|(_, n)| (IpAddr::V6(ipv6::address(*n)), UDP_PORT)).collect();
    s.extra.push(udp);
    let (n1, n2) = s.start();
    for node in [&n1, &n2] {
        assert!(node.log().contains("local clients: TCP connects"), "the socket balancer is on:\n{}", node.log());
    }
    let every: Vec<String> = ["backend1", "node1", "node2"].map(String::from).to_vec();
    let udp_target = SocketAddr::new(IpAddr::V6(vip6()), UDP_PORT);
    for (n, own) in [(1, ipv6::address(1)), (2, ipv6::address(2))] {
        let ns = s.lab.node(n).ns.clone();
        // TCP: new connections spread over every backend, the node's own included, each connected straight to it
        // (the backend sees the node's own address) while the application sees the VIP as its peer.
        let tally = probe::request_many(&ns, s.target(), 60, Duration::from_secs(1)).expect("requests");
        eprintln!("IPv6 local clients on node{n}: {:?}", tally.per_backend);
        assert_eq!(tally.failures, 0, "node{n}: {tally:?}");
        assert_eq!(tally.per_backend.keys().cloned().collect::<Vec<_>>(), every, "node{n}");
        let response = probe::http_get(&ns, s.target(), "/", Duration::from_secs(1)).expect("GET");
        let client: SocketAddr = response.header("x-client").and_then(|c| c.parse().ok()).expect("x-client");
        assert_eq!(client.ip(), IpAddr::V6(own), "node{n}'s connect went straight to its backend");
        let target = s.target();
        let peer = s.lab.in_netns(&ns, move || {
            Ok(std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?.peer_addr()?)
        });
        assert_eq!(peer.expect("connect"), target, "getpeername() reports the VIP");
        // UDP, unconnected and connected: each datagram straight to a backend, its answer from the VIP.
        for connected in [false, true] {
            let mut answered = std::collections::BTreeSet::new();
            for _ in 0..40 {
                let (backend, sender, source) = udp_ask6(&s.lab, &ns, udp_target, connected).expect("UDP");
                assert_eq!(sender.ip(), IpAddr::V6(own), "sent straight from node{n}");
                assert_eq!(source, udp_target, "the answer comes from the VIP");
                answered.insert(backend);
            }
            eprintln!("IPv6 UDP (connected: {connected}) from node{n}: answered by {answered:?}");
            assert_eq!(answered.into_iter().collect::<Vec<_>>(), every, "node{n}, connected: {connected}");
        }
    }
}
