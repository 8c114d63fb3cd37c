//! Tests of the lab itself: topology, cleanup, lab backends, probes, keepalived. Each builds its own lab and
//! needs root; without root they print why and pass vacuously.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use xvip_tests::keepalived::KeepalivedSpec;
use xvip_tests::probe::{self, Probe, ProbeSpec, StreamEnd, StreamWatch};
use xvip_tests::{Lab, LabSpec, http, netns};

const PORT: u16 = 8080;

fn spec(nodes: usize) -> LabSpec {
    LabSpec {
        nodes,
        backends: 3,
        vip_on_backends_lo: false,
        backend_bin: Some(env!("CARGO_BIN_EXE_lab-backend").into()),
    }
}

fn timed(test: &str, body: impl FnOnce()) {
    // The lab needs CAP_NET_ADMIN and CAP_BPF; without them the test fails rather than passing without a check.
    assert!(xvip_tests::is_root(), "{test} needs root: run the tests through `cargo xtask test` as root");
    let start = Instant::now();
    body();
    eprintln!("{test}: {:?}", start.elapsed());
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn topology_comes_up_and_the_client_reaches_every_host() {
    timed("topology_comes_up_and_the_client_reaches_every_host", || {
        let lab = Lab::new(spec(3)).expect("lab");
        let names = lab.namespaces();
        assert_eq!(names.len(), 1 + 1 + 3 + 3, "bridge, client, 3 nodes, 3 backends: {names:?}");
        let existing = netns::list_lab_namespaces().expect("list");
        for name in &names {
            assert!(name.starts_with(&format!("xvl-{}", lab.run_id())), "{name}");
            assert!(existing.contains(name), "{name} missing from {existing:?}");
        }
        for host in lab.nodes().iter().chain(lab.backends()) {
            lab.ping(lab.client(), host.ip).unwrap_or_else(|e| panic!("client -> {}: {e:#}", host.name));
            // Every bridge port carries the XDP_PASS stub (native: `xdp`, not `xdpgeneric`).
            let port = lab.exec(lab.bridge_ns(), ["ip", "-d", "link", "show", &host.bridge_port]).expect("ip link");
            assert!(port.contains("prog/xdp"), "no XDP program on {}: {port}", host.bridge_port);
            assert!(!port.contains("xdpgeneric"), "generic XDP on {}: {port}", host.bridge_port);
        }
        let client_link = lab.exec(&lab.client().ns, ["ip", "link", "show", "eth0"]).expect("ip link");
        assert!(client_link.contains(&lab.client().mac.to_string()), "{client_link}");
        drop(lab);
        let left = netns::list_lab_namespaces().expect("list");
        for name in &names {
            assert!(!left.contains(name), "{name} survived the lab");
        }
    });
}

#[test]
fn namespaces_and_processes_are_removed_after_a_panic() {
    timed("namespaces_and_processes_are_removed_after_a_panic", || {
        let mut seen = (Vec::new(), Vec::new());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let lab = Lab::new(spec(2)).expect("lab");
            lab.start_backends(&[PORT]).expect("backends");
            seen.0 = lab.namespaces();
            seen.1 = (1..=3).filter_map(|n| lab.backend_pid(n)).collect();
            panic!("a test failing inside a lab");
        }));
        assert!(result.is_err(), "the closure panics");
        let (names, pids) = seen;
        assert_eq!((names.len(), pids.len()), (7, 3), "bridge, client, 2 nodes, 3 backends");
        let left = netns::list_lab_namespaces().expect("list");
        for name in &names {
            assert!(!left.contains(name), "{name} survived the panic");
        }
        for pid in pids {
            assert!(!pid_alive(pid), "lab-backend {pid} survived the panic");
        }
    });
}

