//! Types shared by the XDP program (`lb-ebpf`) and the agent (`lb-user`).
//!
//! Every type here is `#[repr(C)]` with explicit padding fields and a compile-time size check, because the kernel
//! compares map keys byte for byte: implicit padding may hold garbage and make equal keys differ.
//! Addresses and ports are stored in network byte order exactly as they appear in packets (`[u8; 4]`, `[u8; 2]`),
//! so neither side ever has to think about endianness.
//!
//! # Several VIPs
//! A node serves any number of VRRP instances, each with one or more addresses (VIPs). Every VIP has a `VIPS` entry
//! ([`VipValue`]) naming the *router* whose active flag governs it: a VRRP router is an instance in one address
//! family ([`router_slot`]), and its flag lives in the one `HEARTBEAT` entry ([`Heartbeat::active`]). Services are
//! keyed by (VIP, port, protocol) ([`ServiceKey`]), flows and NAT translations carry their VIP ([`FlowKey`],
//! [`NatKey`]), and each VIP has its own flow hash seed, so one instance's failover or reload never touches
//! another's flows.
#![no_std]

/// Maglev lookup table size per service (a prime, as the Maglev paper requires).
pub const MAGLEV_M: u32 = 65537;
/// Services per data plane (over all instances). Each takes two Maglev tables (double buffering), 2 x 256 KiB of
/// kernel memory; the agent loads the program for the services it is configured with (see `LoadOptions`).
pub const MAX_SERVICES: u32 = 512;
/// Backends over all services.
pub const MAX_BACKENDS: u32 = 16384;
/// VRRP instances per node: each has a router per address family, and each router an active flag in
/// [`Heartbeat::active`].
pub const MAX_INSTANCES: u32 = 128;
/// VRRP routers per node: one per instance and address family (IPv4, IPv6).
pub const MAX_ROUTERS: u32 = 2 * MAX_INSTANCES;
/// Addresses (VIPs) per node, over all instances: entries of `VIPS`.
pub const MAX_VIPS: u32 = 1024;
/// (VIP, port, protocol) entries of `SERVICES`: every service listens on every address of its instance.
pub const MAX_LISTENERS: u32 = 16384;
/// Default size of the connection table (LRU) and of the NAT table (LRU); the agent sets both from
/// `conntrack_entries` at load time: 104 + 128 = 232 bytes of kernel memory per entry (see [`FlowValue`] and
/// [`NatKey`]), 15.2 MB for the default.
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 65536;
/// A Maglev slot holding this value means "no healthy backend": the service fails fast.
pub const NO_BACKEND: u32 = u32::MAX;

/// Names of the maps and programs in the eBPF object, used by both sides.
pub mod names {
    pub const PROGRAM: &str = "xvip_xdp";
    pub const PASS_PROGRAM: &str = "xvip_pass";
    /// IPv6 NAT's client path and ICMPv6 errors about NAT flows, tail-called by `xvip_xdp` through
    /// `NAT6_PROGRAMS` (slots `NAT6_SLOT` and `NAT6_ICMP_SLOT`).
    pub const NAT6_PROGRAM: &str = "xvip_nat6";
    pub const NAT6_ICMP_PROGRAM: &str = "xvip_nat6_icmp";
    pub const NAT6_PROGRAMS: &str = "NAT6_PROGRAMS";
    /// The TC egress program (tcx) of every interface the XDP program serves: replies of NAT backends on the node.
    pub const EGRESS_PROGRAM: &str = "xvip_egress";
    pub const CONFIG: &str = "CONFIG";
    pub const VIPS: &str = "VIPS";
    /// The IPv6 VIPs: `[u8; 16]` address -> its `VIP6_TABLE` element (a [`Vip6Entry`](super::Vip6Entry)).
    pub const VIPS6: &str = "VIPS6";
    pub const VIP_SLOTS: &str = "VIP_SLOTS";
    pub const VIP_TABLE: &str = "VIP_TABLE";
    pub const LISTENER_SLOTS: &str = "LISTENER_SLOTS";
    pub const LISTENER_TABLE: &str = "LISTENER_TABLE";
    /// The IPv6 counterparts of `VIP_SLOTS`/`VIP_TABLE` and `LISTENER_SLOTS`/`LISTENER_TABLE` (in front of `VIPS6`
    /// and `SERVICES6`).
    pub const VIP6_SLOTS: &str = "VIP6_SLOTS";
    pub const VIP6_TABLE: &str = "VIP6_TABLE";
    pub const LISTENER6_SLOTS: &str = "LISTENER6_SLOTS";
    pub const LISTENER6_TABLE: &str = "LISTENER6_TABLE";
    pub const SERVICES: &str = "SERVICES";
    pub const MAGLEV: &str = "MAGLEV";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNTRACK: &str = "CONNTRACK";
    /// IPv6 services (`ServiceKey6` -> `ServiceValue`), their flows and their backends' addresses.
    pub const SERVICES6: &str = "SERVICES6";
    pub const CONNTRACK6: &str = "CONNTRACK6";
    pub const BACKEND_ADDRESSES6: &str = "BACKEND_ADDRESSES6";
    pub const NAT: &str = "NAT";
    pub const NAT_BACKENDS: &str = "NAT_BACKENDS";
    pub const NAT_SOURCE_PORTS: &str = "NAT_SOURCE_PORTS";
    /// IPv6 NAT: the reverse translations (`NatKey6` -> `NatValue6`) and the backend endpoints (`Endpoint6`).
    pub const NAT6: &str = "NAT6";
    pub const NAT_BACKENDS6: &str = "NAT_BACKENDS6";
    /// Globals (`.rodata`) the loader overrides: idle times after which a NAT entry may be reused, in ns.
    pub const NAT_UDP_TIMEOUT_NS: &str = "NAT_UDP_TIMEOUT_NS";
    pub const NAT_CLOSED_GRACE_NS: &str = "NAT_CLOSED_GRACE_NS";
    pub const NAT_EMBRYONIC_TIMEOUT_NS: &str = "NAT_EMBRYONIC_TIMEOUT_NS";
    pub const NAT_ESTABLISHED_TIMEOUT_NS: &str = "NAT_ESTABLISHED_TIMEOUT_NS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ROUTER_COUNTERS: &str = "ROUTER_COUNTERS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const HEARTBEAT: &str = "HEARTBEAT";
    /// The trace switch ([`TraceConfig`](super::TraceConfig)) and each CPU's rate limiter and counters
    /// ([`TraceState`](super::TraceState)).
    pub const TRACE: &str = "TRACE";
    pub const TRACE_STATE: &str = "TRACE_STATE";
    /// Global (`.rodata`): 0 makes the verifier prune the trace hook at load (benchmarks isolate its cost with it).
    pub const TRACE_HOOK: &str = "TRACE_HOOK";
    /// The socket load balancer for the node's own clients (cgroup `connect4`, `getpeername4`, and for unconnected
    /// UDP `sendmsg4` and `recvmsg4` programs; their IPv6 counterparts `connect6` ... `recvmsg6`) and the maps that
    /// remember which VIP each rewritten socket asked for.
    pub const SOCKET_CONNECT4: &str = "xvip_connect4";
    pub const SOCKET_GETPEERNAME4: &str = "xvip_getpeername4";
    pub const SOCKET_SENDMSG4: &str = "xvip_sendmsg4";
    pub const SOCKET_RECVMSG4: &str = "xvip_recvmsg4";
    pub const SOCKET_CONNECT6: &str = "xvip_connect6";
    pub const SOCKET_GETPEERNAME6: &str = "xvip_getpeername6";
    pub const SOCKET_SENDMSG6: &str = "xvip_sendmsg6";
    pub const SOCKET_RECVMSG6: &str = "xvip_recvmsg6";
    /// Every program of the socket load balancer, in the order they are attached.
    pub const SOCKET_PROGRAMS: [&str; 8] = [
        SOCKET_CONNECT4,
        SOCKET_GETPEERNAME4,
        SOCKET_SENDMSG4,
        SOCKET_RECVMSG4,
        SOCKET_CONNECT6,
        SOCKET_GETPEERNAME6,
        SOCKET_SENDMSG6,
        SOCKET_RECVMSG6,
    ];
    pub const SOCKET_PEERS: &str = "SOCKET_PEERS";
    pub const SOCKET_PEERS6: &str = "SOCKET_PEERS6";
    /// Per service: its backend on the node itself, which only the socket load balancer reaches ([`LocalShare`]).
    pub const SOCKET_LOCAL: &str = "SOCKET_LOCAL";
    /// Global (`.rodata`): the network namespace cookie of the agent ([`socket_lb_applies`]); 0 = rewrite nothing.
    pub const NODE_NETNS_COOKIE: &str = "NODE_NETNS_COOKIE";
}

/// Whether the node may answer for its VIPs: the one entry of the `HEARTBEAT` array, written only by the agent's
/// advert path (so it never waits behind, or races with, service updates, which write the other maps).
///
/// `active[r]` is 1 while router `r` ([`router_slot`]) is the active VRRP router of its group. `last_ns` is the
/// dead-man switch: the agent refreshes it each time it sends an advert, and the program stops answering for any
/// VIP (ARP, ping, forwarding) once it is more than `max_age_ns` old, so a hung agent (stopped, deadlocked, stuck in
/// a syscall) holds nothing after the peers' down interval. `max_age_ns == 0` turns the switch off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// `CLOCK_MONOTONIC` in ns (what `bpf_ktime_get_ns` reads) at the last advert sent.
    pub last_ns: u64,
    pub max_age_ns: u64,
    /// One byte per router: 1 = active. A router's flag changes alone (one byte of the value), so a packet sees
    /// every other router's flag unchanged while the agent rewrites the entry.
    pub active: [u8; MAX_ROUTERS as usize],
}
const _: () = assert!(core::mem::size_of::<Heartbeat>() == 16 + MAX_ROUTERS as usize);

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { last_ns: 0, max_age_ns: 0, active: [0; MAX_ROUTERS as usize] }
    }
}

impl Heartbeat {
    /// Whether router `router` is active (out of range: no).
    #[inline(always)]
    pub fn is_active(&self, router: u32) -> bool {
        // The mask keeps the index provably inside the array for the verifier (MAX_ROUTERS is a power of two).
        router < MAX_ROUTERS && self.active[(router & (MAX_ROUTERS - 1)) as usize] == 1
    }
}

/// Address families of VRRP routers: VRRPv3 runs IPv4 and IPv6 as separate routers (RFC 5798 §5.2.9), so an
/// instance with addresses of both families has one router for each.
pub const FAMILY_IPV4: u32 = 0;
pub const FAMILY_IPV6: u32 = 1;

/// The router index of instance slot `instance` (0..MAX_INSTANCES) in `family`: where its active flag sits in
/// [`Heartbeat::active`] and what its VIPs' [`VipValue::router`] says.
#[inline(always)]
pub const fn router_slot(instance: u32, family: u32) -> u32 {
    instance * 2 + (family & 1)
}

/// The data plane's view of the node: one entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// MAC address of the default interface (the top-level `interface`).
    pub mac: [u8; 6],
    /// Bumped by the agent after it deletes connection-table entries (`Command::ForgetFlows`): the XDP program's
    /// per-CPU flow caches (`lb-ebpf/src/flow_cache.rs`) serve only entries written under the current value.
    pub flow_generation: u16,
    /// Index of that interface (0 until attached). Backends whose `ifindex` is 0 are reached through it.
    pub ifindex: u32,
    /// This node's own IPv4 addresses and their subnets' broadcast addresses (all zero: unused): never a client's
    /// source. The agent refreshes them whenever it writes the data plane.
    pub local: [[u8; 4]; LOCAL_ADDRESSES],
    /// This node's own IPv6 addresses of global or unique-local scope, the counterpart of `local` for IPv6 VIPs;
    /// link-local addresses are left out, since another host of a link may hold the same. Filled from the first slot
    /// on, the rest all zero: the first unused slot ends the list. Refreshed with `local`.
    pub local6: [[u8; 16]; LOCAL_ADDRESSES6],
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 12 + 4 * LOCAL_ADDRESSES + 16 * LOCAL_ADDRESSES6);

/// How many of the node's own addresses (and broadcasts) `NodeConfig` holds.
pub const LOCAL_ADDRESSES: usize = 8;
/// How many of the node's own IPv6 addresses `NodeConfig` holds.
pub const LOCAL_ADDRESSES6: usize = 8;

