//! What the soak's observers saw, judged against the windows its faults opened (pure: every time is a
//! `Duration` since the soak's start).
//!
//! - A new-connection request may fail only inside the window of a failover or a backend flap.
//! - A long-lived connection may break only inside the window of something that took its backend away (a flap,
//!   a reload that removed it; a stream may notice a little later, see [`STREAM_NOTICE`]): NAT connections
//!   survive failovers (README, "NAT or DSR"), except those re-hashed to another backend ([`Ending::Repicked`]).
//! - Outside the failover windows every ARP request for the VIP is answered by exactly one node, the one that
//!   should be active.
//! - Each window's longest time without an answer stays within its bound plus [`SLACK`](super::bounds::SLACK).
//! - An agent's resident memory and open files stay within 10 % of their level after warm-up.

use std::time::Duration;

use serde::Serialize;

use crate::soak::bounds::Kind;
use crate::topology::MacAddr;

/// The time a fault may cost clients: from `open` (the fault, or the take-over for a preemption) to `close`
/// (`open` + bound + slack).
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The event that opened it (its index in the run).
    pub event: usize,
    pub kind: Kind,
    pub open: Duration,
    pub close: Duration,
    pub bound: Duration,
    /// Backends taken away by the event: long-lived connections to them may break inside the window.
    pub backends: Vec<String>,
}

/// One request: on a new connection (the probe), or one of a long-lived connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub started: Duration,
    pub ended: Duration,
    /// `Ok(backend)` or `Err(error)`.
    pub outcome: Result<String, String>,
    /// A request that missed the probe's deadline: what it got in the end, within the probe's grace (see
    /// [`ProbeSpec::grace`](crate::probe::ProbeSpec::grace)).
    pub late: Option<Result<String, String>>,
}

impl Request {
    /// Failed for good: an error, or no answer even within the grace. A late answer is slow, not failed.
    pub fn failed(&self) -> bool {
        self.outcome.is_err() && !matches!(self.late, Some(Ok(_)))
    }

    /// Missed the probe's deadline but was answered within the grace.
    pub fn answered_late(&self) -> bool {
        self.outcome.is_err() && matches!(self.late, Some(Ok(_)))
    }
}

/// A long-lived connection from its opening to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// "request loop" (the client asks every 100 ms) or "stream" (the server pushes a line every 50 ms).
    pub what: &'static str,
    pub backend: String,
    pub opened: Duration,
    pub ended: Duration,
    /// Why it broke, if it did (the soak closes healthy ones itself).
    pub broken: Option<String>,
    /// Answers from a backend other than its own: a spliced connection.
    pub wrong_backend: usize,
    /// Its longest time without an answer (a request loop) or a line (a stream).
    pub longest_gap: Duration,
    /// A request loop's requests after the first.
    pub requests: Vec<Request>,
}

/// One ARP request for the VIP and the distinct MACs that answered it within the watch period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpRound {
    pub sent: Duration,
    pub answers: Vec<MacAddr>,
}

/// Something that should not have happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// Seconds since the soak started, when known.
    pub at: Option<f64>,
    /// The event it belongs to (or that came last before it).
    pub event: Option<usize>,
    pub what: String,
    pub detail: String,
}

impl Violation {
    pub fn new(at: Option<Duration>, what: &str, detail: impl Into<String>) -> Self {
        Violation { at: at.map(|d| d.as_secs_f64()), event: None, what: what.to_owned(), detail: detail.into() }
    }
}

fn overlaps(a: (Duration, Duration), b: (Duration, Duration)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// What clients saw inside one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowFigures {
    /// The longest time between two answers to new-connection requests that touches the window.
    pub longest_gap: Duration,
    /// New-connection requests overlapping the window, and how many of them failed.
    pub requests: usize,
    pub failed: usize,
    /// The slowest request on a long-lived connection overlapping the window (TCP retransmits ride through).
    pub slowest_long_lived: Duration,
}

