//! `xvip trace`: the data plane's decisions, streamed to the clients that ask for them on the control socket.
//!
//! The XDP program writes one record per decision about a matching frame to a VIP, through aya-log, while the
//! `TRACE` switch is on (`lb-ebpf/src/trace.rs`). This module owns what happens around that:
//! - [`Filter`]: what a client asks for (client prefix, VIP, service port, rate), and the one switch setting that
//!   covers every connected client ([`covering`]); each client still gets only what its own filter matches.
//! - [`Event`]: what a client receives, one JSON object per line (a [`Decision`] with the service's name, the
//!   backend, the NAT port, the reason; a [`Summary`] of what was held back; an error), and its line for people
//!   ([`Event::render`]).
//! - [`run`]: the task that owns the data plane's [`Trace`] handle. The switch is on exactly while at least one
//!   client is connected: a client that leaves is noticed within [`TICK`], and the handle switches tracing off
//!   when the task ends. Clients get events through bounded queues ([`QUEUE`]): one that does not keep up loses
//!   events (counted, and told so in its next summary), never the task's time.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{PROTO_TCP, PROTO_UDP, Reason, TRACE_IPV4, TRACE_IPV6, TRACE_MAX_RATE, TraceConfig, TraceRecord};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};

use crate::{
    config::Config,
    dataplane::{Trace, TraceCounters},
    engine::View,
};

/// Records per second and CPU when a client names no rate.
pub const DEFAULT_RATE: u32 = 100;
/// Clients tracing at once; more are refused.
pub const MAX_CLIENTS: usize = 8;
/// Events queued for one client; beyond that its events are dropped (and counted).
pub const QUEUE: usize = 256;
/// How often the task reads the counters, sends summaries, and notices clients that left.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the service names are refreshed from the running config while someone traces (a reload may change
/// them).
const NAMES_EVERY: u32 = 5;

/// A client's address prefix: `10.0.0.7`, `10.0.0.0/24`, `2001:db8::7` or `2001:db8::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

/// An address as the trace filter's bits: an IPv6 address as its 128 bits, an IPv4 one in the top 32 (the layout
/// of `lb_common::trace_halves`).
fn bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `like`'s family whose [`bits`] are `b`.
fn from_bits(like: IpAddr, b: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((b >> 96) as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(b)),
    }
}

/// The [`bits`] a prefix of `len` bits keeps.
fn mask(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
}

/// The two words of `lb_common::trace_halves` for [`bits`].
fn words(b: u128) -> [u64; 2] {
    [(b >> 64) as u64, b as u64]
}

/// The trace filter's family of an address (`lb_common::TRACE_IPV4` or `TRACE_IPV6`).
fn family(address: IpAddr) -> u8 {
    if address.is_ipv4() { TRACE_IPV4 } else { TRACE_IPV6 }
}

/// The longest prefix of `address`'s family: 32 or 128.
fn host_len(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}

impl Prefix {
    /// Whether `address` is in the prefix (never, for an address of the other family).
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4() && bits(address) & mask(self.len) == bits(self.address)
    }

    /// The longest prefix that contains both (`None`: they are of different families).
    fn common(self, other: Prefix) -> Option<Prefix> {
        if self.address.is_ipv4() != other.address.is_ipv4() {
            return None;
        }
        let mut len = self.len.min(other.len);
        while len > 0 && (bits(self.address) ^ bits(other.address)) & mask(len) != 0 {
            len -= 1;
        }
        Some(Prefix { address: from_bits(self.address, bits(self.address) & mask(len)), len })
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (text, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let address: IpAddr = text.parse().map_err(|_| format!("{s}: not an IPv4 or IPv6 address or prefix"))?;
        let most = host_len(address);
        let len = match len {
            Some(l) => {
                l.parse::<u8>().ok().filter(|l| *l <= most).ok_or(format!("{s}: a prefix length is 0..={most}"))?
            }
            None => most,
        };
        let masked = from_bits(address, bits(address) & mask(len));
        if masked != address {
            return Err(format!("{s}: host bits set (the prefix is {masked}/{len})"));
        }
        Ok(Prefix { address, len })
    }
}

