//! The node engine: every decision the agent makes, in one pure type (sans-IO).
//!
//! [`Engine::handle`] takes an [`Event`] (an advert packet, a timer, a health result, a link change, a neighbour
//! answer, a reload, a stop) with the current time and returns the [`Command`]s that carry the decision out (take
//! or give up a VIP, send an advert or gratuitous ARPs, install services, start health checkers, log). No
//! sockets, no clocks, no threads: the agent's shell (`agent.rs`) does the I/O, and the tests here drive the engine
//! with virtual time, so every decision has a test that does not need a network.
//!
//! The node runs one or more VRRP **instances** ([`instance`]), each with its own election, role, FAULT, penalty,
//! GARPs, peers, services and flows; the node routes each event to the instances it concerns (a packet by its
//! interface and VRID, a link change by interface, a health result by instance) and owns what they share:
//! - **the dead-man heartbeat**: one per agent, refreshed with every advert any instance sends; the program stops
//!   answering when it is older than 3 advert intervals of the fastest active instance ([`HeartbeatMaxAge`]);
//! - **the neighbour table**: where each backend address is, for every instance using it (a new instance starts
//!   with what the node knows);
//! - **data plane slots**: each instance's routers get flags in the data plane, reused as late as possible;
//! - **reloads**: [`config::diff`] says what may change; instances are added, removed and replaced (a changed
//!   identity), the others change in place, and nothing else is touched;
//! - **the stop**: every active router (of either family) hands over (a priority-0 advert, answering until the new
//!   active router of its family announces itself or [`HANDOVER_WAIT`] passes); the node exits when none waits.
//!
//! What an instance decides, besides the VRRP election of [`crate::vrrp::machine`]:
//! - **FAULT** ([`Role::Fault`]): its link down stops its election and answers nothing; the link back starts again
//!   as a backup, so preemption decides.
//! - **Startup order**: the backend-loss penalty is applied before the election starts, so a node whose backends
//!   are not known healthy yet never advertises its full priority.
//! - **Settling**: from start, and from its link coming back (which restarts its health checkers: results taken
//!   without a link say nothing), until every backend of the instance has passed a check or kept failing for as
//!   long as it takes to mark an up backend down (`fall` intervals and a timeout), the instance holds preemption
//!   and counts as penalised. A failed first check does not end it: right after a link comes back the first probes
//!   can fail for a moment, and an instance that then preempted as soon as one backend per service had answered
//!   would build a smaller Maglev table than the active node's, and reset the established flows of the backends
//!   it has not checked yet. Backends a reload adds are unchecked too, but they make no service lost before their
//!   first result: a reload must not lower the active node's priority while its new backends are being checked for
//!   the first time.
//! - **Gratuitous ARPs**: a burst on becoming active, a second one after `garp_repeat_delay_ms`, a refresh every
//!   `garp_refresh_ms` (`GarpTimers`; the IPv6 router sends unsolicited Neighbor Advertisements on the same
//!   schedule); answers to lower-priority adverts at most once per advert interval.
//! - **The group's identity**: an advert with its VRID but another address list is another group reusing the VRID;
//!   it is discarded, counted and shown as a warning. An address owner (priority 255) discards every advert (RFC
//!   5798 §7.1).
//! - **Bounded cost of hostile adverts**: a bounded peer table, per-reason log rate limits; a packet no instance
//!   claims is parsed once.
//! - **Stalls**: when the node was not scheduled for longer than an instance's peers' down interval, the data
//!   plane's dead-man switch has already stopped answering and a peer has taken over; the instance rejoins as a
//!   backup.
//! - **Neighbours**: a backend keeps its MAC until the kernel says its entry FAILED.
//!
//! [`HeartbeatMaxAge`]: Command::HeartbeatMaxAge

mod instance;
mod observed;
mod router6;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use log::Level;

use instance::Instance;
pub use instance::InstanceView;
pub use observed::{Observed, RouterObserved, RouterView};