impl NodeConfig {
    /// Whether `address` is one of [`local`](Self::local) (a compare per slot: no map lookup).
    #[inline(always)]
    pub fn is_local(&self, address: [u8; 4]) -> bool {
        let mut i = 0;
        while i < LOCAL_ADDRESSES {
            if self.local[i] == address {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether `address` is one of [`local6`](Self::local6) (two compares per slot: no map lookup, no `memcmp`),
    /// looking up to the first unused slot. `::` matches that slot: callers refuse it as a martian first.
    #[inline(always)]
    pub fn is_local6(&self, address: &[u8; 16]) -> bool {
        let wanted = ipv6_halves(address);
        let mut i = 0;
        while i < LOCAL_ADDRESSES6 {
            let local = ipv6_halves(&self.local6[i]);
            if local == wanted {
                return true;
            }
            if local == (0, 0) {
                return false;
            }
            i += 1;
        }
        false
    }
}

/// Value of the `VIPS` hash map, keyed by the VIP's IPv4 address (`[u8; 4]`, network order), and of the `VIPS6`
/// hash map, keyed by an IPv6 VIP's address (`[u8; 16]`, network order). An IPv6 VIP's `router` is its instance's
/// IPv6 router (`router_slot(instance, FAMILY_IPV6)`) and its `hash_seed` the IPv6 one (`group_seed6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// The router whose active flag governs this address ([`router_slot`]).
    pub router: u32,
    /// Seed of the flow hash for this address, identical on every node of its VRRP group ([`group_seed`] of the
    /// address and the instance's VRID).
    pub hash_seed: u32,
    /// The interface the address is answered on (its instance's): ARP requests for it are answered there only,
    /// with `mac`. 0 = any (fixtures that attach nowhere).
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// 1 when this node's own kernel holds the address (on its loopback: a DSR backend runs on this node). While
    /// the router is not active here, frames to it are then the active node's DSR forwards to this node's backend,
    /// handed to the kernel rather than dropped.
    pub held: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipValue>() == 20);

/// A VIP's address with its value: an element of the `VIP_TABLE` array, which `VIP_SLOTS` indexes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    pub address: [u8; 4],
    pub value: VipValue,
}
const _: () = assert!(core::mem::size_of::<VipEntry>() == 24);

/// Elements of the `VIP_TABLE` array: one per VIP, and a spare, so a changed VIP always finds a free element to
/// be written to before its slot moves there.
pub const VIP_TABLE_ELEMENTS: u32 = MAX_VIPS + 1;

/// Elements of the `VIP_SLOTS` array: one per value of [`vip_fold`].
pub const VIP_SLOT_COUNT: u32 = 65536;
/// A value of `VIP_SLOTS` or `LISTENER_SLOTS`: nothing folds to this slot, so a key folding here has no entry.
pub const SLOT_EMPTY: u16 = 0;
/// A value of `VIP_SLOTS` or `LISTENER_SLOTS`: several entries fold to this slot, and the hash map (`VIPS`,
/// `SERVICES`) decides. Any other value `n` is element `n - 1` of the table (`VIP_TABLE`, `LISTENER_TABLE`), the
/// one entry folding here: two array reads the verifier inlines instead of a hash lookup.
pub const SLOT_SHARED: u16 = u16::MAX;
const _: () = assert!(VIP_TABLE_ELEMENTS < SLOT_SHARED as u32);
const _: () = assert!(LISTENER_TABLE_ELEMENTS < SLOT_SHARED as u32);

/// Where an IPv4 destination sits in `VIP_SLOTS`: the address folded onto itself (high half xor low half), so
/// every address of a /16 gets a slot of its own. Every frame to a VIP is resolved by two array reads the
/// verifier inlines (its slot, then its `VIP_TABLE` element); only VIPs sharing a slot pay the `VIPS` hash lookup.
#[inline(always)]
pub const fn vip_fold(address: [u8; 4]) -> u32 {
    (((address[0] ^ address[2]) as u32) << 8) | ((address[1] ^ address[3]) as u32)
}

/// An IPv6 VIP with its value: an element of the `VIP6_TABLE` array, which `VIP6_SLOTS` indexes (as `VipEntry`
/// for IPv4). The address is held as its [`ipv6_halves`], so the XDP program compares it with two word
/// comparisons.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vip6Entry {
    pub address: [u64; 2],
    pub value: VipValue,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Vip6Entry>() == 40);

impl Vip6Entry {
    /// The entry of `address` (network order), padding zeroed.
    #[inline(always)]
    pub fn new(address: &[u8; 16], value: VipValue) -> Self {
        let (high, low) = ipv6_halves(address);
        Vip6Entry { address: [high, low], value, _pad: 0 }
    }
}

/// Where an IPv6 address sits in `VIP6_SLOTS` (same size as `VIP_SLOTS`), from its [`ipv6_halves`]: its eight
/// 16-bit words xored together, so addresses that differ in one word (the VIPs of one prefix) get slots of their
/// own. Four register operations, no memory access.
#[inline(always)]
pub const fn vip6_fold((high, low): (u64, u64)) -> u32 {
    let x = high ^ low;
    let x = x ^ (x >> 32);
    ((x ^ (x >> 16)) & 0xffff) as u32
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the `SERVICES` hash map: a port and protocol on one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: [u8; 4],
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

impl ServiceKey {
    /// The key of `port` (host order) and `protocol` on `vip`, padding zeroed.
    #[inline(always)]
    pub const fn new(vip: [u8; 4], port: [u8; 2], protocol: u8) -> Self {
        ServiceKey { vip, port, protocol, _pad: 0 }
    }
}

/// Key of the `SERVICES6` hash map: a port and protocol on one IPv6 VIP (value: [`ServiceValue`], as for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub vip: [u8; 16],
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 20);

impl ServiceKey6 {
    /// The key of `port` and `protocol` on `vip`, padding zeroed.
    #[inline(always)]
    pub const fn new(vip: [u8; 16], port: [u8; 2], protocol: u8) -> Self {
        ServiceKey6 { vip, port, protocol, _pad: 0 }
    }
}

pub const FORWARD_DSR: u8 = 0;
pub const FORWARD_NAT: u8 = 1;

/// The value of a `SERVICES` entry.
///
/// The agent rebuilds a Maglev table into the buffer that is *not* in use, then rewrites this value with only
/// `table` changed. `SERVICES` is a hash map without preallocation: an update swaps in a whole new element and the
/// old one is freed only after every reader is done; the `LISTENER_TABLE` copy is written to a free element before
/// its slot moves there. Either way a packet sees the old value or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index of the service, 0..MAX_SERVICES: selects its Maglev tables and its counters.
    pub index: u32,
    /// Which of the service's two Maglev tables is live (0 or 1).
    pub table: u32,
    pub forwarding: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 12);

/// A listener (a service on one address) with its value: an element of the `LISTENER_TABLE` array, which
/// `LISTENER_SLOTS` indexes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub key: ServiceKey,
    pub value: ServiceValue,
}
const _: () = assert!(core::mem::size_of::<Listener>() == 20);

/// An IPv6 listener (a service on one IPv6 address) with its value: an element of the `LISTENER6_TABLE` array,
/// which `LISTENER6_SLOTS` indexes (as [`Listener`] for IPv4). The address is held as its [`ipv6_halves`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener6 {
    pub vip: [u64; 2],
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
    pub value: ServiceValue,
}
const _: () = assert!(core::mem::size_of::<Listener6>() == 32);

impl Listener6 {
    /// The element of `key`'s listener, padding zeroed.
    #[inline(always)]
    pub fn new(key: &ServiceKey6, value: ServiceValue) -> Self {
        let (high, low) = ipv6_halves(&key.vip);
        Listener6 { vip: [high, low], port: key.port, protocol: key.protocol, _pad: 0, value }
    }
}

/// Where an IPv6 listener sits in `LISTENER6_SLOTS` (same size as `LISTENER_SLOTS`): as [`listener_slot`], with
/// the VIP's [`vip6_fold`] (`vip` as [`ipv6_halves`]).
#[inline(always)]
pub const fn listener6_slot(vip: (u64, u64), port: [u8; 2], protocol: u8) -> u32 {
    let port = ((port[0] as u32) << 8) | port[1] as u32;
    let half = if protocol == PROTO_UDP { 65536 } else { 0 };
    half | (port ^ vip6_fold(vip))
}

/// Elements of the `LISTENER_TABLE` array: one per listener, and a spare, so a changed value (a Maglev table
/// switch) always finds a free element to be written to before its slot moves there.
pub const LISTENER_TABLE_ELEMENTS: u32 = MAX_LISTENERS + 1;
/// Elements of the `LISTENER_SLOTS` array: one per value of [`listener_slot`].
pub const LISTENER_SLOT_COUNT: u32 = 2 * 65536;

/// Where a (VIP, port, protocol) sits in `LISTENER_SLOTS`: TCP in the first half, UDP in the second, the port
/// xor the folded VIP ([`vip_fold`]) within it, so one port on several VIPs takes several slots.
#[inline(always)]
pub const fn listener_slot(key: &ServiceKey) -> u32 {
    let port = ((key.port[0] as u32) << 8) | key.port[1] as u32;
    let half = if key.protocol == PROTO_UDP { 65536 } else { 0 };
    half | (port ^ vip_fold(key.vip))
}

/// Maglev slots per element of the `MAGLEV` array. A BPF array stores each value in a slot rounded up to 8 bytes,
/// so one u32 per element would waste half the memory; 64 per element also means 64 times fewer `bpf()` calls when
/// the agent writes a table.
pub const MAGLEV_CHUNK: u32 = 64;
/// Elements of one Maglev table (the last one partly used).
pub const MAGLEV_CHUNKS: u32 = MAGLEV_M.div_ceil(MAGLEV_CHUNK);

/// A run of `MAGLEV_CHUNK` Maglev slots: backend indices, or `NO_BACKEND`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub slots: [u32; MAGLEV_CHUNK as usize],
}
const _: () = assert!(core::mem::size_of::<MaglevChunk>() == 256);

impl Default for MaglevChunk {
    fn default() -> Self {
        MaglevChunk { slots: [NO_BACKEND; MAGLEV_CHUNK as usize] }
    }
}

/// The element of the `MAGLEV` array holding `slot` of a service's table `table`, and the slot's place in it.
#[inline(always)]
pub const fn maglev_position(service_index: u32, table: u32, slot: u32) -> (u32, u32) {
    ((service_index * 2 + (table & 1)) * MAGLEV_CHUNKS + slot / MAGLEV_CHUNK, slot % MAGLEV_CHUNK)
}

/// One entry of the `BACKENDS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub address: [u8; 4],
    pub port: [u8; 2],
    /// MAC of the backend (or of the next hop towards it), resolved by the agent from the neighbour table.
    pub mac: [u8; 6],
    /// MAC of the interface the backend is reached through: the source MAC of frames sent to it. All zero means
    /// the node's interface ([`NodeConfig::mac`]).
    pub src_mac: [u8; 6],
    /// 1 when the health checks say the backend is up; a pinned flow to an unhealthy backend is re-hashed.
    pub healthy: u8,
    /// 1 when the backend's address is one of this node's own (a stacked node: xvip next to the backend): its
    /// frames are delivered to the node's own stack (`XDP_PASS`), translated as for a remote backend under NAT,
    /// and the NAT replies are translated back by the egress program.
    pub local: u8,
    /// Index of the service this backend belongs to. A pinned flow whose backend slot was since given to another
    /// service is re-hashed instead of crossing services.
    pub service: u16,
    /// Interface through which the backend is reached (0: the node's interface, [`NodeConfig::ifindex`]); equal
    /// to the ingress interface means XDP_TX, another one `bpf_redirect`.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 28);

impl Backend {
    /// Whether a flow pinned to this slot may keep it for a service of index `service`: the slot still holds the
    /// backend the flow was pinned to (its address and port, [`FlowValue::holds`]; slots are freed and given to
    /// other backends as services come and go), which is healthy and still of that service.
    #[inline(always)]
    pub fn keeps_pin(&self, pinned: &FlowValue, service: u32) -> bool {
        self.healthy == 1 && u32::from(self.service) == service && pinned.holds(self)
    }
}

/// Key of the connection table: one direction of a client flow towards a service on one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: [u8; 4],
    pub vip: [u8; 4],
    pub client_port: [u8; 2],
    pub service_port: [u8; 2],
    pub protocol: u8,
    /// Padding, zeroed by [`FlowKey::new`]. Two scalars rather than `[u8; 3]`: see [`NatKey`].
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

impl FlowKey {
    /// The key of a client flow, padding zeroed (the kernel compares keys byte for byte). Build keys only with
    /// this.
    #[inline(always)]
    pub const fn new(client: [u8; 4], vip: [u8; 4], client_port: [u8; 2], service_port: [u8; 2], protocol: u8) -> Self {
        FlowKey { client, vip, client_port, service_port, protocol, _pad: 0, _pad2: 0 }
    }

    /// The key as two words (its bytes, padding zero), as the flow cache stores and compares it; built from the
    /// fields, which the XDP program holds in registers (the key is only 2-aligned, and a wider alignment costs
    /// stack the program does not have).
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        let ([c0, c1, c2, c3], [v0, v1, v2, v3]) = (self.client, self.vip);
        let ([p0, p1], [s0, s1]) = (self.client_port, self.service_port);
        [
            u64::from_ne_bytes([c0, c1, c2, c3, v0, v1, v2, v3]),
            u64::from_ne_bytes([p0, p1, s0, s1, self.protocol, 0, 0, 0]),
        ]
    }
}

