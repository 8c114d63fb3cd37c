//! The daemon's shell around the [`Engine`]: it feeds the engine events and carries out its commands, and does
//! nothing else. Every decision is the engine's.
//!
//! Three places run, so that slow work can never delay an advert or the down timer:
//! - **the advert thread** (`xvip-vrrp`, its own single-threaded runtime): the engine, the VRRP sockets (one per
//!   interface, shared by the instances there), the timers, the link checks, the systemd watchdog. It executes the
//!   fast commands itself (one map write for an active flag, one for the heartbeat, a `sendmsg` per advert,
//!   non-blocking gratuitous ARPs) and hands everything else to the others through queues it never waits on;
//! - **the data plane thread** (`xvip-dataplane`): service installs and Maglev rewrites, counters for status;
//!   queued updates of one service are coalesced;
//! - **the main runtime**: signals (a reload reads the file here), health checkers, the neighbour watcher (every
//!   netlink call bounded), the status socket, and with `[metrics]` the metrics sampler and listener (the sampler
//!   asks the other two for a snapshot once a second, never waiting on them; scrapes get the last page).
//!
//! What remains here is I/O that cannot be pure: opening sockets and the eBPF object at start, moving events and
//! commands between the places above, and tearing down in order at the end.
use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::mpsc as std_mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::{
    runtime::Handle,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior, sleep_until},
};

