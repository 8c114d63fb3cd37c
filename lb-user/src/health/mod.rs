//! Health checks: decides when a backend is up or down and reports only the changes.
//!
//! The module is split like the rest of the agent's engines:
//! - this file is the pure decision logic: a [`Tracker`] counts consecutive results against `rise`/`fall`, and a
//!   [`Checker`] adds the schedule (when the next probe is due). They take the current time as an argument and do
//!   no I/O, so tests drive them with virtual time;
//! - [`probe`] is the I/O edge: one TCP, HTTP or HTTPS probe, bounded by a timeout;
//! - [`spawn`] glues them in one tokio task per backend and sends a [`HealthEvent`] on each transition.
//!
//! # Semantics (what a keepalived/haproxy user should expect)
//! A backend starts *unknown*, which the agent must treat as not healthy, and the **first** probe result decides
//! at once: success marks it up, failure marks it down (haproxy's `init-state down`, keepalived's `alpha`). So
//! the first result is known within one interval of start: the first probe is due after a jitter of at most 10% of
//! the interval and never more than `interval - timeout`, and the probe is bounded by the timeout (which the config
//! keeps at or below the interval). Starting optimistic instead would send traffic to a dead backend
//! for `fall` intervals after every restart of the daemon.
//! After that, `fall` consecutive failures mark an up backend down and `rise` consecutive successes mark a down
//! backend up; a result of the other kind resets the count. `check = "none"` means always healthy.
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub mod probe;
mod runner;

pub use probe::{CheckKind, ProbeError, Prober, Settings};
pub use runner::spawn;

/// What the runner reports to the agent: a backend changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub backend: SocketAddr,
    pub healthy: bool,
    /// For the log: which rule fired and the last probe's result, e.g.
    /// `3 consecutive failures: connect to 10.0.0.11:6443: Connection refused (os error 111)`.
    pub reason: String,
}

/// What the tracker currently believes about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No probe has finished yet; not healthy.
    Unknown,
    Up,
    Down,
}

/// A change of state decided by a [`Tracker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub healthy: bool,
    pub reason: String,
}

/// Counts consecutive probe results of one backend against `rise` and `fall`.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: State,
    /// Consecutive results that disagree with `state` (failures while up, successes while down).
    streak: u32,
}

impl Tracker {
    /// `rise` and `fall` of 0 are taken as 1: "zero results needed" has no meaning for a result-driven change.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self { rise: rise.max(1), fall: fall.max(1), state: State::Unknown, streak: 0 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_healthy(&self) -> bool {
        self.state == State::Up
    }

    /// Feeds one probe result (`Ok` carries what succeeded, `Err` what failed, both for the reason text) and
    /// returns the transition it causes, if any.
    pub fn record<S: Display, E: Display>(&mut self, result: &Result<S, E>) -> Option<Transition> {
        let (next, reason) = match (self.state, result) {
            (State::Unknown, Ok(detail)) => (State::Up, format!("first check passed: {detail}")),
            (State::Unknown, Err(error)) => (State::Down, format!("first check failed: {error}")),
            (State::Up, Ok(_)) | (State::Down, Err(_)) => {
                self.streak = 0;
                return None;
            }
            (State::Up, Err(error)) => {
                self.streak += 1;
                if self.streak < self.fall {
                    return None;
                }
                (State::Down, format!("{}: {error}", consecutive(self.fall, "failure")))
            }
            (State::Down, Ok(detail)) => {
                self.streak += 1;
                if self.streak < self.rise {
                    return None;
                }
                (State::Up, format!("{}: {detail}", consecutive(self.rise, "success")))
            }
        };
        self.state = next;
        self.streak = 0;
        Some(Transition { healthy: next == State::Up, reason })
    }
}

fn consecutive(count: u32, what: &str) -> String {
    match (count, what) {
        (1, _) => format!("1 {what}"),
        (n, "success") => format!("{n} consecutive successes"),
        (n, _) => format!("{n} consecutive {what}s"),
    }
}

