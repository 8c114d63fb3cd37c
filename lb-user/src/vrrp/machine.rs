//! The VRRPv3 state machine of RFC 5798 §6, with the changes of RFC 9568, in sans-IO style.
//!
//! No sockets, no clocks, no tokio: the caller passes the current time (a [`Duration`] since any fixed
//! epoch) with every input and executes the returned [`Action`]s in order. Tests drive it with
//! virtual time, so every deadline is exact.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::packet::{Address, Advert, MAX_ADVER_INT_MAX};

/// Priority of the router that owns the virtual addresses (RFC 5798 §5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority an active router advertises when it stops (RFC 5798 §5.2.4).
pub const PRIORITY_STOP: u8 = 0;

const CENTISECOND: Duration = Duration::from_millis(10);

/// The role of this router (RFC 9568 names; RFC 5798 and keepalived say MASTER for `Active`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Initialize,
    Backup,
    Active,
    /// keepalived's FAULT: the interface has no link, so this router can neither hear nor send adverts. It holds
    /// nothing and runs no timer until [`Router::start`] is called again (then it comes back as a backup).
    Fault,
}

impl Role {
    /// The spelling of the status JSON.
    pub fn name(self) -> &'static str {
        match self {
            Role::Initialize => "initialize",
            Role::Backup => "backup",
            Role::Active => "active",
            Role::Fault => "fault",
        }
    }
}

/// Why a role changed, as a stable key for counters (`transitions` by cause) and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The Startup event (RFC 5798 §6.4.1), also after a fault or a stall.
    Startup,
    /// Master_Down_Timer expired without adverts from an active router.
    MasterDown,
    /// This backup preempted a lower-priority active router.
    Preempt,
    /// The active router sent a priority-0 advert and this backup took over after Skew_Time.
    PeerStopped,
    /// An active router heard a higher priority (or an equal one from a higher address) and stepped down.
    HigherPriority,
    /// The link went down.
    LinkDown,
    /// The agent was not scheduled for longer than the peers' down interval (see `engine`).
    Stall,
    /// Shutdown.
    Stop,
}

impl Cause {
    /// Every cause, so a caller can pre-create one counter per cause.
    pub const ALL: [Cause; 8] = [
        Cause::Startup,
        Cause::MasterDown,
        Cause::Preempt,
        Cause::PeerStopped,
        Cause::HigherPriority,
        Cause::LinkDown,
        Cause::Stall,
        Cause::Stop,
    ];

    /// A stable snake_case key.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::MasterDown => "master_down",
            Cause::Preempt => "preempt",
            Cause::PeerStopped => "peer_stopped",
            Cause::HigherPriority => "higher_priority",
            Cause::LinkDown => "link_down",
            Cause::Stall => "stall",
            Cause::Stop => "stop",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the caller must do, in the order returned.
///
/// Becoming Active follows RFC 5798 §6.4.2: the advert goes out first, then the address is taken, then it is
/// announced by gratuitous ARP. Advertising before answering means a preempted router steps down before (not
/// after) this one starts answering, so the two never answer at the same moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority (0 when stopping) and this router's own interval.
    SendAdvert { priority: u8 },
    /// Take the virtual address; `reason` is for the log line.
    BecomeActive { cause: Cause, reason: String },
    /// Give the virtual address up (or never take it); `reason` is for the log line.
    BecomeBackup { cause: Cause, reason: String },
    /// No link: the virtual address must not be held, no timer runs.
    BecomeFault { reason: String },
    /// Stopped: the virtual address must not be held.
    BecomeInitialize,
    /// Announce the virtual address by gratuitous ARP (RFC 5798 §6.4.1/§6.4.2, RFC 9568 §6.4.3).
    SendGratuitousArp,
}

/// Configuration of one virtual router (RFC 5798 §6.1), of address family `A` (a dual-stack group is one router
/// per family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings<A: Address = Ipv4Addr> {
    /// 1..=255.
    pub vrid: u8,
    /// 1..=255; 255 only on the address owner.
    pub priority: u8,
    /// Advertisement_Interval in centiseconds, 1..=4095.
    pub advert_interval: u16,
    /// Preempt_Mode: a higher-priority backup takes over from a lower-priority active router.
    pub preempt: bool,
    /// keepalived's `preempt_delay`: how long a backup waits, after startup or after first hearing a
    /// lower-priority active router, before preempting it.
    pub preempt_delay: Duration,
    /// This router's primary address (the advert source), for the equal-priority tie-break.
    pub primary_address: A,
}

/// A [`Settings`] value outside its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSettings(String);

impl fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSettings {}

/// Why a backup's Master_Down_Timer is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting<A> {
    /// No active router heard since startup.
    Startup,
    /// The active router's adverts reset the timer; it fires if they stop.
    Adverts(A),
    /// A lower-priority active router's adverts are discarded, so the timer preempts it.
    Preempting(A, u8),
    /// The active router sent priority 0: only Skew_Time is left.
    Stopping(A),
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Router<A: Address = Ipv4Addr> {
    settings: Settings<A>,
    /// The effective priority (the configured one, changed by [`Router::set_priority`]).
    priority: u8,
    role: Role,
    /// Active_Adver_Interval: the active router's interval as a backup learned it.
    master_adver_interval: Duration,
    /// Adver_Timer while Active, Master_Down_Timer while Backup.
    deadline: Option<Duration>,
    /// When the backup last accepted an advert (or started), for the log line when the timer fires.
    last_heard: Duration,
    /// The router believed active, with its advertised priority.
    active: Option<(A, u8)>,
    /// What a backup's Master_Down_Timer is waiting on, for the log line when it fires.
    waiting: Waiting<A>,
    /// With a preempt delay, preemption of a lower-priority active router is allowed from this time.
    preempt_after: Option<Duration>,
    /// Set by [`Router::hold_preemption`]: a backup accepts a lower-priority active router as if `preempt` were off.
    preemption_held: bool,
    /// When an active router last answered a lower-priority (or priority-0) advert: it answers at most once per
    /// advert interval, so a flood of unauthenticated adverts costs one advert and one GARP burst per interval.
    last_reply: Option<Duration>,
}