use crate::{
    config::Config,
    control::{self, StatusRequest},
    dataplane::{Counters, DataPlane, LoadOptions, NodeControl, ServiceId, ServiceSpec, TableScan, Vip6Spec, VipSpec},
    engine::{Command, Engine, Event, View},
    garp::GarpSender,
    health::{self, HealthEvent},
    metrics::{self, DataPlaneSample, Metrics, Probes},
    neighbour::{self, Neighbours},
    netif,
    services::Endpoint,
    systemd::Notifier,
    vrrp::{InterfaceInfo, Vrrp6Socket, VrrpSocket, socket6::Datagram},
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
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::http::BindError),
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

    // Every interface an instance uses, the default first, with its primary IPv4 address (the default source).
    let mut infos = BTreeMap::new();
    for interface in config.interfaces() {
        let info = InterfaceInfo::lookup(&interface)
            .map_err(|source| Error::Interface { interface: interface.clone(), source })?;
        infos.insert(interface, info);
    }
    let primaries: BTreeMap<String, Option<Ipv4Addr>> =
        infos.iter().map(|(name, info)| (name.clone(), info.primary_ipv4())).collect();
    let link_locals: BTreeMap<String, Ipv6Addr> =
        infos.iter().filter_map(|(name, info)| Some((name.clone(), info.link_local_ipv6()?))).collect();
    for instance in &config.instances {
        if let (Some(source), Some(info)) = (instance.vrrp.source_address, infos.get(&instance.interface))
            && !info.ipv4.contains(&source)
        {
            log::warn!("instance {}: vrrp.source_address {source} is not an address of {}", instance.name, info.name);
        }
    }

    // The socket first: if another daemon runs, fail before touching the interface.
    let listener = control::bind(&config.control.socket).await?;
    let socket_file = SocketFile(config.control.socket.clone());
    let metrics_listener = match &config.metrics {
        Some(m) => Some(metrics::http::bind(m.listen).await?),
        None => None,
    };
    // Shared by the health checkers (they record every probe) and the page.
    let probes = metrics_listener.as_ref().map(|_| Probes::default());

    let capacity = u32::try_from(config.service_tables()).unwrap_or(u32::MAX).max(8);
    let engine = Engine::with_link_locals(config.clone(), primaries, link_locals, capacity)?;
    let dp_error = |what: &'static str| move |source| Error::DataPlane { what, source };
    let mut dataplane = DataPlane::load(LoadOptions {
        conntrack_entries: config.conntrack_entries,
        conntrack6_entries: config.conntrack6_entries(),
        service_capacity: capacity,
        ..LoadOptions::default()
    })
    .map_err(dp_error("loading the data plane"))?;
    let default_interface = config.default_interface().to_owned();
    let xdp_mode = dataplane.attach(&default_interface, config.xdp_mode).map_err(dp_error("attaching"))?;
    let mut garps = BTreeMap::new();
    for interface in infos.keys() {
        if *interface != default_interface {
            dataplane.attach_instance_interface(interface).map_err(dp_error("attaching"))?;
        }
        garps.insert(interface.clone(), GarpSender::open(interface)?);
    }
    if config.local_clients {
        attach_local_clients(&mut dataplane);
    }
    let mut node = dataplane.node_control().map_err(dp_error("opening the node's maps"))?;

    let neighbours = Neighbours::connect()?;
    for instance in &config.instances {
        let Some(info) = infos.get(&instance.interface) else { continue };
        for address in instance.vip.ipv4() {
            match neighbours.on_link(info.index, address).await {
                Ok(false) => log::warn!(
                    "vip {address} is not inside any prefix of {}: clients on that segment will not ARP for it; add \
                     a route towards it on your routers, or pick a VIP from the interface's subnet",
                    instance.interface
                ),
                Ok(true) => {}
                Err(e) => log::warn!("checking whether the VIP {address} is on-link: {e}"),
            }
        }
    }

    node.set_max_age(engine.heartbeat_max_age()).map_err(dp_error("writing the heartbeat"))?;
    let mut links = BTreeMap::new();
    for interface in infos.keys() {
        links.insert(interface.clone(), netif::link_up(interface)?);
    }

    log::info!(
        "xvip starting: {} instance(s) on {} (xdp {xdp_mode}), {} service(s)",
        config.instances.len(),
        infos.keys().cloned().collect::<Vec<_>>().join(", "),
        config.service_count()
    );
    for instance in &config.instances {
        let v = &instance.vrrp;
        log::info!(
            "instance {}: vip {} on {}, vrid {}, priority {}, adverts every {} ms {} from {}, {} service(s)",
            instance.name,
            instance.vip.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            instance.interface,
            v.vrid,
            v.priority,
            v.advert_interval_ms,
            if v.unicast_peers.is_empty() && v.unicast_peers6.is_empty() {
                "to 224.0.0.18/ff02::12".to_string()
            } else {
                format!("to {:?} {:?}", v.unicast_peers, v.unicast_peers6)
            },
            v.source_address.map_or_else(|| format!("{}'s primary address", instance.interface), |s| s.to_string()),
            instance.services.len()
        );
    }

    // xvip trace's handle leaves with the trace task; without it the daemon runs, and says why it cannot trace.
    let trace = dataplane.trace().inspect_err(|e| log::warn!("xvip trace will not be available: {e}")).ok();
    let (dp_tx, dp_thread) = spawn_dataplane(dataplane)?;
    let (neigh_tx, neigh_rx) = mpsc::unbounded_channel();
    let neighbour_events = events_tx.clone();
    let watcher = tokio::spawn(neighbour::watch(neighbours, neigh_rx, move |batch| {
        let _ = neighbour_events.send(Event::Neighbours(batch));
    }));

    let (status_tx, status_rx) = mpsc::channel::<StatusRequest>(16);
    let (engine_status_tx, engine_status_rx) = mpsc::channel::<oneshot::Sender<View>>(16);
    let (trace_tx, trace_rx) = mpsc::channel::<crate::trace::Subscription>(crate::trace::MAX_CLIENTS);
    let trace_task = trace.map(|trace| tokio::spawn(crate::trace::run(trace, trace_rx, engine_status_tx.clone())));
    let handlers = control::Handlers { status: status_tx, trace: trace_task.as_ref().map(|_| trace_tx) };
    let control_task = tokio::spawn(control::serve(listener, handlers));
    // Engine time 0, on both clocks: the monotonic one for timers, the wall clock for `role_since_unix_ms`.
    let (epoch, epoch_unix_ms) = (Instant::now(), unix_ms());
    let metrics_tasks = match (metrics_listener, &probes) {
        (Some(listener), Some(probes)) => {
            if let Ok(address) = listener.local_addr() {
                log::info!("metrics at http://{address}/metrics");
            }
            let (page_tx, page_rx) = watch::channel(Bytes::new());
            let sampler = Sampler { metrics: Metrics::with_probes(probes.clone()), page: page_tx };
            vec![
                tokio::spawn(metrics::http::serve(listener, page_rx, metrics::http::Limits::default())),
                tokio::spawn(sampler.run(engine_status_tx.clone(), dp_tx.clone())),
            ]
        }
        _ => Vec::new(),
    };
    let status_task =
        tokio::spawn(assemble_status(status_rx, engine_status_tx, dp_tx.clone(), xdp_mode, epoch_unix_ms));

    // Each interface's socket sends from the sources of the instances there, and joins 224.0.0.18 if one of
    // them advertises by multicast.
    let mut socket_plans: BTreeMap<String, (Vec<Ipv4Addr>, bool)> = BTreeMap::new();
    for instance in &config.instances {
        let plan = socket_plans.entry(instance.interface.clone()).or_default();
        let primary = infos.get(&instance.interface).and_then(InterfaceInfo::primary_ipv4);
        if let Some(source) = instance.vrrp.source_address.or(primary)
            && !plan.0.contains(&source)
        {
            plan.0.push(source);
        }
        plan.1 |= instance.vrrp.unicast_peers.is_empty();
    }
    // The same for IPv6, on the interfaces of instances with IPv6 addresses: the sources besides the link-local
    // address, and whether to join ff02::12.
    let mut socket6_plans: BTreeMap<String, (Vec<Ipv6Addr>, bool)> = BTreeMap::new();
    for instance in config.instances.iter().filter(|i| !i.vip.ipv6().is_empty()) {
        let plan = socket6_plans.entry(instance.interface.clone()).or_default();
        if let Some(source) = instance.vrrp.source_address6
            && !plan.0.contains(&source)
        {
            plan.0.push(source);
        }
        plan.1 |= instance.vrrp.unicast_peers6.is_empty();
    }
    let shell = Shell {
        engine,
        epoch,
        node,
        garps,
        links,
        events: events_rx,
        events_tx,
        status: engine_status_rx,
        dataplane: dp_tx.clone(),
        neighbours: neigh_tx,
        runtime: Handle::current(),
        checkers: HashMap::new(),
        probes,
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
                // Registered with this thread's runtime, so only this thread ever waits on them.
                let mut sockets = Vec::new();
                for (interface, (sources, multicast)) in socket_plans {
                    let socket = VrrpSocket::open(&interface, &sources, multicast).map_err(Error::Vrrp)?;
                    sockets.push(Receiver { socket: Sock::V4(socket), paused_until: None });
                }
                for (interface, (sources, multicast)) in socket6_plans {
                    let socket = Vrrp6Socket::open(&interface, &sources, multicast).map_err(Error::Vrrp)?;
                    sockets.push(Receiver { socket: Sock::V6(socket), paused_until: None });
                }
                shell.run(sockets).await;
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
    if let Some(task) = trace_task {
        task.abort();
    }
    for task in metrics_tasks {
        task.abort();
    }
    let (done_tx, done_rx) = oneshot::channel();
    let _ = dp_tx.send(Job::Detach(done_tx));
    match done_rx.await {
        Ok(Ok(())) => {
            log::info!("stopped: XDP program removed from {}", infos.keys().cloned().collect::<Vec<_>>().join(", "))
        }
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
    Reconcile(Vec<VipSpec>, Vec<(ServiceId, ServiceSpec)>),
    Install(ServiceId, ServiceSpec),
    /// Make the IPv6 VIP map hold exactly these VIPs.
    InstallVips6(Vec<Vip6Spec>),
    /// Delete the connection and NAT entries of flows to these VIPs (an instance left the active role).
    ForgetFlows(Vec<std::net::IpAddr>),
    Counters(oneshot::Sender<Counters>),
    /// For metrics: the counters, and with `scan` a walk over the connection and NAT tables (timed).
    Sample {
        scan: bool,
        reply: oneshot::Sender<DataPlaneSample>,
    },
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
                // Installs in a row go together, so services with the same backends share their Maglev builds.
                let mut installs = Vec::new();
                for job in coalesce(jobs) {
                    if !matches!(job, Job::Install(..)) {
                        apply_installs(&mut dataplane, &mut installs);
                    }
                    match job {
                        Job::Reconcile(vips, services) => {
                            if let Err(e) = dataplane.reconcile(&vips, &services) {
                                log::error!("installing the VIPs and services: {e:#}");
                            }
                        }
                        Job::Install(id, spec) => installs.push((id, spec)),
                        Job::InstallVips6(vips) => {
                            if let Err(e) = dataplane.set_vips6(&vips) {
                                log::error!("installing the IPv6 VIPs: {e:#}");
                            }
                        }
                        Job::ForgetFlows(vips) => match dataplane.forget_flows(&vips) {
                            Ok((flows, translations)) => log::info!(
                                "forgot {flows} connection and {translations} NAT entries of {}: no longer active, \
                                 the peer that took over carries those flows",
                                list(&vips)
                            ),
                            Err(e) => log::error!("forgetting the flows of {}: {e:#}", list(&vips)),
                        },
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
                        Job::Sample { scan, reply } => {
                            let counters = dataplane.counters().unwrap_or_else(|e| {
                                log::warn!("reading counters for metrics: {e:#}");
                                Counters::default()
                            });
                            let tables = scan.then(|| timed_scan(&dataplane)).flatten();
                            let _ = reply.send(DataPlaneSample { counters, tables });
                        }
                        Job::Detach(reply) => {
                            let _ = reply.send(dataplane.detach());
                            return;
                        }
                    }
                }
                apply_installs(&mut dataplane, &mut installs);
            }
        })
        .map_err(|source| Error::Io { what: "starting the data plane thread", source })?;
    Ok((tx, handle))
}

