//! Which service a packet to a VIP's port is for: the listener's `LISTENER_SLOTS` slot, then the one
//! `LISTENER_TABLE` element it names (two array reads the verifier inlines); the `SERVICES` hash only for listeners
//! sharing a slot. IPv6 listeners alike, in `LISTENER6_SLOTS`, `LISTENER6_TABLE` and `SERVICES6`.
use lb_common::{
    SLOT_EMPTY, SLOT_SHARED, ServiceKey, ServiceKey6, ServiceValue, ipv6_from_halves, listener_slot, listener6_slot,
};

use crate::maps::{LISTENER_SLOTS, LISTENER_TABLE, LISTENER6_SLOTS, LISTENER6_TABLE, SERVICES, SERVICES6};

/// The service listening on `key`, if any.
#[inline(always)]
pub fn lookup_service(key: &ServiceKey) -> Option<ServiceValue> {
    let slot = *LISTENER_SLOTS.get(listener_slot(key))?;
    if slot == SLOT_EMPTY {
        return None;
    }
    if slot != SLOT_SHARED {
        let entry = LISTENER_TABLE.get(u32::from(slot) - 1)?;
        return (entry.key == *key).then_some(entry.value);
    }
    // SAFETY: copied out at once.
    unsafe { SERVICES.get(key) }.copied()
}

/// The service listening on `port` and `protocol` of the IPv6 VIP `vip` (as [`lb_common::ipv6_halves`]), if any:
/// as [`lookup_service`], through `LISTENER6_SLOTS` and `LISTENER6_TABLE`; `SERVICES6` only for listeners sharing a
/// slot.
#[inline(always)]
pub fn lookup_service6(vip: (u64, u64), port: [u8; 2], protocol: u8) -> Option<ServiceValue> {
    let slot = *LISTENER6_SLOTS.get(listener6_slot(vip, port, protocol))?;
    if slot == SLOT_EMPTY {
        return None;
    }
    if slot != SLOT_SHARED {
        let e = LISTENER6_TABLE.get(u32::from(slot) - 1)?;
        let same = e.vip[0] == vip.0
            && e.vip[1] == vip.1
            && e.port[0] == port[0]
            && e.port[1] == port[1]
            && e.protocol == protocol;
        return same.then_some(e.value);
    }
    // SAFETY: copied out at once.
    unsafe { SERVICES6.get(&ServiceKey6::new(ipv6_from_halves(vip), port, protocol)) }.copied()
}