use crate::{
    config::{self, Config, Problem},
    dataplane::{ServiceId, ServiceSpec, Vip6Spec, VipSpec},
    health,
    neighbour::Seen,
    services::Endpoint,
    status::Status,
    vrrp::{
        Advert, ChecksumMode, Role, Settings,
        machine::InvalidSettings,
        packet::{self},
        socket6::Datagram,
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
/// Take-over times kept in [`RouterObserved::recent_takeovers`] for readers that sample the state now and then (metrics
/// sample every second; an instance cannot take over more than once per advert interval or so).
pub const RECENT_TAKEOVERS: usize = 32;

/// Something that happened, handed to [`Engine::handle`] with the time it is handled at.
#[derive(Debug, Clone)]
pub enum Event {
    /// The daemon is ready to run the elections; `links` is the state of each interface an instance uses.
    Start { links: BTreeMap<String, bool> },
    /// [`Engine::next_deadline`] was reached.
    Timer,
    /// An IPv4 packet of protocol 112 from the VRRP socket of `interface` (header included).
    Packet { interface: String, bytes: Vec<u8> },
    /// A VRRP message from the IPv6 VRRP socket of `interface`, with its source, destination and hop limit.
    Packet6 { interface: String, datagram: Datagram },
    /// A health checker reported a transition.
    Health { id: ServiceId, backend: Endpoint, healthy: bool, reason: String },
    /// An interface's link (carrier) changed.
    Link { interface: String, up: bool },
    /// What the kernel's neighbour table now says about a backend address.
    Neighbour { address: IpAddr, seen: Seen },
    /// Several of those at once (one round of the neighbour watcher).
    Neighbours(Vec<(IpAddr, Seen)>),
    /// SIGHUP: the config file as read again (or why it could not be).
    Reload(Box<Result<Config, Vec<Problem>>>),
    /// SIGTERM/SIGINT.
    Stop,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Answer for the VIPs of `router` in the data plane, or stop answering.
    SetActive { router: u32, active: bool },
    /// How old the data plane's heartbeat may get before it stops answering for any VIP (written at once).
    HeartbeatMaxAge(Duration),
    /// Send this advert on `interface` from `source`: to 224.0.0.18, or one copy to each of `peers`. The shell
    /// refreshes the data plane's heartbeat just before (the dead-man switch).
    SendAdvert { interface: String, source: Ipv4Addr, peers: Vec<Ipv4Addr>, advert: Advert, checksum: ChecksumMode },
    /// Send this many gratuitous ARPs for each of `addresses` on `interface`.
    SendGarps { interface: String, addresses: Vec<Ipv4Addr>, count: u32 },
    /// Send this IPv6 advert on `interface` from `source`: to ff02::12, or one copy to each of `peers`. The shell
    /// refreshes the data plane's heartbeat just before, as for [`Command::SendAdvert`].
    SendAdvert6 { interface: String, source: Ipv6Addr, peers: Vec<Ipv6Addr>, advert: Advert<Ipv6Addr> },
    /// Send this many unsolicited Neighbor Advertisements (the IPv6 gratuitous ARP) for each of `addresses` on
    /// `interface`: an IPv6 router became active (or answers a lower priority).
    SendUnsolicitedNas { interface: String, addresses: Vec<Ipv6Addr>, count: u32 },
    /// The IPv6 VIPs the data plane must answer Neighbor Solicitations and echo requests for, each with the data
    /// plane router whose flag ([`Command::SetActive`]) says whether this node answers (start and reloads; the
    /// whole set each time).
    InstallVips6(Vec<Vip6Spec>),
    /// Make the data plane's VIPs and installed services exactly these (start, reload).
    Install { vips: Vec<VipSpec>, services: Vec<(ServiceId, ServiceSpec)> },
    /// Install (or update) one service (a health or MAC change).
    InstallService { id: ServiceId, spec: ServiceSpec },
    /// Start health-checking a backend of a service.
    StartChecker { id: ServiceId, backend: Endpoint, settings: health::Settings },
    /// Stop health-checking a backend of a service.
    StopChecker { id: ServiceId, backend: Endpoint },
    /// Watch (resolve and keep fresh) the neighbour entries of these backend addresses.
    Neighbours(Vec<IpAddr>),
    /// The link of this interface came back: ask the kernel afresh, now, for the backends' neighbour entries it
    /// left unresolved while the link was down (its own next retry may be a second away, and the health checks
    /// that decide whether this node may preempt would wait for it). Comes before the checkers restart.
    RenewNeighbours(String),
    /// Delete the data plane's connection and NAT entries of flows to these VIPs: an instance stopped being
    /// active, and what it recorded while active must not be taken for the truth the next time it is (a pin from
    /// an earlier connection on the same client port, made under another Maglev table, or a reverse entry holding
    /// the NAT port a peer gave another flow meanwhile, would move or break the connections the peer carried).
    ForgetFlows(Vec<IpAddr>),
    /// One log line.
    Log(Level, String),
    /// Every instance's first role is decided: the daemon is ready (systemd readiness).
    Ready,
    /// The stop is complete: detach and exit.
    Exit,
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

/// The announcement schedule of an active router, the same for both families (gratuitous ARPs for IPv4,
/// unsolicited Neighbor Advertisements for IPv6): a burst of `garp_count` on becoming active (sent by the caller),
/// a second one `garp_repeat_delay_ms` later, then one every `garp_refresh_ms` while it stays active.
#[derive(Debug, Default, Clone, Copy)]
struct GarpTimers {
    repeat_at: Option<Duration>,
    refresh_at: Option<Duration>,
}

impl GarpTimers {
    /// The schedule of a router that became active at `now`.
    fn after_takeover(now: Duration, vrrp: &config::Vrrp) -> Self {
        let after = |ms: u32| (ms > 0).then(|| now + Duration::from_millis(u64::from(ms)));
        GarpTimers { repeat_at: after(vrrp.garp_repeat_delay_ms), refresh_at: after(vrrp.garp_refresh_ms) }
    }

    /// Its next deadline.
    fn next(&self) -> Option<Duration> {
        [self.repeat_at, self.refresh_at].into_iter().flatten().min()
    }

    /// How many bursts are due at `now` (the repeat and a refresh may fall together); the schedule moves on, the
    /// next refresh `refresh_ms` from now.
    fn due(&mut self, now: Duration, refresh_ms: u32) -> u32 {
        let mut bursts = 0;
        if self.repeat_at.is_some_and(|t| t <= now) {
            self.repeat_at = None;
            bursts += 1;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            bursts += 1;
            self.refresh_at = (refresh_ms > 0).then(|| now + Duration::from_millis(u64::from(refresh_ms)));
        }
        bursts
    }

    /// A reload changed `garp_refresh_ms` to `refresh_ms` while active: the refresh runs from now on the new period.
    fn refresh_changed(&mut self, now: Duration, refresh_ms: u32) {
        self.refresh_at = (refresh_ms > 0).then(|| now + Duration::from_millis(u64::from(refresh_ms)));
    }
}

/// Commands being collected while one event is handled.
#[derive(Default)]
struct Out {
    commands: Vec<Command>,
}

impl Out {
    fn push(&mut self, command: Command) {
        self.commands.push(command);
    }

    fn log(&mut self, level: Level, message: impl Into<String>) {
        self.commands.push(Command::Log(level, message.into()));
    }
}

/// Why the engine cannot run a config (at start; a reload with such a problem is refused instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("instance {instance}: VRRP settings: {source}")]
    Settings {
        instance: String,
        #[source]
        source: InvalidSettings,
    },
    #[error(
        "instance {instance}: interface {interface} has no IPv4 address to send VRRP adverts from: add one, or set \
         vrrp.source_address"
    )]
    NoSource { instance: String, interface: String },
    #[error(
        "instance {instance}: interface {interface} has no IPv6 link-local address to send IPv6 VRRP adverts from: \
         enable IPv6 on it, or set vrrp.source_address to one of its IPv6 addresses"
    )]
    NoSource6 { instance: String, interface: String },
    #[error(
        "instance {instance} uses interface {interface}, which no instance used at start (the VRRP socket and the \
         XDP program are set up at start): restart xvip to add an interface"
    )]
    NewInterface { instance: String, interface: String },
}

