//! Each CPU's flow cache (`FLOW_CACHE`): a direct-mapped array in front of the connection table (`CONNTRACK`) for
//! the IPv4 DSR path's pinned packets and the IPv4 NAT path's established ones; `FLOW_CACHE6` in front of
//! `CONNTRACK6` for the IPv6 DSR path's pinned packets and the IPv6 NAT path's established ones (the `*6`
//! functions, by the same rules; an IPv6 flow's key is the five words of `FlowKey6::words_of`). A lookup in a hash
//! map is a call (`__htab_map_lookup_elem`, then `memcmp`), and every return is expensive on kernels that mitigate
//! return-address speculation; an array lookup the verifier inlines. The connection table stays the truth (table
//! scans, `ForgetFlows` and the ICMP paths read it; the DSR and NAT paths whenever the cache cannot answer); a
//! cache entry is a copy of one of its entries, served only while:
//! - its key is the flow's (compared as words: flows that share a slot evict each other);
//! - it was written under the current `NodeConfig::flow_generation`, which the agent bumps after it deletes
//!   connection-table entries, so a deleted pin is never served afterwards (the generation is read before the
//!   connection table is, so an entry copied from a table about to lose it carries the old generation);
//! - it is younger than `FLOW_CACHE_REFRESH_NS` (100 ms of the frame's `maps::Clock`): past that, the next packet
//!   looks the flow up in the connection table, which marks the LRU entry as used, and rewrites the cache entry
//!   from it (or finds it gone: a miss, the flow is picked afresh). A busy flow thus references its LRU entry at
//!   least every 100 ms on each CPU it arrives on: its entry is evicted only if the table turns over within 100 ms
//!   (650000 new flows a second into 65536 entries), when any flow idle that long would be too. The age also
//!   bounds how long a CPU serves a pin that a SYN on another CPU replaced (each CPU writes only its own copy; RSS
//!   keeps a flow's packets on one CPU, so this takes a flow whose packets change CPU).
//!
//! Every pin the DSR path makes goes to the connection table and this CPU's cache together (`pin`); a cached pin is
//! still checked against its backend slot (`Backend::keeps_pin`), and one that fails it is looked up in the
//! connection table before the flow is picked afresh. The NAT paths (`nat.rs`; `nat6.rs`, whose cached case
//! `xvip_xdp` serves before the tail call into `xvip_nat6`) serve a plain packet of an established flow from the
//! cache while the copy says its `NAT`/`NAT6` entry was confirmed less than a second ago
//! (`nat_state::confirmed`) and its backend slot is still usable, and write the cache (`put`, `put6`) with every
//! write or confirmation of the flow's connection-table entry. A spoofed flood only takes cache slots from other
//! flows, whose next packets read the connection table again.
use lb_common::{FLOW_CACHE_REFRESH_NS, FlowKey, FlowKey6, FlowValue, FlowValue6, NodeConfig, flow_cache_slot};

use crate::maps::{CONNTRACK, CONNTRACK6, FLOW_CACHE, FLOW_CACHE6};

/// One slot of `FLOW_CACHE`: 56 bytes.
#[repr(C)]
pub struct CachedFlow {
    key: [u64; 2],
    value: FlowValue,
    /// When (`maps::Clock`) the value was read from, or written to, `CONNTRACK`.
    stamp: u64,
    /// [`tag`] of the generation it was written under; 0: never written.
    tag: u64,
}

/// The agent's flow generation, read once per packet before any connection-table access (see the module doc).
#[inline(always)]
pub fn generation(config: &NodeConfig) -> u64 {
    // SAFETY: reading a field of a map value; volatile so that the read stays before the lookups.
    let generation = unsafe { core::ptr::read_volatile(&config.flow_generation) };
    tag(generation)
}

/// What an entry written under `generation` holds: never 0, the value of an unwritten slot.
#[inline(always)]
fn tag(generation: u16) -> u64 {
    u64::from(generation) | 1 << 16
}