impl TryFrom<String> for Prefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        p.to_string()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == host_len(self.address) {
            write!(f, "{}", self.address)
        } else {
            write!(f, "{}/{}", self.address, self.len)
        }
    }
}

/// What a client traces: decisions about flows of clients in `client`, to `vip`, to service port `port` (each
/// `None`: any), at most `rate` records per second per CPU. A client prefix or VIP of one family leaves out every
/// frame of the other; without either, both families are traced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub client: Option<Prefix>,
    #[serde(default)]
    pub vip: Option<IpAddr>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_rate")]
    pub rate: u32,
}

fn default_rate() -> u32 {
    DEFAULT_RATE
}

impl Default for Filter {
    fn default() -> Self {
        Filter { client: None, vip: None, port: None, rate: DEFAULT_RATE }
    }
}

impl Filter {
    /// A problem with the filter, for the client.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=TRACE_MAX_RATE).contains(&self.rate) {
            return Err(format!("rate {} is outside 1..={TRACE_MAX_RATE} records per second per CPU", self.rate));
        }
        if let (Some(c), Some(v)) = (self.client, self.vip)
            && c.address.is_ipv4() != v.is_ipv4()
        {
            return Err(format!("client {c} and vip {v} are of different address families: no frame matches both"));
        }
        Ok(())
    }

    /// The family the filter keeps to (`lb_common::TRACE_IPV4` or `TRACE_IPV6`), if its client prefix or VIP
    /// names one.
    fn family(&self) -> Option<u8> {
        self.client.map(|c| c.address).or(self.vip).map(family)
    }

    /// Whether the decision `r` is one this filter asks for.
    pub fn matches(&self, r: &TraceRecord) -> bool {
        self.client.is_none_or(|p| p.contains(r.address(&r.client)))
            && self.vip.is_none_or(|v| v == r.address(&r.to))
            && self.port.is_none_or(|p| p.to_be_bytes() == r.service_port)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.client {
            parts.push(format!("client {c}"));
        }
        if let Some(v) = self.vip {
            parts.push(format!("vip {v}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if parts.is_empty() {
            parts.push("every frame to a VIP".to_string());
        }
        write!(f, "{}, at most {} per second per CPU", parts.join(", "), self.rate)
    }
}

/// The switch setting that lets through everything any of `filters` asks for (the program filters coarsely, each
/// client's own filter is applied to what comes back): the family, the common client prefix, the VIP and port
/// where all agree, the highest rate. `None` without filters: off.
pub fn covering<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> Option<TraceConfig> {
    let mut filters = filters.into_iter();
    let first = filters.next()?;
    let (mut family, mut client, mut vip, mut port, mut rate) =
        (first.family(), first.client, first.vip, first.port, first.rate);
    for f in filters {
        family = family.filter(|a| f.family() == Some(*a));
        client = match (client, f.client) {
            (Some(a), Some(b)) => a.common(b),
            _ => None,
        };
        vip = vip.filter(|v| f.vip == Some(*v));
        port = port.filter(|p| f.port == Some(*p));
        rate = rate.max(f.rate);
    }
    let rate = rate.clamp(1, TRACE_MAX_RATE);
    let (client, client_mask) = client.map_or((0, 0), |c| (bits(c.address), mask(c.len)));
    Some(TraceConfig {
        interval_ns: 1_000_000_000 / u64::from(rate),
        client: words(client),
        client_mask: words(client_mask),
        vip: words(vip.map_or(0, bits)),
        port: port.unwrap_or(0).to_be_bytes(),
        family: family.unwrap_or(0),
        ..TraceConfig::default()
    })
}

/// One decision of the data plane, as clients receive it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub time_unix_ms: u64,
    /// The instance and service the flow belongs to (`None`: no service on that VIP, port and protocol).
    pub instance: Option<String>,
    pub service: Option<String>,
    /// The frame as it arrived: `address:port` or `[address]:port` (just the address for ICMP, ICMPv6 and other
    /// protocols).
    pub from: String,
    pub to: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    pub protocol: String,
    /// The TCP flags set (`SYN`, `ACK`, ...); empty for other protocols.
    pub tcp_flags: Vec<String>,
    /// The flow: its client and the VIP with the service port. For a backend's reply through NAT these come from
    /// the translation, so they differ from `from` and `to`.
    pub client: String,
    pub vip: String,
    /// Where the flow goes (`None`: nowhere), and the source port the NAT uses towards it (`None`: DSR).
    pub backend: Option<String>,
    pub nat_port: Option<u16>,
    /// The data plane's reason (as in `xvip status`' data plane counters) and the XDP action: `drop`, `pass`,
    /// `tx` (sent back out of the interface it came in on), `redirect` (sent out of another interface).
    pub reason: String,
    pub action: String,
    /// The interface the frame arrived on.
    pub interface: String,
}