/// The figures of `window`; `probe` is sorted by start, `end` is when the probe stopped.
pub fn window_figures(window: &Window, probe: &[Request], connections: &[Connection], end: Duration) -> WindowFigures {
    let span = (window.open, window.close);
    let mut figures = WindowFigures::default();
    let mut last_answer: Option<Duration> = None;
    for r in probe {
        if overlaps((r.started, r.ended), span) {
            figures.requests += 1;
            if r.outcome.is_err() {
                figures.failed += 1;
            }
        }
        if r.outcome.is_ok() {
            if let Some(prev) = last_answer
                && prev <= window.close
                && r.ended >= window.open
            {
                figures.longest_gap = figures.longest_gap.max(r.ended.saturating_sub(prev));
            }
            last_answer = Some(last_answer.map_or(r.ended, |p| p.max(r.ended)));
        }
    }
    // No answer after the window at all: the outage lasted to the end.
    if let Some(prev) = last_answer
        && prev <= window.close
    {
        figures.longest_gap = figures.longest_gap.max(end.saturating_sub(prev.max(window.open)));
    }
    for c in connections {
        for r in &c.requests {
            if overlaps((r.started, r.ended), span) {
                figures.slowest_long_lived = figures.slowest_long_lived.max(r.ended.saturating_sub(r.started));
            }
        }
    }
    figures
}

/// Whether `window` excuses the failed new-connection request `r` overlapping it: a failover or a flap any failure;
/// a reload that removed a backend a reset (the connection may have been opened to that backend just before the
/// active node dropped it, and a removed backend loses its connections: README).
fn excuses(window: &Window, r: &Request) -> bool {
    if !overlaps((r.started, r.ended), (window.open, window.close)) {
        return false;
    }
    let reset = r.outcome.as_ref().err().is_some_and(|e| e == "reset");
    window.kind.excuses_new_connections() || (window.kind == Kind::Reload && !window.backends.is_empty() && reset)
}

/// Failed new-connection requests outside every window that excuses them.
pub fn stray_failures(windows: &[Window], probe: &[Request]) -> Vec<Violation> {
    probe
        .iter()
        .filter(|r| r.failed())
        .filter(|r| !windows.iter().any(|w| excuses(w, r)))
        .map(|r| {
            Violation::new(
                Some(r.started),
                "failed request outside the windows",
                format!(
                    "a request on a new connection started at {} failed after {} ms: {}{}",
                    secs(r.started),
                    r.ended.saturating_sub(r.started).as_millis(),
                    r.outcome.as_ref().err().map_or("", String::as_str),
                    match &r.late {
                        Some(Err(e)) => format!(", and no answer came later either ({e})"),
                        _ => String::new(),
                    }
                ),
            )
        })
        .collect()
}

/// How a long-lived connection ended, judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Closed by the soak at the end of its lifetime.
    Kept,
    /// Broke inside a window that took its backend away (a flap, a reload that removed it): expected.
    WithItsBackend,
    /// Broke across a failover, but the service had other backends when it was opened than when its first packet
    /// reached the node taking over (it was opened during a flap or before a reload, or a reload or flap changed
    /// the set after the failover and before the connection's next packet): that node, which has no connection
    /// state, hashes it with its current table to another backend. Expected of Maglev without shared state
    /// (docs/nat.md).
    Repicked,
    /// Broke for no reason the soak knows: a violation.
    Broken,
}

/// The backends of the observed service over time, in time order: `(from, noted, set)`, the set the active node
/// used from some time between `from` (the event that changed it) and `noted` (when the soak saw the change in
/// its status) on. Connections opened in between may have been opened under either set.
pub type Tables = [(Duration, Duration, Vec<String>)];

/// The sets that may have been in use at `t`: the one in force, and the one before while the change was not
/// noted yet.
fn tables_at(tables: &Tables, t: Duration) -> Vec<&Vec<String>> {
    let Some(i) = tables.iter().rposition(|(from, _, _)| *from <= t) else { return Vec::new() };
    let mut sets = vec![&tables[i].2];
    if t < tables[i].1 && i > 0 {
        sets.push(&tables[i - 1].2);
    }
    sets
}

