//! The daemon's shell around the [`Engine`]: it feeds the engine events and carries out its commands, and does
//! nothing else. Every decision is the engine's.
//!
//! Three places run, so that slow work can never delay an advert or the down timer:
//! - **the advert thread** (`xvip-vrrp`, its own single-threaded runtime): the engine, the VRRP socket, the timers,
//!   the link check, the systemd watchdog. It executes the fast commands itself (one map write for the active
//!   flag, one for the heartbeat, a `sendmsg` per advert, non-blocking gratuitous ARPs) and hands everything else
//!   to the others through queues it never waits on;
//! - **the data plane thread** (`xvip-dataplane`): service installs and Maglev rewrites, counters for status;
//!   queued updates of one service are coalesced;
//! - **the main runtime**: signals (a reload reads the file here), health checkers, the neighbour watcher (every
//!   netlink call bounded), the status socket.
//!
//! What remains here is I/O that cannot be pure: opening sockets and the eBPF object at start, moving events and
//! commands between the places above, and tearing down in order at the end.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::mpsc as std_mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    runtime::Handle,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior, sleep_until},
};

use crate::{
    config::Config,
    control::{self, StatusRequest},
    dataplane::{Counters, DataPlane, LoadOptions, NodeControl, ServiceSpec},
    engine::{Command, Engine, Event, View},
    garp::GarpSender,
    health::{self, HealthEvent},
    neighbour::{self, Neighbours},
    netif,
    services::Endpoint,
    systemd::Notifier,
    vrrp::{InterfaceInfo, Role, Transport, VrrpSocket},
};

/// How often the interface's link state is checked.
const LINK_CHECK: Duration = Duration::from_millis(100);
/// After a failed `recv` on the VRRP socket (the link went away), how long before reading again; timers keep
/// running meanwhile.
const RECV_PAUSE: Duration = Duration::from_millis(100);