/// Decisions the program or the agent held back since the client's last summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Over the rate limit (for every client: the limit is the highest any client asked for).
    pub suppressed: u64,
    /// With the program's log ring nearly full (the daemon did not read it in time).
    pub ring_full: u64,
    /// Queued for this client while its queue was full (it did not read in time).
    pub dropped: u64,
}

impl Summary {
    fn is_empty(&self) -> bool {
        self.suppressed == 0 && self.ring_full == 0 && self.dropped == 0
    }
}

/// What a trace client receives, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The first line: tracing is on for this client.
    Tracing {
        filter: Filter,
    },
    Decision(Box<Decision>),
    Summary(Summary),
    /// The daemon refuses the request (the last line).
    Error(String),
}

impl Event {
    /// The line for people (no newline).
    pub fn render(&self) -> String {
        match self {
            Event::Tracing { filter } => format!("# tracing {filter}; Ctrl-C to stop"),
            Event::Error(e) => format!("# error: {e}"),
            Event::Summary(s) => {
                let mut parts = Vec::new();
                if s.suppressed > 0 {
                    parts.push(format!("{} over the rate limit", s.suppressed));
                }
                if s.ring_full > 0 {
                    parts.push(format!("{} with the log ring full", s.ring_full));
                }
                if s.dropped > 0 {
                    parts.push(format!("{} this client did not read in time", s.dropped));
                }
                format!("# not shown: {}", parts.join(", "))
            }
            Event::Decision(d) => {
                let mut line = format!("{} ", clock(d.time_unix_ms));
                line.push_str(&match (&d.instance, &d.service) {
                    (Some(i), Some(s)) => format!("{i}/{s}"),
                    _ => "-".to_string(),
                });
                let _ = write!(line, " {} {} -> {}", d.protocol, d.from, d.to);
                if !d.tcp_flags.is_empty() {
                    let _ = write!(line, " [{}]", d.tcp_flags.join(","));
                }
                let _ = write!(line, " on {}: {} ({})", d.interface, d.reason, d.action);
                if let Some(b) = &d.backend {
                    let _ = write!(line, " backend {b}");
                }
                if let Some(p) = d.nat_port {
                    let _ = write!(line, " nat port {p}");
                }
                if d.client != d.from {
                    let _ = write!(line, " client {} to {}", d.client, d.vip);
                }
                line
            }
        }
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in ms.
fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000)
}

/// The (instance, service) of each (VIP, port, protocol) of the running config.
#[derive(Clone, Debug, Default)]
pub struct Names(HashMap<(IpAddr, u16, u8), (String, String)>);

impl Names {
    pub fn of(config: &Config) -> Names {
        let mut names = HashMap::new();
        for instance in &config.instances {
            for &address in &instance.vip.addresses {
                for service in &instance.services {
                    names.insert(
                        (address, service.port, service.protocol.ip_number()),
                        (instance.name.clone(), service.name.clone()),
                    );
                }
            }
        }
        Names(names)
    }