/// Value of the connection table.
///
/// Kernel memory of `CONNTRACK` (an LRU hash map, always preallocated): 104 bytes per entry, that is a 48-byte
/// element header, the key and the value each rounded up to 8 bytes (16 and 24), and a 16-byte bucket. 6.8 MB for
/// the default 65536 entries (the `memlock` that `bpftool map show` reports; see docs/nat.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// The `BACKENDS` slot the flow is pinned to.
    pub backend: u32,
    /// NAT services: the source port this flow uses towards its backend (see [`nat_port`]), so established packets
    /// need not recompute it. 0 for DSR flows (NAT ports are never below [`NAT_PORT_MIN`]).
    pub nat_port: [u8; 2],
    /// The backend's port and address when the flow was pinned. A slot is freed when its backend leaves and later
    /// given to another one, so the slot number alone does not say which backend the flow went to: a pin holds
    /// only while the slot still has this address and port, and a NAT flow that moves to another backend finds
    /// (and deletes) its old reverse entry with them, whatever became of the slot since.
    pub backend_port: [u8; 2],
    /// NAT: when (coarse `bpf_ktime`, ns) this flow last confirmed that its `NAT` entry is still its own and
    /// refreshed it. Plain ACK/data packets within [`NAT_CHECK_INTERVAL_NS`] of it skip the `NAT` lookup.
    pub checked_ns: u64,
    pub backend_address: [u8; 4],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);

impl FlowValue {
    /// A flow pinned to slot `backend`, which holds `holder`; padding zeroed.
    #[inline(always)]
    pub const fn new(backend: u32, holder: &Backend, nat_port: [u8; 2], checked_ns: u64) -> Self {
        FlowValue {
            backend,
            nat_port,
            backend_port: holder.port,
            checked_ns,
            backend_address: holder.address,
            _pad: [0; 4],
        }
    }

    /// Whether `b` (the slot's current content) is the backend this flow was pinned to.
    #[inline(always)]
    pub fn holds(&self, b: &Backend) -> bool {
        b.address == self.backend_address && b.port == self.backend_port
    }
}

/// Slots of each CPU's flow cache in front of `CONNTRACK` (a power of two): 56 bytes a slot, 224 KiB per possible
/// CPU (see docs/nat.md).
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_BITS;
const FLOW_CACHE_BITS: u32 = 12;

/// How long a flow cache entry is served without looking at the connection table: past it, the next packet looks
/// the flow up there (which marks its LRU entry as used) and rewrites the entry. See `lb-ebpf/src/flow_cache.rs`.
pub const FLOW_CACHE_REFRESH_NS: u64 = 100_000_000;

/// The flow cache slot of a flow key given as [`FlowKey::words`]: the words folded together and one multiply (no
/// secret: a sender can aim its flows at one slot, which costs it only cache misses).
#[inline(always)]
pub fn flow_cache_slot(words: &[u64]) -> u32 {
    let mut x = 0u64;
    let mut i = 0;
    while i < words.len() {
        x = (x ^ words[i]).rotate_left(23);
        i += 1;
    }
    // The product's top bits depend on every bit of `x`.
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_BITS)) as u32
}

/// Key of the IPv6 connection table (`CONNTRACK6`): one direction of a client flow towards a service on one IPv6
/// VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub client_port: [u8; 2],
    pub service_port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

impl FlowKey6 {
    /// The key of a client flow, padding zeroed. Build keys only with this.
    #[inline(always)]
    pub const fn new(
        client: [u8; 16],
        vip: [u8; 16],
        client_port: [u8; 2],
        service_port: [u8; 2],
        protocol: u8,
    ) -> Self {
        FlowKey6 { client, vip, client_port, service_port, protocol, _pad: 0, _pad2: 0 }
    }

    /// [`FlowKey6::new`] from addresses as [`ipv6_halves`], built from five whole words: the XDP program then
    /// stores words, not sixteen bytes per address (which spill registers until the stack overflows).
    #[inline(always)]
    pub fn from_halves(
        client: (u64, u64),
        vip: (u64, u64),
        client_port: [u8; 2],
        service_port: [u8; 2],
        protocol: u8,
    ) -> Self {
        Self::from_words(Self::words_of(client, vip, client_port, service_port, protocol))
    }

    /// The memory of [`FlowKey6::from_halves`]'s key as five words (what the flow cache compares).
    #[inline(always)]
    pub fn words_of(
        client: (u64, u64),
        vip: (u64, u64),
        client_port: [u8; 2],
        service_port: [u8; 2],
        protocol: u8,
    ) -> [u64; 5] {
        let ([c0, c1], [s0, s1]) = (client_port, service_port);
        [
            client.0.to_be(),
            client.1.to_be(),
            vip.0.to_be(),
            vip.1.to_be(),
            u64::from_ne_bytes([c0, c1, s0, s1, protocol, 0, 0, 0]),
        ]
    }

    /// The key whose memory is `words` (as [`FlowKey6::words_of`] makes them).
    #[inline(always)]
    pub fn from_words(words: [u64; 5]) -> Self {
        // SAFETY: `FlowKey6` is `repr(C)`, 40 bytes of integers and byte arrays (every bit pattern valid); the
        // words hold the fields at their offsets, padding zero.
        unsafe { core::mem::transmute::<[u64; 5], FlowKey6>(words) }
    }

    /// [`FlowKey6::from_words`] in place: the key is `words` itself, not a copy (a copy costs stack the IPv6 NAT
    /// program does not have).
    #[inline(always)]
    pub fn in_words(words: &[u64; 5]) -> &Self {
        // SAFETY: as in `from_words`; `FlowKey6` is 40 bytes and needs less alignment than the words have.
        unsafe { &*(words as *const [u64; 5]).cast::<FlowKey6>() }
    }
}

/// Value of the IPv6 connection table: the `BACKENDS` slot a flow is pinned to and the backend (IPv6 address,
/// port) that held it then, so a pin holds only while the slot still has that backend (its address is in
/// `BACKEND_ADDRESSES6`, at the same index). 8-aligned (as map values are), so its address reads as two words.
///
/// Kernel memory of `CONNTRACK6` (an LRU hash map, preallocated): 136 bytes per entry, that is a 48-byte element
/// header, the 40-byte key, this 32-byte value and a 16-byte bucket (see docs/nat.md).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue6 {
    pub backend: u32,
    pub backend_port: [u8; 2],
    /// NAT services: the flow's source port towards its backend (as [`FlowValue::nat_port`]); 0 for DSR flows.
    pub nat_port: [u8; 2],
    pub backend_address: [u8; 16],
    /// NAT: when this flow last confirmed that its `NAT6` entry is still its own (as [`FlowValue::checked_ns`]);
    /// 0 for DSR flows.
    pub checked_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValue6>() == 32);

impl FlowValue6 {
    /// A DSR flow pinned to slot `backend`, which holds `holder` at `address`.
    #[inline(always)]
    pub const fn new(backend: u32, holder: &Backend, address: [u8; 16]) -> Self {
        FlowValue6 { backend, backend_port: holder.port, nat_port: [0; 2], backend_address: address, checked_ns: 0 }
    }

    /// A flow pinned to slot `backend` (holding `holder` at `address`, as [`ipv6_halves`]) that reaches it from
    /// `nat_port` (0: DSR), its `NAT6` entry confirmed at `checked_ns`; built from whole words (see
    /// [`FlowKey6::from_halves`]).
    #[inline(always)]
    pub fn nat(backend: u32, holder: &Backend, address: (u64, u64), nat_port: [u8; 2], checked_ns: u64) -> Self {
        let [b0, b1, b2, b3] = backend.to_ne_bytes();
        let ([p0, p1], [n0, n1]) = (holder.port, nat_port);
        let words: [u64; 4] =
            [u64::from_ne_bytes([b0, b1, b2, b3, p0, p1, n0, n1]), address.0.to_be(), address.1.to_be(), checked_ns];
        // SAFETY: `FlowValue6` is `repr(C)`, 32 bytes of integers and byte arrays without padding; the words hold
        // its fields.
        unsafe { core::mem::transmute::<[u64; 4], FlowValue6>(words) }
    }

    /// [`ipv6_halves`] of `backend_address`, read as two aligned 64-bit words (byte by byte on the BPF target
    /// otherwise, as any `[u8; 16]` whose alignment the compiler cannot see).
    #[inline(always)]
    pub fn address_halves(&self) -> (u64, u64) {
        // SAFETY: `FlowValue6` is `repr(C, align(8))`, 32 bytes of integers and byte arrays: four aligned words,
        // the second and third its address.
        let words = unsafe { &*(self as *const Self).cast::<[u64; 4]>() };
        (u64::from_be(words[1]), u64::from_be(words[2]))
    }

    /// Whether a flow pinned to this slot may keep it for a service of index `service`: the slot (`b`, whose
    /// IPv6 address's [`ipv6_halves`] are `address`) still holds the backend the flow was pinned to, healthy and of
    /// that service.
    #[inline(always)]
    pub fn keeps_pin(&self, b: &Backend, address: (u64, u64), service: u32) -> bool {
        b.healthy == 1
            && u32::from(b.service) == service
            && b.port == self.backend_port
            && address == self.address_halves()
    }
}

/// Key of `NAT_BACKENDS`: a backend endpoint of some NAT service. A TCP/UDP packet to the VIP *from* one of these
/// is a backend's reply (it goes through the reverse translation or, without one, to the kernel), never a client
/// packet: a client socket cannot use a port on which its host listens as its source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub address: [u8; 4],
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);

impl Endpoint {
    #[inline(always)]
    pub const fn new(address: [u8; 4], port: [u8; 2], protocol: u8) -> Self {
        Endpoint { address, port, protocol, _pad: 0 }
    }
}

/// Elements of `NAT_SOURCE_PORTS`: one bit per TCP and per UDP port, 64 per element (TCP first).
pub const NAT_SOURCE_PORT_WORDS: u32 = 2 * 65536 / 64;

/// Where the bit of (`protocol`, `port`) sits in `NAT_SOURCE_PORTS`: (element, bit). A set bit means some NAT
/// backend serves on that port, so a packet from that source port may be a backend's reply and is looked up in
/// `NAT_BACKENDS`; every other packet skips that hash lookup.
#[inline(always)]
pub const fn nat_source_port_bit(protocol: u8, port: u16) -> Option<(u32, u32)> {
    let slot = match protocol {
        PROTO_TCP => port as u32,
        PROTO_UDP => 65536 + port as u32,
        _ => return None,
    };
    Some((slot / 64, slot % 64))
}
/// The slots of `NAT6_PROGRAMS` (see `names::NAT6_PROGRAM`, `names::NAT6_ICMP_PROGRAM`).
pub const NAT6_SLOT: u32 = 0;
pub const NAT6_ICMP_SLOT: u32 = 1;

/// Key of `NAT_BACKENDS6`: an IPv6 backend endpoint of some NAT service (as [`Endpoint`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint6 {
    pub address: [u8; 16],
    pub port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint6>() == 20);

impl Endpoint6 {
    #[inline(always)]
    pub const fn new(address: [u8; 16], port: [u8; 2], protocol: u8) -> Self {
        Endpoint6 { address, port, protocol, _pad: 0 }
    }
}

/// Key of the `NAT6` map (reverse translation of IPv6 NAT flows): what a backend's reply carries, as [`NatKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey6 {
    pub backend: [u8; 16],
    pub vip: [u8; 16],
    pub backend_port: [u8; 2],
    pub nat_port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<NatKey6>() == 40);

impl NatKey6 {
    /// The key of a translation, padding zeroed. Build keys only with this.
    #[inline(always)]
    pub const fn new(backend: [u8; 16], vip: [u8; 16], backend_port: [u8; 2], nat_port: [u8; 2], protocol: u8) -> Self {
        NatKey6 { backend, vip, backend_port, nat_port, protocol, _pad: 0, _pad2: 0 }
    }

    /// [`NatKey6::new`] from addresses as [`ipv6_halves`], built from whole words (see [`FlowKey6::from_halves`]).
    #[inline(always)]
    pub fn from_halves(
        backend: (u64, u64),
        vip: (u64, u64),
        backend_port: [u8; 2],
        nat_port: [u8; 2],
        protocol: u8,
    ) -> Self {
        let ([b0, b1], [n0, n1]) = (backend_port, nat_port);
        let words: [u64; 5] = [
            backend.0.to_be(),
            backend.1.to_be(),
            vip.0.to_be(),
            vip.1.to_be(),
            u64::from_ne_bytes([b0, b1, n0, n1, protocol, 0, 0, 0]),
        ];
        // SAFETY: `NatKey6` is `repr(C)`, 40 bytes of integers and byte arrays; the words hold its fields.
        unsafe { core::mem::transmute::<[u64; 5], NatKey6>(words) }
    }
}

/// Value of the `NAT6` map: the IPv6 client flow, TCP state and reply route of a translation (as [`NatValue`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue6 {
    pub client: [u8; 16],
    pub client_port: [u8; 2],
    pub service_port: [u8; 2],
    pub next_hop_mac: [u8; 6],
    pub egress_mac: [u8; 6],
    /// `NAT_FIN_CLIENT | NAT_FIN_BACKEND | NAT_RST | NAT_ESTABLISHED`.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub egress_ifindex: u32,
    pub last_seen_ns: u64,
    pub route_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatValue6>() == 56);
const _: () = assert!(core::mem::offset_of!(NatValue6, flags) == 32);
const _: () = assert!(core::mem::offset_of!(NatValue6, last_seen_ns) == 40);