/// Why the daemon could not start, or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {interface:?} (from `interface` in the config) is not usable; `ip link` lists them: {source}")]
    Interface {
        interface: String,
        #[source]
        source: crate::vrrp::socket::Error,
    },
    #[error("reading the link state: {0}")]
    Link(#[from] netif::Error),
    #[error("interface {0} has no IPv4 address to send VRRP adverts from: add one, or set vrrp.source_address")]
    NoSourceAddress(String),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("{what}: {source}")]
    DataPlane {
        what: &'static str,
        #[source]
        source: crate::dataplane::Error,
    },
    #[error("opening the gratuitous ARP socket: {0}")]
    Garp(#[from] crate::garp::Error),
    #[error("opening the VRRP socket: {0}")]
    Vrrp(#[source] crate::vrrp::socket::Error),
    #[error(transparent)]
    Neighbours(#[from] neighbour::Error),
    #[error("VRRP settings: {0}")]
    Settings(#[from] crate::vrrp::machine::InvalidSettings),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the advert thread ended abnormally: {0}")]
    AdvertThread(String),
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Removes the status socket file when the agent ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Startup problems come back as errors, after undoing what was done.
///
/// # Errors
/// See [`Error`].
pub async fn run(config_path: &Path, config: Config) -> Result<(), Error> {
    // Signals first: a SIGHUP or SIGTERM that arrives while the slow startup runs is queued, not fatal.
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
    let signals = spawn_signals(config_path.to_path_buf(), events_tx.clone())?;

    let iface = InterfaceInfo::lookup(&config.interface)
        .map_err(|source| Error::Interface { interface: config.interface.clone(), source })?;
    let source = config
        .vrrp
        .source_address
        .or_else(|| iface.primary_ipv4())
        .ok_or_else(|| Error::NoSourceAddress(config.interface.clone()))?;
    if !iface.ipv4.contains(&source) {
        log::warn!("vrrp.source_address {source} is not an address of {}", config.interface);
    }

    // The socket first: if another daemon runs, fail before touching the interface.
    let listener = control::bind(&config.control.socket).await?;
    let socket_file = SocketFile(config.control.socket.clone());

    let capacity = u32::try_from(config.services.len()).unwrap_or(u32::MAX).max(8);
    let dp_error = |what: &'static str| move |source| Error::DataPlane { what, source };
    let mut dataplane = DataPlane::load(LoadOptions {
        conntrack_entries: config.conntrack_entries,
        service_capacity: capacity,
        ..LoadOptions::default()
    })
    .map_err(dp_error("loading the data plane"))?;
    let capacity = dataplane.service_capacity();
    let xdp_mode = dataplane.attach(&config.interface, config.xdp_mode).map_err(dp_error("attaching"))?;
    let garp = GarpSender::open(&config.interface)?;
    dataplane
        .set_node(config.vip.address, garp.mac(), lb_common::group_seed(config.vip.address.octets(), config.vrrp.vrid))
        .map_err(dp_error("writing the node's config"))?;
    let mut node = dataplane.node_control().map_err(dp_error("opening the node's maps"))?;

    let neighbours = Neighbours::connect()?;
    match neighbours.on_link(iface.index, config.vip.address).await {
        Ok(false) => log::warn!(
            "vip {} is not inside any prefix of {}: clients on that segment will not ARP for it; add a route \
             towards it on your routers, or pick a VIP from the interface's subnet",
            config.vip.address,
            config.interface
        ),
        Ok(true) => {}
        Err(e) => log::warn!("checking whether the VIP is on-link: {e}"),
    }

    let engine = Engine::new(config.clone(), source, capacity)?;
    node.set_max_age(engine.heartbeat_max_age());
    let link_up = netif::link_up(&config.interface)?;

    log::info!(
        "xvip starting: vip {} on {} (xdp {xdp_mode}), vrid {}, priority {}, adverts every {} ms {} from {source}, \
         {} service(s)",
        config.vip.address,
        config.interface,
        config.vrrp.vrid,
        config.vrrp.priority,
        config.vrrp.advert_interval_ms,
        if config.vrrp.unicast_peers.is_empty() {
            "to 224.0.0.18".to_string()
        } else {
            format!("to {:?}", config.vrrp.unicast_peers)
        },
        config.services.len()
    );

    let (dp_tx, dp_thread) = spawn_dataplane(dataplane)?;
    let (neigh_tx, neigh_rx) = mpsc::unbounded_channel();
    let neighbour_events = events_tx.clone();
    let watcher = tokio::spawn(neighbour::watch(neighbours, neigh_rx, move |batch| {
        let _ = neighbour_events.send(Event::Neighbours(batch));
    }));

    let (status_tx, status_rx) = mpsc::channel::<StatusRequest>(16);
    let (engine_status_tx, engine_status_rx) = mpsc::channel::<oneshot::Sender<View>>(16);
    let control_task = tokio::spawn(control::serve(listener, status_tx));
    // Engine time 0, on both clocks: the monotonic one for timers, the wall clock for `role_since_unix_ms`.
    let (epoch, epoch_unix_ms) = (Instant::now(), unix_ms());
    let status_task =
        tokio::spawn(assemble_status(status_rx, engine_status_tx, dp_tx.clone(), xdp_mode, epoch_unix_ms));

    let transport = if config.vrrp.unicast_peers.is_empty() {
        Transport::Multicast
    } else {
        Transport::Unicast(config.vrrp.unicast_peers.clone())
    };
    let shell = Shell {
        engine,
        epoch,
        node,
        garp,
        vip: config.vip.address,
        interface: config.interface.clone(),
        link_up,
        events: events_rx,
        events_tx,
        status: engine_status_rx,
        dataplane: dp_tx.clone(),
        neighbours: neigh_tx,
        runtime: Handle::current(),
        checkers: HashMap::new(),
        notifier: Notifier::from_env(),
        send_failures: 0,
        send_logged: None,
        late_timers: 0,
        late_logged: None,
    };
    let advert_thread = thread::Builder::new()
        .name("xvip-vrrp".into())
        .spawn(move || -> Result<(), Error> {
            raise_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Io { what: "starting the advert thread's runtime", source })?;
            runtime.block_on(async move {
                // Registered with this thread's runtime, so only this thread ever waits on it.
                let socket = VrrpSocket::open(&shell.interface, source, transport).map_err(Error::Vrrp)?;
                shell.run(socket).await;
                Ok(())
            })
        })
        .map_err(|source| Error::Io { what: "starting the advert thread", source })?;

    let result = tokio::task::spawn_blocking(move || advert_thread.join())
        .await
        .map_err(|e| Error::AdvertThread(e.to_string()))
        .and_then(|joined| joined.map_err(|_| Error::AdvertThread("it panicked".into())))
        .and_then(|r| r);

    signals.abort();
    watcher.abort();
    control_task.abort();
    status_task.abort();
    let (done_tx, done_rx) = oneshot::channel();
    let _ = dp_tx.send(Job::Detach(done_tx));
    match done_rx.await {
        Ok(Ok(())) => log::info!("stopped: XDP program removed from {}", config.interface),
        Ok(Err(e)) => log::warn!("while stopping: {e:#}"),
        Err(_) => log::warn!("while stopping: the data plane thread is gone"),
    }
    let _ = tokio::task::spawn_blocking(move || dp_thread.join()).await;
    drop(socket_file);
    result
}

/// Nice value of the advert thread. It runs for microseconds per advert interval, but it must run *on time*: on a
/// host whose CPUs are busy with other work, a thread at the default priority can wait tens of milliseconds to be
/// scheduled, and a peer takes over after three missed adverts (keepalived offers `vrrp_priority` for the same
/// reason). A higher weight makes the scheduler run it as soon as it wakes.
const ADVERT_THREAD_NICE: libc::c_int = -10;

/// Raises the calling thread's priority to [`ADVERT_THREAD_NICE`]; needs CAP_SYS_NICE (the systemd unit grants
/// it), and only logs when not allowed.
fn raise_priority() {
    // On Linux the nice value is per thread (setpriority(2), NOTES).
    // SAFETY: plain syscalls on this thread's own id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, ADVERT_THREAD_NICE) };
    if rc != 0 {
        log::info!(
            "the advert thread keeps the default priority ({}); grant CAP_SYS_NICE for nice {ADVERT_THREAD_NICE}",
            std::io::Error::last_os_error()
        );
    }
}

/// SIGTERM/SIGINT stop the engine; SIGHUP reads the config file here, off the advert thread, and hands the result
/// to the engine.
fn spawn_signals(config_path: PathBuf, events: mpsc::UnboundedSender<Event>) -> Result<JoinHandle<()>, Error> {
    let install = |kind: SignalKind, what: &'static str| signal(kind).map_err(|source| Error::Io { what, source });
    let mut term = install(SignalKind::terminate(), "installing the SIGTERM handler")?;
    let mut int = install(SignalKind::interrupt(), "installing the SIGINT handler")?;
    let mut hup = install(SignalKind::hangup(), "installing the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = term.recv() => { log::info!("SIGTERM: stopping"); Event::Stop }
                _ = int.recv() => { log::info!("SIGINT: stopping"); Event::Stop }
                _ = hup.recv() => {
                    let path = config_path.clone();
                    let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path)).await;
                    match loaded {
                        Ok(result) => Event::Reload(Box::new(result)),
                        Err(e) => { log::error!("reading the config for a reload: {e}"); continue; }
                    }
                }
            };
            if events.send(event).is_err() {
                return;
            }
        }
    }))
}

