//! The daemon: one task owns every decision. It feeds events (adverts, timers, health changes, neighbour answers,
//! signals, status requests) to the pure engines (`vrrp::Router`, `services::Services`) and carries out what they
//! decide through the edges (`dataplane`, `vrrp::socket`, `garp`, `neighbour`). One log line per state change.
use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use lb_common::Reason;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep_until},
};

use crate::{
    config::{self, Config},
    control::{self, StatusRequest},
    dataplane::{AttachMode, DataPlane, LoadOptions},
    garp::GarpSender,
    health::{self, HealthEvent},
    neighbour::Neighbours,
    netif,
    services::{Endpoint, Services, effective_priority},
    status::{BackendStatus, CounterStatus, ServiceStatus, Status},
    vrrp::{
        Action, ChecksumMode, InterfaceInfo, Role, Router, RxFilter, Settings, Transport, VrrpSocket,
        packet::{self, Discard},
    },
};

/// How often unresolved backend MACs are retried, and how often resolved ones are refreshed.
const RESOLVE_RETRY: Duration = Duration::from_millis(100);
const RESOLVE_REFRESH: Duration = Duration::from_secs(10);
/// How long a stopping active node keeps forwarding while it waits for the new active router (SIGTERM must exit
/// within 1 s).
const HANDOVER_WAIT: Duration = Duration::from_millis(800);
/// How often the interface's link state is checked.
const LINK_CHECK: Duration = Duration::from_millis(100);
/// At most one log line per discard reason per this period.
const DISCARD_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM/SIGINT. Startup problems come back as errors, after undoing what was done.
pub async fn run(config_path: &Path, config: Config) -> Result<()> {
    let mut agent = Agent::start(config_path, config).await?;
    let result = agent.event_loop().await;
    agent.stop().await;
    result
}

/// A running health checker of one backend of one service.
struct Checker {
    probe: JoinHandle<()>,
    forward: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.probe.abort();
        self.forward.abort();
    }
}

/// Removes the status socket file when the agent ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Agent {
    config_path: PathBuf,
    config: Config,
    dataplane: DataPlane,
    xdp_mode: &'static str,
    router: Router,
    epoch: Instant,
    socket: VrrpSocket,
    source: Ipv4Addr,
    garp: GarpSender,
    neighbours: Neighbours,
    services: Services,
    checkers: HashMap<(String, Endpoint), Checker>,
    health_tx: mpsc::Sender<(String, HealthEvent)>,
    health_rx: mpsc::Receiver<(String, HealthEvent)>,
    status_rx: mpsc::Receiver<StatusRequest>,
    _control: (JoinHandle<()>, SocketFile),
    /// Whether some service has no usable backend (the penalty applies).
    backends_lost: bool,
    garp_repeat_at: Option<Instant>,
    garp_refresh_at: Option<Instant>,
    resolve_at: Instant,
    /// The interface's link as last seen; while it is down the node is in "fault": not active, not advertising.
    link_up: bool,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    transitions: u64,
    role_since_unix_ms: u64,
    role_reason: String,
    adverts_sent: u64,
    adverts_received: u64,
    discards: BTreeMap<&'static str, u64>,
    discard_logged: HashMap<&'static str, Instant>,
    garps_sent: u64,
    checksum_seen: HashMap<Ipv4Addr, ChecksumMode>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn checksum_mode(c: config::Checksum) -> ChecksumMode {
    match c {
        config::Checksum::PseudoHeader => ChecksumMode::PseudoHeader,
        config::Checksum::Rfc9568 => ChecksumMode::Rfc9568,
    }
}

fn router_settings(config: &Config, source: Ipv4Addr) -> Settings {
    Settings {
        vrid: config.vrrp.vrid,
        priority: config.vrrp.priority,
        advert_interval: u16::try_from(config.vrrp.advert_interval_ms / 10).unwrap_or(100),
        preempt: config.vrrp.preempt,
        preempt_delay: Duration::from_millis(u64::from(config.vrrp.preempt_delay_ms)),
        primary_address: source,
    }
}

