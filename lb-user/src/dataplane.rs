//! The only module that touches the eBPF object: load, attach, write the maps, read the counters, detach.
//!
//! The rest of the agent describes what it wants (each router's role, the VIPs, the services and their backends
//! with health and MAC addresses); this module turns that into map entries. It owns the map layout: the `VIPS`
//! entries and their filter bits, which service holds which `SERVICES` entry (an address, port and protocol),
//! service indices, backend slots, and the double-buffered Maglev tables (see `lb_common::ServiceValue`).
//!
//! Three handles write the maps, each from its own thread or task in the agent: [`DataPlane`] (VIPs, services,
//! backends, tables; slow work), [`NodeControl`] (the routers' active flags and the dead-man heartbeat; one small
//! write each, on the advert path) and [`Trace`] (the `xvip trace` switch; it also reads the program's log ring).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, ProgramArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp,
        XdpMode, cgroup_sock_addr::CgroupSockAddrLinkId, tc::SchedClassifierLinkId, tc::TcAttachOptions,
        xdp::XdpLinkId,
    },
};
use lb_common::{
    Backend, Endpoint, Endpoint6, FORWARD_NAT, FlowKey, FlowKey6, FlowValue, FlowValue6, Heartbeat, LOCAL_ADDRESSES,
    Listener, Listener6, LocalShare, MAGLEV_CHUNK, MAGLEV_CHUNKS, MAGLEV_M, MAX_BACKENDS, MAX_ROUTERS, MAX_SERVICES,
    MaglevChunk, NAT_ESTABLISHED, NAT_FIN_BACKEND, NAT_FIN_CLIENT, NAT_RST, NAT6_ICMP_SLOT, NAT6_SLOT, NatKey, NatKey6,
    NatValue, NatValue6, NodeConfig, PROTO_UDP, REASON_COUNT, Reason, SLOT_EMPTY, SLOT_SHARED, SOCKET_PEERS_ENTRIES,
    ServiceKey, ServiceKey6, ServiceValue, TRACE_TARGET, TraceConfig, TraceRecord, TraceState, Traffic, Vip6Entry,
    VipEntry, VipValue, ipv6_halves, listener_slot, listener6_slot, maglev_position, names, nat_source_port_bit,
    router_counter, vip_fold, vip6_fold,
};

use crate::{maglev, netif};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XVIP_EBPF_OBJECT_PATH"));

/// How to attach the program: the config's `xdp_mode` itself (one enum from the file to the kernel).
pub type AttachMode = crate::config::XdpMode;

/// Why the program could not be attached, decided from the kernel's error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachFailure {
    /// EBUSY: another XDP program is attached to the interface.
    Busy,
    /// ENODEV: no interface by that name.
    NoDevice,
    /// EOPNOTSUPP: the driver does not support this mode.
    Unsupported,
    Other,
}

/// Attaching the XDP program failed.
#[derive(Debug, thiserror::Error)]
#[error("attaching XDP in {mode} mode to {interface} failed: {source}; {hint}", hint = self.hint())]
pub struct AttachError {
    pub interface: String,
    pub mode: &'static str,
    pub failure: AttachFailure,
    #[source]
    pub source: aya::programs::ProgramError,
}

impl AttachError {
    fn hint(&self) -> &'static str {
        match self.failure {
            AttachFailure::Busy => {
                "another XDP program is already attached there: remove it (`ip link set dev IFACE xdp off`) or stop \
                 the process that owns it"
            }
            AttachFailure::NoDevice => {
                "no interface by that name: check `interface` in the config (`ip link` lists them)"
            }
            AttachFailure::Unsupported => {
                "the driver does not support this XDP mode: set `xdp_mode = \"generic\"` or `\"auto\"`"
            }
            AttachFailure::Other => "check that the interface exists and is up, and that xvip runs as root",
        }
    }
}

/// The OS error code somewhere in `error`'s source chain.
fn os_error(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(code) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) {
            return Some(code);
        }
        next = e.source();
    }
    None
}

/// What the data plane could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Attach(Box<AttachError>),
    /// A step the kernel (or aya on its behalf) refused: `what` says which step.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<KernelError>,
    },
    /// The eBPF object lacks a program or map this code expects, or has it with another type: the object and the
    /// agent come from different builds.
    #[error("the eBPF object {0}: it does not match this build of xvip (rebuild with `cargo xtask build-ebpf`)")]
    Object(String),
    /// More than the maps were sized for at load time.
    #[error("{0}")]
    Full(String),
    /// A request that does not fit the data plane's state (already attached, an unknown interface).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Interface(#[from] netif::Error),
    #[error("building the Maglev table for service {service}: {source}")]
    Maglev {
        service: String,
        #[source]
        source: maglev::MaglevError,
    },
}

impl From<AttachError> for Error {
    fn from(e: AttachError) -> Self {
        Error::Attach(Box::new(e))
    }
}

/// The kernel's or aya's own error under [`Error::Kernel`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Os(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] aya_log::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.context(what)` on a kernel call's result: the call sites name the step, the error keeps its type.
trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<KernelError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Kernel { what: what.to_string(), source: Box::new(e.into()) })
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Kernel { what: what(), source: Box::new(e.into()) })
    }
}

/// Sizes and times fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Entries of the connection table and of the NAT table (both LRU; see docs/nat.md for the memory).
    pub conntrack_entries: u32,
    /// Entries of the IPv6 connection table (`CONNTRACK6`, LRU, 128 B each): `conntrack_entries` for a config with
    /// IPv6 addresses, the minimum (1024) otherwise, so IPv4-only nodes do not pay for it.
    pub conntrack6_entries: u32,
    /// Services the Maglev array has room for (two tables of `MAGLEV_CHUNKS` chunks each, 512 KiB per service).
    pub service_capacity: u32,
    /// Idle time after which a UDP NAT translation is gone.
    pub nat_udp_timeout: Duration,
    /// How long a TCP NAT translation closed by both sides (or reset) keeps its port after its last packet.
    pub nat_closed_grace: Duration,
    /// Idle time after which an embryonic TCP NAT translation (the backend never answered but with SYN/ACK or
    /// RST) may be taken by another flow.
    pub nat_embryonic_timeout: Duration,
    /// Idle time after which an established TCP NAT translation may be taken by another flow.
    pub nat_established_timeout: Duration,
    /// Whether the program keeps its `xvip trace` hook. `false` has the verifier prune it at load (the program
    /// then never traces): benchmarks compare the two to isolate what the switched-off hook costs.
    pub trace_hook: bool,
    /// Another eBPF object to load instead of the one embedded at build time ([`EBPF_OBJECT`]); it must declare the
    /// same programs and maps. Benchmarks use it to compare an earlier build with this one in one run.
    pub object: Option<&'static [u8]>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            conntrack_entries: lb_common::DEFAULT_CONNTRACK_ENTRIES,
            conntrack6_entries: lb_common::DEFAULT_CONNTRACK_ENTRIES,
            service_capacity: 8,
            nat_udp_timeout: Duration::from_nanos(lb_common::DEFAULT_NAT_UDP_TIMEOUT_NS),
            nat_closed_grace: Duration::from_nanos(lb_common::DEFAULT_NAT_CLOSED_GRACE_NS),
            nat_embryonic_timeout: Duration::from_nanos(lb_common::DEFAULT_NAT_EMBRYONIC_TIMEOUT_NS),
            nat_established_timeout: Duration::from_nanos(lb_common::DEFAULT_NAT_ESTABLISHED_TIMEOUT_NS),
            trace_hook: true,
            object: None,
        }
    }
}

/// The outcome of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// The XDP verdict (XDP_DROP = 1, XDP_PASS = 2, XDP_TX = 3, XDP_REDIRECT = 4).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Average run time per repetition, as the kernel measured it.
    pub duration: Duration,
}

/// A service of an instance: how the agent names it to the data plane (service names are unique per instance).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub instance: String,
    pub service: String,
}

impl ServiceId {
    pub fn new(instance: &str, service: &str) -> Self {
        ServiceId { instance: instance.to_owned(), service: service.to_owned() }
    }
}

/// A service of the one instance of a single-form config (`default`): what fixtures and tools name by service
/// alone.
impl From<&str> for ServiceId {
    fn from(service: &str) -> Self {
        ServiceId::new(crate::config::DEFAULT_INSTANCE, service)
    }
}

impl From<&ServiceId> for ServiceId {
    fn from(id: &ServiceId) -> Self {
        id.clone()
    }
}

impl std::fmt::Display for ServiceId {
    /// `api/kube-apiserver` (instance names hold no `/`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.instance, self.service)
    }
}

/// A VIP as the data plane needs it: the router whose flag governs it, its flow hash seed, and where it is
/// answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub address: Ipv4Addr,
    /// `lb_common::router_slot` of its instance (IPv4).
    pub router: u32,
    pub hash_seed: u32,
    /// Its instance's interface: ARP for the address is answered there only, with that interface's MAC. `None`:
    /// the node's interface and MAC as they are when the VIP is written (any interface if the program is not
    /// attached yet: fixtures that attach nowhere).
    pub interface: Option<String>,
}

/// An IPv6 VIP as the data plane needs it: the router whose flag governs it (its instance's IPv6 router), its flow
/// hash seed, and where it is answered. The program answers Neighbor Solicitations and pings for it while that
/// router is active, and sends its services' TCP and UDP to their IPv6 backends (DSR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip6Spec {
    pub address: Ipv6Addr,
    /// `lb_common::router_slot(instance, FAMILY_IPV6)` of its instance.
    pub router: u32,
    /// `lb_common::group_seed6` of the address and its instance's VRID.
    pub hash_seed: u32,
    /// Its instance's interface: solicitations for the address are answered there only, with that interface's MAC.
    /// `None`: the node's interface and MAC as they are when the VIP is written (any interface if the program is
    /// not attached yet: fixtures that attach nowhere).
    pub interface: Option<String>,
}

/// What a service looks like to the data plane. Its IPv4 addresses are balanced to its IPv4 backends, its IPv6
/// addresses to its IPv6 backends, each family with a service index and Maglev table of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The VIPs it listens on (its instance's addresses).
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub protocol: u8,
    pub forwarding: u8,
    pub backends: Vec<BackendSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u8,
    pub healthy: bool,
    /// MAC of the backend or next hop; `None` while unresolved (the backend is then left out of the table).
    pub mac: Option<[u8; 6]>,
    /// Interface towards the backend; 0 = the interface the program is attached to. Another interface gets the
    /// program too (the backend's replies arrive there), and frames to the backend carry its MAC as source.
    pub ifindex: u32,
}

impl ServiceSpec {
    /// The part of the service of one address family (`ipv6`): its addresses and backends of that family.
    fn family(&self, ipv6: bool) -> ServiceSpec {
        ServiceSpec {
            addresses: self.addresses.iter().filter(|a| a.is_ipv6() == ipv6).copied().collect(),
            backends: self.backends.iter().filter(|b| b.address.is_ipv6() == ipv6).cloned().collect(),
            ..self.clone()
        }
    }
}

/// An IPv4 address's octets (all zero for an IPv6 one: never asked for once a spec is split by family).
fn octets4(address: IpAddr) -> [u8; 4] {
    match address {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [0; 4],
    }
}

impl BackendSpec {
    /// Whether the Maglev table may point at this backend: the one rule for a usable backend (healthy, its MAC
    /// known, a weight above 0), also used for the backend-loss penalty.
    pub fn usable(&self) -> bool {
        self.healthy && self.mac.is_some() && self.weight > 0
    }

    /// Whether, at one of the node's own addresses, this backend gets local clients from the socket load balancer's
    /// share ([`local_share`]) rather than from the Maglev table: healthy and weighted, but not in the table yet
    /// (no MAC until the engine has marked it local).
    fn awaits_local_share(&self) -> bool {
        self.healthy && self.weight > 0 && !self.usable()
    }
}

/// The socket load balancer's share (`SOCKET_LOCAL`) for a service whose Maglev table holds `members`: `waiting`,
/// its backend at one of the node's own addresses that is in no table yet (slot and weight), gets its weight out of
/// the table's weights and its own; none, no share.
fn local_share(members: &[maglev::MaglevBackend], waiting: Option<(u32, u8)>) -> LocalShare {
    let Some((backend, weight)) = waiting else {
        return LocalShare::default();
    };
    let maglev_weight: u32 = members.iter().map(|m| u32::from(m.weight)).sum();
    LocalShare { backend, weight: u32::from(weight), total: maglev_weight + u32::from(weight), _pad: 0 }
}

/// A backend of a service, as counters name it.
pub type BackendKey = (ServiceId, IpAddr, u16);

/// Per-CPU counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `Reason as usize`.
    pub reasons: Vec<u64>,
    /// The frames of each router's VIPs, indexed by `Reason as usize`: every router a VIP names.
    pub routers: BTreeMap<u32, Vec<u64>>,
    pub services: BTreeMap<ServiceId, Traffic>,
    pub backends: BTreeMap<BackendKey, Traffic>,
    /// Open flows per backend, from [`DataPlane::flows_per_backend`]; only read while some backend drains (the
    /// scan costs two syscalls per connection-table entry).
    pub flows: Option<BTreeMap<BackendKey, u64>>,
}

impl Counters {
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons.get(reason as usize).copied().unwrap_or(0)
    }

    /// Frames of `router`'s VIPs counted under `reason`.
    pub fn router_reason(&self, router: u32, reason: Reason) -> u64 {
        self.routers.get(&router).and_then(|r| r.get(reason as usize)).copied().unwrap_or(0)
    }
}

/// One walk over the connection and NAT tables ([`DataPlane::scan_tables`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableScan {
    /// Entries in `CONNTRACK` and `CONNTRACK6` (every flow the program remembers, open or not).
    pub conntrack_entries: u64,
    /// Entries in `NAT` (one per NAT flow, kept until its port is reclaimed).
    pub nat_entries: u64,
    /// `max_entries` of each of the two tables (both LRU: when full, the least recently used entry is evicted).
    pub capacity: u64,
    /// Open flows per backend; see [`DataPlane::flows_per_backend`].
    pub flows: BTreeMap<BackendKey, u64>,
}

/// The `SERVICES` keys of a service: its port and protocol on each of its addresses.
fn service_keys(spec: &ServiceSpec) -> Vec<ServiceKey> {
    spec.addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(ServiceKey::new(v4.octets(), spec.port.to_be_bytes(), spec.protocol)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The `SERVICES6` keys of a service: its port and protocol on each of its IPv6 addresses.
fn service_keys6(spec: &ServiceSpec) -> Vec<ServiceKey6> {
    spec.addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) => Some(ServiceKey6::new(v6.octets(), spec.port.to_be_bytes(), spec.protocol)),
            IpAddr::V4(_) => None,
        })
        .collect()
}

/// The listener entries a reload is about to (re)write, which a service leaving them must not remove: the `SERVICES`
/// entries with the service taking each, and the `SERVICES6` entries.
#[derive(Default)]
struct Keep<'a> {
    v4: HashMap<ServiceKey, &'a ServiceId>,
    v6: HashSet<ServiceKey6>,
}

/// What this module remembers of the IPv6 part of a service it installed (DSR to its IPv6 backends).
struct Installed6 {
    /// Its `SERVICES6` entries (one per IPv6 address of its instance).
    keys: Vec<ServiceKey6>,
    index: u32,
    /// Which of the two Maglev tables is live.
    table: u32,
    /// Backend slots by (address, port).
    backends: HashMap<(Ipv6Addr, u16), u32>,
    /// Interfaces its backends are reached through.
    ifindexes: Vec<u32>,
    /// A NAT service's backend endpoints, referenced in `NAT_BACKENDS6`.
    nat_endpoints: Vec<Endpoint6>,
}