/// Work for the data plane thread.
enum Job {
    Reconcile(Vec<(String, ServiceSpec)>),
    Install(String, ServiceSpec),
    Counters(oneshot::Sender<Counters>),
    Detach(oneshot::Sender<crate::dataplane::Result<()>>),
}

/// The data plane thread: applies queued service updates in order, coalescing the updates of one service that
/// queued up behind a slow one (only the newest matters), and answers counter reads for status.
fn spawn_dataplane(mut dataplane: DataPlane) -> Result<(std_mpsc::Sender<Job>, thread::JoinHandle<()>), Error> {
    let (tx, rx) = std_mpsc::channel::<Job>();
    let handle = thread::Builder::new()
        .name("xvip-dataplane".into())
        .spawn(move || {
            // Slow work yields to the advert thread when the CPU is contended.
            // On Linux the nice value is per thread (setpriority(2), NOTES).
            // SAFETY: plain syscalls on this thread's own id.
            unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 5);
            }
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                jobs.extend(rx.try_iter());
                for job in coalesce(jobs) {
                    match job {
                        Job::Reconcile(services) => {
                            if let Err(e) = dataplane.reconcile(&services) {
                                log::error!("installing services: {e:#}");
                            }
                        }
                        Job::Install(name, spec) => {
                            if let Err(e) = dataplane.apply_service(&name, &spec) {
                                log::error!("installing service {name}: {e:#}; it keeps its previous state");
                            }
                        }
                        Job::Counters(reply) => {
                            let mut counters = dataplane.counters().unwrap_or_else(|e| {
                                log::warn!("reading counters: {e:#}");
                                Counters::default()
                            });
                            if dataplane.draining() {
                                counters.flows = dataplane
                                    .flows_per_backend()
                                    .map_err(|e| log::warn!("counting the flows of draining backends: {e:#}"))
                                    .ok();
                            }
                            let _ = reply.send(counters);
                        }
                        Job::Detach(reply) => {
                            let _ = reply.send(dataplane.detach());
                            return;
                        }
                    }
                }
            }
        })
        .map_err(|source| Error::Io { what: "starting the data plane thread", source })?;
    Ok((tx, handle))
}