/// The sets that may have been in use at some time in `from..=to`.
fn tables_during(tables: &Tables, from: Duration, to: Duration) -> Vec<&Vec<String>> {
    let mut sets = tables_at(tables, from);
    sets.extend(tables.iter().filter(|(start, _, _)| from < *start && *start <= to).map(|(_, _, set)| set));
    sets
}

/// How long after a window closed a server-push stream may still notice that the window broke it. A stream's
/// client sends nothing while lines arrive, so after a NAT failover its flow is rebuilt only by the client's
/// keepalive probe (after 1 s without data, then one a second: docs/nat.md), and the lines its backend wrote
/// before it died can arrive after the window, once the probe has rebuilt the flow: its last line is no sign that
/// the backend still lived. A request loop asks every 100 ms and needs no such allowance.
pub const STREAM_NOTICE: Duration = Duration::from_secs(5);

/// Whether `c` broke because of `w`: its time without answers (from its last answer to the break) overlaps the
/// window, or, for a stream open when the window opened, it broke within [`STREAM_NOTICE`] after the window.
fn broke_in(c: &Connection, w: &Window) -> bool {
    let last_ok = c.requests.iter().filter(|r| r.outcome.is_ok()).map(|r| r.ended).max().unwrap_or(c.opened);
    overlaps((last_ok, c.ended), (w.open, w.close))
        || (c.what == "stream" && c.opened <= w.open && w.open <= c.ended && c.ended <= w.close + STREAM_NOTICE)
}

/// Judges how `c` ended.
pub fn ending(c: &Connection, windows: &[Window], tables: &Tables) -> Ending {
    if c.broken.is_none() {
        return Ending::Kept;
    }
    if windows.iter().any(|w| w.backends.contains(&c.backend) && broke_in(c, w)) {
        return Ending::WithItsBackend;
    }
    // The node taking over hashes the connection at its first packet there: after the window opened and after the
    // last answer through the node before, and no later than the break.
    let opened_under = tables_at(tables, c.opened);
    let last_ok = c.requests.iter().filter(|r| r.outcome.is_ok()).map(|r| r.ended).max().unwrap_or(c.opened);
    let other_set = |w: &Window| {
        tables_during(tables, w.open.max(last_ok), c.ended).iter().any(|at| opened_under.iter().any(|o| o != at))
    };
    if windows.iter().any(|w| w.kind.is_failover() && broke_in(c, w) && other_set(w)) {
        return Ending::Repicked;
    }
    Ending::Broken
}

/// Long-lived connections that broke ([`Ending::Broken`]), or were spliced onto another backend.
pub fn broken_connections(windows: &[Window], connections: &[Connection], tables: &Tables) -> Vec<Violation> {
    let mut found = Vec::new();
    for c in connections {
        if c.wrong_backend > 0 {
            found.push(Violation::new(
                Some(c.opened),
                "long-lived connection spliced",
                format!("a {} to {} got {} answers from another backend", c.what, c.backend, c.wrong_backend),
            ));
        }
        if ending(c, windows, tables) != Ending::Broken {
            continue;
        }
        let last_ok = c.requests.iter().filter(|r| r.outcome.is_ok()).map(|r| r.ended).max().unwrap_or(c.opened);
        let inside: Vec<String> = windows
            .iter()
            .filter(|w| broke_in(c, w))
            .map(|w| format!("{} (event {})", w.kind.name(), w.event))
            .collect();
        found.push(Violation::new(
            Some(c.ended),
            "long-lived connection broken",
            format!(
                "a {} to {} opened at {}, last answer at {}, broke at {} ({}); windows then: {}",
                c.what,
                c.backend,
                secs(c.opened),
                secs(last_ok),
                secs(c.ended),
                c.broken.as_deref().unwrap_or_default(),
                if inside.is_empty() { "none".to_owned() } else { inside.join(", ") }
            ),
        ));
    }
    found
}