    /// The decision `r` describes, for clients; `interface` names the ifindex it arrived on.
    pub fn decision(&self, r: &TraceRecord, time_unix_ms: u64, interface: String) -> Decision {
        let port = u16::from_be_bytes;
        let ported = r.protocol == PROTO_TCP || r.protocol == PROTO_UDP;
        let endpoint = |a: &[u8; 16], p: [u8; 2]| {
            let address = r.address(a);
            if ported { SocketAddr::new(address, port(p)).to_string() } else { address.to_string() }
        };
        let names = self.0.get(&(r.address(&r.to), port(r.service_port), r.protocol));
        let reason = Reason::ALL
            .get(usize::from(r.reason))
            .map_or_else(|| format!("reason {}", r.reason), |r| r.name().to_string());
        Decision {
            time_unix_ms,
            instance: names.map(|n| n.0.clone()),
            service: names.map(|n| n.1.clone()),
            from: endpoint(&r.from, r.from_port),
            to: endpoint(&r.to, r.to_port),
            protocol: match r.protocol {
                PROTO_TCP => "tcp".into(),
                PROTO_UDP => "udp".into(),
                1 => "icmp".into(),
                58 => "icmpv6".into(),
                p => p.to_string(),
            },
            tcp_flags: if r.protocol == PROTO_TCP { flags(r.tcp_flags) } else { Vec::new() },
            client: endpoint(&r.client, r.client_port),
            vip: endpoint(&r.to, r.service_port),
            backend: (r.backend != [0; 16]).then(|| endpoint(&r.backend, r.backend_port)),
            nat_port: (r.nat_port != [0; 2]).then(|| port(r.nat_port)),
            reason,
            action: match r.action {
                1 => "drop".into(),
                2 => "pass".into(),
                3 => "tx".into(),
                4 => "redirect".into(),
                a => format!("action {a}"),
            },
            interface,
        }
    }
}

fn flags(bits: u8) -> Vec<String> {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    NAMES.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| (*n).to_string()).collect()
}

/// A client's request: its filter and the queue its events go to.
pub struct Subscription {
    pub filter: Filter,
    pub events: mpsc::Sender<Event>,
}

struct Client {
    filter: Filter,
    events: mpsc::Sender<Event>,
    /// Held back since its last summary went out.
    pending: Summary,
}

impl Client {
    fn send(&mut self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.pending.dropped += 1;
        }
    }
}

/// The clients and what the switch says, without I/O: [`run`] feeds it records, counters and time.
#[derive(Default)]
pub struct Clients {
    clients: Vec<Client>,
    /// What the switch was last set to (`None`: off).
    installed: Option<TraceConfig>,
    /// The program's counters at the last tick.
    counters: TraceCounters,
}

impl Clients {
    /// Adds a client (or refuses it with an error event).
    pub fn add(&mut self, sub: Subscription) {
        if let Err(e) = sub.filter.check() {
            let _ = sub.events.try_send(Event::Error(e));
            return;
        }
        if self.clients.len() >= MAX_CLIENTS {
            let _ = sub.events.try_send(Event::Error(format!("{MAX_CLIENTS} clients trace already; try later")));
            return;
        }
        let mut client = Client { filter: sub.filter.clone(), events: sub.events, pending: Summary::default() };
        client.send(Event::Tracing { filter: sub.filter });
        self.clients.push(client);
    }