/// Addresses as `a, b`.
fn list(addresses: &[impl ToString]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Applies (and empties) `installs`, logging each service that failed.
fn apply_installs(dataplane: &mut DataPlane, installs: &mut Vec<(ServiceId, ServiceSpec)>) {
    if installs.is_empty() {
        return;
    }
    for ((id, _), result) in installs.iter().zip(dataplane.apply_services(installs)) {
        if let Err(e) = result {
            log::error!("installing service {id}: {e:#}; it keeps its previous state");
        }
    }
    installs.clear();
}

/// Walks the connection and NAT tables and says how long that took.
fn timed_scan(dataplane: &DataPlane) -> Option<(TableScan, Duration)> {
    let started = std::time::Instant::now();
    match dataplane.scan_tables() {
        Ok(scan) => Some((scan, started.elapsed())),
        Err(e) => {
            log::warn!("scanning the connection and NAT tables for metrics: {e:#}");
            None
        }
    }
}

/// Drops service updates that a later one in the same batch supersedes: an install of a service followed by
/// another install of it, or any install followed by a full reconcile that names its service, and an IPv6 VIP set
/// followed by another.
fn coalesce(jobs: Vec<Job>) -> Vec<Job> {
    let mut kept: Vec<Job> = Vec::with_capacity(jobs.len());
    for job in jobs {
        match &job {
            Job::Install(name, _) => kept.retain(|k| !matches!(k, Job::Install(n, _) if n == name)),
            Job::Reconcile(_, services) => kept.retain(|k| match k {
                Job::Install(n, _) => !services.iter().any(|(s, _)| s == n),
                Job::Reconcile(..) => false,
                _ => true,
            }),
            // The IPv6 VIP map is set whole: only the newest set matters.
            Job::InstallVips6(_) => kept.retain(|k| !matches!(k, Job::InstallVips6(_))),
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
        status.set_xdp_mode(xdp_mode);
        let (tx, rx) = oneshot::channel();
        if dataplane.send(Job::Counters(tx)).is_ok()
            && let Ok(counters) = rx.await
        {
            status.add_counters(&counters, &view.routers());
        }
        let _ = reply.send(status);
    }
}

/// Feeds the metrics page: once per [`metrics::SAMPLE_PERIOD`] it asks the advert thread for the engine's view
/// and the data plane thread for its counters (with a table scan once per [`metrics::SCAN_PERIOD`], or ten times
/// as long as the last scan took when that is longer), and renders
/// the page whenever an answer comes. It never waits on either: a request still unanswered at the next period is
/// not repeated, so a stalled thread leaves the page as it was (its sample time says how old it is) and gets no
/// pile of requests.
struct Sampler {
    metrics: Metrics,
    page: watch::Sender<Bytes>,
}

impl Sampler {
    async fn run(mut self, engine: mpsc::Sender<oneshot::Sender<View>>, dataplane: std_mpsc::Sender<Job>) {
        let mut tick = tokio::time::interval(metrics::SAMPLE_PERIOD);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut view, mut view_rx): (Option<View>, Option<oneshot::Receiver<View>>) = (None, None);
        let (mut sample, mut sample_rx) = (None::<DataPlaneSample>, None::<oneshot::Receiver<DataPlaneSample>>);
        // When each part of the page last came: the page's sample time is the older, so it stops moving when
        // either thread stops answering.
        let (mut view_at, mut sample_at) = (0.0f64, None::<f64>);
        let mut last_scan: Option<Instant> = None;
        let mut scan_every = metrics::SCAN_PERIOD;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if view_rx.is_none() {
                        let (tx, rx) = oneshot::channel();
                        // Shared with status requests; when it is full, the advert thread is busy: try next time.
                        if engine.try_send(tx).is_ok() {
                            view_rx = Some(rx);
                        }
                    }
                    if sample_rx.is_none() {
                        let scan = last_scan.is_none_or(|t| t.elapsed() >= scan_every);
                        let (tx, rx) = oneshot::channel();
                        if dataplane.send(Job::Sample { scan, reply: tx }).is_err() {
                            return;
                        }
                        if scan {
                            last_scan = Some(Instant::now());
                        }
                        sample_rx = Some(rx);
                    }
                    continue;
                }
                answer = answer_of(&mut view_rx) => {
                    view_rx = None;
                    let Ok(answer) = answer else { continue };
                    view = Some(answer);
                    view_at = unix_seconds();
                }
                answer = answer_of(&mut sample_rx) => {
                    sample_rx = None;
                    let Ok(mut answer) = answer else { continue };
                    if let Some((_, took)) = &answer.tables {
                        scan_every = metrics::scan_period(*took);
                    }
                    // A sample without a scan keeps the last scan's numbers.
                    if answer.tables.is_none() {
                        answer.tables = sample.take().and_then(|s| s.tables);
                    }
                    sample = Some(answer);
                    sample_at = Some(unix_seconds());
                }
            }
            let Some(view) = view.clone() else { continue };
            let page = self.metrics.render(metrics::Sample {
                instances: view
                    .instances
                    .into_iter()
                    .map(|view| metrics::Instance { name: view.config.name.clone(), view })
                    .collect(),
                dataplane: sample.clone(),
                unix_time: metrics::sample_time(view_at, sample_at),
            });
            self.page.send_replace(Bytes::from(page));
        }
    }
}

