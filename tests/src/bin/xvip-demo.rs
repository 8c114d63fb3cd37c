//! `cargo xtask demo`: a narrated tour of xvip in a throwaway netns lab (two xvip nodes, three web backends and a
//! client on one bridge). Every step measures something and checks what it promises; the program exits 0 only
//! when every step behaved as promised, 1 when one did not, 130 when interrupted (Ctrl-C). The lab is removed in
//! every case.
//!
//! `--stacked` (`cargo xtask demo --stacked`): the stacked layout instead, a control plane whose nodes are its own
//! backends: three xvip nodes, each running a web backend, that list each other as backends; one client outside
//! and one on node2 (reaching the VIP through the socket load balancer). The same six steps, checked from both
//! clients.
//!
//! Needs root and the built binaries: `XVIP_BIN` (else target/release/xvip) and `XVIP_LAB_BACKEND` (else next to
//! this program). `cargo xtask demo` sets both.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use xvip_tests::{
    ChildGuard, Host, Lab, LabSpec,
    probe::{self, Probe, ProbeReport, ProbeSpec, Tally},
    process::tail,
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

/// How the load balancer forwards to the backends. "dsr" for now; "nat" (backends need no change) once it lands.
const FORWARDING: &str = "nat";

/// The service port on the VIP, and the backends' port.
const PORT: u16 = 8080;
/// VRRP advert interval: 100 ms, so failovers take a fraction of a second.
const ADVERT_INTERVAL_MS: u32 = 100;
const NODE1_PRIORITY: u8 = 150;
const NODE2_PRIORITY: u8 = 100;
/// Health checks: `GET /readyz` every 200 ms, 150 ms deadline; 2 failures take a backend out, 1 success back in.
const HEALTH_INTERVAL_MS: u32 = 200;
const HEALTH_TIMEOUT_MS: u32 = 150;
const HEALTH_FALL: u32 = 2;
const HEALTH_RISE: u32 = 1;
/// Measured times may exceed the protocol's bound by this much (scheduling, the probe's own 10 ms period).
const SLACK: Duration = Duration::from_millis(100);
/// Requests per load-balancing sample.
const REQUESTS: usize = 30;
/// The backend that is stopped and restored in step 4: backend2, or in the stacked layout node2's own.
const VICTIM: usize = 2;
/// Indentation of everything under a step's title.
const INDENT: &str = "    ";

/// Set by SIGINT/SIGTERM; checked between and inside the steps, so the program unwinds and the lab is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The first Ctrl-C (or SIGTERM) asks for a clean stop; the handler resets itself, so a second one ends the
/// program at once (its children still die with it: they have `PR_SET_PDEATHSIG`).
fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails when the user asked to stop.
fn checkpoint() -> Result<()> {
    if interrupted() { Err(anyhow!("interrupted")) } else { Ok(()) }
}