#[test]
fn lab_backend_answers_with_its_name() {
    timed("lab_backend_answers_with_its_name", || {
        let lab = Lab::new(spec(2)).expect("lab");
        lab.start_backends(&[PORT]).expect("backends");
        let client = &lab.client().ns;
        let timeout = Duration::from_secs(1);
        for backend in lab.backends() {
            let target = SocketAddr::from((backend.ip, PORT));
            let response = probe::http_get(client, target, "/", timeout).expect("GET /");
            assert_eq!((response.status, response.text()), (200, format!("{}\n", backend.name)));
            let seen_as = response.header("x-client").expect("X-Client");
            assert!(seen_as.starts_with(&format!("{}:", lab.client().ip)), "{seen_as}");
            let tally = probe::request_many(client, target, 20, timeout).expect("tally");
            assert_eq!((tally.per_backend.get(&backend.name).copied(), tally.failures), (Some(20), 0), "{tally:?}");
        }

        // Health: SIGUSR1 makes /readyz fail while / keeps answering; SIGUSR2 restores it.
        let b2 = SocketAddr::from((lab.backend(2).ip, PORT));
        assert_eq!(probe::http_get(client, b2, "/readyz", timeout).expect("readyz").status, 200);
        lab.set_backend_ready(2, false).expect("unready");
        wait_status(&lab, b2, 503);
        assert_eq!(probe::http_get(client, b2, "/", timeout).expect("GET /").status, 200);
        lab.set_backend_ready(2, true).expect("ready");
        wait_status(&lab, b2, 200);

        // Keep-alive: three requests on one connection.
        let b3 = SocketAddr::from((lab.backend(3).ip, PORT));
        let bodies = lab
            .in_netns(client, || {
                let mut connection = http::Connection::open(b3, timeout)?;
                let mut bodies = Vec::new();
                for _ in 0..3 {
                    let response = connection.get("/", timeout)?;
                    assert_eq!(response.header("connection"), Some("keep-alive"));
                    bodies.push(response.text());
                }
                Ok(bodies)
            })
            .expect("keep-alive");
        assert_eq!(bodies, vec!["backend3\n"; 3]);

        // Stream: a line every 50 ms while the connection lives.
        let b1 = SocketAddr::from((lab.backend(1).ip, PORT));
        let watch = StreamWatch::start(client, b1, timeout).expect("stream");
        assert_eq!(watch.backend(), "backend1");
        std::thread::sleep(Duration::from_millis(500));
        let report = watch.stop().expect("stream report");
        assert_eq!(report.end, StreamEnd::StillOpen, "{report:?}");
        assert!(report.lines >= 5, "{report:?}");
        assert!(report.longest_gap < Duration::from_millis(300), "{report:?}");
    });
}

