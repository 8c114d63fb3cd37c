//! The node engine: every decision the agent makes, in one pure type (sans-IO).
//!
//! [`Engine::handle`] takes an [`Event`] (an advert packet, a timer, a health result, a link change, a neighbour
//! answer, a reload, a stop) with the current time and returns the [`Command`]s that carry the decision out (take
//! or give up the VIP, send an advert or gratuitous ARPs, install services, start health checkers, log). No
//! sockets, no clocks, no threads: the agent's shell (`agent.rs`) does the I/O, and the tests here drive the engine
//! with virtual time, so every decision has a test that does not need a network.
//!
//! What it decides, besides the VRRP election of [`crate::vrrp::machine`]:
//! - **FAULT** ([`Role::Fault`]): a link down stops the election and answers nothing; the link back starts again
//!   as a backup, so preemption decides.
//! - **Startup order**: the backend-loss penalty is applied before the election starts, so a node whose backends
//!   are not known healthy yet never advertises its full priority.
//! - **Settling**: from start, and from the link coming back (which restarts every health checker: results taken
//!   without a link say nothing), until every backend has passed a check or kept failing for as long as it takes
//!   to mark an up backend down (`fall` intervals and a timeout), the node holds preemption and counts as
//!   penalised. A failed first check does not end it: right after a link comes back the first probes can fail
//!   for a moment, and a node that then preempted as soon as one backend per service had answered would have a
//!   smaller table than the active node's. A node that preempted with part of its backends unchecked would build a smaller Maglev
//!   table than the active node's, and reset the established flows of the backends it has not checked yet.
//!   Backends a reload adds are unchecked too, but they make no service lost before their first result: a reload
//!   must not lower the active node's priority while its new backends are being checked for the first time.
//! - **Gratuitous ARPs**: a burst on becoming active, a second one after `garp_repeat_delay_ms`, a refresh every
//!   `garp_refresh_ms`; answers to lower-priority adverts at most once per advert interval.
//! - **Reloads**: [`config::diff`] says what may change; the engine applies exactly that (services, backends,
//!   health checks, priority, penalty, checksum, GARP settings) and keeps the running config otherwise.
//! - **The group's identity**: an advert with our VRID but another address list is another group reusing the VRID;
//!   it is discarded, counted and shown as a warning. An address owner (priority 255) discards every advert (RFC
//!   5798 §7.1).
//! - **Bounded cost of hostile adverts**: a bounded peer table, per-reason log rate limits.
//! - **Stalls**: when this node was not scheduled for longer than the peers' down interval, the data plane's
//!   dead-man switch has already stopped answering and a peer has taken over; the engine rejoins as a backup.
//! - **Neighbours**: a backend keeps its MAC until the kernel says its entry FAILED.

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use log::Level;

use crate::{
    config::{self, CheckKind, Config, Problem},
    dataplane::ServiceSpec,
    health,
    neighbour::Seen,
    services::{Endpoint, Services, effective_priority},
    status::{BackendStatus, CounterStatus, ServiceStatus, Status, Warning},
    vrrp::{
        Action, Advert, Cause, ChecksumMode, Role, Router, RxFilter, Settings,
        machine::PRIORITY_OWNER,
        packet::{self},
    },
};

/// How long a stopping active node keeps answering while it waits for the new active router (SIGTERM must exit
/// within 1 s).
pub const HANDOVER_WAIT: Duration = Duration::from_millis(800);
/// At most one log line per reason per this period (the lines say how many were left out).
pub const LOG_PERIOD: Duration = Duration::from_secs(10);
/// Peers remembered (for "adverts from X use the Y checksum"); the least recently heard is forgotten first.
pub const MAX_PEERS: usize = 64;
/// Senders of colliding adverts remembered for warnings.
pub const MAX_COLLISIONS: usize = 16;
/// A VRID collision stays in the warnings this long after its last advert.
pub const WARNING_TTL: Duration = Duration::from_secs(60);
/// Discard reasons of the engine's own checks, besides the packet checks (`vrrp::packet::Discard`): an advert
/// with our VRID but another address list, and any advert while this node is the address owner.
pub const DISCARD_REASONS: [&str; 2] = [DISCARD_ADDRESS_MISMATCH, DISCARD_OWNER];
pub const DISCARD_ADDRESS_MISMATCH: &str = "address_mismatch";
pub const DISCARD_OWNER: &str = "owner";
/// Take-over times kept in [`Observed::recent_takeovers`] for readers that sample the state now and then (metrics
/// sample every second; a node cannot take over more than once per advert interval or so).
pub const RECENT_TAKEOVERS: usize = 32;

