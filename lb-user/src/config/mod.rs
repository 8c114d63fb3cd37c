//! The config file: its typed form, reading it with every problem located, and what a reload changes.
//!
//! The format is documented for users in `docs/config.md`, the reference of every key with its default, limits and
//! whether a reload applies it (a test checks that it lists every key the reader accepts);
//! `deploy/xvip.example.toml` is a commented example. Reading never touches the system (no interface lookup, no file
//! besides the config itself), so `xvip check` can validate a config on any machine.
//!
//! # Forms
//!
//! A file holds one or more VRRP instances. The single form (`[vip]`, `[vrrp]`, `[[service]]` at the top level) is
//! one instance named [`DEFAULT_INSTANCE`]; the list form writes each instance as `[[instance]]` with the same
//! tables inside (`[instance.vip]`, `[instance.vrrp]`, `[[instance.service]]`). A file uses one form or the other.
//! What is one per daemon (`interface` as the default, `xdp_mode`, `conntrack_entries`, `[control]`) stays at the
//! top level in both.
//!
//! Limits over the whole file, the sizes of the data plane's tables: at most [`lb_common::MAX_INSTANCES`]
//! instances, [`lb_common::MAX_VIPS`] addresses, [`lb_common::MAX_SERVICES`] services and
//! [`lb_common::MAX_BACKENDS`] backends in total.
//!
//! # Problems
//!
//! [`parse`] reports every problem it finds, each as `PATH:LINE:COL: message` with 1-based line and column, top to
//! bottom. Unknown keys are errors (a typo would otherwise silently leave a default in place) and come with the
//! closest known key. A TOML syntax error stops reading, since nothing after it can be trusted. Messages name keys
//! by their path, with 0-based indices for array entries: `service[1].backends[0].weight`.

mod diff;
mod read;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use diff::{InstancePlan, ReloadPlan, RestartNeeded, diff};

/// The checksum form of sent adverts is the codec's own type: one enum from the file to the wire.
pub use crate::vrrp::packet::ChecksumMode;

/// Smallest accepted `conntrack_entries`: below this the LRU would evict live flows on a lightly loaded node.
pub const CONNTRACK_ENTRIES_MIN: u32 = 1024;
/// Largest accepted `conntrack_entries` (16 Mi flows: 3.6 GiB of kernel memory for the connection and NAT tables,
/// 96 + 128 bytes per entry).
pub const CONNTRACK_ENTRIES_MAX: u32 = 16 * 1024 * 1024;
pub const DEFAULT_ADVERT_INTERVAL_MS: u32 = 1000;
pub const DEFAULT_PREEMPT: bool = true;
pub const DEFAULT_GARP_COUNT: u32 = 5;
pub const DEFAULT_GARP_REPEAT_DELAY_MS: u32 = 5000;
pub const DEFAULT_SOCKET: &str = "/run/xvip/xvip.sock";
/// The metrics listener's port when `metrics.listen` names only an address, and in every example.
pub const DEFAULT_METRICS_PORT: u16 = 9712;
/// `metrics.listen` when `[metrics]` is there without it: loopback only, so nothing is exposed by surprise.
pub const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_METRICS_PORT);
pub const DEFAULT_WEIGHT: u8 = 1;
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
pub const DEFAULT_HEALTH_INTERVAL_MS: u32 = 2000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u32 = 1000;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// The name of the one instance of a file in the single form (no `[[instance]]`).
pub const DEFAULT_INSTANCE: &str = "default";
/// Addresses one instance may hold: VRRP's address count is one byte.
pub const MAX_ADDRESSES_PER_INSTANCE: usize = 255;

