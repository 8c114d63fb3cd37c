//! The IPv6 virtual router of an instance that has IPv6 addresses. RFC 5798 keeps the address families apart: an
//! instance whose addresses mix IPv4 and IPv6 runs one router per family, with the same VRID, priority, timers and
//! preemption, each elected on its own. The IPv4 router is the instance's own (`instance.rs`, with its services,
//! settling and penalty); this one carries only the election of the IPv6 addresses: adverts to ff02::12 (or the
//! IPv6 unicast peers) from the link-local address, the role, its data plane router's flag, its unsolicited
//! Neighbor Advertisements (the gratuitous ARP schedule of the IPv4 router, [`GarpTimers`], with the same keys), and
//! its part of the stop (a priority-0 advert, answering until the new active router announces itself, as the IPv4
//! router does). The instance hands it the priority (penalty included) and the preemption hold, so both families
//! follow the same rules.
//!
//! Pure, like the engine: it pushes commands into the instance's [`Out`].

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use lb_common::{FAMILY_IPV6, router_slot};
use log::Level;

use super::{Command, GarpTimers, LogLimits, Out, RouterObserved, RouterView, more_comma, router_settings};
use crate::{
    config,
    vrrp::{
        Action, Cause, Role, Router, RxFilter,
        machine::{InvalidSettings, PRIORITY_OWNER},
        packet::{self, Advert},
        socket6::Datagram,
    },
};

/// The IPv6 router of one instance. See the module documentation.
#[derive(Debug)]
pub(super) struct Router6 {
    router: Router<Ipv6Addr>,
    /// The instance's IPv6 addresses, in config order: the advert's address list.
    addresses: Vec<Ipv6Addr>,
    /// This node's advert source: `source_address` (IPv6), else the interface's link-local address.
    pub(super) source: Ipv6Addr,
    peers: Vec<Ipv6Addr>,
    /// Its flag in the data plane.
    pub(super) index: u32,
    interface: String,
    vrid: u8,
    /// The instance's `[vrrp]` keys: `garp_*` time its unsolicited Neighbor Advertisements.
    vrrp: config::Vrrp,
    /// Its unsolicited Neighbor Advertisements after the take-over's burst, while active.
    nas: GarpTimers,
    /// While stopping as the active router: still answering, waiting for the new one to announce itself.
    handing_over: bool,
    last_advert: Option<Duration>,
    observed: RouterObserved,
    logs: LogLimits,
}

impl Router6 {
    /// The IPv6 router of `config` (which has IPv6 addresses) in data plane slot `slot`, advertising from `source`.
    pub(super) fn new(config: &config::Instance, slot: u32, source: Ipv6Addr) -> Result<Self, InvalidSettings> {
        let v = &config.vrrp;
        let settings = router_settings(v, source);
        Ok(Router6 {
            router: Router::new(settings)?,
            addresses: config.vip.ipv6(),
            source,
            peers: v.unicast_peers6.clone(),
            index: router_slot(slot, FAMILY_IPV6),
            interface: config.interface.clone(),
            vrid: v.vrid,
            vrrp: v.clone(),
            nas: GarpTimers::default(),
            handing_over: false,
            last_advert: None,
            observed: RouterObserved::default(),
            logs: LogLimits::default(),
        })
    }

    pub(super) fn role(&self) -> Role {
        self.router.role()
    }