impl NatValue6 {
    /// A fresh translation (no route yet) for `client` (as [`ipv6_halves`]), built from whole words (see
    /// [`NatValue::new`]).
    #[inline(always)]
    pub const fn new(
        client: (u64, u64),
        client_port: [u8; 2],
        service_port: [u8; 2],
        flags: u8,
        last_seen_ns: u64,
    ) -> Self {
        let [p0, p1] = client_port;
        let [s0, s1] = service_port;
        let words: [u64; 7] = [
            client.0.to_be(),
            client.1.to_be(),
            // client_port, service_port, next_hop_mac[..4]
            u64::from_ne_bytes([p0, p1, s0, s1, 0, 0, 0, 0]),
            // next_hop_mac[4..], egress_mac
            0,
            // flags, _pad, egress_ifindex
            u64::from_ne_bytes([flags, 0, 0, 0, 0, 0, 0, 0]),
            last_seen_ns,
            // route_ns
            0,
        ];
        // SAFETY: `NatValue6` is `repr(C)`, 56 bytes with alignment 8 (asserted above), integers and byte arrays
        // only, so every bit pattern is a valid value; each word above holds the fields at its offsets.
        unsafe { core::mem::transmute::<[u64; 7], NatValue6>(words) }
    }
}

/// Key of the `NAT` map (reverse translation): what a backend's reply carries, (backend, backend port) as source
/// and (VIP, NAT port) as destination.
///
/// Kernel memory of `NAT` (LRU hash, preallocated): 128 bytes per entry (48-byte element header, 16 of key, 48 of
/// value, 16 of bucket), 8.4 MB for the default 65536 entries. It has as many entries as `CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend: [u8; 4],
    pub vip: [u8; 4],
    pub backend_port: [u8; 2],
    pub nat_port: [u8; 2],
    pub protocol: u8,
    /// Padding, zeroed by [`NatKey::new`]. Two scalars rather than `[u8; 3]`: a zeroed array whose length is not
    /// 1, 2, 4 or 8 bytes becomes a `memset` that the BPF target emits as a call (a return per packet, and returns
    /// are dear on kernels that mitigate return-address speculation); scalars are plain stores.
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<NatKey>() == 16);

impl NatKey {
    /// The key of a translation, padding zeroed. Build keys only with this.
    #[inline(always)]
    pub const fn new(backend: [u8; 4], vip: [u8; 4], backend_port: [u8; 2], nat_port: [u8; 2], protocol: u8) -> Self {
        NatKey { backend, vip, backend_port, nat_port, protocol, _pad: 0, _pad2: 0 }
    }
}

/// Value of the `NAT` map: the client flow a translated backend flow belongs to, its TCP state, and the route
/// its replies take (from the kernel's FIB, never from what a packet claimed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub client: [u8; 4],
    pub client_port: [u8; 2],
    pub service_port: [u8; 2],
    /// The route to the client as the FIB gave it at `route_ns`: next hop MAC, egress MAC and interface.
    pub next_hop_mac: [u8; 6],
    pub egress_mac: [u8; 6],
    /// `NAT_FIN_CLIENT | NAT_FIN_BACKEND | NAT_RST | NAT_ESTABLISHED`.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub egress_ifindex: u32,
    pub _pad2: u32,
    /// Coarse `bpf_ktime` (CLOCK_MONOTONIC, local to the node) of the latest sign of life: client packets, and
    /// backend packets once established. Updated at most every [`NAT_CHECK_INTERVAL_NS`].
    pub last_seen_ns: u64,
    /// When the route fields were filled from the FIB; 0 = no route yet. Refreshed after [`ROUTE_REFRESH_NS`].
    pub route_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 48);
const _: () = assert!(core::mem::align_of::<NatValue>() == 8);
const _: () = assert!(core::mem::offset_of!(NatValue, flags) == 20);
const _: () = assert!(core::mem::offset_of!(NatValue, egress_ifindex) == 24);
const _: () = assert!(core::mem::offset_of!(NatValue, last_seen_ns) == 32);
const _: () = assert!(core::mem::offset_of!(NatValue, route_ns) == 40);

impl NatValue {
    /// A fresh translation for the client flow (`client`, `client_port`, `service_port`): TCP state `flags`, last
    /// seen at `last_seen_ns`, no route yet (the first reply looks it up), padding zeroed.
    ///
    /// Built from six whole words: written field by field, the two zeroed MACs would be `memset`s of 6 bytes,
    /// which the BPF target emits as calls (see [`NatKey`]).
    #[inline(always)]
    pub const fn new(
        client: [u8; 4],
        client_port: [u8; 2],
        service_port: [u8; 2],
        flags: u8,
        last_seen_ns: u64,
    ) -> Self {
        let [c0, c1, c2, c3] = client;
        let [p0, p1] = client_port;
        let [s0, s1] = service_port;
        let words: [u64; 6] = [
            // client, client_port, service_port
            u64::from_ne_bytes([c0, c1, c2, c3, p0, p1, s0, s1]),
            // next_hop_mac, egress_mac[..2]
            0,
            // egress_mac[2..], flags, _pad
            u64::from_ne_bytes([0, 0, 0, 0, flags, 0, 0, 0]),
            // egress_ifindex, _pad2
            0,
            last_seen_ns,
            // route_ns
            0,
        ];
        // SAFETY: `NatValue` is `repr(C)`, 48 bytes with alignment 8 (asserted above), made of integers and byte
        // arrays only, so every bit pattern is a valid value; each word above holds the fields at its offsets.
        unsafe { core::mem::transmute::<[u64; 6], NatValue>(words) }
    }
}

/// The client sent a FIN.
pub const NAT_FIN_CLIENT: u8 = 1;
/// The backend sent a FIN.
pub const NAT_FIN_BACKEND: u8 = 2;
/// Either side sent a RST: the flow is closing. Its next client packet (other than a RST) revives it; once quiet
/// for the closed grace, another flow may take its port.
pub const NAT_RST: u8 = 4;
/// The backend sent a packet that is neither a SYN nor a RST: the handshake completed (a spoofed SYN only ever
/// draws SYN/ACKs, a spoofed ACK a RST). Until then the entry is embryonic.
pub const NAT_ESTABLISHED: u8 = 8;

/// How often (at most) a flow's packets confirm and refresh its `NAT` entry on the established path, and refresh
/// `last_seen_ns`: a map access per second per flow instead of one per packet.
pub const NAT_CHECK_INTERVAL_NS: u64 = 1_000_000_000;
/// How long a reply route taken from the FIB is used before it is looked up again: route changes (a new gateway,
/// a new neighbour MAC) reach established flows within this time.
pub const ROUTE_REFRESH_NS: u64 = 1_000_000_000;

/// The lowest NAT source port. Ports below 1024 are left alone so that a backend never sees the VIP connect from a
/// privileged port (some services treat those specially).
pub const NAT_PORT_MIN: u16 = 1024;
/// NAT source ports are `NAT_PORT_MIN..=65535`.
pub const NAT_PORT_COUNT: u32 = 65536 - NAT_PORT_MIN as u32;
/// Source-port candidates tried per flow before giving up (`Reason::DropNatNoPort`). The program unrolls this
/// many lookups, so it stays small.
pub const NAT_PORT_TRIES: u32 = 4;
/// Default idle time after which a UDP translation is considered gone (another flow may take its port; the next
/// client packet starts a new flow). 60 s, like conntrack's UDP stream timeout is 120 s and Katran's 30 s.
pub const DEFAULT_NAT_UDP_TIMEOUT_NS: u64 = 60_000_000_000;
/// Default time a TCP translation that saw a FIN from both sides, or a RST, stays reserved for its flow after its
/// last packet, so late retransmissions and the final ACK still translate, before another flow may take its port.
pub const DEFAULT_NAT_CLOSED_GRACE_NS: u64 = 10_000_000_000;
/// Default idle time after which an embryonic TCP translation (the backend never answered with anything but a
/// SYN/ACK or RST) may be taken by another flow. A real client retransmits its SYN after 1 s, 3 s, 7 s, so 5 s of
/// silence means a lost or spoofed flow. (A new SYN may also displace an embryonic entry of another flow at once
/// when all its candidates are held: see `lb-ebpf/src/nat.rs`.)
pub const DEFAULT_NAT_EMBRYONIC_TIMEOUT_NS: u64 = 5_000_000_000;
/// Default idle time after which an established TCP translation may be taken by another flow: 2 h 4 min, the
/// minimum RFC 5382 (REQ-5) sets for NATs, longer than the 2 h default TCP keepalive, so a silent kube watch
/// keeps its port.
pub const DEFAULT_NAT_ESTABLISHED_TIMEOUT_NS: u64 = 7_440_000_000_000;

/// Packets, bytes and new flows, the value of the per-CPU service and backend counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    /// Flows this node assigned to the backend (a fresh Maglev pick recorded in the connection table: a SYN, a
    /// new UDP flow, or a flow this node had no entry for, as after a failover).
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 24);

/// What the program did with a frame and why: one per-CPU counter each (the `COUNTERS` array).
///
/// Every return path of the program bumps exactly one of these, so their sum is the number of frames seen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// ARP request for a VIP answered with XDP_TX.
    ArpReply = 0,
    /// ICMP echo request to a VIP answered with XDP_TX.
    EchoReply = 1,
    /// Packet to a service sent to a backend (DSR) on the ingress interface.
    ForwardTx = 2,
    /// Packet to a service redirected to a backend on another interface.
    ForwardRedirect = 3,
    /// Neither IPv4, IPv6 nor ARP (LLDP, ...): kernel.
    PassNotIpv4 = 4,
    /// 802.1Q/802.1ad tagged: kernel.
    PassVlan = 5,
    /// ARP that is not a request for one of our VIPs (on its interface, while its router is active), or a request
    /// for a VIP no client can have sent (a sender address that is martian, a VIP or the node's own, or a sender
    /// MAC that is zero, multicast or the node's): kernel, which answers only for its own addresses.
    PassArp = 6,
    /// IPv4 or IPv6 not addressed to any VIP (for IPv6 multicast: anything but a Neighbor Solicitation without
    /// extension headers to a solicited-node group): kernel.
    PassNotVip = 7,
    /// Addressed to a VIP whose router is not active here: dropped (the kernel does not own the VIP; with IP
    /// forwarding on it would route it back to the active node or loop it through stale neighbour entries).
    DropInactive = 8,
    /// To a VIP but not to a service configured on it (other port, protocol or ICMP type, or an ICMP error about no
    /// flow of ours): dropped and counted, never handed to the kernel's forwarding path.
    DropNoService = 9,
    /// Frame too short for the headers it claims: kernel (it drops it too, and counts it).
    PassTruncated = 10,
    /// To a service, but an IPv4 fragment: there are no ports to hash.
    DropFragment = 11,
    /// To a service, but with IPv4 options (or a bad header length / version).
    DropIpOptions = 12,
    /// To a service that has no healthy backend: dropped so the client fails fast rather than hanging on a
    /// node that looks healthy.
    DropNoBackend = 13,
    /// To a service, backend picked, but its entry is unusable (no MAC yet): dropped.
    DropBackendUnresolved = 14,
    /// A map lookup that cannot fail did (should stay 0).
    DropInternal = 15,
    /// Packet to a NAT service translated (VIP:nat port -> backend) and sent on the ingress interface.
    NatForwardTx = 16,
    /// Packet to a NAT service translated and redirected to the backend's interface.
    NatForwardRedirect = 17,
    /// A backend's reply translated back (VIP:service port -> client) and sent on the ingress interface.
    NatReplyTx = 18,
    /// A backend's reply translated back and redirected to the client's interface.
    NatReplyRedirect = 19,
    /// An ICMP error about a packet sent to a backend, translated and sent to the client (PMTU discovery).
    NatIcmpToClient = 20,
    /// An ICMP error about a reply sent to a client, translated and sent to the backend (PMTU discovery).
    NatIcmpToBackend = 21,
    /// From a NAT backend to the VIP, but no translation (yet): dropped. Happens after a failover until the client's
    /// next packet rebuilds it, and after the entry aged out or was evicted.
    DropNatNoEntry = 22,
    /// To a NAT service, but every source-port candidate for this flow's backend is taken by a live flow.
    DropNatNoPort = 23,
    /// To the VIP from a source no client can have: 0/8, 127/8, multicast, 240/4 and broadcast, the VIP itself,
    /// or an address of this node or a broadcast of its subnets (`NodeConfig::local`). Dropped before any state
    /// is created. Also an echo request from a zero, multicast or the node's own MAC (where its reply would go).
    DropMartianSource = 24,
    /// A translated reply (or ICMP error) whose next hop has no neighbour entry yet: handed to the kernel, which
    /// resolves it (ARP) and forwards this packet; later ones find the entry.
    PassNoNeighbour = 25,
    /// No route back to a NAT flow's client (none at all, or an unreachable, blackhole or prohibit route): its
    /// replies are dropped.
    DropNoRoute = 26,
    /// IPv4 forwarding is off on the interface, so the FIB cannot route replies: dropped. NAT needs
    /// `net.ipv4.conf.<interface>.forwarding = 1` (every Kubernetes node has it).
    DropForwardingDisabled = 27,
    /// To the VIP, but the IPv4 header checksum does not verify: dropped before anything is read from the header
    /// (the kernel drops such packets too).
    DropIpChecksum = 28,
    /// To the VIP, but the TCP or UDP header is inconsistent: a TCP data offset below 5 or beyond the packet, a UDP
    /// length below 8 or beyond the packet. Dropped, never forwarded as it came.
    DropMalformedL4 = 29,
    /// An ICMP echo request to the VIP whose ICMP checksum does not verify: not answered (a host would not either).
    DropIcmpChecksum = 30,
    /// An ICMP echo request to the VIP longer than [`ECHO_MAX_LEN`] bytes, the most the program verifies: not
    /// answered.
    DropEchoTooLong = 31,
    /// Packet to a DSR service whose backend is this node itself: handed to the node's own stack unchanged
    /// (`XDP_PASS`; the backend holds the VIP on its loopback).
    ForwardLocal = 32,
    /// Packet to a NAT service translated (VIP:nat port -> backend) for a backend on this node: handed to the
    /// node's own stack (`XDP_PASS`).
    NatForwardLocal = 33,
    /// Egress: a reply of a NAT backend on this node translated back (VIP:service port -> client) and sent on.
    NatReplyLocal = 34,
    /// Egress: the node's own ARP request for an active VIP answered back into the node (the VIP's MAC is the
    /// interface's), so the node's local backends send their NAT replies through the egress program.
    ArpReplyLocal = 35,
    /// To a VIP whose router is not active here, but which this node's kernel holds (a DSR backend on this node,
    /// the VIP on its loopback): the active node's DSR forward to this node's backend, handed to the kernel.
    PassHeldVip = 36,
    /// A Neighbor Solicitation for an IPv6 VIP answered with a Neighbor Advertisement (XDP_TX).
    NaReply = 37,
    /// A Neighbor Solicitation to a solicited-node multicast group that is not for one of our IPv6 VIPs (on its
    /// interface, while its router is active), or that fails the RFC 4861 §7.1.1 checks (see [`Reason::DropNd`]), or
    /// comes from a sender no client can have (the VIP, multicast, loopback; a zero, multicast or the node's MAC):
    /// kernel, which answers only for its own addresses and discards invalid ones.
    PassNd = 38,
    /// A Neighbor Solicitation sent to an IPv6 VIP itself (unicast, as for reachability confirmation) that is not
    /// answered: it fails the RFC 4861 §7.1.1 checks (hop limit not 255, code not 0, shorter than 24 bytes, a bad
    /// checksum, a target other than the VIP, an option of length 0; or longer than 64 bytes), or comes from a zero,
    /// multicast or the node's own MAC, or arrives on another interface than the VIP's. Dropped (the kernel does not
    /// own the VIP).
    DropNd = 39,
    /// TCP or UDP to an IPv6 VIP's port whose service has a forwarding the IPv6 path does not know (the agent
    /// installs only DSR and NAT services, so this stays 0), or (IPv6 NAT) the tail call to `xvip_nat6` failed.
    DropIpv6Transport = 40,
    /// Egress: the node's own Neighbor Solicitation for an active IPv6 VIP answered back into the node (as
    /// `ArpReplyLocal` for IPv4).
    NaReplyLocal = 41,
}