/// What this module remembers of a service it installed.
struct Installed {
    /// Its `SERVICES` entries (one per address of its instance).
    keys: Vec<ServiceKey>,
    /// DSR or NAT, as last written.
    forwarding: u8,
    index: u32,
    /// Which of the two Maglev tables is live. A table is always written whole before it goes live, so a reused
    /// index never shows a removed service's slots.
    table: u32,
    /// Backend slots by (address, port).
    backends: HashMap<(IpAddr, u16), u32>,
    /// What this service put into `NAT_BACKENDS` (NAT services: every configured backend).
    nat_endpoints: Vec<Endpoint>,
    /// Interfaces its backends are reached through.
    ifindexes: Vec<u32>,
}

pub struct DataPlane {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    /// The socket load balancer's links (connect4 ... recvmsg4 and their IPv6 twins: by program name) and the
    /// cgroup they are attached to. Held only by this process's file descriptors, never pinned: they go when the
    /// process does.
    socket_links: Option<(Vec<(&'static str, CgroupSockAddrLinkId)>, std::path::PathBuf)>,
    /// The cookie of the network namespace the data plane was loaded in (0: unknown), the only one whose connects
    /// the socket load balancer rewrites.
    netns_cookie: u64,
    /// How the program was attached to the node's interface; other interfaces get the same mode.
    mode: Option<AttachMode>,
    /// Other interfaces the program is attached to (backends reached through them), by ifindex.
    extra_links: BTreeMap<u32, XdpLinkId>,
    /// Interfaces where attaching failed (logged once each).
    extra_failed: std::collections::BTreeSet<u32>,
    /// The egress program's tcx links, by ifindex: one on every interface the XDP program is attached to. bpf_links
    /// held by this process only (never pinned): they go with it.
    egress_links: BTreeMap<u32, SchedClassifierLinkId>,
    node: NodeConfig,
    /// The `HEARTBEAT` entry as last written here (until the agent takes it over with [`DataPlane::node_control`]).
    beat: Heartbeat,
    /// The `VIPS` entries written, by address.
    vips: BTreeMap<Ipv4Addr, VipValue>,
    /// The `VIPS6` entries written, by address.
    vips6: BTreeMap<Ipv6Addr, VipValue>,
    /// The `VIP_TABLE` element holding each VIP.
    vip_elements: BTreeMap<Ipv4Addr, u32>,
    /// Free `VIP_TABLE` elements, oldest-freed first, so an element is reused as late as possible.
    free_vip_elements: std::collections::VecDeque<u32>,
    /// The `LISTENER_TABLE` element holding each `SERVICES` entry.
    listener_elements: BTreeMap<ServiceKey, u32>,
    /// Free `LISTENER_TABLE` elements, oldest-freed first.
    free_listener_elements: std::collections::VecDeque<u32>,
    /// The `VIP6_TABLE` element holding each IPv6 VIP, and the free ones (as for IPv4).
    vip6_elements: BTreeMap<Ipv6Addr, u32>,
    free_vip6_elements: std::collections::VecDeque<u32>,
    /// The `LISTENER6_TABLE` element holding each `SERVICES6` entry, and the free ones.
    listener6_elements: BTreeMap<ServiceKey6, u32>,
    free_listener6_elements: std::collections::VecDeque<u32>,
    services: BTreeMap<ServiceId, Installed>,
    /// The IPv6 parts of services (those of instances with IPv6 addresses).
    services6: BTreeMap<ServiceId, Installed6>,
    /// Which service's value sits in each written `SERVICES6` entry (removed only by its owner, as `slot_owners`).
    owners6: HashMap<ServiceKey6, ServiceId>,
    free_services: Vec<u32>,
    /// Free backend slots, oldest-freed first, so a slot is reused as late as possible.
    free_backends: std::collections::VecDeque<u32>,
    service_capacity: u32,
    /// `max_entries` of the connection table and of the NAT table.
    table_capacity: u32,
    /// How many installed NAT services name each endpoint in `NAT_BACKENDS` (two services may share a backend).
    nat_endpoint_refs: HashMap<Endpoint, u32>,
    /// The same for IPv6 backend endpoints (`NAT_BACKENDS6`).
    nat_endpoint6_refs: HashMap<Endpoint6, u32>,
    /// The interfaces already warned about for IPv6 forwarding off (see `warn_if_not_forwarding6`).
    warned_forwarding6: BTreeSet<u32>,
    /// The NAT idle times as loaded, so a scan of the tables judges flows as the program does.
    nat_timeouts: NatTimeouts,
    /// Which service's value sits in each written `SERVICES` entry. An entry is only ever removed by its owner,
    /// so a service that moved away from a port can never remove it under the service that moved in (a reload
    /// that swaps two ports).
    slot_owners: HashMap<ServiceKey, ServiceId>,
    /// What each service was last installed as, so a reload skips the services it does not change.
    applied: HashMap<ServiceId, ServiceSpec>,
    /// Unit tests: the order of `SERVICES` and `BACKENDS` writes.
    #[cfg(test)]
    journal: Vec<Journal>,
}

/// A map write, as the unit tests see it.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Journal {
    /// The `SERVICES` entry of a port now points at table `table`.
    Service { port: u16, table: u32 },
    /// `BACKENDS[slot]` written; `cleared` for an all-zero entry.
    Backend { slot: u32, cleared: bool },
}

impl DataPlane {
    /// Loads the programs and creates the maps; attaches nothing.
    ///
    /// # Errors
    /// When the kernel refuses the object (no permission, verifier, memory limits).
    pub fn load(options: LoadOptions) -> Result<Self> {
        let capacity = options.service_capacity.clamp(1, MAX_SERVICES);
        let entries = options.conntrack_entries.max(1024);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let (udp_timeout, closed_grace) = (nanos(options.nat_udp_timeout), nanos(options.nat_closed_grace));
        let (embryonic, established) = (nanos(options.nat_embryonic_timeout), nanos(options.nat_established_timeout));
        // 0 (an old kernel without SO_NETNS_COOKIE) makes the socket load balancer rewrite nothing; attaching it is
        // then refused.
        let netns_cookie = netns_cookie().unwrap_or_else(|e| {
            log::warn!("reading this network namespace's cookie: {e}; local clients cannot be balanced");
            0
        });
        let ebpf = EbpfLoader::new()
            .map_max_entries(names::MAGLEV, 2 * capacity * MAGLEV_CHUNKS)
            .map_max_entries(names::CONNTRACK, entries)
            .map_max_entries(names::CONNTRACK6, options.conntrack6_entries.max(1024))
            .map_max_entries(names::NAT, entries)
            .map_max_entries(names::NAT6, options.conntrack6_entries.max(1024))
            .map_max_entries(names::SOCKET_PEERS6, options.conntrack6_entries.clamp(1024, SOCKET_PEERS_ENTRIES))
            .override_global(names::NAT_UDP_TIMEOUT_NS, &udp_timeout, true)
            .override_global(names::NAT_CLOSED_GRACE_NS, &closed_grace, true)
            .override_global(names::NAT_EMBRYONIC_TIMEOUT_NS, &embryonic, true)
            .override_global(names::NAT_ESTABLISHED_TIMEOUT_NS, &established, true)
            .override_global(names::TRACE_HOOK, &u32::from(options.trace_hook), true)
            .override_global(names::NODE_NETNS_COOKIE, &netns_cookie, true)
            .load(options.object.unwrap_or(EBPF_OBJECT))
            .context(
                "loading the eBPF object into the kernel (needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)",
            )?;
        let mut dp = DataPlane {
            ebpf,
            link: None,
            socket_links: None,
            netns_cookie,
            mode: None,
            extra_links: BTreeMap::new(),
            extra_failed: std::collections::BTreeSet::new(),
            egress_links: BTreeMap::new(),
            node: NodeConfig::default(),
            beat: Heartbeat::default(),
            vips: BTreeMap::new(),
            vips6: BTreeMap::new(),
            vip_elements: BTreeMap::new(),
            free_vip_elements: (0..lb_common::VIP_TABLE_ELEMENTS).collect(),
            listener_elements: BTreeMap::new(),
            free_listener_elements: (0..lb_common::LISTENER_TABLE_ELEMENTS).collect(),
            vip6_elements: BTreeMap::new(),
            free_vip6_elements: (0..lb_common::VIP_TABLE_ELEMENTS).collect(),
            listener6_elements: BTreeMap::new(),
            free_listener6_elements: (0..lb_common::LISTENER_TABLE_ELEMENTS).collect(),
            services: BTreeMap::new(),
            services6: BTreeMap::new(),
            owners6: HashMap::new(),
            free_services: (0..capacity).rev().collect(),
            free_backends: (0..MAX_BACKENDS).collect(),
            service_capacity: capacity,
            table_capacity: entries,
            nat_endpoint_refs: HashMap::new(),
            nat_endpoint6_refs: HashMap::new(),
            warned_forwarding6: BTreeSet::new(),
            nat_timeouts: NatTimeouts { udp_ns: udp_timeout, embryonic_ns: embryonic, established_ns: established },
            #[cfg(test)]
            journal: Vec::new(),
            slot_owners: HashMap::new(),
            applied: HashMap::new(),
        };
        for name in [names::PROGRAM, names::PASS_PROGRAM, names::NAT6_PROGRAM, names::NAT6_ICMP_PROGRAM] {
            // Without CAP_PERFMON (or root) the verifier refuses the program with EACCES at its first instruction.
            dp.program(name)?.load().with_context(|| {
                format!("verifying XDP program {name} (a permission error means CAP_BPF or CAP_PERFMON is missing)")
            })?;
        }
        dp.egress_program()?.load().with_context(|| format!("verifying TC program {}", names::EGRESS_PROGRAM))?;
        // IPv6 NAT's programs, which the XDP program tail-calls (programs of their own for their stack).
        for (slot, name) in [(NAT6_SLOT, names::NAT6_PROGRAM), (NAT6_ICMP_SLOT, names::NAT6_ICMP_PROGRAM)] {
            let fd = dp.program(name)?.fd().context("the fd of an IPv6 NAT program")?;
            let fd = fd.try_clone().context("duplicating the fd of an IPv6 NAT program")?;
            let map =
                dp.ebpf.map_mut(names::NAT6_PROGRAMS).ok_or_else(|| Error::Object("has no NAT6_PROGRAMS".into()))?;
            let mut programs = ProgramArray::try_from(map).context("NAT6_PROGRAMS is not a program array")?;
            programs.set(slot, &fd, 0).with_context(|| format!("writing NAT6_PROGRAMS[{slot}]"))?;
        }
        dp.write_node()?;
        // Off, as every freshly created map is: nothing of the data plane is pinned, so a daemon that crashed while
        // someone traced leaves no switch behind, and the next one starts with tracing off.
        let mut trace: Array<&mut MapData, TraceConfig> = map_mut(&mut dp.ebpf, names::TRACE)?;
        trace.set(0, TraceConfig::default(), 0).context("writing TRACE[0]")?;
        Ok(dp)
    }

    fn egress_program(&mut self) -> Result<&mut SchedClassifier> {
        let name = names::EGRESS_PROGRAM;
        let program =
            self.ebpf.program_mut(name).ok_or_else(|| Error::Object(format!("has no program named {name}")))?;
        program.try_into().with_context(|| format!("program {name} is not a TC program"))
    }

    fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program =
            self.ebpf.program_mut(name).ok_or_else(|| Error::Object(format!("has no program named {name}")))?;
        program.try_into().with_context(|| format!("program {name} is not an XDP program"))
    }

