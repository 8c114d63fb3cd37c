//! What the soak does next: a seeded random schedule of faults, restores, backend flaps, reloads and one spoofed
//! burst, with at least the target count of each kind (pure: the driver reports what it did and the time).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::flood::XorShift;
use crate::soak::bounds::Kind;

/// How a backend fails in a flap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlapHow {
    /// Its server is killed (SIGKILL): connections to it are refused or reset at once.
    Killed,
    /// Its health endpoint answers 503 (it keeps serving `GET /`): the checks take it out.
    Unready,
    /// Its link goes down: nothing answers, every check times out.
    LinkDown,
}

/// One step of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `kind` (Kill, Term or LinkDown) to node `node` (0-based), the active one.
    Fault {
        kind: Kind,
        node: usize,
    },
    /// Node `node` comes back: restarted after Kill/Term, or its link up.
    Restore {
        node: usize,
    },
    /// Backend `backend` (0-based) fails, then comes back.
    Flap {
        backend: usize,
        how: FlapHow,
    },
    Reload,
    Burst,
}

/// What the planner needs to know about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Its agent runs and its link is up.
    pub up: bool,
    pub priority: u8,
    /// Never stopped by a signal: its agent lives through the whole soak, so its memory and file counts tell
    /// whether anything leaks.
    pub long_lived: bool,
}

/// Targets per 10 minutes (issue 13: at least 20 failovers of every kind, 10 reloads, a burst).
const PER_TEN_MINUTES: [(Kind, f64); 7] = [
    (Kind::Kill, 20.0),
    (Kind::Term, 20.0),
    (Kind::LinkDown, 20.0),
    (Kind::Preempt, 20.0),
    (Kind::Flap, 10.0),
    (Kind::Reload, 10.0),
    (Kind::Burst, 1.0),
];
/// The kinds the planner picks from when every node is up (preemptions follow from restores).
const CHOSEN: [Kind; 5] = [Kind::Kill, Kind::Term, Kind::LinkDown, Kind::Flap, Kind::Reload];
/// While one node is down, the chance that the next step takes the new active node down too.
const STACK_PERCENT: u64 = 35;
/// At most this many nodes down at once (one always remains).
const MAX_DOWN: usize = 2;

/// The schedule. See the module documentation.
#[derive(Debug)]
pub struct Planner {
    rng: XorShift,
    targets: BTreeMap<Kind, u32>,
    counts: BTreeMap<Kind, u32>,
    /// The planned length; the run goes on past it until every target is met, at most to `hard_stop`.
    length: Duration,
    hard_stop: Duration,
    burst_at: Duration,
}

impl Planner {
    pub fn new(seed: u64, length: Duration) -> Self {
        let minutes = length.as_secs_f64() / 60.0;
        let targets = PER_TEN_MINUTES
            .iter()
            .map(|&(kind, per_ten)| {
                let n = if kind == Kind::Burst { 1 } else { (per_ten * minutes / 10.0).ceil().max(1.0) as u32 };
                (kind, n)
            })
            .collect();
        let mut rng = XorShift::new(seed);
        // The burst comes somewhere in the middle, while everything else goes on around it.
        let burst_at = length.mul_f64(0.3 + rng.below(400) as f64 / 1000.0);
        Planner { rng, targets, counts: BTreeMap::new(), length, hard_stop: length * 3, burst_at }
    }

    pub fn targets(&self) -> &BTreeMap<Kind, u32> {
        &self.targets
    }

    pub fn counts(&self) -> &BTreeMap<Kind, u32> {
        &self.counts
    }

    /// The kinds whose count is below target.
    pub fn unmet(&self) -> Vec<Kind> {
        self.targets.iter().filter(|&(k, &t)| self.count(*k) < t).map(|(k, _)| *k).collect()
    }

    fn count(&self, kind: Kind) -> u32 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Counts one event of `kind` (the driver knows whether a restore preempted).
    pub fn record(&mut self, kind: Kind) {
        *self.counts.entry(kind).or_default() += 1;
    }

    /// The seeded random numbers, for the driver's own choices (which reload, how long a connection lives).
    pub fn rng(&mut self) -> &mut XorShift {
        &mut self.rng
    }

    /// A pause between two steps: 200..1200 ms.
    pub fn pause(&mut self) -> Duration {
        Duration::from_millis(200 + self.rng.below(1000))
    }

    /// Whether the run is over: the planned length is reached and every target met, or the hard stop (three
    /// times the length) is reached whatever the counts.
    pub fn over(&self, now: Duration) -> bool {
        now >= self.hard_stop || (now >= self.length && self.unmet().is_empty())
    }