/// The wall clock in seconds since the Unix epoch.
fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The answer on `rx`; never ready while there is no request out.
async fn answer_of<T>(rx: &mut Option<oneshot::Receiver<T>>) -> Result<T, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// A running health checker; aborted when dropped.
struct Checker(JoinHandle<()>);

impl Drop for Checker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One interface's VRRP socket of one address family.
enum Sock {
    V4(VrrpSocket),
    V6(Vrrp6Socket),
}

/// What a [`Sock`] received.
enum Packet {
    V4(Vec<u8>),
    V6(Datagram),
}

impl Sock {
    fn interface(&self) -> &str {
        match self {
            Sock::V4(s) => s.interface(),
            Sock::V6(s) => s.interface(),
        }
    }

    /// Cancel safe, as each socket's `recv`.
    async fn recv(&self) -> crate::vrrp::socket::Result<Packet> {
        match self {
            Sock::V4(s) => s.recv().await.map(Packet::V4),
            Sock::V6(s) => s.recv().await.map(Packet::V6),
        }
    }
}

/// One interface's VRRP socket (of one family), with the pause after a failed `recv` (the link went away).
struct Receiver {
    socket: Sock,
    paused_until: Option<Instant>,
}

/// The next packet from any socket that is not paused: (its index, the result). Each `recv` is cancel safe, so
/// the ones that lose the race lose nothing.
async fn recv_any(sockets: &[Receiver]) -> (usize, crate::vrrp::socket::Result<Packet>) {
    let now = Instant::now();
    let open: Vec<_> = sockets
        .iter()
        .enumerate()
        .filter(|(_, r)| r.paused_until.is_none_or(|t| now >= t))
        .map(|(i, r)| Box::pin(async move { (i, r.socket.recv().await) }))
        .collect();
    if open.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(open).await.0
}