impl<A: Address> Router<A> {
    /// # Errors
    /// [`InvalidSettings`] when the VRID, priority or interval is out of range.
    pub fn new(settings: Settings<A>) -> Result<Self, InvalidSettings> {
        if settings.vrid == 0 {
            return Err(InvalidSettings("vrid must be 1..=255, got 0".into()));
        }
        if settings.priority == PRIORITY_STOP {
            return Err(InvalidSettings("priority must be 1..=255, got 0 (reserved for stopping)".into()));
        }
        if settings.advert_interval == 0 || settings.advert_interval > MAX_ADVER_INT_MAX {
            return Err(InvalidSettings(format!(
                "advert interval must be 1..={MAX_ADVER_INT_MAX} centiseconds, got {}",
                settings.advert_interval
            )));
        }
        Ok(Router {
            priority: settings.priority,
            master_adver_interval: centiseconds(settings.advert_interval),
            settings,
            role: Role::Initialize,
            deadline: None,
            last_heard: Duration::ZERO,
            active: None,
            waiting: Waiting::Startup,
            preempt_after: None,
            preemption_held: false,
            last_reply: None,
        })
    }

    /// Holds (or releases) preemption: while held, a backup accepts a lower-priority active router's adverts, so it
    /// does not take the VIP from it; once released, the next of those adverts is discarded again and the down timer
    /// preempts. The engine holds preemption while this node does not know the state of all its backends yet.
    pub fn hold_preemption(&mut self, held: bool) {
        self.preemption_held = held;
    }