pub const REASON_COUNT: u32 = 42;

/// The longest ICMP echo request (ICMP header and data, in bytes) the program verifies and answers: 3 KiB, every
/// ping a 1500-byte MTU carries (`ping -s 1472`) with room to spare, and nearly all a single-buffer XDP frame can
/// hold (about 3.5 KiB of a 4 KiB page). Verifying costs under 1 ns per 8 bytes, so the bound also caps what a
/// flood of large pings costs per packet.
pub const ECHO_MAX_LEN: usize = 3072;

/// The `ROUTER_COUNTERS` element of `reason` for frames to the VIPs of `router`: the per-CPU counters of each
/// router's own frames (addressed to one of its VIPs, or ARP requests for one), next to the node-wide `COUNTERS`.
#[inline(always)]
pub const fn router_counter(router: u32, reason: u32) -> u32 {
    router * REASON_COUNT + reason
}

/// Elements of `ROUTER_COUNTERS`.
pub const ROUTER_COUNTER_SLOTS: u32 = MAX_ROUTERS * REASON_COUNT;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::ArpReply,
        Reason::EchoReply,
        Reason::ForwardTx,
        Reason::ForwardRedirect,
        Reason::PassNotIpv4,
        Reason::PassVlan,
        Reason::PassArp,
        Reason::PassNotVip,
        Reason::DropInactive,
        Reason::DropNoService,
        Reason::PassTruncated,
        Reason::DropFragment,
        Reason::DropIpOptions,
        Reason::DropNoBackend,
        Reason::DropBackendUnresolved,
        Reason::DropInternal,
        Reason::NatForwardTx,
        Reason::NatForwardRedirect,
        Reason::NatReplyTx,
        Reason::NatReplyRedirect,
        Reason::NatIcmpToClient,
        Reason::NatIcmpToBackend,
        Reason::DropNatNoEntry,
        Reason::DropNatNoPort,
        Reason::DropMartianSource,
        Reason::PassNoNeighbour,
        Reason::DropNoRoute,
        Reason::DropForwardingDisabled,
        Reason::DropIpChecksum,
        Reason::DropMalformedL4,
        Reason::DropIcmpChecksum,
        Reason::DropEchoTooLong,
        Reason::ForwardLocal,
        Reason::NatForwardLocal,
        Reason::NatReplyLocal,
        Reason::ArpReplyLocal,
        Reason::PassHeldVip,
        Reason::NaReply,
        Reason::PassNd,
        Reason::DropNd,
        Reason::DropIpv6Transport,
        Reason::NaReplyLocal,
    ];

    /// Stable snake_case name, used in status output and tests.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::ArpReply => "arp_replies",
            Reason::EchoReply => "echo_replies",
            Reason::ForwardTx => "forward_tx",
            Reason::ForwardRedirect => "forward_redirect",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassVlan => "pass_vlan",
            Reason::PassArp => "pass_arp",
            Reason::PassNotVip => "pass_not_vip",
            Reason::DropInactive => "drop_inactive",
            Reason::DropNoService => "drop_no_service",
            Reason::PassTruncated => "pass_truncated",
            Reason::DropFragment => "drop_fragment",
            Reason::DropIpOptions => "drop_ip_options",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropBackendUnresolved => "drop_backend_unresolved",
            Reason::DropInternal => "drop_internal",
            Reason::NatForwardTx => "nat_forward_tx",
            Reason::NatForwardRedirect => "nat_forward_redirect",
            Reason::NatReplyTx => "nat_reply_tx",
            Reason::NatReplyRedirect => "nat_reply_redirect",
            Reason::NatIcmpToClient => "nat_icmp_to_client",
            Reason::NatIcmpToBackend => "nat_icmp_to_backend",
            Reason::DropNatNoEntry => "drop_nat_no_entry",
            Reason::DropNatNoPort => "drop_nat_no_port",
            Reason::DropMartianSource => "drop_martian_source",
            Reason::PassNoNeighbour => "pass_no_neighbour",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropForwardingDisabled => "drop_forwarding_disabled",
            Reason::DropIpChecksum => "drop_ip_checksum",
            Reason::DropMalformedL4 => "drop_malformed_l4",
            Reason::DropIcmpChecksum => "drop_icmp_checksum",
            Reason::DropEchoTooLong => "drop_echo_too_long",
            Reason::ForwardLocal => "forward_local",
            Reason::NatForwardLocal => "nat_forward_local",
            Reason::NatReplyLocal => "nat_reply_local",
            Reason::ArpReplyLocal => "arp_replies_local",
            Reason::PassHeldVip => "pass_held_vip",
            Reason::NaReply => "na_replies",
            Reason::PassNd => "pass_nd",
            Reason::DropNd => "drop_nd",
            Reason::DropIpv6Transport => "drop_ipv6_transport",
            Reason::NaReplyLocal => "na_replies_local",
        }
    }
}

/// Whether `source` can never be a client's address: "this network" 0/8, loopback 127/8, multicast 224/4,
/// reserved 240/4 (with the limited broadcast 255.255.255.255), or the VIP itself (RFC 1122 §3.2.1.3, RFC 5735).
/// The node's own addresses are recognised separately, by the FIB.
#[inline(always)]
pub const fn martian_source(source: [u8; 4], vip: [u8; 4]) -> bool {
    let first = source[0];
    // The addresses compared as words: one comparison where four byte comparisons would be four branches in BPF.
    first == 0 || first == 127 || first >= 224 || u32::from_ne_bytes(source) == u32::from_ne_bytes(vip)
}

/// Whether the IPv6 `source` can never be a client's address: the unspecified address `::`, loopback `::1`,
/// multicast `ff00::/8`, IPv4-mapped `::ffff:0:0/96` (never on the wire, RFC 4291 §2.5.5.2; Linux drops it too),
/// or the VIP itself.
#[inline(always)]
pub fn martian_source6(source: &[u8; 16], vip: &[u8; 16]) -> bool {
    martian_source6_halves(ipv6_halves(source), ipv6_halves(vip))
}

/// [`martian_source6`] of addresses given as their [`ipv6_halves`].
#[inline(always)]
pub const fn martian_source6_halves((high, low): (u64, u64), vip: (u64, u64)) -> bool {
    high >> 56 == 0xff || (high == 0 && (low <= 1 || low >> 32 == 0xffff)) || (vip.0 == high && vip.1 == low)
}

/// An IPv6 address as two big-endian 64-bit halves: compared and tested with two register operations (a
/// comparison of the arrays may become a `memcmp` call, which the XDP program must not make).
#[inline(always)]
pub fn ipv6_halves(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// The address whose [`ipv6_halves`] are `(high, low)`: built in registers, so building a key from a frame's
/// address costs no `memmove` call (which a copy of the array itself may become in the XDP program).
#[inline(always)]
pub const fn ipv6_from_halves((high, low): (u64, u64)) -> [u8; 16] {
    let h = high.to_be_bytes();
    let l = low.to_be_bytes();
    [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]
}

/// The solicited-node multicast address of `address` (RFC 4291 §2.7.1): `ff02::1:ff` and its last 24 bits,
/// where Neighbor Solicitations for `address` are sent.
#[inline(always)]
pub const fn solicited_node(address: [u8; 16]) -> [u8; 16] {
    [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, address[13], address[14], address[15]]
}

/// The flow hash: (client address, client port, service port, protocol) with the group's seed.
///
/// Shared by both sides so the agent and its tests can predict which Maglev slot a flow takes. It is a
/// murmur3-style mix (multiply, rotate, xor) that the verifier accepts without loops or helpers.
#[inline(always)]
pub fn flow_hash(client: [u8; 4], client_port: [u8; 2], service_port: [u8; 2], protocol: u8, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, u32::from_be_bytes(client));
    h = mix(h, (u32::from(u16::from_be_bytes(client_port)) << 16) | u32::from(u16::from_be_bytes(service_port)));
    h = mix(h, u32::from(protocol));
    fmix(h ^ 12)
}

/// [`flow_hash`] of an IPv6 client: its address folded in as four words.
#[inline(always)]
pub fn flow_hash6(client: &[u8; 16], client_port: [u8; 2], service_port: [u8; 2], protocol: u8, seed: u32) -> u32 {
    flow_hash6_halves(ipv6_halves(client), client_port, service_port, protocol, seed)
}

/// [`flow_hash6`] of a client address given as its [`ipv6_halves`] (the XDP program reads them as two words).
#[inline(always)]
pub fn flow_hash6_halves(
    (high, low): (u64, u64),
    client_port: [u8; 2],
    service_port: [u8; 2],
    protocol: u8,
    seed: u32,
) -> u32 {
    let mut h = seed;
    h = mix(h, (high >> 32) as u32);
    h = mix(h, high as u32);
    h = mix(h, (low >> 32) as u32);
    h = mix(h, low as u32);
    h = mix(h, (u32::from(u16::from_be_bytes(client_port)) << 16) | u32::from(u16::from_be_bytes(service_port)));
    h = mix(h, u32::from(protocol));
    fmix(h ^ 24)
}

/// The NAT source port of a flow for its `attempt`-th candidate (0..[`NAT_PORT_TRIES`]), from its [`flow_hash`].
///
/// A pure function of the flow (the hash is seeded per VRRP group, not per node), so the node that takes over after
/// a failover picks the same port for the same flow and the backend keeps seeing the same 4-tuple. Candidates
/// after the first are only used when the earlier ones belong to other live flows (a collision); every node tries
/// them in the same order. The result is in `NAT_PORT_MIN..=65535`, in network byte order.
#[inline(always)]
pub fn nat_port(flow_hash: u32, attempt: u32) -> [u8; 2] {
    // Re-mixed per attempt so candidates are independent of each other and of the Maglev slot (`flow_hash % M`).
    let h = fmix(flow_hash ^ 0x9e37_79b9u32.wrapping_mul(attempt.wrapping_add(1)));
    (NAT_PORT_MIN + (h % NAT_PORT_COUNT) as u16).to_be_bytes()
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash a local client's socket is balanced by (the `connect4` program): its socket cookie, which the kernel
/// gives each socket once per boot (a counter, hence mixed), under the VIP's seed. A socket keeps its backend if it
/// connects again; its source port cannot be used, since the kernel has not chosen it yet at `connect()`.
#[inline(always)]
pub fn socket_hash(cookie: u64, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, cookie as u32);
    h = mix(h, (cookie >> 32) as u32);
    fmix(h ^ 8)
}