/// The node engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    /// Shared with status snapshots; replaced (not changed) by a reload.
    config: Arc<Config>,
    /// The interfaces set up at start, with each one's primary IPv4 address (the default advert source).
    interfaces: BTreeMap<String, Option<Ipv4Addr>>,
    /// The interfaces' link-local IPv6 addresses (the default IPv6 advert source), as far as known at start.
    link_locals: BTreeMap<String, Ipv6Addr>,
    /// Services the data plane was sized for at start.
    service_capacity: u32,
    /// In config order.
    instances: Vec<Instance>,
    /// Free instance slots of the data plane, least recently freed first (a slot's flags are reused as late as
    /// possible).
    free_slots: VecDeque<u32>,
    /// Where each backend address is reached, as far as the node knows (shared by every instance using it).
    paths: BTreeMap<IpAddr, (Option<[u8; 6]>, u32)>,
    /// Each interface's link state.
    links: BTreeMap<String, bool>,
    /// The heartbeat's limit as last commanded (or, before any, as [`Engine::heartbeat_max_age`] said at start).
    max_age: Option<Duration>,
    /// While stopping with instances handing over: until when to wait for the new active routers.
    stopping: Option<Duration>,
    exited: bool,
    started: bool,
    /// Interfaces whose VRRP socket joined 224.0.0.18 at start (some instance there advertised by multicast).
    multicast_interfaces: BTreeSet<String>,
    /// Interfaces with an IPv6 VRRP socket (some instance there had IPv6 addresses at start), and those of them
    /// whose socket joined ff02::12.
    ipv6_interfaces: BTreeSet<String>,
    multicast6_interfaces: BTreeSet<String>,
    /// Rate limits of the node's own lines (packets no instance claims, neighbours).
    logs: LogLimits,
}

fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn fmt_list(addresses: &[Ipv4Addr]) -> String {
    let list: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
    format!("[{}]", list.join(", "))
}

/// This node's advert source for `instance`: its `vrrp.source_address`, else its interface's primary IPv4 (none
/// needed, and unspecified, for an instance without IPv4 addresses).
fn source_of(instance: &config::Instance, interfaces: &BTreeMap<String, Option<Ipv4Addr>>) -> Result<Ipv4Addr, Error> {
    let Some(primary) = interfaces.get(&instance.interface) else {
        return Err(Error::NewInterface { instance: instance.name.clone(), interface: instance.interface.clone() });
    };
    if instance.vip.ipv4().is_empty() {
        return Ok(instance.vrrp.source_address.unwrap_or(Ipv4Addr::UNSPECIFIED));
    }
    instance
        .vrrp
        .source_address
        .or(*primary)
        .ok_or_else(|| Error::NoSource { instance: instance.name.clone(), interface: instance.interface.clone() })
}

/// This node's IPv6 advert source for `instance` (when it has IPv6 addresses): its IPv6 `vrrp.source_address`,
/// else its interface's link-local address.
fn source6_of(
    instance: &config::Instance,
    link_locals: &BTreeMap<String, Ipv6Addr>,
) -> Result<Option<Ipv6Addr>, Error> {
    if instance.vip.ipv6().is_empty() {
        return Ok(None);
    }
    instance
        .vrrp
        .source_address6
        .or_else(|| link_locals.get(&instance.interface).copied())
        .map(Some)
        .ok_or_else(|| Error::NoSource6 { instance: instance.name.clone(), interface: instance.interface.clone() })
}

/// Whether the instances' log lines carry their names: not for the one instance of a single-form file.
fn labelled(config: &Config) -> bool {
    !(config.instances.len() == 1 && config.instances[0].name == config::DEFAULT_INSTANCE)
}

impl Engine {
    /// An engine for `config`, on the node's `interfaces` (each with its primary IPv4 address, the default advert
    /// source), with a data plane sized for `service_capacity` services.
    ///
    /// # Errors
    /// When an instance has no advert source or uses an interface not in `interfaces`, or its VRRP settings are
    /// out of range (a config that passed [`config::parse`] never is).
    pub fn new(
        config: Config,
        interfaces: BTreeMap<String, Option<Ipv4Addr>>,
        service_capacity: u32,
    ) -> Result<Self, Error> {
        Self::with_link_locals(config, interfaces, BTreeMap::new(), service_capacity)
    }

    /// [`Engine::new`], with each interface's link-local IPv6 address (the default source of IPv6 adverts, needed
    /// by instances with IPv6 addresses).
    ///
    /// # Errors
    /// As [`Engine::new`], and when an instance with IPv6 addresses has no IPv6 advert source.
    pub fn with_link_locals(
        config: Config,
        interfaces: BTreeMap<String, Option<Ipv4Addr>>,
        link_locals: BTreeMap<String, Ipv6Addr>,
        service_capacity: u32,
    ) -> Result<Self, Error> {
        let mut free_slots: VecDeque<u32> = (0..lb_common::MAX_INSTANCES).collect();
        let paths = BTreeMap::new();
        let mut instances = Vec::new();
        for c in &config.instances {
            let source = source_of(c, &interfaces)?;
            let source6 = source6_of(c, &link_locals)?;
            let slot = free_slots.pop_front().unwrap_or(u32::MAX);
            let instance = Instance::new(c.clone(), slot, source, source6, labelled(&config), &paths)
                .map_err(|source| Error::Settings { instance: c.name.clone(), source })?;
            instances.push(instance);
        }
        let multicast_interfaces =
            config.instances.iter().filter(|i| i.vrrp.unicast_peers.is_empty()).map(|i| i.interface.clone()).collect();
        let with_ipv6 = || config.instances.iter().filter(|i| !i.vip.ipv6().is_empty());
        let ipv6_interfaces = with_ipv6().map(|i| i.interface.clone()).collect();
        let multicast6_interfaces =
            with_ipv6().filter(|i| i.vrrp.unicast_peers6.is_empty()).map(|i| i.interface.clone()).collect();
        let mut engine = Engine {
            multicast_interfaces,
            ipv6_interfaces,
            multicast6_interfaces,
            config: Arc::new(config),
            interfaces,
            link_locals,
            service_capacity,
            instances,
            free_slots,
            paths,
            links: BTreeMap::new(),
            max_age: None,
            stopping: None,
            exited: false,
            started: false,
            logs: LogLimits::default(),
        };
        // The shell sets the first limit from `heartbeat_max_age` before the start; commands say what changes.
        engine.max_age = Some(engine.heartbeat_max_age());
        Ok(engine)
    }

