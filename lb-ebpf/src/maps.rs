//! Every map of the data plane. The agent (lb-user `dataplane` module) is the only writer of all but the
//! counters, the connection table and the NAT table, which this program writes.
use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    Backend, DEFAULT_CONNTRACK_ENTRIES, DEFAULT_NAT_CLOSED_GRACE_NS, DEFAULT_NAT_EMBRYONIC_TIMEOUT_NS,
    DEFAULT_NAT_ESTABLISHED_TIMEOUT_NS, DEFAULT_NAT_UDP_TIMEOUT_NS, Endpoint, Endpoint6, FLOW_CACHE_SLOTS, FlowKey,
    FlowKey6, FlowValue, FlowValue6, Heartbeat, LISTENER_SLOT_COUNT, LISTENER_TABLE_ELEMENTS, Listener, Listener6,
    LocalShare, MAGLEV_CHUNKS, MAX_BACKENDS, MAX_LISTENERS, MAX_SERVICES, MAX_VIPS, MaglevChunk, NAT_SOURCE_PORT_WORDS,
    NatKey, NatKey6, NatValue, NatValue6, NodeConfig, REASON_COUNT, ROUTER_COUNTER_SLOTS, SOCKET_PEERS_ENTRIES,
    ServiceKey, ServiceKey6, ServiceValue, SocketPeer, SocketPeer6, SocketPeerKey, SocketPeerKey6, TraceConfig,
    TraceRecord, TraceState, Traffic, VIP_SLOT_COUNT, VIP_TABLE_ELEMENTS, Vip6Entry, VipEntry, VipValue,
};

use crate::flow_cache::{CachedFlow, CachedFlow6};

#[map]
pub static CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// The agent's dead-man switch and every router's active flag (see `lb_common::Heartbeat`).
#[map]
pub static HEARTBEAT: Array<Heartbeat> = Array::with_max_entries(1, 0);

/// Every VIP of every instance: its router, hash seed and interface. Read only for VIPs that share a `VIP_SLOTS`
/// slot. Without preallocation, so an update swaps a whole element in and frees the old one only after every
/// reader is done.
#[map]
pub static VIPS: HashMap<[u8; 4], VipValue> = HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// Every IPv6 VIP of every instance -> its `VIP6_TABLE` element. Read only for IPv6 VIPs that share a `VIP6_SLOTS`
/// slot.
#[map]
pub static VIPS6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// `lb_common::vip6_fold` of an IPv6 address -> the one IPv6 VIP folding there (`VIP6_TABLE` index + 1), none, or
/// several (`SLOT_SHARED`: `VIPS6` names the element); as `VIP_SLOTS`. Written by the agent.
#[map]
pub static VIP6_SLOTS: Array<u16> = Array::with_max_entries(VIP_SLOT_COUNT, 0);

/// The IPv6 VIPs (address, router, interface, ...) `VIP6_SLOTS` and `VIPS6` point at; written like `VIP_TABLE` (a
/// changed VIP goes to a free element, which the hash and the slot then name).
#[map]
pub static VIP6_TABLE: Array<Vip6Entry> = Array::with_max_entries(VIP_TABLE_ELEMENTS, 0);

/// Folded destination address (`lb_common::vip_fold`) -> the one VIP folding there (`VIP_TABLE` index + 1), none
/// (`SLOT_EMPTY`), or several (`SLOT_SHARED`: `VIPS` decides). Written by the agent.
#[map]
pub static VIP_SLOTS: Array<u16> = Array::with_max_entries(VIP_SLOT_COUNT, 0);

/// The VIPs `VIP_SLOTS` points at. An element is never rewritten while a slot points at it: the agent writes a
/// changed VIP to a free element and then moves the slot, so a reader sees the old entry or the new one, whole.
#[map]
pub static VIP_TABLE: Array<VipEntry> = Array::with_max_entries(VIP_TABLE_ELEMENTS, 0);

/// (VIP, port, protocol) -> service. Read only for listeners that share a `LISTENER_SLOTS` slot. Without
/// preallocation, for the same reason as `VIPS`: a table switch is one element swap.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_LISTENERS, BPF_F_NO_PREALLOC);

/// `lb_common::listener_slot` -> the one listener folding there (`LISTENER_TABLE` index + 1), none (`SLOT_EMPTY`),
/// or several (`SLOT_SHARED`: `SERVICES` decides). Written by the agent.
#[map]
pub static LISTENER_SLOTS: Array<u16> = Array::with_max_entries(LISTENER_SLOT_COUNT, 0);

/// The listeners `LISTENER_SLOTS` points at; written like `VIP_TABLE` (a changed value goes to a free element).
#[map]
pub static LISTENER_TABLE: Array<Listener> = Array::with_max_entries(LISTENER_TABLE_ELEMENTS, 0);