/// Drops service updates that a later one in the same batch supersedes: an install of a service followed by
/// another install of it, or any install followed by a full reconcile that names its service.
fn coalesce(jobs: Vec<Job>) -> Vec<Job> {
    let mut kept: Vec<Job> = Vec::with_capacity(jobs.len());
    for job in jobs {
        match &job {
            Job::Install(name, _) => kept.retain(|k| !matches!(k, Job::Install(n, _) if n == name)),
            Job::Reconcile(services) => kept.retain(|k| match k {
                Job::Install(n, _) => !services.iter().any(|(s, _)| s == n),
                Job::Reconcile(_) => false,
                _ => true,
            }),
            _ => {}
        }
        kept.push(job);
    }
    kept
}

/// Answers status requests: the engine's view from the advert thread, plus the data plane's counters from its
/// thread (read there, so a slow map read never holds up the advert thread).
async fn assemble_status(
    mut requests: mpsc::Receiver<StatusRequest>,
    engine: mpsc::Sender<oneshot::Sender<View>>,
    dataplane: std_mpsc::Sender<Job>,
    xdp_mode: &'static str,
    epoch_unix_ms: u64,
) {
    while let Some(reply) = requests.recv().await {
        let (tx, rx) = oneshot::channel();
        if engine.send(tx).await.is_err() {
            return;
        }
        let Ok(view) = rx.await else { return };
        let mut status = view.status(epoch_unix_ms);
        status.xdp_mode = xdp_mode.to_string();
        let (tx, rx) = oneshot::channel();
        if dataplane.send(Job::Counters(tx)).is_ok()
            && let Ok(counters) = rx.await
        {
            status.add_counters(&counters);
        }
        let _ = reply.send(status);
    }
}

/// A running health checker; aborted when dropped.
struct Checker(JoinHandle<()>);

impl Drop for Checker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The advert thread's state: the engine and the fast edges.
struct Shell {
    engine: Engine,
    epoch: Instant,
    node: NodeControl,
    garp: GarpSender,
    vip: Ipv4Addr,
    interface: String,
    link_up: bool,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    status: mpsc::Receiver<oneshot::Sender<View>>,
    dataplane: std_mpsc::Sender<Job>,
    neighbours: mpsc::UnboundedSender<Vec<Ipv4Addr>>,
    runtime: Handle,
    checkers: HashMap<(String, Endpoint), Checker>,
    notifier: Notifier,
    send_failures: u64,
    send_logged: Option<Instant>,
    late_timers: u64,
    late_logged: Option<Instant>,
}

