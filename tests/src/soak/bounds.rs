//! The client-visible bound of each fault, derived from the timers the lab runs with (RFC 5798 §6.1 and §6.4,
//! unchanged by RFC 9568; the health checker's `interval`, `timeout` and `fall`). RELIABILITY.md explains each.

use std::time::Duration;

use serde::Serialize;

/// What the soak does to the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SIGKILL to the active node's agent (a crash).
    Kill,
    /// SIGTERM to the active node's agent (a planned stop).
    Term,
    /// The active node's link goes down (its cable is pulled); it comes back later.
    LinkDown,
    /// A node with a higher priority than the active one comes back (restart, link up) and takes over.
    Preempt,
    /// A node comes back (restart, link up) below the active one: nothing may change for clients.
    Rejoin,
    /// A backend fails (its server killed, unready, or its link down) and comes back.
    Flap,
    /// Every node reloads a changed config (services and backends added and removed), one after another.
    Reload,
    /// Spoofed traffic at the VIP: SYN and ACK floods from random sources and VRRP adverts to discard.
    Burst,
}

impl Kind {
    pub const ALL: [Kind; 8] =
        [Kind::Kill, Kind::Term, Kind::LinkDown, Kind::Preempt, Kind::Rejoin, Kind::Flap, Kind::Reload, Kind::Burst];

    /// The four ways the VIP moves between nodes.
    pub fn is_failover(self) -> bool {
        matches!(self, Kind::Kill | Kind::Term | Kind::LinkDown | Kind::Preempt)
    }

    /// Whether new connections may fail inside this kind's window: the VIP moves, or a backend is out before the
    /// health checks notice.
    pub fn excuses_new_connections(self) -> bool {
        self.is_failover() || self == Kind::Flap
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "SIGKILL (crash)",
            Kind::Term => "SIGTERM (planned stop)",
            Kind::LinkDown => "link down",
            Kind::Preempt => "preemption",
            Kind::Rejoin => "rejoin below the active node",
            Kind::Flap => "backend flap",
            Kind::Reload => "reload",
            Kind::Burst => "spoofed burst",
        }
    }
}

/// Measured times may exceed a protocol bound by this much: the client probe's period (10 ms) and deadline (50
/// ms), and scheduling on a shared machine. The same slack as the failover tests and the demo.
pub const SLACK: Duration = Duration::from_millis(100);

/// Skew_Time = ((256 - Priority) × Master_Adver_Interval) / 256 (RFC 5798 §6.1).
pub fn skew_time(advert_interval: Duration, priority: u8) -> Duration {
    advert_interval * (256 - u32::from(priority)) / 256
}

/// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time (RFC 5798 §6.1).
pub fn master_down_interval(advert_interval: Duration, priority: u8) -> Duration {
    advert_interval * 3 + skew_time(advert_interval, priority)
}

/// The timers of the lab's nodes and health checks.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub advert_interval: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

impl Timers {
    /// How long clients may see failures after a fault of `kind`, when the node taking over (if any) advertises
    /// `taker_priority`. `None`: the fault must cost clients nothing.
    pub fn bound(&self, kind: Kind, taker_priority: u8) -> Option<Duration> {
        match kind {
            // The peers hear nothing more: the next node waits its Master_Down_Interval after the last advert,
            // which left at most one interval before the fault.
            Kind::Kill | Kind::LinkDown => Some(master_down_interval(self.advert_interval, taker_priority)),
            // A priority-0 advert sets the backup's down timer to its Skew_Time (RFC 5798 §6.4.2).
            Kind::Term => Some(skew_time(self.advert_interval, taker_priority)),
            // The advert that announces the new active node is the one that makes the old one step down (§6.4.3),
            // and its gratuitous ARPs leave with it: no protocol time at all.
            Kind::Preempt => Some(Duration::ZERO),
            // A dead backend takes new flows until the checker marks it down: the first failing check starts
            // within one interval, `fall` of them end within (fall - 1) intervals plus one timeout after that.
            Kind::Flap => Some(self.health_interval * self.fall + self.health_timeout),
            Kind::Rejoin | Kind::Reload | Kind::Burst => None,
        }
    }

    /// How the bound of `kind` is made, for the table and RELIABILITY.md.
    pub fn derivation(&self, kind: Kind, taker_priority: u8) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let i = self.advert_interval;
        match kind {
            Kind::Kill | Kind::LinkDown => format!(
                "Master_Down_Interval = 3 x {} + Skew_Time({taker_priority}) {} = {}",
                ms(i),
                ms(skew_time(i, taker_priority)),
                ms(master_down_interval(i, taker_priority))
            ),
            Kind::Term => format!(
                "Skew_Time({taker_priority}) = (256 - {taker_priority}) x {} / 256 = {}",
                ms(i),
                ms(skew_time(i, taker_priority))
            ),
            Kind::Preempt => "0: the new node's first advert makes the old one step down".into(),
            Kind::Flap => format!(
                "fall {} x interval {} + timeout {} = {}",
                self.fall,
                ms(self.health_interval),
                ms(self.health_timeout),
                self.bound(kind, 0).map(ms).unwrap_or_default()
            ),
            Kind::Rejoin | Kind::Reload | Kind::Burst => "none: no request may fail".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_worked_values() {
        // RFC 5798 §6.1 with the default 1 s interval: 3.609 s at priority 100, 0.609 s after a priority-0 advert.
        let second = Duration::from_secs(1);
        assert_eq!(master_down_interval(second, 100), Duration::from_micros(3_609_375));
        assert_eq!(skew_time(second, 100), Duration::from_micros(609_375));
        assert_eq!(master_down_interval(second, 254), Duration::from_nanos(3_007_812_500));
        // The lab's 100 ms interval, the backup at 200: 321.9 ms.
        assert_eq!(master_down_interval(Duration::from_millis(100), 200), Duration::from_micros(321_875));
    }

    #[test]
    fn each_kind_has_its_bound() {
        let t = Timers {
            advert_interval: Duration::from_millis(100),
            health_interval: Duration::from_millis(200),
            health_timeout: Duration::from_millis(150),
            fall: 2,
            rise: 1,
        };
        assert_eq!(t.bound(Kind::Kill, 200), Some(Duration::from_micros(321_875)));
        assert_eq!(t.bound(Kind::LinkDown, 150), Some(Duration::from_nanos(341_406_250)));
        assert_eq!(t.bound(Kind::Term, 200), Some(Duration::from_micros(21_875)));
        assert_eq!(t.bound(Kind::Preempt, 250), Some(Duration::ZERO));
        assert_eq!(t.bound(Kind::Flap, 0), Some(Duration::from_millis(550)));
        for kind in [Kind::Rejoin, Kind::Reload, Kind::Burst] {
            assert_eq!(t.bound(kind, 250), None, "{kind:?}");
        }
        assert!(t.derivation(Kind::Kill, 200).ends_with("= 321.9 ms"), "{}", t.derivation(Kind::Kill, 200));
    }
}
