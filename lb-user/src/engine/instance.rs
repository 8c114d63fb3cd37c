//! One VRRP instance inside the node engine: its election, its role and FAULT, its penalty, its gratuitous ARPs, its
//! services and their backends, its peers and VRID collisions, and what it has observed. Pure, like the engine: the
//! node ([`super::Engine`]) hands it events and the current time, and it pushes commands.
//!
//! Instances are independent: nothing here reads another instance's state. What they share lives in the node: the
//! dead-man heartbeat (one per agent), the neighbour table (one per node) and the log rate limits for packets that
//! no instance claims.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use lb_common::{FAMILY_IPV4, router_slot};
use log::Level;

use super::{
    Collisions, DISCARD_ADDRESS_MISMATCH, DISCARD_OWNER, GarpTimers, LogLimits, Observed, Out, Peers, RouterView,
    Vip6Spec, fmt_list, fmt_mac, more, more_comma, router_settings, router6::Router6,
};
use crate::{
    config::{self, CheckKind, Forwarding, InstancePlan},
    dataplane::{ServiceId, VipSpec},
    health,
    neighbour::Seen,
    services::{Endpoint, Services, effective_priority},
    status::{BackendStatus, CounterStatus, InstanceStatus, ServiceStatus, Warning},
    vrrp::{
        Action, Cause, Role, Router, RxFilter,
        machine::{InvalidSettings, PRIORITY_OWNER},
        packet::{self, Discard},
        socket6::Datagram,
    },
};

use super::Command;

/// One instance. See the module documentation.
#[derive(Debug)]
pub(super) struct Instance {
    /// Shared with status snapshots; replaced (not changed) by a reload that changes it in place.
    pub(super) config: Arc<config::Instance>,
    /// The instance's slot in the data plane (0..MAX_INSTANCES): its routers' active flags are
    /// `router_slot(slot, family)`.
    pub(super) slot: u32,
    /// This node's advert source for the instance (`vrrp.source_address`, or its interface's primary address).
    pub(super) source: Ipv4Addr,
    /// What goes before its log lines: `instance api: `, or nothing for the one instance of a single-form file.
    label: String,
    router: Router,
    /// Whether it has IPv4 addresses: without them its IPv4 router never starts (the IPv6 one does the election).
    has_ipv4: bool,
    /// Its IPv6 router, when it has IPv6 addresses (RFC 5798: one router per address family).
    v6: Option<Router6>,
    services: Services,
    garp: GarpTimers,
    /// While its IPv4 router stops as the active router: waiting for the new one to announce itself (the IPv6
    /// router keeps its own).
    handing_over: bool,
    /// When it last sent an advert (its peers' down timers run from there).
    last_advert: Option<Duration>,
    peers: Peers,
    collisions: Collisions,
    logs: LogLimits,
    observed: Observed,
    /// Backends (service, endpoint) with a checker whose first result since it started has not come yet.
    unchecked: BTreeSet<(String, Endpoint)>,
    /// Since start or its link coming back, until every backend has reported (see the engine's documentation).
    settling: bool,
    /// While settling: when it ends even with backends still failing.
    settle_by: Duration,
}

impl Instance {
    /// An instance of `config` in data plane slot `slot`, advertising from `source`; `paths` is what the node knows
    /// of its backends' MAC addresses already.
    pub(super) fn new(
        config: config::Instance,
        slot: u32,
        source: Ipv4Addr,
        source6: Option<Ipv6Addr>,
        labelled: bool,
        paths: &BTreeMap<IpAddr, (Option<[u8; 6]>, u32)>,
    ) -> Result<Self, InvalidSettings> {
        let v = &config.vrrp;
        let settings = router_settings(v, source);
        let router = Router::new(settings)?;
        let v6 = match source6 {
            Some(source6) if !config.vip.ipv6().is_empty() => Some(Router6::new(&config, slot, source6)?),
            _ => None,
        };
        let has_ipv4 = !config.vip.ipv4().is_empty();
        let mut services = Services::new(&config.services, config.vip.addresses.clone());
        for (address, (mac, ifindex)) in paths {
            if mac.is_some() {
                services.set_path(*address, *mac, *ifindex);
            }
        }
        let label = if labelled { format!("instance {}: ", config.name) } else { String::new() };
        Ok(Instance {
            config: Arc::new(config),
            slot,
            source,
            label,
            router,
            has_ipv4,
            v6,
            services,
            garp: GarpTimers::default(),
            handing_over: false,
            last_advert: None,
            peers: Peers::default(),
            collisions: Collisions::default(),
            logs: LogLimits::default(),
            observed: Observed::default(),
            unchecked: BTreeSet::new(),
            settling: false,
            settle_by: Duration::ZERO,
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    pub(super) fn vrid(&self) -> u8 {
        self.config.vrrp.vrid
    }

    /// Names its log lines, or not (see `labelled` in the node).
    pub(super) fn set_labelled(&mut self, labelled: bool) {
        self.label = if labelled { format!("instance {}: ", self.config.name) } else { String::new() };
    }

    pub(super) fn interface(&self) -> &str {
        &self.config.interface
    }

    /// Its IPv4 router's index in the data plane.
    pub(super) fn router_index(&self) -> u32 {
        router_slot(self.slot, FAMILY_IPV4)
    }

    /// Its IPv4 router's role, or, without IPv4 addresses, its IPv6 router's.
    pub(super) fn role(&self) -> Role {
        match &self.v6 {
            Some(v6) if !self.has_ipv4 => v6.role(),
            _ => self.router.role(),
        }
    }

    pub(super) fn has_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    /// Its IPv6 router's role, when it has one.
    #[cfg(test)]
    pub(super) fn role6(&self) -> Option<Role> {
        self.v6.as_ref().map(Router6::role)
    }

    pub(super) fn effective_priority(&self) -> u8 {
        self.router.priority()
    }

    pub(super) fn observed(&self) -> &Observed {
        &self.observed
    }

    pub(super) fn services(&self) -> &Services {
        &self.services
    }

    pub(super) fn advert_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.config.vrrp.advert_interval_ms))
    }