/// The advert thread's state: the engine and the fast edges.
struct Shell {
    engine: Engine,
    epoch: Instant,
    node: NodeControl,
    /// A gratuitous ARP sender per interface.
    garps: BTreeMap<String, GarpSender>,
    /// Each interface's link state, as last told to the engine.
    links: BTreeMap<String, bool>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    status: mpsc::Receiver<oneshot::Sender<View>>,
    dataplane: std_mpsc::Sender<Job>,
    neighbours: mpsc::UnboundedSender<neighbour::Request>,
    runtime: Handle,
    checkers: HashMap<(ServiceId, Endpoint), Checker>,
    /// Where checkers record each probe, with `[metrics]`.
    probes: Option<Probes>,
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

    async fn run(mut self, mut sockets: Vec<Receiver>) {
        let links = self.links.clone();
        self.handle(&sockets, Event::Start { links }).await;
        let mut link_check = tokio::time::interval(LINK_CHECK);
        link_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watchdog_period = self.notifier.watchdog_interval().unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(watchdog_period);
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while !self.engine.exited() {
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = self.engine.next_deadline().map_or(far, |d| self.epoch + d);
            let pause = sockets.iter().filter_map(|r| r.paused_until).min().unwrap_or(far);
            // `biased`: the timer is looked at first in every round, so a flood of packets or events cannot keep
            // an advert waiting.
            tokio::select! {
                biased;
                _ = sleep_until(deadline) => {
                    self.note_lateness(deadline);
                    self.handle(&sockets, Event::Timer).await;
                }
                (i, packet) = recv_any(&sockets) => match packet {
                    Ok(packet) => {
                        let interface = sockets[i].socket.interface().to_owned();
                        let event = match packet {
                            Packet::V4(bytes) => Event::Packet { interface, bytes },
                            Packet::V6(datagram) => Event::Packet6 { interface, datagram },
                        };
                        self.handle(&sockets, event).await;
                    }
                    Err(e) => {
                        log::warn!("receiving VRRP adverts: {e:#}");
                        sockets[i].paused_until = Some(Instant::now() + RECV_PAUSE);
                    }
                },
                _ = sleep_until(pause) => {
                    let now = Instant::now();
                    for r in &mut sockets {
                        if r.paused_until.is_some_and(|t| now >= t) {
                            r.paused_until = None;
                        }
                    }
                }
                Some(event) = self.events.recv() => self.handle(&sockets, event).await,
                Some(reply) = self.status.recv() => {
                    let _ = reply.send(self.engine.view(self.now()));
                }
                _ = link_check.tick() => self.check_links(&sockets).await,
                _ = watchdog.tick() => self.notifier.watchdog(),
            }
        }
        self.notifier.stopping();
        self.checkers.clear();
    }