/// Whether the socket load balancer rewrites a connect made in the network namespace `netns` (its cookie): only in
/// the agent's own namespace `node_netns`. Cgroup programs run for every process in the cgroup whatever its
/// namespace, so containers on the node (and other xvip nodes sharing a machine in tests) are left alone. A node
/// cookie of 0 (not known) rewrites nothing.
#[inline(always)]
pub const fn socket_lb_applies(netns: u64, node_netns: u64) -> bool {
    node_netns != 0 && netns == node_netns
}

/// Key of `SOCKET_PEERS`: a local client's socket (its cookie) and the backend its connect or its datagram to a
/// VIP was sent to (the protocol: TCP or UDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketPeerKey {
    pub cookie: u64,
    pub backend: [u8; 4],
    pub backend_port: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<SocketPeerKey>() == 16);

impl SocketPeerKey {
    #[inline(always)]
    pub const fn new(cookie: u64, backend: [u8; 4], backend_port: [u8; 2], protocol: u8) -> Self {
        SocketPeerKey { cookie, backend, backend_port, protocol, _pad: 0 }
    }
}

/// Value of `SOCKET_PEERS`: the VIP and port the socket asked for, what `getpeername()` reports instead of the
/// backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketPeer {
    pub vip: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SocketPeer>() == 8);

/// Key of `SOCKET_PEERS6`: [`SocketPeerKey`] for an IPv6 socket and backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketPeerKey6 {
    pub cookie: u64,
    pub backend: [u8; 16],
    pub backend_port: [u8; 2],
    pub protocol: u8,
    /// Padding, zeroed by [`SocketPeerKey6::new`].
    pub _pad: u8,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<SocketPeerKey6>() == 32);

impl SocketPeerKey6 {
    #[inline(always)]
    pub const fn new(cookie: u64, backend: [u8; 16], backend_port: [u8; 2], protocol: u8) -> Self {
        SocketPeerKey6 { cookie, backend, backend_port, protocol, _pad: 0, _pad2: 0 }
    }
}

/// Value of `SOCKET_PEERS6`: [`SocketPeer`] for an IPv6 VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketPeer6 {
    pub vip: [u8; 16],
    pub port: [u8; 2],
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SocketPeer6>() == 24);

/// A service's backend at one of the node's own addresses, for the socket load balancer: an element of the
/// `SOCKET_LOCAL` array (indexed by service index). Such a backend is in no Maglev table on its own node (the XDP
/// program delivers frames to other hosts only: it has no MAC to send them to), but a local client's connect can
/// go to it: it gets `weight` out of `total` (the weights of the service's Maglev members plus its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalShare {
    /// Its `BACKENDS` slot, or [`NO_BACKEND`].
    pub backend: u32,
    pub weight: u32,
    pub total: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LocalShare>() == 16);

impl Default for LocalShare {
    fn default() -> Self {
        LocalShare { backend: NO_BACKEND, weight: 0, total: 0, _pad: 0 }
    }
}

impl LocalShare {
    /// Whether a connect hashed to `hash` goes to the local backend: `weight` of every `total` hashes do.
    #[inline(always)]
    pub fn picks(&self, hash: u32) -> bool {
        self.backend != NO_BACKEND && self.total != 0 && hash % self.total < self.weight
    }
}

/// Entries of `SOCKET_PEERS`, an LRU (a closed socket's entry ages out): 88 bytes of kernel memory each (48-byte
/// element header, 16 of key, 8 of value, 16 of bucket), 5.8 MB.
pub const SOCKET_PEERS_ENTRIES: u32 = 65536;

/// The flow hash seed of a VRRP group: every node with the same VIP and VRID gets the same one.
pub fn group_seed(vip: [u8; 4], vrid: u8) -> u32 {
    fmix(mix(0x7876_6970, u32::from_be_bytes(vip)) ^ u32::from(vrid))
}

/// The flow hash seed of an IPv6 VRRP group ([`group_seed`] for an IPv6 VIP).
pub fn group_seed6(vip: [u8; 16], vrid: u8) -> u32 {
    let mut h = 0x7876_6936;
    for word in vip.chunks_exact(4) {
        h = mix(h, u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    fmix(h ^ u32::from(vrid))
}

/// The `log` target of the data plane's trace records (aya-log), which the agent parses.
pub const TRACE_TARGET: &str = "xvip_trace";

/// Most trace records a CPU may emit per second, whatever a client asks for: a record costs about a microsecond
/// and 264 bytes of the 128 KiB log ring.
pub const TRACE_MAX_RATE: u32 = 1000;

/// The trace switch: the one entry of the `TRACE` array, written only by the agent (while a client of `xvip trace`
/// is connected; all zero, the default of a freshly loaded program, is off).
///
/// While `on`, the program emits one record per frame to a VIP that matches the filter (`family`, `client` under
/// `client_mask`, and `vip`, `port`, `protocol` where not zero; for a backend's reply through NAT the client and
/// the service port are the flow's), at most one per `interval_ns` per CPU after a burst of one second's worth
/// (see [`TraceState::admit`]). Addresses are [`trace_halves`]: an IPv6 address's [`ipv6_halves`], an IPv4
/// address in the top 32 bits of the first word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// 1 = on.
    pub on: u32,
    /// Changes with every write, so each CPU's limiter starts afresh (a full burst) with new settings.
    pub generation: u32,
    /// Nanoseconds between two records of a CPU: 10^9 / (records per second).
    pub interval_ns: u64,
    pub client: [u64; 2],
    pub client_mask: [u64; 2],
    /// All zero: any VIP.
    pub vip: [u64; 2],
    /// The service port on the VIP; 0: any.
    pub port: [u8; 2],
    /// [`PROTO_TCP`], [`PROTO_UDP`], 1 (ICMP) or 58 (ICMPv6); 0: any.
    pub protocol: u8,
    /// [`TRACE_IPV4`] or [`TRACE_IPV6`]: frames of that family only; 0: both.
    pub family: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<TraceConfig>() == 72);

/// [`TraceRecord::family`] and [`TraceConfig::family`] of IPv4 and IPv6 frames.
pub const TRACE_IPV4: u8 = 4;
pub const TRACE_IPV6: u8 = 6;

/// An address as trace records and filters hold it, in two words: an IPv6 address's [`ipv6_halves`]; an IPv4
/// address in the top 32 bits of the first word (so in the 16-byte form, its 4 bytes come first, then zeros).
#[inline(always)]
pub fn trace_halves(address: &[u8; 16]) -> (u64, u64) {
    ipv6_halves(address)
}

/// The [`trace_halves`] of an IPv4 address.
#[inline(always)]
pub const fn trace_halves4(address: [u8; 4]) -> (u64, u64) {
    ((u32::from_be_bytes(address) as u64) << 32, 0)
}

impl TraceConfig {
    /// Whether a decision about a frame of `family`, the flow's `client` and `vip:port/protocol` (addresses as
    /// [`trace_halves`]) is to be traced.
    #[inline(always)]
    pub fn matches(&self, family: u8, client: (u64, u64), vip: (u64, u64), port: [u8; 2], protocol: u8) -> bool {
        (self.family == 0 || self.family == family)
            && client.0 & self.client_mask[0] == self.client[0]
            && client.1 & self.client_mask[1] == self.client[1]
            && ((self.vip[0] | self.vip[1]) == 0 || (self.vip[0] == vip.0 && self.vip[1] == vip.1))
            && (self.port == [0; 2] || self.port == port)
            && (self.protocol == 0 || self.protocol == protocol)
    }
}

/// The shortest interval between two trace records of a CPU: [`TRACE_MAX_RATE`] per second.
pub const TRACE_MIN_INTERVAL_NS: u64 = 1_000_000_000 / TRACE_MAX_RATE as u64;

/// One decision of the program, as a trace record carries it (the bytes of the one argument of an aya-log record
/// with target [`TRACE_TARGET`], hex-encoded by aya-log): the frame as it arrived, the flow it belongs to, and
/// what became of it. Addresses are 16 bytes, an IPv4 one in the first 4 (then zeros; see [`trace_halves`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// The frame's source and destination (a VIP) as it arrived.
    pub from: [u8; 16],
    pub to: [u8; 16],
    /// The flow's client: the frame's source, except for a backend's reply through NAT, whose flow the
    /// translation names.
    pub client: [u8; 16],
    /// The backend the flow went to (all zero: none).
    pub backend: [u8; 16],
    /// The frame's TCP/UDP ports (0 for other protocols).
    pub from_port: [u8; 2],
    pub to_port: [u8; 2],
    /// The flow's client port and service port (as `client`).
    pub client_port: [u8; 2],
    pub service_port: [u8; 2],
    pub backend_port: [u8; 2],
    /// The source port the NAT uses towards the backend (0: DSR).
    pub nat_port: [u8; 2],
    /// The interface the frame arrived on.
    pub ifindex: u32,
    /// A [`Reason`] and the XDP action (1 drop, 2 pass, 3 tx, 4 redirect).
    pub reason: u8,
    pub action: u8,
    pub protocol: u8,
    /// TCP flags of the frame (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10, ...); 0 for other protocols.
    pub tcp_flags: u8,
    /// [`TRACE_IPV4`] or [`TRACE_IPV6`].
    pub family: u8,
    pub _pad: [u8; 3],
}
pub const TRACE_RECORD_LEN: usize = 88;
const _: () = assert!(core::mem::size_of::<TraceRecord>() == TRACE_RECORD_LEN);

impl TraceRecord {
    /// The record from its bytes (as the program wrote them, on this host's byte order for `ifindex`).
    pub fn from_bytes(b: &[u8]) -> Option<TraceRecord> {
        let b: &[u8; TRACE_RECORD_LEN] = b.try_into().ok()?;
        let sixteen = |i: usize| {
            let mut a = [0; 16];
            a.copy_from_slice(&b[i..i + 16]);
            a
        };
        let two = |i: usize| [b[i], b[i + 1]];
        Some(TraceRecord {
            from: sixteen(0),
            to: sixteen(16),
            client: sixteen(32),
            backend: sixteen(48),
            from_port: two(64),
            to_port: two(66),
            client_port: two(68),
            service_port: two(70),
            backend_port: two(72),
            nat_port: two(74),
            ifindex: u32::from_ne_bytes([b[76], b[77], b[78], b[79]]),
            reason: b[80],
            action: b[81],
            protocol: b[82],
            tcp_flags: b[83],
            family: b[84],
            _pad: [b[85], b[86], b[87]],
        })
    }

    /// The record's bytes, as [`from_bytes`](Self::from_bytes) reads them.
    #[inline(always)]
    pub fn as_bytes(&self) -> &[u8; TRACE_RECORD_LEN] {
        // SAFETY: repr(C), 88 bytes of byte arrays and one u32 at offset 76, no padding (size asserted above).
        unsafe { &*(self as *const TraceRecord as *const [u8; TRACE_RECORD_LEN]) }
    }

    /// One of the record's addresses (`from`, `to`, `client`, `backend`) as an address of the record's family.
    pub fn address(&self, a: &[u8; 16]) -> core::net::IpAddr {
        if self.family == TRACE_IPV6 {
            core::net::Ipv6Addr::from(*a).into()
        } else {
            core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        }
    }

    /// An IPv4 address in a record's 16-byte form.
    pub const fn ipv4(a: [u8; 4]) -> [u8; 16] {
        [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }
}

/// Time credit a CPU's trace limiter holds at most: one second, i.e. a burst of one second's records.
pub const TRACE_BURST_NS: u64 = 1_000_000_000;

/// Each CPU's trace limiter and counters: the per-CPU `TRACE_STATE` entry, written only by the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceState {
    /// The [`TraceConfig::generation`] the limiter was last reset for.
    pub generation: u32,
    pub _pad: u32,
    /// Time credit (a token bucket counted in ns): a record costs `interval_ns` of it.
    pub credit_ns: u64,
    pub last_ns: u64,
    /// Records handed to the log ring.
    pub emitted: u64,
    /// Matching decisions not emitted because of the rate limit.
    pub suppressed: u64,
    /// Matching decisions not emitted because the log ring was nearly full (the agent falls behind).
    pub ring_full: u64,
}
const _: () = assert!(core::mem::size_of::<TraceState>() == 48);

