//! IPv6 under hostile and faulty traffic, end to end in the netns lab (needs root):
//! - a flood of spoofed SYNs and bare ACKs from random IPv6 sources while a client opens real connections through
//!   an IPv6 NAT service and through an IPv6 DSR service: at most 1 % of them fail during the flood, none after;
//! - an on-link host sending bare ACKs with a client's IPv6 address and port and its own MAC: it must receive none
//!   of the client's NAT replies;
//! - path MTU discovery through the node: a Packet Too Big about a NAT flow's packet to its backend reaches the
//!   client translated (its kernel then holds a path MTU for the VIP), and one about a DSR backend's reply reaches
//!   that backend (its kernel then holds a path MTU for the client);
//! - the agent warns when an IPv6 NAT service meets an interface with IPv6 forwarding off.
//!
//! The lab: one xvip node whose only VIP is IPv6 (`fd00:77::250`), IPv6 (without DAD) on the client
//! (`fd00:77::10`), the node (`::1`, IPv6 forwarding on) and the backends (`::2N`), and an extra host on the
//! bridge, `edge` (`fd00:77::fe`), the attacker, which is also the IPv6 default router of the node (and of DSR
//! backends), so replies to spoofed (off-link) sources go to it, as they would go to the uplink router in a real
//! network. The flood is bounded in count and time and never leaves the lab's namespaces.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xvip_tests::{
    Lab, LabSpec, cmd,
    extra::{ExtraHost, RawSocket},
    flood::{self, Flood, HOSTILE_ACKS, HOSTILE_SYNS, REAL},
    frames::TCP_ACK,
    http, ipv6, netns,
    pmtu::{self, IdleConnection},
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

/// The NAT service's port and its backends' (different, so the port is translated too).
const NAT_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// The DSR service's port: the backends serve it themselves, on the VIP.
const DSR_PORT: u16 = 8080;
/// The client's, the edge router's and the IPv6 minimum MTU (what the Packet Too Big messages announce).
const CLIENT6: u16 = 0x10;
const EDGE6: u16 = 0xfe;
const MIN_MTU: u16 = 1280;

fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

/// `fd00:77::2N`: backend N's IPv6 address.
fn backend6(n: usize) -> Ipv6Addr {
    ipv6::address(0x20 + u16::try_from(n).expect("backend number"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Nat,
    Dsr,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
        }
    }

    fn port(self) -> u16 {
        match self {
            Mode::Nat => NAT_PORT,
            Mode::Dsr => DSR_PORT,
        }
    }

    fn target(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(vip6()), self.port())
    }
}

/// The lab and the edge host: IPv6 on the client, node1 (forwarding on, default route via edge), edge and
/// `backends` backends serving HTTP on `[::]:8080`; for DSR each backend holds the VIP on `lo` and routes via edge.
fn lab(mode: Mode, backends: usize) -> (Lab, ExtraHost) {
    let lab = Lab::new(LabSpec::nat(2, backends)).expect("lab");
    let edge = lab.add_host("edge", 254).expect("edge host");
    ipv6::enable(&edge.host, EDGE6).expect("IPv6 on edge");
    ipv6::enable(lab.client(), CLIENT6).expect("IPv6 on the client");
    let node = lab.node(1);
    ipv6::enable(node, 1).expect("IPv6 on node1");
    cmd::exec_in(&node.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]).expect("IPv6 forwarding");
    let edge6 = ipv6::address(EDGE6).to_string();
    cmd::ip_in(&node.ns, ["-6", "route", "replace", "default", "via", &edge6]).expect("node1's default route");
    for n in 1..=backends {
        let host = lab.backend(n);
        ipv6::enable(host, 0x20 + u16::try_from(n).expect("backend number")).expect("IPv6 on a backend");
        if mode == Mode::Dsr {
            cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"]).expect("IPv6 on lo");
            cmd::ip_in(&host.ns, ["-6", "addr", "add", &format!("{}/128", vip6()), "dev", "lo"]).expect("VIP on lo");
            cmd::ip_in(&host.ns, ["-6", "route", "replace", "default", "via", &edge6]).expect("backend route");
        }
        lab.start_backend_listening(n, &[BACKEND_PORT], true).expect("lab-backend");
    }
    (lab, edge)
}