impl Shell {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(mut self, socket: VrrpSocket) {
        let link_up = self.link_up;
        self.handle(&socket, Event::Start { link_up }).await;
        let mut link_check = tokio::time::interval(LINK_CHECK);
        link_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watchdog_period = self.notifier.watchdog_interval().unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(watchdog_period);
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut recv_paused_until: Option<Instant> = None;
        while !self.engine.exited() {
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = self.engine.next_deadline().map_or(far, |d| self.epoch + d);
            let recv_open = recv_paused_until.is_none_or(|t| Instant::now() >= t);
            let pause = recv_paused_until.unwrap_or(far);
            // `biased`: the timer is looked at first in every round, so a flood of packets or events cannot keep
            // an advert waiting.
            tokio::select! {
                biased;
                _ = sleep_until(deadline) => {
                    self.note_lateness(deadline);
                    self.handle(&socket, Event::Timer).await;
                }
                packet = socket.recv(), if recv_open => match packet {
                    Ok(packet) => self.handle(&socket, Event::Packet(packet)).await,
                    Err(e) => {
                        log::warn!("receiving VRRP adverts: {e:#}");
                        recv_paused_until = Some(Instant::now() + RECV_PAUSE);
                    }
                },
                _ = sleep_until(pause), if !recv_open => recv_paused_until = None,
                Some(event) = self.events.recv() => self.handle(&socket, event).await,
                Some(reply) = self.status.recv() => {
                    let _ = reply.send(self.engine.view(self.now()));
                }
                _ = link_check.tick() => self.check_link(&socket).await,
                _ = watchdog.tick() => self.notifier.watchdog(),
            }
        }
        self.notifier.stopping();
        self.checkers.clear();
    }

    /// Says so (at most every 10 s) when a timer fires late by more than a quarter of the advert interval: the
    /// CPU is starved or the process was stopped, and peers may take over (keepalived's "thread timer expired").
    fn note_lateness(&mut self, deadline: Instant) {
        let late = Instant::now().saturating_duration_since(deadline);
        let limit = Duration::from_millis(u64::from(self.engine.config().vrrp.advert_interval_ms)) / 4;
        if late <= limit {
            return;
        }
        self.late_timers += 1;
        let now = Instant::now();
        if self.late_logged.is_none_or(|t| now >= t + Duration::from_secs(10)) {
            self.late_logged = Some(now);
            log::warn!(
                "a VRRP timer fired {} ms late ({} late timer(s) so far): this node is short of CPU or was stopped",
                late.as_millis(),
                self.late_timers
            );
        }
    }

    async fn check_link(&mut self, socket: &VrrpSocket) {
        match netif::link_up(&self.interface) {
            Ok(up) if up != self.link_up => {
                self.link_up = up;
                self.handle(socket, Event::Link { up }).await;
            }
            Ok(_) => {}
            Err(e) => log::warn!("{e:#}"),
        }
    }

    async fn handle(&mut self, socket: &VrrpSocket, event: Event) {
        let role = self.engine.role();
        let now = self.now();
        let commands = self.engine.handle(now, event);
        for command in commands {
            self.execute(socket, command).await;
        }
        if self.engine.role() != role {
            self.notifier.status(&self.status_line());
        }
    }

    fn status_line(&self) -> String {
        format!("{}, priority {}", self.engine.role(), self.engine.effective_priority())
    }

