//! The soak (`cargo xtask soak --minutes N`, issue 13 item 3): three xvip nodes and three backends in the netns
//! lab, steady HTTP traffic through the VIP on new and long-lived connections, and faults at seeded random times:
//! the active node killed (SIGKILL), stopped (SIGTERM) or cut off (link down) and brought back (which preempts
//! when it has the highest priority), backends flapping, rolling reloads that add and remove services and
//! backends, and a burst of spoofed traffic. Then it judges what the observers saw ([`timeline`]) against the
//! bound of each fault ([`bounds`]), checks the agents' memory and open files, and that nothing it created is
//! left behind ([`leftovers`]).
//!
//! - [`plan`]: the seeded schedule; [`events`]: carrying each step out; [`observe`]: the traffic, ARP watch and
//!   resource sampler; [`report`]: the table and the JSON.
//!
//! The nodes: node1, node2, node3 with priorities 250, 200, 150, adverts every 100 ms, `backend_loss_penalty`
//! 120 (a node whose backends are not known healthy yet, after a restart or a link loss, advertises below every
//! healthy one, as a production group should be configured), preemption on. node3 is never stopped by a signal,
//! so one agent lives through the whole run and its memory tells whether anything leaks.

pub mod bounds;
mod events;
pub mod leftovers;
mod observe;
pub mod plan;
pub mod report;
pub mod timeline;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::extra::ExtraHost;
use crate::soak::bounds::{Kind, SLACK, Timers};
use crate::soak::leftovers::{BpfIds, Spawned};
use crate::soak::observe::{Agents, Observers};
use crate::soak::plan::{NodeView, Planner, Step};
use crate::soak::report::{EventRecord, Figures};
use crate::soak::timeline::{Violation, Window};
use crate::topology::{Host, MacAddr};
use crate::xvip::{NodeSpec, ServiceSpec, XvipNode};
use crate::{Lab, LabSpec};

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The planned length; the run goes on until every target count is met (at most three times as long).
    pub length: Duration,
    pub seed: u64,
    /// `lab-backend`; `None`: [`crate::backend::locate`].
    pub backend_bin: Option<PathBuf>,
    /// Where the agents' logs are copied at the end (`<out>/logs-<seed>/`).
    pub out: PathBuf,
}

/// Set (by a signal handler of the caller) to end the run early: the step under way finishes, then everything is
/// torn down and judged as far as it got.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Configured priorities of node1..3.
pub const PRIORITIES: [u8; 3] = [250, 200, 150];
/// Subtracted while a node has a service without a usable backend: 250 -> 130, below every healthy node.
pub const PENALTY: u8 = 120;
/// The node never stopped by a signal (0-based).
pub const LONG_LIVED: usize = 2;
pub const ADVERT_INTERVAL_MS: u32 = 100;
const HEALTH_INTERVAL_MS: u32 = 200;
const HEALTH_TIMEOUT_MS: u32 = 150;
const RISE: u32 = 1;
const FALL: u32 = 2;
/// The service every observer uses: VIP port 80 to port 8080 of the backends.
pub const WEB_PORT: u16 = 80;
const WEB_BACKEND_PORT: u16 = 8080;
/// Services reloads add and remove: (VIP port, backend port).
pub const EXTRA_PORTS: [(u16, u16); 2] = [(81, 8081), (82, 8082)];
/// Every port the lab backends listen on.
const BACKEND_PORTS: [u16; 3] = [8080, 8081, 8082];
/// Agent readings from the first this-long of an agent's life are not judged (start-up allocations).
pub const WARMUP: Duration = Duration::from_secs(20);
/// Memory and open files must stay within this many percent of their level after warm-up.
pub const FLAT_PERCENT: f64 = 10.0;
/// How long a restarted node may take to start and, when it preempts, to take over.
const COMEBACK_TIMEOUT: Duration = Duration::from_secs(20);

pub fn timers() -> Timers {
    Timers {
        advert_interval: Duration::from_millis(u64::from(ADVERT_INTERVAL_MS)),
        health_interval: Duration::from_millis(u64::from(HEALTH_INTERVAL_MS)),
        health_timeout: Duration::from_millis(u64::from(HEALTH_TIMEOUT_MS)),
        fall: FALL,
        rise: RISE,
    }
}

