//! Which of the node's VIPs a frame is addressed to: a filter bit first, the `VIPS` entry only when it is set.
use lb_common::{VipValue, vip_filter_bit};

use crate::maps::{VIP_FILTER, VIPS};

/// The VIP a frame is addressed to: its address and `VIPS` entry.
#[derive(Clone, Copy)]
pub struct Vip {
    pub address: [u8; 4],
    pub value: VipValue,
}

/// The `VIPS` entry of `address`, if it is one of our VIPs. Most frames are not for a VIP: they stop at the filter
/// bit (one array read the verifier inlines) and never pay the hash lookup.
#[inline(always)]
pub fn lookup_vip(address: [u8; 4]) -> Option<Vip> {
    let (word, bit) = vip_filter_bit(address);
    if VIP_FILTER.get(word).is_none_or(|w| *w & (1u64 << bit) == 0) {
        return None;
    }
    // SAFETY: copied out at once.
    let value = unsafe { VIPS.get(&address) }.copied()?;
    Some(Vip { address, value })
}