    /// Whether one of its routers stops as the active router and waits for the new one to announce itself.
    pub(super) fn handing_over(&self) -> bool {
        self.handing_over || self.v6.as_ref().is_some_and(Router6::handing_over)
    }

    /// How many peers it remembers (bounded by `MAX_PEERS`).
    #[cfg(test)]
    pub(super) fn peers_remembered(&self) -> usize {
        self.peers.seen.len()
    }

    fn log(&self, out: &mut Out, level: Level, message: impl AsRef<str>) {
        out.log(level, format!("{}{}", self.label, message.as_ref()));
    }

    /// When its next timer is due (the election's, the end of settling, and the GARP schedule's while active).
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        if self.handing_over() {
            return None;
        }
        let garps = if self.router.role() == Role::Active { self.garp.next() } else { None };
        let settle = self.settling.then_some(self.settle_by);
        let v6 = self.v6.as_ref().and_then(Router6::next_deadline);
        [self.router.next_deadline(), settle, v6, garps].into_iter().flatten().min()
    }

    /// Its IPv6 VIPs, as the data plane needs them.
    pub(super) fn vip6_specs(&self) -> Vec<Vip6Spec> {
        let Some(v6) = &self.v6 else { return Vec::new() };
        self.config
            .vip
            .ipv6()
            .into_iter()
            .map(|address| Vip6Spec {
                address,
                router: v6.index,
                hash_seed: lb_common::group_seed6(address.octets(), self.config.vrrp.vrid),
                interface: Some(self.config.interface.clone()),
            })
            .collect()
    }

    /// Its VIPs, as the data plane needs them.
    pub(super) fn vip_specs(&self) -> Vec<VipSpec> {
        let v = &self.config;
        v.vip
            .ipv4()
            .into_iter()
            .map(|address| VipSpec {
                address,
                router: self.router_index(),
                hash_seed: lb_common::group_seed(address.octets(), v.vrrp.vrid),
                interface: Some(v.interface.clone()),
            })
            .collect()
    }

    /// Its services, as the data plane needs them.
    pub(super) fn service_specs(&self) -> Vec<(ServiceId, crate::dataplane::ServiceSpec)> {
        self.services.specs().into_iter().map(|(name, spec)| (ServiceId::new(self.name(), &name), spec)).collect()
    }

    /// Its checked backends: (service, backend) of every service whose check is not `none`.
    pub(super) fn checked(&self) -> Vec<(ServiceId, Endpoint)> {
        self.config
            .services
            .iter()
            .filter(|s| s.health.check != CheckKind::None)
            .flat_map(|s| s.backends.iter().map(|b| (ServiceId::new(self.name(), &s.name), (b.address, b.port))))
            .collect()
    }

    /// Starts checkers for every checked backend that `running` does not list.
    pub(super) fn start_checkers(&self, running: &[(ServiceId, Endpoint)], out: &mut Out) {
        for svc in &self.config.services {
            if svc.health.check == CheckKind::None {
                continue;
            }
            for b in &svc.backends {
                let id = ServiceId::new(self.name(), &svc.name);
                let backend = (b.address, b.port);
                if running.iter().any(|(i, e)| *i == id && *e == backend) {
                    continue;
                }
                out.push(Command::StartChecker { id, backend, settings: health::Settings::from(&svc.health) });
            }
        }
    }

    // ----- startup and stop -----

    /// Starts the election; the penalty is known before, so a node whose backends are not usable yet never
    /// advertises its full priority.
    pub(super) fn start(&mut self, now: Duration, link_up: bool, out: &mut Out) {
        self.begin_settling(now);
        let lost = self.lost_services();
        self.observed.backends_lost = lost.is_some();
        let penalty = self.config.vrrp.backend_loss_penalty;
        let wanted = effective_priority(self.config.vrrp.priority, penalty, lost.is_some() || self.settling);
        if let Some(v6) = &mut self.v6 {
            v6.set_priority(now, wanted, &self.label, out);
        }
        if wanted != self.router.priority() {
            let _ = self.router.set_priority(now, wanted);
            self.log(
                out,
                Level::Info,
                format!(
                    "starting with priority {wanted} (priority {} - backend_loss_penalty {penalty}) until every \
                     backend is checked and every service has a usable backend",
                    self.config.vrrp.priority
                ),
            );
        }
        if self.has_ipv4 {
            let actions = if link_up {
                self.router.start(now)
            } else {
                self.router.fault(now, format!("no link on {}: waiting for it", self.config.interface))
            };
            self.apply(now, actions, out);
        }
        if let Some(v6) = &mut self.v6 {
            v6.start(now, link_up, &self.label, out);
        }
    }

    /// Stops the election of both routers: a priority-0 advert from each one that is active. Returns whether one
    /// was active: that one keeps answering until the new active router of its family announces itself (the
    /// packet paths end its stop) or [`finish_stop`](Self::finish_stop), so a backup can take over without a gap.
    pub(super) fn begin_stop(&mut self, now: Duration, out: &mut Out) -> bool {
        let v6_handing_over = match &mut self.v6 {
            Some(v6) => v6.begin_stop(now, &self.label, out),
            None => false,
        };
        let was_active = self.router.role() == Role::Active;
        for action in self.router.shutdown(now) {
            if let Action::SendAdvert { priority } = action {
                self.send_advert(now, priority, out);
            }
        }
        self.handing_over = was_active;
        was_active || v6_handing_over
    }

    /// The stop is over for both routers: stop answering.
    pub(super) fn finish_stop(&mut self, now: Duration, out: &mut Out) {
        if let Some(v6) = &mut self.v6 {
            v6.finish_stop(now, &self.label, out);
        }
        self.finish_stop4(now, out);
    }

    /// The IPv4 router's stop is over: it stops answering.
    fn finish_stop4(&mut self, now: Duration, out: &mut Out) {
        out.push(Command::SetActive { router: self.router_index(), active: false });
        self.handing_over = false;
        if self.observed.router.role != Role::Initialize {
            self.role_changed(now, Role::Initialize, Cause::Stop, "stopping".into(), out);
        }
    }

    /// Leaves the node at once (a reload removes or replaces it): a priority-0 advert if active, so a backup takes
    /// over after its skew time, and no more answers; its checkers stop.
    pub(super) fn remove(&mut self, now: Duration, why: &str, out: &mut Out) {
        self.log(out, Level::Info, format!("{why}: leaving the VRRP group"));
        self.begin_stop(now, out);
        self.finish_stop(now, out);
        // The node goes on: nothing this instance recorded may greet it if it is added again.
        out.push(Command::ForgetFlows(self.config.vip.addresses.clone()));
        for (id, backend) in self.checked() {
            out.push(Command::StopChecker { id, backend });
        }
    }

    // ----- VRRP -----

    pub(super) fn timer(&mut self, now: Duration, out: &mut Out) {
        if self.handing_over() {
            return;
        }
        if self.settling && now >= self.settle_by {
            self.settle_if_done(now, out);
            self.update_priority(now, out);
        }
        if let Some(v6) = &mut self.v6 {
            v6.timer(now, &self.label, out);
        }
        let actions = self.router.on_timer(now);
        self.apply(now, actions, out);
        if self.router.role() != Role::Active {
            return;
        }
        for _ in 0..self.garp.due(now, self.config.vrrp.garp_refresh_ms) {
            self.send_garps(out);
        }
    }

    /// The receive path of a packet for this instance's VRID on its interface: the RFC 5798 §7.1 checks, the
    /// group's identity, then the election. Returns true when the packet announced a new active router while the
    /// IPv4 router hands over (its stop is then complete; the IPv6 router's may not be).
    pub(super) fn packet(&mut self, now: Duration, bytes: &[u8], out: &mut Out) -> bool {
        let filter = RxFilter { vrid: self.config.vrrp.vrid, unicast_peers: &self.config.vrrp.unicast_peers };
        let rx = match packet::parse_ipv4(bytes, &filter) {
            Ok(rx) => rx,
            Err(discard) => {
                self.discard(now, discard.name(), &discard.to_string(), out);
                return false;
            }
        };
        if rx.src == self.source {
            return false;
        }
        if self.peers.note(now, rx.src, rx.checksum)
            && let Some(left_out) = self.logs.allow("checksum_form", now)
        {
            self.log(
                out,
                Level::Info,
                format!("adverts from {} use the {} checksum{}", rx.src, rx.checksum, more(left_out)),
            );
        }
        let ours = self.config.vip.ipv4();
        if !same_addresses(&rx.advert.addresses, &ours) {
            if self.collisions.note(now, rx.src, &rx.advert.addresses) {
                self.log(
                    out,
                    Level::Warn,
                    format!(
                        "VRID collision: adverts from {} carry VRID {} with addresses {}, this group's are {}; they \
                         are discarded (another VRRP group uses this VRID on the segment: give each group its own)",
                        rx.src,
                        self.config.vrrp.vrid,
                        fmt_list(&rx.advert.addresses),
                        fmt_list(&ours)
                    ),
                );
            }
            let why = format!("addresses {} differ from ours {}", fmt_list(&rx.advert.addresses), fmt_list(&ours));
            self.discard(now, DISCARD_ADDRESS_MISMATCH, &why, out);
            return false;
        }
        if self.router.priority() == PRIORITY_OWNER {
            // RFC 5798 §7.1: the address owner discards every advert; nobody can preempt it.
            self.discard(now, DISCARD_OWNER, "this node is the address owner (priority 255)", out);
            return false;
        }
        self.observed.router.heard(now);
        if self.handing_over {
            if rx.advert.priority > 0 {
                self.log(out, Level::Info, format!("handover: {} is active", rx.src));
                self.finish_stop4(now, out);
                return true;
            }
            return false;
        }
        let actions = self.router.on_advert(now, rx.src, &rx.advert);
        self.apply(now, actions, out);
        false
    }

    /// An IPv6 VRRP message for this instance's VRID: its IPv6 router judges it. Returns true when it announced a
    /// new active router while the IPv6 router hands over (that router's stop is then complete).
    pub(super) fn packet6(&mut self, now: Duration, datagram: &Datagram, out: &mut Out) -> bool {
        match &mut self.v6 {
            Some(v6) => v6.packet(now, datagram, &self.label, out),
            None => false,
        }
    }

    /// An IPv6 VRRP message no instance on the interface claims (another VRID, or malformed): counted and logged
    /// (rate-limited) by this instance's IPv6 router.
    pub(super) fn unclaimed6(&mut self, now: Duration, datagram: &Datagram, out: &mut Out) {
        let Some(v6) = &mut self.v6 else { return };
        let filter = RxFilter { vrid: self.config.vrrp.vrid, unicast_peers: &self.config.vrrp.unicast_peers6[..] };
        let parsed =
            packet::parse_ipv6(&datagram.message, datagram.src, datagram.dst, datagram.hop_limit, &filter).err();
        if let Some(discard) = parsed {
            v6.discard(now, discard.name(), &discard.to_string(), &self.label, out);
        }
    }

    /// Counts (and logs, rate-limited) a packet this instance discards.
    pub(super) fn discard(&mut self, now: Duration, reason: &'static str, detail: &str, out: &mut Out) {
        let count = self.count_discard(reason);
        // A line held back by the rate limit is counted in the next one that passes (`more_comma`).
        if let Some(left_out) = self.logs.allow(reason, now) {
            self.log(
                out,
                Level::Warn,
                format!("discarded a VRRP packet ({reason}, {count} so far{}): {detail}", more_comma(left_out)),
            );
        }
    }

    /// Counts a discarded packet without a log line (the node logs packets no instance claims); returns the count.
    pub(super) fn count_discard(&mut self, reason: &'static str) -> u64 {
        self.observed.router.discarded(reason)
    }

    /// The filter a packet for this instance passes through, to judge one that no instance claims.
    pub(super) fn judge_unclaimed(&self, bytes: &[u8]) -> Option<Discard> {
        let filter = RxFilter { vrid: self.config.vrrp.vrid, unicast_peers: &self.config.vrrp.unicast_peers };
        packet::parse_ipv4(bytes, &filter).err()
    }

    /// Carries out the election's actions.
    fn apply(&mut self, now: Duration, actions: Vec<Action>, out: &mut Out) {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(now, priority, out),
                Action::BecomeActive { cause, reason } => {
                    out.push(Command::SetActive { router: self.router_index(), active: true });
                    self.role_changed(now, Role::Active, cause, reason, out);
                    self.garp = GarpTimers::after_takeover(now, &self.config.vrrp);
                }
                Action::BecomeBackup { cause, reason } => {
                    out.push(Command::SetActive { router: self.router_index(), active: false });
                    self.role_changed(now, Role::Backup, cause, reason, out);
                }
                Action::BecomeFault { reason } => {
                    out.push(Command::SetActive { router: self.router_index(), active: false });
                    self.role_changed(now, Role::Fault, Cause::LinkDown, reason, out);
                }
                Action::BecomeInitialize => {
                    out.push(Command::SetActive { router: self.router_index(), active: false });
                    self.role_changed(now, Role::Initialize, Cause::Stop, "stopping".into(), out);
                }
                Action::SendGratuitousArp => self.send_garps(out),
            }
        }
    }

    fn send_advert(&mut self, now: Duration, priority: u8, out: &mut Out) {
        let advert = self.router.advert(priority, &self.config.vip.ipv4());
        out.push(Command::SendAdvert {
            interface: self.config.interface.clone(),
            source: self.source,
            peers: self.config.vrrp.unicast_peers.clone(),
            advert,
            checksum: self.config.vrrp.checksum,
        });
        self.last_advert = Some(now);
        self.observed.router.adverts_sent += 1;
    }

    fn is_nat(&self, service: &str) -> bool {
        self.config.services.iter().any(|s| s.name == service && s.forwarding == Forwarding::Nat)
    }

    fn send_garps(&mut self, out: &mut Out) {
        let count = self.config.vrrp.garp_count;
        if count > 0 {
            out.push(Command::SendGarps {
                interface: self.config.interface.clone(),
                addresses: self.config.vip.ipv4(),
                count,
            });
            self.observed.router.announcements += u64::from(count);
        }
    }

    fn role_changed(&mut self, now: Duration, role: Role, cause: Cause, reason: String, out: &mut Out) {
        self.log(out, Level::Info, format!("role -> {role}: {reason}"));
        // Leaving active (not for a stop: the node exits and its tables with it): its flow state is stale from now
        // on, since the peer that takes over carries these connections and may change them.
        if self.observed.router.role == Role::Active && role != Role::Active && cause != Cause::Stop {
            out.push(Command::ForgetFlows(self.config.vip.ipv4().into_iter().map(IpAddr::V4).collect()));
        }
        self.observed.router.role_changed(now, role, cause, reason);
        if role != Role::Active {
            self.garp = GarpTimers::default();
        }
    }

    /// How long it may go without sending an advert before its peers take over: 3 advert intervals, less than
    /// their Master_Down_Interval (3 intervals plus a skew time above 0).
    pub(super) fn silence_limit(&self) -> Duration {
        3 * self.advert_interval()
    }

    /// An active instance whose node was not scheduled for longer than [`silence_limit`](Self::silence_limit)
    /// (SIGSTOP, a stalled syscall, a starved CPU) has been taken over by its peers or is about to be, and the data
    /// plane's dead-man switch has stopped answering. Carrying on as the active router would make it answer again
    /// next to them; it rejoins as a backup instead, and the election (preemption) decides.
    pub(super) fn check_stall(&mut self, now: Duration, out: &mut Out) {
        let limit = self.silence_limit();
        let handing_over = self.handing_over();
        if let Some(v6) = &mut self.v6
            && !handing_over
        {
            v6.check_stall(now, limit, &self.label, out);
        }
        if self.router.role() != Role::Active || self.handing_over() {
            return;
        }
        let Some(last) = self.last_advert else { return };
        let silent = now.saturating_sub(last);
        if silent <= self.silence_limit() {
            return;
        }
        let reason = format!(
            "no advert sent for {} ms (more than {} ms, the peers' down interval): this node was stopped or stalled \
             and its data plane stopped answering; rejoining as a backup",
            silent.as_millis(),
            self.silence_limit().as_millis()
        );
        let _ = self.router.shutdown(now);
        let actions = self.router.start(now);
        let actions = actions
            .into_iter()
            .map(|a| match a {
                Action::BecomeBackup { .. } => Action::BecomeBackup { cause: Cause::Stall, reason: reason.clone() },
                other => other,
            })
            .collect();
        self.apply(now, actions, out);
    }

    /// The instance's interface changed state.
    pub(super) fn link(&mut self, now: Duration, up: bool, out: &mut Out) {
        if self.handing_over() {
            return;
        }
        if let Some(v6) = &mut self.v6 {
            v6.link(now, up, &self.label, out);
        }
        let role = self.router.role();
        if up && role == Role::Fault {
            self.log(
                out,
                Level::Info,
                format!("link up on {}: starting the election as a backup", self.config.interface),
            );
            // Check results taken without a link say nothing about the backends: start the checkers afresh (the
            // first result decides) and settle again before preempting.
            for (id, backend) in self.checked() {
                out.push(Command::StopChecker { id, backend });
            }
            self.start_checkers(&[], out);
            self.begin_settling(now);
            self.update_priority(now, out);
            let actions = self.router.start(now);
            self.apply(now, actions, out);
        } else if !up && role != Role::Fault && role != Role::Initialize {
            // Adverts cannot leave now: stop the machine quietly and stop answering for the VIPs.
            let actions = self.router.fault(now, format!("link down on {}", self.config.interface));
            self.apply(now, actions, out);
        }
    }

    // ----- services, health, neighbours, penalty -----

    /// Services without a usable backend, except those with a backend whose first check result is still to come.
    fn lost_services(&self) -> Option<String> {
        let lost: Vec<&str> = self
            .services
            .without_usable_backend()
            .into_iter()
            .filter(|name| !self.unchecked.iter().any(|(service, _)| service == name))
            .collect();
        (!lost.is_empty()).then(|| lost.join(", "))
    }

    /// Every configured checker starts unchecked; the instance settles until each has passed a check, or until a
    /// backend that failed its first check has had the time to fail `fall` checks (its first probe within a tenth
    /// of an interval, then `fall` intervals, the last one taking its whole timeout).
    fn begin_settling(&mut self, now: Duration) {
        self.unchecked = self.checked().into_iter().map(|(id, backend)| (id.service, backend)).collect();
        self.settling = !self.unchecked.is_empty();
        let longest = self
            .config
            .services
            .iter()
            .filter(|s| s.health.check != CheckKind::None)
            .map(|s| {
                let h = &s.health;
                let interval = u64::from(h.interval_ms);
                interval / 10 + interval * u64::from(h.fall.max(1)) + u64::from(h.timeout_ms)
            })
            .max()
            .unwrap_or(0);
        self.settle_by = now + Duration::from_millis(longest);
        self.router.hold_preemption(self.settling);
        if let Some(v6) = &mut self.v6 {
            v6.hold_preemption(self.settling);
        }
    }

    /// Backends that passed their checks but whose MAC is not known yet: not in the tables until it is.
    fn unresolved(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (name, spec) in self.services.specs() {
            for b in spec.backends.iter().filter(|b| b.healthy && b.weight > 0 && b.mac.is_none()) {
                found.push(format!("{} of {name} (MAC not known yet)", SocketAddr::new(b.address, b.port)));
            }
        }
        found
    }

    /// Ends settling once every backend has passed a check and its MAC is known (a passed backend whose MAC is
    /// still being resolved is not in the tables yet: taking over then would re-pick the flows the active peer
    /// sends to it), or at `settle_by`.
    fn settle_if_done(&mut self, now: Duration, out: &mut Out) {
        if !self.settling {
            return;
        }
        let unresolved = self.unresolved();
        if self.unchecked.is_empty() && unresolved.is_empty() {
            self.log(out, Level::Info, "every backend has been checked: preemption allowed");
        } else if now >= self.settle_by {
            let mut failing: Vec<String> = self
                .unchecked
                .iter()
                .map(|(service, (address, port))| format!("{} of {service}", SocketAddr::new(*address, *port)))
                .collect();
            failing.extend(unresolved);
            self.log(
                out,
                Level::Info,
                format!("every backend has been checked, {} still failing: preemption allowed", failing.join(", ")),
            );
            self.unchecked.clear();
        } else {
            return;
        }
        self.settling = false;
        self.router.hold_preemption(false);
        if let Some(v6) = &mut self.v6 {
            v6.hold_preemption(false);
        }
    }

    /// Applies `backend_loss_penalty` while a service has no usable backend here.
    pub(super) fn update_priority(&mut self, now: Duration, out: &mut Out) {
        let lost = self.lost_services();
        let base = self.config.vrrp.priority;
        let penalty = self.config.vrrp.backend_loss_penalty;
        let wanted = effective_priority(base, penalty, lost.is_some() || self.settling);
        if lost.is_some() != self.observed.backends_lost {
            self.observed.backends_lost = lost.is_some();
            match &lost {
                Some(names) => self.log(out, Level::Warn, format!("no usable backend for {names}")),
                None => self.log(out, Level::Info, "every service has a usable backend again"),
            }
        }
        if wanted != self.router.priority() {
            let why = match &lost {
                Some(names) if penalty > 0 => format!("{names} has no usable backend (backend_loss_penalty {penalty})"),
                None if self.settling && penalty > 0 => {
                    format!("not every backend is checked yet (backend_loss_penalty {penalty})")
                }
                _ => "configured priority".to_string(),
            };
            self.log(out, Level::Info, format!("priority {} -> {wanted}: {why}", self.router.priority()));
            let actions = self.router.set_priority(now, wanted);
            self.apply(now, actions, out);
        }
        if let Some(v6) = &mut self.v6 {
            v6.set_priority(now, wanted, &self.label, out);
        }
    }

    fn install(&self, name: &str, out: &mut Out) {
        if let Some(spec) = self.services.spec(name) {
            out.push(Command::InstallService { id: ServiceId::new(self.name(), name), spec });
        }
    }

    pub(super) fn health(
        &mut self,
        now: Duration,
        service: &str,
        backend: Endpoint,
        healthy: bool,
        reason: &str,
        out: &mut Out,
    ) {
        // While settling only a pass counts (see the engine's documentation); a reload's new backend is checked by
        // its first result either way.
        let key = (service.to_string(), backend);
        let first = (healthy || !self.settling) && self.unchecked.remove(&key);
        let changed = self.services.set_health(service, backend, healthy);
        if !changed && !first {
            return;
        }
        if changed {
            let state = if healthy { "up" } else { "down" };
            let endpoint = SocketAddr::from(backend);
            self.log(out, Level::Info, format!("backend {endpoint} of {service} is {state}: {reason}"));
            self.install(service, out);
            if healthy && self.router.role() == Role::Active && self.is_nat(service) {
                // A NAT backend answers the VIP itself. One that comes back after losing its link may hold its
                // replies for a neighbour entry of the VIP it began to resolve while cut off, and Linux asks
                // again only after `retrans_time` (1 s): announcing the VIP now completes that entry, so the
                // new flows sent to it from now on are answered at once.
                self.send_garps(out);
            }
        }
        self.settle_if_done(now, out);
        self.update_priority(now, out);
    }

    /// Neighbour answers, applied together: each changed service is installed once, the penalty looked at once.
    pub(super) fn neighbours(&mut self, now: Duration, batch: &[(IpAddr, Seen)], out: &mut Out) {
        let mut changed: Vec<String> = Vec::new();
        for (address, seen) in batch {
            for name in self.neighbour(*address, seen) {
                if !changed.contains(&name) {
                    changed.push(name);
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        for name in changed {
            self.install(&name, out);
        }
        self.settle_if_done(now, out);
        self.update_priority(now, out);
    }

    /// A backend keeps its last known MAC until the kernel says the entry FAILED: an entry that is only missing
    /// (garbage-collected, or being refreshed) says nothing about the backend. Returns the services that changed.
    /// (The node logs what the kernel said, once for all instances.)
    fn neighbour(&mut self, address: IpAddr, seen: &Seen) -> Vec<String> {
        let Some((_, ifindex)) = self.services.path(address) else { return Vec::new() };
        match seen {
            Seen::Mac { ifindex: i, mac: m } => self.services.set_path(address, Some(*m), *i),
            Seen::Failed { ifindex: i } => self.services.set_path(address, None, *i),
            // Another interface means another next hop: the old MAC means nothing there.
            Seen::Pending { ifindex: i } if *i != ifindex => self.services.set_path(address, None, *i),
            Seen::Pending { .. } => Vec::new(),
            Seen::NoRoute(_) => self.services.set_path(address, None, 0),
            // This node: reached through its own interface (the data plane marks it local by its address).
            Seen::Local { mac } => self.services.set_path(address, Some(*mac), 0),
        }
    }

    // ----- reload -----

    /// Applies the in-place changes of a reload: `new` is the same instance (name, identity) with other services,
    /// health checks, priority, GARP settings or hostname.
    pub(super) fn reconfigure(&mut self, now: Duration, new: config::Instance, plan: &InstancePlan, out: &mut Out) {
        self.log(out, Level::Info, format!("reload: {plan}"));
        for line in drain_changes(&self.config, &new) {
            self.log(out, Level::Info, line);
        }
        let before = self.checked();
        let refresh_before = self.config.vrrp.garp_refresh_ms;
        self.config = Arc::new(new);
        if let Some(v6) = &mut self.v6 {
            v6.reconfigure(now, &self.config);
        }
        self.services.reconfigure(&self.config.services);
        // Checkers of backends that went away, or whose service's health settings changed, stop; new ones start.
        let after = self.checked();
        let mut running = Vec::new();
        for (id, backend) in before {
            if after.iter().any(|(i, b)| *i == id && *b == backend) && !plan.health_changed.contains(&id.service) {
                running.push((id, backend));
            } else {
                out.push(Command::StopChecker { id, backend });
            }
        }
        self.start_checkers(&running, out);
        // Started checkers report a first result; until then their backends make no service lost.
        self.unchecked.retain(|(service, backend)| after.iter().any(|(i, b)| i.service == *service && b == backend));
        for (id, backend) in &after {
            if !running.iter().any(|(i, b)| i == id && b == backend) {
                self.unchecked.insert((id.service.clone(), *backend));
            }
        }
        self.settle_if_done(now, out);
        if self.config.vrrp.garp_refresh_ms != refresh_before && self.router.role() == Role::Active {
            self.garp.refresh_changed(now, self.config.vrrp.garp_refresh_ms);
        }
        self.update_priority(now, out);
    }

    // ----- status -----

    /// The current warnings (VRID collisions heard within the warning TTL).
    pub(super) fn warnings(&self, now: Duration) -> Vec<Warning> {
        let ours = self.config.vip.ipv4();
        let vrid = self.config.vrrp.vrid;
        self.collisions
            .current(now)
            .map(|(sender, addresses)| Warning {
                kind: "vrid_collision".into(),
                message: format!(
                    "{}adverts from {sender} carry VRID {vrid} with addresses {}, this group's are {}: another VRRP \
                     group uses VRID {vrid} on this segment; give each group its own VRID",
                    self.label,
                    fmt_list(addresses),
                    fmt_list(&ours),
                ),
            })
            .collect()
    }

    /// A snapshot for status and metrics, taken in O(services).
    pub(super) fn view(&self, now: Duration) -> InstanceView {
        let ipv4 = self.has_ipv4.then(|| RouterView {
            observed: self.observed.router.clone(),
            role: self.router.role(),
            source: IpAddr::V4(self.source),
            active_router: self.router.active_router().map(IpAddr::V4),
            index: self.router_index(),
            priority: self.router.priority(),
        });
        InstanceView {
            config: self.config.clone(),
            ipv4,
            ipv6: self.v6.as_ref().map(Router6::view),
            services: self.services.clone(),
            warnings: self.warnings(now),
        }
    }
}

/// One instance's state at one moment, for `xvip status` and metrics.
#[derive(Clone, Debug)]
pub struct InstanceView {
    pub config: Arc<config::Instance>,
    pub services: Services,
    pub warnings: Vec<Warning>,
    /// Its IPv4 router, when it has IPv4 addresses.
    pub ipv4: Option<RouterView>,
    /// Its IPv6 router, when it has IPv6 addresses.
    pub ipv6: Option<RouterView>,
}

impl InstanceView {
    /// Its VRRP routers (one per address family it has addresses of), IPv4 first.
    pub fn routers(&self) -> impl Iterator<Item = &RouterView> {
        self.ipv4.iter().chain(&self.ipv6)
    }

    /// Its routers' indices in the data plane, IPv4 first.
    pub fn router_indices(&self) -> Vec<u32> {
        self.routers().map(|r| r.index).collect()
    }

    /// The router that speaks for the instance where one role is shown (the top-level fields of its status, the
    /// per-instance metrics): its IPv4 router, or, without IPv4 addresses, its IPv6 router.
    pub fn election(&self) -> Option<&RouterView> {
        self.routers().next()
    }

    /// Its part of the status document, except what only the data plane knows (traffic counters, `xdp_mode`).
    pub fn status(&self, epoch_unix_ms: u64) -> InstanceStatus {
        let services = self
            .config
            .services
            .iter()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                port: s.port,
                protocol: s.protocol.as_str().to_string(),
                forwarding: s.forwarding.as_str().to_string(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| {
                        let state = self.services.backend(&s.name, (b.address, b.port)).cloned().unwrap_or_default();
                        BackendStatus {
                            address: b.address.to_string(),
                            port: b.port,
                            weight: b.weight,
                            healthy: state.healthy,
                            packets: 0,
                            bytes: 0,
                            mac: state.mac.map(fmt_mac),
                            draining: b.weight == 0,
                            flows: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        let election = self.election().map(|r| r.status(epoch_unix_ms)).unwrap_or_default();
        InstanceStatus {
            name: self.config.name.clone(),
            addresses: self.config.vip.addresses.iter().map(ToString::to_string).collect(),
            role: election.role,
            vrid: self.config.vrrp.vrid,
            priority: self.config.vrrp.priority,
            effective_priority: election.effective_priority,
            vip: self.config.vip.first().to_string(),
            interface: self.config.interface.clone(),
            xdp_mode: String::new(),
            active_router: election.active_router,
            transitions: election.transitions,
            role_since_unix_ms: election.role_since_unix_ms,
            role_reason: election.role_reason,
            services,
            counters: CounterStatus {
                adverts_sent: election.adverts_sent,
                adverts_received: election.adverts_received,
                adverts_discarded: election.adverts_discarded,
                adverts_discarded_by_reason: election.adverts_discarded_by_reason,
                garps_sent: self.ipv4.as_ref().map_or(0, |r| r.observed.announcements),
                ..CounterStatus::default()
            },
            warnings: self.warnings.clone(),
            ipv6: self.ipv6.as_ref().map(|r| r.status(epoch_unix_ms)),
        }
    }
}

/// One line per backend that starts or stops draining (`weight = 0`) between two configs of an instance.
fn drain_changes(old: &config::Instance, new: &config::Instance) -> Vec<String> {
    let mut lines = Vec::new();
    for svc in &new.services {
        let before = old.services.iter().find(|s| s.name == svc.name);
        for b in &svc.backends {
            let was = before.and_then(|s| s.backends.iter().find(|o| (o.address, o.port) == (b.address, b.port)));
            match (was.map(|w| w.weight == 0), b.weight == 0) {
                (Some(false), true) => lines.push(format!(
                    "backend {} of {} is draining: weight 0, no new flows; established ones stay while it is \
                     healthy",
                    SocketAddr::new(b.address, b.port),
                    svc.name
                )),
                (Some(true), false) => lines.push(format!(
                    "backend {} of {} takes new flows again: weight {}",
                    SocketAddr::new(b.address, b.port),
                    svc.name,
                    b.weight
                )),
                _ => {}
            }
        }
    }
    lines
}

/// Whether two advert address lists name the same addresses (RFC 5798 §5.2.9 asks for one order on every router,
/// but the set is what identifies the group).
fn same_addresses(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}