/// One xvip node: its host, config, agent (while running) and link.
struct Node {
    host: Host,
    spec: NodeSpec,
    agent: Option<XvipNode>,
    link_up: bool,
    /// Agents that were stopped, kept for their logs.
    retired: Vec<XvipNode>,
}

impl Node {
    fn up(&self) -> bool {
        self.agent.is_some() && self.link_up
    }

    fn agent(&self) -> Result<&XvipNode> {
        self.agent.as_ref().with_context(|| format!("{} has no running agent", self.host.name))
    }
}

/// The services every node is configured with: web (always, 2..=3 backends) and the extra ones reloads add.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Services {
    /// Backends of web (0-based).
    web: BTreeSet<usize>,
    /// Extra services by VIP port, with their backends (0-based).
    extras: BTreeMap<u16, BTreeSet<usize>>,
}

/// The run. Field order is drop order: agents first, the lab last.
pub struct Soak {
    nodes: Vec<Node>,
    observers: Option<Observers>,
    edge: ExtraHost,
    watch: ExtraHost,
    lab: Lab,
    options: Options,
    epoch: Instant,
    /// The wall clock at `epoch`, in ms since the Unix epoch (status reports role changes in wall time).
    epoch_unix_ms: u64,
    timers: Timers,
    planner: Planner,
    services: Services,
    agents: Agents,
    spawned: Vec<Spawned>,
    /// The BPF objects of this process's own XDP stubs.
    own_bpf: BpfIds,
    windows: Vec<Window>,
    /// From when on which MAC should answer ARP for the VIP.
    owners: Vec<(Duration, MacAddr)>,
    /// From when on which backends web had in its table (flaps take one out, reloads change the set).
    tables: Vec<(Duration, Duration, Vec<String>)>,
    events: Vec<EventRecord>,
    violations: Vec<Violation>,
    /// Kinds of reload changes made, by name.
    reload_changes: BTreeMap<&'static str, u32>,
    burst: Option<report::BurstFigures>,
}

/// Runs the soak and returns its figures (violations included).
///
/// # Errors
/// When the lab cannot be built or an observer fails: the run could not judge anything.
pub fn run(options: Options) -> Result<Figures> {
    let pins_before = leftovers::pins();
    let mut soak = Soak::setup(options)?;
    let started = Instant::now();
    let result = soak.drive();
    if let Err(e) = &result {
        soak.violations.push(Violation::new(Some(soak.now()), "the run stopped", format!("{e:#}")));
    }
    let seen = soak.observers.take().context("observers")?.stop()?;
    soak.save_logs();
    soak.check_logs();
    let lab_dir = soak.lab.dir().to_string_lossy().into_owned();
    soak.finish(seen, started.elapsed(), &lab_dir, &pins_before)
}

impl Soak {
    fn setup(options: Options) -> Result<Soak> {
        let lab = Lab::new(LabSpec {
            nodes: 3,
            backends: 3,
            vip_on_backends_lo: false,
            backend_bin: options.backend_bin.clone(),
        })
        .context("building the lab")?;
        lab.start_backends(&BACKEND_PORTS).context("starting the backends")?;
        // An on-link host that is also the nodes' default router (replies to spoofed sources go there, as they
        // would go to the uplink), and a host of its own for the ARP watch.
        let edge = lab.add_host("edge", 254)?;
        let watch = lab.add_host("watch", 253)?;
        for node in lab.nodes() {
            lab.make_router(node, Some(edge.host.ip))?;
        }
        let epoch = Instant::now();
        let epoch_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let services = Services { web: (0..3).collect(), extras: BTreeMap::new() };
        let own_bpf = leftovers::bpf_ids_of(std::process::id());
        let mut soak = Soak {
            nodes: Vec::new(),
            observers: None,
            edge,
            watch,
            options: options.clone(),
            epoch,
            epoch_unix_ms,
            timers: timers(),
            planner: Planner::new(options.seed, options.length),
            services,
            agents: Arc::new(Mutex::new(BTreeMap::new())),
            spawned: Vec::new(),
            own_bpf,
            windows: Vec::new(),
            owners: Vec::new(),
            tables: Vec::new(),
            events: Vec::new(),
            violations: Vec::new(),
            reload_changes: BTreeMap::new(),
            burst: None,
            lab,
        };
        for n in 0..3 {
            if let Some(pid) = soak.lab.backend_pid(n + 1) {
                soak.spawned.extend(Spawned::of(pid, format!("lab-backend of backend{}", n + 1)));
            }
        }
        for i in 0..3 {
            let host = soak.lab.nodes()[i].clone();
            let spec = soak.node_spec(i);
            soak.nodes.push(Node { host, spec, agent: None, link_up: true, retired: Vec::new() });
        }
        for i in 0..3 {
            soak.start_agent(i)?;
        }
        soak.nodes[0].agent()?.wait_role("active", Duration::from_secs(15)).context("node1 becoming active")?;
        for i in 0..3 {
            soak.wait_settled(i, Duration::from_secs(15))?;
        }
        soak.wait_answering(Duration::from_secs(10))?;
        let mac = soak.nodes[0].host.mac;
        soak.owners.push((Duration::ZERO, mac));
        soak.note_table(Duration::ZERO, None);
        let client = soak.lab.client().ns.clone();
        let target = soak.lab.vip_addr(WEB_PORT);
        soak.observers = Some(Observers::start(
            epoch,
            &client,
            target,
            &soak.watch.host.ns,
            soak.lab.vip(),
            soak.agents.clone(),
            soak.options.seed,
        )?);
        Ok(soak)
    }