    /// Attaches the load balancer to `interface`. Returns the mode that worked ("native" or "generic").
    ///
    /// # Errors
    /// When the interface does not exist, another XDP program is attached (EBUSY), or the mode is unsupported.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&'static str> {
        if self.link.is_some() {
            return Err(Error::Refused("the XDP program is already attached".to_string()));
        }
        let program = self.program(names::PROGRAM)?;
        let attempt = |program: &mut Xdp, m: XdpMode| program.attach(interface, m);
        let (link, used) = match mode {
            AttachMode::Native => (attempt(program, XdpMode::Driver), "native"),
            AttachMode::Generic => (attempt(program, XdpMode::Skb), "generic"),
            AttachMode::Auto => match attempt(program, XdpMode::Driver) {
                Ok(link) => (Ok(link), "native"),
                Err(native) => {
                    log::warn!(
                        "native XDP is not available on {interface} ({native}); using generic XDP, which is slower"
                    );
                    (attempt(program, XdpMode::Skb), "generic")
                }
            },
        };
        let link = link.map_err(|source| attach_error(interface, used, source))?;
        self.link = Some(link);
        self.mode = Some(if used == "native" { AttachMode::Native } else { AttachMode::Generic });
        self.node.ifindex = interface_index(interface)?;
        self.node.mac = netif::interface_mac(interface)?;
        self.write_node()?;
        warn_if_not_forwarding(interface);
        self.attach_egress(interface);
        self.attach_backend_interfaces();
        Ok(used)
    }

    /// Attaches the egress program to `interface` with tcx (a bpf_link this process alone holds: it goes with the
    /// process, as the XDP link does). Never through a netlink TC filter, which would outlive a crashed agent and
    /// keep answering the node's own ARP requests for a VIP. A failure is logged: backends on this node then get
    /// no NAT replies, everything else works.
    fn attach_egress(&mut self, interface: &str) {
        let result = interface_index(interface).and_then(|ifindex| {
            if self.egress_links.contains_key(&ifindex) {
                return Ok(None);
            }
            let program = self.egress_program()?;
            let link = program
                .attach_with_options(interface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| {
                    format!("attaching the egress program to {interface} with tcx (Linux 6.6 or later)")
                })?;
            Ok(Some((ifindex, link)))
        });
        match result {
            Ok(Some((ifindex, link))) => {
                self.egress_links.insert(ifindex, link);
            }
            Ok(None) => {}
            Err(e) => log::warn!("{e:#}: backends on this node get no NAT replies through {interface}"),
        }
    }

    /// Attaches the program to every interface a backend is reached through, besides the node's: the backends'
    /// replies (NAT) arrive there. A failure is logged once per interface and leaves that path untranslated.
    fn attach_backend_interfaces(&mut self) {
        let Some(mode) = self.mode else {
            return;
        };
        let wanted: std::collections::BTreeSet<u32> = self
            .services
            .values()
            .flat_map(|s| s.ifindexes.iter().copied())
            .chain(self.services6.values().flat_map(|s| s.ifindexes.iter().copied()))
            .filter(|i| *i != 0 && *i != self.node.ifindex)
            .collect();
        for ifindex in wanted {
            if self.extra_links.contains_key(&ifindex) || self.extra_failed.contains(&ifindex) {
                continue;
            }
            let result = interface_name(ifindex).and_then(|name| {
                let program = self.program(names::PROGRAM)?;
                let xdp_mode = if mode == AttachMode::Native { XdpMode::Driver } else { XdpMode::Skb };
                let link = program.attach(&name, xdp_mode).map_err(|e| attach_error(&name, "the same", e))?;
                Ok((name, link))
            });
            match result {
                Ok((name, link)) => {
                    log::info!("XDP program attached to {name} too: backends are reached through it");
                    warn_if_not_forwarding(&name);
                    self.extra_links.insert(ifindex, link);
                    self.attach_egress(&name);
                }
                Err(e) => {
                    log::warn!(
                        "backends are reached through interface {ifindex}, but the XDP program could not be attached \
                         there: {e:#}; NAT replies arriving there are not translated"
                    );
                    self.extra_failed.insert(ifindex);
                }
            }
        }
    }

    /// Attaches the socket load balancer (`xvip_connect4`, `xvip_getpeername4`, `xvip_sendmsg4`,
    /// `xvip_recvmsg4`, and the same for IPv6: `names::SOCKET_PROGRAMS`) to the cgroup v2 directory `cgroup` (its
    /// root covers every process): TCP and UDP connects,
    /// and UDP datagrams sent unconnected, made in this network namespace to a VIP's service are sent to a backend
    /// picked from the service's Maglev table (replies from it come back with the VIP as their source). The links
    /// are held by this process only (never pinned), so the kernel detaches them when it exits, however it exits.
    /// All or nothing: a program that cannot be attached detaches the ones before it.
    ///
    /// # Errors
    /// When the cgroup cannot be opened, the kernel refuses the programs, or the namespace's cookie is unknown.
    pub fn attach_local_clients(&mut self, cgroup: &std::path::Path) -> Result<()> {
        if self.socket_links.is_some() {
            return Err(Error::Refused("the socket load balancer is already attached".to_string()));
        }
        if self.netns_cookie == 0 {
            return Err(Error::Refused(
                "this kernel does not tell network namespaces apart (SO_NETNS_COOKIE, Linux 5.14): the socket load \
                 balancer would rewrite the connects of every namespace"
                    .to_string(),
            ));
        }
        let dir = std::fs::File::open(cgroup).with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
        let mut links = Vec::new();
        for name in names::SOCKET_PROGRAMS {
            match self.attach_socket_program(name, &dir, cgroup) {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    self.detach_socket_programs(links)?;
                    return Err(e);
                }
            }
        }
        self.socket_links = Some((links, cgroup.to_path_buf()));
        Ok(())
    }

    fn attach_socket_program(
        &mut self,
        name: &str,
        dir: &std::fs::File,
        cgroup: &std::path::Path,
    ) -> Result<CgroupSockAddrLinkId> {
        let program = self.socket_program(name)?;
        if program.fd().is_err() {
            program.load().with_context(|| format!("verifying the cgroup program {name}"))?;
        }
        // A link on a cgroup always lets other programs run too (BPF_F_ALLOW_MULTI); mode Single asks for no flags,
        // which is what the kernel takes for links.
        program
            .attach(dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup {}", cgroup.display()))
    }

    fn detach_socket_programs(&mut self, links: Vec<(&'static str, CgroupSockAddrLinkId)>) -> Result<()> {
        for (name, link) in links {
            self.socket_program(name)?.detach(link).with_context(|| format!("detaching the cgroup program {name}"))?;
        }
        Ok(())
    }

    /// The cgroup the socket load balancer is attached to, if it is.
    pub fn local_clients_cgroup(&self) -> Option<&std::path::Path> {
        self.socket_links.as_ref().map(|(_, path)| path.as_path())
    }

    fn socket_program(&mut self, name: &str) -> Result<&mut CgroupSockAddr> {
        let program =
            self.ebpf.program_mut(name).ok_or_else(|| Error::Object(format!("has no program named {name}")))?;
        program.try_into().with_context(|| format!("program {name} is not a cgroup sock_addr program"))
    }

    /// Removes the program from the interfaces (also happens when the process exits).
    pub fn detach(&mut self) -> Result<()> {
        for (_, link) in std::mem::take(&mut self.egress_links) {
            let program = self.egress_program()?;
            program.detach(link).context("detaching the egress program")?;
        }
        if let Some((links, _)) = self.socket_links.take() {
            self.detach_socket_programs(links)?;
        }
        let extra = std::mem::take(&mut self.extra_links);
        for (_, link) in extra {
            self.program(names::PROGRAM)?.detach(link).context("detaching the XDP program")?;
        }
        if let Some(link) = self.link.take() {
            self.program(names::PROGRAM)?.detach(link).context("detaching the XDP program")?;
        }
        Ok(())
    }

    /// Attaches the program to another interface an instance uses, in the mode of the first attachment.
    ///
    /// # Errors
    /// As [`attach`](Self::attach); or when nothing is attached yet.
    pub fn attach_instance_interface(&mut self, interface: &str) -> Result<()> {
        let Some(mode) = self.mode else {
            return Err(Error::Refused("attach the node's interface first".to_string()));
        };
        let ifindex = interface_index(interface)?;
        if ifindex == self.node.ifindex || self.extra_links.contains_key(&ifindex) {
            return Ok(());
        }
        let program = self.program(names::PROGRAM)?;
        let xdp_mode = if mode == AttachMode::Native { XdpMode::Driver } else { XdpMode::Skb };
        let link = program.attach(interface, xdp_mode).map_err(|e| attach_error(interface, mode.as_str(), e))?;
        self.extra_links.insert(ifindex, link);
        self.extra_failed.remove(&ifindex);
        warn_if_not_forwarding(interface);
        self.attach_egress(interface);
        Ok(())
    }

    /// Sets the MAC of the node's interface (what [`attach`](Self::attach) reads; fixtures that attach nowhere set
    /// it here).
    pub fn set_node_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        self.node.mac = mac;
        self.write_node()
    }

    /// The fixtures' node: the node's MAC, and one VIP at `vip` with `hash_seed`, governed by router 0 and answered
    /// on the node's interface (on any while the program is attached nowhere).
    pub fn set_node(&mut self, vip: Ipv4Addr, mac: [u8; 6], hash_seed: u32) -> Result<()> {
        self.set_node_mac(mac)?;
        self.set_vips(&[VipSpec { address: vip, router: 0, hash_seed, interface: None }])
    }

    /// Makes the VIP maps hold exactly `vips`. The `VIPS` hash gets a new address before its slot points at it and
    /// loses a leaving one after; a changed VIP goes to a free `VIP_TABLE` element before its slot moves there, so
    /// the program reads a VIP's old entry or its new one, never a half-written one, and never an address without
    /// its entry.
    ///
    /// # Errors
    /// When an interface cannot be looked up or a map write fails; the addresses before it are written.
    pub fn set_vips(&mut self, vips: &[VipSpec]) -> Result<()> {
        let mut wanted: BTreeMap<Ipv4Addr, VipValue> = BTreeMap::new();
        let mut interfaces: HashMap<&str, (u32, [u8; 6])> = HashMap::new();
        // A VIP on this node's own loopback (a DSR backend here) is read afresh with every write.
        let own = own_addresses();
        for v in vips {
            let (ifindex, mac) = match &v.interface {
                // The node's interface, as the single VIP of the first wave was (any interface before the
                // program is attached: fixtures).
                None => (self.node.ifindex, self.node.mac),
                Some(name) => match interfaces.get(name.as_str()) {
                    Some(found) => *found,
                    None => {
                        let found = (interface_index(name)?, netif::interface_mac(name)?);
                        interfaces.insert(name, found);
                        found
                    }
                },
            };
            let held = u8::from(own.contains(&v.address.octets()));
            let value = VipValue { router: v.router, hash_seed: v.hash_seed, ifindex, mac, held, _pad: 0 };
            wanted.insert(v.address, value);
        }
        let gone: Vec<Ipv4Addr> = self.vips.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for address in gone {
            self.vips.remove(&address);
            let element = self.vip_elements.remove(&address);
            self.write_vip_slot(address)?;
            self.free_vip_elements.extend(element);
            let mut map: BpfHashMap<&mut MapData, [u8; 4], VipValue> = map_mut(&mut self.ebpf, names::VIPS)?;
            match map.remove(&address.octets()) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {address} from the VIPS map")),
            }
        }
        for (address, value) in wanted {
            if self.vips.get(&address) == Some(&value) {
                continue;
            }
            let mut map: BpfHashMap<&mut MapData, [u8; 4], VipValue> = map_mut(&mut self.ebpf, names::VIPS)?;
            map.insert(address.octets(), value, 0).with_context(|| format!("writing {address} into the VIPS map"))?;
            let element = self.free_vip_elements.pop_front().ok_or_else(|| {
                Error::Full(format!("no room for VIP {address}: {} VIPs at most", lb_common::MAX_VIPS))
            })?;
            let mut table: Array<&mut MapData, VipEntry> = map_mut(&mut self.ebpf, names::VIP_TABLE)?;
            table
                .set(element, VipEntry { address: address.octets(), value }, 0)
                .with_context(|| format!("writing {address} into VIP_TABLE[{element}]"))?;
            self.vips.insert(address, value);
            let old = self.vip_elements.insert(address, element);
            self.write_vip_slot(address)?;
            self.free_vip_elements.extend(old);
        }
        Ok(())
    }

    /// Rewrites the `VIP_SLOTS` slot `address` folds to from the VIPs now written: empty, the one VIP folding there,
    /// or shared.
    fn write_vip_slot(&mut self, address: Ipv4Addr) -> Result<()> {
        let slot = vip_fold(address.octets());
        let mut folding = self.vips.keys().filter(|a| vip_fold(a.octets()) == slot);
        let value = match (folding.next(), folding.next()) {
            (None, _) => SLOT_EMPTY,
            // Every written VIP has its element (written before its slot); were it missing, the `VIPS` hash,
            // always complete, would still decide.
            (Some(one), None) => {
                self.vip_elements.get(one).and_then(|e| u16::try_from(e + 1).ok()).unwrap_or(SLOT_SHARED)
            }
            (Some(_), Some(_)) => SLOT_SHARED,
        };
        let mut map: Array<&mut MapData, u16> = map_mut(&mut self.ebpf, names::VIP_SLOTS)?;
        map.set(slot, value, 0).with_context(|| format!("writing VIP_SLOTS[{slot}] for {address}"))
    }

    /// The `VIPS` entries written, by address.
    pub fn vips(&self) -> &BTreeMap<Ipv4Addr, VipValue> {
        &self.vips
    }

    /// Makes the IPv6 VIP maps hold exactly `vips` (the IPv6 VIPs of every instance), as [`DataPlane::set_vips`]
    /// does for IPv4: new and changed addresses are written first, each into a free `VIP6_TABLE` element, which the
    /// `VIPS6` hash (address -> element) and then its `VIP6_SLOTS` slot name next; then the ones that left lose their
    /// slot, then their hash entry, then their element. An element is never rewritten while a slot or the hash
    /// names it. An address no client could reach (unspecified, loopback, multicast, IPv4-mapped) is refused before
    /// anything is written.
    ///
    /// # Errors
    /// `Refused` for such an address, `Full` beyond `MAX_VIPS` addresses; when an interface cannot be looked up or
    /// a map write fails, the addresses before it are written.
    pub fn set_vips6(&mut self, vips: &[Vip6Spec]) -> Result<()> {
        if let Some(bad) = vips.iter().find(|v| !usable_vip6(v.address)) {
            return Err(Error::Refused(format!(
                "{} cannot be a VIP: unspecified, loopback, multicast and IPv4-mapped addresses are refused",
                bad.address
            )));
        }
        let mut wanted: BTreeMap<Ipv6Addr, VipValue> = BTreeMap::new();
        let mut interfaces: HashMap<&str, (u32, [u8; 6])> = HashMap::new();
        // Read with every write, as for IPv4: a DSR backend on this node holds the VIP on its loopback.
        let own = if vips.is_empty() { Vec::new() } else { interface_addresses6() };
        for v in vips {
            let (ifindex, mac) = match &v.interface {
                None => (self.node.ifindex, self.node.mac),
                Some(name) => match interfaces.get(name.as_str()) {
                    Some(found) => *found,
                    None => {
                        let found = (interface_index(name)?, netif::interface_mac(name)?);
                        interfaces.insert(name, found);
                        found
                    }
                },
            };
            // Held when this node's kernel has the address (a DSR backend here): while the VIP's router is not
            // active here, frames to it are the active node's DSR forwards to this backend, for the kernel.
            let held = u8::from(own.contains(&v.address));
            let value = VipValue { router: v.router, hash_seed: v.hash_seed, ifindex, mac, held, _pad: 0 };
            wanted.insert(v.address, value);
        }
        let added = wanted.keys().filter(|a| !self.vips6.contains_key(a)).count();
        if self.vips6.len() + added > lb_common::MAX_VIPS as usize {
            return Err(Error::Full(format!("no room for {added} more IPv6 VIPs: {} at most", lb_common::MAX_VIPS)));
        }
        for (address, value) in &wanted {
            if self.vips6.get(address) == Some(value) {
                continue;
            }
            let element = self.free_vip6_elements.pop_front().ok_or_else(|| {
                Error::Full(format!("no room for VIP {address}: {} IPv6 VIPs at most", lb_common::MAX_VIPS))
            })?;
            let mut table: Array<&mut MapData, Vip6Entry> = map_mut(&mut self.ebpf, names::VIP6_TABLE)?;
            table
                .set(element, Vip6Entry::new(&address.octets(), *value), 0)
                .with_context(|| format!("writing {address} into VIP6_TABLE[{element}]"))?;
            let mut map: BpfHashMap<&mut MapData, [u8; 16], u32> = map_mut(&mut self.ebpf, names::VIPS6)?;
            map.insert(address.octets(), element, 0)
                .with_context(|| format!("writing {address} into the VIPS6 map"))?;
            self.vips6.insert(*address, *value);
            let old = self.vip6_elements.insert(*address, element);
            self.write_vip6_slot(*address)?;
            self.free_vip6_elements.extend(old);
        }
        let gone: Vec<Ipv6Addr> = self.vips6.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for address in gone {
            let element = self.vip6_elements.remove(&address);
            self.write_vip6_slot(address)?;
            let mut map: BpfHashMap<&mut MapData, [u8; 16], u32> = map_mut(&mut self.ebpf, names::VIPS6)?;
            match map.remove(&address.octets()) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {address} from the VIPS6 map")),
            }
            self.free_vip6_elements.extend(element);
            self.vips6.remove(&address);
        }
        // The node's own IPv6 addresses, which no client of an IPv6 VIP can have, read afresh with the VIPs.
        self.write_node()
    }

    /// Rewrites the `VIP6_SLOTS` slot `address` folds to from the IPv6 VIPs now in `VIP6_TABLE`: empty, the one
    /// VIP folding there, or shared (`VIPS6` decides).
    fn write_vip6_slot(&mut self, address: Ipv6Addr) -> Result<()> {
        let slot = vip6_fold(ipv6_halves(&address.octets()));
        let elements = &self.vip6_elements;
        let mut folding = elements.iter().filter(|(a, _)| vip6_fold(ipv6_halves(&a.octets())) == slot).map(|(_, e)| *e);
        let value = match (folding.next(), folding.next()) {
            (None, _) => SLOT_EMPTY,
            (Some(element), None) => u16::try_from(element + 1).unwrap_or(SLOT_SHARED),
            (Some(_), Some(_)) => SLOT_SHARED,
        };
        let mut map: Array<&mut MapData, u16> = map_mut(&mut self.ebpf, names::VIP6_SLOTS)?;
        map.set(slot, value, 0).with_context(|| format!("writing VIP6_SLOTS[{slot}] for {address}"))
    }

    /// The `VIPS6` entries written, by address.
    pub fn vips6(&self) -> &BTreeMap<Ipv6Addr, VipValue> {
        &self.vips6
    }

    /// Starts (`true`) or stops answering for the VIPs of router 0 (fixtures and tools; the agent uses
    /// [`NodeControl`]).
    pub fn set_active(&mut self, active: bool) -> Result<()> {
        self.set_router_active(0, active)
    }

    /// Starts or stops answering for the VIPs of `router` (fixtures and tools; the agent uses [`NodeControl`]).
    pub fn set_router_active(&mut self, router: u32, active: bool) -> Result<()> {
        set_flag(&mut self.beat, router, active)?;
        self.write_heartbeat()
    }

    pub fn is_active(&self) -> bool {
        self.beat.is_active(0)
    }

    /// A second handle on `HEARTBEAT` (the active flags and the dead-man heartbeat) for the advert path, so taking
    /// or giving up a VIP never waits behind service updates. `HEARTBEAT` has no other writer: after this call,
    /// set the routers' roles through the returned handle only (this `DataPlane` keeps writing the other maps,
    /// which hold nothing the handle writes).
    ///
    /// # Errors
    /// When the maps cannot be opened again by id.
    pub fn node_control(&self) -> Result<NodeControl> {
        let heartbeat = Array::try_from(aya::maps::Map::Array(self.reopen(names::HEARTBEAT)?))
            .context("map HEARTBEAT does not have the expected type")?;
        Ok(NodeControl { heartbeat, beat: self.beat })
    }

    /// A second handle on the array or per-CPU array `name`, for a handle that lives on another thread.
    fn reopen(&self, name: &str) -> Result<MapData> {
        let map = self.ebpf.map(name).ok_or_else(|| Error::Object(format!("has no map named {name}")))?;
        let data = match map {
            aya::maps::Map::Array(data) | aya::maps::Map::PerCpuArray(data) => data,
            _ => return Err(Error::Object(format!("has map {name}, but not as an array"))),
        };
        // A duplicate of our own descriptor, not a new open by id: `bpf_map_get_fd_by_id` needs CAP_SYS_ADMIN,
        // which the unit does not grant.
        let fd = data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating map {name}'s fd"))?;
        MapData::from_fd(fd).with_context(|| format!("opening map {name} again from its fd"))
    }

    /// The handle of `xvip trace` (the `TRACE` switch, each CPU's `TRACE_STATE`, and the program's log ring), for
    /// the agent's trace task. `TRACE` has no other writer after this call. Once per loaded program: the log ring
    /// moves into the handle.
    ///
    /// # Errors
    /// When the handle was taken before, or the maps cannot be opened again.
    pub fn trace(&mut self) -> Result<Trace> {
        let switch = Array::try_from(aya::maps::Map::Array(self.reopen(names::TRACE)?))
            .context("map TRACE does not have the expected type")?;
        let state = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(self.reopen(names::TRACE_STATE)?))
            .context("map TRACE_STATE does not have the expected type")?;
        let sink = Arc::new(TraceSink::default());
        let logger = aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, sink.clone())
            .context("opening the program's log ring (taken once per loaded program)")?;
        Ok(Trace { switch, state, logger, sink, generation: 0 })
    }

    /// Reads the heartbeat as the program sees it.
    pub fn heartbeat(&self) -> Result<Heartbeat> {
        let map: Array<&MapData, Heartbeat> = map_ref(&self.ebpf, names::HEARTBEAT)?;
        map.get(&0, 0).context("reading HEARTBEAT[0]")
    }

    /// Sets the dead-man heartbeat: last beat at `last_ns`, stale after `max_age_ns` (0 = never). The active flags
    /// stay as [`set_active`](Self::set_active) left them. Fixtures; the agent uses [`NodeControl`].
    pub fn set_heartbeat(&mut self, last_ns: u64, max_age_ns: u64) -> Result<()> {
        self.beat = Heartbeat { last_ns, max_age_ns, ..self.beat };
        self.write_heartbeat()
    }

    fn write_heartbeat(&mut self) -> Result<()> {
        let mut map: Array<&mut MapData, Heartbeat> = map_mut(&mut self.ebpf, names::HEARTBEAT)?;
        map.set(0, self.beat, 0).context("writing HEARTBEAT[0]")
    }

    fn write_node(&mut self) -> Result<()> {
        // The node's addresses may have changed since the last write: they are read afresh every time.
        self.node.local = local_addresses();
        self.node.local6 = local_addresses6();
        let mut config: Array<&mut MapData, NodeConfig> = map_mut(&mut self.ebpf, names::CONFIG)?;
        config.set(0, self.node, 0).context("writing the CONFIG map")
    }

    /// Makes the VIPs and the installed services exactly `vips` and `desired` (start, reload): new VIPs first,
    /// then the services (those not in `desired` removed, the others installed or updated), then the VIPs that
    /// left. Every (address, port) ends up answered by the service configured on it, whatever moved where (two
    /// services swapping ports, one taking another's old port, renames); an entry that changes hands is switched
    /// with one write, never removed in between.
    ///
    /// # Errors
    /// The first failure; what came before it is installed, the rest keeps its previous state.
    pub fn reconcile(&mut self, vips: &[VipSpec], desired: &[(ServiceId, ServiceSpec)]) -> Result<()> {
        // Addresses that stay keep their entries through the service changes; leaving ones go last.
        let mut union: Vec<VipSpec> = vips.to_vec();
        for (address, value) in &self.vips {
            if !vips.iter().any(|v| v.address == *address) {
                // Inactive while it lingers: its router may already be another instance's.
                union.push(VipSpec {
                    address: *address,
                    router: u32::MAX,
                    hash_seed: value.hash_seed,
                    interface: None,
                });
            }
        }
        self.set_vips(&union)?;
        self.reconcile_services(desired)?;
        self.set_vips(vips)
    }

    /// [`reconcile`](Self::reconcile) of the services alone.
    ///
    /// # Errors
    /// The first failure; the services before it are installed, the others keep their previous state.
    pub fn reconcile_services(&mut self, desired: &[(ServiceId, ServiceSpec)]) -> Result<()> {
        let mut wanted = Keep::default();
        for (id, spec) in desired {
            for key in service_keys(spec) {
                wanted.v4.insert(key, id);
            }
            wanted.v6.extend(service_keys6(spec));
        }
        let mut gone: Vec<ServiceId> = self.services.keys().chain(self.services6.keys()).cloned().collect();
        gone.sort();
        gone.dedup();
        gone.retain(|n| !desired.iter().any(|(d, _)| d == n));
        for id in gone {
            self.remove_service_keeping(&id, &wanted)?;
        }
        let mut tables = maglev::Builder::new(MAGLEV_M);
        for (id, spec) in desired {
            if self.applied.get(id) == Some(spec) {
                continue;
            }
            self.apply_service_keeping(id, spec, &wanted, &mut tables)?;
        }
        Ok(())
    }

    /// Installs or updates a service: its backends, then a freshly built Maglev table, switched in atomically.
    ///
    /// # Errors
    /// When the data plane is out of service or backend slots, or a map write fails.
    pub fn apply_service(&mut self, id: impl Into<ServiceId>, spec: &ServiceSpec) -> Result<()> {
        self.apply_service_keeping(&id.into(), spec, &Keep::default(), &mut maglev::Builder::new(MAGLEV_M))
    }

    /// [`apply_service`](Self::apply_service) of each service in turn, populating each distinct backend set's Maglev
    /// table once (services of several instances often share their backends). One result per service, in order: a
    /// failure leaves that service in its previous state and the others are still applied.
    pub fn apply_services(&mut self, services: &[(ServiceId, ServiceSpec)]) -> Vec<Result<()>> {
        let mut tables = maglev::Builder::new(MAGLEV_M);
        services.iter().map(|(id, spec)| self.apply_service_keeping(id, spec, &Keep::default(), &mut tables)).collect()
    }

    /// [`apply_service`](Self::apply_service), leaving alone the entries in `keep` (ports another service of the
    /// same reload is about to take).
    fn apply_service_keeping(
        &mut self,
        id: &ServiceId,
        spec: &ServiceSpec,
        keep: &Keep,
        tables: &mut maglev::Builder,
    ) -> Result<()> {
        let (spec4, spec6) = (spec.family(false), spec.family(true));
        // The IPv4 part unless the service has IPv6 addresses only; the IPv6 part while it has IPv6 addresses.
        let result = if spec4.addresses.is_empty() && !spec6.addresses.is_empty() {
            self.remove_part4(id, &keep.v4)
        } else {
            self.apply_part4(id, &spec4, &keep.v4, tables)
        };
        let result = result.and_then(|()| {
            if spec6.addresses.is_empty() || spec6.backends.is_empty() {
                self.remove_part6(id, &keep.v6)
            } else {
                self.apply_part6(id, &spec6, &keep.v6, tables)
            }
        });
        match &result {
            Ok(()) => self.applied.insert(id.clone(), spec.clone()),
            Err(_) => self.applied.remove(id),
        };
        result
    }

    /// Installs or updates the IPv4 part of a service (`spec`: its IPv4 addresses and backends).
    fn apply_part4(
        &mut self,
        id: &ServiceId,
        spec: &ServiceSpec,
        keep: &HashMap<ServiceKey, &ServiceId>,
        tables: &mut maglev::Builder,
    ) -> Result<()> {
        let keys = service_keys(spec);
        if let Some(old) = self.services.get(id).map(|s| s.keys.clone())
            && old != keys
        {
            // Moving to another port or other addresses: the entries it leaves are released (if still its own and
            // nobody takes them in this reload); index, backends and tables move along.
            for key in old.iter().filter(|k| !keys.contains(k) && !keep.contains_key(k)) {
                self.release_slot(*key, id)?;
            }
            if let Some(svc) = self.services.get_mut(id) {
                svc.keys = keys.clone();
            }
        }
        if !self.services.contains_key(id) {
            let index = self.free_services.pop().ok_or_else(|| {
                Error::Full(format!(
                    "no room for service {id}: the data plane was loaded for {} services (restart to grow it)",
                    self.service_capacity
                ))
            })?;
            self.services.insert(
                id.clone(),
                Installed {
                    keys,
                    forwarding: spec.forwarding,
                    index,
                    table: 1,
                    backends: HashMap::new(),
                    nat_endpoints: Vec::new(),
                    ifindexes: Vec::new(),
                },
            );
        }
        let Some(mut svc) = self.services.remove(id) else {
            return Err(Error::Refused(format!("service {id} vanished while being installed")));
        };
        let result = self.write_service(id, &mut svc, spec, tables);
        svc.ifindexes = spec.backends.iter().map(|b| b.ifindex).collect();
        self.services.insert(id.clone(), svc);
        self.attach_backend_interfaces();
        result?;
        self.write_node()
    }

    fn write_service(
        &mut self,
        id: &ServiceId,
        svc: &mut Installed,
        spec: &ServiceSpec,
        tables: &mut maglev::Builder,
    ) -> Result<()> {
        // Which backends are on this node, read afresh with every install (health changes, reloads).
        let own = own_addresses();
        // Backend slots: keep the ones still configured, free the others, allocate the new ones.
        let wanted: HashMap<(IpAddr, u16), &BackendSpec> =
            spec.backends.iter().map(|b| ((b.address, b.port), b)).collect();
        let gone: Vec<(IpAddr, u16)> = svc.backends.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for b in &spec.backends {
            let slot = match svc.backends.get(&(b.address, b.port)) {
                Some(slot) => *slot,
                None => {
                    let slot = self.free_backends.pop_front().ok_or_else(|| {
                        Error::Full(format!("no room for backend {}:{}: {MAX_BACKENDS} in use", b.address, b.port))
                    })?;
                    svc.backends.insert((b.address, b.port), slot);
                    slot
                }
            };
            let entry = Backend {
                address: octets4(b.address),
                port: b.port.to_be_bytes(),
                mac: b.mac.unwrap_or_default(),
                src_mac: self.egress_mac(b.ifindex),
                ifindex: b.ifindex,
                healthy: u8::from(b.healthy),
                local: u8::from(own.contains(&octets4(b.address))),
                service: u16::try_from(svc.index)
                    .map_err(|_| Error::Full(format!("service index {} over {}", svc.index, u16::MAX)))?,
            };
            self.write_backend(slot, entry)?;
        }

        // Replies must be recognised before the first client packet is translated, so the endpoints go in before
        // the SERVICES entries; all configured backends, healthy or not (a backend going unhealthy still sends the
        // replies of its established flows).
        let nat_endpoints: Vec<Endpoint> = if spec.forwarding == FORWARD_NAT {
            spec.backends
                .iter()
                .map(|b| Endpoint::new(octets4(b.address), b.port.to_be_bytes(), spec.protocol))
                .collect()
        } else {
            Vec::new()
        };
        let previous = std::mem::replace(&mut svc.nat_endpoints, nat_endpoints.clone());
        for e in &nat_endpoints {
            self.nat_endpoint_ref(*e, true)?;
        }
        for e in &previous {
            self.nat_endpoint_ref(*e, false)?;
        }

        // The new table goes into the buffer that is not live, then one SERVICES update per address switches to it.
        let members: Vec<maglev::MaglevBackend> = spec
            .backends
            .iter()
            .filter(|b| b.usable())
            .filter_map(|b| {
                svc.backends.get(&(b.address, b.port)).map(|slot| maglev::MaglevBackend {
                    id: *slot,
                    key: format!("{}:{}", b.address, b.port),
                    weight: b.weight,
                })
            })
            .collect();
        let table = tables.build(&members).map_err(|source| Error::Maglev { service: id.to_string(), source })?;
        let next = 1 - svc.table;
        self.write_table(svc.index, next, &table)?;
        let value = ServiceValue { index: svc.index, table: next, forwarding: spec.forwarding, _pad: [0; 3] };
        svc.forwarding = spec.forwarding;
        for key in svc.keys.clone() {
            // One write per entry: a free entry appears whole, one another service holds is taken over in one
            // element swap, so the port never answers nothing in between.
            self.write_service_value(key, value)?;
            self.slot_owners.insert(key, id.clone());
        }
        svc.table = next;

        // A backend at one of the node's own addresses is in the Maglev table once the engine has marked it local
        // (the XDP program hands its frames to the node's stack). Until then (no MAC yet) the socket load balancer
        // still sends local clients to it, for its weight's share.
        let own = local_addresses();
        let waiting = spec
            .backends
            .iter()
            .filter(|b| b.awaits_local_share() && own.contains(&octets4(b.address)))
            .find_map(|b| svc.backends.get(&(b.address, b.port)).map(|slot| (*slot, b.weight)));
        self.write_local_share(svc.index, local_share(&members, waiting))?;

        // Only now, with no live table pointing at them, the slots of backends that left are cleared and freed
        // (a packet that read the old table an instant ago still finds a usable slot).
        for endpoint in &gone {
            if let Some(slot) = svc.backends.remove(endpoint) {
                self.write_backend(slot, Backend::default())?;
                self.free_backends.push_back(slot);
            }
        }
        Ok(())
    }

    /// The MAC frames to a backend reached through `ifindex` carry as source: that interface's (all zero for the
    /// node's own interface, which the program fills in from `NodeConfig`).
    fn egress_mac(&self, ifindex: u32) -> [u8; 6] {
        if ifindex == 0 || ifindex == self.node.ifindex {
            return [0; 6];
        }
        match interface_name(ifindex).and_then(|name| Ok(netif::interface_mac(&name)?)) {
            Ok(mac) => mac,
            Err(e) => {
                log::warn!("MAC address of interface {ifindex}: {e:#}; frames to backends there carry the node's");
                [0; 6]
            }
        }
    }

    /// Removes the `SERVICES` entry `key` if `id` still holds it; an entry another service took is left alone.
    fn release_slot(&mut self, key: ServiceKey, id: &ServiceId) -> Result<()> {
        if self.slot_owners.get(&key) != Some(id) {
            return Ok(());
        }
        self.remove_service_value(key)?;
        self.slot_owners.remove(&key);
        Ok(())
    }

    /// The `SERVICES` entries written, with the service that holds each: `(address, protocol, port) -> id`.
    pub fn slot_owners(&self) -> BTreeMap<(Ipv4Addr, u8, u16), ServiceId> {
        self.slot_owners
            .iter()
            .map(|(k, n)| ((Ipv4Addr::from(k.vip), k.protocol, u16::from_be_bytes(k.port)), n.clone()))
            .collect()
    }

    /// Reads the `SERVICES` value of a port on a VIP (for tests and diagnostics); `None` when there is none.
    pub fn service_value(&self, vip: Ipv4Addr, protocol: u8, port: u16) -> Result<Option<ServiceValue>> {
        let key = ServiceKey::new(vip.octets(), port.to_be_bytes(), protocol);
        let services: BpfHashMap<&MapData, ServiceKey, ServiceValue> = map_ref(&self.ebpf, names::SERVICES)?;
        match services.get(&key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading the SERVICES entry of {vip}:{port}/{protocol}")),
        }
    }

    /// The index a service was installed under.
    pub fn service_index(&self, id: impl Into<ServiceId>) -> Option<u32> {
        self.services.get(&id.into()).map(|s| s.index)
    }

    /// Writes a listener's value: into `SERVICES`, then into a free `LISTENER_TABLE` element, then moves its slot
    /// there (see [`DataPlane::write_listener_slot`]).
    fn write_service_value(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        let mut services: BpfHashMap<&mut MapData, ServiceKey, ServiceValue> =
            map_mut(&mut self.ebpf, names::SERVICES)?;
        let port = u16::from_be_bytes(key.port);
        let vip = Ipv4Addr::from(key.vip);
        services.insert(key, value, 0).with_context(|| format!("writing the SERVICES entry of {vip}:{port}"))?;
        let element = self.free_listener_elements.pop_front().ok_or_else(|| {
            Error::Full(format!("no room for {vip}:{port}: {} listeners at most", lb_common::MAX_LISTENERS))
        })?;
        let mut table: Array<&mut MapData, Listener> = map_mut(&mut self.ebpf, names::LISTENER_TABLE)?;
        table
            .set(element, Listener { key, value }, 0)
            .with_context(|| format!("writing {vip}:{port} into LISTENER_TABLE[{element}]"))?;
        let old = self.listener_elements.insert(key, element);
        self.write_listener_slot(key)?;
        self.free_listener_elements.extend(old);
        #[cfg(test)]
        self.journal.push(Journal::Service { port, table: value.table });
        Ok(())
    }

    /// Removes a listener: its slot first, then its `SERVICES` entry.
    fn remove_service_value(&mut self, key: ServiceKey) -> Result<()> {
        let element = self.listener_elements.remove(&key);
        self.write_listener_slot(key)?;
        self.free_listener_elements.extend(element);
        let mut services: BpfHashMap<&mut MapData, ServiceKey, ServiceValue> =
            map_mut(&mut self.ebpf, names::SERVICES)?;
        match services.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| {
                format!("removing the SERVICES entry of {}:{}", Ipv4Addr::from(key.vip), u16::from_be_bytes(key.port))
            }),
        }
    }

    /// Rewrites the `LISTENER_SLOTS` slot of `key` from the listeners now written: empty, the one listener
    /// folding there, or shared (`SERVICES` decides).
    fn write_listener_slot(&mut self, key: ServiceKey) -> Result<()> {
        let slot = listener_slot(&key);
        let elements = &self.listener_elements;
        let mut folding = elements.iter().filter(|(k, _)| listener_slot(k) == slot).map(|(_, e)| *e);
        let value = match (folding.next(), folding.next()) {
            (None, _) => SLOT_EMPTY,
            (Some(element), None) => u16::try_from(element + 1).unwrap_or(SLOT_SHARED),
            (Some(_), Some(_)) => SLOT_SHARED,
        };
        let mut map: Array<&mut MapData, u16> = map_mut(&mut self.ebpf, names::LISTENER_SLOTS)?;
        map.set(slot, value, 0).with_context(|| format!("writing LISTENER_SLOTS[{slot}]"))
    }

    /// Takes (`add`) or drops a reference to a NAT endpoint; the map entry exists while some service holds one.
    fn nat_endpoint_ref(&mut self, endpoint: Endpoint, add: bool) -> Result<()> {
        let count = self.nat_endpoint_refs.entry(endpoint).or_insert(0);
        if add {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let count = *count;
        if count == 0 {
            self.nat_endpoint_refs.remove(&endpoint);
            let mut map: BpfHashMap<&mut MapData, Endpoint, u32> = map_mut(&mut self.ebpf, names::NAT_BACKENDS)?;
            map.remove(&endpoint).context("removing from the NAT_BACKENDS map")?;
            // The port's bit after the endpoint: a packet that sees the bit but no endpoint is simply no reply.
            self.write_source_port_bit(endpoint.protocol, u16::from_be_bytes(endpoint.port))
        } else {
            // The port's bit before the endpoint, so a reply is recognised as soon as the endpoint exists.
            self.write_source_port_bit(endpoint.protocol, u16::from_be_bytes(endpoint.port))?;
            let mut map: BpfHashMap<&mut MapData, Endpoint, u32> = map_mut(&mut self.ebpf, names::NAT_BACKENDS)?;
            map.insert(endpoint, count, 0).context("writing the NAT_BACKENDS map")
        }
    }

    /// [`DataPlane::nat_endpoint_ref`] for an IPv6 endpoint (`NAT_BACKENDS6`; the port bits are shared).
    fn nat_endpoint6_ref(&mut self, endpoint: Endpoint6, add: bool) -> Result<()> {
        let count = self.nat_endpoint6_refs.entry(endpoint).or_insert(0);
        if add {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let count = *count;
        if count == 0 {
            self.nat_endpoint6_refs.remove(&endpoint);
            let mut map: BpfHashMap<&mut MapData, Endpoint6, u32> = map_mut(&mut self.ebpf, names::NAT_BACKENDS6)?;
            map.remove(&endpoint).context("removing from the NAT_BACKENDS6 map")?;
            self.write_source_port_bit(endpoint.protocol, u16::from_be_bytes(endpoint.port))
        } else {
            self.write_source_port_bit(endpoint.protocol, u16::from_be_bytes(endpoint.port))?;
            let mut map: BpfHashMap<&mut MapData, Endpoint6, u32> = map_mut(&mut self.ebpf, names::NAT_BACKENDS6)?;
            map.insert(endpoint, count, 0).context("writing the NAT_BACKENDS6 map")
        }
    }

    /// Rewrites the `NAT_SOURCE_PORTS` word holding (`protocol`, `port`) from the endpoints now referenced.
    fn write_source_port_bit(&mut self, protocol: u8, port: u16) -> Result<()> {
        let Some((word, _)) = nat_source_port_bit(protocol, port) else {
            return Ok(());
        };
        let mut bits = 0u64;
        let endpoints = self.nat_endpoint_refs.keys().map(|e| (e.protocol, e.port));
        let endpoints6 = self.nat_endpoint6_refs.keys().map(|e| (e.protocol, e.port));
        for (protocol, port) in endpoints.chain(endpoints6) {
            if let Some((w, bit)) = nat_source_port_bit(protocol, u16::from_be_bytes(port))
                && w == word
            {
                bits |= 1 << bit;
            }
        }
        let mut map: Array<&mut MapData, u64> = map_mut(&mut self.ebpf, names::NAT_SOURCE_PORTS)?;
        map.set(word, bits, 0).with_context(|| format!("writing NAT_SOURCE_PORTS[{word}]"))
    }

    fn write_local_share(&mut self, index: u32, share: LocalShare) -> Result<()> {
        let mut shares: Array<&mut MapData, LocalShare> = map_mut(&mut self.ebpf, names::SOCKET_LOCAL)?;
        shares.set(index, share, 0).with_context(|| format!("writing SOCKET_LOCAL[{index}]"))
    }

    fn write_backend(&mut self, slot: u32, backend: Backend) -> Result<()> {
        let mut backends: Array<&mut MapData, Backend> = map_mut(&mut self.ebpf, names::BACKENDS)?;
        backends.set(slot, backend, 0).with_context(|| format!("writing BACKENDS[{slot}]"))?;
        #[cfg(test)]
        self.journal.push(Journal::Backend { slot, cleared: backend == Backend::default() });
        Ok(())
    }

    /// Writes `table` whole into buffer `which` of service `index`: one `BPF_MAP_UPDATE_BATCH` call for all its
    /// chunks (a thousand single updates cost a thousand syscalls, and keeping copies of the tables to write only
    /// the chunks that differ would cost 512 KiB of memory per service).
    fn write_table(&mut self, index: u32, which: u32, table: &[u32]) -> Result<()> {
        let mut keys = Vec::with_capacity(MAGLEV_CHUNKS as usize);
        let mut chunks = Vec::with_capacity(MAGLEV_CHUNKS as usize);
        for (i, slots) in table.chunks(MAGLEV_CHUNK as usize).enumerate() {
            let mut chunk = MaglevChunk::default();
            chunk.slots[..slots.len()].copy_from_slice(slots);
            // `i * MAGLEV_CHUNK` < MAGLEV_M, which is a u32.
            let first = (i * MAGLEV_CHUNK as usize) as u32;
            keys.push(maglev_position(index, which, first).0);
            chunks.push(chunk);
        }
        let map = self.ebpf.map(names::MAGLEV).ok_or_else(|| Error::Object("has no map named MAGLEV".to_string()))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(Error::Object("has map MAGLEV, but not as an array".to_string()));
        };
        let fd = data.fd().as_fd().as_raw_fd();
        match batch::update(fd, &keys, &chunks) {
            Ok(()) => Ok(()),
            // Kernels before 5.6 have no batch operations (EINVAL, or the kernel's ENOTSUPP 524 for a map type
            // without them): one update per chunk.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | 524)) => {
                let mut maglev: Array<&mut MapData, MaglevChunk> = map_mut(&mut self.ebpf, names::MAGLEV)?;
                for (key, chunk) in keys.iter().zip(&chunks) {
                    maglev.set(*key, *chunk, 0).with_context(|| format!("writing MAGLEV[{key}]"))?;
                }
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("writing the Maglev table {which} of service index {index}")),
        }
    }

    /// Removes a service: its entries go (unless another service holds them by now), and packets to its ports are
    /// dropped as to no service.
    pub fn remove_service(&mut self, id: impl Into<ServiceId>) -> Result<()> {
        self.remove_service_keeping(&id.into(), &Keep::default())
    }

    fn remove_service_keeping(&mut self, id: &ServiceId, keep: &Keep) -> Result<()> {
        self.applied.remove(id);
        self.remove_part4(id, &keep.v4)?;
        self.remove_part6(id, &keep.v6)
    }

    /// Removes the IPv4 part of a service, if installed.
    fn remove_part4(&mut self, id: &ServiceId, keep: &HashMap<ServiceKey, &ServiceId>) -> Result<()> {
        let Some(svc) = self.services.remove(id) else {
            return Ok(());
        };
        for key in &svc.keys {
            if !keep.contains_key(key) {
                self.release_slot(*key, id)?;
            }
        }
        self.write_local_share(svc.index, LocalShare::default())?;
        for slot in svc.backends.values() {
            self.write_backend(*slot, Backend::default())?;
            self.free_backends.push_back(*slot);
        }
        for e in &svc.nat_endpoints {
            self.nat_endpoint_ref(*e, false)?;
        }
        self.free_services.push(svc.index);
        Ok(())
    }

    /// Installs or updates the IPv6 part of a service (`spec`: its IPv6 addresses and backends, DSR): the backends'
    /// slots (address first, in `BACKEND_ADDRESSES6`), a fresh Maglev table in the idle buffer, then one
    /// `SERVICES6` write per address switches to it; the slots of backends that left are cleared only then.
    fn apply_part6(
        &mut self,
        id: &ServiceId,
        spec: &ServiceSpec,
        keep: &HashSet<ServiceKey6>,
        tables: &mut maglev::Builder,
    ) -> Result<()> {
        if !self.services6.contains_key(id) {
            let index = self.free_services.pop().ok_or_else(|| {
                Error::Full(format!(
                    "no room for the IPv6 part of service {id}: the data plane was loaded for {} service tables \
                     (restart to grow it)",
                    self.service_capacity
                ))
            })?;
            let part = Installed6 {
                keys: Vec::new(),
                index,
                table: 1,
                backends: HashMap::new(),
                ifindexes: Vec::new(),
                nat_endpoints: Vec::new(),
            };
            self.services6.insert(id.clone(), part);
        }
        let Some(mut svc) = self.services6.remove(id) else {
            return Err(Error::Refused(format!("service {id} vanished while being installed")));
        };
        let result = self.write_service6(id, &mut svc, spec, keep, tables);
        svc.ifindexes = spec.backends.iter().map(|b| b.ifindex).collect();
        self.services6.insert(id.clone(), svc);
        self.attach_backend_interfaces();
        if spec.forwarding == FORWARD_NAT {
            self.warn_if_not_forwarding6(spec);
        }
        result
    }

    /// IPv6 NAT replies are routed by the FIB as IPv4 ones are, which needs IPv6 forwarding on the interfaces they
    /// arrive on (the node's, and those its backends are reached through): warns once per interface where it is
    /// off, when an IPv6 NAT service is installed.
    fn warn_if_not_forwarding6(&mut self, spec: &ServiceSpec) {
        let ifindexes: BTreeSet<u32> = std::iter::once(self.node.ifindex)
            .chain(spec.backends.iter().filter(|b| b.address.is_ipv6()).map(|b| b.ifindex))
            .filter(|i| *i != 0 && !self.warned_forwarding6.contains(i))
            .collect();
        for ifindex in ifindexes {
            let Ok(name) = interface_name(ifindex) else { continue };
            if let Some(warning) = forwarding_warning(Family::V6, &name, Path::new("/proc")) {
                log::warn!("{warning}");
                self.warned_forwarding6.insert(ifindex);
            }
        }
    }

    fn write_service6(
        &mut self,
        id: &ServiceId,
        svc: &mut Installed6,
        spec: &ServiceSpec,
        keep: &HashSet<ServiceKey6>,
        tables: &mut maglev::Builder,
    ) -> Result<()> {
        fn v6(b: &BackendSpec) -> Option<(Ipv6Addr, &BackendSpec)> {
            match b.address {
                IpAddr::V6(a) => Some((a, b)),
                IpAddr::V4(_) => None,
            }
        }
        let wanted: HashMap<(Ipv6Addr, u16), &BackendSpec> =
            spec.backends.iter().filter_map(v6).map(|(a, b)| ((a, b.port), b)).collect();
        let gone: Vec<(Ipv6Addr, u16)> = svc.backends.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        let service = u16::try_from(svc.index)
            .map_err(|_| Error::Full(format!("service index {} over {}", svc.index, u16::MAX)))?;
        // Which backends are on this node, read afresh with every install, as for IPv4.
        let own = interface_addresses6();
        for (address, b) in spec.backends.iter().filter_map(v6) {
            let slot = match svc.backends.get(&(address, b.port)) {
                Some(slot) => *slot,
                None => {
                    let slot = self.free_backends.pop_front().ok_or_else(|| {
                        Error::Full(format!("no room for backend [{address}]:{}: {MAX_BACKENDS} in use", b.port))
                    })?;
                    svc.backends.insert((address, b.port), slot);
                    slot
                }
            };
            // The address before the slot: a pin made from the slot always finds the address it was made with.
            let mut addresses: Array<&mut MapData, [u8; 16]> = map_mut(&mut self.ebpf, names::BACKEND_ADDRESSES6)?;
            addresses.set(slot, address.octets(), 0).with_context(|| format!("writing BACKEND_ADDRESSES6[{slot}]"))?;
            let entry = Backend {
                address: [0; 4],
                port: b.port.to_be_bytes(),
                mac: b.mac.unwrap_or_default(),
                src_mac: self.egress_mac(b.ifindex),
                ifindex: b.ifindex,
                healthy: u8::from(b.healthy),
                local: u8::from(own.contains(&address)),
                service,
            };
            self.write_backend(slot, entry)?;
        }
        let members: Vec<maglev::MaglevBackend> = spec
            .backends
            .iter()
            .filter(|b| b.usable())
            .filter_map(v6)
            .filter_map(|(address, b)| {
                svc.backends.get(&(address, b.port)).map(|slot| maglev::MaglevBackend {
                    id: *slot,
                    key: format!("[{address}]:{}", b.port),
                    weight: b.weight,
                })
            })
            .collect();
        let table = tables.build(&members).map_err(|source| Error::Maglev { service: id.to_string(), source })?;
        let next = 1 - svc.table;
        self.write_table(svc.index, next, &table)?;
        // As for IPv4: the backend at one of the node's own addresses, until it is in the Maglev table, gets its
        // weight's share of the local clients' connects from the socket load balancer.
        let waiting = spec
            .backends
            .iter()
            .filter_map(v6)
            .filter(|(address, b)| b.awaits_local_share() && own.contains(address))
            .find_map(|(address, b)| svc.backends.get(&(address, b.port)).map(|slot| (*slot, b.weight)));
        self.write_local_share(svc.index, local_share(&members, waiting))?;
        // As for IPv4: a NAT service's endpoints (all of them, healthy or not) before its SERVICES6 entries.
        let nat_endpoints: Vec<Endpoint6> = if spec.forwarding == FORWARD_NAT {
            spec.backends
                .iter()
                .filter_map(v6)
                .map(|(address, b)| Endpoint6::new(address.octets(), b.port.to_be_bytes(), spec.protocol))
                .collect()
        } else {
            Vec::new()
        };
        let previous = std::mem::replace(&mut svc.nat_endpoints, nat_endpoints.clone());
        for e in &nat_endpoints {
            self.nat_endpoint6_ref(*e, true)?;
        }
        for e in &previous {
            self.nat_endpoint6_ref(*e, false)?;
        }
        let value = ServiceValue { index: svc.index, table: next, forwarding: spec.forwarding, _pad: [0; 3] };
        let keys = service_keys6(spec);
        for key in &keys {
            self.write_service6_value(*key, value)?;
            self.owners6.insert(*key, id.clone());
        }
        svc.table = next;
        let left: Vec<ServiceKey6> = svc.keys.iter().filter(|k| !keys.contains(k)).copied().collect();
        svc.keys = keys;
        for key in left.into_iter().filter(|k| !keep.contains(k)) {
            self.release_key6(key, id)?;
        }
        for endpoint in &gone {
            if let Some(slot) = svc.backends.remove(endpoint) {
                self.write_backend(slot, Backend::default())?;
                self.free_backends.push_back(slot);
            }
        }
        Ok(())
    }

    /// Writes an IPv6 listener's value as [`DataPlane::write_service_value`] does for IPv4: into `SERVICES6`, then
    /// into a free `LISTENER6_TABLE` element, then moves its `LISTENER6_SLOTS` slot there.
    fn write_service6_value(&mut self, key: ServiceKey6, value: ServiceValue) -> Result<()> {
        let (vip, port) = (Ipv6Addr::from(key.vip), u16::from_be_bytes(key.port));
        let mut services: BpfHashMap<&mut MapData, ServiceKey6, ServiceValue> =
            map_mut(&mut self.ebpf, names::SERVICES6)?;
        services.insert(key, value, 0).with_context(|| format!("writing the SERVICES6 entry of [{vip}]:{port}"))?;
        let element = self.free_listener6_elements.pop_front().ok_or_else(|| {
            Error::Full(format!("no room for [{vip}]:{port}: {} IPv6 listeners at most", lb_common::MAX_LISTENERS))
        })?;
        let mut table: Array<&mut MapData, Listener6> = map_mut(&mut self.ebpf, names::LISTENER6_TABLE)?;
        table
            .set(element, Listener6::new(&key, value), 0)
            .with_context(|| format!("writing [{vip}]:{port} into LISTENER6_TABLE[{element}]"))?;
        let old = self.listener6_elements.insert(key, element);
        self.write_listener6_slot(key)?;
        self.free_listener6_elements.extend(old);
        Ok(())
    }

    /// Rewrites the `LISTENER6_SLOTS` slot of `key` from the IPv6 listeners now written: empty, the one listener
    /// folding there, or shared (`SERVICES6` decides).
    fn write_listener6_slot(&mut self, key: ServiceKey6) -> Result<()> {
        let fold = |k: &ServiceKey6| listener6_slot(ipv6_halves(&k.vip), k.port, k.protocol);
        let slot = fold(&key);
        let elements = &self.listener6_elements;
        let mut folding = elements.iter().filter(|(k, _)| fold(k) == slot).map(|(_, e)| *e);
        let value = match (folding.next(), folding.next()) {
            (None, _) => SLOT_EMPTY,
            (Some(element), None) => u16::try_from(element + 1).unwrap_or(SLOT_SHARED),
            (Some(_), Some(_)) => SLOT_SHARED,
        };
        let mut map: Array<&mut MapData, u16> = map_mut(&mut self.ebpf, names::LISTENER6_SLOTS)?;
        map.set(slot, value, 0).with_context(|| format!("writing LISTENER6_SLOTS[{slot}]"))
    }

    /// Removes the `SERVICES6` entry `key` if `id` still holds it: its slot first, then its hash entry.
    fn release_key6(&mut self, key: ServiceKey6, id: &ServiceId) -> Result<()> {
        if self.owners6.get(&key) != Some(id) {
            return Ok(());
        }
        let element = self.listener6_elements.remove(&key);
        self.write_listener6_slot(key)?;
        self.free_listener6_elements.extend(element);
        let mut services: BpfHashMap<&mut MapData, ServiceKey6, ServiceValue> =
            map_mut(&mut self.ebpf, names::SERVICES6)?;
        match services.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "removing the SERVICES6 entry of [{}]:{}",
                        Ipv6Addr::from(key.vip),
                        u16::from_be_bytes(key.port)
                    )
                });
            }
        }
        self.owners6.remove(&key);
        Ok(())
    }

    /// Removes the IPv6 part of a service, if installed: its entries (unless another service holds them by now),
    /// then its backend slots.
    fn remove_part6(&mut self, id: &ServiceId, keep: &HashSet<ServiceKey6>) -> Result<()> {
        let Some(svc) = self.services6.remove(id) else {
            return Ok(());
        };
        for key in svc.keys.iter().filter(|k| !keep.contains(k)) {
            self.release_key6(*key, id)?;
        }
        self.write_local_share(svc.index, LocalShare::default())?;
        for slot in svc.backends.values() {
            self.write_backend(*slot, Backend::default())?;
            self.free_backends.push_back(*slot);
        }
        for e in &svc.nat_endpoints {
            self.nat_endpoint6_ref(*e, false)?;
        }
        self.free_services.push(svc.index);
        Ok(())
    }

    /// Reads the `SERVICES6` value of a port on an IPv6 VIP (for tests and diagnostics); `None` when there is none.
    pub fn service_value6(&self, vip: Ipv6Addr, protocol: u8, port: u16) -> Result<Option<ServiceValue>> {
        let key = ServiceKey6::new(vip.octets(), port.to_be_bytes(), protocol);
        let services: BpfHashMap<&MapData, ServiceKey6, ServiceValue> = map_ref(&self.ebpf, names::SERVICES6)?;
        match services.get(&key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading the SERVICES6 entry of [{vip}]:{port}/{protocol}")),
        }
    }

    /// How many services the maps were sized for at load time.
    pub fn service_capacity(&self) -> u32 {
        self.service_capacity
    }

    /// Whether some installed backend is draining (`weight = 0`).
    pub fn draining(&self) -> bool {
        self.applied.values().flat_map(|s| &s.backends).any(|b| b.weight == 0)
    }

    /// The installed services.
    pub fn service_ids(&self) -> impl Iterator<Item = &ServiceId> {
        self.services.keys().chain(self.services6.keys().filter(|id| !self.services.contains_key(*id)))
    }

    /// Reads every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let reasons_map: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, names::COUNTERS)?;
        let mut reasons = Vec::with_capacity(REASON_COUNT as usize);
        for i in 0..REASON_COUNT {
            let per_cpu = reasons_map.get(&i, 0).with_context(|| format!("reading COUNTERS[{i}]"))?;
            reasons.push(per_cpu.iter().sum());
        }
        let service_stats: PerCpuArray<&MapData, Traffic> = map_ref(&self.ebpf, names::SERVICE_STATS)?;
        let backend_stats: PerCpuArray<&MapData, Traffic> = map_ref(&self.ebpf, names::BACKEND_STATS)?;
        let sum = |map: &PerCpuArray<&MapData, Traffic>, i: u32| -> Result<Traffic> {
            let per_cpu = map.get(&i, 0).with_context(|| format!("reading traffic counter {i}"))?;
            Ok(per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
                new_flows: a.new_flows + t.new_flows,
            }))
        };
        let mut counters = Counters { reasons, ..Counters::default() };
        let routers: std::collections::BTreeSet<u32> =
            self.vips.values().chain(self.vips6.values()).map(|v| v.router).filter(|r| *r < MAX_ROUTERS).collect();
        let router_map: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, names::ROUTER_COUNTERS)?;
        for router in routers {
            let mut by_reason = Vec::with_capacity(REASON_COUNT as usize);
            for reason in 0..REASON_COUNT {
                let i = router_counter(router, reason);
                let per_cpu = router_map.get(&i, 0).with_context(|| format!("reading ROUTER_COUNTERS[{i}]"))?;
                by_reason.push(per_cpu.iter().sum());
            }
            counters.routers.insert(router, by_reason);
        }
        for (id, svc) in &self.services {
            counters.services.insert(id.clone(), sum(&service_stats, svc.index)?);
            for ((address, port), slot) in &svc.backends {
                counters.backends.insert((id.clone(), *address, *port), sum(&backend_stats, *slot)?);
            }
        }
        for (id, svc) in &self.services6 {
            let traffic = sum(&service_stats, svc.index)?;
            let total = counters.services.entry(id.clone()).or_default();
            total.packets += traffic.packets;
            total.bytes += traffic.bytes;
            total.new_flows += traffic.new_flows;
            for ((address, port), slot) in &svc.backends {
                counters.backends.insert((id.clone(), IpAddr::V6(*address), *port), sum(&backend_stats, *slot)?);
            }
        }
        Ok(counters)
    }

    /// Open flows per backend of every installed service, by (service, address, port): a scan of the
    /// connection table from user space, for draining backends (`weight = 0`) in `xvip status`.
    ///
    /// This is the one place user space reads the connection and NAT tables, so a change of their layout changes
    /// only this function. A flow counts when its `CONNTRACK` entry is pinned to a slot the service still owns,
    /// which still holds the backend the flow was pinned to, and:
    /// - NAT: its reverse `NAT` entry is still this flow's and not finished (no RST, not FIN from both sides, and
    ///   for UDP not idle past the UDP timeout), exactly what the program would still translate;
    /// - DSR: always. The program sees only the client's side of a DSR flow and keeps no close state, so a closed
    ///   DSR connection stays counted until the table evicts its entry.
    ///
    /// Cost: two `bpf()` calls per connection-table entry (plus one per NAT flow); callers scan only while
    /// something drains.
    ///
    /// # Errors
    /// When a map is missing or a read fails for another reason than the entry vanishing during the scan.
    pub fn flows_per_backend(&self) -> Result<BTreeMap<BackendKey, u64>> {
        Ok(self.scan(false)?.flows)
    }

    /// One walk over the connection table (open flows per backend, as [`DataPlane::flows_per_backend`] counts
    /// them, and the number of entries) and over the NAT table's keys (the number of entries): how full the two
    /// LRU tables are, for metrics. Same cost as [`DataPlane::flows_per_backend`] plus one `bpf()` call per NAT
    /// entry.
    ///
    /// # Errors
    /// When a map is missing or a read fails for another reason than the entry vanishing during the scan.
    pub fn scan_tables(&self) -> Result<TableScan> {
        self.scan(true)
    }

    /// The connection table walk; the NAT table's keys are walked too when `nat_keys`.
    fn scan(&self, nat_keys: bool) -> Result<TableScan> {
        let conntrack: BpfHashMap<&MapData, FlowKey, FlowValue> = map_ref(&self.ebpf, names::CONNTRACK)?;
        let nat: BpfHashMap<&MapData, NatKey, NatValue> = map_ref(&self.ebpf, names::NAT)?;
        let owners: HashMap<ServiceKey, (&ServiceId, &Installed)> =
            self.services.iter().flat_map(|(id, svc)| svc.keys.iter().map(move |key| (*key, (id, svc)))).collect();
        let slots: HashMap<(&ServiceId, u32), (IpAddr, u16)> = self
            .services
            .iter()
            .flat_map(|(id, svc)| svc.backends.iter().map(move |(endpoint, slot)| ((id, *slot), *endpoint)))
            .collect();
        let now = monotonic_ns()?;
        let mut scan = TableScan { capacity: u64::from(self.table_capacity), ..TableScan::default() };
        for entry in conntrack.iter() {
            let (flow, pinned) = match entry {
                Ok(entry) => entry,
                // An entry the program or the LRU removed between the key walk and the lookup.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("scanning the CONNTRACK map"),
            };
            scan.conntrack_entries += 1;
            let Some((id, svc)) = owners.get(&ServiceKey::new(flow.vip, flow.service_port, flow.protocol)) else {
                continue;
            };
            let Some(&(address, port)) = slots.get(&(*id, pinned.backend)) else {
                continue;
            };
            // Pinned to an earlier occupant of the slot: the program re-picks it at its next packet.
            if pinned.backend_address != octets4(address) || pinned.backend_port != port.to_be_bytes() {
                continue;
            }
            let open = if pinned.nat_port == [0, 0] {
                svc.forwarding != FORWARD_NAT
            } else {
                let key = NatKey::new(octets4(address), flow.vip, port.to_be_bytes(), pinned.nat_port, flow.protocol);
                match nat.get(&key, 0) {
                    Ok(reverse) => nat_flow_open(&flow, &reverse, now, &self.nat_timeouts),
                    Err(MapError::KeyNotFound) => false,
                    Err(e) => return Err(e).context("reading the NAT map"),
                }
            };
            if open {
                *scan.flows.entry(((*id).clone(), address, port)).or_insert(0) += 1;
            }
        }
        // IPv6 flows: a DSR pin to a slot that still holds its backend is open, as for IPv4 DSR; a NAT one while
        // its reverse entry is its own and open.
        let conntrack6: BpfHashMap<&MapData, FlowKey6, FlowValue6> = map_ref(&self.ebpf, names::CONNTRACK6)?;
        let nat6: BpfHashMap<&MapData, NatKey6, NatValue6> = map_ref(&self.ebpf, names::NAT6)?;
        let owners6: HashMap<ServiceKey6, &ServiceId> =
            self.services6.iter().flat_map(|(id, svc)| svc.keys.iter().map(move |key| (*key, id))).collect();
        let slots6: HashMap<(&ServiceId, u32), (Ipv6Addr, u16)> = self
            .services6
            .iter()
            .flat_map(|(id, svc)| svc.backends.iter().map(move |(endpoint, slot)| ((id, *slot), *endpoint)))
            .collect();
        for entry in conntrack6.iter() {
            let (flow, pinned) = match entry {
                Ok(entry) => entry,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("scanning the CONNTRACK6 map"),
            };
            scan.conntrack_entries += 1;
            let Some(id) = owners6.get(&ServiceKey6::new(flow.vip, flow.service_port, flow.protocol)) else {
                continue;
            };
            let Some(&(address, port)) = slots6.get(&(*id, pinned.backend)) else {
                continue;
            };
            if pinned.backend_address != address.octets() || pinned.backend_port != port.to_be_bytes() {
                continue;
            }
            let open = pinned.nat_port == [0, 0] || {
                let key = NatKey6::new(address.octets(), flow.vip, port.to_be_bytes(), pinned.nat_port, flow.protocol);
                match nat6.get(&key, 0) {
                    Ok(reverse) => {
                        let owned = reverse.client == flow.client
                            && reverse.client_port == flow.client_port
                            && reverse.service_port == flow.service_port;
                        let state = (reverse.flags, reverse.last_seen_ns);
                        owned && nat_state_open(flow.protocol, state, now, &self.nat_timeouts)
                    }
                    Err(MapError::KeyNotFound) => false,
                    Err(e) => return Err(e).context("reading the NAT6 map"),
                }
            };
            if open {
                *scan.flows.entry(((*id).clone(), IpAddr::V6(address), port)).or_insert(0) += 1;
            }
        }
        if nat_keys {
            for key in nat.keys() {
                match key {
                    Ok(_) => scan.nat_entries += 1,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).context("scanning the NAT map"),
                }
            }
            for key in nat6.keys() {
                match key {
                    Ok(_) => scan.nat_entries += 1,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).context("scanning the NAT6 map"),
                }
            }
        }
        Ok(scan)
    }

    /// Deletes every connection-table and NAT entry of a flow to one of `vips`; returns how many of each.
    ///
    /// For an instance that stopped being active: while it is not, the program creates no state for its VIPs,
    /// and what it kept from its last active period would be wrong the next time it is (a peer carried those
    /// flows meanwhile): a pin left by an earlier connection from the same client port, made under another Maglev
    /// table, would send that port's next connection's packets to the old backend, and a reverse entry of a flow
    /// that ended on the peer would hold its NAT port, so a flow the peer gave that port would get another one
    /// here. Entries the program adds during the walk (the instance active again already) may be deleted too:
    /// their flows start over at their next packet, as after a failover.
    ///
    /// Then bumps `NodeConfig::flow_generation` (whatever the deletes did), so that no CPU's flow cache serves a
    /// copy of a deleted pin (`lb-ebpf/src/flow_cache.rs`).
    ///
    /// # Errors
    /// When a map is missing, or a walk or delete fails for another reason than the entry vanishing meanwhile.
    pub fn forget_flows(&mut self, vips: &[IpAddr]) -> Result<(u64, u64)> {
        let deleted = self.delete_flows(vips);
        self.node.flow_generation = self.node.flow_generation.wrapping_add(1);
        let bumped = self.write_node();
        let counts = deleted?;
        bumped?;
        Ok(counts)
    }

    fn delete_flows(&mut self, vips: &[IpAddr]) -> Result<(u64, u64)> {
        let vips6: Vec<[u8; 16]> = vips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(v6) => Some(v6.octets()),
                IpAddr::V4(_) => None,
            })
            .collect();
        let (flows6, translations6) = if vips6.is_empty() {
            (0, 0)
        } else {
            let mut conntrack: BpfHashMap<&mut MapData, FlowKey6, FlowValue6> =
                map_mut(&mut self.ebpf, names::CONNTRACK6)?;
            let stale =
                keys_where(conntrack.keys(), |k: &FlowKey6| vips6.contains(&k.vip)).context("walking CONNTRACK6")?;
            let flows = remove_all(stale, |k| conntrack.remove(k)).context("deleting from CONNTRACK6")?;
            let mut nat: BpfHashMap<&mut MapData, NatKey6, NatValue6> = map_mut(&mut self.ebpf, names::NAT6)?;
            let stale = keys_where(nat.keys(), |k: &NatKey6| vips6.contains(&k.vip)).context("walking NAT6")?;
            (flows, remove_all(stale, |k| nat.remove(k)).context("deleting from NAT6")?)
        };
        let vips: Vec<[u8; 4]> = vips.iter().map(|a| octets4(*a)).filter(|a| *a != [0; 4]).collect();
        let flows = flows6 + {
            let mut conntrack: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
                map_mut(&mut self.ebpf, names::CONNTRACK)?;
            let stale =
                keys_where(conntrack.keys(), |k: &FlowKey| vips.contains(&k.vip)).context("walking CONNTRACK")?;
            remove_all(stale, |k| conntrack.remove(k)).context("deleting from CONNTRACK")?
        };
        let translations = translations6 + {
            let mut nat: BpfHashMap<&mut MapData, NatKey, NatValue> = map_mut(&mut self.ebpf, names::NAT)?;
            let stale = keys_where(nat.keys(), |k: &NatKey| vips.contains(&k.vip)).context("walking NAT")?;
            remove_all(stale, |k| nat.remove(k)).context("deleting from NAT")?
        };
        Ok((flows, translations))
    }

    /// Runs the load balancer program once over `frame` with BPF_PROG_TEST_RUN (nothing is sent anywhere).
    pub fn test_run(&mut self, frame: &[u8]) -> Result<TestOutcome> {
        self.test_run_program(names::PROGRAM, frame, 1)
    }

    /// Runs the load balancer program once over `frame` as if it arrived on interface `ingress_ifindex` (of the
    /// calling thread's network namespace); the FIB lookups of the program happen there.
    pub fn test_run_on(&mut self, frame: &[u8], ingress_ifindex: u32) -> Result<TestOutcome> {
        self.test_run_with(names::PROGRAM, frame, 1, Some(ingress_ifindex))
    }

    /// Runs the egress program once over `frame` as if it left through interface `ifindex` (of the calling thread's
    /// network namespace). The outcome's `action` is the TC verdict (TC_ACT_OK = 0, TC_ACT_SHOT = 2,
    /// TC_ACT_REDIRECT = 7).
    pub fn test_run_egress(&mut self, frame: &[u8], ifindex: u32) -> Result<TestOutcome> {
        // `struct __sk_buff` (192 bytes); only `ifindex` (at byte 40) set: the device the packet is on.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .egress_program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of the egress program over a {}-byte frame", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        Ok(TestOutcome { action: result.return_value, frame: out, duration: result.duration })
    }

    /// Runs `program` `repeat` times over `frame` (benchmarks use the pass program as their baseline).
    pub fn test_run_program(&mut self, program: &str, frame: &[u8], repeat: u32) -> Result<TestOutcome> {
        self.test_run_with(program, frame, repeat, None)
    }

    /// Runs `program` `repeat` times over `frame`, received on `ingress` (default: loopback).
    pub fn test_run_with(
        &mut self,
        program: &str,
        frame: &[u8],
        repeat: u32,
        ingress: Option<u32>,
    ) -> Result<TestOutcome> {
        // Room for frames that grow (NAT, encapsulation) plus the kernel's headroom checks.
        let mut out = vec![0u8; frame.len() + 256];
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = ingress
            .map(|ifindex| {
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                [0, len, 0, ifindex, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect()
            })
            .unwrap_or_default();
        let result = self
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ingress.map(|_| ctx.as_slice()),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program} over a {}-byte frame", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        Ok(TestOutcome { action: result.return_value, frame: out, duration: result.duration })
    }

    /// Bytes of `program` as the verifier left it (8 per instruction): benchmarks show with it what a load-time
    /// option pruned.
    ///
    /// # Errors
    /// When the program is missing or the kernel does not say.
    pub fn translated_size(&mut self, program: &str) -> Result<u32> {
        let info = self.program(program)?.info().with_context(|| format!("reading the info of program {program}"))?;
        info.size_translated().ok_or_else(|| Error::Refused(format!("the kernel does not report {program}'s size")))
    }

    /// A map of the loaded object, to read only: tests check the program's own state (the connection and NAT
    /// tables) from user space. Every write goes through the methods above.
    #[doc(hidden)]
    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }
}