/// Two Maglev tables per service, in chunks of 64 slots (see `lb_common::maglev_position`). The agent shrinks this
/// to what the configured services need at load time.
#[map]
pub static MAGLEV: Array<MaglevChunk> = Array::with_max_entries(2 * MAX_SERVICES * MAGLEV_CHUNKS, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// (IPv6 VIP, port, protocol) -> service. Read only for IPv6 listeners that share a `LISTENER6_SLOTS` slot; without
/// preallocation, as `SERVICES`.
#[map]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue> = HashMap::with_max_entries(MAX_LISTENERS, BPF_F_NO_PREALLOC);

/// `lb_common::listener6_slot` -> the one IPv6 listener folding there (`LISTENER6_TABLE` index + 1), none, or
/// several (`SLOT_SHARED`: `SERVICES6` decides); as `LISTENER_SLOTS`. Written by the agent.
#[map]
pub static LISTENER6_SLOTS: Array<u16> = Array::with_max_entries(LISTENER_SLOT_COUNT, 0);

/// The IPv6 listeners `LISTENER6_SLOTS` points at; written like `LISTENER_TABLE`.
#[map]
pub static LISTENER6_TABLE: Array<Listener6> = Array::with_max_entries(LISTENER_TABLE_ELEMENTS, 0);

/// The IPv6 address of the backend in each `BACKENDS` slot that holds an IPv6 backend (the slot's `address` is
/// then all zero). Written by the agent before the slot.
#[map]
pub static BACKEND_ADDRESSES6: Array<[u8; 16]> = Array::with_max_entries(MAX_BACKENDS, 0);

/// IPv6 client flow -> backend (DSR). Sized from `conntrack_entries` by the agent, like `CONNTRACK`.
#[map]
pub static CONNTRACK6: LruHashMap<FlowKey6, FlowValue6> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);

/// Client flow -> backend (and NAT source port). Sized from `conntrack_entries` by the agent. A global (not
/// per-CPU) LRU: the packets of one flow may arrive on any CPU.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);

/// Each CPU's cache of `CONNTRACK` entries for the DSR path (`flow_cache.rs`), indexed by
/// `lb_common::flow_cache_slot`. Only this program reads or writes it.
#[map]
pub static FLOW_CACHE: PerCpuArray<CachedFlow> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Each CPU's cache of `CONNTRACK6` entries for the IPv6 DSR path (`flow_cache.rs`), as `FLOW_CACHE`.
#[map]
pub static FLOW_CACHE6: PerCpuArray<CachedFlow6> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Reverse NAT: (backend, backend port, NAT port, protocol) -> client flow. Sized from `conntrack_entries` by the
/// agent. Global LRU: a flow's two directions may be handled on different CPUs and must see one entry.
#[map]
pub static NAT: LruHashMap<NatKey, NatValue> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);

/// Reverse NAT of IPv6 flows: (backend, VIP, backend port, NAT port, protocol) -> client flow (`nat6.rs`). Sized
/// like `CONNTRACK6` by the agent.
#[map]
pub static NAT6: LruHashMap<NatKey6, NatValue6> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);

/// IPv6 backend endpoints of NAT services (value: how many NAT services use the endpoint). Written by the agent;
/// their ports are in `NAT_SOURCE_PORTS` too.
#[map]
pub static NAT_BACKENDS6: HashMap<Endpoint6, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// The programs `forward6` tail-calls: `xvip_nat6` (IPv6 NAT's client path, `NAT6_SLOT`) and `xvip_nat6_icmp`
/// (ICMPv6 errors about NAT flows, `NAT6_ICMP_SLOT`). Written by the agent at load.
#[map]
pub static NAT6_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Backend endpoints of NAT services (value: how many NAT services use the endpoint). Written by the agent.
#[map]
pub static NAT_BACKENDS: HashMap<Endpoint, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// One bit per (protocol, port) on which some NAT backend serves (`lb_common::nat_source_port_bit`). Only packets
/// from such a source port pay the `NAT_BACKENDS` hash lookup. Written by the agent.
#[map]
pub static NAT_SOURCE_PORTS: Array<u64> = Array::with_max_entries(NAT_SOURCE_PORT_WORDS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// The frames of each router's VIPs, by reason (`lb_common::router_counter`).
#[map]
pub static ROUTER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ROUTER_COUNTER_SLOTS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// The trace switch and filter (`xvip trace`), written by the agent only while a trace client is connected.
#[map]
pub static TRACE: Array<TraceConfig> = Array::with_max_entries(1, 0);

/// Each CPU's trace rate limiter and counters.
#[map]
pub static TRACE_STATE: PerCpuArray<TraceState> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's trace record under construction: the frame's headers as it arrived (`trace::start`, only while
/// tracing is on), completed after the decision (`trace::finish`). A map value rather than the stack, which the
/// program's paths need whole (IPv6 addresses take 64 bytes of a record).
#[map]
pub static TRACE_RECORD: PerCpuArray<TraceRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Each CPU's latest reading of the coarse clock and the jiffy it was taken in (see [`Clock`]). Only this program
/// reads or writes it.
#[map]
pub static CLOCK_READING: PerCpuArray<ClockReading> = PerCpuArray::with_max_entries(1, 0);

/// A reading of [`now_ns`] and the value of `jiffies` when it was taken.
#[repr(C)]
pub struct ClockReading {
    jiffy: u64,
    ns: u64,
}

/// A local client's socket and the backend `connect4` sent it to -> the VIP and port it asked for (what
/// `getpeername()` reports). LRU: a closed socket's entry ages out.
#[map]
pub static SOCKET_PEERS: LruHashMap<SocketPeerKey, SocketPeer> = LruHashMap::with_max_entries(SOCKET_PEERS_ENTRIES, 0);

/// `SOCKET_PEERS` for IPv6 sockets and backends (`connect6`, `sendmsg6`). Sized at load like `CONNTRACK6` (at most
/// `SOCKET_PEERS_ENTRIES`), so IPv4-only nodes do not pay for it.
#[map]
pub static SOCKET_PEERS6: LruHashMap<SocketPeerKey6, SocketPeer6> =
    LruHashMap::with_max_entries(SOCKET_PEERS_ENTRIES, 0);

/// Per service index: its backend on the node itself, which only the socket load balancer reaches (see
/// `lb_common::LocalShare`). Written by the agent.
#[map]
pub static SOCKET_LOCAL: Array<LocalShare> = Array::with_max_entries(MAX_SERVICES, 0);

// Load-time constants (`.rodata`), overridden by the agent's loader (`lb_common::names`). The verifier sees their
// values, so reading them costs nothing. `read_volatile` keeps the compiler from folding in the defaults.
#[unsafe(no_mangle)]
static NAT_UDP_TIMEOUT_NS: u64 = DEFAULT_NAT_UDP_TIMEOUT_NS;
#[unsafe(no_mangle)]
static NAT_CLOSED_GRACE_NS: u64 = DEFAULT_NAT_CLOSED_GRACE_NS;
#[unsafe(no_mangle)]
static NAT_EMBRYONIC_TIMEOUT_NS: u64 = DEFAULT_NAT_EMBRYONIC_TIMEOUT_NS;
#[unsafe(no_mangle)]
static NAT_ESTABLISHED_TIMEOUT_NS: u64 = DEFAULT_NAT_ESTABLISHED_TIMEOUT_NS;

#[unsafe(no_mangle)]
static NODE_NETNS_COOKIE: u64 = 0;

/// The agent's network namespace cookie: the only namespace whose connects the socket load balancer rewrites
/// (0 until the loader sets it: nothing is rewritten).
#[inline(always)]
pub fn node_netns_cookie() -> u64 {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&NODE_NETNS_COOKIE) }
}