/// The smallest probe interval the checker uses: a zero interval would make the runner spin.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A [`Tracker`] plus the probe schedule; sans-IO: the caller probes when [`Checker::next_probe_at`] is reached and
/// hands the result back with the time it finished.
#[derive(Clone, Debug)]
pub struct Checker {
    tracker: Tracker,
    interval: Duration,
    next_probe: Instant,
}

impl Checker {
    /// The first probe is due at `now + first_delay` (see [`first_probe_delay`]); `interval` is raised to
    /// [`MIN_INTERVAL`] if smaller.
    pub fn new(now: Instant, interval: Duration, first_delay: Duration, tracker: Tracker) -> Self {
        Self { tracker, interval: interval.max(MIN_INTERVAL), next_probe: now + first_delay }
    }

    pub fn next_probe_at(&self) -> Instant {
        self.next_probe
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Records the result of the probe that was due, finished at `now`, and schedules the next one.
    ///
    /// Probes start at a fixed rate (due time + interval), so a slow backend does not stretch the period. A probe
    /// that overran its interval is followed at once, and the missed due times are dropped rather than caught up
    /// in a burst.
    pub fn on_result<S: Display, E: Display>(&mut self, now: Instant, result: &Result<S, E>) -> Option<Transition> {
        self.next_probe = (self.next_probe + self.interval).max(now);
        self.tracker.record(result)
    }
}

/// Delay before a backend's first probe: up to 10% of `interval`, so that many backends (and many nodes probing
/// the same backends after a common restart) do not probe in lockstep; but never more than `interval - timeout`,
/// so that a probe that takes its whole timeout still gives the first result within one interval of start.
/// Derived from the backend address and an `entropy` value (the runner passes the wall clock in nanoseconds),
/// which avoids a `rand` dependency and keeps this function deterministic for tests.
pub fn first_probe_delay(backend: SocketAddr, interval: Duration, timeout: Duration, entropy: u64) -> Duration {
    let max = (interval / 10).min(interval.saturating_sub(timeout)).as_nanos();
    if max == 0 {
        return Duration::ZERO;
    }
    // FNV-1a over the address and port, then the splitmix64 finaliser to spread nearby addresses apart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let octets = match backend.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    for byte in octets.iter().chain(&backend.port().to_be_bytes()) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = hash ^ entropy;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // `max` < 2^64 nanoseconds (584 years) for any sane interval; saturate rather than wrap for absurd ones.
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    Duration::from_nanos(z % max.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Result<&str, &str> = Ok("GET /readyz: 200");
    const FAIL: Result<&str, &str> = Err("connect to 10.0.0.11:6443: connection refused");

    fn up(rise: u32, fall: u32) -> Tracker {
        let mut t = Tracker::new(rise, fall);
        assert!(t.record(&OK).is_some());
        t
    }

    fn down(rise: u32, fall: u32) -> Tracker {
        let mut t = Tracker::new(rise, fall);
        assert!(t.record(&FAIL).is_some());
        t
    }

    #[test]
    fn a_new_backend_is_unknown_and_not_healthy() {
        let t = Tracker::new(2, 3);
        assert_eq!(t.state(), State::Unknown);
        assert!(!t.is_healthy());
    }

    #[test]
    fn the_first_success_marks_up_at_once_whatever_rise_is() {
        let mut t = Tracker::new(5, 3);
        let event = t.record(&OK).expect("a transition");
        assert!(event.healthy);
        assert_eq!(event.reason, "first check passed: GET /readyz: 200");
        assert_eq!(t.state(), State::Up);
    }

    #[test]
    fn the_first_failure_marks_down_at_once_whatever_fall_is() {
        let mut t = Tracker::new(2, 5);
        let event = t.record(&FAIL).expect("a transition");
        assert!(!event.healthy);
        assert_eq!(event.reason, "first check failed: connect to 10.0.0.11:6443: connection refused");
        assert_eq!(t.state(), State::Down);
    }

    #[test]
    fn an_up_backend_goes_down_after_fall_consecutive_failures() {
        let mut t = up(2, 3);
        assert_eq!(t.record(&FAIL), None);
        assert_eq!(t.record(&FAIL), None);
        assert!(t.is_healthy());
        let event = t.record(&FAIL).expect("the third failure");
        assert!(!event.healthy);
        assert_eq!(event.reason, "3 consecutive failures: connect to 10.0.0.11:6443: connection refused");
        assert_eq!(t.state(), State::Down);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut t = up(2, 3);
        assert_eq!(t.record(&FAIL), None);
        assert_eq!(t.record(&FAIL), None);
        assert_eq!(t.record(&OK), None);
        assert_eq!(t.record(&FAIL), None);
        assert_eq!(t.record(&FAIL), None);
        assert!(t.is_healthy(), "only two failures since the last success");
        assert!(t.record(&FAIL).is_some());
    }

    #[test]
    fn a_down_backend_comes_up_after_rise_consecutive_successes() {
        let mut t = down(2, 3);
        assert_eq!(t.record(&OK), None);
        let event = t.record(&OK).expect("the second success");
        assert!(event.healthy);
        assert_eq!(event.reason, "2 consecutive successes: GET /readyz: 200");
        assert!(t.is_healthy());
    }

    #[test]
    fn a_failure_resets_the_success_count() {
        let mut t = down(3, 3);
        assert_eq!(t.record(&OK), None);
        assert_eq!(t.record(&OK), None);
        assert_eq!(t.record(&FAIL), None);
        assert_eq!(t.record(&OK), None);
        assert_eq!(t.record(&OK), None);
        assert!(!t.is_healthy(), "only two successes since the last failure");
        assert!(t.record(&OK).is_some());
    }

    #[test]
    fn results_that_confirm_the_state_report_nothing() {
        let mut t = up(2, 3);
        for _ in 0..10 {
            assert_eq!(t.record(&OK), None);
        }
        let mut t = down(2, 3);
        for _ in 0..10 {
            assert_eq!(t.record(&FAIL), None);
        }
    }

    #[test]
    fn rise_and_fall_of_zero_or_one_change_state_on_a_single_result() {
        for n in [0, 1] {
            let mut t = up(n, n);
            assert_eq!(t.record(&FAIL).map(|e| e.reason), Some(format!("1 failure: {}", FAIL.unwrap_err())));
            assert_eq!(t.record(&OK).map(|e| e.reason), Some(format!("1 success: {}", OK.unwrap())));
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_probe_is_due_within_a_tenth_of_the_interval() {
        let interval = Duration::from_secs(2);
        for i in 0..200u16 {
            let backend = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 6443));
            for entropy in [0, 1, u64::MAX, 1_764_150_000_000_000_000] {
                let delay = first_probe_delay(backend, interval, TIMEOUT, entropy);
                assert!(delay <= interval / 10, "{backend} {entropy}");
            }
        }
        let backend = SocketAddr::from(([10, 0, 0, 1], 1));
        assert_eq!(first_probe_delay(backend, Duration::ZERO, Duration::ZERO, 7), Duration::ZERO);
    }

    #[test]
    fn a_long_timeout_shrinks_the_jitter_to_what_the_interval_leaves() {
        let interval = Duration::from_secs(2);
        for i in 1..=100u8 {
            let backend = SocketAddr::from(([10, 0, 0, i], 6443));
            let tight = first_probe_delay(backend, interval, Duration::from_millis(1950), 42);
            assert!(tight <= Duration::from_millis(50), "{backend}: {tight:?}");
            assert_eq!(first_probe_delay(backend, interval, interval, 42), Duration::ZERO, "{backend}");
        }
    }

    #[test]
    fn first_probe_delays_spread_over_backends() {
        // Lockstep probing is what the jitter is for: 100 neighbouring backends must not share a few delays.
        let interval = Duration::from_secs(2);
        let mut delays: Vec<Duration> = (1..=100u8)
            .map(|i| first_probe_delay(SocketAddr::from(([10, 0, 0, i], 6443)), interval, TIMEOUT, 42))
            .collect();
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 95, "only {} distinct delays", delays.len());
        let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
        assert!(mean > interval / 40 && mean < interval * 3 / 40, "mean delay {mean:?} is not near 5% of 2s");
    }

    #[test]
    fn the_jitter_changes_with_entropy() {
        let backend = SocketAddr::from(([10, 0, 0, 11], 6443));
        let interval = Duration::from_secs(2);
        let distinct: std::collections::HashSet<Duration> =
            (0..50u64).map(|e| first_probe_delay(backend, interval, TIMEOUT, e * 1_000_003)).collect();
        assert!(distinct.len() > 45, "only {} distinct delays", distinct.len());
    }

    #[test]
    fn probes_are_due_every_interval_from_the_previous_due_time() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(2);
        let jitter = Duration::from_millis(150);
        let mut c = Checker::new(t0, interval, jitter, Tracker::new(2, 3));
        assert_eq!(c.next_probe_at(), t0 + jitter);
        // Each probe takes 300 ms; the schedule must not drift by that much per period.
        for k in 1..=5u32 {
            let finished = c.next_probe_at() + Duration::from_millis(300);
            c.on_result(finished, &OK);
            assert_eq!(c.next_probe_at(), t0 + jitter + interval * k);
        }
    }