impl TraceState {
    /// The rate limit: whether a matching decision at `now_ns` may be emitted under `config` (counting it as
    /// suppressed otherwise). Credit accrues with time up to [`TRACE_BURST_NS`]; new settings (another
    /// generation) start with a full burst.
    #[inline(always)]
    pub fn admit(&mut self, config: &TraceConfig, now_ns: u64) -> bool {
        if self.generation != config.generation {
            self.generation = config.generation;
            self.credit_ns = TRACE_BURST_NS;
        } else {
            let credit = self.credit_ns.saturating_add(now_ns.saturating_sub(self.last_ns));
            self.credit_ns = if credit > TRACE_BURST_NS { TRACE_BURST_NS } else { credit };
        }
        self.last_ns = now_ns;
        // The program holds every client to TRACE_MAX_RATE, whatever the entry says.
        let interval =
            if config.interval_ns < TRACE_MIN_INTERVAL_NS { TRACE_MIN_INTERVAL_NS } else { config.interval_ns };
        if self.credit_ns >= interval {
            self.credit_ns -= interval;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::Heartbeat {}
    unsafe impl aya::Pod for super::MaglevChunk {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::VipEntry {}
    unsafe impl aya::Pod for super::Listener {}
    unsafe impl aya::Pod for super::Vip6Entry {}
    unsafe impl aya::Pod for super::Listener6 {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::FlowValue6 {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::NatKey {}
    unsafe impl aya::Pod for super::NatValue {}
    unsafe impl aya::Pod for super::Endpoint6 {}
    unsafe impl aya::Pod for super::NatKey6 {}
    unsafe impl aya::Pod for super::NatValue6 {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::TraceConfig {}
    unsafe impl aya::Pod for super::TraceState {}
    unsafe impl aya::Pod for super::SocketPeerKey {}
    unsafe impl aya::Pod for super::SocketPeer {}
    unsafe impl aya::Pod for super::LocalShare {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn trace_config(rate: u64) -> TraceConfig {
        TraceConfig { on: 1, generation: 1, interval_ns: 1_000_000_000 / rate, ..TraceConfig::default() }
    }

    #[test]
    fn trace_limiter_lets_a_burst_through_then_one_record_per_interval() {
        let config = trace_config(10);
        let mut state = TraceState::default();
        let admitted = (0..25).filter(|_| state.admit(&config, 5_000_000_000)).count();
        assert_eq!((admitted, state.suppressed), (10, 15), "a burst of one second's worth");
        assert!(!state.admit(&config, 5_099_000_000), "99 ms later: no credit yet");
        assert!(state.admit(&config, 5_100_000_000), "100 ms later: one record");
        assert!(!state.admit(&config, 5_100_000_000));
        // A long pause refills one burst, not more.
        let admitted = (0..25).filter(|_| state.admit(&config, 100_000_000_000)).count();
        assert_eq!(admitted, 10);
        assert_eq!(state.suppressed, 15 + 1 + 1 + 15);
    }

    #[test]
    fn trace_limiter_starts_afresh_with_new_settings() {
        let mut config = trace_config(2);
        let mut state = TraceState::default();
        assert_eq!((0..5).filter(|_| state.admit(&config, 1_000)).count(), 2);
        config.generation = 2;
        config.interval_ns = 1_000_000_000 / 4;
        assert_eq!((0..5).filter(|_| state.admit(&config, 2_000)).count(), 4, "a full burst at the new rate");
        config.generation = 3;
        config.interval_ns = 0;
        let admitted = (0..5000).filter(|_| state.admit(&config, 3_000)).count();
        assert_eq!(admitted, TRACE_MAX_RATE as usize, "no entry lifts the hard limit");
    }

    #[test]
    fn trace_records_round_trip_through_their_bytes() {
        let mut r = TraceRecord::default();
        // Every byte a distinct value, so a field read from the wrong offset shows.
        for (i, b) in [&mut r.from, &mut r.to, &mut r.client, &mut r.backend].into_iter().flatten().enumerate() {
            *b = i as u8 + 1;
        }
        r.from_port = [65, 66];
        r.to_port = [67, 68];
        r.client_port = [69, 70];
        r.service_port = [71, 72];
        r.backend_port = [73, 74];
        r.nat_port = [75, 76];
        r.ifindex = 0x4d4e_4f50;
        (r.reason, r.action, r.protocol, r.tcp_flags, r.family) = (81, 82, 83, 84, TRACE_IPV6);
        assert_eq!(r.as_bytes()[64], 65, "the ports follow the four addresses");
        assert_eq!(TraceRecord::from_bytes(r.as_bytes()), Some(r));
        assert_eq!(TraceRecord::from_bytes(&r.as_bytes()[..87]), None, "a short record is refused");
    }

    #[test]
    fn trace_records_read_their_addresses_in_their_family() {
        let v6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x50];
        let r = TraceRecord { family: TRACE_IPV6, ..TraceRecord::default() };
        assert_eq!(r.address(&v6).to_string(), "2001:db8::250");
        let r = TraceRecord { family: TRACE_IPV4, ..TraceRecord::default() };
        assert_eq!(r.address(&TraceRecord::ipv4([10, 0, 0, 250])).to_string(), "10.0.0.250");
        assert_eq!(trace_halves(&TraceRecord::ipv4([10, 0, 0, 250])), trace_halves4([10, 0, 0, 250]));
    }

    #[test]
    fn trace_filter_matches_client_prefix_vip_port_and_protocol() {
        let any = TraceConfig { on: 1, ..TraceConfig::default() };
        let vip = trace_halves4([10, 0, 0, 250]);
        let https = 443u16.to_be_bytes();
        assert!(
            any.matches(TRACE_IPV4, trace_halves4([10, 0, 0, 5]), vip, [1, 187], PROTO_TCP),
            "zeros match anything"
        );
        let f = TraceConfig {
            client: [trace_halves4([10, 0, 1, 0]).0, 0],
            client_mask: [trace_halves4([255, 255, 255, 0]).0, 0],
            vip: [vip.0, vip.1],
            port: https,
            protocol: PROTO_TCP,
            family: TRACE_IPV4,
            ..any
        };
        let client = trace_halves4([10, 0, 1, 77]);
        assert!(f.matches(TRACE_IPV4, client, vip, https, PROTO_TCP));
        assert!(!f.matches(TRACE_IPV4, trace_halves4([10, 0, 2, 77]), vip, https, PROTO_TCP), "outside the prefix");
        assert!(!f.matches(TRACE_IPV4, client, trace_halves4([10, 0, 0, 251]), https, PROTO_TCP), "other VIP");
        assert!(!f.matches(TRACE_IPV4, client, vip, 80u16.to_be_bytes(), PROTO_TCP), "other port");
        assert!(!f.matches(TRACE_IPV4, client, vip, https, PROTO_UDP), "other protocol");
        assert!(!f.matches(TRACE_IPV6, client, vip, https, PROTO_TCP), "other family");
    }

    #[test]
    fn trace_filter_matches_ipv6_prefixes_and_keeps_families_apart() {
        let v6 = |a: [u16; 8]| {
            let mut b = [0u8; 16];
            for (i, w) in a.iter().enumerate() {
                b[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
            }
            trace_halves(&b)
        };
        let (prefix, mask) = (v6([0x2001, 0xdb8, 0, 7, 0, 0, 0, 0]), v6([0xffff, 0xffff, 0xffff, 0xffff, 0, 0, 0, 0]));
        let vip = v6([0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250]);
        let f = TraceConfig {
            on: 1,
            client: [prefix.0, prefix.1],
            client_mask: [mask.0, mask.1],
            family: TRACE_IPV6,
            ..TraceConfig::default()
        };
        let inside = v6([0x2001, 0xdb8, 0, 7, 1, 2, 3, 4]);
        assert!(f.matches(TRACE_IPV6, inside, vip, [0, 80], PROTO_TCP), "inside 2001:db8:0:7::/64");
        assert!(!f.matches(TRACE_IPV6, v6([0x2001, 0xdb8, 0, 8, 1, 2, 3, 4]), vip, [0, 80], PROTO_TCP));
        // A /120: the last byte is free, the one before is not.
        let f120 = TraceConfig { client: [inside.0, inside.1 & !0xff], client_mask: [u64::MAX, !0xff], ..f };
        assert!(f120.matches(TRACE_IPV6, (inside.0, inside.1 | 0x7f), vip, [0, 80], PROTO_TCP));
        assert!(!f120.matches(TRACE_IPV6, (inside.0, inside.1 ^ 0x100), vip, [0, 80], PROTO_TCP));
        let vip_only = TraceConfig { on: 1, vip: [vip.0, vip.1], family: TRACE_IPV6, ..TraceConfig::default() };
        assert!(vip_only.matches(TRACE_IPV6, inside, vip, [0, 80], PROTO_TCP));
        assert!(!vip_only.matches(TRACE_IPV6, inside, (vip.0, vip.1 + 1), [0, 80], PROTO_TCP), "other VIP");
        // An IPv4 filter that takes every IPv4 client (0.0.0.0/0) takes no IPv6 frame, and the other way round.
        let all4 = TraceConfig { on: 1, family: TRACE_IPV4, ..TraceConfig::default() };
        assert!(!all4.matches(TRACE_IPV6, inside, vip, [0, 80], PROTO_TCP));
        assert!(all4.matches(TRACE_IPV4, trace_halves4([10, 0, 0, 5]), trace_halves4([10, 0, 0, 250]), [0, 80], 6));
        assert!(!f.matches(TRACE_IPV4, trace_halves4([10, 0, 0, 5]), trace_halves4([10, 0, 0, 250]), [0, 80], 6));
    }

    #[test]
    fn ipv6_halves_round_trip_and_the_ipv6_flow_hash_sees_every_word() {
        let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x02, 0x50];
        assert_eq!(ipv6_halves(&a), (0x2001_0db8_0102_0304, 0x0506_0708_090a_0250));
        assert_eq!(ipv6_from_halves(ipv6_halves(&a)), a);
        let hash = |c: &[u8; 16]| flow_hash6(c, [0x9c, 0x40], [0, 80], PROTO_TCP, 7);
        for i in 0..16 {
            let mut other = a;
            other[i] ^= 1;
            assert_ne!(hash(&a), hash(&other), "byte {i} of the client address");
        }
        assert_ne!(flow_hash6(&a, [0x9c, 0x40], [0, 80], PROTO_TCP, 8), hash(&a), "the seed");
        assert_ne!(group_seed6(a, 51), group_seed6(a, 52), "the VRID");
        // The word-wise form the XDP program uses, pinned to a value computed by hand from the byte-wise one.
        let mut h = 7u32;
        for w in a.chunks(4) {
            h = mix(h, u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        }
        h = mix(h, (0x9c40 << 16) | 80);
        h = mix(h, u32::from(PROTO_TCP));
        assert_eq!(hash(&a), fmix(h ^ 24));
    }

    #[test]
    fn ipv6_slots_tell_apart_addresses_differing_in_one_word() {
        let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x50];
        let slot = |x: &[u8; 16]| vip6_fold(ipv6_halves(x));
        assert_eq!(slot(&a), 0x2001 ^ 0x0db8 ^ 0x0250);
        for i in 0..16 {
            let mut other = a;
            other[i] ^= 0x11;
            assert_ne!(slot(&a), slot(&other), "byte {i}");
        }
        let key = ServiceKey6::new(a, 80u16.to_be_bytes(), PROTO_TCP);
        let udp = ServiceKey6::new(a, 80u16.to_be_bytes(), PROTO_UDP);
        let fold = |k: &ServiceKey6| listener6_slot(ipv6_halves(&k.vip), k.port, k.protocol);
        assert_eq!(fold(&key), 80 ^ slot(&a));
        assert_eq!(fold(&udp), 65536 | (80 ^ slot(&a)));
        assert!(fold(&udp) < LISTENER_SLOT_COUNT && slot(&a) < VIP_SLOT_COUNT);
        let entry = Listener6::new(&key, ServiceValue::default());
        assert_eq!((entry.vip, entry.port, entry.protocol), ([0x2001_0db8_0000_0000, 0x0250], key.port, PROTO_TCP));
        assert_eq!(Vip6Entry::new(&a, VipValue::default()).address, [0x2001_0db8_0000_0000, 0x0250]);
    }

    #[test]
    fn ipv6_martian_sources() {
        let vip: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x50];
        let mut client = vip;
        client[15] = 0x10;
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        let mut link_local = [0u8; 16];
        link_local[..2].copy_from_slice(&[0xfe, 0x80]);
        link_local[15] = 7;
        let mut multicast = [0u8; 16];
        multicast[..2].copy_from_slice(&[0xff, 0x02]);
        multicast[15] = 1;
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        for (source, martian) in [
            (client, false),
            (link_local, false),
            ([0; 16], true),
            (loopback, true),
            (multicast, true),
            (mapped, true),
            (vip, true),
        ] {
            assert_eq!(martian_source6(&source, &vip), martian, "{source:x?}");
        }
    }

    #[test]
    fn the_nodes_own_ipv6_addresses_are_local() {
        let own: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut last = own;
        last[15] = 9;
        let mut config = NodeConfig::default();
        for (i, slot) in config.local6.iter_mut().enumerate() {
            *slot = own;
            slot[14] = i as u8;
        }
        config.local6[LOCAL_ADDRESSES6 - 1] = last;
        assert!(config.is_local6(&own));
        assert!(config.is_local6(&last), "every slot is looked at");
        // The list ends at the first unused slot (the agent fills them from the first on).
        config.local6[1] = [0; 16];
        assert!(config.is_local6(&own));
        assert!(!config.is_local6(&last), "after an unused slot");
        let mut other = own;
        other[7] = 1; // differs in the high half only
        assert!(!config.is_local6(&other));
        other = own;
        other[15] = 2; // in the low half only
        assert!(!config.is_local6(&other));
    }

    #[test]
    fn solicited_node_group_keeps_the_last_24_bits() {
        let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        assert_eq!(solicited_node(a), [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0x34, 0x56, 0x78]);
    }

    #[test]
    fn reasons_are_listed_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn flow_hash_depends_on_every_input() {
        let base = flow_hash([10, 0, 0, 1], [0x12, 0x34], [0, 80], 6, 7);
        assert_ne!(base, flow_hash([10, 0, 0, 2], [0x12, 0x34], [0, 80], 6, 7));
        assert_ne!(base, flow_hash([10, 0, 0, 1], [0x12, 0x35], [0, 80], 6, 7));
        assert_ne!(base, flow_hash([10, 0, 0, 1], [0x12, 0x34], [0, 81], 6, 7));
        assert_ne!(base, flow_hash([10, 0, 0, 1], [0x12, 0x34], [0, 80], 17, 7));
        assert_ne!(base, flow_hash([10, 0, 0, 1], [0x12, 0x34], [0, 80], 6, 8));
    }

    #[test]
    fn the_socket_balancer_rewrites_only_in_the_nodes_own_namespace() {
        assert!(socket_lb_applies(4099, 4099));
        assert!(!socket_lb_applies(4098, 4099), "another namespace (a container, another lab node)");
        assert!(!socket_lb_applies(0, 0), "no node cookie known: nothing is rewritten");
        assert!(!socket_lb_applies(4099, 0));
    }

    #[test]
    fn a_local_backend_gets_its_weight_out_of_the_total() {
        let share = LocalShare { backend: 7, weight: 1, total: 4, _pad: 0 };
        let picked = (0..4000u32).filter(|h| share.picks(socket_hash(u64::from(*h), 1))).count();
        assert!((850..=1150).contains(&picked), "{picked} of 4000, expected about a quarter");
        assert!(!LocalShare::default().picks(0), "no local backend");
        assert!(!LocalShare { total: 0, ..share }.picks(0), "nothing to divide");
        assert!(LocalShare { weight: 3, total: 3, ..share }.picks(12345), "the only usable backend");
    }

    #[test]
    fn consecutive_socket_cookies_spread_over_maglev_slots() {
        // Cookies are a counter: 1000 consecutive ones must land all over the table, not in a run of slots.
        let seed = group_seed([10, 0, 0, 100], 51);
        let slots: std::collections::BTreeSet<u32> = (5000u64..6000).map(|c| socket_hash(c, seed) % MAGLEV_M).collect();
        assert!(slots.len() > 990, "{} distinct slots of 1000", slots.len());
        let (low, high) = (slots.first().copied().unwrap_or(0), slots.last().copied().unwrap_or(0));
        assert!(low < MAGLEV_M / 10 && high > MAGLEV_M / 10 * 9, "{low}..{high}");
        assert_ne!(socket_hash(5000, seed), socket_hash(5000, seed ^ 1), "the seed matters");
        assert_ne!(socket_hash(1 << 32, seed), socket_hash(1, seed), "the high half matters");
    }

    #[test]
    fn group_seed_differs_per_vrid_and_vip() {
        assert_ne!(group_seed([10, 0, 0, 1], 1), group_seed([10, 0, 0, 1], 2));
        assert_ne!(group_seed([10, 0, 0, 1], 1), group_seed([10, 0, 0, 2], 1));
    }

    #[test]
    fn nat_ports_stay_in_range_and_candidates_differ() {
        let (mut lowest, mut highest) = (u16::MAX, 0);
        for i in 0..200_000u32 {
            let h = flow_hash([10, 0, (i >> 8) as u8, i as u8], [0x80, 0], [0, 80], 6, 7);
            for attempt in 0..NAT_PORT_TRIES {
                let p = u16::from_be_bytes(nat_port(h, attempt));
                lowest = lowest.min(p);
                highest = highest.max(p);
            }
        }
        assert_eq!((lowest, highest), (NAT_PORT_MIN, u16::MAX), "the whole range is used, nothing outside it");
        assert_eq!(nat_port(12345, 0), nat_port(12345, 0), "deterministic");
        let candidates: [[u8; 2]; NAT_PORT_TRIES as usize] = core::array::from_fn(|a| nat_port(12345, a as u32));
        for (i, a) in candidates.iter().enumerate() {
            assert!(!candidates[i + 1..].contains(a), "{candidates:?}");
        }
    }

    #[test]
    fn martian_sources() {
        let vip = [10, 0, 0, 250];
        for bad in [[0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 1], [239, 1, 1, 1], [240, 0, 0, 1], [255; 4], vip] {
            assert!(martian_source(bad, vip), "{bad:?}");
        }
        for good in [[10, 0, 0, 10], [1, 1, 1, 1], [192, 0, 2, 1], [223, 255, 255, 254], [10, 0, 0, 251]] {
            assert!(!martian_source(good, vip), "{good:?}");
        }
    }

    #[test]
    fn constructors_zero_the_padding() {
        let k = FlowKey::new([1, 2, 3, 4], [9, 9, 9, 9], [5, 6], [7, 8], 6);
        assert_eq!((k._pad, k._pad2), (0, 0));
        let n = NatKey::new([1, 2, 3, 4], [9, 9, 9, 9], [5, 6], [7, 8], 17);
        assert_eq!((n._pad, n._pad2), (0, 0));
        assert_eq!(ServiceKey::new([1, 2, 3, 4], [0, 80], 6)._pad, 0);
        assert_eq!(Endpoint::new([1, 2, 3, 4], [5, 6], 6)._pad, 0);
        assert_eq!(FlowValue::new(3, &Backend::default(), [4, 5], 6)._pad, [0; 4]);
    }

    #[test]
    fn flow_key_words_are_the_keys_bytes() {
        let k = FlowKey::new([1, 2, 3, 4], [9, 8, 7, 6], [5, 6], [7, 8], PROTO_UDP);
        assert_eq!(
            k.words(),
            [u64::from_ne_bytes([1, 2, 3, 4, 9, 8, 7, 6]), u64::from_ne_bytes([5, 6, 7, 8, 17, 0, 0, 0])]
        );
    }

    #[test]
    fn flow_cache_slots_spread_flows_of_one_client() {
        let mut used = [false; FLOW_CACHE_SLOTS as usize];
        for port in 0..1024u16 {
            let k = FlowKey::new([10, 0, 0, 1], [10, 0, 0, 250], port.to_be_bytes(), [0, 80], PROTO_TCP);
            let slot = flow_cache_slot(&k.words());
            assert!(slot < FLOW_CACHE_SLOTS);
            used[slot as usize] = true;
        }
        // 1024 ports over 4096 slots: a fair hash leaves few collisions (about 115 expected).
        assert!(used.iter().filter(|u| **u).count() > 850);
    }

    #[test]
    fn nat_value_new_puts_each_field_in_its_place() {
        let built =
            NatValue::new([10, 0, 0, 7], [0xc0, 0x01], [0x01, 0xbb], NAT_FIN_CLIENT | NAT_RST, 0x0102_0304_0506_0708);
        let expected = NatValue {
            client: [10, 0, 0, 7],
            client_port: [0xc0, 0x01],
            service_port: [0x01, 0xbb],
            flags: NAT_FIN_CLIENT | NAT_RST,
            last_seen_ns: 0x0102_0304_0506_0708,
            ..NatValue::default()
        };
        assert_eq!(built, expected);
        // The padding too (`PartialEq` compares it, but say so).
        assert_eq!((built._pad, built._pad2), ([0; 3], 0));
        let ones = NatValue::new([0xff; 4], [0xff; 2], [0xff; 2], 0xff, u64::MAX);
        assert_eq!((ones.next_hop_mac, ones.egress_mac, ones.egress_ifindex, ones.route_ns), ([0; 6], [0; 6], 0, 0));
    }

    #[test]
    fn ipv6_keys_from_halves_equal_the_field_by_field_ones() {
        let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let b: [u8; 16] = core::array::from_fn(|i| 0xf0 - i as u8);
        assert_eq!(
            FlowKey6::from_halves(ipv6_halves(&a), ipv6_halves(&b), [1, 2], [3, 4], PROTO_TCP),
            FlowKey6::new(a, b, [1, 2], [3, 4], PROTO_TCP)
        );
        let words = FlowKey6::words_of(ipv6_halves(&a), ipv6_halves(&b), [1, 2], [3, 4], PROTO_TCP);
        assert_eq!(*FlowKey6::in_words(&words), FlowKey6::new(a, b, [1, 2], [3, 4], PROTO_TCP));
        assert_eq!(
            NatKey6::from_halves(ipv6_halves(&a), ipv6_halves(&b), [1, 2], [3, 4], PROTO_UDP),
            NatKey6::new(a, b, [1, 2], [3, 4], PROTO_UDP)
        );
        let holder = Backend { port: [0x1f, 0x90], ..Backend::default() };
        let value = FlowValue6::nat(0x0102_0304, &holder, ipv6_halves(&a), [0xc3, 0x50], 0x0506_0708_090a);
        assert_eq!(
            value,
            FlowValue6 {
                backend: 0x0102_0304,
                backend_port: [0x1f, 0x90],
                nat_port: [0xc3, 0x50],
                backend_address: a,
                checked_ns: 0x0506_0708_090a
            }
        );
        assert_eq!(value.address_halves(), ipv6_halves(&a));
    }

    #[test]
    fn flow_value6_keeps_pin_compares_every_word_of_the_address() {
        let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let holder = Backend { port: [0x1f, 0x90], healthy: 1, service: 3, ..Backend::default() };
        let pinned = FlowValue6::new(7, &holder, a);
        assert!(pinned.keeps_pin(&holder, ipv6_halves(&a), 3));
        assert!(!pinned.keeps_pin(&holder, ipv6_halves(&a), 4), "another service");
        assert!(!pinned.keeps_pin(&Backend { port: [0x1f, 0x91], ..holder }, ipv6_halves(&a), 3), "another port");
        assert!(!pinned.keeps_pin(&Backend { healthy: 0, ..holder }, ipv6_halves(&a), 3), "down");
        for i in 0..16 {
            let mut other = a;
            other[i] ^= 1;
            assert!(!pinned.keeps_pin(&holder, ipv6_halves(&other), 3), "byte {i} of the address");
        }
    }

    #[test]
    fn nat_value6_new_puts_each_field_in_its_place() {
        let client: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let built = NatValue6::new(
            ipv6_halves(&client),
            [0xc0, 0x01],
            [0x01, 0xbb],
            NAT_FIN_CLIENT | NAT_RST,
            0x0102_0304_0506_0708,
        );
        let expected = NatValue6 {
            client,
            client_port: [0xc0, 0x01],
            service_port: [0x01, 0xbb],
            flags: NAT_FIN_CLIENT | NAT_RST,
            last_seen_ns: 0x0102_0304_0506_0708,
            ..NatValue6::default()
        };
        assert_eq!(built, expected);
        let ones = NatValue6::new((u64::MAX, u64::MAX), [0xff; 2], [0xff; 2], 0xff, u64::MAX);
        assert_eq!((ones.next_hop_mac, ones.egress_mac, ones.egress_ifindex, ones.route_ns), ([0; 6], [0; 6], 0, 0));
        assert_eq!(ones._pad, [0; 3]);
    }

    #[test]
    fn nat_source_port_bits_cover_both_protocols() {
        assert_eq!(nat_source_port_bit(PROTO_TCP, 0), Some((0, 0)));
        assert_eq!(nat_source_port_bit(PROTO_TCP, 8080), Some((126, 16)));
        assert_eq!(nat_source_port_bit(PROTO_UDP, 65535), Some((NAT_SOURCE_PORT_WORDS - 1, 63)));
        assert_eq!(nat_source_port_bit(1, 80), None);
    }

    #[test]
    fn maglev_tables_do_not_overlap() {
        assert_eq!(MAGLEV_CHUNKS, 1025);
        assert_eq!(maglev_position(0, 0, MAGLEV_M - 1), (1024, 0));
        assert_eq!(maglev_position(0, 1, 0), (MAGLEV_CHUNKS, 0));
        assert_eq!(maglev_position(1, 0, 65), (2 * MAGLEV_CHUNKS + 1, 1));
        let (last, _) = maglev_position(MAX_SERVICES - 1, 1, MAGLEV_M - 1);
        assert_eq!(last + 1, 2 * MAX_SERVICES * MAGLEV_CHUNKS);
    }

    #[test]
    fn every_address_of_a_slash_16_has_its_own_slot() {
        let mut seen = [0u64; VIP_SLOT_COUNT as usize / 64];
        for host in 0..=u16::MAX {
            let [c, d] = host.to_be_bytes();
            let slot = vip_fold([10, 77, c, d]);
            assert!(slot < VIP_SLOT_COUNT);
            let (word, bit) = (slot as usize / 64, slot % 64);
            assert_eq!(seen[word] & (1 << bit), 0, "10.77.{c}.{d} shares a slot");
            seen[word] |= 1 << bit;
        }
    }

    #[test]
    fn routers_of_one_instance_differ_by_family_and_fit_the_heartbeat() {
        assert_eq!(router_slot(0, FAMILY_IPV4), 0);
        assert_eq!(router_slot(0, FAMILY_IPV6), 1);
        assert_eq!(router_slot(5, FAMILY_IPV4), 10);
        assert_eq!(router_slot(MAX_INSTANCES - 1, FAMILY_IPV6), MAX_ROUTERS - 1);
        assert!(MAX_ROUTERS.is_power_of_two(), "the program masks router indices");
        let mut beat = Heartbeat::default();
        beat.active[3] = 1;
        assert!(beat.is_active(3));
        assert!(!beat.is_active(2));
        assert!(!beat.is_active(MAX_ROUTERS + 3), "out of range is inactive, not a masked alias");
    }

    #[test]
    fn router_counters_do_not_overlap() {
        assert_eq!(router_counter(0, REASON_COUNT - 1) + 1, router_counter(1, 0));
        assert_eq!(router_counter(MAX_ROUTERS - 1, REASON_COUNT - 1) + 1, ROUTER_COUNTER_SLOTS);
    }
}
