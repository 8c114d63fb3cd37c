//! Which of the node's VIPs a frame is addressed to: the address's `VIP_SLOTS` slot, then the one `VIP_TABLE`
//! element it names (two array reads the verifier inlines); the `VIPS` hash only for VIPs sharing a slot. IPv6 VIPs
//! alike, in `VIP6_SLOTS`, `VIP6_TABLE` and `VIPS6`.
use lb_common::{
    LOCAL_ADDRESSES6, NodeConfig, SLOT_EMPTY, SLOT_SHARED, VipValue, ipv6_from_halves, martian_source,
    martian_source6_halves, vip_fold, vip6_fold,
};

use crate::{
    maps::{Clock, HEARTBEAT, VIP_SLOTS, VIP_TABLE, VIP6_SLOTS, VIP6_TABLE, VIPS, VIPS6},
    packet,
};

/// The router a frame belongs to when it is not addressed to any VIP (a VIP's router is `VipValue::router`):
/// counted node-wide only.
pub const NO_ROUTER: u32 = u32::MAX;

/// The VIP a frame is addressed to: its address and `VIPS` entry.
#[derive(Clone, Copy)]
pub struct Vip {
    pub address: [u8; 4],
    pub value: VipValue,
}

/// The entry of `address`, if it is one of our VIPs. Most frames are not for a VIP: they stop at an empty slot, or
/// at a slot whose one VIP is another address.
#[inline(always)]
pub fn lookup_vip(address: [u8; 4]) -> Option<Vip> {
    let slot = *VIP_SLOTS.get(vip_fold(address))?;
    if slot == SLOT_EMPTY {
        return None;
    }
    if slot != SLOT_SHARED {
        let entry = VIP_TABLE.get(u32::from(slot) - 1)?;
        return (entry.address == address).then_some(Vip { address, value: entry.value });
    }
    // SAFETY: copied out at once.
    let value = unsafe { VIPS.get(&address) }.copied()?;
    Some(Vip { address, value })
}

/// The entry of the IPv6 `address` (as [`lb_common::ipv6_halves`]), if it is one of our IPv6 VIPs: its
/// `VIP6_SLOTS` slot names its `VIP6_TABLE` element (as [`lookup_vip`]), or, for VIPs sharing a slot, the `VIPS6`
/// hash does; the element's address decides.
///
/// One kind of reference whichever way the element was found, so the verifier follows what comes after once; a
/// reference rather than a copy, since the XDP program's stack is close to its limit. The agent never rewrites an
/// element a slot or the hash names, and reuses a freed one only after every other free one.
#[inline(always)]
pub fn lookup_vip6(address: (u64, u64)) -> Option<&'static VipValue> {
    let slot = *VIP6_SLOTS.get(vip6_fold(address))?;
    let element = match slot {
        SLOT_EMPTY => return None,
        // SAFETY: copied out at once.
        SLOT_SHARED => unsafe { VIPS6.get(&ipv6_from_halves(address)) }.copied()?,
        one => u32::from(one) - 1,
    };
    let entry = VIP6_TABLE.get(element)?;
    (entry.address[0] == address.0 && entry.address[1] == address.1).then_some(&entry.value)
}

/// Whether the IPv6 `address` (as [`lb_common::ipv6_halves`]) is one of the node's own (`NodeConfig::is_local6`,
/// with the configuration's addresses read as words). Every packet to an IPv6 VIP asks, and a node has one or two
/// such addresses: the search ends at the first unused slot (the agent fills them from the first on).
#[inline(always)]
pub fn is_local6(config: &NodeConfig, address: (u64, u64)) -> bool {
    let mut i = 0;
    while i < LOCAL_ADDRESSES6 {
        // `config` is the `CONFIG` map's value, not a stack copy.
        let local = packet::halves(&config.local6[i]);
        if local == address {
            return true;
        }
        if local == (0, 0) {
            return false;
        }
        i += 1;
    }
    false
}

/// Whether this node may answer for the VIPs of `router`: the router is active *and* its agent is alive, i.e.
/// the heartbeat the agent writes with every advert is younger than its limit (a dead-man switch: an agent that
/// hangs stops advertising, its peers take over after their down interval, and by then this node has stopped
/// answering).
#[inline(always)]
pub fn may_answer(router: u32, clock: &Clock) -> bool {
    let Some(beat) = HEARTBEAT.get(0) else {
        return false;
    };
    if !beat.is_active(router) {
        return false;
    }
    if beat.max_age_ns == 0 {
        return true;
    }
    // The coarse clock (a jiffy behind at most, and far cheaper to read): a beat is judged up to one jiffy late,
    // against limits of several advert intervals.
    clock.now().saturating_sub(beat.last_ns) <= beat.max_age_ns
}

/// [`martian`] for an IPv6 `source` to the IPv6 VIP `vip` (both as [`lb_common::ipv6_halves`]), tested where IPv4
/// tests it.
#[inline(always)]
pub fn martian6(source: (u64, u64), vip: (u64, u64), config: &NodeConfig) -> bool {
    martian_source6_halves(source, vip) || is_local6(config, source) || lookup_vip6(source).is_some()
}

/// Whether `source` is an address no client of `vip` can have: martian, this VIP or another of ours, or one of the
/// node's own addresses (`DropMartianSource`). Tested where a packet would create or change state, or draw an
/// answer: an ICMP message, a NAT backend's reply, and a client packet without a connection-table entry, before
/// the entry is made. A packet of an existing flow needs no test: its entry was only made after its source passed
/// (see ARCHITECTURE.md, "Martian sources").
#[inline(always)]
pub fn martian(source: [u8; 4], vip: &Vip, config: &NodeConfig) -> bool {
    martian_source(source, vip.address) || config.is_local(source) || lookup_vip(source).is_some()
}
