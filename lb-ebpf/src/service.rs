//! Which service a packet to a VIP's port is for: the listener's `LISTENER_SLOTS` slot, then the one
//! `LISTENER_TABLE` element it names (two array reads the verifier inlines); the `SERVICES` hash only for listeners
//! sharing a slot.
use lb_common::{SLOT_EMPTY, SLOT_SHARED, ServiceKey, ServiceValue, listener_slot};

use crate::maps::{LISTENER_SLOTS, LISTENER_TABLE, SERVICES};

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