    /// Says so (at most every 10 s) when a timer fires late by more than a quarter of the shortest advert interval:
    /// the CPU is starved or the process was stopped, and peers may take over (keepalived's "thread timer
    /// expired").
    fn note_lateness(&mut self, deadline: Instant) {
        let late = Instant::now().saturating_duration_since(deadline);
        let limit = self.engine.heartbeat_max_age() / 12;
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

    async fn check_links(&mut self, sockets: &[Receiver]) {
        let interfaces: Vec<String> = self.links.keys().cloned().collect();
        for interface in interfaces {
            match netif::link_up(&interface) {
                Ok(up) if Some(&up) != self.links.get(&interface) => {
                    self.links.insert(interface.clone(), up);
                    self.handle(sockets, Event::Link { interface, up }).await;
                }
                Ok(_) => {}
                Err(e) => log::warn!("{e:#}"),
            }
        }
    }

    async fn handle(&mut self, sockets: &[Receiver], event: Event) {
        let before = self.engine.status_line();
        let now = self.now();
        let commands = self.engine.handle(now, event);
        for command in commands {
            self.execute(sockets, command).await;
        }
        let after = self.engine.status_line();
        if after != before {
            self.notifier.status(&after);
        }
    }

    async fn execute(&mut self, sockets: &[Receiver], command: Command) {
        match command {
            Command::SetActive { router, active } => {
                if let Err(e) = self.node.set_active(router, active) {
                    log::error!("{e:#}");
                }
            }
            Command::HeartbeatMaxAge(max_age) => {
                if let Err(e) = self.node.set_max_age(max_age) {
                    log::error!("{e:#}");
                }
            }
            Command::SendAdvert { interface, source, peers, advert, checksum } => {
                // The heartbeat first: the program answers only while it is fresh (the dead-man switch).
                if let Err(e) = self.node.beat() {
                    log::error!("{e:#}");
                }
                let socket = sockets.iter().find_map(|r| match &r.socket {
                    Sock::V4(s) if s.interface() == interface => Some(s),
                    _ => None,
                });
                let Some(socket) = socket else {
                    log::error!("no VRRP socket on {interface} for an advert of VRID {}", advert.vrid);
                    return;
                };
                if let Err(e) = socket.send_advert(&advert, checksum, source, &peers).await {
                    // A failed send (link down) must not stop the daemon: the peers' timers decide.
                    self.send_failures += 1;
                    let now = Instant::now();
                    if self.send_logged.is_none_or(|t| now >= t + Duration::from_secs(10)) {
                        self.send_logged = Some(now);
                        log::warn!("sending an advert ({} failure(s) so far): {e:#}", self.send_failures);
                    }
                }
            }
            Command::SendAdvert6 { interface, source, peers, advert } => {
                if let Err(e) = self.node.beat() {
                    log::error!("{e:#}");
                }
                let socket = sockets.iter().find_map(|r| match &r.socket {
                    Sock::V6(s) if s.interface() == interface => Some(s),
                    _ => None,
                });
                let Some(socket) = socket else {
                    log::error!("no IPv6 VRRP socket on {interface} for an advert of VRID {}", advert.vrid);
                    return;
                };
                if let Err(e) = socket.send_advert(&advert, source, &peers).await {
                    self.send_failures += 1;
                    let now = Instant::now();
                    if self.send_logged.is_none_or(|t| now >= t + Duration::from_secs(10)) {
                        self.send_logged = Some(now);
                        log::warn!("sending an IPv6 advert ({} failure(s) so far): {e:#}", self.send_failures);
                    }
                }
            }
            Command::SendUnsolicitedNas { interface, addresses, count } => {
                let Some(garp) = self.garps.get(&interface) else {
                    log::error!("no gratuitous ARP socket on {interface} for unsolicited Neighbor Advertisements");
                    return;
                };
                'burst: for _ in 0..count {
                    for address in &addresses {
                        if let Err(e) = garp.send_na(*address) {
                            log::warn!(
                                "sending an unsolicited Neighbor Advertisement for {address} on {interface}: {e:#}"
                            );
                            break 'burst;
                        }
                    }
                }
            }
            Command::InstallVips6(vips) => {
                let _ = self.dataplane.send(Job::InstallVips6(vips));
            }
            Command::SendGarps { interface, addresses, count } => {
                let Some(garp) = self.garps.get(&interface) else {
                    log::error!("no gratuitous ARP socket on {interface}");
                    return;
                };
                'burst: for _ in 0..count {
                    for address in &addresses {
                        // A gratuitous ARP for an IPv4 address, an unsolicited Neighbor Advertisement for IPv6.
                        if let Err(e) = garp.announce(*address) {
                            log::warn!("announcing {address} on {interface}: {e:#}");
                            break 'burst;
                        }
                    }
                }
            }
            Command::Install { vips, services } => {
                let _ = self.dataplane.send(Job::Reconcile(vips, services));
            }
            Command::InstallService { id, spec } => {
                let _ = self.dataplane.send(Job::Install(id, spec));
            }
            Command::ForgetFlows(vips) => {
                let _ = self.dataplane.send(Job::ForgetFlows(vips));
            }
            Command::StartChecker { id, backend, settings } => self.start_checker(id, backend, settings),
            Command::StopChecker { id, backend } => {
                self.checkers.remove(&(id, backend));
            }
            Command::Neighbours(addresses) => {
                let _ = self.neighbours.send(neighbour::Request::Watch(addresses));
            }
            Command::RenewNeighbours(interface) => {
                let _ = self.neighbours.send(neighbour::Request::Renew(interface));
            }
            Command::Log(level, message) => log::log!(level, "{message}"),
            Command::Ready => self.notifier.ready(&self.engine.status_line()),
            Command::Exit => {}
        }
    }

    /// Starts a checker on the main runtime; its transitions come back as events. Everything, even finding its
    /// metrics recorder, happens there: the advert thread only spawns.
    fn start_checker(&mut self, id: ServiceId, backend: Endpoint, settings: health::Settings) {
        let (tx, mut rx) = mpsc::channel::<HealthEvent>(4);
        let events = self.events_tx.clone();
        let probes = self.probes.clone();
        let service = id.clone();
        let forward = self.runtime.spawn(async move {
            let recorder =
                probes.map(|p| p.recorder(&service.instance, &service.service, &SocketAddr::from(backend).to_string()));
            let address = SocketAddr::from(backend);
            let _probe = Checker(health::spawn(address, settings, tx, recorder));
            while let Some(event) = rx.recv().await {
                let addr = event.backend;
                let health = Event::Health {
                    id: service.clone(),
                    backend: (addr.ip(), addr.port()),
                    healthy: event.healthy,
                    reason: event.reason,
                };
                if events.send(health).is_err() {
                    return;
                }
            }
        });
        self.checkers.insert((id, backend), Checker(forward));
    }
}