/// Something that happened, handed to [`Engine::handle`] with the time it is handled at.
#[derive(Debug, Clone)]
pub enum Event {
    /// The daemon is ready to run the election; `link_up` is the interface's state.
    Start { link_up: bool },
    /// [`Engine::next_deadline`] was reached.
    Timer,
    /// An IPv4 packet of protocol 112 from the VRRP socket (header included).
    Packet(Vec<u8>),
    /// A health checker reported a transition.
    Health { service: String, backend: Endpoint, healthy: bool, reason: String },
    /// The interface's link (carrier) changed.
    Link { up: bool },
    /// What the kernel's neighbour table now says about a backend address.
    Neighbour { address: Ipv4Addr, seen: Seen },
    /// Several of those at once (one round of the neighbour watcher).
    Neighbours(Vec<(Ipv4Addr, Seen)>),
    /// SIGHUP: the config file as read again (or why it could not be).
    Reload(Box<Result<Config, Vec<Problem>>>),
    /// SIGTERM/SIGINT.
    Stop,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Answer for the VIP in the data plane, or stop answering.
    SetActive(bool),
    /// Send this advert. The shell refreshes the data plane's heartbeat just before (the dead-man switch).
    SendAdvert { advert: Advert, checksum: ChecksumMode },
    /// Send this many gratuitous ARPs for the VIP.
    SendGarps { count: u32 },
    /// Make the installed services exactly these (start, reload).
    Services(Vec<(String, ServiceSpec)>),
    /// Install (or update) one service (a health or MAC change).
    InstallService { name: String, spec: ServiceSpec },
    /// Start health-checking a backend of a service.
    StartChecker { service: String, backend: Endpoint, settings: health::Settings },
    /// Stop health-checking a backend of a service.
    StopChecker { service: String, backend: Endpoint },
    /// Watch (resolve and keep fresh) the neighbour entries of these backend addresses.
    Neighbours(Vec<Ipv4Addr>),
    /// One log line.
    Log(Level, String),
    /// The first role is decided: the daemon is ready (systemd readiness).
    Ready,
    /// The stop is complete: detach and exit.
    Exit,
}

/// What the engine has seen and done so far: the read-only view for `xvip status` and metrics.
#[derive(Debug, Clone)]
pub struct Observed {
    pub role: Role,
    /// Engine time of the last role change.
    pub role_since: Duration,
    pub role_reason: String,
    /// Every role change since start.
    pub transitions: u64,
    pub transitions_by_cause: BTreeMap<&'static str, u64>,
    pub adverts_sent: u64,
    /// Adverts that passed every check and were given to the election.
    pub adverts_received: u64,
    /// Adverts discarded, by reason (the RFC 5798 §7.1 checks, `address_mismatch`, `owner`).
    pub discards: BTreeMap<&'static str, u64>,
    pub garps_sent: u64,
    /// How long the last take-over waited after the last sign of the previous active router (its last advert, or
    /// its priority-0 advert).
    pub last_takeover: Option<Duration>,
    /// Take-overs so far: becoming active after hearing another router since the election (re)started, timed from
    /// the last advert heard to the first advert sent as active.
    pub takeovers: u64,
    /// The newest take-over times (at most [`RECENT_TAKEOVERS`], oldest first): the last `n` of `takeovers`.
    pub recent_takeovers: VecDeque<Duration>,
    /// Whether some service has no usable backend here (the penalty applies).
    pub backends_lost: bool,
    /// Log lines left out by the rate limits.
    pub logs_suppressed: u64,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            role: Role::Initialize,
            role_since: Duration::ZERO,
            role_reason: "starting".into(),
            transitions: 0,
            transitions_by_cause: BTreeMap::new(),
            adverts_sent: 0,
            adverts_received: 0,
            discards: BTreeMap::new(),
            garps_sent: 0,
            last_takeover: None,
            takeovers: 0,
            recent_takeovers: VecDeque::new(),
            backends_lost: false,
            logs_suppressed: 0,
        }
    }
}

/// At most one line per key per [`LOG_PERIOD`].
#[derive(Debug, Default)]
struct LogLimits {
    last: HashMap<&'static str, (Duration, u64)>,
}