    /// The running config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn find(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name() == name)
    }

    /// The role of instance `name`.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.find(name).map(Instance::role)
    }

    /// The priority instance `name` advertises now (the configured one, lowered by the penalty while backends are
    /// lost).
    pub fn effective_priority(&self, name: &str) -> Option<u8> {
        self.find(name).map(Instance::effective_priority)
    }

    /// What instance `name` has seen and done.
    pub fn observed(&self, name: &str) -> Option<&Observed> {
        self.find(name).map(Instance::observed)
    }

    /// Instance `name`'s services with the live state of their backends.
    pub fn services(&self, name: &str) -> Option<&crate::services::Services> {
        self.find(name).map(Instance::services)
    }

    /// The data plane router of instance `name` (its IPv4 router).
    pub fn router(&self, name: &str) -> Option<u32> {
        self.find(name).map(Instance::router_index)
    }

    /// Whether the engine has finished stopping.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// A short summary for systemd's `STATUS=`: `active, priority 150` for one instance, counts for several.
    pub fn status_line(&self) -> String {
        if let [only] = self.instances.as_slice() {
            return format!("{}, priority {}", only.role(), only.effective_priority());
        }
        let count = |role: Role| self.instances.iter().filter(|i| i.role() == role).count();
        format!(
            "{} instances: {} active, {} backup, {} fault",
            self.instances.len(),
            count(Role::Active),
            count(Role::Backup),
            count(Role::Fault)
        )
    }

    /// How old the data plane's heartbeat may get before the program stops answering: 3 advert intervals of the
    /// fastest active instance (of any instance when none is active), which is less than any of its peers'
    /// Master_Down_Interval (3 intervals plus a skew time above 0). So a node that stopped advertising has stopped
    /// answering before any peer takes over; every active instance refreshes it at least that often.
    pub fn heartbeat_max_age(&self) -> Duration {
        let active = self.instances.iter().filter(|i| i.role() == Role::Active).map(Instance::advert_interval).min();
        let any = self.instances.iter().map(Instance::advert_interval).min();
        3 * active.or(any).unwrap_or(Duration::from_secs(1))
    }

    /// When [`Event::Timer`] is next due.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.exited {
            return None;
        }
        self.instances.iter().filter_map(Instance::next_deadline).chain(self.stopping).min()
    }

    /// The current warnings of every instance (VRID collisions heard within [`WARNING_TTL`]).
    pub fn warnings(&self, now: Duration) -> Vec<crate::status::Warning> {
        self.instances.iter().flat_map(|i| i.warnings(now)).collect()
    }

    /// Handles one event at `now` (a monotonic time since any fixed epoch) and returns what to do, in order.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Command> {
        let mut out = Out::default();
        if self.exited {
            return out.commands;
        }
        self.check_stall(now, &mut out);
        match event {
            Event::Start { links } => self.start(now, links, &mut out),
            Event::Timer => self.timer(now, &mut out),
            Event::Packet { interface, bytes } => self.packet(now, &interface, &bytes, &mut out),
            Event::Packet6 { interface, datagram } => self.packet6(now, &interface, &datagram, &mut out),
            Event::Health { id, backend, healthy, reason } => {
                if let Some(i) = self.instances.iter_mut().find(|i| i.name() == id.instance) {
                    i.health(now, &id.service, backend, healthy, &reason, &mut out);
                }
            }
            Event::Link { interface, up } => self.link(now, &interface, up, &mut out),
            Event::Neighbour { address, seen } => self.neighbours(now, vec![(address, seen)], &mut out),
            Event::Neighbours(batch) => self.neighbours(now, batch, &mut out),
            Event::Reload(result) => self.reload(now, *result, &mut out),
            Event::Stop => self.stop(now, &mut out),
        }
        let max_age = self.heartbeat_max_age();
        if self.max_age != Some(max_age) {
            self.max_age = Some(max_age);
            out.push(Command::HeartbeatMaxAge(max_age));
        }
        out.commands
    }

    // ----- startup and stop -----

    /// Everything the data plane needs: every instance's VIPs and services.
    fn install_all(&self, out: &mut Out) {
        let vips = self.instances.iter().flat_map(Instance::vip_specs).collect();
        let services = self.instances.iter().flat_map(Instance::service_specs).collect();
        out.push(Command::Install { vips, services });
        let vips6: Vec<Vip6Spec> = self.instances.iter().flat_map(Instance::vip6_specs).collect();
        if !vips6.is_empty() {
            out.push(Command::InstallVips6(vips6));
        }
        let mut addresses: Vec<IpAddr> = self.instances.iter().flat_map(|i| i.services().backend_addresses()).collect();
        addresses.sort();
        addresses.dedup();
        out.push(Command::Neighbours(addresses));
    }

    fn link_up(&self, interface: &str) -> bool {
        self.links.get(interface).copied().unwrap_or(true)
    }

    fn start(&mut self, now: Duration, links: BTreeMap<String, bool>, out: &mut Out) {
        if self.started {
            return;
        }
        self.started = true;
        self.links = links;
        self.install_all(out);
        for i in &self.instances {
            i.start_checkers(&[], out);
        }
        for index in 0..self.instances.len() {
            let up = self.link_up(self.instances[index].interface());
            self.instances[index].start(now, up, out);
        }
        out.push(Command::Ready);
    }

    fn stop(&mut self, now: Duration, out: &mut Out) {
        if self.stopping.is_some() {
            return;
        }
        let mut handing_over = false;
        for i in &mut self.instances {
            if i.begin_stop(now, out) {
                // Keep answering until the new active router announces itself: both pick the same backend for a
                // flow, so clients see no gap while the backup waits out its skew time.
                handing_over = true;
            } else {
                i.finish_stop(now, out);
            }
        }
        if handing_over {
            self.stopping = Some(now + HANDOVER_WAIT);
        } else {
            self.finish(out);
        }
    }

    /// A router's handover ended: the stop is complete when no router of any instance still waits for one.
    fn finish_if_handed_over(&mut self, out: &mut Out) {
        if self.stopping.is_some() && !self.instances.iter().any(Instance::handing_over) {
            self.finish(out);
        }
    }

    fn finish(&mut self, out: &mut Out) {
        self.stopping = None;
        self.exited = true;
        out.push(Command::Exit);
    }

    // ----- VRRP -----

    fn timer(&mut self, now: Duration, out: &mut Out) {
        if let Some(until) = self.stopping {
            if now >= until {
                for i in self.instances.iter_mut().filter(|i| i.handing_over()) {
                    out.log(
                        Level::Info,
                        format!(
                            "handover of {}: no other router announced itself within {} ms",
                            i.name(),
                            HANDOVER_WAIT.as_millis()
                        ),
                    );
                    i.finish_stop(now, out);
                }
                self.finish(out);
            }
            return;
        }
        for i in &mut self.instances {
            i.timer(now, out);
        }
    }

    /// A VRRP packet from `interface`'s socket goes to the instance of its VRID there. One that no instance claims
    /// (another group's VRID, or malformed) is judged once and counted by every instance on the interface.
    fn packet(&mut self, now: Duration, interface: &str, bytes: &[u8], out: &mut Out) {
        let vrid = packet::peek_vrid(bytes);
        if let Some(i) = self.instances.iter_mut().find(|i| i.interface() == interface && Some(i.vrid()) == vrid) {
            if i.packet(now, bytes, out) {
                self.finish_if_handed_over(out);
            }
            return;
        }
        let Some(first) = self.instances.iter().find(|i| i.interface() == interface) else {
            return;
        };
        let Some(discard) = first.judge_unclaimed(bytes) else {
            return;
        };
        let reason = discard.name();
        let mut count = 0;
        for i in self.instances.iter_mut().filter(|i| i.interface() == interface) {
            count = count.max(i.count_discard(reason));
        }
        if let Some(left_out) = self.logs.allow(reason, now) {
            out.log(
                Level::Warn,
                format!(
                    "discarded a VRRP packet on {interface} ({reason}, {count} so far{}): {discard}",
                    more_comma(left_out)
                ),
            );
        }
    }

    /// An IPv6 VRRP message from `interface`'s IPv6 socket goes to the IPv6 router of the instance of its VRID
    /// there; one that no instance's IPv6 router claims is counted by the first of them on the interface.
    fn packet6(&mut self, now: Duration, interface: &str, datagram: &Datagram, out: &mut Out) {
        let vrid = datagram.message.get(1).copied();
        let here = |i: &&mut Instance| i.interface() == interface && i.has_ipv6();
        if let Some(i) = self.instances.iter_mut().filter(here).find(|i| Some(i.vrid()) == vrid) {
            if i.packet6(now, datagram, out) {
                self.finish_if_handed_over(out);
            }
            return;
        }
        if let Some(first) = self.instances.iter_mut().find(here) {
            first.unclaimed6(now, datagram, out);
        }
    }

    fn link(&mut self, now: Duration, interface: &str, up: bool, out: &mut Out) {
        if self.stopping.is_some() {
            return;
        }
        let was_up = self.links.insert(interface.to_owned(), up).unwrap_or(true);
        if up && !was_up {
            out.push(Command::RenewNeighbours(interface.to_owned()));
        }
        for i in self.instances.iter_mut().filter(|i| i.interface() == interface) {
            i.link(now, up, out);
        }
    }

    /// An instance whose node was not scheduled for longer than its peers' down interval rejoins as a backup (see
    /// [`Instance::rejoin_after_stall`]).
    fn check_stall(&mut self, now: Duration, out: &mut Out) {
        if self.stopping.is_some() {
            return;
        }
        for i in &mut self.instances {
            i.check_stall(now, out);
        }
    }

    // ----- neighbours -----

    /// Neighbour answers: logged once for the node, then applied to every instance.
    fn neighbours(&mut self, now: Duration, batch: Vec<(IpAddr, Seen)>, out: &mut Out) {
        for (address, seen) in &batch {
            self.note_neighbour(now, *address, seen, out);
        }
        for i in &mut self.instances {
            i.neighbours(now, &batch, out);
        }
    }

    /// What the node knows of `address` after `seen`, with a log line when it changes (see
    /// [`instance::Instance`] for the rule: a MAC stays until the kernel says FAILED).
    fn note_neighbour(&mut self, now: Duration, address: IpAddr, seen: &Seen, out: &mut Out) {
        let used = self.instances.iter().any(|i| i.services().path(address).is_some());
        if !used {
            return;
        }
        let (mac, ifindex) = self.paths.get(&address).copied().unwrap_or((None, 0));
        let next = match seen {
            Seen::Mac { ifindex: i, mac: m } => {
                if mac != Some(*m) {
                    out.log(Level::Info, format!("backend {address} is reached via ifindex {i} at {}", fmt_mac(*m)));
                }
                (Some(*m), *i)
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
                (None, *i)
            }
            Seen::Local { mac: m } => {
                if mac != Some(*m) || ifindex != 0 {
                    out.log(Level::Info, format!("backend {address} is this node: delivered through its own stack"));
                }
                // Interface 0: the node's own, where its frames arrive; no other interface gets the programs.
                (Some(*m), 0)
            }
            Seen::Pending { ifindex: i } if *i != ifindex => (None, *i),
            Seen::Pending { .. } => (mac, ifindex),
            Seen::NoRoute(why) => {
                if let Some(left_out) = self.logs.allow("no_route", now) {
                    out.log(Level::Warn, format!("backend {address}: {why}{}", more(left_out)));
                }
                (None, 0)
            }
        };
        self.paths.insert(address, next);
    }

    // ----- reload -----

    /// SIGHUP: applies the difference [`config::diff`] allows; a bad config, a restart-only change, one beyond the
    /// data plane's capacity or one that needs a new interface keeps the running config.
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
        if new.service_tables() > self.service_capacity as usize {
            out.log(
                Level::Error,
                format!(
                    "reload refused: {} service tables (one per service and address family), but the data plane \
                     was sized for {} at start; restart xvip to grow it; the running config is kept",
                    new.service_tables(),
                    self.service_capacity
                ),
            );
            return;
        }
        // New instances (added or replaced) need an interface set up at start and an advert source.
        let mut sources = BTreeMap::new();
        for c in &new.instances {
            if plan.instances_added.contains(&c.name) || plan.replaced(&c.name) {
                match source_of(c, &self.interfaces).and_then(|s| Ok((s, source6_of(c, &self.link_locals)?))) {
                    Ok(source) => {
                        sources.insert(c.name.clone(), source);
                    }
                    Err(e) => {
                        out.log(Level::Error, format!("reload refused: {e}; the running config is kept"));
                        return;
                    }
                }
                if c.vrrp.unicast_peers.is_empty() && !self.multicast_interfaces.contains(&c.interface) {
                    out.log(
                        Level::Error,
                        format!(
                            "reload refused: instance {} advertises by multicast on {}, where every instance used                              unicast_peers at start, so xvip did not join 224.0.0.18 there: restart xvip, or give                              it unicast_peers; the running config is kept",
                            c.name, c.interface
                        ),
                    );
                    return;
                }
                let ipv6 = !c.vip.ipv6().is_empty();
                let refusal = if ipv6 && !self.ipv6_interfaces.contains(&c.interface) {
                    Some(
                        "has IPv6 addresses on {if}, where no instance had any at start, so xvip opened no IPv6 VRRP socket there",
                    )
                } else if ipv6 && c.vrrp.unicast_peers6.is_empty() && !self.multicast6_interfaces.contains(&c.interface)
                {
                    Some(
                        "advertises IPv6 by multicast on {if}, where every IPv6 instance used IPv6 unicast_peers at start, so xvip did not join ff02::12 there",
                    )
                } else {
                    None
                };
                if let Some(why) = refusal {
                    out.log(
                        Level::Error,
                        format!(
                            "reload refused: instance {} {}: restart xvip; the running config is kept",
                            c.name,
                            why.replace("{if}", &c.interface)
                        ),
                    );
                    return;
                }
            }
        }
        if plan.is_empty() {
            out.log(Level::Info, "reload: nothing changed");
            self.reorder(&new);
            self.config = Arc::new(new);
            return;
        }
        out.log(Level::Info, format!("reload: {plan}"));

        // Those that leave (removed, or replaced by a new one of the same name) give up their addresses first.
        let mut kept: Vec<Instance> = Vec::new();
        for mut i in std::mem::take(&mut self.instances) {
            let name = i.name().to_owned();
            if plan.instances_removed.contains(&name) {
                i.remove(now, "removed by the reload", out);
                self.free_slots.push_back(i.slot);
            } else if plan.replaced(&name) {
                i.remove(now, "replaced by the reload", out);
                self.free_slots.push_back(i.slot);
            } else {
                kept.push(i);
            }
        }
        for i in &mut kept {
            if let (Some(changes), Some(c)) = (plan.changed(i.name()), new.instance(i.name())) {
                i.reconfigure(now, c.clone(), changes, out);
            }
        }
        let label = labelled(&new);
        for c in &new.instances {
            let Some((source, source6)) = sources.get(&c.name) else { continue };
            let slot = self.free_slots.pop_front().unwrap_or(u32::MAX);
            match Instance::new(c.clone(), slot, *source, *source6, label, &self.paths) {
                Ok(mut i) => {
                    i.start_checkers(&[], out);
                    if self.started {
                        let up = self.link_up(i.interface());
                        i.start(now, up, out);
                    }
                    kept.push(i);
                }
                Err(e) => {
                    // A config that passed the reader never has settings out of range.
                    out.log(Level::Error, format!("instance {}: VRRP settings: {e}; it does not run", c.name));
                    self.free_slots.push_back(slot);
                }
            }
        }
        for i in &mut kept {
            i.set_labelled(label);
        }
        self.instances = kept;
        self.reorder(&new);
        self.config = Arc::new(new);
        self.install_all(out);
    }

    /// Puts the instances in `config`'s order (the first is what the top of `xvip status` shows).
    fn reorder(&mut self, config: &Config) {
        let position = |name: &str| config.instances.iter().position(|c| c.name == name).unwrap_or(usize::MAX);
        self.instances.sort_by_key(|i| position(i.name()));
    }

    // ----- status -----

    /// A snapshot for `xvip status` and metrics, taken in O(services) (nothing is formatted here, so a client that
    /// polls status costs the advert thread next to nothing).
    pub fn view(&self, now: Duration) -> View {
        View { config: self.config.clone(), instances: self.instances.iter().map(|i| i.view(now)).collect() }
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
    /// In config order.
    pub instances: Vec<InstanceView>,
}