    /// The next step at `now`, or `None` when the run is over and every node is up. `flappable`: the backends a
    /// flap may take (0-based).
    pub fn next(&mut self, now: Duration, nodes: &[NodeView], flappable: &[usize]) -> Option<Step> {
        let down: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].up).collect();
        let active = (0..nodes.len()).filter(|&i| nodes[i].up).max_by_key(|&i| (nodes[i].priority, i));
        if !down.is_empty() {
            let stack = down.len() < MAX_DOWN
                && !self.over(now)
                && nodes.iter().filter(|n| n.up).count() > 1
                && self.rng.below(100) < STACK_PERCENT;
            if stack && let Some(node) = active {
                return Some(self.fault(node, nodes[node]));
            }
            let node = down[self.rng.below(down.len() as u64) as usize];
            return Some(Step::Restore { node });
        }
        if self.over(now) {
            return None;
        }
        if self.count(Kind::Burst) < self.targets[&Kind::Burst] && now >= self.burst_at {
            return Some(Step::Burst);
        }
        let kind = self.least_done(&CHOSEN, !flappable.is_empty());
        match (kind, active) {
            (Kind::Flap, _) => {
                let backend = flappable[self.rng.below(flappable.len() as u64) as usize];
                let how = [FlapHow::Killed, FlapHow::Unready, FlapHow::LinkDown][self.rng.below(3) as usize];
                Some(Step::Flap { backend, how })
            }
            (Kind::Reload, _) => Some(Step::Reload),
            (kind, Some(node)) => Some(self.fault_of(kind, node, nodes[node])),
            (_, None) => None,
        }
    }

    /// A fault of the least done kind to `node`.
    fn fault(&mut self, node: usize, view: NodeView) -> Step {
        let kind = self.least_done(&[Kind::Kill, Kind::Term, Kind::LinkDown], false);
        self.fault_of(kind, node, view)
    }

    fn fault_of(&self, kind: Kind, node: usize, view: NodeView) -> Step {
        // The long-lived node only ever loses its link.
        let kind = if view.long_lived { Kind::LinkDown } else { kind };
        Step::Fault { kind, node }
    }

    /// The kind among `kinds` furthest behind its target (count / target), ties broken at random.
    fn least_done(&mut self, kinds: &[Kind], flap_possible: bool) -> Kind {
        let candidates: Vec<Kind> = kinds.iter().copied().filter(|&k| k != Kind::Flap || flap_possible).collect();
        let ratio = |k: Kind| f64::from(self.count(k)) / f64::from(self.targets.get(&k).copied().unwrap_or(1).max(1));
        let best = candidates.iter().map(|&k| ratio(k)).fold(f64::INFINITY, f64::min);
        let tied: Vec<Kind> = candidates.into_iter().filter(|&k| ratio(k) <= best).collect();
        tied[self.rng.below(tied.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIORITIES: [u8; 3] = [250, 200, 150];

    /// Runs the planner against a model of the lab in virtual time: every step takes `step` and a restore of a
    /// node above the active one counts a preemption.
    fn simulate(seed: u64, length: Duration, step: Duration) -> (Planner, Vec<Step>) {
        let mut planner = Planner::new(seed, length);
        let mut up = [true; 3];
        let mut now = Duration::ZERO;
        let mut steps = Vec::new();
        loop {
            let view: Vec<NodeView> =
                (0..3).map(|i| NodeView { up: up[i], priority: PRIORITIES[i], long_lived: i == 2 }).collect();
            let Some(s) = planner.next(now, &view, &[0, 1, 2]) else { break };
            let active = (0..3).filter(|&i| up[i]).max_by_key(|&i| PRIORITIES[i]);
            match s {
                Step::Fault { kind, node } => {
                    assert_eq!(Some(node), active, "faults hit the active node");
                    assert!(!(node == 2 && kind != Kind::LinkDown), "the long-lived node is never signalled");
                    up[node] = false;
                    assert!(up.iter().any(|u| *u), "one node always remains");
                    planner.record(kind);
                }
                Step::Restore { node } => {
                    assert!(!up[node]);
                    up[node] = true;
                    let preempt = active.is_some_and(|a| PRIORITIES[node] > PRIORITIES[a]);
                    planner.record(if preempt { Kind::Preempt } else { Kind::Rejoin });
                }
                Step::Flap { .. } => planner.record(Kind::Flap),
                Step::Reload => planner.record(Kind::Reload),
                Step::Burst => planner.record(Kind::Burst),
            }
            steps.push(s);
            now += step + planner.pause();
        }
        assert!(up.iter().all(|u| *u), "the run ends with every node up");
        (planner, steps)
    }

    #[test]
    fn ten_minutes_meet_every_target() {
        for seed in 1..20 {
            let (planner, _) = simulate(seed, Duration::from_secs(600), Duration::from_secs(3));
            assert!(planner.unmet().is_empty(), "seed {seed}: {:?} of {:?}", planner.counts(), planner.targets());
            assert_eq!(planner.counts()[&Kind::Burst], 1);
            assert!(planner.counts()[&Kind::Kill] >= 20 && planner.counts()[&Kind::Reload] >= 10);
        }
    }

    #[test]
    fn one_minute_tries_every_kind() {
        for seed in 1..50 {
            let (planner, _) = simulate(seed, Duration::from_secs(60), Duration::from_secs(3));
            for kind in [Kind::Kill, Kind::Term, Kind::LinkDown, Kind::Preempt, Kind::Flap, Kind::Reload, Kind::Burst] {
                assert!(planner.counts().get(&kind).copied().unwrap_or(0) >= 1, "seed {seed}: no {kind:?}");
            }
        }
    }

    #[test]
    fn a_seed_repeats_its_schedule() {
        let (_, a) = simulate(7, Duration::from_secs(120), Duration::from_secs(2));
        let (_, b) = simulate(7, Duration::from_secs(120), Duration::from_secs(2));
        let (_, c) = simulate(8, Duration::from_secs(120), Duration::from_secs(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_slow_lab_stops_at_the_hard_stop() {
        let (planner, _) = simulate(3, Duration::from_secs(60), Duration::from_secs(60));
        assert!(!planner.unmet().is_empty(), "with a minute per step the targets cannot be met");
    }
}