/// The socket load balancer for the node's own clients (`local_clients`): attached to the cgroup v2 root. A node
/// where it cannot be attached still serves its VIPs; its own processes then reach no VIP, as before, which the
/// warning says.
fn attach_local_clients(dataplane: &mut DataPlane) {
    let root = match crate::cgroup::v2_root() {
        Ok(Some(root)) => root,
        Ok(None) => {
            log::warn!(
                "local clients: cgroup v2 is not mounted (no cgroup2 in /proc/self/mountinfo); processes on this node \
                 cannot reach the VIPs (set local_clients = false to silence this)"
            );
            return;
        }
        Err(e) => {
            log::warn!(
                "local clients: reading /proc/self/mountinfo: {e}; processes on this node cannot reach the VIPs"
            );
            return;
        }
    };
    match dataplane.attach_local_clients(&root) {
        Ok(()) => log::info!(
            "local clients: TCP connects and UDP datagrams from this network namespace to the VIPs' services go \
             straight to a backend (socket load balancer on the cgroup {})",
            root.display()
        ),
        Err(e) => {
            log::warn!(
                "local clients: {e}; processes on this node cannot reach the VIPs (set local_clients = false \
                        to silence this)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> ServiceSpec {
        ServiceSpec { addresses: Vec::new(), port, protocol: 6, forwarding: 0, backends: Vec::new() }
    }

    fn id(name: &str) -> ServiceId {
        ServiceId::new("default", name)
    }

    fn names(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match j {
                Job::Reconcile(_, s) => {
                    format!("reconcile({})", s.iter().map(|(n, _)| n.service.as_str()).collect::<Vec<_>>().join(","))
                }
                Job::Install(n, s) => format!("install({}:{})", n.service, s.port),
                Job::ForgetFlows(_) => "forget".into(),
                Job::Counters(_) => "counters".into(),
                Job::Sample { .. } => "sample".into(),
                Job::Detach(_) => "detach".into(),
                Job::InstallVips6(v) => format!("vips6({})", v.len()),
            })
            .collect()
    }

    #[test]
    fn queued_updates_of_one_service_collapse_to_the_newest() {
        let (tx, _rx) = oneshot::channel();
        let jobs = vec![
            Job::Install(id("a"), spec(1)),
            Job::Install(id("b"), spec(2)),
            Job::Install(id("a"), spec(3)),
            Job::Counters(tx),
        ];
        assert_eq!(names(&coalesce(jobs)), ["install(b:2)", "install(a:3)", "counters"]);
    }

    #[test]
    fn a_reconcile_supersedes_earlier_installs_of_its_services_but_not_later_ones() {
        let jobs = vec![
            Job::Install(id("a"), spec(1)),
            Job::Install(id("gone"), spec(2)),
            Job::Reconcile(Vec::new(), vec![(id("a"), spec(5))]),
            Job::Install(id("a"), spec(6)),
        ];
        assert_eq!(names(&coalesce(jobs)), ["install(gone:2)", "reconcile(a)", "install(a:6)"]);
    }

    #[test]
    fn only_the_newest_ipv6_vip_set_is_installed() {
        let vip = |n: u16| Vip6Spec {
            address: std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n),
            router: 1,
            hash_seed: 0,
            interface: Some("eth0".into()),
        };
        let jobs = vec![
            Job::InstallVips6(vec![vip(1)]),
            Job::Install(id("a"), spec(1)),
            Job::InstallVips6(vec![vip(1), vip(2)]),
        ];
        let kept = coalesce(jobs);
        assert_eq!(names(&kept), ["install(a:1)", "vips6(2)"]);
    }
}