impl LogLimits {
    /// Whether a line for `key` may be written now, and how many were left out since the last one.
    fn allow(&mut self, key: &'static str, now: Duration) -> Option<u64> {
        match self.last.get_mut(key) {
            Some((at, left_out)) if now < *at + LOG_PERIOD => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Senders heard recently, bounded: the checksum form each uses.
#[derive(Debug, Default)]
struct Peers {
    seen: HashMap<Ipv4Addr, (ChecksumMode, Duration)>,
}

impl Peers {
    /// Records an advert; true when the sender is new or switched checksum forms.
    fn note(&mut self, now: Duration, sender: Ipv4Addr, form: ChecksumMode) -> bool {
        if let Some((known, at)) = self.seen.get_mut(&sender) {
            *at = now;
            return std::mem::replace(known, form) != form;
        }
        if self.seen.len() >= MAX_PEERS
            && let Some(oldest) = self.seen.iter().min_by_key(|(_, (_, at))| *at).map(|(a, _)| *a)
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(sender, (form, now));
        true
    }
}

/// Another group using our VRID, by sender: its address list and when it was last heard.
#[derive(Debug, Default)]
struct Collisions {
    by_sender: BTreeMap<Ipv4Addr, (Vec<Ipv4Addr>, Duration)>,
}

impl Collisions {
    /// Records a colliding advert; true when this sender (or its address list) is new.
    fn note(&mut self, now: Duration, sender: Ipv4Addr, addresses: &[Ipv4Addr]) -> bool {
        self.by_sender.retain(|_, (_, at)| now < *at + WARNING_TTL);
        if let Some((known, at)) = self.by_sender.get_mut(&sender) {
            *at = now;
            if known == addresses {
                return false;
            }
            *known = addresses.to_vec();
            return true;
        }
        if self.by_sender.len() >= MAX_COLLISIONS
            && let Some(oldest) = self.by_sender.iter().min_by_key(|(_, (_, at))| *at).map(|(a, _)| *a)
        {
            self.by_sender.remove(&oldest);
        }
        self.by_sender.insert(sender, (addresses.to_vec(), now));
        true
    }

    fn current(&self, now: Duration) -> impl Iterator<Item = (&Ipv4Addr, &Vec<Ipv4Addr>)> {
        self.by_sender.iter().filter(move |(_, (_, at))| now < *at + WARNING_TTL).map(|(s, (a, _))| (s, a))
    }
}

/// The gratuitous ARP schedule of an active node.
#[derive(Debug, Default, Clone, Copy)]
struct GarpTimers {
    repeat_at: Option<Duration>,
    refresh_at: Option<Duration>,
}

/// Commands being collected while one event is handled.
#[derive(Default)]
struct Out(Vec<Command>);

impl Out {
    fn push(&mut self, command: Command) {
        self.0.push(command);
    }

    fn log(&mut self, level: Level, message: impl Into<String>) {
        self.0.push(Command::Log(level, message.into()));
    }
}

/// The node engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    /// Shared with status snapshots; replaced (not changed) by a reload.
    config: Arc<Config>,
    /// This node's advert source (its primary address on the interface, or `vrrp.source_address`).
    source: Ipv4Addr,
    /// Services the data plane was sized for at start.
    service_capacity: u32,
    router: Router,
    services: Services,
    garp: GarpTimers,
    /// When the last advert was sent (the heartbeat's age follows it).
    last_advert: Option<Duration>,
    /// When the last advert from another router passed the checks, since the election last (re)started: where a
    /// take-over's time is measured from.
    last_heard: Option<Duration>,
    /// While stopping as the active router: until when to wait for the new one.
    stopping: Option<Duration>,
    exited: bool,
    started: bool,
    peers: Peers,
    collisions: Collisions,
    logs: LogLimits,
    observed: Observed,
    /// Backends (service, endpoint) with a checker whose first result since it started has not come yet.
    unchecked: BTreeSet<(String, Endpoint)>,
    /// Since start or the link coming back, until every backend has reported (see the module documentation).
    settling: bool,
    /// While settling: when it ends even with backends still failing.
    settle_by: Duration,
}

fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn fmt_list(addresses: &[Ipv4Addr]) -> String {
    let list: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
    format!("[{}]", list.join(", "))
}

impl Engine {
    /// An engine for `config`, advertising from `source`, with a data plane sized for `service_capacity`
    /// services.
    ///
    /// # Errors
    /// When the VRRP settings are out of range (a config that passed [`config::parse`] never is).
    pub fn new(
        config: Config,
        source: Ipv4Addr,
        service_capacity: u32,
    ) -> Result<Self, crate::vrrp::machine::InvalidSettings> {
        let settings = Settings {
            vrid: config.vrrp.vrid,
            priority: config.vrrp.priority,
            advert_interval: u16::try_from(config.vrrp.advert_interval_ms / 10).unwrap_or(u16::MAX),
            preempt: config.vrrp.preempt,
            preempt_delay: Duration::from_millis(u64::from(config.vrrp.preempt_delay_ms)),
            primary_address: source,
        };
        let router = Router::new(settings)?;
        let services = Services::new(&config.services);
        Ok(Engine {
            config: Arc::new(config),
            source,
            service_capacity,
            router,
            services,
            garp: GarpTimers::default(),
            last_advert: None,
            last_heard: None,
            stopping: None,
            exited: false,
            started: false,
            peers: Peers::default(),
            collisions: Collisions::default(),
            logs: LogLimits::default(),
            observed: Observed::default(),
            unchecked: BTreeSet::new(),
            settling: false,
            settle_by: Duration::ZERO,
        })
    }

    /// The running config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The read-only view for status and metrics.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    pub fn role(&self) -> Role {
        self.router.role()
    }

    /// The priority advertised now (the configured one, lowered by the penalty while backends are lost).
    pub fn effective_priority(&self) -> u8 {
        self.router.priority()
    }

    /// The services with the live state of their backends.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Whether the engine has finished stopping.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// How old the data plane's heartbeat may get before the program stops answering: 3 advert intervals, which is
    /// less than any peer's Master_Down_Interval (3 intervals plus a skew time above 0), so a node that stopped
    /// advertising has stopped answering before any peer takes over.
    pub fn heartbeat_max_age(&self) -> Duration {
        3 * Duration::from_millis(u64::from(self.config.vrrp.advert_interval_ms))
    }

    /// When [`Event::Timer`] is next due.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.exited {
            return None;
        }
        let garps = if self.router.role() == Role::Active && self.stopping.is_none() {
            [self.garp.repeat_at, self.garp.refresh_at]
        } else {
            [None, None]
        };
        let settle = self.settling.then_some(self.settle_by);
        [self.router.next_deadline(), self.stopping, settle].into_iter().chain(garps).flatten().min()
    }

    /// The current warnings (VRID collisions heard within [`WARNING_TTL`]).
    pub fn warnings(&self, now: Duration) -> Vec<Warning> {
        let ours = [self.config.vip.address];
        self.collisions
            .current(now)
            .map(|(sender, addresses)| Warning {
                kind: "vrid_collision".into(),
                message: format!(
                    "adverts from {sender} carry VRID {} with addresses {}, this group's are {}: another VRRP group \
                     uses VRID {} on this segment; give each group its own VRID",
                    self.config.vrrp.vrid,
                    fmt_list(addresses),
                    fmt_list(&ours),
                    self.config.vrrp.vrid
                ),
            })
            .collect()
    }

    /// Handles one event at `now` (a monotonic time since any fixed epoch) and returns what to do, in order.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Command> {
        let mut out = Out::default();
        if self.exited {
            return out.0;
        }
        self.check_stall(now, &mut out);
        match event {
            Event::Start { link_up } => self.start(now, link_up, &mut out),
            Event::Timer => self.timer(now, &mut out),
            Event::Packet(bytes) => self.packet(now, &bytes, &mut out),
            Event::Health { service, backend, healthy, reason } => {
                self.health(now, &service, backend, healthy, &reason, &mut out);
            }
            Event::Link { up } => self.link(now, up, &mut out),
            Event::Neighbour { address, seen } => self.neighbours(now, vec![(address, seen)], &mut out),
            Event::Neighbours(batch) => self.neighbours(now, batch, &mut out),
            Event::Reload(result) => self.reload(now, *result, &mut out),
            Event::Stop => self.stop(now, &mut out),
        }
        out.0
    }

    // ----- startup and stop -----

    fn start(&mut self, now: Duration, link_up: bool, out: &mut Out) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(Command::Services(self.services.specs()));
        out.push(Command::Neighbours(self.services.addresses()));
        self.start_checkers(&[], out);
        self.begin_settling(now);
        // The penalty is known before the election starts: until the first checks pass, no backend is usable, and
        // a node that advertised its full priority now would take the VIP only to give it back.
        let lost = self.lost_services();
        self.observed.backends_lost = lost.is_some();
        let penalty = self.config.vrrp.backend_loss_penalty;
        let wanted = effective_priority(self.config.vrrp.priority, penalty, lost.is_some() || self.settling);
        if wanted != self.router.priority() {
            let _ = self.router.set_priority(now, wanted);
            out.log(
                Level::Info,
                format!(
                    "starting with priority {wanted} (priority {} - backend_loss_penalty {penalty}) until every \
                     backend is checked and every service has a usable backend",
                    self.config.vrrp.priority
                ),
            );
        }
        let actions = if link_up {
            self.router.start(now)
        } else {
            self.router.fault(now, format!("no link on {}: waiting for it", self.config.interface))
        };
        self.apply(now, actions, out);
        out.push(Command::Ready);
    }

    fn stop(&mut self, now: Duration, out: &mut Out) {
        if self.stopping.is_some() {
            return;
        }
        let was_active = self.router.role() == Role::Active;
        for action in self.router.shutdown(now) {
            if let Action::SendAdvert { priority } = action {
                self.send_advert(now, priority, out);
            }
        }
        if was_active {
            // Keep answering until the new active router announces itself: both pick the same backend for a
            // flow, so clients see no gap while the backup waits out its skew time.
            self.stopping = Some(now + HANDOVER_WAIT);
        } else {
            self.finish_stop(now, out);
        }
    }

    fn finish_stop(&mut self, now: Duration, out: &mut Out) {
        out.push(Command::SetActive(false));
        self.role_changed(now, Role::Initialize, Cause::Stop, "stopping".into(), out);
        self.stopping = None;
        self.exited = true;
        out.push(Command::Exit);
    }

    // ----- VRRP -----

    fn timer(&mut self, now: Duration, out: &mut Out) {
        if let Some(until) = self.stopping {
            if now >= until {
                out.log(
                    Level::Info,
                    format!("handover: no other router announced itself within {} ms", HANDOVER_WAIT.as_millis()),
                );
                self.finish_stop(now, out);
            }
            return;
        }
        if self.settling && now >= self.settle_by {
            self.settle_if_done(now, out);
            self.update_priority(now, out);
        }
        let actions = self.router.on_timer(now);
        self.apply(now, actions, out);
        if self.router.role() != Role::Active {
            return;
        }
        if self.garp.repeat_at.is_some_and(|t| t <= now) {
            self.garp.repeat_at = None;
            self.send_garps(out);
        }
        if let Some(t) = self.garp.refresh_at
            && t <= now
        {
            self.send_garps(out);
            let period = Duration::from_millis(u64::from(self.config.vrrp.garp_refresh_ms));
            self.garp.refresh_at = (!period.is_zero()).then(|| now + period);
        }
    }

    /// The receive path: the RFC 5798 §7.1 checks, the group's identity, then the election.
    fn packet(&mut self, now: Duration, bytes: &[u8], out: &mut Out) {
        let filter = RxFilter { vrid: self.config.vrrp.vrid, unicast_peers: &self.config.vrrp.unicast_peers };
        let rx = match packet::parse_ipv4(bytes, &filter) {
            Ok(rx) => rx,
            Err(discard) => {
                self.discard(now, discard.name(), &discard.to_string(), out);
                return;
            }
        };
        if rx.src == self.source {
            return;
        }
        if self.peers.note(now, rx.src, rx.checksum)
            && let Some(left_out) = self.logs.allow("checksum_form", now)
        {
            out.log(Level::Info, format!("adverts from {} use the {} checksum{}", rx.src, rx.checksum, more(left_out)));
        }
        let ours = [self.config.vip.address];
        if !same_addresses(&rx.advert.addresses, &ours) {
            if self.collisions.note(now, rx.src, &rx.advert.addresses) {
                out.log(
                    Level::Warn,
                    format!(
                        "VRID collision: adverts from {} carry VRID {} with addresses {}, this group's are {}; they \
                         are discarded (another VRRP group uses this VRID on the segment: give each group its own)",
                        rx.src,
                        self.config.vrrp.vrid,
                        fmt_list(&rx.advert.addresses),
                        fmt_list(&ours)
                    ),
                );
            }
            let why = format!("addresses {} differ from ours {}", fmt_list(&rx.advert.addresses), fmt_list(&ours));
            self.discard(now, DISCARD_ADDRESS_MISMATCH, &why, out);
            return;
        }
        if self.router.priority() == PRIORITY_OWNER {
            // RFC 5798 §7.1: the address owner discards every advert; nobody can preempt it.
            self.discard(now, DISCARD_OWNER, "this node is the address owner (priority 255)", out);
            return;
        }
        self.observed.adverts_received += 1;
        self.last_heard = Some(now);
        if self.stopping.is_some() {
            if rx.advert.priority > 0 {
                out.log(Level::Info, format!("handover: {} is active", rx.src));
                self.finish_stop(now, out);
            }
            return;
        }
        let actions = self.router.on_advert(now, rx.src, &rx.advert);
        self.apply(now, actions, out);
    }

    fn discard(&mut self, now: Duration, reason: &'static str, detail: &str, out: &mut Out) {
        let count = self.observed.discards.entry(reason).or_default();
        *count += 1;
        let count = *count;
        if let Some(left_out) = self.logs.allow(reason, now) {
            out.log(
                Level::Warn,
                format!("discarded a VRRP packet ({reason}, {count} so far{}): {detail}", more_comma(left_out)),
            );
        } else {
            self.observed.logs_suppressed += 1;
        }
    }

    /// Carries out the election's actions.
    fn apply(&mut self, now: Duration, actions: Vec<Action>, out: &mut Out) {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(now, priority, out),
                Action::BecomeActive { cause, reason } => {
                    // The election's first advert as active went out at `now` (just before this action).
                    if matches!(cause, Cause::MasterDown | Cause::Preempt | Cause::PeerStopped)
                        && let Some(heard) = self.last_heard
                    {
                        let took = now.saturating_sub(heard);
                        let o = &mut self.observed;
                        o.last_takeover = Some(took);
                        o.takeovers += 1;
                        if o.recent_takeovers.len() == RECENT_TAKEOVERS {
                            o.recent_takeovers.pop_front();
                        }
                        o.recent_takeovers.push_back(took);
                    }
                    out.push(Command::SetActive(true));
                    self.role_changed(now, Role::Active, cause, reason, out);
                    let v = &self.config.vrrp;
                    let after = |ms: u32| (ms > 0).then(|| now + Duration::from_millis(u64::from(ms)));
                    self.garp =
                        GarpTimers { repeat_at: after(v.garp_repeat_delay_ms), refresh_at: after(v.garp_refresh_ms) };
                }
                Action::BecomeBackup { cause, reason } => {
                    out.push(Command::SetActive(false));
                    self.role_changed(now, Role::Backup, cause, reason, out);
                }
                Action::BecomeFault { reason } => {
                    out.push(Command::SetActive(false));
                    self.role_changed(now, Role::Fault, Cause::LinkDown, reason, out);
                }
                Action::BecomeInitialize => {
                    out.push(Command::SetActive(false));
                    self.role_changed(now, Role::Initialize, Cause::Stop, "stopping".into(), out);
                }
                Action::SendGratuitousArp => self.send_garps(out),
            }
        }
    }

    fn send_advert(&mut self, now: Duration, priority: u8, out: &mut Out) {
        let advert = self.router.advert(priority, &[self.config.vip.address]);
        out.push(Command::SendAdvert { advert, checksum: self.config.vrrp.checksum });
        self.last_advert = Some(now);
        self.observed.adverts_sent += 1;
    }

    fn send_garps(&mut self, out: &mut Out) {
        let count = self.config.vrrp.garp_count;
        if count > 0 {
            out.push(Command::SendGarps { count });
            self.observed.garps_sent += u64::from(count);
        }
    }

    fn role_changed(&mut self, now: Duration, role: Role, cause: Cause, reason: String, out: &mut Out) {
        out.log(Level::Info, format!("role -> {role}: {reason}"));
        let o = &mut self.observed;
        o.role = role;
        o.role_since = now;
        o.role_reason = reason;
        o.transitions += 1;
        *o.transitions_by_cause.entry(cause.name()).or_default() += 1;
        if role != Role::Active {
            self.garp = GarpTimers::default();
        }
        // The election starts over: what was heard before (a fault, a stall, a stop) times no take-over after it.
        if matches!(cause, Cause::Startup | Cause::LinkDown | Cause::Stall | Cause::Stop) {
            self.last_heard = None;
        }
    }

    /// A node that was not scheduled for longer than the heartbeat's limit (SIGSTOP, a stalled syscall, a starved
    /// CPU) has stopped answering in the data plane, and its peers have taken over or are about to. Carrying on as
    /// the active router would make it answer again next to them; it rejoins as a backup instead, and the
    /// election (preemption) decides.
    fn check_stall(&mut self, now: Duration, out: &mut Out) {
        if self.router.role() != Role::Active || self.stopping.is_some() {
            return;
        }
        let Some(last) = self.last_advert else { return };
        let silent = now.saturating_sub(last);
        if silent <= self.heartbeat_max_age() {
            return;
        }
        let _ = self.router.shutdown(now);
        let actions = self.router.start(now);
        let reason = format!(
            "no advert sent for {} ms (more than {} ms, the peers' down interval): this node was stopped or stalled \
             and its data plane stopped answering; rejoining as a backup",
            silent.as_millis(),
            self.heartbeat_max_age().as_millis()
        );
        let actions = actions
            .into_iter()
            .map(|a| match a {
                Action::BecomeBackup { .. } => Action::BecomeBackup { cause: Cause::Stall, reason: reason.clone() },
                other => other,
            })
            .collect();
        self.apply(now, actions, out);
    }

    fn link(&mut self, now: Duration, up: bool, out: &mut Out) {
        if self.stopping.is_some() {
            return;
        }
        let role = self.router.role();
        if up && role == Role::Fault {
            out.log(Level::Info, format!("link up on {}: starting the election as a backup", self.config.interface));
            // Check results taken without a link say nothing about the backends: start the checkers afresh (the
            // first result decides) and settle again before preempting.
            for (service, backend) in Self::checked(&self.config) {
                out.push(Command::StopChecker { service, backend });
            }
            self.start_checkers(&[], out);
            self.begin_settling(now);
            self.update_priority(now, out);
            let actions = self.router.start(now);
            self.apply(now, actions, out);
        } else if !up && role != Role::Fault && role != Role::Initialize {
            // Adverts cannot leave now: stop the machine quietly and stop answering for the VIP.
            let actions = self.router.fault(now, format!("link down on {}", self.config.interface));
            self.apply(now, actions, out);
        }
    }

    // ----- services, health, neighbours, penalty -----

    /// Services without a usable backend, except those with a backend whose first check result is still to come.
    fn lost_services(&self) -> Option<String> {
        let lost: Vec<&str> = self
            .services
            .without_usable_backend()
            .into_iter()
            .filter(|name| !self.unchecked.iter().any(|(service, _)| service == name))
            .collect();
        (!lost.is_empty()).then(|| lost.join(", "))
    }

    /// Every configured checker starts unchecked; the node settles until each has passed a check, or until a
    /// backend that failed its first check has had the time to fail `fall` checks (its first probe within a tenth
    /// of an interval, then `fall` intervals, the last one taking its whole timeout).
    fn begin_settling(&mut self, now: Duration) {
        self.unchecked = Self::checked(&self.config).into_iter().collect();
        self.settling = !self.unchecked.is_empty();
        let longest = self
            .config
            .services
            .iter()
            .filter(|s| s.health.check != CheckKind::None)
            .map(|s| {
                let h = &s.health;
                let interval = u64::from(h.interval_ms);
                interval / 10 + interval * u64::from(h.fall.max(1)) + u64::from(h.timeout_ms)
            })
            .max()
            .unwrap_or(0);
        self.settle_by = now + Duration::from_millis(longest);
        self.router.hold_preemption(self.settling);
    }

    /// Ends settling once every backend has passed a check, or at `settle_by`.
    fn settle_if_done(&mut self, now: Duration, out: &mut Out) {
        if !self.settling {
            return;
        }
        if self.unchecked.is_empty() {
            out.log(Level::Info, "every backend has been checked: preemption allowed");
        } else if now >= self.settle_by {
            let failing: Vec<String> = self
                .unchecked
                .iter()
                .map(|(service, (address, port))| format!("{address}:{port} of {service}"))
                .collect();
            out.log(
                Level::Info,
                format!("every backend has been checked, {} still failing: preemption allowed", failing.join(", ")),
            );
            self.unchecked.clear();
        } else {
            return;
        }
        self.settling = false;
        self.router.hold_preemption(false);
    }

    /// Applies `backend_loss_penalty` while a service has no usable backend here.
    fn update_priority(&mut self, now: Duration, out: &mut Out) {
        let lost = self.lost_services();
        let base = self.config.vrrp.priority;
        let penalty = self.config.vrrp.backend_loss_penalty;
        let wanted = effective_priority(base, penalty, lost.is_some() || self.settling);
        if lost.is_some() != self.observed.backends_lost {
            self.observed.backends_lost = lost.is_some();
            match &lost {
                Some(names) => out.log(Level::Warn, format!("no usable backend for {names}")),
                None => out.log(Level::Info, "every service has a usable backend again"),
            }
        }
        if wanted != self.router.priority() {
            let why = match &lost {
                Some(names) if penalty > 0 => format!("{names} has no usable backend (backend_loss_penalty {penalty})"),
                None if self.settling && penalty > 0 => {
                    format!("not every backend is checked yet (backend_loss_penalty {penalty})")
                }
                _ => "configured priority".to_string(),
            };
            out.log(Level::Info, format!("priority {} -> {wanted}: {why}", self.router.priority()));
            let actions = self.router.set_priority(now, wanted);
            self.apply(now, actions, out);
        }
    }

    fn install(&self, name: &str, out: &mut Out) {
        if let Some(spec) = self.services.spec(name) {
            out.push(Command::InstallService { name: name.to_string(), spec });
        }
    }

    fn health(&mut self, now: Duration, service: &str, backend: Endpoint, healthy: bool, reason: &str, out: &mut Out) {
        // While settling only a pass counts (see the module documentation); a reload's new backend is checked by
        // its first result either way.
        let key = (service.to_string(), backend);
        let first = (healthy || !self.settling) && self.unchecked.remove(&key);
        let changed = self.services.set_health(service, backend, healthy);
        if !changed && !first {
            return;
        }
        if changed {
            let (address, port) = backend;
            let state = if healthy { "up" } else { "down" };
            out.log(Level::Info, format!("backend {address}:{port} of {service} is {state}: {reason}"));
            self.install(service, out);
        }
        self.settle_if_done(now, out);
        self.update_priority(now, out);
    }

    /// Neighbour answers, applied together: each changed service is installed once, the penalty looked at once.
    fn neighbours(&mut self, now: Duration, batch: Vec<(Ipv4Addr, Seen)>, out: &mut Out) {
        let mut changed: Vec<String> = Vec::new();
        for (address, seen) in batch {
            for name in self.neighbour(now, address, seen, out) {
                if !changed.contains(&name) {
                    changed.push(name);
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        for name in changed {
            self.install(&name, out);
        }
        self.update_priority(now, out);
    }

    /// A backend keeps its last known MAC until the kernel says the entry FAILED: an entry that is only missing
    /// (garbage-collected, or being refreshed) says nothing about the backend. Returns the services that changed.
    fn neighbour(&mut self, now: Duration, address: Ipv4Addr, seen: Seen, out: &mut Out) -> Vec<String> {
        let Some((mac, ifindex)) = self.services.path(address) else { return Vec::new() };
        match seen {
            Seen::Mac { ifindex: i, mac: m } => {
                if mac != Some(m) {
                    out.log(Level::Info, format!("backend {address} is reached via ifindex {i} at {}", fmt_mac(m)));
                }
                self.services.set_path(address, Some(m), i)
            }
            Seen::Failed { ifindex: i } => {
                if mac.is_some() {
                    out.log(
                        Level::Warn,
                        format!(
                            "backend {address}: the kernel's neighbour entry FAILED (no ARP answer): out of the \
                             tables until it answers"
                        ),
                    );
                }
                self.services.set_path(address, None, i)
            }
            // Another interface means another next hop: the old MAC means nothing there.
            Seen::Pending { ifindex: i } if i != ifindex => self.services.set_path(address, None, i),
            Seen::Pending { .. } => Vec::new(),
            Seen::NoRoute(why) => {
                if let Some(left_out) = self.logs.allow("no_route", now) {
                    out.log(Level::Warn, format!("backend {address}: {why}{}", more(left_out)));
                }
                self.services.set_path(address, None, 0)
            }
        }
    }

    /// Starts checkers for every configured backend (of a check other than `none`) that `running` does not list.
    fn start_checkers(&self, running: &[(String, Endpoint)], out: &mut Out) {
        for svc in &self.config.services {
            if svc.health.check == CheckKind::None {
                continue;
            }
            for b in &svc.backends {
                let key = (svc.name.clone(), (b.address, b.port));
                if running.contains(&key) {
                    continue;
                }
                out.push(Command::StartChecker {
                    service: key.0,
                    backend: key.1,
                    settings: health::Settings::from(&svc.health),
                });
            }
        }
    }

    fn checked(config: &Config) -> Vec<(String, Endpoint)> {
        config
            .services
            .iter()
            .filter(|s| s.health.check != CheckKind::None)
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), (b.address, b.port))))
            .collect()
    }

    // ----- reload -----

    /// SIGHUP: applies the difference [`config::diff`] allows; a bad config, a restart-only change or one beyond
    /// the data plane's capacity keeps the running config.
    fn reload(&mut self, now: Duration, result: Result<Config, Vec<Problem>>, out: &mut Out) {
        let new = match result {
            Ok(config) => config,
            Err(problems) => {
                for p in &problems {
                    out.log(Level::Error, p.to_string());
                }
                out.log(
                    Level::Error,
                    format!("reload refused: the config has {} problem(s); the running config is kept", problems.len()),
                );
                return;
            }
        };
        let plan = match config::diff(&self.config, &new) {
            Ok(plan) => plan,
            Err(restart) => {
                out.log(Level::Error, format!("reload refused: {restart}"));
                return;
            }
        };
        if new.services.len() > self.service_capacity as usize {
            out.log(
                Level::Error,
                format!(
                    "reload refused: {} services, but the data plane was sized for {} at start; restart xvip to grow \
                     it; the running config is kept",
                    new.services.len(),
                    self.service_capacity
                ),
            );
            return;
        }
        if plan.is_empty() {
            out.log(Level::Info, "reload: nothing changed");
            return;
        }
        out.log(Level::Info, format!("reload: {plan}"));
        for line in drain_changes(&self.config, &new) {
            out.log(Level::Info, line);
        }
        let before = Self::checked(&self.config);
        let refresh_before = self.config.vrrp.garp_refresh_ms;
        self.config = Arc::new(new);
        self.services.reconfigure(&self.config.services);
        // Checkers of backends that went away, or whose service's health settings changed, stop; new ones start.
        let after = Self::checked(&self.config);
        let mut running = Vec::new();
        for key in before {
            if after.contains(&key) && !plan.health_changed.contains(&key.0) {
                running.push(key);
            } else {
                out.push(Command::StopChecker { service: key.0, backend: key.1 });
            }
        }
        self.start_checkers(&running, out);
        // Started checkers report a first result; until then their backends make no service lost.
        self.unchecked.retain(|key| after.contains(key));
        self.unchecked.extend(after.iter().filter(|key| !running.contains(key)).cloned());
        self.settle_if_done(now, out);
        out.push(Command::Services(self.services.specs()));
        out.push(Command::Neighbours(self.services.addresses()));
        if self.config.vrrp.garp_refresh_ms != refresh_before && self.router.role() == Role::Active {
            let ms = self.config.vrrp.garp_refresh_ms;
            self.garp.refresh_at = (ms > 0).then(|| now + Duration::from_millis(u64::from(ms)));
        }
        self.update_priority(now, out);
    }

    // ----- status -----

    /// A snapshot for `xvip status` and metrics, taken in O(services) (nothing is formatted here, so a client that
    /// polls status costs the advert thread next to nothing).
    pub fn view(&self, now: Duration) -> View {
        View {
            config: self.config.clone(),
            services: self.services.clone(),
            observed: self.observed.clone(),
            role: self.router.role(),
            effective_priority: self.router.priority(),
            active_router: self.router.active_router(),
            warnings: self.warnings(now),
        }
    }

    /// The status document (see [`View::status`]).
    pub fn status(&self, now: Duration, epoch_unix_ms: u64) -> Status {
        self.view(now).status(epoch_unix_ms)
    }
}