    pub fn settings(&self) -> &Settings<A> {
        &self.settings
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The address of the router believed active: ours when Active, the last advert's sender when
    /// Backup, none after a priority-0 advert or when stopped.
    pub fn active_router(&self) -> Option<A> {
        match self.role {
            Role::Active => Some(self.settings.primary_address),
            Role::Backup => self.active.map(|(addr, _)| addr),
            Role::Initialize | Role::Fault => None,
        }
    }

    /// When this backup last heard from the active router (an accepted advert, a priority-0 advert) or started.
    pub fn last_heard(&self) -> Duration {
        self.last_heard
    }

    /// Active_Adver_Interval (RFC 9568 §6.1): the interval this backup's timers are based on.
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time = ((256 − Priority) × Active_Adver_Interval) / 256 (RFC 5798 §6.1).
    pub fn skew_time(&self) -> Duration {
        let nanos = self.master_adver_interval.as_nanos() * (256 - u128::from(self.priority)) / 256;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Master_Down_Interval = 3 × Active_Adver_Interval + Skew_Time (RFC 5798 §6.1).
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_interval + self.skew_time()
    }

    /// When [`Router::on_timer`] must next be called.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The advert this router sends, for a [`Action::SendAdvert`].
    pub fn advert(&self, priority: u8, addresses: &[A]) -> Advert<A> {
        Advert {
            vrid: self.settings.vrid,
            priority,
            max_adver_int: self.settings.advert_interval,
            addresses: addresses.to_vec(),
        }
    }

    /// The Startup event (RFC 5798 §6.4.1). Does nothing unless in Initialize or Fault.
    pub fn start(&mut self, now: Duration) -> Vec<Action> {
        if !matches!(self.role, Role::Initialize | Role::Fault) {
            return Vec::new();
        }
        self.active = None;
        self.waiting = Waiting::Startup;
        self.last_heard = now;
        if self.priority == PRIORITY_OWNER {
            return self.become_active(
                now,
                Cause::Startup,
                format!("startup as the address owner (priority {PRIORITY_OWNER})"),
            );
        }
        self.master_adver_interval = centiseconds(self.settings.advert_interval);
        // keepalived starts the preempt delay when it enters BACKUP at startup.
        self.preempt_after = (!self.settings.preempt_delay.is_zero()).then(|| now + self.settings.preempt_delay);
        self.role = Role::Backup;
        self.arm_down_timer(now, self.master_down_interval());
        vec![Action::BecomeBackup {
            cause: Cause::Startup,
            reason: format!(
                "startup with priority {}; waiting {} for an active router",
                self.priority,
                secs(self.master_down_interval())
            ),
        }]
    }

    /// The link went down (keepalived's FAULT): no advert can leave, so stop quietly, hold nothing and run no
    /// timer. [`Router::start`] brings it back as a backup. Does nothing when already in Fault.
    pub fn fault(&mut self, _now: Duration, reason: String) -> Vec<Action> {
        if self.role == Role::Fault {
            return Vec::new();
        }
        self.role = Role::Fault;
        self.deadline = None;
        self.active = None;
        self.last_reply = None;
        vec![Action::BecomeFault { reason }]
    }

    /// The Shutdown event (RFC 5798 §6.4.2, §6.4.3): an active router sends priority 0 so a backup
    /// takes over after its Skew_Time instead of Master_Down_Interval.
    pub fn shutdown(&mut self, _now: Duration) -> Vec<Action> {
        let was = self.role;
        self.role = Role::Initialize;
        self.deadline = None;
        self.active = None;
        self.last_reply = None;
        match was {
            Role::Initialize => Vec::new(),
            Role::Fault => vec![Action::BecomeInitialize],
            Role::Backup => vec![Action::BecomeInitialize],
            Role::Active => vec![Action::SendAdvert { priority: PRIORITY_STOP }, Action::BecomeInitialize],
        }
    }

    /// Fires the Adver_Timer or Master_Down_Timer if it is due; early calls do nothing.
    pub fn on_timer(&mut self, now: Duration) -> Vec<Action> {
        match self.deadline {
            Some(deadline) if deadline <= now => {}
            _ => return Vec::new(),
        }
        match self.role {
            Role::Initialize | Role::Fault => Vec::new(),
            Role::Active => {
                // Re-armed from now, not from the missed deadline: a stalled process must not answer
                // with a burst of catch-up adverts (seen from keepalived in the LAB).
                self.arm_adver_timer(now);
                vec![Action::SendAdvert { priority: self.priority }]
            }
            Role::Backup => {
                let waited = secs(now.saturating_sub(self.last_heard));
                let (cause, reason) = match self.waiting {
                    Waiting::Preempting(addr, prio) => (
                        Cause::Preempt,
                        format!(
                            "preempting lower priority {prio} active router {addr} (ours {}): master down timer \
                             expired after {waited}",
                            self.priority
                        ),
                    ),
                    Waiting::Adverts(addr) => (
                        Cause::MasterDown,
                        format!("master down timer expired after {waited} without adverts from {addr}"),
                    ),
                    Waiting::Stopping(addr) => (
                        Cause::PeerStopped,
                        format!("active router {addr} stopped (priority 0 advert); took over after skew time {waited}"),
                    ),
                    Waiting::Startup => (
                        Cause::MasterDown,
                        format!("master down timer expired after {waited} without adverts from an active router"),
                    ),
                };
                self.become_active(now, cause, reason)
            }
        }
    }

    /// An advert that passed the receive checks of RFC 5798 §7.1, from `sender` (its IPv4 source).
    pub fn on_advert(&mut self, now: Duration, sender: A, advert: &Advert<A>) -> Vec<Action> {
        if advert.vrid != self.settings.vrid {
            return Vec::new();
        }
        match self.role {
            Role::Initialize | Role::Fault => Vec::new(),
            Role::Backup => self.backup_on_advert(now, sender, advert),
            Role::Active => self.active_on_advert(now, sender, advert),
        }
    }

    /// Changes the effective priority (e.g. a backend-loss penalty); clamped to 1..=255.
    ///
    /// An active router does not step down by itself: it re-advertises at once with the new priority,
    /// and a higher-priority backup then preempts it through its down timer, so the hand-over follows
    /// the RFC election and both sides agree on it. A backup's running timer is left alone; the new
    /// priority applies to the next advert it hears.
    pub fn set_priority(&mut self, now: Duration, priority: u8) -> Vec<Action> {
        let priority = priority.max(1);
        if priority == self.priority {
            return Vec::new();
        }
        self.priority = priority;
        if self.role != Role::Active {
            return Vec::new();
        }
        self.arm_adver_timer(now);
        vec![Action::SendAdvert { priority }]
    }

    /// RFC 5798 §6.4.2 "If an ADVERTISEMENT is received".
    fn backup_on_advert(&mut self, now: Duration, sender: A, advert: &Advert<A>) -> Vec<Action> {
        if advert.priority == PRIORITY_STOP {
            // The active router is leaving: take over after Skew_Time only.
            self.active = None;
            self.waiting = Waiting::Stopping(sender);
            self.last_heard = now;
            self.arm_down_timer(now, self.skew_time());
            return Vec::new();
        }
        let lower = advert.priority < self.priority;
        if lower && self.settings.preempt && !self.preemption_held && !self.preempt_delay_running(now) {
            // Discarded: Master_Down_Timer keeps running and preempts the lower-priority router.
            self.active = Some((sender, advert.priority));
            self.waiting = Waiting::Preempting(sender, advert.priority);
            return Vec::new();
        }
        if !lower {
            self.preempt_after = None;
        }
        self.active = Some((sender, advert.priority));
        self.waiting = Waiting::Adverts(sender);
        self.last_heard = now;
        // RFC 9568 §6.4.2: adopt the active router's interval and recompute Skew_Time with it.
        self.master_adver_interval = centiseconds(advert.max_adver_int);
        self.arm_down_timer(now, self.master_down_interval());
        Vec::new()
    }

    /// keepalived semantics: the delay starts at startup or when a lower-priority active router is
    /// first heard, and is cancelled by an advert of higher or equal priority.
    fn preempt_delay_running(&mut self, now: Duration) -> bool {
        if self.settings.preempt_delay.is_zero() {
            return false;
        }
        let until = *self.preempt_after.get_or_insert(now + self.settings.preempt_delay);
        now < until
    }

    /// RFC 5798 §6.4.3 "If an ADVERTISEMENT is received", with RFC 9568's immediate re-advert.
    fn active_on_advert(&mut self, now: Duration, sender: A, advert: &Advert<A>) -> Vec<Action> {
        if advert.priority == PRIORITY_STOP {
            // Another router thought it was active and is stopping: remind the backups who is.
            if !self.may_reply(now) {
                return Vec::new();
            }
            self.arm_adver_timer(now);
            return vec![Action::SendAdvert { priority: self.priority }];
        }
        let higher = advert.priority > self.priority
            || (advert.priority == self.priority && sender > self.settings.primary_address);
        if higher {
            let reason = if advert.priority > self.priority {
                format!("higher priority {} advert from {sender} (ours {})", advert.priority, self.priority)
            } else {
                format!(
                    "equal priority {} advert from higher address {sender} (ours {})",
                    advert.priority, self.settings.primary_address
                )
            };
            self.role = Role::Backup;
            self.active = Some((sender, advert.priority));
            self.waiting = Waiting::Adverts(sender);
            self.preempt_after = None;
            self.last_heard = now;
            self.master_adver_interval = centiseconds(advert.max_adver_int);
            self.arm_down_timer(now, self.master_down_interval());
            self.last_reply = None;
            return vec![Action::BecomeBackup { cause: Cause::HigherPriority, reason }];
        }
        // Two active routers (a split brain healing): RFC 9568 re-advertises at once so the other one
        // steps down, and re-announces the address so clients that followed the other one come back
        // (keepalived#166: without it they keep the wrong MAC). At most once per advert interval: adverts are
        // unauthenticated, and a flood of them must not become a flood of broadcasts.
        if !self.may_reply(now) {
            return Vec::new();
        }
        self.arm_adver_timer(now);
        vec![Action::SendAdvert { priority: self.priority }, Action::SendGratuitousArp]
    }

    /// Whether an active router may answer another router's advert now (at most once per advert interval).
    fn may_reply(&mut self, now: Duration) -> bool {
        let interval = centiseconds(self.settings.advert_interval);
        if self.last_reply.is_some_and(|at| now < at + interval) {
            return false;
        }
        self.last_reply = Some(now);
        true
    }

    /// RFC 5798 §6.4.1 (owner) and §6.4.2 (down timer): advertise, take the address, announce it, start
    /// Adver_Timer.
    fn become_active(&mut self, now: Duration, cause: Cause, reason: String) -> Vec<Action> {
        self.role = Role::Active;
        self.active = None;
        self.preempt_after = None;
        self.last_reply = None;
        self.arm_adver_timer(now);
        vec![
            Action::SendAdvert { priority: self.priority },
            Action::BecomeActive { cause, reason },
            Action::SendGratuitousArp,
        ]
    }

    fn arm_adver_timer(&mut self, now: Duration) {
        self.deadline = Some(now + centiseconds(self.settings.advert_interval));
    }

    fn arm_down_timer(&mut self, now: Duration, after: Duration) {
        self.deadline = Some(now + after);
    }
}

fn centiseconds(cs: u16) -> Duration {
    CENTISECOND * u32::from(cs)
}

/// Seconds with two decimals, for log lines.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const LOWER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const HIGHER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn settings(priority: u8, advert_interval: u16) -> Settings {
        Settings {
            vrid: 51,
            priority,
            advert_interval,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_address: ME,
        }
    }

    fn router(priority: u8) -> Router {
        Router::new(settings(priority, 100)).unwrap()
    }

    fn advert(priority: u8, max_adver_int: u16) -> Advert {
        Advert { vrid: 51, priority, max_adver_int, addresses: vec![VIP] }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// The RFC 5798 §6.4.2 sequence: advert, take the address, gratuitous ARP.
    fn is_become_active(actions: &[Action]) -> bool {
        matches!(actions, [Action::SendAdvert { .. }, Action::BecomeActive { .. }, Action::SendGratuitousArp])
    }

    fn cause(actions: &[Action]) -> Option<Cause> {
        actions.iter().find_map(|a| match a {
            Action::BecomeActive { cause, .. } | Action::BecomeBackup { cause, .. } => Some(*cause),
            _ => None,
        })
    }

    fn reason(actions: &[Action]) -> &str {
        actions
            .iter()
            .find_map(|a| match a {
                Action::BecomeActive { reason, .. } | Action::BecomeBackup { reason, .. } => Some(&**reason),
                _ => None,
            })
            .unwrap_or("")
    }

    /// A router that is Active at t = 10 s after its down timer fired.
    fn active_router(priority: u8) -> Router {
        let mut r = router(priority);
        r.start(Duration::ZERO);
        let actions = r.on_timer(s(10.0));
        assert!(is_become_active(&actions));
        r
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let mut bad = settings(100, 100);
        bad.vrid = 0;
        assert!(Router::new(bad).is_err());
        assert!(Router::new(settings(0, 100)).is_err());
        assert!(Router::new(settings(100, 0)).is_err());
        assert!(Router::new(settings(100, 4096)).is_err());
        assert!(Router::new(settings(100, 4095)).is_ok());
    }

    #[test]
    fn starts_in_initialize_with_no_timer() {
        let r = router(100);
        assert_eq!(r.role(), Role::Initialize);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.active_router(), None);
    }

    #[test]
    fn worked_values_of_master_down_interval() {
        // vrrp.md §2: 3.609 s at 100, 3.414 s at 150, 3.008 s at 254 (1 s adverts), 0.361 s at 100 and 10 cs.
        assert_eq!(router(100).master_down_interval(), ms(3609) + Duration::from_micros(375));
        assert_eq!(router(150).master_down_interval(), Duration::from_nanos(3_414_062_500));
        assert_eq!(router(254).master_down_interval(), Duration::from_nanos(3_007_812_500));
        let fast = Router::new(settings(100, 10)).unwrap();
        assert_eq!(fast.master_down_interval(), Duration::from_nanos(360_937_500));
        assert_eq!(router(100).skew_time(), Duration::from_nanos(609_375_000));
    }

    #[test]
    fn startup_below_255_becomes_backup_with_master_down_timer() {
        let mut r = router(150);
        let actions = r.start(s(1.0));
        assert_eq!(actions.len(), 1);
        assert!(matches!(actions[0], Action::BecomeBackup { .. }));
        assert_eq!(r.role(), Role::Backup);
        assert_eq!(r.next_deadline(), Some(s(1.0) + Duration::from_nanos(3_414_062_500)));
        assert_eq!(r.master_adver_interval(), s(1.0));
    }

    #[test]
    fn address_owner_starts_active_immediately() {
        let mut r = router(255);
        let actions = r.start(s(2.0));
        assert!(is_become_active(&actions));
        assert_eq!(actions[0], Action::SendAdvert { priority: 255 });
        assert_eq!(cause(&actions), Some(Cause::Startup));
        assert_eq!(r.role(), Role::Active);
        assert_eq!(r.next_deadline(), Some(s(3.0)));
        assert_eq!(r.active_router(), Some(ME));
    }

    #[test]
    fn start_twice_does_nothing() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        assert!(r.start(s(1.0)).is_empty());
        assert_eq!(r.next_deadline(), Some(ms(3609) + Duration::from_micros(375)));
    }

    #[test]
    fn backup_becomes_active_when_master_down_timer_fires() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 100));
        let deadline = s(1.0) + ms(3609) + Duration::from_micros(375);
        assert_eq!(r.next_deadline(), Some(deadline));
        let actions = r.on_timer(deadline);
        assert!(is_become_active(&actions));
        assert_eq!(actions[0], Action::SendAdvert { priority: 100 });
        assert_eq!(cause(&actions), Some(Cause::MasterDown));
        assert_eq!(reason(&actions), "master down timer expired after 3.61 s without adverts from 10.0.0.9");
        assert_eq!(r.role(), Role::Active);
        assert_eq!(r.next_deadline(), Some(deadline + s(1.0)));
    }

    #[test]
    fn down_timer_reason_without_any_active_router() {
        let mut r = router(150);
        r.start(Duration::ZERO);
        let actions = r.on_timer(r.next_deadline().unwrap());
        assert_eq!(reason(&actions), "master down timer expired after 3.41 s without adverts from an active router");
    }

    #[test]
    fn timer_called_early_does_nothing() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        let deadline = r.next_deadline().unwrap();
        assert!(r.on_timer(deadline - Duration::from_nanos(1)).is_empty());
        assert_eq!(r.role(), Role::Backup);
        assert_eq!(r.next_deadline(), Some(deadline));
    }

    #[test]
    fn backup_advert_resets_master_down_timer() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(3.0), HIGHER_ADDR, &advert(200, 100));
        assert_eq!(r.next_deadline(), Some(s(3.0) + ms(3609) + Duration::from_micros(375)));
        assert!(r.on_timer(s(3.61)).is_empty());
        assert_eq!(r.role(), Role::Backup);
        assert_eq!(r.active_router(), Some(HIGHER_ADDR));
    }

    #[test]
    fn backup_adopts_active_routers_interval() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 10));
        assert_eq!(r.master_adver_interval(), ms(100));
        // 3 × 0.1 s + (156 × 0.1 s) / 256 = 0.3609375 s
        assert_eq!(r.next_deadline(), Some(s(1.0) + Duration::from_nanos(360_937_500)));
    }

    #[test]
    fn backup_accepts_equal_priority_advert() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(3.0), LOWER_ADDR, &advert(100, 100));
        assert_eq!(r.next_deadline(), Some(s(3.0) + ms(3609) + Duration::from_micros(375)));
        assert_eq!(r.active_router(), Some(LOWER_ADDR));
    }

    #[test]
    fn priority_zero_advert_cuts_wait_to_skew_time() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 100));
        r.on_advert(s(2.0), HIGHER_ADDR, &advert(0, 100));
        // vrrp.md: 0.609 s at priority 100 (LAB: 0.610 s).
        assert_eq!(r.next_deadline(), Some(s(2.0) + Duration::from_nanos(609_375_000)));
        assert_eq!(r.active_router(), None);
        let actions = r.on_timer(s(2.0) + Duration::from_nanos(609_375_000));
        assert!(is_become_active(&actions));
        assert_eq!(
            reason(&actions),
            "active router 10.0.0.9 stopped (priority 0 advert); took over after skew time 0.61 s"
        );
        assert_eq!(cause(&actions), Some(Cause::PeerStopped));
    }

    #[test]
    fn priority_zero_skew_uses_the_adopted_interval() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 50));
        r.on_advert(s(1.5), HIGHER_ADDR, &advert(0, 50));
        assert_eq!(r.next_deadline(), Some(s(1.5) + Duration::from_nanos(304_687_500)));
    }

    #[test]
    fn backup_discards_lower_priority_when_preempting() {
        // LAB: a priority-150 node beside a priority-100 master takes over ~3.4 s after start.
        let mut r = router(150);
        r.start(Duration::ZERO);
        let deadline = r.next_deadline().unwrap();
        for t in [0.5, 1.5, 2.5] {
            assert!(r.on_advert(s(t), LOWER_ADDR, &advert(100, 100)).is_empty());
            assert_eq!(r.next_deadline(), Some(deadline), "down timer must keep running");
        }
        assert_eq!(r.active_router(), Some(LOWER_ADDR));
        let actions = r.on_timer(deadline);
        assert!(is_become_active(&actions));
        assert_eq!(
            reason(&actions),
            "preempting lower priority 100 active router 10.0.0.1 (ours 150): master down timer expired after 3.41 s"
        );
        assert_eq!(cause(&actions), Some(Cause::Preempt));
    }

    #[test]
    fn discarded_lower_advert_does_not_adopt_its_interval() {
        let mut r = router(150);
        r.start(Duration::ZERO);
        r.on_advert(s(0.5), LOWER_ADDR, &advert(100, 10));
        assert_eq!(r.master_adver_interval(), s(1.0));
    }

    #[test]
    fn backup_without_preempt_accepts_lower_priority() {
        let mut r = Router::new(Settings { preempt: false, ..settings(150, 100) }).unwrap();
        r.start(Duration::ZERO);
        r.on_advert(s(3.0), LOWER_ADDR, &advert(100, 100));
        assert_eq!(r.next_deadline(), Some(s(3.0) + Duration::from_nanos(3_414_062_500)));
        assert!(r.on_timer(s(3.5)).is_empty());
        assert_eq!(r.role(), Role::Backup);
    }

    #[test]
    fn preempt_delay_holds_preemption_after_startup() {
        let mut r = Router::new(Settings { preempt_delay: s(10.0), ..settings(150, 100) }).unwrap();
        r.start(Duration::ZERO);
        // Lower-priority adverts are accepted (timer reset) while the delay runs...
        for t in 1..10 {
            r.on_advert(s(f64::from(t)), LOWER_ADDR, &advert(100, 100));
            assert_eq!(r.next_deadline(), Some(s(f64::from(t)) + Duration::from_nanos(3_414_062_500)));
        }
        // ...and discarded once it has elapsed, so the down timer preempts.
        r.on_advert(s(10.0), LOWER_ADDR, &advert(100, 100));
        let deadline = s(9.0) + Duration::from_nanos(3_414_062_500);
        assert_eq!(r.next_deadline(), Some(deadline));
        assert!(is_become_active(&r.on_timer(deadline)));
    }

    #[test]
    fn held_preemption_accepts_a_lower_active_until_released() {
        let mut r = router(150);
        r.start(Duration::ZERO);
        r.hold_preemption(true);
        for t in 1..6 {
            r.on_advert(s(f64::from(t)), LOWER_ADDR, &advert(100, 100));
            assert_eq!(r.next_deadline(), Some(s(f64::from(t)) + Duration::from_nanos(3_414_062_500)), "accepted");
        }
        assert!(r.on_timer(s(6.0)).is_empty());
        assert_eq!(r.role(), Role::Backup);
        r.hold_preemption(false);
        // Discarded again: the timer armed by the last accepted advert preempts.
        r.on_advert(s(6.0), LOWER_ADDR, &advert(100, 100));
        let deadline = s(5.0) + Duration::from_nanos(3_414_062_500);
        assert_eq!(r.next_deadline(), Some(deadline));
        assert!(is_become_active(&r.on_timer(deadline)));
    }

    #[test]
    fn preempt_delay_restarts_after_a_higher_priority_active() {
        let mut r = Router::new(Settings { preempt_delay: s(5.0), ..settings(150, 100) }).unwrap();
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 100));
        // A lower-priority router takes over at t=20: the delay counts from when it is first heard.
        r.on_advert(s(20.0), LOWER_ADDR, &advert(100, 100));
        r.on_advert(s(24.0), LOWER_ADDR, &advert(100, 100));
        assert_eq!(r.next_deadline(), Some(s(24.0) + Duration::from_nanos(3_414_062_500)));
        r.on_advert(s(25.0), LOWER_ADDR, &advert(100, 100));
        assert_eq!(r.next_deadline(), Some(s(24.0) + Duration::from_nanos(3_414_062_500)));
    }

    #[test]
    fn active_sends_advert_when_adver_timer_fires() {
        let mut r = active_router(100);
        assert_eq!(r.next_deadline(), Some(s(11.0)));
        assert_eq!(r.on_timer(s(11.0)), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(r.next_deadline(), Some(s(12.0)));
    }

    #[test]
    fn late_adver_timer_rearms_from_now_without_a_burst() {
        let mut r = active_router(100);
        assert_eq!(r.on_timer(s(15.5)), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(r.next_deadline(), Some(s(16.5)));
        assert!(r.on_timer(s(15.5)).is_empty());
    }

    #[test]
    fn active_steps_down_on_higher_priority_advert() {
        let mut r = active_router(100);
        let actions = r.on_advert(s(10.5), LOWER_ADDR, &advert(200, 50));
        assert_eq!(
            actions,
            [Action::BecomeBackup {
                cause: Cause::HigherPriority,
                reason: "higher priority 200 advert from 10.0.0.1 (ours 100)".into()
            }]
        );
        assert_eq!(r.role(), Role::Backup);
        assert_eq!(r.active_router(), Some(LOWER_ADDR));
        // It adopts the new active router's interval: 3 × 0.5 + 156 × 0.5 / 256.
        assert_eq!(r.master_adver_interval(), ms(500));
        assert_eq!(r.next_deadline(), Some(s(10.5) + Duration::from_nanos(1_804_687_500)));
    }

    #[test]
    fn active_steps_down_on_equal_priority_from_higher_address() {
        let mut r = active_router(100);
        let actions = r.on_advert(s(10.5), HIGHER_ADDR, &advert(100, 100));
        assert_eq!(
            actions,
            [Action::BecomeBackup {
                cause: Cause::HigherPriority,
                reason: "equal priority 100 advert from higher address 10.0.0.9 (ours 10.0.0.5)".into()
            }]
        );
        assert_eq!(r.role(), Role::Backup);
    }

    #[test]
    fn equal_priority_tie_break_compares_addresses_unsigned() {
        // 10.0.0.5 < 192.168.0.1 as unsigned network-order integers (a signed compare would flip it).
        let mut r = active_router(100);
        let high = Ipv4Addr::new(192, 168, 0, 1);
        r.on_advert(s(10.5), high, &advert(100, 100));
        assert_eq!(r.role(), Role::Backup);
    }

    #[test]
    fn active_answers_equal_priority_from_lower_address_and_stays() {
        let mut r = active_router(100);
        let actions = r.on_advert(s(10.5), LOWER_ADDR, &advert(100, 100));
        assert_eq!(actions, [Action::SendAdvert { priority: 100 }, Action::SendGratuitousArp]);
        assert_eq!(r.role(), Role::Active);
    }

    #[test]
    fn active_readvertises_and_sends_garp_on_lower_priority_advert() {
        // RFC 9568 / keepalived "forcing new election": heal a split brain at once.
        let mut r = active_router(150);
        let actions = r.on_advert(s(10.4), LOWER_ADDR, &advert(100, 100));
        assert_eq!(actions, [Action::SendAdvert { priority: 150 }, Action::SendGratuitousArp]);
        assert_eq!(r.role(), Role::Active);
        assert_eq!(r.next_deadline(), Some(s(11.4)));
    }

    #[test]
    fn active_readvertises_on_priority_zero_advert() {
        let mut r = active_router(100);
        let actions = r.on_advert(s(10.3), HIGHER_ADDR, &advert(0, 100));
        assert_eq!(actions, [Action::SendAdvert { priority: 100 }]);
        assert_eq!(r.role(), Role::Active);
        assert_eq!(r.next_deadline(), Some(s(11.3)));
    }

    #[test]
    fn shutdown_from_active_sends_priority_zero() {
        let mut r = active_router(100);
        let actions = r.shutdown(s(10.5));
        assert_eq!(actions, [Action::SendAdvert { priority: 0 }, Action::BecomeInitialize]);
        assert_eq!(r.role(), Role::Initialize);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.active_router(), None);
    }

    #[test]
    fn shutdown_from_backup_cancels_down_timer() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        assert_eq!(r.shutdown(s(1.0)), [Action::BecomeInitialize]);
        assert_eq!(r.role(), Role::Initialize);
        assert_eq!(r.next_deadline(), None);
        assert!(r.on_timer(s(100.0)).is_empty());
    }

    #[test]
    fn shutdown_in_initialize_does_nothing() {
        let mut r = router(100);
        assert!(r.shutdown(Duration::ZERO).is_empty());
    }

    #[test]
    fn restart_after_shutdown_is_backup_again() {
        let mut r = active_router(100);
        r.shutdown(s(11.0));
        let actions = r.start(s(12.0));
        assert!(matches!(actions[..], [Action::BecomeBackup { .. }]));
        assert_eq!(r.next_deadline(), Some(s(12.0) + ms(3609) + Duration::from_micros(375)));
    }

    #[test]
    fn initialize_ignores_adverts() {
        let mut r = router(100);
        assert!(r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 100)).is_empty());
        assert_eq!(r.role(), Role::Initialize);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn advert_for_another_vrid_is_ignored() {
        let mut r = active_router(100);
        let mut other = advert(200, 100);
        other.vrid = 52;
        assert!(r.on_advert(s(10.5), HIGHER_ADDR, &other).is_empty());
        assert_eq!(r.role(), Role::Active);
    }

    #[test]
    fn lowered_priority_readvertises_at_once_without_stepping_down() {
        let mut r = active_router(150);
        let actions = r.set_priority(s(10.2), 90);
        assert_eq!(actions, [Action::SendAdvert { priority: 90 }]);
        assert_eq!(r.role(), Role::Active);
        assert_eq!(r.priority(), 90);
        assert_eq!(r.next_deadline(), Some(s(11.2)));
        assert_eq!(r.on_timer(s(11.2)), [Action::SendAdvert { priority: 90 }]);
    }

    #[test]
    fn backup_preempts_an_active_whose_priority_dropped() {
        // The other side of the backend-loss penalty: node A (150) active, node B (100) backup.
        let mut a = active_router(150);
        let mut b = router(100);
        b.start(Duration::ZERO);
        b.on_advert(s(10.0), ME, &advert(150, 100));
        let Action::SendAdvert { priority } = a.set_priority(s(10.2), 50)[0] else {
            panic!("expected an advert");
        };
        b.on_advert(s(10.2), ME, &advert(priority, 100));
        let deadline = s(10.0) + ms(3609) + Duration::from_micros(375);
        assert_eq!(b.next_deadline(), Some(deadline));
        assert!(is_become_active(&b.on_timer(deadline)));
        let back = a.on_advert(deadline, LOWER_ADDR, &advert(100, 100));
        assert!(matches!(back[..], [Action::BecomeBackup { .. }]));
    }

    #[test]
    fn set_priority_to_same_value_does_nothing() {
        let mut r = active_router(150);
        assert!(r.set_priority(s(10.2), 150).is_empty());
        assert_eq!(r.next_deadline(), Some(s(11.0)));
    }

    #[test]
    fn set_priority_clamps_zero_to_one() {
        let mut r = active_router(150);
        assert_eq!(r.set_priority(s(10.2), 0), [Action::SendAdvert { priority: 1 }]);
    }

    #[test]
    fn raised_backup_priority_preempts_through_the_down_timer() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), LOWER_ADDR, &advert(120, 100));
        assert!(r.set_priority(s(1.5), 200).is_empty());
        assert_eq!(r.role(), Role::Backup);
        let deadline = r.next_deadline().unwrap();
        r.on_advert(s(2.0), LOWER_ADDR, &advert(120, 100));
        assert_eq!(r.next_deadline(), Some(deadline));
    }

    #[test]
    fn advert_helper_uses_own_interval_and_vrid() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.on_advert(s(1.0), HIGHER_ADDR, &advert(200, 10));
        assert_eq!(r.advert(100, &[VIP]), advert(100, 100));
    }

    #[test]
    fn active_answers_lower_priority_adverts_at_most_once_per_interval() {
        let mut r = active_router(150);
        assert_eq!(
            r.on_advert(s(10.10), LOWER_ADDR, &advert(100, 100)),
            [Action::SendAdvert { priority: 150 }, Action::SendGratuitousArp]
        );
        // A flood within the same second (the interval is 1 s) costs nothing more.
        for i in 1..100 {
            let t = s(10.10) + ms(i * 9);
            assert!(r.on_advert(t, LOWER_ADDR, &advert(100, 100)).is_empty(), "reply at {t:?}");
            assert!(r.on_advert(t, HIGHER_ADDR, &advert(0, 100)).is_empty(), "priority-0 reply at {t:?}");
        }
        assert_eq!(r.role(), Role::Active);
        assert_eq!(r.next_deadline(), Some(s(11.10)), "the advert timer keeps its schedule");
        assert_eq!(r.on_advert(s(11.10), LOWER_ADDR, &advert(100, 100)).len(), 2, "one interval later it answers");
    }

    #[test]
    fn a_higher_priority_advert_is_never_rate_limited() {
        let mut r = active_router(150);
        r.on_advert(s(10.1), LOWER_ADDR, &advert(100, 100));
        let actions = r.on_advert(s(10.2), HIGHER_ADDR, &advert(200, 100));
        assert!(matches!(actions[..], [Action::BecomeBackup { cause: Cause::HigherPriority, .. }]));
    }

    #[test]
    fn fault_holds_nothing_runs_no_timer_and_restarts_as_backup() {
        let mut r = active_router(150);
        let actions = r.fault(s(10.5), "link down on eth0".into());
        assert_eq!(actions, [Action::BecomeFault { reason: "link down on eth0".into() }]);
        assert_eq!(r.role(), Role::Fault);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.active_router(), None);
        assert!(r.fault(s(10.6), "again".into()).is_empty(), "already in fault");
        assert!(r.on_advert(s(10.7), HIGHER_ADDR, &advert(200, 100)).is_empty(), "a faulty router hears nothing");
        assert!(r.on_timer(s(100.0)).is_empty());
        let actions = r.start(s(12.0));
        assert!(matches!(actions[..], [Action::BecomeBackup { cause: Cause::Startup, .. }]));
        assert_eq!(r.role(), Role::Backup, "back as a backup, so preemption decides");
        assert_eq!(r.next_deadline(), Some(s(12.0) + Duration::from_nanos(3_414_062_500)));
    }

    #[test]
    fn shutdown_from_fault_sends_nothing() {
        let mut r = router(100);
        r.start(Duration::ZERO);
        r.fault(s(1.0), "link down".into());
        assert_eq!(r.shutdown(s(2.0)), [Action::BecomeInitialize]);
    }

    /// An IPv6 router runs the same machine: its timers, and the tie-break on the link-local addresses compared as
    /// unsigned 128-bit integers.
    #[test]
    fn ipv6_router_elects_and_breaks_ties_on_its_link_local_address() {
        use std::net::Ipv6Addr;
        let me = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x5);
        let higher = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1, 0, 0, 0x1);
        let lower = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x4);
        let vip = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
        let settings = Settings {
            vrid: 51,
            priority: 100,
            advert_interval: 100,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_address: me,
        };
        let mut r = Router::new(settings).unwrap();
        r.start(s(0.0));
        assert_eq!(r.next_deadline(), Some(s(3.609375)));
        let peer = Advert { vrid: 51, priority: 100, max_adver_int: 100, addresses: vec![vip] };
        // A backup accepts an equal priority (RFC 5798 §6.4.2): its timer restarts, then fires when adverts stop.
        assert!(r.on_advert(s(1.0), lower, &peer).is_empty());
        assert_eq!(r.active_router(), Some(lower));
        assert_eq!(r.next_deadline(), Some(s(4.609375)));
        assert!(is_become_active(&r.on_timer(s(4.609375))));
        assert_eq!(r.active_router(), Some(me));
        assert_eq!(r.advert(100, &[vip]), peer);
        // Active: an equal priority from a lower address is answered, from a higher address it wins.
        assert_eq!(
            r.on_advert(s(4.7), lower, &peer),
            [Action::SendAdvert { priority: 100 }, Action::SendGratuitousArp]
        );
        let actions = r.on_advert(s(4.8), higher, &peer);
        assert_eq!(cause(&actions), Some(Cause::HigherPriority));
        assert_eq!(r.role(), Role::Backup);
        assert_eq!(r.active_router(), Some(higher));
    }
}