/// A whole, valid config. Every value here has passed the checks in the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The top-level `interface`: where instances that name none run. Only optional in the list form when every
    /// instance names its own (see [`Config::default_interface`]).
    pub interface: Option<String>,
    pub xdp_mode: XdpMode,
    /// Size of the data plane's connection table and of its NAT table (LRU maps, fixed when the program is loaded).
    pub conntrack_entries: u32,
    /// Whether TCP connects made on the node itself to a VIP's services are balanced by the socket load balancer
    /// (cgroup programs on the cgroup v2 root, this network namespace only).
    pub local_clients: bool,
    pub control: Control,
    /// The Prometheus listener; `None` (no `[metrics]` table) = off.
    pub metrics: Option<Metrics>,
    /// One or more, in file order. Names are unique, VRIDs unique per interface, addresses unique over all
    /// instances.
    pub instances: Vec<Instance>,
}

/// One VRRP instance: a group of addresses that moves between nodes as one, with its election and services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Unique; in logs, status and metrics. [`DEFAULT_INSTANCE`] for a file in the single form.
    pub name: String,
    /// Where its adverts go and its addresses are answered: its own `interface`, else the top-level one.
    pub interface: String,
    pub vip: Vip,
    pub vrrp: Vrrp,
    /// In file order. Names and (port, protocol) pairs are unique within the instance; each service listens on
    /// every address of the instance.
    pub services: Vec<Service>,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic (skb) mode with a warning.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    /// One or more, in file order, unique over the whole file: all of them go in the advert's address list and
    /// are answered for while the instance is active. IPv4 and IPv6 may mix: VRRP then runs one router per family
    /// (same VRID, priority and timers), each advertising its family's addresses.
    pub addresses: Vec<IpAddr>,
    /// Informational: shown to people, and the name clients are likely to use (so a natural `server_name`).
    pub hostname: Option<String>,
}

impl Vip {
    /// The IPv4 addresses, in file order.
    pub fn ipv4(&self) -> Vec<Ipv4Addr> {
        self.addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// The IPv6 addresses, in file order.
    pub fn ipv6(&self) -> Vec<Ipv6Addr> {
        self.addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect()
    }

    /// The first address: what the single-address fields of `xvip status` show.
    pub fn first(&self) -> IpAddr {
        self.addresses.first().copied().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

impl Config {
    /// The instance called `name`.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// The node's main interface: the top-level `interface`, else the first instance's. The XDP program attaches
    /// here first, and backends not known to be elsewhere are reached through it.
    pub fn default_interface(&self) -> &str {
        self.interface.as_deref().or_else(|| self.instances.first().map(|i| i.interface.as_str())).unwrap_or("")
    }

    /// Every interface the node uses (the default first, then the instances'), each once.
    pub fn interfaces(&self) -> Vec<String> {
        let mut all = vec![self.default_interface().to_owned()];
        for i in &self.instances {
            if !all.contains(&i.interface) {
                all.push(i.interface.clone());
            }
        }
        all
    }

    /// Services over all instances.
    pub fn service_count(&self) -> usize {
        self.instances.iter().map(|i| i.services.len()).sum()
    }

    /// The size of the IPv6 connection table: `conntrack_entries` when some instance has IPv6 addresses, the
    /// smallest table (1024) otherwise (it is preallocated: an IPv4-only node does not pay for IPv6 flows; a reload
    /// that adds the first IPv6 addresses works with the small table until a restart).
    pub fn conntrack6_entries(&self) -> u32 {
        if self.instances.iter().any(|i| !i.vip.ipv6().is_empty()) { self.conntrack_entries } else { 1024 }
    }

    /// How many service indices the data plane needs: one per service and address family of its instance's
    /// addresses (an IPv6 VIP's service has its own Maglev table, over the IPv6 backends).
    pub fn service_tables(&self) -> usize {
        let families = |i: &Instance| usize::from(!i.vip.ipv4().is_empty()) + usize::from(!i.vip.ipv6().is_empty());
        self.instances.iter().map(|i| i.services.len() * families(i)).sum()
    }
}

/// VRRPv3 (RFC 9568) parameters of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vrrp {
    /// Virtual router ID, the same on every node of the group.
    pub vrid: u8,
    /// 1..=255; 255 means this node owns the address and always wins.
    pub priority: u8,
    /// A multiple of 10: VRRPv3 sends the interval in centiseconds.
    pub advert_interval_ms: u32,
    /// Whether a higher-priority backup takes over from a lower-priority active router.
    pub preempt: bool,
    /// How long to wait before preempting, so a node that just came up can settle first.
    pub preempt_delay_ms: u32,
    /// Source of IPv4 adverts; `None` = the interface's primary IPv4 address.
    pub source_address: Option<Ipv4Addr>,
    /// IPv4 adverts go to each of these; empty = multicast to 224.0.0.18.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// Source of IPv6 adverts (`source_address` written as an IPv6 address); `None` = the interface's link-local
    /// address.
    pub source_address6: Option<Ipv6Addr>,
    /// IPv6 adverts go to each of these (the IPv6 entries of `unicast_peers`); empty = multicast to ff02::12.
    pub unicast_peers6: Vec<Ipv6Addr>,
    /// Checksum for sent adverts; both forms are accepted on receive.
    pub checksum: ChecksumMode,
    /// Gratuitous ARPs sent on becoming active.
    pub garp_count: u32,
    /// Delay of the second gratuitous ARP burst; 0 = none.
    pub garp_repeat_delay_ms: u32,
    /// Period of gratuitous ARPs while active; 0 = off.
    pub garp_refresh_ms: u32,
    /// Lowered from the priority while any service has no healthy backend on this node.
    pub backend_loss_penalty: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// The Unix socket `xvip status` talks to (created with mode 0600).
    pub socket: PathBuf,
}

/// The Prometheus metrics listener (`docs/metrics.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// Where `GET /metrics` is served (TCP).
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { listen: DEFAULT_METRICS_LISTEN }
    }
}