/// This CPU's cached pin of `flow`, if it may be served without the connection table.
#[inline(always)]
pub fn get(flow: &FlowKey, generation: u64, now: u64) -> Option<&'static FlowValue> {
    let key = flow.words();
    let slot = FLOW_CACHE.get(flow_cache_slot(&key))?;
    let fresh = now.wrapping_sub(slot.stamp) < FLOW_CACHE_REFRESH_NS;
    (slot.key == key && slot.tag == generation && fresh).then_some(&slot.value)
}

/// `flow`'s pin in `CONNTRACK` (a lookup, which marks its LRU entry as used), copied into this CPU's cache.
#[inline(always)]
pub fn refresh(flow: &FlowKey, generation: u64, now: u64) -> Option<&'static FlowValue> {
    // SAFETY: read-only use of the value (the LRU may reuse it for another flow meanwhile: a pin read then is
    // still checked against its backend slot).
    let value = unsafe { CONNTRACK.get(flow) }?;
    put(flow, value, generation, now);
    Some(value)
}

/// Pins `flow` to `value`: in `CONNTRACK`, and in this CPU's cache if the table took it.
#[inline(always)]
pub fn pin(flow: &FlowKey, value: &FlowValue, generation: u64, now: u64) {
    if CONNTRACK.insert(flow, value, 0).is_ok() {
        put(flow, value, generation, now);
    }
}

/// Copies `value`, which `flow`'s `CONNTRACK` entry holds now (just read or written), into this CPU's cache.
#[inline(always)]
pub fn put(flow: &FlowKey, value: &FlowValue, generation: u64, now: u64) {
    let key = flow.words();
    if let Some(slot) = FLOW_CACHE.get_ptr_mut(flow_cache_slot(&key)) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        let slot = unsafe { &mut *slot };
        slot.key = key;
        slot.value = *value;
        slot.stamp = now;
        slot.tag = generation;
    }
}

/// One slot of `FLOW_CACHE6`: 88 bytes ([`CachedFlow`] for an IPv6 flow).
#[repr(C)]
pub struct CachedFlow6 {
    /// The flow's key as `FlowKey6::words_of`.
    key: [u64; 5],
    value: FlowValue6,
    stamp: u64,
    tag: u64,
}

/// [`get`] for an IPv6 flow whose key is `key` (`FlowKey6::words_of`).
#[inline(always)]
pub fn get6(key: &[u64; 5], generation: u64, now: u64) -> Option<&'static FlowValue6> {
    let slot = FLOW_CACHE6.get(flow_cache_slot(key))?;
    let fresh = now.wrapping_sub(slot.stamp) < FLOW_CACHE_REFRESH_NS;
    (slot.key == *key && slot.tag == generation && fresh).then_some(&slot.value)
}

/// [`refresh`] for the IPv6 flow `flow`, whose words are `key`.
#[inline(always)]
pub fn refresh6(key: &[u64; 5], flow: &FlowKey6, generation: u64, now: u64) -> Option<&'static FlowValue6> {
    // SAFETY: read-only use of the value.
    let value = unsafe { CONNTRACK6.get(flow) }?;
    put6(key, value, generation, now);
    Some(value)
}

/// [`pin`] for the IPv6 flow `flow`, whose words are `key`.
#[inline(always)]
pub fn pin6(key: &[u64; 5], flow: &FlowKey6, value: &FlowValue6, generation: u64, now: u64) {
    if CONNTRACK6.insert(flow, value, 0).is_ok() {
        put6(key, value, generation, now);
    }
}

/// [`put`] for the IPv6 flow whose words are `key`.
#[inline(always)]
pub fn put6(key: &[u64; 5], value: &FlowValue6, generation: u64, now: u64) {
    if let Some(slot) = FLOW_CACHE6.get_ptr_mut(flow_cache_slot(key)) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        let slot = unsafe { &mut *slot };
        slot.key = *key;
        slot.value = *value;
        slot.stamp = now;
        slot.tag = generation;
    }
}