    /// Soak time: since the run started.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// A wall-clock time from a status (ms since the Unix epoch) in soak time.
    fn soak_time_of(&self, unix_ms: u64) -> Duration {
        Duration::from_millis(unix_ms.saturating_sub(self.epoch_unix_ms))
    }

    fn node_spec(&self, i: usize) -> NodeSpec {
        let check = |name: String, port: u16, backend_port: u16, backends: &BTreeSet<usize>| ServiceSpec {
            name,
            port,
            protocol: "tcp".into(),
            forwarding: "nat".into(),
            backends: backends.iter().map(|&b| (self.lab.backends()[b].ip.into(), backend_port)).collect(),
            weights: BTreeMap::new(),
            check: "http".into(),
            interval_ms: HEALTH_INTERVAL_MS,
            timeout_ms: HEALTH_TIMEOUT_MS,
            rise: RISE,
            fall: FALL,
        };
        let mut services = vec![check("web".into(), WEB_PORT, WEB_BACKEND_PORT, &self.services.web)];
        for (&port, backends) in &self.services.extras {
            let backend_port = EXTRA_PORTS.iter().find(|(p, _)| *p == port).map_or(port, |(_, b)| *b);
            services.push(check(format!("extra{port}"), port, backend_port, backends));
        }
        NodeSpec {
            advert_interval_ms: ADVERT_INTERVAL_MS,
            preempt: true,
            backend_loss_penalty: PENALTY,
            services,
            startup_timeout: COMEBACK_TIMEOUT,
            ..NodeSpec::new(PRIORITIES[i])
        }
    }

    /// Starts node `i`'s agent with its current spec and registers it with the sampler.
    fn start_agent(&mut self, i: usize) -> Result<()> {
        self.nodes[i].spec = self.node_spec(i);
        let agent = self.lab.start_xvip(&self.nodes[i].host, &self.nodes[i].spec)?;
        let pid = agent.pid().context("a started agent has a pid")?;
        if let Some(spawned) = Spawned::of(pid, format!("xvip on {}", self.nodes[i].host.name)) {
            self.spawned.push(spawned.clone());
            if let Ok(mut agents) = self.agents.lock() {
                agents.insert(pid, (i, spawned, self.now()));
            }
        }
        self.nodes[i].agent = Some(agent);
        Ok(())
    }

    /// Node `i`'s agent is gone (killed or stopped): keep it for its log, stop sampling it.
    fn retire_agent(&mut self, i: usize) {
        if let Some(agent) = self.nodes[i].agent.take() {
            if let (Some(pid), Ok(mut agents)) = (agent.pid(), self.agents.lock()) {
                agents.remove(&pid);
            }
            self.nodes[i].retired.push(agent);
        }
    }

