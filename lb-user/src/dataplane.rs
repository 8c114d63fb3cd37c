//! The only module that touches the eBPF object: load, attach, write the maps, read the counters, detach.
//!
//! The rest of the agent describes what it wants (the node's role, the services and their backends with health and
//! MAC addresses); this module turns that into map entries. It owns the map layout: which service holds which
//! `SERVICES` slot (a port), service indices, backend slots, and the double-buffered Maglev tables (see
//! `lb_common::ServiceValue`).
//!
//! Two handles write the maps, each from its own thread in the agent: [`DataPlane`] (services, backends, tables;
//! slow work) and [`NodeControl`] (the active flag and the dead-man heartbeat; one small write each, on the advert
//! path).
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Backend, Endpoint, FORWARD_NAT, Heartbeat, MAGLEV_CHUNK, MAGLEV_CHUNKS, MAGLEV_M, MAX_BACKENDS, MAX_SERVICES,
    MaglevChunk, NO_BACKEND, NodeConfig, REASON_COUNT, Reason, ServiceValue, Traffic, maglev_position, names,
    service_slot,
};

use crate::maglev;

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

/// Sizes and times fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Entries of the connection table and of the NAT table (both LRU; see docs/nat.md for the memory).
    pub conntrack_entries: u32,
    /// Services the Maglev array has room for (two tables of `MAGLEV_CHUNKS` chunks each, 512 KiB per service).
    pub service_capacity: u32,
    /// Idle time after which a UDP NAT translation is gone.
    pub nat_udp_timeout: Duration,
    /// How long a TCP NAT translation closed by both sides keeps its port after its last packet.
    pub nat_closed_grace: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            conntrack_entries: lb_common::DEFAULT_CONNTRACK_ENTRIES,
            service_capacity: 8,
            nat_udp_timeout: Duration::from_nanos(lb_common::DEFAULT_NAT_UDP_TIMEOUT_NS),
            nat_closed_grace: Duration::from_nanos(lb_common::DEFAULT_NAT_CLOSED_GRACE_NS),
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

/// What a service looks like to the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub port: u16,
    pub protocol: u8,
    pub forwarding: u8,
    pub backends: Vec<BackendSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u8,
    pub healthy: bool,
    /// MAC of the backend or next hop; `None` while unresolved (the backend is then left out of the table).
    pub mac: Option<[u8; 6]>,
    /// Interface towards the backend; 0 = the interface the program is attached to.
    pub ifindex: u32,
}

impl BackendSpec {
    /// Whether the Maglev table may point at this backend: the one rule for a usable backend (healthy, its MAC
    /// known, a weight above 0), also used for the backend-loss penalty.
    pub fn usable(&self) -> bool {
        self.healthy && self.mac.is_some() && self.weight > 0
    }
}

/// Per-CPU counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `Reason as usize`.
    pub reasons: Vec<u64>,
    /// Per service name.
    pub services: BTreeMap<String, Traffic>,
    /// Per (service name, backend address, backend port).
    pub backends: BTreeMap<(String, Ipv4Addr, u16), Traffic>,
}

impl Counters {
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons.get(reason as usize).copied().unwrap_or(0)
    }
}

/// A service's place on the VIP: its `SERVICES` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ServiceKey {
    protocol: u8,
    port: u16,
}

impl ServiceKey {
    fn of(spec: &ServiceSpec) -> Self {
        ServiceKey { protocol: spec.protocol, port: spec.port }
    }
}

/// What this module remembers of a service it installed.
struct Installed {
    key: ServiceKey,
    /// DSR or NAT, as last written.
    forwarding: u8,
    index: u32,
    /// Which of the two Maglev tables is live.
    table: u32,
    /// What each of the two tables holds, so a rebuild writes only the slots that differ.
    shadows: [Vec<u32>; 2],
    /// Backend slots by (address, port).
    backends: HashMap<(Ipv4Addr, u16), u32>,
    /// What this service put into `NAT_BACKENDS` (NAT services: every configured backend).
    nat_endpoints: Vec<Endpoint>,
}

