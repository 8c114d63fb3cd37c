//! `cargo xtask demo`: a narrated tour of xvip in a throwaway netns lab (two xvip nodes, three web backends and a
//! client on one bridge). Every step measures something and checks what it promises; the program exits 0 only
//! when every step behaved as promised, 1 when one did not, 130 when interrupted (Ctrl-C). The lab is removed in
//! every case.
//!
//! Needs root and the built binaries: `XVIP_BIN` (else target/release/xvip) and `XVIP_LAB_BACKEND` (else next to
//! this program). `cargo xtask demo` sets both.
use std::{
    net::Ipv4Addr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use xvip_tests::{
    Lab, LabSpec,
    probe::{self, ProbeReport, ProbeSpec, Tally},
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
/// The backend that is stopped and restored in step 4.
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

/// "backend1 10, backend2 9, backend3 11" (every backend of the lab, also those that got nothing).
fn per_backend(lab: &Lab, counts: &std::collections::BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> =
        lab.backends().iter().map(|b| format!("{} {}", b.name, counts.get(&b.name).copied().unwrap_or(0))).collect();
    parts.extend(counts.iter().filter(|(name, _)| lab.host(name).is_none()).map(|(name, n)| format!("{name:?} {n}")));
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

fn tally_line(lab: &Lab, tally: &Tally) -> String {
    format!(
        "{} requests, each on a new connection: {}; {}",
        tally.successes() + tally.failures,
        per_backend(lab, &tally.per_backend),
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

/// The running lab and its two xvip nodes. Fields drop in order: the daemons before the lab.
struct Demo {
    node1: XvipNode,
    node2: XvipNode,
    /// Nodes that were killed or stopped; kept for their logs.
    retired: Vec<XvipNode>,
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

impl Demo {
    fn setup() -> Result<Demo> {
        let xvip = xvip_tests::xvip::binary()?;
        let xvip = std::fs::canonicalize(&xvip).unwrap_or(xvip);
        let backend = xvip_tests::backend::locate()?;
        let backend = std::fs::canonicalize(&backend).unwrap_or(backend);
        println!("xvip demo: two nodes share one virtual IP (VRRPv3) and balance it over three web backends (XDP)");
        println!("  xvip:        {}", xvip.display());
        println!("  lab-backend: {}", backend.display());
        progress("building the lab: 7 network namespaces on one bridge (client, node1, node2, backend1..3)");
        let lab = Lab::new(LabSpec {
            nodes: 2,
            backends: 3,
            // DSR: the backends answer the client straight from the VIP, so they hold it on lo (without ARP).
            vip_on_backends_lo: FORWARDING == "dsr",
            backend_bin: Some(backend),
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
        let node1 = lab.start_xvip(lab.node(1), &node_spec(NODE1_PRIORITY, &service))?;
        let node2 = lab.start_xvip(lab.node(2), &node_spec(NODE2_PRIORITY, &service))?;
        checkpoint()?;
        Ok(Demo { node1, node2, retired: Vec::new(), service, lab })
    }

    fn election(&mut self) -> Result<()> {
        let lab = &self.lab;
        self.node1.wait_role("active", Duration::from_secs(3))?;
        self.node2.wait_role("backup", Duration::from_secs(3))?;
        let status1 = self.node1.status()?;
        // node2 is a backup from its first instant, but names the active router only once it has heard an advert
        // (one interval after it opened its socket): give it ten intervals.
        let deadline = Instant::now() + 10 * Duration::from_millis(u64::from(ADVERT_INTERVAL_MS));
        let mut status2 = self.node2.status()?;
        while status2.active_router.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            status2 = self.node2.status()?;
        }
        say(format!(
            "node1 (priority {}) is {}; node2 (priority {}) is {}, and names {} as the active router",
            status1.priority,
            status1.role,
            status2.priority,
            status2.role,
            status2.active_router.as_deref().unwrap_or("nobody")
        ));
        check(
            status1.role == "active"
                && status2.role == "backup"
                && status2.active_router.as_deref() == Some(&lab.node(1).ip.to_string()),
            "the node with the higher priority is active, the other one backup and agrees",
        )?;
        progress(&format!("asking \"who has {}?\" (ARP) from the client and collecting every answer", lab.vip()));
        self.check_sole_owner(1, "exactly one MAC answers for the VIP, and it is node1's")
    }

    fn load_balancing(&mut self) -> Result<()> {
        progress("waiting until node1's health checks have found all 3 backends up");
        let up = self.wait_all_healthy(&self.node1, Duration::from_secs(5))?;
        say(format!("{up}/3 backends healthy on node1"));
        progress(&format!("sending {REQUESTS} requests from the client to http://{}", self.lab.vip_addr(PORT)));
        let tally = self.lab.request_many(self.lab.vip_addr(PORT), REQUESTS)?;
        say(tally_line(&self.lab, &tally));
        let spread = self.lab.backends().iter().all(|b| tally.per_backend.get(&b.name).copied().unwrap_or(0) > 0);
        check(
            tally.failures == 0 && spread,
            format!("all {REQUESTS} answered, and every backend got some (flows are spread by a Maglev hash)"),
        )?;
        self.show_status(&self.node1)
    }

    fn failover(&mut self) -> Result<()> {
        let probe = self.lab.probe(ProbeSpec::http(self.lab.vip_addr(PORT)))?;
        pause(Duration::from_millis(500))?;
        say(format!("killing xvip on node1 (pid {})", self.node1.pid().unwrap_or_default()));
        self.node1.kill()?;
        let took = self.node2.wait_role("active", Duration::from_secs(3))?;
        say(format!("node2 reported itself active {} after the kill", ms(took)));
        pause(Duration::from_millis(500))?;
        let report = probe.stop()?;
        say(probe_line("client: ", &report));
        let bound = master_down_interval(NODE2_PRIORITY);
        say(format!(
            "bound: node2 waits Master_Down_Interval = 3 x {ADVERT_INTERVAL_MS} ms + Skew_Time {} = {} after the last \
             advert",
            ms1(skew_time(NODE2_PRIORITY)),
            ms1(bound)
        ));
        check_outage(&report, "the outage", "", bound)?;
        self.check_sole_owner(2, "only node2 answers for the VIP now")?;
        self.show_status(&self.node2)
    }

    fn backend_loss(&mut self) -> Result<()> {
        let lab = &self.lab;
        let victim = lab.backend(VICTIM).clone();
        let probe = lab.probe(ProbeSpec::http(lab.vip_addr(PORT)))?;
        pause(Duration::from_millis(300))?;
        say(format!("stopping {}'s web server; the active node (node2) has to notice", victim.name));
        let stopped = Instant::now();
        lab.stop_backend(VICTIM)?;
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
        let report = probe.stop()?;
        say(probe_line(&format!("client, while {} was leaving: ", victim.name), &report));
        if report.failures > 0 {
            say(format!("(the failures: new connections hashed to {} before it was taken out)", victim.name));
        }
        progress(&format!("sending {REQUESTS} requests while {} is down", victim.name));
        let tally = lab.request_many(lab.vip_addr(PORT), REQUESTS)?;
        say(tally_line(lab, &tally));
        let to_victim = tally.per_backend.get(&victim.name).copied().unwrap_or(0);
        check(
            tally.failures == 0 && to_victim == 0,
            format!("all {REQUESTS} answered by the other two; {} got none", victim.name),
        )?;
        self.show_status(&self.node2)?;

        progress(&format!("starting {}'s web server again", victim.name));
        lab.start_backend(VICTIM, &[PORT])?;
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
        let tally = lab.request_many(lab.vip_addr(PORT), REQUESTS)?;
        say(tally_line(lab, &tally));
        let to_victim = tally.per_backend.get(&victim.name).copied().unwrap_or(0);
        check(
            tally.failures == 0 && to_victim > 0,
            format!("all {REQUESTS} answered, and {} gets requests again", victim.name),
        )
    }

    fn hand_back(&mut self) -> Result<()> {
        let probe = self.lab.probe(ProbeSpec::http(self.lab.vip_addr(PORT)))?;
        pause(Duration::from_millis(300))?;
        progress(&format!("restarting xvip on node1 (priority {NODE1_PRIORITY}, preempt = true)"));
        let started = Instant::now();
        let node1 = self.lab.start_xvip(self.lab.node(1), &node_spec(NODE1_PRIORITY, &self.service))?;
        let dead = std::mem::replace(&mut self.node1, node1);
        self.retired.push(dead);
        self.node1.wait_role("active", Duration::from_secs(3))?;
        let took = started.elapsed();
        self.node2.wait_role("backup", Duration::from_secs(2))?;
        say(format!("node1 took the VIP back {} after it started; node2 stepped back to backup", ms(took)));
        pause(Duration::from_millis(500))?;
        let report = probe.stop()?;
        say(probe_line("client: ", &report));
        // A planned hand-over costs no more than a graceful stop: at most the backup's Skew_Time.
        let bound = skew_time(NODE2_PRIORITY);
        check_outage(&report, "the hand-back outage", "Skew_Time ", bound)?;
        self.check_sole_owner(1, "only node1 answers for the VIP again")?;
        self.show_status(&self.node1)
    }

    fn graceful_stop(&mut self) -> Result<()> {
        let probe = self.lab.probe(ProbeSpec::http(self.lab.vip_addr(PORT)))?;
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
        let report = probe.stop()?;
        say(probe_line("client: ", &report));
        let bound = skew_time(NODE2_PRIORITY);
        say(format!(
            "bound: on a priority-0 advert the backup waits only Skew_Time = (256 - {NODE2_PRIORITY}) x \
             {ADVERT_INTERVAL_MS} ms / 256 = {}",
            ms1(bound)
        ));
        check_outage(&report, "the outage", "", bound)?;
        self.check_sole_owner(2, "only node2 answers for the VIP")
    }

    // ----- helpers -----

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
            if up == self.lab.backends().len()
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
        for node in self.retired.iter().chain([&self.node1, &self.node2]) {
            let log = node.log();
            if !log.is_empty() {
                println!("--- last lines of xvip's log on {} ---", node.name);
                println!("{}", tail(&log, 15));
            }
        }
    }
}

fn node_spec(priority: u8, service: &ServiceSpec) -> NodeSpec {
    NodeSpec { advert_interval_ms: ADVERT_INTERVAL_MS, preempt: true, ..NodeSpec::new(priority) }
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

fn run() -> Outcome {
    let mut demo = match Demo::setup() {
        Ok(demo) => demo,
        Err(error) => return Outcome::Failed { step: None, error },
    };
    for (i, (title, step)) in STEPS.iter().enumerate() {
        let n = i + 1;
        println!("\n[{n}/{}] {title}", STEPS.len());
        if let Err(error) = checkpoint().and_then(|()| step(&mut demo)) {
            if !interrupted() {
                demo.print_logs();
            }
            // `demo` drops here: daemons stopped, namespaces removed.
            return Outcome::Failed { step: Some((n, title)), error };
        }
    }
    Outcome::Ok(STEPS.len())
}

fn main() -> ExitCode {
    if !xvip_tests::is_root() {
        eprintln!("xvip-demo: needs root (it builds network namespaces and loads XDP programs)");
        return ExitCode::FAILURE;
    }
    install_signal_handlers();
    let started = Instant::now();
    let outcome = run();
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