    /// The node that should be active: the highest priority among those running with their link up.
    fn expected_active(&self) -> Option<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].up()).max_by_key(|&i| (PRIORITIES[i], self.nodes[i].host.ip))
    }

    fn views(&self) -> Vec<NodeView> {
        (0..self.nodes.len())
            .map(|i| NodeView { up: self.nodes[i].up(), priority: PRIORITIES[i], long_lived: i == LONG_LIVED })
            .collect()
    }

    /// Waits until node `i` advertises its configured priority (every service has a usable backend there) and sees
    /// every configured backend healthy with a MAC: a node in this state takes over with the bounds of the table.
    fn wait_settled(&self, i: usize, timeout: Duration) -> Result<()> {
        let agent = self.nodes[i].agent()?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = agent.status();
            if let Ok(s) = &status
                && s.effective_priority == s.priority
                && s.services.iter().flat_map(|s| &s.backends).all(|b| b.healthy && b.mac.is_some())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not see every backend healthy within {timeout:?}: {}",
                    self.nodes[i].host.name,
                    status.map_or_else(|e| format!("{e:#}"), |s| s.render())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until web answers through the VIP.
    fn wait_answering(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if crate::probe::http_get(
                &self.lab.client().ns,
                self.lab.vip_addr(WEB_PORT),
                "/",
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("web never answered through the VIP within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The schedule, step by step, until the planner says the run is over.
    fn drive(&mut self) -> Result<()> {
        loop {
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            self.check_agents_alive();
            let flappable = self.flappable();
            let views = self.views();
            let now = self.now();
            let Some(step) = self.planner.next(now, &views, &flappable) else { return Ok(()) };
            match step {
                Step::Fault { kind, node } => self.fault(kind, node)?,
                Step::Restore { node } => self.restore(node)?,
                Step::Flap { backend, how } => self.flap(backend, how)?,
                Step::Reload => self.reload()?,
                Step::Burst => self.burst()?,
            }
            let now = self.now().as_secs_f64();
            if let Some(last) = self.events.last_mut() {
                last.end_s = now;
            }
            let pause = self.planner.pause();
            std::thread::sleep(pause);
        }
    }

    /// An agent that should run but exited on its own (a crash): a violation; it counts as stopped from then on,
    /// so the schedule restarts it.
    fn check_agents_alive(&mut self) {
        for i in 0..self.nodes.len() {
            let exited = self.nodes[i].agent.as_mut().is_some_and(|a| !a.is_running());
            if exited {
                let log = self.nodes[i].agent.as_ref().map(|a| crate::process::tail(&a.log(), 20)).unwrap_or_default();
                self.violations.push(Violation::new(
                    Some(self.now()),
                    "agent exited by itself",
                    format!("xvip on {} exited; its log ends:\n{log}", self.nodes[i].host.name),
                ));
                self.retire_agent(i);
            }
        }
    }

    /// Copies every agent's log and config to `<out>/logs-<seed>/`, so a failure can be read after the lab is gone.
    fn save_logs(&self) {
        let dir = self.options.out.join(format!("logs-{}", self.options.seed));
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(self.lab.dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log" || e == "toml")
                    && let Some(name) = path.file_name()
                {
                    let _ = std::fs::copy(&path, dir.join(name));
                }
            }
        }
    }

    /// A panic in any agent's log is a violation, wherever it happened.
    fn check_logs(&mut self) {
        let mut found = Vec::new();
        for node in &self.nodes {
            for agent in node.retired.iter().chain(node.agent.as_ref()) {
                let log = agent.log();
                if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                    found.push(format!("{}: {line}", node.host.name));
                }
            }
        }
        for f in found {
            self.violations.push(Violation::new(None, "agent panicked", f));
        }
    }

    /// The MAC of node `i`.
    fn mac(&self, i: usize) -> MacAddr {
        self.nodes[i].host.mac
    }

    fn vip(&self) -> Ipv4Addr {
        self.lab.vip()
    }

    fn bound(&self, kind: Kind, taker: Option<usize>) -> Duration {
        self.timers.bound(kind, taker.map_or(0, |t| PRIORITIES[t])).unwrap_or(Duration::ZERO)
    }

    /// Records web's backends, without `out` (a flapping backend the active node took out), as in use from some
    /// time between `since` (the event that changed them) and now on.
    fn note_table(&mut self, since: Duration, out: Option<usize>) {
        let set: Vec<String> = self
            .services
            .web
            .iter()
            .filter(|&&b| Some(b) != out)
            .map(|&b| self.lab.backends()[b].name.clone())
            .collect();
        let now = self.now();
        self.tables.push((since.min(now), now, set));
    }

    /// Opens a window for event `event` from `open`.
    fn window(&mut self, event: usize, kind: Kind, open: Duration, bound: Duration, backends: Vec<String>) {
        self.windows.push(Window { event, kind, open, close: open + bound + SLACK, bound, backends });
    }
}
