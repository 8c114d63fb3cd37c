//! The TCP/UDP state rules of a NAT reverse entry (see the module docs of `nat.rs`), once for both entry types:
//! `NatValue` (IPv4, `nat.rs`, `egress.rs`) and `NatValue6` (`nat6.rs`); and when a client packet of an
//! established flow may skip its reverse entry (the once-a-second confirmation), once for both connection-table
//! entry types, `FlowValue` and `FlowValue6`. The functions are generic over [`NatState`] and [`NatPin`] and
//! `#[inline(always)]`: each program gets its own copy, as if written for its type (no BPF-to-BPF call, no frame
//! of its own).
use lb_common::{
    FlowValue, FlowValue6, NAT_CHECK_INTERVAL_NS, NAT_ESTABLISHED, NAT_FIN_BACKEND, NAT_FIN_CLIENT, NAT_RST, NatValue,
    NatValue6, PROTO_UDP, ROUTE_REFRESH_NS, Reason,
};

use crate::{
    maps::{closed_grace_ns, embryonic_timeout_ns, established_timeout_ns, udp_timeout_ns},
    parse::L4,
    route::Route,
};

/// The fields the state rules read and write, which both reverse entry types have under the same names.
pub trait NatState {
    fn flags(&self) -> u8;
    fn set_flags(&mut self, flags: u8);
    fn last_seen_ns(&self) -> u64;
    fn set_last_seen_ns(&mut self, now: u64);
    /// When the route was stored (0 = none yet), and the route.
    fn route_ns(&self) -> u64;
    fn route(&self) -> Route;
    /// Stores the reply route the FIB gave at `now`.
    fn set_route(&mut self, route: &Route, now: u64);
}

macro_rules! nat_state {
    ($entry:ty) => {
        impl NatState for $entry {
            #[inline(always)]
            fn flags(&self) -> u8 {
                self.flags
            }
            #[inline(always)]
            fn set_flags(&mut self, flags: u8) {
                self.flags = flags;
            }
            #[inline(always)]
            fn last_seen_ns(&self) -> u64 {
                self.last_seen_ns
            }
            #[inline(always)]
            fn set_last_seen_ns(&mut self, now: u64) {
                self.last_seen_ns = now;
            }
            #[inline(always)]
            fn route_ns(&self) -> u64 {
                self.route_ns
            }
            #[inline(always)]
            fn route(&self) -> Route {
                Route { next_hop_mac: self.next_hop_mac, egress_mac: self.egress_mac, ifindex: self.egress_ifindex }
            }
            #[inline(always)]
            fn set_route(&mut self, route: &Route, now: u64) {
                self.next_hop_mac = route.next_hop_mac;
                self.egress_mac = route.egress_mac;
                self.egress_ifindex = route.ifindex;
                self.route_ns = now;
            }
        }
    };
}
nat_state!(NatValue);
nat_state!(NatValue6);

/// The field of a NAT flow's connection-table entry that the confirmation rule reads and writes, which both entry
/// types have under the same name.
pub trait NatPin {
    fn checked_ns(&self) -> u64;
    fn set_checked_ns(&mut self, now: u64);
}

macro_rules! nat_pin {
    ($entry:ty) => {
        impl NatPin for $entry {
            #[inline(always)]
            fn checked_ns(&self) -> u64 {
                self.checked_ns
            }
            #[inline(always)]
            fn set_checked_ns(&mut self, now: u64) {
                self.checked_ns = now;
            }
        }
    };
}
nat_pin!(FlowValue);
nat_pin!(FlowValue6);

/// Whether a client packet of an established NAT flow pinned as `pinned` goes to its backend on the pin alone,
/// without looking at its reverse entry: a plain packet (a SYN, FIN or RST changes the TCP state) within
/// `NAT_CHECK_INTERVAL_NS` of the flow's last confirmation that the entry is still its own. Such a packet may be
/// served from the flow cache (`flow_cache.rs`).
#[inline(always)]
pub fn confirmed<P: NatPin>(pinned: &P, l4: &L4, now: u64) -> bool {
    l4.plain() && now.saturating_sub(pinned.checked_ns()) < NAT_CHECK_INTERVAL_NS
}

/// Records in the flow's pin that a client packet confirmed (and refreshed) its reverse entry. After a RST the
/// flow's next packet checks again, and so revives the flow if it goes on.
#[inline(always)]
pub fn confirm<P: NatPin>(pinned: &mut P, l4: &L4, now: u64) {
    pinned.set_checked_ns(if l4.rst() { 0 } else { now });
}