/// Idle times after which the program lets another flow take a NAT entry's port (`lb-ebpf/src/nat.rs`).
#[derive(Clone, Copy, Debug)]
struct NatTimeouts {
    udp_ns: u64,
    embryonic_ns: u64,
    established_ns: u64,
}

/// Whether the program would still translate a NAT flow whose reverse entry is `reverse`: the entry is the flow's,
/// no RST was seen, not both sides sent a FIN, and it has not idled past the timeout of its state (UDP, embryonic
/// or established TCP).
fn nat_flow_open(flow: &FlowKey, reverse: &NatValue, now_ns: u64, timeouts: &NatTimeouts) -> bool {
    let owned = reverse.client == flow.client
        && reverse.client_port == flow.client_port
        && reverse.service_port == flow.service_port;
    owned && nat_state_open(flow.protocol, (reverse.flags, reverse.last_seen_ns), now_ns, timeouts)
}

/// Whether a translation in TCP/UDP state `(flags, last_seen_ns)` is neither closed nor expired (IPv4 and IPv6).
fn nat_state_open(protocol: u8, (flags, last_seen_ns): (u8, u64), now_ns: u64, timeouts: &NatTimeouts) -> bool {
    let closed = NAT_FIN_CLIENT | NAT_FIN_BACKEND;
    let finished = flags & NAT_RST != 0 || flags & closed == closed;
    let timeout = if protocol == PROTO_UDP {
        timeouts.udp_ns
    } else if flags & NAT_ESTABLISHED != 0 {
        timeouts.established_ns
    } else {
        timeouts.embryonic_ns
    };
    let expired = now_ns.saturating_sub(last_seen_ns) > timeout;
    !finished && !expired
}