impl View {
    /// The status document, except what only the data plane knows (traffic counters, `xdp_mode`), which the shell
    /// adds. `epoch_unix_ms` is the wall-clock time of the engine's time 0.
    pub fn status(&self, epoch_unix_ms: u64) -> Status {
        Status::of_instances(self.instances.iter().map(|i| i.status(epoch_unix_ms)).collect())
    }

    /// Each instance's routers in the data plane, by instance name (to attribute the data plane's counters).
    pub fn routers(&self) -> BTreeMap<String, Vec<u32>> {
        self.instances.iter().map(|i| (i.config.name.clone(), i.router_indices())).collect()
    }
}

/// The election settings of an instance's router of one address family, advertising from `source`.
fn router_settings<A: packet::Address>(v: &config::Vrrp, source: A) -> Settings<A> {
    Settings {
        vrid: v.vrid,
        priority: v.priority,
        advert_interval: u16::try_from(v.advert_interval_ms / 10).unwrap_or(u16::MAX),
        preempt: v.preempt,
        preempt_delay: Duration::from_millis(u64::from(v.preempt_delay_ms)),
        primary_address: source,
    }
}

/// ` (N more since the last line)` when lines were left out.
fn more(left_out: u64) -> String {
    if left_out == 0 { String::new() } else { format!(" ({left_out} more since the last line)") }
}

fn more_comma(left_out: u64) -> String {
    if left_out == 0 { String::new() } else { format!(", {left_out} not logged") }
}
