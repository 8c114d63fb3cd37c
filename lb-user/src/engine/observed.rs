//! What the engine shows of itself, read-only, for `xvip status` and metrics: per VRRP router (one per address
//! family of an instance) its role and counters ([`RouterObserved`]), kept the same way by the IPv4 router
//! (`instance.rs`) and the IPv6 one (`router6.rs`), and a snapshot of it ([`RouterView`]) that status and metrics
//! render with one function each, whatever the family; per instance what only the instance knows ([`Observed`]).

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use super::RECENT_TAKEOVERS;
use crate::{
    status::RouterStatus,
    vrrp::{Cause, Role},
};

/// What one VRRP router has seen and done since start: its role and its counters.
#[derive(Debug, Clone)]
pub struct RouterObserved {
    pub role: Role,
    /// Engine time of the last role change.
    pub role_since: Duration,
    pub role_reason: String,
    /// Every role change since start.
    pub transitions: u64,
    /// Role changes by [`Cause::name`].
    pub transitions_by_cause: BTreeMap<&'static str, u64>,
    pub adverts_sent: u64,
    /// Adverts that passed every check and were given to the election.
    pub adverts_received: u64,
    /// Adverts discarded, by reason (the RFC 5798 §7.1 checks, `address_mismatch`, `owner`).
    pub discards: BTreeMap<&'static str, u64>,
    /// The family's announcements of its addresses: gratuitous ARPs (IPv4) or unsolicited Neighbor
    /// Advertisements (IPv6).
    pub announcements: u64,
    /// How long the last take-over waited after the last sign of the previous active router (its last advert, or
    /// its priority-0 advert).
    pub last_takeover: Option<Duration>,
    /// Take-overs so far: becoming active after hearing another router since the election (re)started, timed from
    /// the last advert heard to the first advert sent as active.
    pub takeovers: u64,
    /// The newest take-over times (at most [`RECENT_TAKEOVERS`], oldest first): the last `n` of `takeovers`.
    pub recent_takeovers: VecDeque<Duration>,
    /// When the last advert from another router passed the checks, since the election last (re)started: where a
    /// take-over's time is measured from.
    last_heard: Option<Duration>,
}

impl Default for RouterObserved {
    fn default() -> Self {
        RouterObserved {
            role: Role::Initialize,
            role_since: Duration::ZERO,
            role_reason: "starting".into(),
            transitions: 0,
            transitions_by_cause: BTreeMap::new(),
            adverts_sent: 0,
            adverts_received: 0,
            discards: BTreeMap::new(),
            announcements: 0,
            last_takeover: None,
            takeovers: 0,
            recent_takeovers: VecDeque::new(),
            last_heard: None,
        }
    }
}

impl RouterObserved {
    /// An advert from another router passed every check at `now` and goes to the election.
    pub(super) fn heard(&mut self, now: Duration) {
        self.adverts_received += 1;
        self.last_heard = Some(now);
    }

    /// Counts a discarded advert; returns how many were discarded for `reason` so far.
    pub(super) fn discarded(&mut self, reason: &'static str) -> u64 {
        let count = self.discards.entry(reason).or_default();
        *count += 1;
        *count
    }

    /// The router's role changed at `now`. Becoming active after hearing another router is a take-over, timed
    /// from the last advert heard (the election's first advert as active went out at `now`, just before).
    pub(super) fn role_changed(&mut self, now: Duration, role: Role, cause: Cause, reason: String) {
        if role == Role::Active
            && matches!(cause, Cause::MasterDown | Cause::Preempt | Cause::PeerStopped)
            && let Some(heard) = self.last_heard
        {
            let took = now.saturating_sub(heard);
            self.last_takeover = Some(took);
            self.takeovers += 1;
            if self.recent_takeovers.len() == RECENT_TAKEOVERS {
                self.recent_takeovers.pop_front();
            }
            self.recent_takeovers.push_back(took);
        }
        self.role = role;
        self.role_since = now;
        self.role_reason = reason;
        self.transitions += 1;
        *self.transitions_by_cause.entry(cause.name()).or_default() += 1;
        // The election starts over: what was heard before (a fault, a stall, a stop) times no take-over after it.
        if matches!(cause, Cause::Startup | Cause::LinkDown | Cause::Stall | Cause::Stop) {
            self.last_heard = None;
        }
    }
}

/// What an instance has seen and done so far: its IPv4 router's role and counters (the IPv6 router keeps its own),
/// and what concerns the instance as a whole.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Its IPv4 router.
    pub router: RouterObserved,
    /// Whether some service has no usable backend here (the penalty applies).
    pub backends_lost: bool,
}

/// One VRRP router of an instance at one moment, either family.
#[derive(Debug, Clone)]
pub struct RouterView {
    pub observed: RouterObserved,
    /// The role shown: the IPv4 router's election's (`initialize` from the start of a stop), the IPv6 router's last
    /// role change (`active` until its handover ends).
    pub role: Role,
    /// This node's advert source: the instance's IPv4 source, or its IPv6 (link-local) one.
    pub source: IpAddr,
    /// The active router, as far as this node knows.
    pub active_router: Option<IpAddr>,
    /// Its flag in the data plane (`lb_common::router_slot`).
    pub index: u32,
    /// The priority it advertises now (the instance's, lowered by its penalty).
    pub priority: u8,
}

impl RouterView {
    /// `ipv4` or `ipv6`: the `family` label of metrics.
    pub fn family(&self) -> &'static str {
        if self.source.is_ipv6() { "ipv6" } else { "ipv4" }
    }

    /// Its election and counters in the status document (`instances[].ipv6`, and the fields of an instance that
    /// show its election). `nas_sent` holds its announcements: an IPv4 router's are gratuitous ARPs.
    pub fn status(&self, epoch_unix_ms: u64) -> RouterStatus {
        let o = &self.observed;
        RouterStatus {
            role: self.role.name().to_string(),
            source: self.source.to_string(),
            active_router: self.active_router.map(|a| a.to_string()),
            transitions: o.transitions,
            role_since_unix_ms: epoch_unix_ms + u64::try_from(o.role_since.as_millis()).unwrap_or(u64::MAX),
            role_reason: o.role_reason.clone(),
            adverts_sent: o.adverts_sent,
            adverts_received: o.adverts_received,
            adverts_discarded: o.discards.values().sum(),
            effective_priority: self.priority,
            adverts_discarded_by_reason: o.discards.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            nas_sent: o.announcements,
            dataplane: BTreeMap::new(),
        }
    }
}