/// This node's IPv4 addresses and the broadcast addresses of their subnets (loopback left out: the program drops
/// 127/8 anyway), as many as `NodeConfig::local` holds; the rest unused (all zero). A source among them is never
/// a client.
fn local_addresses() -> [[u8; 4]; LOCAL_ADDRESSES] {
    let mut found: Vec<[u8; 4]> = Vec::new();
    for (address, mask) in interface_addresses() {
        found.push(address.to_be_bytes());
        if let Some(mask) = mask
            && mask.leading_ones() < 31
        {
            found.push((address | !mask).to_be_bytes());
        }
    }
    found.sort_unstable();
    found.dedup();
    if found.len() > LOCAL_ADDRESSES {
        log::debug!(
            "this node has {} addresses and broadcasts; the data plane checks the first {LOCAL_ADDRESSES}",
            found.len()
        );
    }
    let mut local = [[0; 4]; LOCAL_ADDRESSES];
    for (slot, address) in local.iter_mut().zip(found) {
        *slot = address;
    }
    local
}

/// This node's IPv6 addresses of global and unique-local scope, as many as `NodeConfig::local6` holds; the rest
/// unused (all zero). A source among them is never a client of an IPv6 VIP. Loopback is martian anyway, and a
/// link-local address is unique only on its link (another host of another link may hold it).
fn local_addresses6() -> [[u8; 16]; lb_common::LOCAL_ADDRESSES6] {
    let mut found: Vec<[u8; 16]> = interface_addresses6()
        .into_iter()
        .filter(|a| !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local()))
        .map(|a| a.octets())
        .collect();
    found.sort_unstable();
    found.dedup();
    if found.len() > lb_common::LOCAL_ADDRESSES6 {
        log::debug!(
            "this node has {} IPv6 addresses; the data plane checks the first {}",
            found.len(),
            lb_common::LOCAL_ADDRESSES6
        );
    }
    let mut local = [[0; 16]; lb_common::LOCAL_ADDRESSES6];
    for (slot, address) in local.iter_mut().zip(found) {
        *slot = address;
    }
    local
}