fn health_settings(service: &config::Service) -> health::Settings {
    health::Settings::from(&service.health)
}

impl Agent {
    async fn start(config_path: &Path, config: Config) -> Result<Agent> {
        let iface = InterfaceInfo::lookup(&config.interface).with_context(|| {
            format!(
                "interface {:?} (from `interface` in the config) is not usable; `ip link` lists them",
                config.interface
            )
        })?;
        let source = match config.vrrp.source_address.or_else(|| iface.primary_ipv4()) {
            Some(a) => a,
            None => bail!(
                "interface {} has no IPv4 address to send VRRP adverts from: add one, or set vrrp.source_address",
                config.interface
            ),
        };
        if !iface.ipv4.contains(&source) {
            log::warn!("vrrp.source_address {source} is not an address of {}", config.interface);
        }

        // The socket first: if another daemon runs, fail before touching the interface.
        let listener = control::bind(&config.control.socket).await?;
        let socket_file = SocketFile(config.control.socket.clone());

        let capacity = u32::try_from(config.services.len()).unwrap_or(u32::MAX).max(8);
        let mut dataplane = DataPlane::load(LoadOptions {
            conntrack_entries: config.conntrack_entries,
            service_capacity: capacity,
            ..LoadOptions::default()
        })?;
        let mode = match config.xdp_mode {
            config::XdpMode::Auto => AttachMode::Auto,
            config::XdpMode::Native => AttachMode::Native,
            config::XdpMode::Generic => AttachMode::Generic,
        };
        let xdp_mode = dataplane.attach(&config.interface, mode)?;
        let garp = GarpSender::open(&config.interface)?;
        dataplane.set_node(
            config.vip.address,
            garp.mac(),
            lb_common::group_seed(config.vip.address.octets(), config.vrrp.vrid),
        )?;

        let transport = if config.vrrp.unicast_peers.is_empty() {
            Transport::Multicast
        } else {
            Transport::Unicast(config.vrrp.unicast_peers.clone())
        };
        let socket = VrrpSocket::open(&config.interface, source, transport)?;
        let router = Router::new(router_settings(&config, source)).map_err(|e| anyhow!("VRRP settings: {e}"))?;
        let neighbours = Neighbours::connect()?;
        if !neighbours.on_link(iface.index, config.vip.address).await.unwrap_or(true) {
            log::warn!(
                "vip {} is not inside any prefix of {}: clients on that segment will not ARP for it; add a route \
                 towards it on your routers, or pick a VIP from the interface's subnet",
                config.vip.address,
                config.interface
            );
        }

        let (status_tx, status_rx) = mpsc::channel(16);
        let control_task = tokio::spawn(control::serve(listener, status_tx));
        let (health_tx, health_rx) = mpsc::channel(256);
        let services = Services::new(&config.services);

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
        let now = Instant::now();
        let link_up = netif::link_up(&config.interface)?;
        let mut agent = Agent {
            config_path: config_path.to_path_buf(),
            config,
            dataplane,
            xdp_mode,
            router,
            epoch: now,
            socket,
            source,
            garp,
            neighbours,
            services,
            checkers: HashMap::new(),
            health_tx,
            health_rx,
            status_rx,
            _control: (control_task, socket_file),
            backends_lost: false,
            garp_repeat_at: None,
            garp_refresh_at: None,
            resolve_at: now,
            link_up,
            stats: Stats { role_since_unix_ms: unix_ms(), role_reason: "starting".into(), ..Stats::default() },
        };
        agent.sync_checkers(&[]);
        agent.resolve_neighbours().await;
        for name in agent.services.names().map(str::to_string).collect::<Vec<_>>() {
            agent.install(&name)?;
        }
        agent.backends_lost = agent.lost_services().is_some();
        if agent.backends_lost && agent.config.vrrp.backend_loss_penalty > 0 {
            log::info!("starting with priority lowered until the first health checks pass");
        }
        if agent.link_up {
            let actions = agent.router.start(agent.now());
            agent.act(actions).await?;
        } else {
            agent.role_changed("fault", format!("no link on {}: waiting for it", agent.config.interface));
        }
        agent.update_priority().await?;
        Ok(agent)
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn event_loop(&mut self) -> Result<()> {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut link_check = tokio::time::interval(LINK_CHECK);
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let vrrp_at = self.router.next_deadline().map_or(far, |d| self.epoch + d);
            let garp_at = [self.garp_repeat_at, self.garp_refresh_at].into_iter().flatten().min().unwrap_or(far);
            tokio::select! {
                _ = sleep_until(vrrp_at) => {
                    let actions = self.router.on_timer(self.now());
                    self.act(actions).await?;
                }
                packet = self.socket.recv() => match packet {
                    Ok(packet) => self.on_packet(&packet).await?,
                    // Transient (e.g. the link went away): the timers keep running; don't spin on a lasting error.
                    Err(e) => {
                        log::warn!("receiving VRRP adverts: {e:#}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some((service, event)) = self.health_rx.recv() => self.on_health(&service, event).await?,
                Some(reply) = self.status_rx.recv() => {
                    let status = self.status();
                    let _ = reply.send(status);
                }
                _ = sleep_until(garp_at) => self.on_garp_timer(),
                _ = sleep_until(self.resolve_at) => {
                    self.resolve_neighbours().await;
                }
                _ = term.recv() => { log::info!("SIGTERM: stopping"); return Ok(()); }
                _ = int.recv() => { log::info!("SIGINT: stopping"); return Ok(()); }
                _ = hup.recv() => self.reload().await,
                _ = link_check.tick() => self.check_link().await?,
            }
        }
    }

    /// keepalived's FAULT: with the link down this node can neither hear nor send adverts, so it stops the VRRP
    /// machine and answers nothing; when the link returns it starts again as a backup, which lets the election (and
    /// `preempt`) decide instead of coming back as a second active router.
    async fn check_link(&mut self) -> Result<()> {
        let up = match netif::link_up(&self.config.interface) {
            Ok(up) => up,
            Err(e) => {
                log::warn!("{e:#}");
                return Ok(());
            }
        };
        if up == self.link_up {
            return Ok(());
        }
        self.link_up = up;
        if up {
            log::info!("link up on {}: starting the election as a backup", self.config.interface);
            let actions = self.router.start(self.now());
            self.act(actions).await
        } else {
            // Adverts cannot leave now; stop the machine quietly and stop answering for the VIP.
            let _ = self.router.shutdown(self.now());
            self.dataplane.set_active(false)?;
            self.role_changed("fault", format!("link down on {}", self.config.interface));
            Ok(())
        }
    }

    /// Graceful stop: a priority-0 advert (backups take over after Skew_Time), then stop answering and detach.
    ///
    /// An active node keeps forwarding until it hears the new active router's first advert (at most
    /// `HANDOVER_WAIT`): both nodes pick the same backend for a flow, so clients see no gap while the backup waits
    /// out its skew time and announces itself by gratuitous ARP.
    async fn stop(&mut self) {
        let was_active = self.router.role() == Role::Active;
        let actions = self.router.shutdown(self.now());
        let (adverts, rest): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(|a| matches!(a, Action::SendAdvert { .. }));
        if let Err(e) = self.act(adverts).await {
            log::warn!("while stopping: {e:#}");
        }
        if was_active {
            let started = Instant::now();
            match self.wait_for_new_active(started + HANDOVER_WAIT).await {
                Some(who) => log::info!("handover: {who} is active after {} ms", started.elapsed().as_millis()),
                None => {
                    log::info!("handover: no other router announced itself within {} ms", HANDOVER_WAIT.as_millis())
                }
            }
        }
        if let Err(e) = self.act(rest).await {
            log::warn!("while stopping: {e:#}");
        }
        if let Err(e) = self.dataplane.set_active(false) {
            log::warn!("while stopping: {e:#}");
        }
        if let Err(e) = self.dataplane.detach() {
            log::warn!("while stopping: {e:#}");
        }
        self.checkers.clear();
        log::info!("stopped: XDP program removed from {}", self.config.interface);
    }

    /// Waits for an advert with a non-zero priority from another router; returns its address.
    async fn wait_for_new_active(&mut self, until: Instant) -> Option<Ipv4Addr> {
        loop {
            let packet = tokio::select! {
                p = self.socket.recv() => p.ok()?,
                _ = sleep_until(until) => return None,
            };
            let filter = RxFilter { vrid: self.config.vrrp.vrid, unicast_peers: &self.config.vrrp.unicast_peers };
            if let Ok(rx) = packet::parse_ipv4(&packet, &filter)
                && rx.src != self.source
                && rx.advert.priority > 0
            {
                return Some(rx.src);
            }
        }
    }

    async fn act(&mut self, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => {
                    let advert = self.router.advert(priority, &[self.config.vip.address]);
                    match self.socket.send_advert(&advert, checksum_mode(self.config.vrrp.checksum)).await {
                        Ok(()) => self.stats.adverts_sent += 1,
                        // A failed send (link down) must not stop the daemon: the peers' timers decide.
                        Err(e) => log::warn!("sending an advert: {e:#}"),
                    }
                }
                Action::BecomeActive { reason } => {
                    self.dataplane.set_active(true)?;
                    self.role_changed(Role::Active.name(), reason);
                }
                Action::BecomeBackup { reason } => {
                    self.dataplane.set_active(false)?;
                    self.role_changed(Role::Backup.name(), reason);
                }
                Action::BecomeInitialize => {
                    self.dataplane.set_active(false)?;
                    self.role_changed(Role::Initialize.name(), "stopping".into());
                }
                Action::SendGratuitousArp => self.garp_burst(),
            }
        }
        Ok(())
    }

    /// Bookkeeping and the log line of a role change; `role` is a VRRP role name or "fault".
    fn role_changed(&mut self, role: &str, reason: String) {
        log::info!("role -> {role}: {reason}");
        self.stats.transitions += 1;
        self.stats.role_since_unix_ms = unix_ms();
        self.stats.role_reason = reason;
        if role != Role::Active.name() {
            self.garp_repeat_at = None;
            self.garp_refresh_at = None;
        }
    }

    /// `garp_count` gratuitous ARPs now, the same again after `garp_repeat_delay_ms`, then every `garp_refresh_ms`.
    fn garp_burst(&mut self) {
        self.send_garps();
        let v = &self.config.vrrp;
        let now = Instant::now();
        self.garp_repeat_at =
            (v.garp_repeat_delay_ms > 0).then(|| now + Duration::from_millis(u64::from(v.garp_repeat_delay_ms)));
        self.garp_refresh_at =
            (v.garp_refresh_ms > 0).then(|| now + Duration::from_millis(u64::from(v.garp_refresh_ms)));
    }

    fn send_garps(&mut self) {
        for _ in 0..self.config.vrrp.garp_count {
            match self.garp.send(self.config.vip.address) {
                Ok(()) => self.stats.garps_sent += 1,
                Err(e) => {
                    log::warn!("sending a gratuitous ARP for {}: {e:#}", self.config.vip.address);
                    break;
                }
            }
        }
    }

    fn on_garp_timer(&mut self) {
        let now = Instant::now();
        if self.router.role() != Role::Active {
            self.garp_repeat_at = None;
            self.garp_refresh_at = None;
            return;
        }
        if self.garp_repeat_at.is_some_and(|t| t <= now) {
            self.garp_repeat_at = None;
            self.send_garps();
        }
        if self.garp_refresh_at.is_some_and(|t| t <= now) {
            self.send_garps();
            self.garp_refresh_at = Some(now + Duration::from_millis(u64::from(self.config.vrrp.garp_refresh_ms)));
        }
    }

    async fn on_packet(&mut self, packet: &[u8]) -> Result<()> {
        let filter = RxFilter { vrid: self.config.vrrp.vrid, unicast_peers: &self.config.vrrp.unicast_peers };
        match packet::parse_ipv4(packet, &filter) {
            Ok(rx) => {
                if rx.src == self.source {
                    return Ok(());
                }
                self.stats.adverts_received += 1;
                if self.stats.checksum_seen.insert(rx.src, rx.checksum) != Some(rx.checksum) {
                    log::info!("adverts from {} use the {} checksum", rx.src, rx.checksum.name());
                }
                let actions = self.router.on_advert(self.now(), rx.src, &rx.advert);
                self.act(actions).await
            }
            Err(discard) => {
                self.discarded(&discard);
                Ok(())
            }
        }
    }

    fn discarded(&mut self, discard: &Discard) {
        let name = discard.name();
        *self.stats.discards.entry(name).or_default() += 1;
        let now = Instant::now();
        let due = self.stats.discard_logged.get(name).is_none_or(|t| now.duration_since(*t) >= DISCARD_LOG_PERIOD);
        if due {
            self.stats.discard_logged.insert(name, now);
            log::warn!(
                "discarded a VRRP packet ({name}, {} so far): {discard}",
                self.stats.discards.get(name).copied().unwrap_or(0)
            );
        }
    }

    async fn on_health(&mut self, service: &str, event: HealthEvent) -> Result<()> {
        let SocketAddr::V4(addr) = event.backend else {
            return Ok(());
        };
        let endpoint = (*addr.ip(), addr.port());
        if !self.services.set_health(service, endpoint, event.healthy) {
            return Ok(());
        }
        log::info!("backend {addr} of {service} is {}: {}", if event.healthy { "up" } else { "down" }, event.reason);
        self.install(service)?;
        self.update_priority().await
    }

    /// Rebuilds a service's Maglev table from what is known now and installs it atomically.
    fn install(&mut self, name: &str) -> Result<()> {
        let Some(spec) = self.services.spec(name) else {
            return Ok(());
        };
        self.dataplane.apply_service(name, &spec).with_context(|| format!("installing service {name}"))
    }

    fn lost_services(&self) -> Option<String> {
        let lost = self.services.without_usable_backend();
        (!lost.is_empty()).then(|| lost.join(", "))
    }

    /// Applies `backend_loss_penalty` while a service has no usable backend here.
    async fn update_priority(&mut self) -> Result<()> {
        let lost = self.lost_services();
        let base = self.config.vrrp.priority;
        let penalty = self.config.vrrp.backend_loss_penalty;
        let wanted = effective_priority(base, penalty, lost.is_some());
        if lost.is_some() != self.backends_lost {
            self.backends_lost = lost.is_some();
            match &lost {
                Some(names) => log::warn!("no usable backend for {names}"),
                None => log::info!("every service has a usable backend again"),
            }
        }
        if wanted != self.router.priority() {
            let why = match &lost {
                Some(names) if penalty > 0 => format!("{names} has no usable backend (backend_loss_penalty {penalty})"),
                _ => "configured priority".to_string(),
            };
            log::info!("priority {} -> {wanted}: {why}", self.router.priority());
            let actions = self.router.set_priority(self.now(), wanted);
            self.act(actions).await?;
        }
        Ok(())
    }

    /// Starts a checker for every configured backend that has none, and stops those no longer configured or whose
    /// service's health settings changed (`restart`).
    fn sync_checkers(&mut self, restart: &[String]) {
        let mut wanted = Vec::new();
        for svc in &self.config.services {
            for b in &svc.backends {
                wanted.push((svc.name.clone(), (b.address, b.port)));
            }
        }
        self.checkers.retain(|key, _| wanted.contains(key) && !restart.contains(&key.0));
        for (service, endpoint) in wanted {
            if self.checkers.contains_key(&(service.clone(), endpoint)) {
                continue;
            }
            let Some(svc) = self.config.services.iter().find(|s| s.name == service) else {
                continue;
            };
            let settings = health_settings(svc);
            let (tx, mut rx) = mpsc::channel(4);
            let probe = health::spawn(SocketAddr::V4(SocketAddrV4::new(endpoint.0, endpoint.1)), settings, tx);
            let main = self.health_tx.clone();
            let name = service.clone();
            let forward = tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    if main.send((name.clone(), event)).await.is_err() {
                        return;
                    }
                }
            });
            self.checkers.insert((service, endpoint), Checker { probe, forward });
        }
    }

    /// Looks up (and starts resolving) the MAC of every backend; installs services whose view changed.
    async fn resolve_neighbours(&mut self) {
        let mut changed = Vec::new();
        for address in self.services.addresses() {
            match self.neighbours.resolve(address).await {
                Ok((path, mac)) => {
                    let before = self.services.unresolved().contains(&address);
                    for name in self.services.set_path(address, mac, path.ifindex) {
                        if !changed.contains(&name) {
                            changed.push(name);
                        }
                    }
                    if before && mac.is_some() {
                        log::info!("backend {address} is reached via ifindex {} at {}", path.ifindex, fmt_mac(mac));
                    }
                }
                Err(e) => log::warn!("backend {address}: {e:#}"),
            }
        }
        for name in changed {
            if let Err(e) = self.install(&name) {
                log::warn!("{e:#}");
            }
        }
        if let Err(e) = self.update_priority().await {
            log::warn!("{e:#}");
        }
        let next = if self.services.unresolved().is_empty() { RESOLVE_REFRESH } else { RESOLVE_RETRY };
        self.resolve_at = Instant::now() + next;
    }

    /// SIGHUP: read the config again and apply the difference; a bad or restart-only change keeps the old config.
    async fn reload(&mut self) {
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(problems) => {
                for p in &problems {
                    log::error!("{p}");
                }
                log::error!(
                    "reload refused: {} has {} problem(s); the running config is kept",
                    self.config_path.display(),
                    problems.len()
                );
                return;
            }
        };
        let plan = match config::diff(&self.config, &new) {
            Ok(plan) => plan,
            Err(why) => {
                log::error!("reload refused: {why}");
                return;
            }
        };
        let restart_only: Vec<&str> = plan
            .vrrp_changed
            .iter()
            .copied()
            .filter(|k| matches!(*k, "advert_interval_ms" | "preempt" | "preempt_delay_ms"))
            .collect();
        if !restart_only.is_empty() {
            log::error!(
                "reload refused: vrrp {} changed, which needs a restart; the running config is kept",
                restart_only.join(", ")
            );
            return;
        }
        let capacity = self.dataplane.service_capacity();
        if new.services.len() > capacity as usize {
            log::error!(
                "reload refused: {} services, but the data plane was sized for {capacity} at start; restart xvip to \
                 grow it; the running config is kept",
                new.services.len()
            );
            return;
        }
        if plan.is_empty() {
            log::info!("reload: nothing changed");
            return;
        }
        log::info!("reload: {plan}");
        log_drain_changes(&self.config, &new);
        let old = std::mem::replace(&mut self.config, new);
        self.services.reconfigure(&self.config.services);
        for name in &plan.services_removed {
            if let Err(e) = self.dataplane.remove_service(name) {
                log::error!("removing service {name}: {e:#}");
            }
        }
        self.sync_checkers(&plan.health_changed);
        self.resolve_neighbours().await;
        for name in plan.services_added.iter().chain(&plan.services_changed) {
            if let Err(e) = self.install(name) {
                log::error!("{e:#}; service {name} keeps its previous state");
            }
        }
        let priority_inputs_changed = old.vrrp.priority != self.config.vrrp.priority
            || old.vrrp.backend_loss_penalty != self.config.vrrp.backend_loss_penalty;
        if priority_inputs_changed && let Err(e) = self.update_priority().await {
            log::error!("{e:#}");
        }
    }

    fn status(&self) -> Status {
        let counters = self.dataplane.counters().unwrap_or_else(|e| {
            log::warn!("reading counters: {e:#}");
            Default::default()
        });
        // The scan costs two syscalls per connection-table entry: only while some backend drains.
        let draining = self.config.services.iter().flat_map(|s| &s.backends).any(|b| b.weight == 0);
        let flows = if draining {
            self.dataplane.flows_per_backend().map_err(|e| log::warn!("counting flows: {e:#}")).ok()
        } else {
            None
        };
        let services = self
            .config
            .services
            .iter()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                port: s.port,
                protocol: s.protocol.as_str().to_string(),
                forwarding: s.forwarding.as_str().to_string(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| {
                        let state = self.services.backend(&s.name, (b.address, b.port)).cloned().unwrap_or_default();
                        let traffic =
                            counters.backends.get(&(s.name.clone(), b.address, b.port)).copied().unwrap_or_default();
                        BackendStatus {
                            address: b.address.to_string(),
                            port: b.port,
                            weight: b.weight,
                            healthy: state.healthy,
                            packets: traffic.packets,
                            bytes: traffic.bytes,
                            mac: state.mac.map(|m| fmt_mac(Some(m))),
                            draining: b.weight == 0,
                            flows: flows
                                .as_ref()
                                .map(|f| f.get(&(s.name.clone(), b.address, b.port)).copied().unwrap_or_default()),
                        }
                    })
                    .collect(),
            })
            .collect();
        let role = self.router.role();
        Status {
            role: if self.link_up { role.name() } else { "fault" }.to_string(),
            vrid: self.config.vrrp.vrid,
            priority: self.config.vrrp.priority,
            effective_priority: self.router.priority(),
            vip: self.config.vip.address.to_string(),
            interface: self.config.interface.clone(),
            xdp_mode: self.xdp_mode.to_string(),
            active_router: if role == Role::Active {
                Some(self.source.to_string())
            } else {
                self.router.active_router().map(|a| a.to_string())
            },
            transitions: self.stats.transitions,
            role_since_unix_ms: self.stats.role_since_unix_ms,
            role_reason: self.stats.role_reason.clone(),
            services,
            counters: CounterStatus {
                arp_replies: counters.reason(Reason::ArpReply),
                adverts_sent: self.stats.adverts_sent,
                adverts_received: self.stats.adverts_received,
                adverts_discarded: self.stats.discards.values().sum(),
                adverts_discarded_by_reason: self.stats.discards.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                dataplane: Reason::ALL.iter().map(|r| (r.name().to_string(), counters.reason(*r))).collect(),
                garps_sent: self.stats.garps_sent,
            },
        }
    }
}

/// One log line per backend that starts or stops draining (`weight = 0`) in a reload.
fn log_drain_changes(old: &Config, new: &Config) {
    for svc in &new.services {
        let before = old.services.iter().find(|s| s.name == svc.name);
        for b in &svc.backends {
            let was = before.and_then(|s| s.backends.iter().find(|o| (o.address, o.port) == (b.address, b.port)));
            match (was.map(|w| w.weight == 0), b.weight == 0) {
                (Some(false), true) => log::info!(
                    "backend {}:{} of {} is draining: weight 0, no new flows; established ones stay while it is \
                     healthy",
                    b.address,
                    b.port,
                    svc.name
                ),
                (Some(true), false) => log::info!(
                    "backend {}:{} of {} takes new flows again: weight {}",
                    b.address,
                    b.port,
                    svc.name,
                    b.weight
                ),
                _ => {}
            }
        }
    }
}

fn fmt_mac(mac: Option<[u8; 6]>) -> String {
    match mac {
        Some(m) => m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
        None => "unknown".into(),
    }
}