/// ARP rounds outside the failover windows that were not answered by exactly the expected node. `owners` lists
/// from when on which MAC should answer, in time order; `period` is how long each round waited for answers.
pub fn arp_violations(
    windows: &[Window],
    rounds: &[ArpRound],
    period: Duration,
    owners: &[(Duration, MacAddr)],
    name: impl Fn(MacAddr) -> String,
) -> (usize, Vec<Violation>) {
    let mut judged = 0;
    let mut found = Vec::new();
    for round in rounds {
        let span = (round.sent, round.sent + period);
        if windows.iter().any(|w| w.kind.is_failover() && overlaps(span, (w.open, w.close))) {
            continue;
        }
        let Some(&(_, owner)) = owners.iter().rev().find(|(from, _)| *from <= round.sent) else { continue };
        judged += 1;
        if round.answers == [owner] {
            continue;
        }
        let names: Vec<String> = round.answers.iter().map(|m| name(*m)).collect();
        let what = match round.answers.len() {
            0 => "nobody answered ARP for the VIP",
            1 => "the wrong node answered ARP for the VIP",
            _ => "two nodes answered ARP for the VIP",
        };
        found.push(Violation::new(
            Some(round.sent),
            what,
            format!("at {}: answered by [{}], expected {}", secs(round.sent), names.join(", "), name(owner)),
        ));
    }
    (judged, found)
}

/// One reading of an agent's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceSample {
    pub t: Duration,
    pub rss_kib: u64,
    pub fds: u64,
}

/// How flat an agent's resources stayed after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Flatness {
    pub samples: usize,
    /// Seconds judged (after warm-up).
    pub span_s: f64,
    pub rss_baseline_kib: u64,
    pub rss_max_kib: u64,
    /// The largest distance of a level (of 5 consecutive readings: see [`LEVEL_OF`]) from the first one, in percent.
    pub rss_deviation_pct: f64,
    pub fds_baseline: u64,
    pub fds_max: u64,
    pub fds_deviation_pct: f64,
}

/// Readings per level: a median (memory) or the lowest (open files) of this many consecutive ones. A health
/// check's socket is open for a part of each interval, most of it while its backend does not answer (the probe
/// waits its whole timeout: 150 of every 200 ms in the soak), so a reading often catches a few; a leaked file stays
/// open and raises the lowest reading for good.
const LEVEL_OF: usize = 5;
/// Fewer judged readings than this say nothing.
const MIN_SAMPLES: usize = 10;

