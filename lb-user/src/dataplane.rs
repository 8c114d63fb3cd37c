//! The only module that touches the eBPF object: load, attach, write the maps, read the counters, detach.
//!
//! The rest of the agent describes what it wants (the node's role, the services and their backends with health and
//! MAC addresses); this module turns that into map entries. It owns the map layout: service indices, backend slots,
//! and the double-buffered Maglev tables (see `lb_common::ServiceValue`).
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
    Backend, Endpoint, FORWARD_NAT, MAGLEV_CHUNK, MAGLEV_CHUNKS, MAGLEV_M, MAX_BACKENDS, MAX_SERVICES, MaglevChunk,
    NO_BACKEND, NodeConfig, REASON_COUNT, Reason, ServiceValue, Traffic, maglev_position, names, service_slot,
};

use crate::maglev;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XVIP_EBPF_OBJECT_PATH"));

/// How to attach the program, from the config's `xdp_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native if the driver supports it, else generic (with a warning).
    Auto,
    Native,
    Generic,
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
    /// Whether the Maglev table may point at this backend.
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

/// What this module remembers of a service it installed.
/// A service's place on the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServiceKey {
    protocol: u8,
    port: u16,
}

struct Installed {
    key: ServiceKey,
    /// Whether its `SERVICES` entry has been written (with `present = 1`).
    live: bool,
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
        let link = link.map_err(|e| attach_error(interface, used, e))?;
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

    fn write_node(&mut self) -> Result<()> {
        let mut config: Array<&mut MapData, NodeConfig> = map_mut(&mut self.ebpf, names::CONFIG)?;
        config.set(0, self.node, 0).context("writing the CONFIG map")
    }

    /// Installs or updates a service: its backends, then a freshly built Maglev table, switched in atomically.
    ///
    /// # Errors
    /// When the data plane is out of service or backend slots, or a map write fails.
    pub fn apply_service(&mut self, name: &str, spec: &ServiceSpec) -> Result<()> {
        let key = ServiceKey { protocol: spec.protocol, port: spec.port };
        if self.services.get(name).is_some_and(|s| s.key != key) {
            self.remove_service(name)?;
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
                    live: false,
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
        let result = self.write_service(&mut svc, spec);
        self.services.insert(name.to_string(), svc);
        result
    }

    fn write_service(&mut self, svc: &mut Installed, spec: &ServiceSpec) -> Result<()> {
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
        if !svc.live {
            // First the fields, then `present` alone (see `lb_common::ServiceValue`).
            self.write_service_value(svc.key, ServiceValue { present: 0, ..value })?;
            svc.live = true;
        }
        self.write_service_value(svc.key, value)?;
        svc.table = next;
        Ok(())
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

    /// Removes a service: packets to its port go to the kernel again.
    pub fn remove_service(&mut self, name: &str) -> Result<()> {
        let Some(svc) = self.services.remove(name) else {
            return Ok(());
        };
        // Only `present` changes, so a packet sees the service or nothing (see `lb_common::ServiceValue`).
        let value =
            ServiceValue { index: svc.index, table: svc.table, forwarding: svc.forwarding, present: 0, _pad: [0; 2] };
        self.write_service_value(svc.key, value)?;
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

    /// A map of the loaded object, to read only: tests check the program's own state (the connection and NAT
    /// tables) from user space. Every write goes through the methods above.
    #[doc(hidden)]
    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }
}

fn attach_error(interface: &str, mode: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    // The OS error sits at the end of the source chain; `{:#}` of an anyhow error prints the whole chain.
    let text = format!("{:#}", anyhow::Error::new(e));
    let hint = if text.contains("busy") || text.contains("EBUSY") || text.contains("os error 16") {
        "another XDP program is already attached there: remove it (`ip link set dev IFACE xdp off`) or stop the \
         process that owns it"
    } else if text.contains("No such device") || text.contains("os error 19") {
        "no interface by that name: check `interface` in the config (`ip link` lists them)"
    } else if text.contains("not supported") || text.contains("os error 95") {
        "the driver does not support this XDP mode: set `xdp_mode = \"generic\"` or `\"auto\"`"
    } else {
        "check that the interface exists and is up, and that xvip runs as root"
    };
    anyhow!("attaching XDP in {mode} mode to {interface} failed: {text}; {hint}")
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
