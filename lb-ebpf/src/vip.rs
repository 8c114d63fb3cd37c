//! Which of the node's VIPs a frame is addressed to: the address's `VIP_SLOTS` slot, then the one `VIP_TABLE`
//! element it names (two array reads the verifier inlines); the `VIPS` hash only for VIPs sharing a slot.
use lb_common::{NodeConfig, SLOT_EMPTY, SLOT_SHARED, VipValue, martian_source, vip_fold};

use crate::maps::{Clock, HEARTBEAT, VIP_SLOTS, VIP_TABLE, VIPS, VIPS6};

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

/// The `VIPS6` entry of `address`, if it is one of our IPv6 VIPs: one hash lookup (IPv6 frames only). `address`
/// may point into the frame (the helper takes a packet pointer as key), so nothing is copied to the stack.
#[inline(always)]
pub fn lookup_vip6(address: &[u8; 16]) -> Option<&'static VipValue> {
    // SAFETY: the value is read while this program runs (the map is not preallocated: an update swaps a whole
    // element, and frees the old one only after every reader is done).
    unsafe { VIPS6.get(address) }
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

/// Whether `source` is an address no client of `vip` can have: martian, this VIP or another of ours, or one of the
/// node's own addresses (`DropMartianSource`). Tested where a packet would create or change state, or draw an
/// answer: an ICMP message, a NAT backend's reply, and a client packet without a connection-table entry, before
/// the entry is made. A packet of an existing flow needs no test: its entry was only made after its source passed
/// (see ARCHITECTURE.md, "Martian sources").
#[inline(always)]
pub fn martian(source: [u8; 4], vip: &Vip, config: &NodeConfig) -> bool {
    martian_source(source, vip.address) || config.is_local(source) || lookup_vip(source).is_some()
}