/// One load-balanced port on the VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    /// At least one; (address, port) pairs are unique. With `Dsr`, every port equals the service port.
    pub backends: Vec<BackendCfg>,
    pub health: Health,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// The data plane rewrites the destination to the backend: backends need no change.
    Nat,
    /// The data plane rewrites only the MAC address: backends hold the VIP on `lo` and answer clients directly;
    /// they must be on the same L2 segment.
    Dsr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendCfg {
    /// Of a family the instance has a VIP of: IPv4 VIPs are balanced to the IPv4 backends, IPv6 VIPs to the IPv6
    /// ones.
    pub address: IpAddr,
    pub port: u16,
    /// Share of new flows, relative to the other backends of the service. 0 = draining: the backend takes no new
    /// flows and keeps its established ones while it stays healthy.
    pub weight: u8,
}

/// How a service's backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub check: CheckKind,
    /// Request path of http/https checks.
    pub path: String,
    /// Status an http/https check must get back.
    pub expect_status: u16,
    pub interval_ms: u32,
    /// At most `interval_ms`, so checks of one backend never overlap.
    pub timeout_ms: u32,
    /// Consecutive successes to mark a backend healthy.
    pub rise: u32,
    /// Consecutive failures to mark a backend unhealthy.
    pub fall: u32,
    /// Whether https checks verify the backend's certificate.
    pub tls_verify: bool,
    /// Trust roots for `tls_verify`; `None` = the system CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and verified; `None` = the backend's IP address. A valid rustls `ServerName`.
    pub server_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connection that is accepted.
    Tcp,
    /// An HTTP GET of `path` that answers `expect_status`.
    Http,
    /// The same over TLS.
    Https,
    /// No check: every backend counts as healthy.
    None,
}

impl Default for Control {
    fn default() -> Self {
        Control { socket: PathBuf::from(DEFAULT_SOCKET) }
    }
}