/// Records a backend's packet in its flow's reverse entry (the TCP state, signs of life), for the XDP programs and
/// the egress program (replies of a backend on this node) alike. `Err` when the translation is gone (a UDP flow
/// that aged out).
#[inline(always)]
pub fn reply_seen<E: NatState>(entry: &mut E, l4: &L4, now: u64) -> Result<(), Reason> {
    if l4.protocol == PROTO_UDP {
        if idle_for(entry, now) > udp_timeout_ns() {
            return Err(Reason::DropNatNoEntry);
        }
        if idle_for(entry, now) >= NAT_CHECK_INTERVAL_NS {
            entry.set_last_seen_ns(now);
        }
    } else if l4.rst() {
        entry.set_flags(entry.flags() | NAT_RST);
        entry.set_last_seen_ns(now);
    } else if !l4.any_syn() {
        // The backend answers: established (it would not answer a spoofed connection with anything but a SYN/ACK
        // or RST). Its packets then count as signs of life too.
        if entry.flags() & NAT_ESTABLISHED == 0 {
            entry.set_flags(entry.flags() | NAT_ESTABLISHED);
            entry.set_last_seen_ns(now);
        } else if idle_for(entry, now) >= NAT_CHECK_INTERVAL_NS {
            entry.set_last_seen_ns(now);
        }
        if l4.fin() && entry.flags() & NAT_FIN_BACKEND == 0 {
            entry.set_flags(entry.flags() | NAT_FIN_BACKEND);
        }
    }
    Ok(())
}

/// Updates the flow's own reverse entry with a client packet: FIN, RST, or a revival after a RST.
#[inline(always)]
pub fn refresh<E: NatState>(entry: &mut E, l4: &L4, now: u64) {
    entry.set_last_seen_ns(now);
    if l4.rst() {
        entry.set_flags(entry.flags() | NAT_RST);
    } else if entry.flags() & NAT_RST != 0 {
        entry.set_flags(entry.flags() & !NAT_RST);
    }
    if l4.fin() && entry.flags() & NAT_FIN_CLIENT == 0 {
        entry.set_flags(entry.flags() | NAT_FIN_CLIENT);
    }
}

/// The TCP state of a new connection's fresh reverse entry: its first packet may carry a FIN or a RST.
#[inline(always)]
pub fn fresh_flags(l4: &L4) -> u8 {
    let mut flags = 0;
    if l4.fin() {
        flags |= NAT_FIN_CLIENT;
    }
    if l4.rst() {
        flags |= NAT_RST;
    }
    flags
}

/// Whether a flow may have the port of a candidate's existing reverse entry `entry` (`owned`: the entry is the
/// flow's), and if so makes the entry the flow's: its own entry, on a packet other than a SYN (its connection-table
/// entry was evicted, or it moved CPU), is refreshed, keeping its state and route; its own on a SYN (a new
/// connection), or a reclaimable one, is overwritten with `fresh` in place (cheaper than an LRU update: allocate,
/// link, free; and just as racy with another CPU claiming the same port at the same instant).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn take<E: NatState + Copy>(
    entry: &mut E,
    owned: bool,
    syn: bool,
    fresh: &E,
    l4: &L4,
    protocol: u8,
    now: u64,
) -> bool {
    if owned && !syn {
        refresh(entry, l4, now);
        return true;
    }
    if owned || reclaimable(entry, protocol, now) {
        *entry = *fresh;
        return true;
    }
    false
}

/// Whether a SYN that finds every candidate port held may displace this entry: it is embryonic.
#[inline(always)]
pub fn embryonic<E: NatState>(entry: &E) -> bool {
    entry.flags() & NAT_ESTABLISHED == 0
}

/// Whether a UDP flow's translation has aged out (its next packet starts over, as a new flow).
#[inline(always)]
pub fn udp_expired<E: NatState>(entry: &E, protocol: u8, now: u64) -> bool {
    protocol == PROTO_UDP && idle_for(entry, now) > udp_timeout_ns()
}

/// Nanoseconds since the entry's last sign of life (0 if another CPU stamped it after `now` was read).
#[inline(always)]
fn idle_for<E: NatState>(entry: &E, now: u64) -> u64 {
    now.saturating_sub(entry.last_seen_ns())
}

/// Whether another flow may take this entry's port (see the module docs of `nat.rs`).
#[inline(always)]
fn reclaimable<E: NatState>(entry: &E, protocol: u8, now: u64) -> bool {
    let idle = idle_for(entry, now);
    if protocol == PROTO_UDP {
        return idle > udp_timeout_ns();
    }
    if embryonic(entry) {
        return idle > embryonic_timeout_ns();
    }
    let closed = NAT_FIN_CLIENT | NAT_FIN_BACKEND;
    if entry.flags() & NAT_RST != 0 || entry.flags() & closed == closed {
        return idle > closed_grace_ns();
    }
    idle > established_timeout_ns()
}

/// The flow's cached reply route, if it is younger than `ROUTE_REFRESH_NS`.
#[inline(always)]
pub fn cached_route<E: NatState>(entry: &E, now: u64) -> Option<Route> {
    if entry.route_ns() == 0 || now.saturating_sub(entry.route_ns()) >= ROUTE_REFRESH_NS {
        return None;
    }
    Some(entry.route())
}