    #[test]
    fn a_probe_that_overruns_the_interval_is_followed_at_once_without_a_burst() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(1);
        let mut c = Checker::new(t0, interval, Duration::ZERO, Tracker::new(2, 3));
        let finished = t0 + Duration::from_millis(3500);
        c.on_result(finished, &FAIL);
        assert_eq!(c.next_probe_at(), finished, "next probe right away, not at t0 + 1s, 2s, 3s");
        c.on_result(finished + Duration::from_millis(10), &FAIL);
        assert_eq!(c.next_probe_at(), finished + interval);
    }

    #[test]
    fn the_first_result_is_known_within_one_interval_of_start() {
        // Virtual time: every probe takes its whole timeout (the worst case), for timeouts up to the interval.
        let t0 = Instant::now();
        let interval = Duration::from_secs(2);
        for timeout_ms in [1, 1000, 1800, 1900, 1999, 2000] {
            let timeout = Duration::from_millis(timeout_ms);
            for i in 1..=50u8 {
                let backend = SocketAddr::from(([10, 0, 0, i], 6443));
                let delay = first_probe_delay(backend, interval, timeout, 99);
                let mut c = Checker::new(t0, interval, delay, Tracker::new(2, 3));
                let finished = c.next_probe_at() + timeout;
                assert!(c.on_result(finished, &FAIL).is_some());
                assert!(
                    finished - t0 <= interval,
                    "timeout {timeout:?}, {backend}: first result after {:?}",
                    finished - t0
                );
                assert_eq!(c.tracker().state(), State::Down);
            }
        }
    }

    #[test]
    fn down_is_reported_fall_intervals_after_the_backend_dies() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(2);
        let mut c = Checker::new(t0, interval, Duration::ZERO, Tracker::new(2, 3));
        let mut events = Vec::new();
        // Up for 3 probes, then dead: every later probe fails.
        for k in 0..8u32 {
            let now = c.next_probe_at();
            let result = if k < 3 { OK } else { FAIL };
            if let Some(t) = c.on_result(now, &result) {
                events.push((now - t0, t.healthy));
            }
        }
        assert_eq!(events, [(Duration::ZERO, true), (interval * 5, false)]);
    }

    #[test]
    fn a_zero_interval_is_raised_to_the_minimum() {
        let t0 = Instant::now();
        let mut c = Checker::new(t0, Duration::ZERO, Duration::ZERO, Tracker::new(1, 1));
        c.on_result(t0, &OK);
        assert_eq!(c.next_probe_at(), t0 + MIN_INTERVAL);
    }
}