/// Every IPv6 address of this node's interfaces.
fn interface_addresses6() -> Vec<Ipv6Addr> {
    match netif::addresses() {
        Ok(all) => all
            .into_iter()
            .filter_map(|a| match a.address {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
            .collect(),
        Err(e) => {
            log::warn!("listing this node's IPv6 addresses: {e}");
            Vec::new()
        }
    }
}

/// Whether `address` can be an IPv6 VIP: a unicast address a client can send to (the program treats the others
/// as sources no client can have, `lb_common::martian_source6`).
fn usable_vip6(address: Ipv6Addr) -> bool {
    !(address.is_unspecified() || address.is_loopback() || address.is_multicast() || address.to_ipv4_mapped().is_some())
}

/// Every IPv4 address of this node's interfaces, loopback's aside: a backend at one of them is on this node
/// (`Backend::local`, delivered through the node's own stack; an IPv6 one likewise, `interface_addresses6`).
fn own_addresses() -> Vec<[u8; 4]> {
    interface_addresses().into_iter().map(|(address, _)| address.to_be_bytes()).collect()
}

/// The IPv4 addresses (host order) of this node's interfaces, with their netmasks; 127/8 left out.
fn interface_addresses() -> Vec<(u32, Option<u32>)> {
    let all = match netif::addresses() {
        Ok(all) => all,
        Err(e) => {
            log::warn!("listing this node's addresses: {e}");
            return Vec::new();
        }
    };
    let v4 = |a: Option<IpAddr>| match a {
        Some(IpAddr::V4(v4)) => Some(u32::from(v4)),
        _ => None,
    };
    all.into_iter()
        .filter_map(|a| v4(Some(a.address)).map(|address| (address, v4(a.netmask))))
        .filter(|(address, _)| address >> 24 != 127)
        .collect()
}

/// The index of `interface` in the caller's namespace.
/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14).
fn netns_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

fn interface_index(interface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| Error::Refused(format!("interface name {interface:?} contains a NUL byte")))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("looking up interface {interface}"));
    }
    Ok(index)
}