pub struct DataPlane {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    node: NodeConfig,
    services: BTreeMap<String, Installed>,
    free_services: Vec<u32>,
    /// Free backend slots, oldest-freed first, so a slot is reused as late as possible.
    free_backends: std::collections::VecDeque<u32>,
    service_capacity: u32,
    /// How many installed NAT services name each endpoint in `NAT_BACKENDS` (two services may share a backend).
    nat_endpoint_refs: HashMap<Endpoint, u32>,
    /// Which service's value sits in each written `SERVICES` slot. A slot is only ever cleared by its owner, so a
    /// service that moved away from a port can never clear it under the service that moved in (a reload that
    /// swaps two ports).
    slot_owners: HashMap<ServiceKey, String>,
    /// What each service was last installed as, so a reload skips the services it does not change.
    applied: HashMap<String, ServiceSpec>,
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
        let ebpf = EbpfLoader::new()
            .map_max_entries(names::MAGLEV, 2 * capacity * MAGLEV_CHUNKS)
            .map_max_entries(names::CONNTRACK, entries)
            .map_max_entries(names::NAT, entries)
            .override_global(names::NAT_UDP_TIMEOUT_NS, &udp_timeout, true)
            .override_global(names::NAT_CLOSED_GRACE_NS, &closed_grace, true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        let mut dp = DataPlane {
            ebpf,
            link: None,
            node: NodeConfig::default(),
            services: BTreeMap::new(),
            free_services: (0..capacity).rev().collect(),
            free_backends: (0..MAX_BACKENDS).collect(),
            service_capacity: capacity,
            nat_endpoint_refs: HashMap::new(),
            slot_owners: HashMap::new(),
            applied: HashMap::new(),
        };
        for name in [names::PROGRAM, names::PASS_PROGRAM] {
            dp.program(name)?.load().with_context(|| format!("verifying XDP program {name}"))?;
        }
        dp.write_node()?;
        Ok(dp)
    }

    fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program =
            self.ebpf.program_mut(name).ok_or_else(|| anyhow!("the eBPF object has no program named {name}"))?;
        program.try_into().with_context(|| format!("program {name} is not an XDP program"))
    }

    /// Attaches the load balancer to `interface`. Returns the mode that worked ("native" or "generic").
    ///
    /// # Errors
    /// When the interface does not exist, another XDP program is attached (EBUSY), or the mode is unsupported.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&'static str> {
        if self.link.is_some() {
            bail!("the XDP program is already attached");
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
        let link = link.map_err(|source| {
            let failure = match os_error(&source) {
                Some(libc::EBUSY) => AttachFailure::Busy,
                Some(libc::ENODEV) => AttachFailure::NoDevice,
                Some(libc::EOPNOTSUPP) => AttachFailure::Unsupported,
                _ => AttachFailure::Other,
            };
            AttachError { interface: interface.to_string(), mode: used, failure, source }
        })?;
        self.link = Some(link);
        Ok(used)
    }

    /// Removes the program from the interface (also happens when the process exits).
    pub fn detach(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            self.program(names::PROGRAM)?.detach(link).context("detaching the XDP program")?;
        }
        Ok(())
    }

    /// Sets what the program needs to know about this node.
    pub fn set_node(&mut self, vip: Ipv4Addr, mac: [u8; 6], hash_seed: u32) -> Result<()> {
        self.node = NodeConfig { vip: vip.octets(), mac, hash_seed, ..self.node };
        self.write_node()
    }

    /// Starts (`true`) or stops answering for the VIP.
    pub fn set_active(&mut self, active: bool) -> Result<()> {
        self.node.active = u32::from(active);
        self.write_node()
    }

    pub fn is_active(&self) -> bool {
        self.node.active == 1
    }

    /// A second handle on the node's own maps (`CONFIG` and `HEARTBEAT`) for the advert path, so taking or giving
    /// up the VIP and the dead-man heartbeat never wait behind service updates. After this call, write the node's
    /// state through the returned handle only.
    ///
    /// # Errors
    /// When the maps cannot be opened again by id.
    pub fn node_control(&self) -> Result<NodeControl> {
        let reopen = |name: &str| -> Result<MapData> {
            let map = self.ebpf.map(name).ok_or_else(|| anyhow!("the eBPF object has no map named {name}"))?;
            let data = match map {
                aya::maps::Map::Array(data) => data,
                _ => bail!("map {name} is not an array"),
            };
            let id = data.info().with_context(|| format!("reading the id of map {name}"))?.id();
            MapData::from_id(id).with_context(|| format!("opening map {name} (id {id}) again"))
        };
        let config = Array::try_from(aya::maps::Map::Array(reopen(names::CONFIG)?))
            .context("map CONFIG does not have the expected type")?;
        let heartbeat = Array::try_from(aya::maps::Map::Array(reopen(names::HEARTBEAT)?))
            .context("map HEARTBEAT does not have the expected type")?;
        Ok(NodeControl { config, heartbeat, node: self.node, max_age_ns: 0 })
    }

    /// Reads the heartbeat as the program sees it.
    pub fn heartbeat(&self) -> Result<Heartbeat> {
        let map: Array<&MapData, Heartbeat> = map_ref(&self.ebpf, names::HEARTBEAT)?;
        map.get(&0, 0).context("reading HEARTBEAT[0]")
    }

    /// Writes the heartbeat (fixtures; the agent uses [`NodeControl`]).
    pub fn set_heartbeat(&mut self, heartbeat: Heartbeat) -> Result<()> {
        let mut map: Array<&mut MapData, Heartbeat> = map_mut(&mut self.ebpf, names::HEARTBEAT)?;
        map.set(0, heartbeat, 0).context("writing HEARTBEAT[0]")
    }

    fn write_node(&mut self) -> Result<()> {
        let mut config: Array<&mut MapData, NodeConfig> = map_mut(&mut self.ebpf, names::CONFIG)?;
        config.set(0, self.node, 0).context("writing the CONFIG map")
    }

    /// Makes the installed services exactly `desired` (a reload): services not in it are removed, the others
    /// installed or updated, and every port ends up answered by the service configured on it, whatever moved
    /// where (two services swapping ports, one taking another's old port, renames). A port that changes hands is
    /// switched with one write, never cleared in between.
    ///
    /// # Errors
    /// The first failure; the services before it are installed, the others keep their previous state.
    pub fn reconcile(&mut self, desired: &[(String, ServiceSpec)]) -> Result<()> {
        let wanted: HashMap<ServiceKey, &str> =
            desired.iter().map(|(name, spec)| (ServiceKey::of(spec), name.as_str())).collect();
        let gone: Vec<String> =
            self.services.keys().filter(|n| !desired.iter().any(|(d, _)| d == *n)).cloned().collect();
        for name in gone {
            self.remove_service_keeping(&name, &wanted)?;
        }
        for (name, spec) in desired {
            if self.applied.get(name) == Some(spec) {
                continue;
            }
            self.apply_service_keeping(name, spec, &wanted)?;
        }
        Ok(())
    }

    /// Installs or updates a service: its backends, then a freshly built Maglev table, switched in atomically.
    ///
    /// # Errors
    /// When the data plane is out of service or backend slots, or a map write fails.
    pub fn apply_service(&mut self, name: &str, spec: &ServiceSpec) -> Result<()> {
        self.apply_service_keeping(name, spec, &HashMap::new())
    }

    /// [`apply_service`](Self::apply_service), leaving alone the slots in `keep` (ports another service of the
    /// same reload is about to take).
    fn apply_service_keeping(
        &mut self,
        name: &str,
        spec: &ServiceSpec,
        keep: &HashMap<ServiceKey, &str>,
    ) -> Result<()> {
        let key = ServiceKey::of(spec);
        if let Some(old) = self.services.get(name).map(|s| s.key)
            && old != key
        {
            // Moving to another port: the old one is released (if still ours and nobody takes it in this
            // reload); index, backends and tables move along.
            if !keep.contains_key(&old) {
                self.release_slot(old, name)?;
            }
            if let Some(svc) = self.services.get_mut(name) {
                svc.key = key;
            }
        }
        if !self.services.contains_key(name) {
            let index = self.free_services.pop().ok_or_else(|| {
                anyhow!(
                    "no room for service {name}: the data plane was loaded for {} services (restart to grow it)",
                    self.service_capacity
                )
            })?;
            self.services.insert(
                name.to_string(),
                Installed {
                    key,
                    forwarding: spec.forwarding,
                    index,
                    table: 1,
                    shadows: [Vec::new(), Vec::new()],
                    backends: HashMap::new(),
                    nat_endpoints: Vec::new(),
                },
            );
        }
        let Some(mut svc) = self.services.remove(name) else {
            bail!("service {name} vanished while being installed");
        };
        let result = self.write_service(name, &mut svc, spec);
        self.services.insert(name.to_string(), svc);
        match &result {
            Ok(()) => self.applied.insert(name.to_string(), spec.clone()),
            Err(_) => self.applied.remove(name),
        };
        result
    }

    fn write_service(&mut self, name: &str, svc: &mut Installed, spec: &ServiceSpec) -> Result<()> {
        // Backend slots: keep the ones still configured, free the others, allocate the new ones.
        let wanted: HashMap<(Ipv4Addr, u16), &BackendSpec> =
            spec.backends.iter().map(|b| ((b.address, b.port), b)).collect();
        let gone: Vec<(Ipv4Addr, u16)> = svc.backends.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for endpoint in &gone {
            if let Some(slot) = svc.backends.remove(endpoint) {
                self.write_backend(slot, Backend::default())?;
                self.free_backends.push_back(slot);
            }
        }
        for b in &spec.backends {
            let slot = match svc.backends.get(&(b.address, b.port)) {
                Some(slot) => *slot,
                None => {
                    let slot = self.free_backends.pop_front().ok_or_else(|| {
                        anyhow!("no room for backend {}:{}: {MAX_BACKENDS} in use", b.address, b.port)
                    })?;
                    svc.backends.insert((b.address, b.port), slot);
                    slot
                }
            };
            let entry = Backend {
                address: b.address.octets(),
                port: b.port.to_be_bytes(),
                mac: b.mac.unwrap_or_default(),
                ifindex: b.ifindex,
                healthy: u8::from(b.healthy),
                service: u8::try_from(svc.index).context("service index over 255")?,
                _pad: [0; 2],
            };
            self.write_backend(slot, entry)?;
        }

        // Replies must be recognised before the first client packet is translated, so the endpoints go in before
        // the SERVICES entry; all configured backends, healthy or not (a backend going unhealthy still sends the
        // replies of its established flows).
        let nat_endpoints: Vec<Endpoint> = if spec.forwarding == FORWARD_NAT {
            spec.backends
                .iter()
                .map(|b| Endpoint {
                    address: b.address.octets(),
                    port: b.port.to_be_bytes(),
                    protocol: spec.protocol,
                    _pad: 0,
                })
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

        // The new table goes into the buffer that is not live, then one SERVICES update switches to it.
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
        let table = maglev::build(&members, MAGLEV_M).map_err(|e| anyhow!("building the Maglev table: {e}"))?;
        let next = 1 - svc.table;
        self.write_table(svc.index, next, &svc.shadows[next as usize], &table)?;
        svc.shadows[next as usize] = table;
        let value =
            ServiceValue { index: svc.index, table: next, forwarding: spec.forwarding, present: 1, _pad: [0; 2] };
        svc.forwarding = spec.forwarding;
        if !self.slot_owners.contains_key(&svc.key) {
            // A free slot: first the fields, then `present` alone (see `lb_common::ServiceValue`). A slot another
            // service holds is taken over with one write, so the port never answers nothing in between.
            self.write_service_value(svc.key, ServiceValue { present: 0, ..value })?;
        }
        self.write_service_value(svc.key, value)?;
        self.slot_owners.insert(svc.key, name.to_string());
        svc.table = next;
        Ok(())
    }

    /// Clears the `SERVICES` slot at `key` if `name` still holds it; a slot another service took is left alone.
    fn release_slot(&mut self, key: ServiceKey, name: &str) -> Result<()> {
        if self.slot_owners.get(&key).map(String::as_str) != Some(name) {
            return Ok(());
        }
        self.write_service_value(key, ServiceValue::default())?;
        self.slot_owners.remove(&key);
        Ok(())
    }

    /// The `SERVICES` slots written, with the service that holds each: `(protocol, port) -> name`.
    pub fn slot_owners(&self) -> BTreeMap<(u8, u16), String> {
        self.slot_owners.iter().map(|(k, n)| ((k.protocol, k.port), n.clone())).collect()
    }

    /// Reads the `SERVICES` value of a port (for tests and diagnostics).
    pub fn service_value(&self, protocol: u8, port: u16) -> Result<ServiceValue> {
        let slot = service_slot(protocol, port)
            .ok_or_else(|| anyhow!("protocol {protocol} has no service slots (tcp or udp only)"))?;
        let services: Array<&MapData, ServiceValue> = map_ref(&self.ebpf, names::SERVICES)?;
        services.get(&slot, 0).with_context(|| format!("reading SERVICES[{slot}]"))
    }

    /// The index a service was installed under.
    pub fn service_index(&self, name: &str) -> Option<u32> {
        self.services.get(name).map(|s| s.index)
    }

    fn write_service_value(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        let slot = service_slot(key.protocol, key.port)
            .ok_or_else(|| anyhow!("protocol {} has no service slots (tcp or udp only)", key.protocol))?;
        let mut services: Array<&mut MapData, ServiceValue> = map_mut(&mut self.ebpf, names::SERVICES)?;
        services.set(slot, value, 0).with_context(|| format!("writing SERVICES[{slot}] (port {})", key.port))
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
        let mut map: BpfHashMap<&mut MapData, Endpoint, u32> = map_mut(&mut self.ebpf, names::NAT_BACKENDS)?;
        if count == 0 {
            self.nat_endpoint_refs.remove(&endpoint);
            map.remove(&endpoint).context("removing from the NAT_BACKENDS map")
        } else {
            map.insert(endpoint, count, 0).context("writing the NAT_BACKENDS map")
        }
    }

    fn write_backend(&mut self, slot: u32, backend: Backend) -> Result<()> {
        let mut backends: Array<&mut MapData, Backend> = map_mut(&mut self.ebpf, names::BACKENDS)?;
        backends.set(slot, backend, 0).with_context(|| format!("writing BACKENDS[{slot}]"))
    }

    /// Writes `table` into buffer `which` of service `index`, skipping chunks that already hold the same slots.
    fn write_table(&mut self, index: u32, which: u32, current: &[u32], table: &[u32]) -> Result<()> {
        let mut maglev: Array<&mut MapData, MaglevChunk> = map_mut(&mut self.ebpf, names::MAGLEV)?;
        for (i, slots) in table.chunks(MAGLEV_CHUNK as usize).enumerate() {
            let start = i * MAGLEV_CHUNK as usize;
            if current.get(start..start + slots.len()) == Some(slots) {
                continue;
            }
            let mut chunk = MaglevChunk::default();
            chunk.slots[..slots.len()].copy_from_slice(slots);
            let first = u32::try_from(start).context("Maglev slot over u32")?;
            let (element, _) = maglev_position(index, which, first);
            maglev.set(element, chunk, 0).with_context(|| format!("writing MAGLEV[{element}]"))?;
        }
        Ok(())
    }

    /// Removes a service: packets to its port go to the kernel again (unless another service holds the port
    /// by now).
    pub fn remove_service(&mut self, name: &str) -> Result<()> {
        self.remove_service_keeping(name, &HashMap::new())
    }

    fn remove_service_keeping(&mut self, name: &str, keep: &HashMap<ServiceKey, &str>) -> Result<()> {
        self.applied.remove(name);
        let Some(svc) = self.services.remove(name) else {
            return Ok(());
        };
        if !keep.contains_key(&svc.key) && self.slot_owners.get(&svc.key).map(String::as_str) == Some(name) {
            // Only `present` changes, so a packet sees the service or nothing (see `lb_common::ServiceValue`).
            let value = ServiceValue {
                index: svc.index,
                table: svc.table,
                forwarding: svc.forwarding,
                present: 0,
                _pad: [0; 2],
            };
            self.write_service_value(svc.key, value)?;
            self.slot_owners.remove(&svc.key);
        }
        for slot in svc.backends.values() {
            self.write_backend(*slot, Backend::default())?;
            self.free_backends.push_back(*slot);
        }
        for e in &svc.nat_endpoints {
            self.nat_endpoint_ref(*e, false)?;
        }
        // Leave the tables pointing nowhere so a reused index never starts from stale slots.
        let empty = vec![NO_BACKEND; MAGLEV_M as usize];
        for which in 0..2 {
            self.write_table(svc.index, which, &svc.shadows[which as usize], &empty)?;
        }
        self.free_services.push(svc.index);
        Ok(())
    }

    /// How many services the maps were sized for at load time.
    pub fn service_capacity(&self) -> u32 {
        self.service_capacity
    }

    /// Names of the installed services.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
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
            Ok(per_cpu
                .iter()
                .fold(Traffic::default(), |a, t| Traffic { packets: a.packets + t.packets, bytes: a.bytes + t.bytes }))
        };
        let mut counters = Counters { reasons, ..Counters::default() };
        for (name, svc) in &self.services {
            counters.services.insert(name.clone(), sum(&service_stats, svc.index)?);
            for ((address, port), slot) in &svc.backends {
                counters.backends.insert((name.clone(), *address, *port), sum(&backend_stats, *slot)?);
            }
        }
        Ok(counters)
    }

    /// Runs the load balancer program once over `frame` with BPF_PROG_TEST_RUN (nothing is sent anywhere).
    pub fn test_run(&mut self, frame: &[u8]) -> Result<TestOutcome> {
        self.test_run_program(names::PROGRAM, frame, 1)
    }

    /// Runs `program` `repeat` times over `frame` (benchmarks use the pass program as their baseline).
    pub fn test_run_program(&mut self, program: &str, frame: &[u8], repeat: u32) -> Result<TestOutcome> {
        // Room for frames that grow (NAT, encapsulation) plus the kernel's headroom checks.
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program} over a {}-byte frame", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        Ok(TestOutcome { action: result.return_value, frame: out, duration: result.duration })
    }
}