impl Default for Health {
    /// The defaults for a tcp service.
    fn default() -> Self {
        Health {
            check: CheckKind::Tcp,
            path: DEFAULT_HEALTH_PATH.to_owned(),
            expect_status: DEFAULT_EXPECT_STATUS,
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            tls_verify: true,
            ca_file: None,
            server_name: None,
        }
    }
}

impl Health {
    /// The defaults for a service of `protocol`: udp services are not checked, since there is no UDP check.
    pub fn default_for(protocol: Protocol) -> Self {
        let check = match protocol {
            Protocol::Tcp => CheckKind::Tcp,
            Protocol::Udp => CheckKind::None,
        };
        Health { check, ..Health::default() }
    }
}

impl Vrrp {
    /// A group member with every optional key at its default.
    pub fn with_ids(vrid: u8, priority: u8) -> Self {
        Vrrp {
            vrid,
            priority,
            advert_interval_ms: DEFAULT_ADVERT_INTERVAL_MS,
            preempt: DEFAULT_PREEMPT,
            preempt_delay_ms: 0,
            source_address: None,
            unicast_peers: Vec::new(),
            source_address6: None,
            unicast_peers6: Vec::new(),
            checksum: ChecksumMode::PseudoHeader,
            garp_count: DEFAULT_GARP_COUNT,
            garp_repeat_delay_ms: DEFAULT_GARP_REPEAT_DELAY_MS,
            garp_refresh_ms: 0,
            backend_loss_penalty: 0,
        }
    }
}

impl Protocol {
    /// The IP protocol number, as the data plane keys services.
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

/// The words used in the config file, so logs and `xvip status` speak the same language.
macro_rules! config_words {
    ($($ty:ty { $($variant:ident => $word:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// The word that selects this value in the config file.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $word),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

config_words! {
    XdpMode { Auto => "auto", Native => "native", Generic => "generic" }
    Protocol { Tcp => "tcp", Udp => "udp" }
    Forwarding { Nat => "nat", Dsr => "dsr" }
    CheckKind { Tcp => "tcp", Http => "http", Https => "https", None => "none" }
}

/// One thing wrong with a config file, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, as it was named to [`parse`] or [`load`].
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.path.display(), self.line, self.col, self.message)
    }
}

impl std::error::Error for Problem {}

/// Reads a config from `text`; `path` only names the file in problems.
///
/// # Errors
///
/// Every problem found, top to bottom (only the first one for a TOML syntax error).
pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Problem>> {
    let lines = tree::LineIndex::new(text);
    let locate = |(at, message): (usize, String)| {
        let (line, col) = lines.line_col(at);
        Problem { path: path.to_owned(), line, col, message }
    };
    let entries = match tree::parse_document(text) {
        Ok(entries) => entries,
        Err(error) => {
            let at = error.span().map_or(0, |span| span.start);
            // toml puts the detail on a second line ("invalid table header\nduplicate key ..."); a problem is one line.
            let detail: Vec<&str> = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let message = format!("invalid TOML: {}", detail.join(": "));
            return Err(vec![locate((at, message))]);
        }
    };
    read::read(&entries).map_err(|problems| problems.into_iter().map(locate).collect())
}

/// Reads and parses the config file at `path`.
///
/// # Errors
///
/// As [`parse`]; a file that cannot be read or is not UTF-8 is one problem.
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    let bytes = std::fs::read(path).map_err(|error| {
        vec![Problem {
            path: path.to_owned(),
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {error}"),
        }]
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse(path, &text),
        Err(error) => {
            let valid = error.utf8_error().valid_up_to();
            // The prefix up to the first bad byte is valid UTF-8 by definition, so this cannot fail.
            let prefix = std::str::from_utf8(&error.as_bytes()[..valid]).unwrap_or_default();
            let (line, col) = tree::LineIndex::new(prefix).line_col(valid);
            Err(vec![Problem {
                path: path.to_owned(),
                line,
                col,
                message: "the config file must be UTF-8 text; this byte is not".to_owned(),
            }])
        }
    }
}