/// The name of interface `ifindex` in the caller's namespace.
fn interface_name(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call may write.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("looking up interface {ifindex}"));
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// NAT replies and ICMP errors to clients are routed by the kernel's FIB, which only answers for interfaces with
/// IPv4 forwarding on.
fn warn_if_not_forwarding(interface: &str) {
    if let Some(warning) = forwarding_warning(Family::V4, interface, Path::new("/proc")) {
        log::warn!("{warning}");
    }
}

/// The address family of a forwarding sysctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The warning for `interface` when `<proc>/sys/net/ipv{4,6}/conf/<interface>/forwarding` reads 0: the FIB then
/// refuses the lookups that route the family's NAT replies, and the program drops them. `None` when forwarding is
/// on or the file cannot be read (an interface gone, no IPv6).
fn forwarding_warning(family: Family, interface: &str, proc: &Path) -> Option<String> {
    let (name, dir) = match family {
        Family::V4 => ("IPv4", "ipv4"),
        Family::V6 => ("IPv6", "ipv6"),
    };
    let path = proc.join(format!("sys/net/{dir}/conf/{interface}/forwarding"));
    let value = std::fs::read_to_string(&path).ok()?;
    (value.trim() == "0").then(|| {
        format!(
            "{name} forwarding is off on {interface} ({} = 0): {name} NAT services cannot route their replies and \
             drop them (drop_forwarding_disabled); set net.{dir}.conf.{interface}.forwarding=1 (Kubernetes nodes \
             have it)",
            path.display()
        )
    })
}

fn attach_error(interface: &str, mode: &'static str, source: aya::programs::ProgramError) -> AttachError {
    let failure = match os_error(&source) {
        // aya looks the name up before asking the kernel.
        _ if matches!(source, aya::programs::ProgramError::UnknownInterface { .. }) => AttachFailure::NoDevice,
        Some(libc::EBUSY) => AttachFailure::Busy,
        Some(libc::ENODEV) => AttachFailure::NoDevice,
        Some(libc::EOPNOTSUPP) => AttachFailure::Unsupported,
        _ => AttachFailure::Other,
    };
    AttachError { interface: interface.to_string(), mode, failure, source }
}

/// The routers' active flags and the dead-man heartbeat, the writes of the advert path (see
/// [`DataPlane::node_control`]): all live in the one `HEARTBEAT` entry, and each write is one small map update.
pub struct NodeControl {
    heartbeat: Array<MapData, Heartbeat>,
    beat: Heartbeat,
}

/// Sets router `router`'s flag in `beat`.
fn set_flag(beat: &mut Heartbeat, router: u32, active: bool) -> Result<()> {
    let Some(flag) = usize::try_from(router).ok().and_then(|r| beat.active.get_mut(r)) else {
        return Err(Error::Refused(format!("router {router} is out of range (the data plane has {MAX_ROUTERS})")));
    };
    *flag = u8::from(active);
    Ok(())
}

impl NodeControl {
    /// Starts (`true`) or stops answering for the VIPs of `router`.
    ///
    /// # Errors
    /// When the router is out of range or the map write fails.
    pub fn set_active(&mut self, router: u32, active: bool) -> Result<()> {
        set_flag(&mut self.beat, router, active)?;
        self.write()
    }

    pub fn is_active(&self, router: u32) -> bool {
        self.beat.is_active(router)
    }

    /// Sets how old the heartbeat may get before the program stops answering (0 = never), at once.
    ///
    /// # Errors
    /// When the map write fails.
    pub fn set_max_age(&mut self, max_age: Duration) -> Result<()> {
        self.beat.max_age_ns = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        self.write()
    }