    /// Forgets clients that left.
    pub fn prune(&mut self) {
        self.clients.retain(|c| !c.events.is_closed());
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The switch setting the clients need, if it differs from what is installed (`Some(None)`: switch off).
    pub fn wanted_change(&self) -> Option<Option<TraceConfig>> {
        let wanted = covering(self.clients.iter().map(|c| &c.filter));
        (wanted != self.installed).then_some(wanted)
    }

    pub fn installed(&mut self, config: Option<TraceConfig>) {
        self.installed = config;
    }

    /// Hands `decision` (made from `record`) to every client whose filter matches it.
    pub fn dispatch(&mut self, record: &TraceRecord, decision: &Decision) {
        for c in &mut self.clients {
            if c.filter.matches(record) {
                c.send(Event::Decision(Box::new(decision.clone())));
            }
        }
    }

    /// Once per tick: the program's counters now. Every client is told what was held back since its last summary.
    pub fn tick(&mut self, now: TraceCounters) {
        let suppressed = now.suppressed.saturating_sub(self.counters.suppressed);
        let ring_full = now.ring_full.saturating_sub(self.counters.ring_full);
        self.counters = now;
        for c in &mut self.clients {
            c.pending.suppressed += suppressed;
            c.pending.ring_full += ring_full;
            if !c.pending.is_empty() && c.events.try_send(Event::Summary(c.pending)).is_ok() {
                c.pending = Summary::default();
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The name of interface `ifindex` (its number when it has none any more).
fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// The trace task: serves `subscriptions` until the agent drops its sender, reading the program's records as
/// they come and asking `engine` for the running config's names (never waiting on it). Switches tracing off when
/// it ends (the handle's drop).
pub async fn run(
    trace: Trace,
    mut subscriptions: mpsc::Receiver<Subscription>,
    engine: mpsc::Sender<oneshot::Sender<View>>,
) {
    // SAFETY: `Trace` owns the log ring's descriptor (in its aya-log reader) for its whole life and always returns
    // that one.
    let mut ring = match unsafe { AsyncFd::register_with_interest(trace, Interest::READABLE) } {
        Ok(ring) => ring,
        Err(e) => {
            log::warn!("xvip trace is not available: waiting on the data plane's log ring: {e}");
            while let Some(sub) = subscriptions.recv().await {
                let _ = sub.events.try_send(Event::Error(format!("tracing is not available on this node: {e}")));
            }
            return;
        }
    };
    let mut clients = Clients::default();
    let mut config: Option<Arc<Config>> = None;
    let mut names = Names::default();
    let mut names_rx: Option<oneshot::Receiver<View>> = None;
    let mut interfaces: BTreeMap<u32, String> = BTreeMap::new();
    let mut ticks = 0u32;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Whether to read the ring, and whether the set of clients may have changed.
        let (mut read, mut changed) = (false, false);
        let mut ask_names = false;
        tokio::select! {
            sub = subscriptions.recv() => {
                let Some(sub) = sub else { return };
                clients.add(sub);
                (changed, ask_names) = (true, true);
            }
            guard = ring.readable_mut() => {
                match guard {
                    // Cleared before reading: a record written meanwhile makes the ring readable again.
                    Ok(mut guard) => {
                        guard.clear_ready();
                        read = true;
                    }
                    Err(e) => {
                        log::warn!("trace: waiting on the data plane's log ring: {e}");
                        tokio::time::sleep(TICK).await;
                    }
                }
            }
            view = async { names_rx.as_mut().expect("guarded by the condition").await }, if names_rx.is_some() => {
                names_rx = None;
                if let Ok(view) = view
                    && config.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &view.config))
                {
                    names = Names::of(&view.config);
                    config = Some(view.config);
                }
            }
            _ = tick.tick() => {
                clients.prune();
                (read, changed) = (true, true);
                match ring.get_ref().counters() {
                    Ok(counters) => clients.tick(counters),
                    Err(e) => log::debug!("trace: {e}"),
                }
                ticks = ticks.wrapping_add(1);
                ask_names = !clients.is_empty() && ticks.is_multiple_of(NAMES_EVERY);
            }
        }
        if ask_names && names_rx.is_none() {
            let (tx, rx) = oneshot::channel();
            // Shared with status requests; when it is full, the advert thread is busy: next time.
            if engine.try_send(tx).is_ok() {
                names_rx = Some(rx);
            }
        }
        if read {
            let now = unix_ms();
            for record in ring.get_mut().read() {
                if interfaces.len() > 64 {
                    interfaces.clear();
                }
                let interface =
                    interfaces.entry(record.ifindex).or_insert_with(|| interface_name(record.ifindex)).clone();
                clients.dispatch(&record, &names.decision(&record, now, interface));
            }
        }
        // Only after a new client or a tick, so a failing write is retried (and logged) at most once per tick.
        if changed && let Some(change) = clients.wanted_change() {
            match ring.get_mut().set(change) {
                Ok(()) => {
                    match &change {
                        Some(_) => log::info!("trace: on for {} client(s)", clients.len()),
                        None => log::info!("trace: off (no client left)"),
                    }
                    clients.installed(change);
                }
                Err(e) => log::warn!("trace: switching the data plane's trace records failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
