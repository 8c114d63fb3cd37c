//! Every map of the data plane. The agent (lb-user `dataplane` module) is the only writer of all but the
//! counters and the connection table, which this program writes.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, DEFAULT_CONNTRACK_ENTRIES, FlowKey, FlowValue, MAGLEV_M, MAX_BACKENDS, MAX_SERVICES, NodeConfig,
    REASON_COUNT, ServiceKey, ServiceValue, Traffic,
};

#[map]
pub static CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Two Maglev tables per service, one after the other (see `lb_common::maglev_base`). The agent shrinks this
/// to what the configured services need at load time.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(2 * MAX_SERVICES * MAGLEV_M, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