    /// Refreshes the heartbeat: the agent is alive now.
    ///
    /// # Errors
    /// When the clock or the map write fails.
    pub fn beat(&mut self) -> Result<()> {
        self.beat.last_ns = monotonic_ns()?;
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        self.heartbeat.set(0, self.beat, 0).context("writing the HEARTBEAT map")
    }
}

/// `xvip trace`'s handle on the data plane (see [`DataPlane::trace`]): it turns the program's trace records on and
/// off, reads its counters, and reads the records from the program's log ring (aya-log). Dropping it switches
/// tracing off.
pub struct Trace {
    switch: Array<MapData, TraceConfig>,
    state: PerCpuArray<MapData, TraceState>,
    logger: aya_log::EbpfLogger<Arc<TraceSink>>,
    sink: Arc<TraceSink>,
    generation: u32,
}

/// The program's trace counters, summed over CPUs (each only grows while the program is loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCounters {
    /// Records written to the log ring.
    pub emitted: u64,
    /// Matching decisions held back by the rate limit.
    pub suppressed: u64,
    /// Matching decisions held back because the log ring was nearly full.
    pub ring_full: u64,
}

impl Trace {
    /// Switches the records on with `config`'s filter and interval (`on` is set here; each CPU's limiter starts
    /// afresh), or off with `None`.
    ///
    /// # Errors
    /// When the map write fails.
    pub fn set(&mut self, config: Option<TraceConfig>) -> Result<()> {
        let value = match config {
            Some(c) => {
                self.generation = self.generation.wrapping_add(1);
                TraceConfig { on: 1, generation: self.generation, ..c }
            }
            None => TraceConfig::default(),
        };
        self.switch.set(0, value, 0).context("writing TRACE[0]")
    }

    /// The switch as the program sees it.
    ///
    /// # Errors
    /// When the map read fails.
    pub fn config(&self) -> Result<TraceConfig> {
        self.switch.get(&0, 0).context("reading TRACE[0]")
    }

    /// # Errors
    /// When the map read fails.
    pub fn counters(&self) -> Result<TraceCounters> {
        let per_cpu = self.state.get(&0, 0).context("reading TRACE_STATE[0]")?;
        Ok(per_cpu.iter().fold(TraceCounters::default(), |a, s| TraceCounters {
            emitted: a.emitted + s.emitted,
            suppressed: a.suppressed + s.suppressed,
            ring_full: a.ring_full + s.ring_full,
        }))
    }

    /// Every record in the log ring now, oldest first (at most what the 128 KiB ring holds). Anything else the
    /// program logs goes to the agent's log.
    pub fn read(&mut self) -> Vec<TraceRecord> {
        self.logger.flush();
        self.sink.records.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    /// Records of the trace target that could not be decoded (a program and an agent from different builds).
    pub fn malformed(&self) -> u64 {
        self.sink.malformed.load(Ordering::Relaxed)
    }
}

impl AsFd for Trace {
    /// The log ring: readable when the program wrote records.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

impl AsRawFd for Trace {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

impl Drop for Trace {
    /// A trace task that ends (or panics) leaves tracing off.
    fn drop(&mut self) {
        let _ = self.switch.set(0, TraceConfig::default(), 0);
    }
}

/// Where aya-log hands the records it reads from the log ring (see [`Trace::read`]).
#[derive(Default)]
struct TraceSink {
    records: Mutex<Vec<TraceRecord>>,
    malformed: AtomicU64,
}

impl log::Log for TraceSink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target() != TRACE_TARGET {
            log::logger().log(record);
            return;
        }
        match decode_trace(&record.args().to_string()) {
            Some(r) => {
                if let Ok(mut records) = self.records.lock() {
                    records.push(r);
                }
            }
            None => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

/// A trace record from its aya-log message: `decision ` and the record's bytes in hex (`lb-ebpf/src/trace.rs`).
fn decode_trace(message: &str) -> Option<TraceRecord> {
    let hex = message.strip_prefix("decision ")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
    TraceRecord::from_bytes(&bytes?)
}

/// `BPF_MAP_UPDATE_BATCH`, which aya does not wrap: many elements of one map in one syscall.
mod batch {
    use std::io;
    use std::os::fd::RawFd;

    /// The `batch` member of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

    /// Writes `values[i]` at `keys[i]` for every i, in one call.
    ///
    /// # Errors
    /// The kernel's error (EINVAL on kernels without batch operations); after an error the first elements may be
    /// written.
    pub fn update<K: Copy, V: Copy>(fd: RawFd, keys: &[K], values: &[V]) -> io::Result<()> {
        if keys.len() != values.len() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let count = u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let map_fd = u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count,
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of its own size; the kernel reads `count` keys and values
        // from the two slices, which live (and are not moved) for the whole call, and writes back `count` only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if attr.count != count {
            return Err(io::Error::other(format!("the kernel wrote {} of {count} elements", attr.count)));
        }
        Ok(())
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
///
/// # Errors
/// When `clock_gettime` fails (it does not on Linux).
pub fn monotonic_ns() -> Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(CLOCK_MONOTONIC)");
    }
    // Never negative: the monotonic clock counts from boot.
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The keys of a map walk that `keep` selects (keys removed during the walk are skipped).
fn keys_where<K>(
    keys: impl Iterator<Item = std::result::Result<K, MapError>>,
    keep: impl Fn(&K) -> bool,
) -> std::result::Result<Vec<K>, MapError> {
    let mut selected = Vec::new();
    for key in keys {
        match key {
            Ok(k) if keep(&k) => selected.push(k),
            Ok(_) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(selected)
}

/// Removes each key with `remove`; a key already gone counts as removed by someone else. Returns how many it
/// removed.
fn remove_all<K>(
    keys: Vec<K>,
    mut remove: impl FnMut(&K) -> std::result::Result<(), MapError>,
) -> std::result::Result<u64, MapError> {
    let mut removed = 0;
    for key in &keys {
        match remove(key) {
            Ok(()) => removed += 1,
            Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| Error::Object(format!("has no map named {name}")))?;
    T::try_from(map).with_context(|| format!("map {name} does not have the expected type"))
}

fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| Error::Object(format!("has no map named {name}")))?;
    T::try_from(map).with_context(|| format!("map {name} does not have the expected type"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const FLOW: FlowKey =
        FlowKey::new([10, 0, 0, 100], [10, 0, 0, 250], [0xc0, 0x00], [0x01, 0xbb], lb_common::PROTO_TCP);
    const TIMEOUTS: NatTimeouts = NatTimeouts { udp_ns: 10, embryonic_ns: 5, established_ns: 1_000 };

    fn reverse(flags: u8, last_seen_ns: u64) -> NatValue {
        NatValue {
            client: FLOW.client,
            client_port: FLOW.client_port,
            service_port: FLOW.service_port,
            flags,
            last_seen_ns,
            ..NatValue::default()
        }
    }

    #[test]
    fn forwarding_off_is_warned_about_per_family_naming_the_sysctl() {
        let proc = std::env::temp_dir().join(format!("xvip-forwarding-{}", std::process::id()));
        let write = |dir: &str, interface: &str, value: &str| {
            let path = proc.join(format!("sys/net/{dir}/conf/{interface}"));
            std::fs::create_dir_all(&path).expect("directory");
            std::fs::write(path.join("forwarding"), value).expect("file");
        };
        write("ipv4", "eth0", "1\n");
        write("ipv6", "eth0", "0\n");
        write("ipv6", "eth1", "1\n");
        let warning = forwarding_warning(Family::V6, "eth0", &proc).expect("IPv6 forwarding off on eth0");
        assert!(warning.starts_with("IPv6 forwarding is off on eth0"), "{warning}");
        assert!(warning.contains("set net.ipv6.conf.eth0.forwarding=1"), "{warning}");
        assert_eq!(forwarding_warning(Family::V4, "eth0", &proc), None, "IPv4 forwarding is on");
        assert_eq!(forwarding_warning(Family::V6, "eth1", &proc), None, "IPv6 forwarding is on on eth1");
        assert_eq!(forwarding_warning(Family::V6, "eth2", &proc), None, "no such interface");
        write("ipv4", "eth1", "0");
        let warning = forwarding_warning(Family::V4, "eth1", &proc).expect("IPv4 forwarding off on eth1");
        assert!(warning.contains("set net.ipv4.conf.eth1.forwarding=1"), "{warning}");
        std::fs::remove_dir_all(&proc).expect("cleanup");
    }

    #[test]
    fn trace_messages_decode_to_records_and_anything_else_is_refused() {
        let record =
            TraceRecord { from: TraceRecord::ipv4([192, 0, 2, 7]), reason: 16, action: 3, ..TraceRecord::default() };
        let hex: String = record.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_trace(&format!("decision {hex}")), Some(record));
        // An IPv6 record: its addresses and family come back whole.
        let client6: std::net::Ipv6Addr = "2001:db8:7::7".parse().expect("address");
        let record6 = TraceRecord {
            from: client6.octets(),
            client: client6.octets(),
            to: "2001:db8::250".parse::<std::net::Ipv6Addr>().expect("address").octets(),
            backend: "2001:db8::11".parse::<std::net::Ipv6Addr>().expect("address").octets(),
            backend_port: 8080u16.to_be_bytes(),
            family: lb_common::TRACE_IPV6,
            ..record
        };
        let hex6: String = record6.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let decoded = decode_trace(&format!("decision {hex6}")).expect("an IPv6 record");
        assert_eq!(decoded, record6);
        assert_eq!(decoded.address(&decoded.client).to_string(), "2001:db8:7::7");
        assert_eq!(decoded.address(&decoded.backend).to_string(), "2001:db8::11");
        let short = 2 * lb_common::TRACE_RECORD_LEN - 2;
        assert_eq!(decode_trace(&format!("decision {}", &hex[..short])), None, "short");
        assert_eq!(decode_trace(&format!("decision {}", &hex[..short + 1])), None, "odd length");
        assert_eq!(decode_trace(&format!("decision {}zz", &hex[..short])), None, "not hex");
        assert_eq!(decode_trace(&format!("verdict {hex}")), None, "another message");
    }

    #[test]
    fn a_nat_flow_is_open_until_reset_or_closed_by_both_sides() {
        let open = |flags, now| nat_flow_open(&FLOW, &reverse(NAT_ESTABLISHED | flags, 0), now, &TIMEOUTS);
        assert!(open(0, 1));
        assert!(open(NAT_FIN_CLIENT, 1), "half closed still carries data");
        assert!(!open(NAT_FIN_CLIENT | NAT_FIN_BACKEND, 1));
        assert!(!open(NAT_RST, 1));
        assert!(open(0, 1_000), "established flows stay open up to their idle time");
        assert!(!open(0, 1_001), "and end after it");
    }

    #[test]
    fn a_nat_flow_whose_port_another_flow_took_is_not_counted() {
        let other = NatValue { client_port: [0xc0, 0x01], ..reverse(0, 0) };
        assert!(!nat_flow_open(&FLOW, &other, 1, &TIMEOUTS));
    }

    #[test]
    fn an_embryonic_nat_flow_ends_after_the_embryonic_timeout() {
        assert!(nat_flow_open(&FLOW, &reverse(0, 100), 105, &TIMEOUTS));
        assert!(!nat_flow_open(&FLOW, &reverse(0, 100), 106, &TIMEOUTS), "never answered: reclaimable");
    }

    #[test]
    fn a_udp_flow_ends_when_idle_past_the_timeout() {
        let udp = FlowKey { protocol: PROTO_UDP, ..FLOW };
        assert!(nat_flow_open(&udp, &reverse(0, 100), 110, &TIMEOUTS));
        assert!(!nat_flow_open(&udp, &reverse(0, 100), 111, &TIMEOUTS));
    }

    fn backend(last: u8) -> BackendSpec {
        BackendSpec {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            port: 80,
            weight: 1,
            healthy: true,
            mac: Some([2, 0, 0, 0, 0, last]),
            ifindex: 0,
        }
    }

    /// The live Maglev table of an installed service, read back from the map.
    fn live_table(dp: &DataPlane, id: &ServiceId) -> Vec<u32> {
        let svc = &dp.services[id];
        let maglev: Array<&MapData, MaglevChunk> = map_ref(&dp.ebpf, names::MAGLEV).expect("MAGLEV");
        let mut table = Vec::with_capacity(MAGLEV_M as usize);
        for chunk in 0..MAGLEV_CHUNKS {
            let (key, _) = maglev_position(svc.index, svc.table, chunk * MAGLEV_CHUNK);
            table.extend_from_slice(&maglev.get(&key, 0).expect("MAGLEV chunk").slots);
        }
        table.truncate(MAGLEV_M as usize);
        table
    }

    /// Needs root (loads the BPF object); nothing is attached.
    #[test]
    fn services_installed_together_each_get_their_own_table_and_a_failure_stops_only_its_service() {
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 3, ..LoadOptions::default() })
            .expect("loading the XDP program (needs root)");
        let spec = |vip: u8, backends: Vec<BackendSpec>| ServiceSpec {
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, vip))],
            port: 80,
            protocol: lb_common::PROTO_TCP,
            forwarding: 0,
            backends,
        };
        let shared: Vec<BackendSpec> = (1..=16).map(backend).collect();
        let mut reversed = shared.clone();
        reversed.reverse();
        let other: Vec<BackendSpec> = (20..=24).map(backend).collect();
        let ids: Vec<ServiceId> = ["a", "b", "c", "d"].iter().map(|n| ServiceId::new(n, "web")).collect();
        // Two instances in front of the same backends (listed in another order), a third elsewhere, and a fourth
        // beyond the capacity the data plane was loaded for.
        let batch = vec![
            (ids[0].clone(), spec(250, shared.clone())),
            (ids[1].clone(), spec(251, reversed)),
            (ids[2].clone(), spec(252, other)),
            (ids[3].clone(), spec(253, shared)),
        ];
        let results = dp.apply_services(&batch);
        assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
        assert!(matches!(results[3], Err(Error::Full(_))), "{:?}", results[3]);
        for id in &ids[..3] {
            let svc = &dp.services[id];
            let members: Vec<maglev::MaglevBackend> = svc
                .backends
                .iter()
                .map(|((address, port), slot)| maglev::MaglevBackend {
                    id: *slot,
                    key: format!("{address}:{port}"),
                    weight: 1,
                })
                .collect();
            let expected = maglev::build(&members, MAGLEV_M).expect("maglev");
            assert_eq!(live_table(&dp, id), expected, "service {id}: its own backend slots, in build's places");
        }
        let slots = |id: &ServiceId| dp.services[id].backends.values().copied().collect::<BTreeSet<u32>>();
        assert!(slots(&ids[0]).is_disjoint(&slots(&ids[1])), "each service has its own backend slots");
        assert!(!dp.services.contains_key(&ids[3]));
    }

    /// Needs root (loads the BPF object); nothing is attached.
    #[test]
    fn a_leaving_backends_slot_is_cleared_only_after_the_new_table_is_live() {
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() })
            .expect("loading the XDP program (needs root)");
        let spec = |backends| ServiceSpec {
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 250))],
            port: 80,
            protocol: lb_common::PROTO_TCP,
            forwarding: 0,
            backends,
        };
        let web = ServiceId::new("default", "web");
        dp.apply_service(&web, &spec(vec![backend(1), backend(2), backend(3)])).expect("three backends");
        let gone = dp.services[&web].backends[&(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 80)];
        dp.journal.clear();
        dp.apply_service(&web, &spec(vec![backend(1), backend(2)])).expect("two backends");
        let switched = dp.journal.iter().position(|j| matches!(j, Journal::Service { port: 80, .. }));
        let cleared = dp.journal.iter().position(|j| *j == Journal::Backend { slot: gone, cleared: true });
        assert!(
            matches!((switched, cleared), (Some(s), Some(c)) if s < c),
            "the table switch must come before the slot is cleared: {:?}",
            dp.journal
        );
    }
}