fn wait_status(lab: &Lab, target: SocketAddr, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = probe::http_get(&lab.client().ns, target, "/readyz", Duration::from_secs(1)).expect("readyz").status;
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {got}, expected {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn probe_sees_no_outage_against_a_steady_backend() {
    timed("probe_sees_no_outage_against_a_steady_backend", || {
        let lab = Lab::new(spec(2)).expect("lab");
        lab.start_backends(&[PORT]).expect("backends");
        let target = SocketAddr::from((lab.backend(1).ip, PORT));
        let report = probe::run_for(&lab.client().ns, ProbeSpec::http(target), Duration::from_secs(1)).expect("probe");
        eprintln!("{}", report.summary());
        assert_eq!(report.failures, 0, "{}", report.summary());
        assert!(report.successes >= 20, "{}", report.summary());
        assert_eq!(report.per_backend.keys().collect::<Vec<_>>(), vec!["backend1"]);
        // Scheduling on a busy 2-core VM can delay single attempts; an outage would be far longer.
        assert!(report.longest_gap < Duration::from_millis(150), "{}", report.summary());
    });
}

#[test]
fn probe_measures_the_outage_while_a_backend_is_down() {
    timed("probe_measures_the_outage_while_a_backend_is_down", || {
        let lab = Lab::new(spec(2)).expect("lab");
        lab.start_backends(&[PORT]).expect("backends");
        let target = SocketAddr::from((lab.backend(1).ip, PORT));
        let probe = Probe::start(&lab.client().ns, ProbeSpec::http(target)).expect("probe");
        std::thread::sleep(Duration::from_millis(300));
        let down = Instant::now();
        lab.kill_backend(1).expect("kill");
        std::thread::sleep(Duration::from_millis(300));
        lab.start_backend(1, &[PORT]).expect("restart");
        let outage = down.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let report = probe.stop().expect("probe");
        eprintln!("backend down for {outage:?}; {}", report.summary());
        assert!(report.failures > 0, "{}", report.summary());
        assert!(report.errors().contains_key("refused"), "a closed port answers RST: {}", report.summary());
        assert!(report.longest_gap >= Duration::from_millis(250), "{}", report.summary());
        assert!(report.longest_gap < Duration::from_secs(2), "{}", report.summary());
    });
}

#[test]
fn keepalived_pair_elects_the_higher_priority_node() {
    timed("keepalived_pair_elects_the_higher_priority_node", || {
        let lab = Lab::new(spec(2)).expect("lab");
        let (node1, node2) = (lab.node(1), lab.node(2));
        let mut high =
            lab.start_keepalived(node1, &KeepalivedSpec::new(lab.vip(), 51, 150).advert_int(0.1)).expect("ka 150");
        let low =
            lab.start_keepalived(node2, &KeepalivedSpec::new(lab.vip(), 51, 100).advert_int(0.1)).expect("ka 100");
        high.wait_master(Duration::from_secs(5)).expect("the 150 node becomes master");
        // A few advert intervals for the 100 node to settle as backup.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(low.count_in_log(xvip_tests::keepalived::MASTER_LINE), 0, "{}", low.log());
        assert!(high.holds_vip().expect("ip addr"));
        assert!(!low.holds_vip().expect("ip addr"));
        let answers = lab.arp_probe(lab.client(), lab.vip()).expect("arp");
        assert_eq!(answers, vec![node1.mac], "ARP for the VIP must be answered by node1 only");

        // A clean stop of the master hands the VIP over.
        let mut low = low;
        high.stop().expect("stop");
        low.wait_master(Duration::from_secs(5)).expect("the 100 node takes over");
        let answers = lab.arp_probe(lab.client(), lab.vip()).expect("arp");
        assert_eq!(answers, vec![node2.mac], "after the stop only node2 answers");
    });
}

#[test]
fn keepalived_unicast_pair_elects_the_higher_priority_node() {
    timed("keepalived_unicast_pair_elects_the_higher_priority_node", || {
        let lab = Lab::new(spec(2)).expect("lab");
        let (node1, node2) = (lab.node(1), lab.node(2));
        let high_spec = KeepalivedSpec::new(lab.vip(), 52, 150).advert_int(0.1).unicast(node1.ip, &[node2.ip]);
        let low_spec = KeepalivedSpec::new(lab.vip(), 52, 100).advert_int(0.1).unicast(node2.ip, &[node1.ip]);
        let mut high = lab.start_keepalived(node1, &high_spec).expect("ka 150");
        let low = lab.start_keepalived(node2, &low_spec).expect("ka 100");
        high.wait_master(Duration::from_secs(5)).expect("master");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(low.count_in_log(xvip_tests::keepalived::MASTER_LINE), 0, "{}", low.log());
        assert_eq!(lab.arp_probe(lab.client(), lab.vip()).expect("arp"), vec![node1.mac]);
    });
}

#[test]
fn dsr_backends_hold_the_vip_without_answering_arp_for_it() {
    timed("dsr_backends_hold_the_vip_without_answering_arp_for_it", || {
        let lab = Lab::new(LabSpec { vip_on_backends_lo: true, ..spec(2) }).expect("lab");
        for backend in lab.backends() {
            let lo = lab.exec(&backend.ns, ["ip", "-4", "-o", "addr", "show", "dev", "lo"]).expect("ip addr");
            assert!(lo.contains(&format!(" {}/32", lab.vip())), "{}: {lo}", backend.name);
        }
        let answers = lab.arp_probe(lab.client(), lab.vip()).expect("arp");
        assert!(answers.is_empty(), "nobody holds the VIP on an interface yet, got {answers:?}");
        // The prober itself works: a backend's own address is answered.
        assert_eq!(lab.arp_probe(lab.client(), lab.backend(1).ip).expect("arp"), vec![lab.backend(1).mac]);
    });
}

/// The reason for the XDP_PASS stubs: frames a node's XDP program sends back out with XDP_TX (here xvip's own
/// ARP and ping answers for the VIP) must reach the client through the bridge.
#[test]
fn xdp_tx_from_a_node_reaches_the_client() {
    timed("xdp_tx_from_a_node_reaches_the_client", || {
        use xvip::dataplane::{AttachMode, DataPlane, LoadOptions};
        let lab = Lab::new(spec(2)).expect("lab");
        let node1 = lab.node(1);
        let (client, vip) = (lab.client(), lab.vip());
        lab.in_netns(&node1.ns, || {
            let mut dataplane = DataPlane::load(LoadOptions {
                conntrack_entries: 1024,
                service_capacity: 1,
                ..LoadOptions::default()
            })?;
            dataplane.set_node(vip, node1.mac.0, 1)?;
            dataplane.set_active(true)?;
            let mode = dataplane.attach(&node1.iface, AttachMode::Native)?;
            assert_eq!(mode, "native");
            // Nobody else has the VIP: these answers can only come from XDP_TX on node1.
            assert_eq!(lab.arp_probe(client, vip)?, vec![node1.mac], "ARP answered by XDP_TX");
            lab.ping(client, vip)?;
            Ok(())
        })
        .expect("xdp");
    });
}

#[test]
fn a_cut_link_isolates_the_node_until_restored() {
    timed("a_cut_link_isolates_the_node_until_restored", || {
        let lab = Lab::new(spec(2)).expect("lab");
        let node1 = lab.node(1);
        lab.ping(lab.client(), node1.ip).expect("before");
        lab.cut_link(node1).expect("cut");
        assert!(lab.ping(lab.client(), node1.ip).is_err(), "node1 answers through a cut link");
        let link = lab.exec(&node1.ns, ["ip", "link", "show", "eth0"]).expect("ip link");
        assert!(link.contains("NO-CARRIER"), "{link}");
        lab.restore_link(node1).expect("restore");
        lab.ping(lab.client(), node1.ip).expect("after");
    });
}