    async fn execute(&mut self, socket: &VrrpSocket, command: Command) {
        match command {
            Command::SetActive(active) => {
                if let Err(e) = self.node.set_active(active) {
                    log::error!("{e:#}");
                }
            }
            Command::SendAdvert { advert, checksum } => {
                // The heartbeat first: the program answers only while it is fresh (the dead-man switch).
                if let Err(e) = self.node.beat() {
                    log::error!("{e:#}");
                }
                if let Err(e) = socket.send_advert(&advert, checksum).await {
                    // A failed send (link down) must not stop the daemon: the peers' timers decide.
                    self.send_failures += 1;
                    let now = Instant::now();
                    if self.send_logged.is_none_or(|t| now >= t + Duration::from_secs(10)) {
                        self.send_logged = Some(now);
                        log::warn!("sending an advert ({} failure(s) so far): {e:#}", self.send_failures);
                    }
                }
            }
            Command::SendGarps { count } => {
                for _ in 0..count {
                    if let Err(e) = self.garp.send(self.vip) {
                        log::warn!("sending a gratuitous ARP for {}: {e:#}", self.vip);
                        break;
                    }
                }
            }
            Command::Services(services) => {
                let _ = self.dataplane.send(Job::Reconcile(services));
            }
            Command::InstallService { name, spec } => {
                let _ = self.dataplane.send(Job::Install(name, spec));
            }
            Command::StartChecker { service, backend, settings } => self.start_checker(service, backend, settings),
            Command::StopChecker { service, backend } => {
                self.checkers.remove(&(service, backend));
            }
            Command::Neighbours(addresses) => {
                let _ = self.neighbours.send(addresses);
            }
            Command::Log(level, message) => log::log!(level, "{message}"),
            Command::Ready => {
                let role = self.engine.role();
                if role != Role::Initialize {
                    self.notifier.ready(&self.status_line());
                }
            }
            Command::Exit => {}
        }
    }

    /// Starts a checker on the main runtime; its transitions come back as events.
    fn start_checker(&mut self, service: String, backend: Endpoint, settings: health::Settings) {
        let _entered = self.runtime.enter();
        let (tx, mut rx) = mpsc::channel::<HealthEvent>(4);
        let probe = health::spawn(SocketAddr::V4(SocketAddrV4::new(backend.0, backend.1)), settings, tx);
        let events = self.events_tx.clone();
        let name = service.clone();
        let forward = self.runtime.spawn(async move {
            let _probe = Checker(probe);
            while let Some(event) = rx.recv().await {
                let SocketAddr::V4(addr) = event.backend else { continue };
                let health = Event::Health {
                    service: name.clone(),
                    backend: (*addr.ip(), addr.port()),
                    healthy: event.healthy,
                    reason: event.reason,
                };
                if events.send(health).is_err() {
                    return;
                }
            }
        });
        self.checkers.insert((service, backend), Checker(forward));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> ServiceSpec {
        ServiceSpec { port, protocol: 6, forwarding: 0, backends: Vec::new() }
    }

    fn names(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match j {
                Job::Reconcile(s) => {
                    format!("reconcile({})", s.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(","))
                }
                Job::Install(n, s) => format!("install({n}:{})", s.port),
                Job::Counters(_) => "counters".into(),
                Job::Detach(_) => "detach".into(),
            })
            .collect()
    }

    #[test]
    fn queued_updates_of_one_service_collapse_to_the_newest() {
        let (tx, _rx) = oneshot::channel();
        let jobs = vec![
            Job::Install("a".into(), spec(1)),
            Job::Install("b".into(), spec(2)),
            Job::Install("a".into(), spec(3)),
            Job::Counters(tx),
        ];
        assert_eq!(names(&coalesce(jobs)), ["install(b:2)", "install(a:3)", "counters"]);
    }

    #[test]
    fn a_reconcile_supersedes_earlier_installs_of_its_services_but_not_later_ones() {
        let jobs = vec![
            Job::Install("a".into(), spec(1)),
            Job::Install("gone".into(), spec(2)),
            Job::Reconcile(vec![("a".into(), spec(5))]),
            Job::Install("a".into(), spec(6)),
        ];
        assert_eq!(names(&coalesce(jobs)), ["install(gone:2)", "reconcile(a)", "install(a:6)"]);
    }
}