/// node1 alone, active, with the IPv6 VIP only and one service over the lab's IPv6 backends; every backend
/// healthy, the service answering.
fn start(lab: &Lab, mode: Mode, conntrack_entries: Option<u32>) -> XvipNode {
    let service = ServiceSpec {
        backends: (1..=lab.backends().len()).map(|n| (IpAddr::V6(backend6(n)), BACKEND_PORT)).collect(),
        ..ServiceSpec::http(lab, mode.port(), BACKEND_PORT, mode.name())
    };
    let spec = NodeSpec { vip4: false, vip6: vec![vip6()], conntrack_entries, ..NodeSpec::new(150).service(service) };
    let node = lab.start_xvip(lab.node(1), &spec).expect("node1");
    node.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    let start = Instant::now();
    while http_get(lab, mode.target(), Duration::from_millis(500)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the service never answered over IPv6:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

fn http_get(lab: &Lab, target: SocketAddr, timeout: Duration) -> anyhow::Result<http::Response> {
    netns::in_netns(&lab.client().ns, move || Ok(http::get(target, "/", timeout)?))
}

fn counter(node: &XvipNode, name: &str) -> u64 {
    node.status().map(|s| s.counters.dataplane.get(name).copied().unwrap_or(0)).unwrap_or(0)
}

/// Real connections from the client to `target` (see [`flood::real_connections`]).
fn real_connections(
    lab: &Lab,
    target: SocketAddr,
    n: usize,
    spacing: Duration,
    while_running: Option<Arc<AtomicBool>>,
) -> (usize, usize) {
    flood::real_connections(&lab.client().ns, target, n, spacing, while_running)
}

fn flood_case(mode: Mode, backends: usize, conntrack_entries: Option<u32>) {
    let (lab, edge) = lab(mode, backends);
    let node = start(&lab, mode, conntrack_entries);
    let target = mode.target();
    let (before_tried, before_failed) = real_connections(&lab, target, 50, Duration::ZERO, None);
    assert_eq!(before_failed, 0, "before the flood: {before_failed} of {before_tried} failed");

    // From edge: HOSTILE_SYNS SYNs and HOSTILE_ACKS bare ACKs from random IPv6 sources and ports, interleaved, at most
    // ~40,000 frames per second, stopping after 30 s whatever happens.
    let running = Arc::new(AtomicBool::new(true));
    let flood = Flood {
        to_mac: lab.node(1).mac.0,
        from_mac: edge.host.mac.0,
        vip: IpAddr::V6(vip6()),
        port: mode.port(),
        syns: HOSTILE_SYNS,
        acks: HOSTILE_ACKS,
        batch: 400,
        time_limit: Duration::from_secs(30),
        seed: 0x51ed_2701_9e37_79b9,
    };
    let flag = running.clone();
    let flooder = netns::spawn_in_netns(&edge.host.ns, move || {
        let socket = RawSocket::open("eth0")?;
        let sent = flood.send(&socket);
        flag.store(false, Ordering::SeqCst);
        sent
    })
    .expect("flood thread");
    // 10 ms apart, as in hostile.rs: enough overlap for the 1 % bound even when a SYN or two wait for their
    // retransmission.
    let (during_tried, during_failed) =
        real_connections(&lab, target, 2 * REAL, Duration::from_millis(10), Some(running.clone()));
    let sent = flooder.join().expect("flood thread").expect("flood");
    let (after_tried, after_failed) = real_connections(&lab, target, REAL, Duration::ZERO, None);
    eprintln!(
        "IPv6 {} flood ({backends} backends, conntrack_entries {}): {} spoofed frames in {:.1} s; real connections: \
         {during_failed} of {during_tried} failed during the flood, {after_failed} of {after_tried} right after; \
         drop_nat_no_port {}, nat_forward_tx {}, forward_tx {}, drop_martian_source {}",
        mode.name(),
        conntrack_entries.unwrap_or(65536),
        sent.frames,
        sent.took.as_secs_f64(),
        counter(&node, "drop_nat_no_port"),
        counter(&node, "nat_forward_tx"),
        counter(&node, "forward_tx"),
        counter(&node, "drop_martian_source"),
    );
    assert_eq!(sent.frames, HOSTILE_SYNS + HOSTILE_ACKS, "the whole flood was sent within 30 s");
    let carried = counter(&node, if mode == Mode::Nat { "nat_forward_tx" } else { "forward_tx" });
    assert!(carried >= (HOSTILE_SYNS / 2) as u64, "the flood did not reach the service ({carried} sent on)");
    assert!(during_tried >= 100, "only {during_tried} real connections overlapped the flood");
    assert!(
        during_failed * 100 <= during_tried,
        "{during_failed} of {during_tried} real connections failed during the flood (at most 1 % may)\n{}",
        node.log()
    );
    assert_eq!(after_failed, 0, "{after_failed} of {after_tried} real connections failed after the flood");
}

#[test]
fn an_ipv6_spoofed_flood_does_not_deny_real_clients_nat_three_backends_default_entries() {
    flood_case(Mode::Nat, 3, None);
}

/// One backend: every flow's NAT port is drawn for the same (VIP, backend) pair, so the flood contends for its
/// ports, not only for table entries.
#[test]
fn an_ipv6_spoofed_flood_does_not_deny_real_clients_nat_one_backend_262144_entries() {
    flood_case(Mode::Nat, 1, Some(262_144));
}

#[test]
fn an_ipv6_spoofed_flood_does_not_deny_real_clients_dsr_three_backends_default_entries() {
    flood_case(Mode::Dsr, 3, None);
}

#[test]
fn bare_ipv6_acks_with_a_clients_address_do_not_divert_its_replies() {
    let (lab, attacker) = lab(Mode::Nat, 3);
    let node = start(&lab, Mode::Nat, None);
    let target = Mode::Nat.target();
    let client6 = ipv6::address(CLIENT6);
    // The client's long-lived connection, and its local port (what the attacker spoofs).
    let client = flood::BusyClient::start(&lab.client().ns, target).expect("client connected");
    let client_port = client.port;

    // The attacker listens for anything addressed to the client while it sends bare ACKs as the client, from its
    // own MAC, for 3 s.
    let (node_mac, attacker_mac) = (lab.node(1).mac.0, attacker.host.mac.0);
    let (stolen, sent) = netns::in_netns(&attacker.host.ns, move || {
        let socket = RawSocket::open("eth0")?;
        let (mut stolen, mut sent) = (0, 0);
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let ack = flood::tcp6_frame(node_mac, attacker_mac, client6, vip6(), client_port, NAT_PORT, TCP_ACK);
            socket.send(&ack)?;
            sent += 1;
            let quiet = Instant::now() + Duration::from_millis(50);
            while Instant::now() < quiet {
                let Some(frame) = socket.recv() else { break };
                // IPv6 to the client, received (not our own transmissions, which carry our MAC as source).
                if frame.len() >= 54
                    && frame[12..14] == [0x86, 0xdd]
                    && frame[6..12] != attacker_mac
                    && frame[38..54] == client6.octets()
                {
                    stolen += 1;
                }
            }
        }
        Ok((stolen, sent))
    })
    .expect("attacker");
    let answered = client.stop().expect("the client's connection kept working");
    let forwarded = counter(&node, "nat_forward_tx");
    eprintln!(
        "client answered {answered} requests; the attacker sent {sent} ACKs as the client and received {stolen} \
         frames addressed to the client; nat_forward_tx {forwarded}"
    );
    assert!(sent >= 10, "the attacker sent only {sent} ACKs");
    assert!(answered >= 10, "the client's requests stalled: {answered}\n{}", node.log());
    assert_eq!(stolen, 0, "the attacker received the client's replies");
}

// ----- Path MTU discovery -----

#[test]
fn a_packet_too_big_about_a_nat_flow_reaches_the_client_translated() {
    let (lab, _edge) = lab(Mode::Nat, 1);
    let node = start(&lab, Mode::Nat, None);
    let (client_ns, backend) = (lab.client().ns.clone(), lab.backend(1).clone());
    let (vip, client6, backend6) = (IpAddr::V6(vip6()), IpAddr::V6(ipv6::address(CLIENT6)), IpAddr::V6(backend6(1)));
    // The backend captures the translated client packets ([VIP]:nport -> [backend]:8080) of one idle connection.
    let (connection, captured) =
        pmtu::sniff(&backend.ns, (vip, None), backend6, || IdleConnection::open(&lab, Mode::Nat.target()));
    assert!(!captured.is_empty(), "the backend saw none of the client's packets");
    let quoted = pmtu::at_next_sequence(&pmtu::last_packet(&captured)).expect("a TCP packet");
    assert_eq!(pmtu::path_mtu(&client_ns, vip), None, "the client holds no path MTU for the VIP before");

    // What a node that passed the error on untranslated would give the client: addressed to the client, quoting
    // [VIP]:nport -> [backend]:bport, which names none of the client's sockets. The client's kernel ignores it.
    let untranslated = pmtu::too_big(lab.client().mac.0, backend.mac.0, backend6, client6, MIN_MTU, &quoted);
    pmtu::send_frame(&backend.ns, untranslated.expect("Packet Too Big"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pmtu::path_mtu(&client_ns, vip), None, "an untranslated Packet Too Big changed the client's path MTU");

    // A router on the backend's side (here the backend itself) reports the path MTU about the translated packet,
    // to its source, the VIP.
    let before = counter(&node, "nat_icmp_to_client");
    let error = pmtu::too_big(lab.node(1).mac.0, backend.mac.0, backend6, vip, MIN_MTU, &quoted);
    pmtu::send_frame(&backend.ns, error.expect("Packet Too Big"));
    let mtu = pmtu::wait_path_mtu(&client_ns, vip, MIN_MTU);
    let translated = counter(&node, "nat_icmp_to_client") - before;
    eprintln!(
        "NAT: the client ({}) holds path MTU {mtu:?} for the VIP; nat_icmp_to_client +{translated}",
        connection.local
    );
    assert_eq!(translated, 1, "the node translated the Packet Too Big once\n{}", node.log());
    assert_eq!(mtu, Some(u32::from(MIN_MTU)), "the client's kernel holds no path MTU for the VIP");
    assert!(connection.finish(), "the connection works on after it");
}

#[test]
fn a_packet_too_big_about_a_dsr_reply_reaches_the_backend() {
    let (lab, _edge) = lab(Mode::Dsr, 1);
    let node = start(&lab, Mode::Dsr, None);
    let (client, backend) = (lab.client().clone(), lab.backend(1).clone());
    let (vip, client6) = (IpAddr::V6(vip6()), IpAddr::V6(ipv6::address(CLIENT6)));
    // The client captures the backend's replies ([VIP]:8080 -> [client]:port, straight from the backend).
    let (connection, captured) =
        pmtu::sniff(&client.ns, (vip, Some(DSR_PORT)), client6, || IdleConnection::open(&lab, Mode::Dsr.target()));
    let captured: Vec<Vec<u8>> = captured
        .into_iter()
        .filter(|f| pmtu::tcp_endpoints(f).is_some_and(|(_, to)| to == connection.local) && f[6..12] == backend.mac.0)
        .collect();
    assert!(!captured.is_empty(), "the client saw no reply of the backend");
    let quoted = pmtu::at_next_sequence(&pmtu::last_packet(&captured)).expect("a TCP packet");
    assert_eq!(pmtu::path_mtu(&backend.ns, client6), None, "the backend holds no path MTU for the client before");

    // A router on the client's side (here the client itself) reports the path MTU about the backend's reply, to
    // its source, the VIP, which the active node holds.
    let before = counter(&node, "forward_tx");
    let error = pmtu::too_big(lab.node(1).mac.0, client.mac.0, client6, vip, MIN_MTU, &quoted);
    pmtu::send_frame(&client.ns, error.expect("Packet Too Big"));
    let mtu = pmtu::wait_path_mtu(&backend.ns, client6, MIN_MTU);
    let forwarded = counter(&node, "forward_tx") - before;
    eprintln!("DSR: the backend holds path MTU {mtu:?} for the client ({}); forward_tx +{forwarded}", connection.local);
    assert!(forwarded >= 1, "the node sent the Packet Too Big on to no backend\n{}", node.log());
    assert_eq!(mtu, Some(u32::from(MIN_MTU)), "the backend's kernel holds no path MTU for the client");
    assert!(connection.finish(), "the connection works on after it");
}

// ----- IPv6 forwarding off -----

/// An IPv6 NAT service on a node whose interface does not forward IPv6 gets a warning naming the sysctl; with
/// forwarding on, none.
#[test]
fn an_ipv6_nat_service_without_ipv6_forwarding_is_warned_about() {
    const WARNING: &str = "IPv6 forwarding is off on eth0";
    let (lab, _edge) = lab(Mode::Nat, 1);
    let mut node = start(&lab, Mode::Nat, None);
    assert!(!node.log().contains(WARNING), "warned with forwarding on:\n{}", node.log());
    node.terminate().expect("node1 stops");

    cmd::exec_in(&lab.node(1).ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]).expect("forwarding off");
    let service = ServiceSpec {
        backends: vec![(IpAddr::V6(backend6(1)), BACKEND_PORT)],
        ..ServiceSpec::http(&lab, NAT_PORT, BACKEND_PORT, "nat")
    };
    let spec = NodeSpec { vip4: false, vip6: vec![vip6()], ..NodeSpec::new(150).service(service) };
    let node = lab.start_xvip(lab.node(1), &spec).expect("node1");
    node.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    let log = node.log();
    eprintln!("{}", log.lines().filter(|l| l.contains("forwarding")).collect::<Vec<_>>().join("\n"));
    assert!(log.contains(WARNING), "no warning about IPv6 forwarding:\n{log}");
    assert!(log.contains("net.ipv6.conf.eth0.forwarding=1"), "the warning names the sysctl:\n{log}");
}