/// Idle time after which a UDP translation is gone.
#[inline(always)]
pub fn udp_timeout_ns() -> u64 {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&NAT_UDP_TIMEOUT_NS) }
}

/// Time a TCP translation closed by both sides (or reset) stays reserved after its last packet.
#[inline(always)]
pub fn closed_grace_ns() -> u64 {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&NAT_CLOSED_GRACE_NS) }
}

/// Idle time after which an embryonic TCP translation (no answer from the backend but SYN/ACKs) may be reused.
#[inline(always)]
pub fn embryonic_timeout_ns() -> u64 {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&NAT_EMBRYONIC_TIMEOUT_NS) }
}

/// Idle time after which an established TCP translation may be reused.
#[inline(always)]
pub fn established_timeout_ns() -> u64 {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&NAT_ESTABLISHED_TIMEOUT_NS) }
}

/// The clock of every timestamp in the maps: CLOCK_MONOTONIC at jiffy resolution, cheaper than the precise one
/// and fine for timeouts of a second and more.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

/// A frame's time, [`now_ns`], read when first asked for, and at most once per jiffy on each CPU: the dead-man
/// switch and the NAT state share it. A helper call costs a return, and returns are dear on kernels that mitigate
/// return-address speculation; `bpf_jiffies64` is no call (the verifier turns it into a load of `jiffies`), and
/// the coarse clock only moves when a tick advances `jiffies`, so a CPU's reading stays current for the rest of
/// its jiffy. A frame that needs no time pays nothing.
pub struct Clock(core::cell::Cell<u64>);

impl Clock {
    #[inline(always)]
    pub const fn new() -> Self {
        Clock(core::cell::Cell::new(0))
    }

    #[inline(always)]
    pub fn now(&self) -> u64 {
        let read = self.0.get();
        if read != 0 {
            return read;
        }
        let read = this_jiffy_ns();
        self.0.set(read);
        read
    }
}

/// [`now_ns`] through this CPU's [`CLOCK_READING`].
#[inline(always)]
fn this_jiffy_ns() -> u64 {
    // SAFETY: plain helper call.
    let jiffy = unsafe { aya_ebpf::helpers::bpf_jiffies64() };
    let Some(reading) = CLOCK_READING.get_ptr_mut(0) else {
        return now_ns();
    };
    // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
    let reading = unsafe { &mut *reading };
    if reading.jiffy == jiffy && reading.ns != 0 {
        return reading.ns;
    }
    let ns = now_ns();
    // A tick advances `jiffies` just before the clock: a reading that has not moved yet is not kept for the new
    // jiffy (the next frame reads again), so no reading is more than a jiffy behind, as the clock itself.
    if ns != reading.ns {
        reading.jiffy = jiffy;
        reading.ns = ns;
    }
    ns
}