/// Sleeps, but returns early (with an error) on Ctrl-C.
fn pause(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        checkpoint()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

// ----- protocol bounds (RFC 9568 §6.1) -----

fn advert_interval() -> Duration {
    Duration::from_millis(u64::from(ADVERT_INTERVAL_MS))
}

/// Skew_Time = ((256 - priority) × Master_Adver_Interval) / 256.
fn skew_time(priority: u8) -> Duration {
    advert_interval() * (256 - u32::from(priority)) / 256
}

/// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
fn master_down_interval(priority: u8) -> Duration {
    advert_interval() * 3 + skew_time(priority)
}

// ----- formatting -----

/// Milliseconds, rounded: "372 ms".
fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Milliseconds with one decimal, for bounds: "360.9 ms".
fn ms1(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn say(line: impl AsRef<str>) {
    println!("{INDENT}{}", line.as_ref());
}

/// A line before something slow.
fn progress(what: &str) {
    println!("{INDENT}... {what}");
}

/// Prints a claim as checked, or fails the step with it.
fn check(ok: bool, claim: impl AsRef<str>) -> Result<()> {
    let claim = claim.as_ref();
    if ok {
        say(format!("ok: {claim}"));
        Ok(())
    } else {
        say(format!("FAILED: {claim}"));
        bail!("not as promised: {claim}")
    }
}

/// Checks the longest gap the client saw against `bound` plus the slack: "{what} (62 ms) is within {label}60.9 ms
/// + 100 ms slack".
fn check_outage(report: &ProbeReport, what: &str, label: &str, bound: Duration) -> Result<()> {
    check(
        report.longest_gap <= bound + SLACK,
        format!("{what} ({}) is within {label}{} + {} slack", ms(report.longest_gap), ms1(bound), ms(SLACK)),
    )
}

/// "backend1 10, backend2 9, backend3 11" (every backend of the demo, also those that got nothing).
fn per_backend(backends: &[String], counts: &std::collections::BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> =
        backends.iter().map(|b| format!("{b} {}", counts.get(b).copied().unwrap_or(0))).collect();
    parts.extend(counts.iter().filter(|(name, _)| !backends.contains(name)).map(|(name, n)| format!("{name:?} {n}")));
    parts.join(", ")
}

/// "3 failed (timeout 2, refused 1)" or "none failed".
fn failures(failed: usize, errors: &std::collections::BTreeMap<String, usize>) -> String {
    if failed == 0 {
        return "none failed".into();
    }
    let kinds: Vec<String> = errors.iter().map(|(e, n)| format!("{e} {n}")).collect();
    format!("{failed} failed ({})", kinds.join(", "))
}

fn tally_line(backends: &[String], tally: &Tally) -> String {
    format!(
        "{} requests, each on a new connection: {}; {}",
        tally.successes() + tally.failures,
        per_backend(backends, &tally.per_backend),
        failures(tally.failures, &tally.errors)
    )
}

/// What the client's probe saw, after `who` ("client: ").
fn probe_line(who: &str, report: &ProbeReport) -> String {
    format!(
        "{who}{} requests in {:.1} s, {} answered, {}; longest time without an answer: {}",
        report.attempts,
        report.duration.as_secs_f64(),
        report.successes,
        failures(report.failures, &report.errors()),
        ms(report.longest_gap)
    )
}

// ----- the demo -----

/// Which lab the demo builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Two xvip nodes in front of three backend hosts, one client outside.
    Classic,
    /// Three xvip nodes, each one a backend too (a stacked control plane), one client outside and one on node2.
    Stacked,
}

/// The node whose own client connects to the VIP in the stacked layout: a backup at first, active after the
/// crash, a backup again after the hand-back.
const LOCAL_CLIENT_NODE: usize = 2;
const NODE3_PRIORITY: u8 = 50;

/// One of the clients the steps measure from.
struct Client {
    /// "client" (outside) or "client on node2".
    label: String,
    ns: String,
}

/// The running lab and its xvip nodes. Fields drop in order: the daemons before the backends on the nodes, those
/// before the lab.
struct Demo {
    layout: Layout,
    node1: XvipNode,
    node2: XvipNode,
    /// The stacked layout's third node.
    node3: Option<XvipNode>,
    /// Nodes that were killed or stopped; kept for their logs.
    retired: Vec<XvipNode>,
    /// The stacked layout's web backends on the nodes themselves, by node number.
    node_servers: BTreeMap<usize, ChildGuard>,
    /// The service's backends by name (the lab's backend hosts, or the nodes).
    backend_names: Vec<String>,
    backend_bin: PathBuf,
    service: ServiceSpec,
    lab: Lab,
}

type StepFn = fn(&mut Demo) -> Result<()>;

const STEPS: [(&str, StepFn); 6] = [
    ("election: the higher priority wins the VIP", Demo::election),
    ("load balancing through the VIP", Demo::load_balancing),
    ("failover: the active node crashes (SIGKILL) while the client sends a request every 10 ms", Demo::failover),
    ("backend loss: backend2 stops, then comes back", Demo::backend_loss),
    ("hand-back: node1 comes back and preempts", Demo::hand_back),
    ("graceful stop: the active node is stopped with SIGTERM", Demo::graceful_stop),
];

const STACKED_STEPS: [(&str, StepFn); 6] = [
    ("election: the higher priority wins the VIP", Demo::election),
    ("load balancing over the three nodes' own backends, from outside and from node2", Demo::load_balancing),
    (
        "failover: the active node's xvip crashes (SIGKILL) while both clients send a request every 10 ms",
        Demo::failover,
    ),
    ("backend loss: node2's own backend (on the active node) stops, then comes back", Demo::backend_loss),
    ("hand-back: node1 comes back and preempts", Demo::hand_back),
    ("graceful stop: the active node is stopped with SIGTERM", Demo::graceful_stop),
];

impl Demo {
    fn setup(layout: Layout) -> Result<Demo> {
        let xvip = xvip_tests::xvip::binary()?;
        let xvip = std::fs::canonicalize(&xvip).unwrap_or(xvip);
        let backend = xvip_tests::backend::locate()?;
        let backend = std::fs::canonicalize(&backend).unwrap_or(backend);
        if layout == Layout::Stacked {
            return Self::setup_stacked(xvip, backend);
        }
        println!("xvip demo: two nodes share one virtual IP (VRRPv3) and balance it over three web backends (XDP)");
        println!("  xvip:        {}", xvip.display());
        println!("  lab-backend: {}", backend.display());
        progress("building the lab: 7 network namespaces on one bridge (client, node1, node2, backend1..3)");
        let lab = Lab::new(LabSpec {
            nodes: 2,
            backends: 3,
            // DSR: the backends answer the client straight from the VIP, so they hold it on lo (without ARP).
            vip_on_backends_lo: FORWARDING == "dsr",
            backend_bin: Some(backend.clone()),
        })?;
        checkpoint()?;
        let host = |name: &str| lab.host(name).map(|h| h.ip.to_string()).unwrap_or_default();
        say(format!(
            "client {}, node1 {}, node2 {}, backends {} {} {}; VIP {}",
            host("client"),
            host("node1"),
            host("node2"),
            host("backend1"),
            host("backend2"),
            host("backend3"),
            lab.vip()
        ));
        progress(&format!("starting the 3 backends (HTTP on port {PORT}, answering with their name)"));
        lab.start_backends(&[PORT])?;
        checkpoint()?;
        let service = ServiceSpec {
            interval_ms: HEALTH_INTERVAL_MS,
            timeout_ms: HEALTH_TIMEOUT_MS,
            rise: HEALTH_RISE,
            fall: HEALTH_FALL,
            ..ServiceSpec::http(&lab, PORT, PORT, FORWARDING)
        };
        say(format!(
            "service \"{}\": VIP port {PORT} -> the 3 backends, forwarding {FORWARDING}; health check GET /readyz every \
             {HEALTH_INTERVAL_MS} ms (timeout {HEALTH_TIMEOUT_MS} ms, fall {HEALTH_FALL}, rise {HEALTH_RISE})",
            service.name
        ));
        progress(&format!(
            "starting xvip on node1 (priority {NODE1_PRIORITY}) and node2 (priority {NODE2_PRIORITY}), adverts every \
             {ADVERT_INTERVAL_MS} ms"
        ));
        let node1 = lab.start_xvip(lab.node(1), &node_spec(layout, NODE1_PRIORITY, &service))?;
        let node2 = lab.start_xvip(lab.node(2), &node_spec(layout, NODE2_PRIORITY, &service))?;
        checkpoint()?;
        let backend_names = lab.backends().iter().map(|b| b.name.clone()).collect();
        Ok(Demo {
            layout,
            node1,
            node2,
            node3: None,
            retired: Vec::new(),
            node_servers: BTreeMap::new(),
            backend_names,
            backend_bin: backend,
            service,
            lab,
        })
    }

    fn setup_stacked(xvip: PathBuf, backend: PathBuf) -> Result<Demo> {
        println!(
            "xvip demo, stacked: three nodes share one virtual IP (VRRPv3) and are its backends themselves, each \
             running a web server next to xvip; clients outside (XDP) and on a node (socket load balancing)"
        );
        println!("  xvip:        {}", xvip.display());
        println!("  lab-backend: {}", backend.display());
        progress("building the lab: 5 network namespaces on one bridge (client, node1..3)");
        let lab =
            Lab::new(LabSpec { nodes: 3, backends: 0, vip_on_backends_lo: false, backend_bin: Some(backend.clone()) })?;
        checkpoint()?;
        let host = |name: &str| lab.host(name).map(|h| h.ip.to_string()).unwrap_or_default();
        say(format!(
            "client {}, node1 {}, node2 {}, node3 {}; VIP {}",
            host("client"),
            host("node1"),
            host("node2"),
            host("node3"),
            lab.vip()
        ));
        progress(&format!(
            "starting a web backend on each node (HTTP on port {PORT}, answering with the node's name; the node's \
             kube-apiserver in a real cluster)"
        ));
        let mut node_servers = BTreeMap::new();
        for n in 1..=lab.nodes().len() {
            // A local backend's frames are sent by the node's own stack: on veth they carry partial checksums
            // unless TX offload is off, and the active node's rewrites of those replies need full ones.
            lab.exec(&lab.node(n).ns, ["ethtool", "-K", "eth0", "tx", "off"])
                .with_context(|| format!("turning TX checksum offload off on node{n}"))?;
            node_servers.insert(n, start_node_server(&lab, &backend, n)?);
            checkpoint()?;
        }
        let service = ServiceSpec {
            backends: lab.nodes().iter().map(|n| (n.ip.into(), PORT)).collect(),
            interval_ms: HEALTH_INTERVAL_MS,
            timeout_ms: HEALTH_TIMEOUT_MS,
            rise: HEALTH_RISE,
            fall: HEALTH_FALL,
            ..ServiceSpec::http(&lab, PORT, PORT, FORWARDING)
        };
        say(format!(
            "service \"{}\": VIP port {PORT} -> the 3 nodes' own backends, forwarding {FORWARDING}; health check GET \
             /readyz every {HEALTH_INTERVAL_MS} ms (timeout {HEALTH_TIMEOUT_MS} ms, fall {HEALTH_FALL}, rise \
             {HEALTH_RISE}); local_clients on (the default)",
            service.name
        ));
        progress(&format!(
            "starting xvip on node1 (priority {NODE1_PRIORITY}), node2 (priority {NODE2_PRIORITY}) and node3 (priority \
             {NODE3_PRIORITY}), adverts every {ADVERT_INTERVAL_MS} ms"
        ));
        let layout = Layout::Stacked;
        let node1 = lab.start_xvip(lab.node(1), &node_spec(layout, NODE1_PRIORITY, &service))?;
        let node2 = lab.start_xvip(lab.node(2), &node_spec(layout, NODE2_PRIORITY, &service))?;
        let node3 = lab.start_xvip(lab.node(3), &node_spec(layout, NODE3_PRIORITY, &service))?;
        checkpoint()?;
        let backend_names = lab.nodes().iter().map(|n| n.name.clone()).collect();
        Ok(Demo {
            layout,
            node1,
            node2,
            node3: Some(node3),
            retired: Vec::new(),
            node_servers,
            backend_names,
            backend_bin: backend,
            service,
            lab,
        })
    }

    fn election(&mut self) -> Result<()> {
        let lab = &self.lab;
        self.node1.wait_role("active", Duration::from_secs(3))?;
        self.node2.wait_role("backup", Duration::from_secs(3))?;
        if let Some(node3) = &self.node3 {
            node3.wait_role("backup", Duration::from_secs(3))?;
        }
        let status1 = self.node1.status()?;
        // A backup is one from its first instant, but names the active router only once it has heard an advert
        // (one interval after it opened its socket): give it ten intervals.
        let backups: Vec<&XvipNode> = std::iter::once(&self.node2).chain(self.node3.as_ref()).collect();
        let mut statuses = Vec::new();
        for node in &backups {
            let deadline = Instant::now() + 10 * Duration::from_millis(u64::from(ADVERT_INTERVAL_MS));
            let mut status = node.status()?;
            while status.active_router.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                status = node.status()?;
            }
            statuses.push(status);
        }
        let described: Vec<String> = backups
            .iter()
            .zip(&statuses)
            .map(|(node, status)| {
                format!(
                    "{} (priority {}) is {}, and names {} as the active router",
                    node.name,
                    status.priority,
                    status.role,
                    status.active_router.as_deref().unwrap_or("nobody")
                )
            })
            .collect();
        say(format!("node1 (priority {}) is {}; {}", status1.priority, status1.role, described.join("; ")));
        let node1_ip = lab.node(1).ip.to_string();
        let agree =
            statuses.iter().all(|s| s.role == "backup" && s.active_router.as_deref() == Some(node1_ip.as_str()));
        let claim = if self.node3.is_some() {
            "the node with the highest priority is active, the other two backups and agree"
        } else {
            "the node with the higher priority is active, the other one backup and agrees"
        };
        check(status1.role == "active" && agree, claim)?;
        progress(&format!("asking \"who has {}?\" (ARP) from the client and collecting every answer", lab.vip()));
        self.check_sole_owner(1, "exactly one MAC answers for the VIP, and it is node1's")
    }

    fn load_balancing(&mut self) -> Result<()> {
        let n = self.backend_names.len();
        progress(&format!("waiting until node1's health checks have found all {n} backends up"));
        let up = self.wait_all_healthy(&self.node1, Duration::from_secs(5))?;
        say(format!("{up}/{n} backends healthy on node1"));
        if self.layout == Layout::Stacked {
            let up = self.wait_all_healthy(&self.node2, Duration::from_secs(5))?;
            say(format!("{up}/{n} backends healthy on node2 (its socket load balancer uses its own checks)"));
        }
        for client in self.clients() {
            progress(&format!(
                "sending {REQUESTS} requests from the {} to http://{}",
                client.label,
                self.lab.vip_addr(PORT)
            ));
            let tally = probe::request_many(&client.ns, self.lab.vip_addr(PORT), REQUESTS, Duration::from_secs(1))?;
            say(self.tally_line(&client, &tally));
            let spread = self.backend_names.iter().all(|b| tally.per_backend.get(b).copied().unwrap_or(0) > 0);
            check(
                tally.failures == 0 && spread,
                format!("all {REQUESTS} answered, and every backend got some (flows are spread by a Maglev hash)"),
            )?;
        }
        if self.layout == Layout::Stacked {
            self.show_paths()?;
        }
        self.show_status(&self.node1)
    }

    /// What the backends saw as the client: the outside client's flows are translated by the active node (NAT),
    /// the local client's connects go straight to a backend from the node's own address.
    fn show_paths(&self) -> Result<()> {
        let vip = self.lab.vip_addr(PORT);
        let local = self.lab.node(LOCAL_CLIENT_NODE);
        let mut seen = Vec::new();
        for (ns, who) in [(&self.lab.client().ns, "the client's"), (&local.ns, &*format!("node{LOCAL_CLIENT_NODE}'s"))]
        {
            let response = probe::http_get(ns, vip, "/", Duration::from_secs(1))?;
            let backend = response.header("X-Backend").unwrap_or("?").to_owned();
            let peer = response.header("X-Client").unwrap_or("?").to_owned();
            say(format!("{who} request to {vip} reached {backend}, which saw it come from {peer}"));
            seen.push(peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
        }
        check(
            seen == [Some(self.lab.vip().into()), Some(local.ip.into())],
            format!(
                "outside flows are translated by node1 (the backend sees the VIP); node{LOCAL_CLIENT_NODE}'s connect \
                 went straight to the backend (socket load balancing: it sees node{LOCAL_CLIENT_NODE}'s address)"
            ),
        )
    }

    fn failover(&mut self) -> Result<()> {
        let probes = self.start_probes()?;
        pause(Duration::from_millis(500))?;
        say(format!("killing xvip on node1 (pid {})", self.node1.pid().unwrap_or_default()));
        self.node1.kill()?;
        let took = self.node2.wait_role("active", Duration::from_secs(3))?;
        say(format!("node2 reported itself active {} after the kill", ms(took)));
        pause(Duration::from_millis(500))?;
        let reports = stop_probes(probes)?;
        for (client, report) in &reports {
            say(probe_line(&format!("{}: ", client.label), report));
        }
        let bound = master_down_interval(NODE2_PRIORITY);
        say(format!(
            "bound: node2 waits Master_Down_Interval = 3 x {ADVERT_INTERVAL_MS} ms + Skew_Time {} = {} after the last \
             advert",
            ms1(skew_time(NODE2_PRIORITY)),
            ms1(bound)
        ));
        for (client, report) in &reports {
            check_outage(report, &self.outage_what("the outage", client), "", bound)?;
        }
        if let Some(node3) = &self.node3 {
            check(node3.role()? == "backup", "node3 (the lowest priority) stayed a backup")?;
            let tally =
                probe::request_many(&self.lab.client().ns, self.lab.vip_addr(PORT), REQUESTS, Duration::from_secs(1))?;
            say(format!("client, after the crash: {}", tally_line(&self.backend_names, &tally)));
            check(
                tally.failures == 0 && tally.per_backend.get("node1").copied().unwrap_or(0) > 0,
                "node1's xvip is dead but its web server is not: it still gets its share, now as node2's remote backend",
            )?;
        }
        self.check_sole_owner(2, "only node2 answers for the VIP now")?;
        self.show_status(&self.node2)
    }

    fn backend_loss(&mut self) -> Result<()> {
        let victim = self.victim();
        let probes = self.start_probes()?;
        pause(Duration::from_millis(300))?;
        say(format!("stopping {}'s web server; the active node (node2) has to notice", victim.name));
        let stopped = Instant::now();
        self.stop_victim()?;
        wait_health(&self.node2, victim.ip, false, Duration::from_secs(3))?;
        let left = stopped.elapsed();
        let leave_bound = Duration::from_millis(u64::from(HEALTH_FALL * HEALTH_INTERVAL_MS + HEALTH_TIMEOUT_MS));
        say(format!(
            "{} left the pool {} after it stopped (bound: fall {HEALTH_FALL} x {HEALTH_INTERVAL_MS} ms + timeout \
             {HEALTH_TIMEOUT_MS} ms = {})",
            victim.name,
            ms(left),
            ms(leave_bound)
        ));
        check(left <= leave_bound + SLACK, format!("it left within {} + {} slack", ms(leave_bound), ms(SLACK)))?;
        pause(Duration::from_millis(200))?;
        let reports = stop_probes(probes)?;
        for (client, report) in &reports {
            say(probe_line(&format!("{}, while {} was leaving: ", client.label, victim.name), report));
        }
        if reports.iter().any(|(_, r)| r.failures > 0) {
            say(format!("(the failures: new connections hashed to {} before it was taken out)", victim.name));
        }
        for client in self.clients() {
            progress(&format!("sending {REQUESTS} requests from the {} while {} is down", client.label, victim.name));
            let tally = probe::request_many(&client.ns, self.lab.vip_addr(PORT), REQUESTS, Duration::from_secs(1))?;
            say(self.tally_line(&client, &tally));
            let to_victim = tally.per_backend.get(&victim.name).copied().unwrap_or(0);
            check(
                tally.failures == 0 && to_victim == 0,
                format!("all {REQUESTS} answered by the other two; {} got none", victim.name),
            )?;
        }
        self.show_status(&self.node2)?;

        progress(&format!("starting {}'s web server again", victim.name));
        self.start_victim()?;
        let ready = Instant::now();
        wait_health(&self.node2, victim.ip, true, Duration::from_secs(3))?;
        let rejoined = ready.elapsed();
        let join_bound = Duration::from_millis(u64::from(HEALTH_RISE * HEALTH_INTERVAL_MS + HEALTH_TIMEOUT_MS));
        say(format!(
            "{} rejoined {} after it listened again (bound: rise {HEALTH_RISE} x {HEALTH_INTERVAL_MS} ms + timeout \
             {HEALTH_TIMEOUT_MS} ms = {})",
            victim.name,
            ms(rejoined),
            ms(join_bound)
        ));
        check(rejoined <= join_bound + SLACK, format!("it rejoined within {} + {} slack", ms(join_bound), ms(SLACK)))?;
        for client in self.clients() {
            let tally = probe::request_many(&client.ns, self.lab.vip_addr(PORT), REQUESTS, Duration::from_secs(1))?;
            say(self.tally_line(&client, &tally));
            let to_victim = tally.per_backend.get(&victim.name).copied().unwrap_or(0);
            check(
                tally.failures == 0 && to_victim > 0,
                format!("all {REQUESTS} answered, and {} gets requests again", victim.name),
            )?;
        }
        Ok(())
    }

    fn hand_back(&mut self) -> Result<()> {
        let probes = self.start_probes()?;
        pause(Duration::from_millis(300))?;
        progress(&format!("restarting xvip on node1 (priority {NODE1_PRIORITY}, preempt = true)"));
        let started = Instant::now();
        let node1 = self.lab.start_xvip(self.lab.node(1), &node_spec(self.layout, NODE1_PRIORITY, &self.service))?;
        let dead = std::mem::replace(&mut self.node1, node1);
        self.retired.push(dead);
        self.node1.wait_role("active", Duration::from_secs(3))?;
        let took = started.elapsed();
        self.node2.wait_role("backup", Duration::from_secs(2))?;
        say(format!("node1 took the VIP back {} after it started; node2 stepped back to backup", ms(took)));
        pause(Duration::from_millis(500))?;
        let reports = stop_probes(probes)?;
        for (client, report) in &reports {
            say(probe_line(&format!("{}: ", client.label), report));
        }
        // A planned hand-over costs no more than a graceful stop: at most the backup's Skew_Time.
        let bound = skew_time(NODE2_PRIORITY);
        for (client, report) in &reports {
            check_outage(report, &self.outage_what("the hand-back outage", client), "Skew_Time ", bound)?;
        }
        self.check_sole_owner(1, "only node1 answers for the VIP again")?;
        self.show_status(&self.node1)
    }

    fn graceful_stop(&mut self) -> Result<()> {
        let probes = self.start_probes()?;
        pause(Duration::from_millis(300))?;
        say(format!(
            "SIGTERM to xvip on node1 (pid {}): it sends a last advert with priority 0 and exits",
            self.node1.pid().unwrap_or_default()
        ));
        let (code, took) = self.node1.terminate()?;
        let active = self.node2.wait_role("active", Duration::from_secs(2))?;
        say(format!(
            "node1 exited with status {} after {}; node2 was active {} later",
            code.map_or_else(|| "(signal)".into(), |c| c.to_string()),
            ms(took),
            ms(active)
        ));
        check(code == Some(0), "node1 stopped cleanly (exit status 0)")?;
        pause(Duration::from_millis(500))?;
        let reports = stop_probes(probes)?;
        for (client, report) in &reports {
            say(probe_line(&format!("{}: ", client.label), report));
        }
        let bound = skew_time(NODE2_PRIORITY);
        say(format!(
            "bound: on a priority-0 advert the backup waits only Skew_Time = (256 - {NODE2_PRIORITY}) x \
             {ADVERT_INTERVAL_MS} ms / 256 = {}",
            ms1(bound)
        ));
        for (client, report) in &reports {
            check_outage(report, &self.outage_what("the outage", client), "", bound)?;
        }
        self.check_sole_owner(2, "only node2 answers for the VIP")
    }

    // ----- helpers -----

    /// Where requests come from: the client outside, and in the stacked layout a client on node2 too.
    fn clients(&self) -> Vec<Client> {
        let mut clients = vec![Client { label: "client".into(), ns: self.lab.client().ns.clone() }];
        if self.layout == Layout::Stacked {
            let node = self.lab.node(LOCAL_CLIENT_NODE);
            clients.push(Client { label: format!("client on {}", node.name), ns: node.ns.clone() });
        }
        clients
    }

    /// A tally, prefixed with the client's name when there are several.
    fn tally_line(&self, client: &Client, tally: &Tally) -> String {
        let line = tally_line(&self.backend_names, tally);
        if self.layout == Layout::Stacked { format!("{}: {line}", client.label) } else { line }
    }

    /// "the outage", or "the outage of the client on node2" when there are several clients.
    fn outage_what(&self, what: &str, client: &Client) -> String {
        if self.layout == Layout::Stacked { format!("{what} of the {}", client.label) } else { what.to_owned() }
    }

    /// A probe (`GET /` every 10 ms) from every client.
    fn start_probes(&self) -> Result<Vec<(Client, Probe)>> {
        self.clients()
            .into_iter()
            .map(|client| {
                let probe = Probe::start(&client.ns, ProbeSpec::http(self.lab.vip_addr(PORT)))?;
                Ok((client, probe))
            })
            .collect()
    }

    /// The backend stopped and restored in step 4: backend2, or in the stacked layout node2's own (node2 is the
    /// active node then).
    fn victim(&self) -> Host {
        match self.layout {
            Layout::Classic => self.lab.backend(VICTIM).clone(),
            Layout::Stacked => self.lab.node(VICTIM).clone(),
        }
    }

    fn stop_victim(&mut self) -> Result<()> {
        match self.layout {
            Layout::Classic => self.lab.stop_backend(VICTIM),
            Layout::Stacked => {
                let server = self.node_servers.remove(&VICTIM).context("node2's web server is not running")?;
                server.stop().map(drop)
            }
        }
    }

    fn start_victim(&mut self) -> Result<()> {
        match self.layout {
            Layout::Classic => self.lab.start_backend(VICTIM, &[PORT]),
            Layout::Stacked => {
                let server = start_node_server(&self.lab, &self.backend_bin, VICTIM)?;
                self.node_servers.insert(VICTIM, server);
                Ok(())
            }
        }
    }

    /// Asks who answers ARP for the VIP, says it, and checks that it is node `n` alone.
    fn check_sole_owner(&self, n: usize, claim: &str) -> Result<()> {
        let owners = self.arp_owners()?;
        say(format!("ARP for the VIP is answered by: {}", owners.join(", ")));
        check(owners == [format!("{} (node{n})", self.lab.node(n).mac)], claim)
    }

    /// Who answers ARP for the VIP: "MAC (host)" per answer.
    fn arp_owners(&self) -> Result<Vec<String>> {
        let macs = self.lab.arp_probe(self.lab.client(), self.lab.vip())?;
        Ok(macs
            .iter()
            .map(|m| format!("{m} ({})", self.lab.host_by_mac(*m).map_or("unknown host", |h| h.name.as_str())))
            .collect())
    }

    /// Waits until every backend is healthy on `node` and the service answers through the VIP; returns how many
    /// backends are healthy.
    fn wait_all_healthy(&self, node: &XvipNode, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            checkpoint()?;
            let status = node.status()?;
            let up = status.services.iter().flat_map(|s| &s.backends).filter(|b| b.healthy).count();
            if up == self.backend_names.len()
                && probe::http_get(&self.lab.client().ns, self.lab.vip_addr(PORT), "/", Duration::from_millis(200))
                    .is_ok()
            {
                return Ok(up);
            }
            if Instant::now() > deadline {
                bail!("{} has {up} healthy backends after {timeout:?}:\n{}", node.name, status.render());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `xvip status` of `node`, indented.
    fn show_status(&self, node: &XvipNode) -> Result<()> {
        let status = node.status()?;
        say(format!("$ xvip status    # on {}", node.name));
        for line in status.render().lines() {
            if line.is_empty() {
                println!();
            } else {
                say(format!("  {line}"));
            }
        }
        Ok(())
    }

    /// The last lines of every daemon's log, for a failed step.
    fn print_logs(&self) {
        for node in self.retired.iter().chain([&self.node1, &self.node2]).chain(self.node3.as_ref()) {
            let log = node.log();
            if !log.is_empty() {
                println!("--- last lines of xvip's log on {} ---", node.name);
                println!("{}", tail(&log, 15));
            }
        }
    }
}

/// Stops every probe; their reports in the same order.
fn stop_probes(probes: Vec<(Client, Probe)>) -> Result<Vec<(Client, ProbeReport)>> {
    probes.into_iter().map(|(client, probe)| Ok((client, probe.stop()?))).collect()
}

/// A lab backend in node `n`'s namespace, named after the node, on the service's port.
fn start_node_server(lab: &Lab, bin: &Path, n: usize) -> Result<ChildGuard> {
    let node = lab.node(n);
    let port = PORT.to_string();
    let argv = [bin.as_os_str(), "--name".as_ref(), node.name.as_ref(), "--port".as_ref(), port.as_ref()];
    let mut server = lab.spawn(&node.ns, argv)?;
    server.wait_for_log(xvip_tests::READY_LINE, Duration::from_secs(5))?;
    Ok(server)
}

fn node_spec(layout: Layout, priority: u8, service: &ServiceSpec) -> NodeSpec {
    NodeSpec {
        advert_interval_ms: ADVERT_INTERVAL_MS,
        preempt: true,
        // The socket load balancer attaches to the cgroup v2 root, which a real node has mounted.
        mount_cgroup2: layout == Layout::Stacked,
        ..NodeSpec::new(priority)
    }
    .service(service.clone())
}

/// Waits until `node` reports backend `addr` healthy (or not); returns how long that took.
fn wait_health(node: &XvipNode, addr: Ipv4Addr, healthy: bool, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let want = addr.to_string();
    loop {
        checkpoint()?;
        let status = node.status()?;
        let now = status
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .find(|b| b.address == want)
            .map(|b| b.healthy)
            .with_context(|| format!("{} has no backend {addr}", node.name))?;
        if now == healthy {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let state = if healthy { "up" } else { "down" };
            bail!("{} did not mark {addr} {state} within {timeout:?}:\n{}", node.name, status.render());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the run ended.
enum Outcome {
    Ok(usize),
    Failed { step: Option<(usize, &'static str)>, error: anyhow::Error },
}

fn run(layout: Layout) -> Outcome {
    let mut demo = match Demo::setup(layout) {
        Ok(demo) => demo,
        Err(error) => return Outcome::Failed { step: None, error },
    };
    let steps = match layout {
        Layout::Classic => &STEPS,
        Layout::Stacked => &STACKED_STEPS,
    };
    for (i, (title, step)) in steps.iter().enumerate() {
        let n = i + 1;
        println!("\n[{n}/{}] {title}", steps.len());
        if let Err(error) = checkpoint().and_then(|()| step(&mut demo)) {
            if !interrupted() {
                demo.print_logs();
            }
            // `demo` drops here: daemons stopped, namespaces removed.
            return Outcome::Failed { step: Some((n, title)), error };
        }
    }
    Outcome::Ok(steps.len())
}

const USAGE: &str = "usage: xvip-demo [--stacked]";

fn main() -> ExitCode {
    let mut layout = Layout::Classic;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--stacked" => layout = Layout::Stacked,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("xvip-demo: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if !xvip_tests::is_root() {
        eprintln!("xvip-demo: needs root (it builds network namespaces and loads XDP programs)");
        return ExitCode::FAILURE;
    }
    install_signal_handlers();
    let started = Instant::now();
    let outcome = run(layout);
    println!();
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Ok(n) => {
            println!("demo: {n} steps ok in {elapsed:.1} s; the lab is removed");
            ExitCode::SUCCESS
        }
        Outcome::Failed { step, .. } if interrupted() => {
            let at = step.map_or_else(|| "during setup".into(), |(n, _)| format!("in step {n}"));
            println!("demo: interrupted {at}; the lab is removed");
            ExitCode::from(130)
        }
        Outcome::Failed { step: Some((n, title)), error } => {
            println!("demo: step {n} failed ({title}): {error:#}");
            ExitCode::FAILURE
        }
        Outcome::Failed { step: None, error } => {
            println!("demo: setting up the lab failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