/// The node's active flag and the dead-man heartbeat: the two writes of the advert path (see
/// [`DataPlane::node_control`]). Each is one small map update.
pub struct NodeControl {
    config: Array<MapData, NodeConfig>,
    heartbeat: Array<MapData, Heartbeat>,
    node: NodeConfig,
    max_age_ns: u64,
}

impl NodeControl {
    /// Starts (`true`) or stops answering for the VIP.
    ///
    /// # Errors
    /// When the map write fails.
    pub fn set_active(&mut self, active: bool) -> Result<()> {
        self.node.active = u32::from(active);
        self.config.set(0, self.node, 0).context("writing the CONFIG map")
    }

    pub fn is_active(&self) -> bool {
        self.node.active == 1
    }

    /// Sets how old the heartbeat may get before the program stops answering (0 = never).
    pub fn set_max_age(&mut self, max_age: Duration) {
        self.max_age_ns = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
    }

    /// Refreshes the heartbeat: the agent is alive now.
    ///
    /// # Errors
    /// When the clock or the map write fails.
    pub fn beat(&mut self) -> Result<()> {
        let beat = Heartbeat { last_ns: monotonic_ns()?, max_age_ns: self.max_age_ns };
        self.heartbeat.set(0, beat, 0).context("writing the HEARTBEAT map")
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
        bail!("clock_gettime(CLOCK_MONOTONIC): {}", std::io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).context("CLOCK_MONOTONIC before 0")?;
    let nanos = u64::try_from(ts.tv_nsec).context("CLOCK_MONOTONIC nanoseconds below 0")?;
    Ok(secs * 1_000_000_000 + nanos)
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| anyhow!("the eBPF object has no map named {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} does not have the expected type"))
}

fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| anyhow!("the eBPF object has no map named {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} does not have the expected type"))
}