    /// Its election's next timer, and its announcement schedule's while active; none while handing over.
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        if self.handing_over {
            return None;
        }
        let nas = if self.router.role() == Role::Active { self.nas.next() } else { None };
        [self.router.next_deadline(), nas].into_iter().flatten().min()
    }

    pub(super) fn handing_over(&self) -> bool {
        self.handing_over
    }

    pub(super) fn start(&mut self, now: Duration, link_up: bool, label: &str, out: &mut Out) {
        let actions = if link_up {
            self.router.start(now)
        } else {
            self.router.fault(now, format!("no link on {}: waiting for it", self.interface))
        };
        self.apply(now, actions, label, out);
    }

    /// Stops the election as the IPv4 router does: a priority-0 advert if active, after which it keeps answering
    /// until [`finish_stop`](Self::finish_stop) (the new active router announced itself, or the node's handover
    /// wait ran out), so a backup takes over after its skew time without a gap. Returns whether it hands over; if
    /// not, its stop is complete.
    pub(super) fn begin_stop(&mut self, now: Duration, label: &str, out: &mut Out) -> bool {
        let was_active = self.router.role() == Role::Active;
        for action in self.router.shutdown(now) {
            if let Action::SendAdvert { priority } = action {
                self.send_advert(now, priority, out);
            }
        }
        self.nas = GarpTimers::default();
        self.handing_over = was_active;
        if !was_active {
            self.finish_stop(now, label, out);
        }
        was_active
    }

    /// The stop is over: no more answers. Does nothing the second time.
    pub(super) fn finish_stop(&mut self, now: Duration, label: &str, out: &mut Out) {
        if !self.handing_over && self.observed.role == Role::Initialize {
            return;
        }
        self.handing_over = false;
        out.push(Command::SetActive { router: self.index, active: false });
        self.role_changed(now, Role::Initialize, Cause::Stop, "stopping".into(), label, out);
    }

    pub(super) fn timer(&mut self, now: Duration, label: &str, out: &mut Out) {
        if self.handing_over {
            return;
        }
        let actions = self.router.on_timer(now);
        self.apply(now, actions, label, out);
        if self.router.role() != Role::Active {
            return;
        }
        for _ in 0..self.nas.due(now, self.vrrp.garp_refresh_ms) {
            self.send_nas(out);
        }
    }

    pub(super) fn set_priority(&mut self, now: Duration, priority: u8, label: &str, out: &mut Out) {
        if priority != self.router.priority() {
            let actions = self.router.set_priority(now, priority);
            self.apply(now, actions, label, out);
        }
    }

    /// A reload changed the instance in place (its identity is the same): the keys it reads may have changed. A
    /// new `garp_refresh_ms` applies at once to an active router, as for the IPv4 one.
    pub(super) fn reconfigure(&mut self, now: Duration, config: &config::Instance) {
        let refresh_before = self.vrrp.garp_refresh_ms;
        self.vrrp = config.vrrp.clone();
        if self.vrrp.garp_refresh_ms != refresh_before && self.router.role() == Role::Active && !self.handing_over {
            self.nas.refresh_changed(now, self.vrrp.garp_refresh_ms);
        }
    }

    pub(super) fn hold_preemption(&mut self, held: bool) {
        self.router.hold_preemption(held);
    }

    pub(super) fn link(&mut self, now: Duration, up: bool, label: &str, out: &mut Out) {
        let role = self.router.role();
        if up && role == Role::Fault {
            let actions = self.router.start(now);
            self.apply(now, actions, label, out);
        } else if !up && role != Role::Fault && role != Role::Initialize {
            let actions = self.router.fault(now, format!("link down on {}", self.interface));
            self.apply(now, actions, label, out);
        }
    }

    /// As the IPv4 router's stall check (see `Instance::check_stall`): an active router that sent nothing for
    /// longer than `limit` rejoins as a backup.
    pub(super) fn check_stall(&mut self, now: Duration, limit: Duration, label: &str, out: &mut Out) {
        if self.router.role() != Role::Active {
            return;
        }
        let Some(last) = self.last_advert else { return };
        let silent = now.saturating_sub(last);
        if silent <= limit {
            return;
        }
        let reason = format!(
            "no advert sent for {} ms (more than {} ms, the peers' down interval): this node was stopped or stalled; \
             rejoining as a backup",
            silent.as_millis(),
            limit.as_millis()
        );
        let _ = self.router.shutdown(now);
        let actions = self
            .router
            .start(now)
            .into_iter()
            .map(|a| match a {
                Action::BecomeBackup { .. } => Action::BecomeBackup { cause: Cause::Stall, reason: reason.clone() },
                other => other,
            })
            .collect();
        self.apply(now, actions, label, out);
    }

    /// An IPv6 VRRP message for this router's VRID: the RFC 5798 §7.1 checks, the group's identity, the election.
    /// While handing over, returns true when it announced a new active router (its stop is then complete).
    pub(super) fn packet(&mut self, now: Duration, datagram: &Datagram, label: &str, out: &mut Out) -> bool {
        let filter = RxFilter { vrid: self.vrid, unicast_peers: &self.peers[..] };
        let rx = match packet::parse_ipv6(&datagram.message, datagram.src, datagram.dst, datagram.hop_limit, &filter) {
            Ok(rx) => rx,
            Err(discard) => {
                self.discard(now, discard.name(), &discard.to_string(), label, out);
                return false;
            }
        };
        if rx.src == self.source {
            return false;
        }
        let mut theirs = rx.advert.addresses.clone();
        let mut ours = self.addresses.clone();
        theirs.sort_unstable();
        ours.sort_unstable();
        if theirs != ours {
            let why = format!("IPv6 addresses {:?} differ from ours {:?}", rx.advert.addresses, self.addresses);
            self.discard(now, super::DISCARD_ADDRESS_MISMATCH, &why, label, out);
            return false;
        }
        if self.router.priority() == PRIORITY_OWNER {
            self.discard(now, super::DISCARD_OWNER, "this node is the address owner (priority 255)", label, out);
            return false;
        }
        self.observed.heard(now);
        if self.handing_over {
            // A priority-0 advert is another router stopping too, not a new active one.
            if rx.advert.priority > 0 {
                out.log(Level::Info, format!("{label}IPv6 handover: {} is active", rx.src));
                self.finish_stop(now, label, out);
                return true;
            }
            return false;
        }
        let actions = self.router.on_advert(now, rx.src, &rx.advert);
        self.apply(now, actions, label, out);
        false
    }

    /// Counts (and logs, rate-limited) a discarded IPv6 advert.
    pub(super) fn discard(&mut self, now: Duration, reason: &'static str, detail: &str, label: &str, out: &mut Out) {
        let count = self.observed.discarded(reason);
        if let Some(left_out) = self.logs.allow(reason, now) {
            out.log(
                Level::Warn,
                format!(
                    "{label}IPv6: discarded a VRRP packet ({reason}, {count} so far{}): {detail}",
                    more_comma(left_out)
                ),
            );
        }
    }

    fn apply(&mut self, now: Duration, actions: Vec<Action>, label: &str, out: &mut Out) {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(now, priority, out),
                Action::BecomeActive { cause, reason } => {
                    out.push(Command::SetActive { router: self.index, active: true });
                    self.role_changed(now, Role::Active, cause, reason, label, out);
                    self.nas = GarpTimers::after_takeover(now, &self.vrrp);
                }
                Action::BecomeBackup { cause, reason } => {
                    out.push(Command::SetActive { router: self.index, active: false });
                    self.forget_flows_if_active(out);
                    self.role_changed(now, Role::Backup, cause, reason, label, out);
                }
                Action::BecomeFault { reason } => {
                    out.push(Command::SetActive { router: self.index, active: false });
                    self.forget_flows_if_active(out);
                    self.role_changed(now, Role::Fault, Cause::LinkDown, reason, label, out);
                }
                Action::BecomeInitialize => {
                    out.push(Command::SetActive { router: self.index, active: false });
                    self.role_changed(now, Role::Initialize, Cause::Stop, "stopping".into(), label, out);
                }
                Action::SendGratuitousArp => self.send_nas(out),
            }
        }
    }

    /// Leaving the active role (not for a stop: the node exits and its tables with it): the flows recorded for the
    /// IPv6 VIPs are stale from now on, as for IPv4 (the peer that takes over carries them).
    fn forget_flows_if_active(&self, out: &mut Out) {
        if self.observed.role == Role::Active {
            out.push(Command::ForgetFlows(self.addresses.iter().copied().map(IpAddr::V6).collect()));
        }
    }

    /// The IPv6 form of a gratuitous ARP burst: `garp_count` unsolicited Neighbor Advertisements for each address
    /// (RFC 5798 §6.4.2).
    fn send_nas(&mut self, out: &mut Out) {
        let count = self.vrrp.garp_count;
        if count > 0 {
            out.push(Command::SendUnsolicitedNas {
                interface: self.interface.clone(),
                addresses: self.addresses.clone(),
                count,
            });
            self.observed.announcements += u64::from(count);
        }
    }

    fn send_advert(&mut self, now: Duration, priority: u8, out: &mut Out) {
        let advert: Advert<Ipv6Addr> = self.router.advert(priority, &self.addresses);
        out.push(Command::SendAdvert6 {
            interface: self.interface.clone(),
            source: self.source,
            peers: self.peers.clone(),
            advert,
        });
        self.last_advert = Some(now);
        self.observed.adverts_sent += 1;
    }

    fn role_changed(&mut self, now: Duration, role: Role, cause: Cause, reason: String, label: &str, out: &mut Out) {
        out.log(Level::Info, format!("{label}IPv6 role -> {role}: {reason}"));
        self.observed.role_changed(now, role, cause, reason);
        if role != Role::Active {
            self.nas = GarpTimers::default();
        }
    }

    /// A snapshot for status and metrics.
    pub(super) fn view(&self) -> RouterView {
        RouterView {
            observed: self.observed.clone(),
            role: self.observed.role,
            source: IpAddr::V6(self.source),
            active_router: self.router.active_router().map(IpAddr::V6),
            index: self.index,
            priority: self.router.priority(),
        }
    }
}