/// The engine's state at one moment, for `xvip status` and metrics.
#[derive(Clone, Debug)]
pub struct View {
    pub config: Arc<Config>,
    pub services: Services,
    pub observed: Observed,
    pub role: Role,
    pub effective_priority: u8,
    pub active_router: Option<Ipv4Addr>,
    pub warnings: Vec<Warning>,
}

/// One line per backend that starts or stops draining (`weight = 0`) between two configs.
fn drain_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for svc in &new.services {
        let before = old.services.iter().find(|s| s.name == svc.name);
        for b in &svc.backends {
            let was = before.and_then(|s| s.backends.iter().find(|o| (o.address, o.port) == (b.address, b.port)));
            match (was.map(|w| w.weight == 0), b.weight == 0) {
                (Some(false), true) => lines.push(format!(
                    "backend {}:{} of {} is draining: weight 0, no new flows; established ones stay while it is \
                     healthy",
                    b.address, b.port, svc.name
                )),
                (Some(true), false) => lines.push(format!(
                    "backend {}:{} of {} takes new flows again: weight {}",
                    b.address, b.port, svc.name, b.weight
                )),
                _ => {}
            }
        }
    }
    lines
}

impl View {
    /// The status document, except what only the data plane knows (traffic counters, `xdp_mode`), which the shell
    /// adds. `epoch_unix_ms` is the wall-clock time of the engine's time 0.
    pub fn status(&self, epoch_unix_ms: u64) -> Status {
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
                        BackendStatus {
                            address: b.address.to_string(),
                            port: b.port,
                            weight: b.weight,
                            healthy: state.healthy,
                            packets: 0,
                            bytes: 0,
                            mac: state.mac.map(fmt_mac),
                            draining: b.weight == 0,
                            flows: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        let o = &self.observed;
        Status {
            role: self.role.name().to_string(),
            vrid: self.config.vrrp.vrid,
            priority: self.config.vrrp.priority,
            effective_priority: self.effective_priority,
            vip: self.config.vip.address.to_string(),
            interface: self.config.interface.clone(),
            xdp_mode: String::new(),
            active_router: self.active_router.map(|a| a.to_string()),
            transitions: o.transitions,
            role_since_unix_ms: epoch_unix_ms + u64::try_from(o.role_since.as_millis()).unwrap_or(u64::MAX),
            role_reason: o.role_reason.clone(),
            services,
            counters: CounterStatus {
                adverts_sent: o.adverts_sent,
                adverts_received: o.adverts_received,
                adverts_discarded: o.discards.values().sum(),
                adverts_discarded_by_reason: o.discards.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                garps_sent: o.garps_sent,
                ..CounterStatus::default()
            },
            warnings: self.warnings.clone(),
        }
    }
}

/// Whether two advert address lists name the same addresses (RFC 5798 §5.2.9 asks for one order on every router,
/// but the set is what identifies the group).
fn same_addresses(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}

/// ` (N more since the last line)` when lines were left out.
fn more(left_out: u64) -> String {
    if left_out == 0 { String::new() } else { format!(" ({left_out} more since the last line)") }
}

fn more_comma(left_out: u64) -> String {
    if left_out == 0 { String::new() } else { format!(", {left_out} not logged") }
}