/// The flatness of `samples` (one agent, in time order) from `started + warmup` on; `None` with too few readings.
pub fn flatness(samples: &[ResourceSample], started: Duration, warmup: Duration) -> Option<Flatness> {
    let judged: Vec<&ResourceSample> = samples.iter().filter(|s| s.t >= started + warmup).collect();
    if judged.len() < MIN_SAMPLES {
        return None;
    }
    let levels = |f: &dyn Fn(&ResourceSample) -> u64, rank: usize| -> Vec<u64> {
        judged
            .windows(LEVEL_OF)
            .map(|w| {
                let mut v: Vec<u64> = w.iter().map(|s| f(s)).collect();
                v.sort_unstable();
                v[rank]
            })
            .collect()
    };
    let deviation = |levels: &[u64]| -> f64 {
        let base = levels[0].max(1) as f64;
        levels.iter().map(|&l| (l as f64 - base).abs() / base * 100.0).fold(0.0, f64::max)
    };
    let rss = levels(&|s| s.rss_kib, LEVEL_OF / 2);
    let fds = levels(&|s| s.fds, 0);
    Some(Flatness {
        samples: judged.len(),
        span_s: judged[judged.len() - 1].t.saturating_sub(judged[0].t).as_secs_f64(),
        rss_baseline_kib: rss[0],
        rss_max_kib: judged.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        rss_deviation_pct: deviation(&rss),
        fds_baseline: fds[0],
        fds_max: judged.iter().map(|s| s.fds).max().unwrap_or(0),
        fds_deviation_pct: deviation(&fds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn req(start: u64, took: u64, ok: bool) -> Request {
        Request {
            started: ms(start),
            ended: ms(start + took),
            outcome: if ok { Ok("backend1".into()) } else { Err("timeout".into()) },
            late: None,
        }
    }

    fn window(kind: Kind, open: u64, close: u64) -> Window {
        Window { event: 1, kind, open: ms(open), close: ms(close), bound: ms(close - open), backends: Vec::new() }
    }

    /// A probe every 10 ms from 0 to 2000 ms, failing from `down` to `up`.
    fn probe_with_outage(down: u64, up: u64) -> Vec<Request> {
        (0..200)
            .map(|i| i * 10)
            .map(|t| req(t, if (down..up).contains(&t) { 50 } else { 2 }, !(down..up).contains(&t)))
            .collect()
    }

    #[test]
    fn failures_inside_a_failover_window_are_excused_and_the_gap_measured() {
        let probe = probe_with_outage(1000, 1300);
        let w = window(Kind::Kill, 1000, 1422);
        assert!(stray_failures(std::slice::from_ref(&w), &probe).is_empty());
        let f = window_figures(&w, &probe, &[], ms(2000));
        assert_eq!((f.failed, f.longest_gap), (30, ms(310)), "from the answer at 992 ms to the one at 1302 ms");
    }

    #[test]
    fn failures_after_the_window_closed_are_violations() {
        let probe = probe_with_outage(1000, 1600);
        let w = window(Kind::Term, 1000, 1122);
        let stray = stray_failures(std::slice::from_ref(&w), &probe);
        assert_eq!(stray.len(), 47, "1130..1600 ms, and the one started at 1120 ms overlaps the window");
        assert_eq!(stray[0].what, "failed request outside the windows");
        assert!(window_figures(&w, &probe, &[], ms(2000)).longest_gap > ms(600));
    }

    #[test]
    fn a_reload_removing_a_backend_excuses_only_resets_of_connections_opened_meanwhile() {
        let mut probe = probe_with_outage(1000, 1020);
        for r in probe.iter_mut().filter(|r| r.failed()) {
            r.outcome = Err("reset".into());
        }
        probe.push(Request { started: ms(1005), ended: ms(1055), outcome: Err("timeout".into()), late: None });
        probe.sort_by_key(|r| r.started);
        let removing = Window { backends: vec!["backend2".into()], ..window(Kind::Reload, 1000, 1100) };
        let stray = stray_failures(std::slice::from_ref(&removing), &probe);
        assert_eq!(stray.len(), 1, "the resets are excused, the timeout is not: {stray:?}");
        let adding = window(Kind::Reload, 1000, 1100);
        assert_eq!(stray_failures(std::slice::from_ref(&adding), &probe).len(), 3, "a reload removing nothing");
    }

    #[test]
    fn a_late_answer_is_slow_not_failed() {
        let mut probe = probe_with_outage(500, 520);
        probe[50].late = Some(Ok("backend1".into()));
        probe[51].late = Some(Err("timeout".into()));
        let stray = stray_failures(&[], &probe);
        assert_eq!(stray.len(), 1, "answered within the grace: not a failure");
        assert!(stray[0].detail.contains("no answer came later either"), "{}", stray[0].detail);
        assert!(probe[50].answered_late() && !probe[50].failed() && probe[51].failed());
    }

    #[test]
    fn a_reload_or_a_rejoin_excuses_nothing() {
        let probe = probe_with_outage(500, 520);
        for kind in [Kind::Reload, Kind::Rejoin, Kind::Burst] {
            assert_eq!(stray_failures(&[window(kind, 400, 900)], &probe).len(), 2, "{kind:?}");
        }
    }

    #[test]
    fn an_outage_that_never_ends_counts_to_the_end() {
        let probe: Vec<Request> = (0..100).map(|i| req(i * 10, 2, i < 50)).collect();
        let f = window_figures(&window(Kind::Kill, 500, 900), &probe, &[], ms(1000));
        assert_eq!(f.longest_gap, ms(500));
    }

    fn connection(backend: &str, broken: Option<&str>, end: u64) -> Connection {
        Connection {
            what: "request loop",
            backend: backend.into(),
            opened: ms(0),
            ended: ms(end),
            broken: broken.map(str::to_owned),
            wrong_backend: 0,
            longest_gap: ms(100),
            requests: vec![req(100, 5, true), req(end - 10, 10, broken.is_none())],
        }
    }

    #[test]
    fn a_connection_may_break_only_when_its_backend_is_taken_away() {
        let mut flap = window(Kind::Flap, 1000, 1550);
        flap.backends = vec!["backend2".into()];
        let kill = window(Kind::Kill, 1000, 1422);
        let c = connection("backend2", Some("reset"), 1200);
        let all = vec!["backend1".to_string(), "backend2".to_string(), "backend3".to_string()];
        let same: Vec<(Duration, Duration, Vec<String>)> = vec![(ms(0), ms(0), all.clone())];
        assert!(broken_connections(&[flap.clone()], std::slice::from_ref(&c), &same).is_empty());
        let v = broken_connections(std::slice::from_ref(&kill), std::slice::from_ref(&c), &same);
        assert_eq!(v.len(), 1, "a failover must not break a NAT connection");
        assert!(v[0].detail.contains("SIGKILL"), "{}", v[0].detail);
        let other = connection("backend1", Some("reset"), 1200);
        assert_eq!(broken_connections(&[flap], &[other], &same).len(), 1, "another backend's flap excuses nothing");
        assert!(broken_connections(&[], &[connection("backend1", None, 1200)], &same).is_empty());
        let spliced = Connection { wrong_backend: 2, ..connection("backend1", None, 1200) };
        assert_eq!(broken_connections(&[], &[spliced], &same)[0].what, "long-lived connection spliced");
        // Opened while backend3 was out: the node taking over hashes it with the full table.
        let changed: Vec<(Duration, Duration, Vec<String>)> =
            vec![(ms(0), ms(0), all[..2].to_vec()), (ms(500), ms(500), all.clone())];
        assert_eq!(ending(&c, std::slice::from_ref(&kill), &changed), Ending::Repicked);
        assert!(broken_connections(std::slice::from_ref(&kill), std::slice::from_ref(&c), &changed).is_empty());
        // Opened after backend3 left but before the soak noted it (the active node's status is polled): either
        // set may have been in use, so a failover under the full set may re-pick it.
        let late_note: Vec<(Duration, Duration, Vec<String>)> =
            vec![(ms(0), ms(0), all.clone()), (ms(0), ms(100), all[..2].to_vec()), (ms(600), ms(600), all.clone())];
        assert_eq!(ending(&c, std::slice::from_ref(&kill), &late_note), Ending::Repicked);
        let noted_before: Vec<(Duration, Duration, Vec<String>)> =
            vec![(ms(0), ms(0), all[..2].to_vec()), (ms(0), ms(0), all.clone())];
        assert_eq!(ending(&c, std::slice::from_ref(&kill), &noted_before), Ending::Broken, "one set: no excuse");
        assert_eq!(broken_connections(&[kill], &[c], &noted_before).len(), 1);
    }

    #[test]
    fn a_set_changed_after_a_failover_before_the_next_packet_excuses_a_re_pick() {
        // The soak's run 5 at 285.7 s: the last answer came through the old node, the new node took over with no
        // state, and a reload added a backend before the connection's next packet reached it.
        let all = vec!["backend1".to_string(), "backend2".to_string(), "backend3".to_string()];
        let preempt = window(Kind::Preempt, 1000, 1550);
        let c = connection("backend1", Some("reset"), 2500);
        let added_after: Vec<(Duration, Duration, Vec<String>)> =
            vec![(ms(0), ms(0), vec![all[0].clone(), all[2].clone()]), (ms(2000), ms(2100), all.clone())];
        assert_eq!(ending(&c, std::slice::from_ref(&preempt), &added_after), Ending::Repicked);
        // A change after the break excuses nothing.
        let after_break: Vec<(Duration, Duration, Vec<String>)> =
            vec![(ms(0), ms(0), vec![all[0].clone(), all[2].clone()]), (ms(2600), ms(2700), all.clone())];
        assert_eq!(ending(&c, std::slice::from_ref(&preempt), &after_break), Ending::Broken);
        // Without a failover, a set change alone never excuses a broken connection.
        assert_eq!(ending(&c, &[], &added_after), Ending::Broken);
    }

    #[test]
    fn a_stream_may_notice_its_backend_died_after_the_window() {
        let mut flap = window(Kind::Flap, 1000, 1650);
        flap.backends = vec!["backend1".into()];
        let stream = |last_line: u64, end: u64| Connection {
            what: "stream",
            requests: vec![Request {
                started: ms(last_line),
                ended: ms(last_line),
                outcome: Ok(String::new()),
                late: None,
            }],
            ..connection("backend1", Some("reset"), end)
        };
        let same: Vec<(Duration, Duration, Vec<String>)> = vec![(ms(0), ms(0), vec!["backend1".to_string()])];
        // Lines written before the kill arrive after the window, then the reset.
        let late = stream(1700, 1780);
        assert_eq!(ending(&late, std::slice::from_ref(&flap), &same), Ending::WithItsBackend);
        let loop_late = Connection { what: "request loop", ..late.clone() };
        assert_eq!(ending(&loop_late, std::slice::from_ref(&flap), &same), Ending::Broken, "a loop has no allowance");
        let much_later = stream(7000, 7100);
        assert_eq!(ending(&much_later, std::slice::from_ref(&flap), &same), Ending::Broken);
        let v = broken_connections(&[flap], &[much_later], &same);
        assert!(v[0].detail.contains("last answer at 7.000 s"), "{}", v[0].detail);
    }

    #[test]
    fn arp_outside_failover_windows_names_exactly_the_owner() {
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
        let owners = [(ms(0), a), (ms(1500), b)];
        let round = |t: u64, answers: Vec<MacAddr>| ArpRound { sent: ms(t), answers };
        let rounds = vec![
            round(0, vec![a]),
            round(1000, vec![a, b]), // inside the window: ignored
            round(1600, vec![b]),
            round(1700, vec![a, b]),
            round(1800, vec![]),
            round(1900, vec![a]),
        ];
        let w = window(Kind::Kill, 1000, 1422);
        let (judged, v) = arp_violations(&[w], &rounds, ms(100), &owners, |m| m.to_string());
        assert_eq!(judged, 5);
        let what: Vec<&str> = v.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "two nodes answered ARP for the VIP",
                "nobody answered ARP for the VIP",
                "the wrong node answered ARP for the VIP"
            ]
        );
        let (_, v) =
            arp_violations(&[window(Kind::Reload, 900, 1100)], &rounds[..2], ms(100), &owners, |m| m.to_string());
        assert_eq!(v.len(), 1, "only failover windows excuse two answers");
    }

    fn readings(values: &[(u64, u64)]) -> Vec<ResourceSample> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(rss, fds))| ResourceSample { t: Duration::from_secs(i as u64), rss_kib: rss, fds })
            .collect()
    }

    #[test]
    fn flat_resources_pass_and_a_leak_shows() {
        let mut flat: Vec<(u64, u64)> = (0..40).map(|i| (10_000 + (i % 3) * 50, 20)).collect();
        flat[25] = (10_000, 27); // a transient: a health check's socket open while sampling
        // Backends not answering for a while: their probes' sockets are open in most readings.
        for (i, reading) in flat.iter_mut().enumerate().skip(12).take(10) {
            reading.1 = if i % 4 == 0 { 20 } else { 25 };
        }
        let f = flatness(&readings(&flat), Duration::ZERO, Duration::from_secs(5)).expect("enough");
        assert!(f.rss_deviation_pct < 1.0 && f.fds_deviation_pct == 0.0, "{f:?}");
        assert_eq!(f.fds_max, 27);
        let leak: Vec<(u64, u64)> = (0..40).map(|i| (10_000 + i * 100, 20 + i / 4)).collect();
        let f = flatness(&readings(&leak), Duration::ZERO, Duration::from_secs(5)).expect("enough");
        assert!(f.rss_deviation_pct > 10.0 && f.fds_deviation_pct > 10.0, "{f:?}");
        assert!(flatness(&readings(&leak[..12]), Duration::ZERO, Duration::from_secs(5)).is_none(), "too short");
    }
}
