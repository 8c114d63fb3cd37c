//! The soak's figures: judging what the observers saw, tearing the lab down and looking for leftovers, then the
//! table (what was tried, counts, worst cases per kind) and the JSON document.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::observe::{ARP_PERIOD, GRACE, PROBE_DEADLINE, Seen};
use super::{FLAT_PERCENT, PRIORITIES, Soak, WARMUP};
use crate::soak::bounds::{Kind, SLACK};
use crate::soak::leftovers::{self, BpfIds};
use crate::soak::timeline::{self, Ending, Flatness, Request, Violation, Window};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One step of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventRecord {
    pub index: usize,
    pub at_s: f64,
    pub end_s: f64,
    pub kind: Option<Kind>,
    pub what: String,
    /// The bound of its window, when it has one.
    pub bound_ms: Option<f64>,
    /// Fault to take-over (failovers), restore to take-over (preemptions), fault to the backend marked down
    /// (flaps).
    pub reaction_ms: Option<f64>,
    /// The longest time without an answer to a new connection, in the window (or during the event when it has
    /// none).
    pub gap_ms: Option<f64>,
    pub requests: usize,
    pub failed: usize,
    pub slowest_long_lived_ms: Option<f64>,
    pub notes: Vec<String>,
}

/// The spoofed burst.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BurstFigures {
    pub frames: usize,
    pub seconds: f64,
    pub adverts: usize,
    /// Counters of the active node during the burst.
    pub nat_forward_tx: u64,
    pub drop_nat_no_port: u64,
    pub adverts_discarded_per_node: Vec<u64>,
}

/// One kind of step over the run.
#[derive(Clone, Debug, Serialize)]
pub struct KindFigures {
    pub kind: Kind,
    pub name: &'static str,
    pub tried: u32,
    pub target: u32,
    /// The largest bound of its windows (they depend on which node takes over).
    pub bound_ms: Option<f64>,
    pub derivation: String,
    pub worst_gap_ms: Option<f64>,
    pub worst_reaction_ms: Option<f64>,
    pub requests: usize,
    pub failed: usize,
    pub slowest_long_lived_ms: Option<f64>,
    pub violations: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TrafficFigures {
    /// Requests on new connections (the 10 ms probe) and how many failed, inside windows and outside.
    pub requests: usize,
    /// Not answered within the probe's deadline (50 ms).
    pub failed: usize,
    /// Of those, answered within the grace (slow, not failed; not judged).
    pub answered_late: usize,
    pub failed_outside_windows: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub slowest_ok_ms: f64,
    /// Long-lived connections (request loops and streams) and how they ended.
    pub long_lived: usize,
    pub long_lived_requests: usize,
    pub broken_with_their_backend: usize,
    /// Broke across a failover, re-hashed under another backend set than it was opened under (docs/nat.md).
    pub broken_repicked: usize,
    pub broken_otherwise: usize,
    /// Every long-lived connection that broke, and how that was judged.
    pub broken: Vec<BrokenConnection>,
    pub could_not_open: usize,
    pub longest_loop_gap_ms: f64,
    pub longest_stream_gap_ms: f64,
}

/// A long-lived connection that broke.
#[derive(Clone, Debug, Serialize)]
pub struct BrokenConnection {
    pub what: &'static str,
    pub backend: String,
    pub opened_s: f64,
    pub last_answer_s: f64,
    pub ended_s: f64,
    pub error: String,
    pub longest_gap_ms: f64,
    pub ending: Ending,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ArpFigures {
    pub rounds: usize,
    /// Rounds outside the failover windows, each of which must name exactly the active node.
    pub judged: usize,
    pub two_answers: usize,
    pub no_answer: usize,
    pub wrong_node: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentFigures {
    pub node: String,
    pub pid: u32,
    pub lived_s: f64,
    pub flatness: Option<Flatness>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LeftoverFigures {
    /// BPF programs, maps and links the run's agents and XDP stubs held.
    pub bpf_seen: BpfIds,
    pub bpf_left: BpfIds,
    pub pins_new: Vec<String>,
    pub pins_ours: Vec<String>,
    pub namespaces_left: Vec<String>,
    pub processes_spawned: usize,
    pub processes_left: Vec<String>,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub seed: u64,
    pub planned_minutes: f64,
    pub ran_s: f64,
    pub advert_interval_ms: f64,
    pub health: String,
    pub slack_ms: f64,
    pub kinds: Vec<KindFigures>,
    pub reload_changes: BTreeMap<String, u32>,
    pub traffic: TrafficFigures,
    pub arp: ArpFigures,
    pub agents: Vec<AgentFigures>,
    pub burst: Option<BurstFigures>,
    pub leftovers: LeftoverFigures,
    pub events: Vec<EventRecord>,
    pub violations: Vec<Violation>,
}

/// The event that started last at or before `at` (seconds).
fn event_at(events: &[EventRecord], at: Option<f64>) -> Option<usize> {
    let at = at?;
    events.iter().rev().find(|e| e.at_s <= at).map(|e| e.index)
}

impl Soak {
    /// Judges what was seen, tears everything down, looks for leftovers, and returns the figures.
    pub(super) fn finish(
        mut self,
        seen: Seen,
        ran: Duration,
        lab_dir: &str,
        pins_before: &BTreeSet<PathBuf>,
    ) -> Result<Figures> {
        let mut violations = std::mem::take(&mut self.violations);
        let mut probe: Vec<Request> = seen.probe.iter().chain(&seen.open_failures).cloned().collect();
        probe.sort_by_key(|r| r.started);
        let windows = self.windows.clone();

        // New connections, long-lived ones, ARP.
        let stray = timeline::stray_failures(&windows, &probe);
        let failed_outside = stray.len();
        violations.extend(stray);
        let broken = timeline::broken_connections(&windows, &seen.connections, &self.tables);
        violations.extend(broken);
        let names: BTreeMap<_, _> = self.nodes.iter().map(|n| (n.host.mac, n.host.name.clone())).collect();
        let (judged, arp_found) = timeline::arp_violations(&windows, &seen.arp, ARP_PERIOD, &self.owners, |m| {
            names.get(&m).cloned().unwrap_or_else(|| m.to_string())
        });
        let count = |what: &str| arp_found.iter().filter(|v| v.what == what).count();
        let arp = ArpFigures {
            rounds: seen.arp.len(),
            judged,
            two_answers: count("two nodes answered ARP for the VIP"),
            no_answer: count("nobody answered ARP for the VIP"),
            wrong_node: count("the wrong node answered ARP for the VIP"),
        };
        violations.extend(arp_found);

        // Each window against its bound; each event's figures.
        for w in &windows {
            let f = timeline::window_figures(w, &probe, &seen.connections, seen.probe_end);
            let e = &mut self.events[w.event];
            e.gap_ms = Some(e.gap_ms.unwrap_or(0.0).max(ms(f.longest_gap)));
            e.requests += f.requests;
            e.failed += f.failed;
            e.slowest_long_lived_ms = Some(e.slowest_long_lived_ms.unwrap_or(0.0).max(ms(f.slowest_long_lived)));
            if f.longest_gap > w.bound + SLACK {
                violations.push(Violation {
                    event: Some(w.event),
                    ..Violation::new(
                        Some(w.open),
                        "window longer than its bound",
                        format!(
                            "{}: {:.0} ms without an answer, bound {:.1} ms + {:.0} ms slack",
                            e.what,
                            ms(f.longest_gap),
                            ms(w.bound),
                            ms(SLACK)
                        ),
                    )
                });
            }
        }
        // Events without a window: what clients saw while they ran.
        for e in &mut self.events {
            if windows.iter().any(|w| w.event == e.index) {
                continue;
            }
            let span = Window {
                event: e.index,
                kind: Kind::Reload,
                open: Duration::from_secs_f64(e.at_s),
                close: Duration::from_secs_f64(e.end_s.max(e.at_s)),
                bound: Duration::ZERO,
                backends: Vec::new(),
            };
            let f = timeline::window_figures(&span, &probe, &seen.connections, seen.probe_end);
            e.gap_ms = Some(ms(f.longest_gap));
            e.requests = f.requests;
            e.failed = f.failed;
            e.slowest_long_lived_ms = Some(ms(f.slowest_long_lived));
        }

        // Agents' memory and open files.
        let mut agents = Vec::new();
        for a in &seen.agents {
            let node = self.nodes.get(a.node).map_or_else(|| format!("node{}", a.node + 1), |n| n.host.name.clone());
            let flat = timeline::flatness(&a.samples, a.started, WARMUP);
            if let Some(f) = &flat
                && (f.rss_deviation_pct > FLAT_PERCENT || f.fds_deviation_pct > FLAT_PERCENT)
            {
                violations.push(Violation::new(
                    None,
                    "agent resources not flat",
                    format!(
                        "xvip on {node} (pid {}): resident memory {} KiB -> up to {} KiB ({:.1} %), open files {} -> \
                         up to {} ({:.1} %) over {:.0} s after warm-up",
                        a.pid,
                        f.rss_baseline_kib,
                        f.rss_max_kib,
                        f.rss_deviation_pct,
                        f.fds_baseline,
                        f.fds_max,
                        f.fds_deviation_pct,
                        f.span_s
                    ),
                ));
            }
            let lived = a.samples.last().map_or(Duration::ZERO, |s| s.t.saturating_sub(a.started));
            agents.push(AgentFigures { node, pid: a.pid, lived_s: lived.as_secs_f64(), flatness: flat });
        }
        let long_lived_judged =
            agents.iter().any(|a| a.node == self.nodes[super::LONG_LIVED].host.name && a.flatness.is_some());
        if !long_lived_judged {
            violations.push(Violation::new(
                None,
                "agent resources not judged",
                format!("no agent of {} lived long enough after warm-up", self.nodes[super::LONG_LIVED].host.name),
            ));
        }
        for kind in self.planner.unmet() {
            violations.push(Violation::new(
                None,
                "target not met",
                format!(
                    "{}: {} of {} in {:.0} s",
                    kind.name(),
                    self.planner.counts().get(&kind).copied().unwrap_or(0),
                    self.planner.targets()[&kind],
                    ran.as_secs_f64()
                ),
            ));
        }

        let traffic = self.traffic(&seen, &probe, failed_outside);
        let kinds = self.kinds(&windows);
        let reload_changes = self.reload_changes.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();

        // Tear down, then look for anything left behind.
        let mut ours = seen.bpf.clone();
        ours.extend(&self.own_bpf);
        let spawned = self.spawned.clone();
        let events = std::mem::take(&mut self.events);
        let (seed, length, burst) = (self.options.seed, self.options.length, self.burst.take());
        let advert_interval_ms = ms(self.timers.advert_interval);
        let t = self.timers;
        drop(self);
        let leftovers = look_for_leftovers(&ours, &spawned, lab_dir, pins_before, &mut violations);

        for v in &mut violations {
            if v.event.is_none() {
                v.event = event_at(&events, v.at);
            }
        }
        let mut kinds = kinds;
        for k in &mut kinds {
            k.violations = violations
                .iter()
                .filter(|v| v.event.and_then(|e| events.get(e)).is_some_and(|e| e.kind == Some(k.kind)))
                .count();
        }
        Ok(Figures {
            seed,
            planned_minutes: length.as_secs_f64() / 60.0,
            ran_s: ran.as_secs_f64(),
            advert_interval_ms,
            health: format!(
                "http GET /readyz every {:.0} ms, timeout {:.0} ms, fall {}, rise {}",
                ms(t.health_interval),
                ms(t.health_timeout),
                t.fall,
                t.rise
            ),
            slack_ms: ms(SLACK),
            kinds,
            reload_changes,
            traffic,
            arp,
            agents,
            burst,
            leftovers,
            events,
            violations,
        })
    }

    fn traffic(&self, seen: &Seen, probe: &[Request], failed_outside: usize) -> TrafficFigures {
        let mut took: Vec<Duration> =
            probe.iter().filter(|r| r.outcome.is_ok()).map(|r| r.ended.saturating_sub(r.started)).collect();
        took.sort_unstable();
        let pct = |p: f64| took.get(((took.len() as f64 - 1.0) * p).round().max(0.0) as usize).copied().map_or(0.0, ms);
        let endings: Vec<Ending> =
            seen.connections.iter().map(|c| timeline::ending(c, &self.windows, &self.tables)).collect();
        let count = |e: Ending| endings.iter().filter(|x| **x == e).count();
        let gap = |what: &str| {
            seen.connections.iter().filter(|c| c.what == what).map(|c| ms(c.longest_gap)).fold(0.0, f64::max)
        };
        TrafficFigures {
            requests: probe.len(),
            failed: probe.iter().filter(|r| r.outcome.is_err()).count(),
            answered_late: probe.iter().filter(|r| r.answered_late()).count(),
            failed_outside_windows: failed_outside,
            median_ms: pct(0.5),
            p99_ms: pct(0.99),
            slowest_ok_ms: took.last().copied().map_or(0.0, ms),
            long_lived: seen.connections.len(),
            long_lived_requests: seen.connections.iter().map(|c| c.requests.len()).sum(),
            broken_with_their_backend: count(Ending::WithItsBackend),
            broken_repicked: count(Ending::Repicked),
            broken_otherwise: count(Ending::Broken),
            broken: seen
                .connections
                .iter()
                .zip(&endings)
                .filter(|(c, _)| c.broken.is_some())
                .map(|(c, &ending)| BrokenConnection {
                    what: c.what,
                    backend: c.backend.clone(),
                    opened_s: c.opened.as_secs_f64(),
                    last_answer_s: c
                        .requests
                        .iter()
                        .filter(|r| r.outcome.is_ok())
                        .map(|r| r.ended)
                        .max()
                        .unwrap_or(c.opened)
                        .as_secs_f64(),
                    ended_s: c.ended.as_secs_f64(),
                    error: c.broken.clone().unwrap_or_default(),
                    longest_gap_ms: ms(c.longest_gap),
                    ending,
                })
                .collect(),
            could_not_open: seen.open_failures.len(),
            longest_loop_gap_ms: gap("request loop"),
            longest_stream_gap_ms: gap("stream"),
        }
    }

    fn kinds(&self, windows: &[Window]) -> Vec<KindFigures> {
        Kind::ALL
            .iter()
            .map(|&kind| {
                let of: Vec<&EventRecord> = self.events.iter().filter(|e| e.kind == Some(kind)).collect();
                let max = |f: &dyn Fn(&EventRecord) -> Option<f64>| of.iter().filter_map(|e| f(e)).reduce(f64::max);
                let bound = windows.iter().filter(|w| w.kind == kind).map(|w| ms(w.bound)).reduce(f64::max);
                // The derivation for the node that takes over most often: node2 after a fault, node1 preempting.
                let typical = if kind == Kind::Preempt { PRIORITIES[0] } else { PRIORITIES[1] };
                KindFigures {
                    kind,
                    name: kind.name(),
                    tried: self.planner.counts().get(&kind).copied().unwrap_or(0),
                    target: self.planner.targets().get(&kind).copied().unwrap_or(0),
                    bound_ms: bound.or_else(|| self.timers.bound(kind, typical).map(ms)),
                    derivation: self.timers.derivation(kind, typical),
                    worst_gap_ms: max(&|e| e.gap_ms),
                    worst_reaction_ms: max(&|e| e.reaction_ms),
                    requests: of.iter().map(|e| e.requests).sum(),
                    failed: of.iter().map(|e| e.failed).sum(),
                    slowest_long_lived_ms: max(&|e| e.slowest_long_lived_ms),
                    violations: 0,
                }
            })
            .collect()
    }
}

/// After the lab is gone: BPF objects the run held, pins of them, its namespaces and processes.
fn look_for_leftovers(
    ours: &BpfIds,
    spawned: &[leftovers::Spawned],
    lab_dir: &str,
    pins_before: &BTreeSet<PathBuf>,
    violations: &mut Vec<Violation>,
) -> LeftoverFigures {
    let mut found = LeftoverFigures { bpf_seen: ours.clone(), processes_spawned: spawned.len(), ..Default::default() };
    // The kernel frees programs and maps after their last reference goes, some of it from a work queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match leftovers::bpf_existing() {
            Ok(existing) => found.bpf_left = ours.common(&existing),
            Err(e) => {
                violations.push(Violation::new(None, "leftovers not checked", format!("bpftool: {e:#}")));
                break;
            }
        }
        if found.bpf_left.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !found.bpf_left.is_empty() {
        violations.push(Violation::new(None, "BPF objects left behind", format!("{:?}", found.bpf_left)));
    }
    let mine = leftovers::bpf_ids_of(std::process::id());
    if !mine.is_empty() {
        violations.push(Violation::new(None, "BPF objects left behind", format!("this process still holds {mine:?}")));
    }
    for pin in leftovers::pins().difference(pins_before) {
        let id = leftovers::pinned_id(pin);
        let name = format!("{} ({id:?})", pin.display());
        let is_ours = id.is_some_and(|(what, id)| match what {
            "prog" => ours.progs.contains(&id),
            "map" => ours.maps.contains(&id),
            _ => ours.links.contains(&id),
        });
        if is_ours {
            violations.push(Violation::new(None, "pinned BPF object left behind", name.clone()));
            found.pins_ours.push(name.clone());
        }
        found.pins_new.push(name);
    }
    match leftovers::namespaces_of_this_process() {
        Ok(left) => {
            if !left.is_empty() {
                violations.push(Violation::new(None, "namespaces left behind", left.join(", ")));
            }
            found.namespaces_left = left;
        }
        Err(e) => violations.push(Violation::new(None, "leftovers not checked", format!("namespaces: {e:#}"))),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = loop {
        let alive: Vec<String> = spawned
            .iter()
            .filter(|s| s.alive())
            .map(|s| format!("{} (pid {})", s.label, s.pid))
            .chain(
                leftovers::processes_mentioning(lab_dir).into_iter().map(|(pid, line)| format!("{line} (pid {pid})")),
            )
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            break alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !alive.is_empty() {
        violations.push(Violation::new(None, "processes left behind", alive.join("; ")));
    }
    found.processes_left = alive;
    found
}

impl Figures {
    /// The table printed at the end of a run (and pasted into RELIABILITY.md).
    pub fn table(&self) -> String {
        let mut t = String::new();
        let opt = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"));
        let _ = writeln!(
            t,
            "| kind | tried | target | bound (ms) | worst outage (ms) | worst reaction (ms) | failed / requests in windows | \
             slowest long-lived request (ms) | violations |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for k in &self.kinds {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                k.name,
                k.tried,
                k.target,
                opt(k.bound_ms, 1),
                opt(k.worst_gap_ms, 0),
                opt(k.worst_reaction_ms, 0),
                k.failed,
                k.requests,
                opt(k.slowest_long_lived_ms, 0),
                k.violations
            );
        }
        let tr = &self.traffic;
        let _ = writeln!(
            t,
            "\nnew connections: {} requests, {} not answered within {:.0} ms ({} of them answered within {:.0} ms, {} \
             failed outside the windows); answer time median {:.1} ms, p99 {:.1} ms, slowest {:.0} ms",
            tr.requests,
            tr.failed,
            ms(PROBE_DEADLINE),
            tr.answered_late,
            ms(GRACE),
            tr.failed_outside_windows,
            tr.median_ms,
            tr.p99_ms,
            tr.slowest_ok_ms
        );
        let _ = writeln!(
            t,
            "long-lived connections: {} ({} requests on them), {} broken with their backend (flap, removal), {} across a \
             failover, re-hashed under another backend set than it was opened under ({} of them by a timeout, not a reset), {} broken \
             otherwise, {} could not open; longest gap {:.0} ms (request loops), {:.0} ms (streams)",
            tr.long_lived,
            tr.long_lived_requests,
            tr.broken_with_their_backend,
            tr.broken_repicked,
            tr.broken.iter().filter(|b| b.ending == Ending::Repicked && b.error != "reset").count(),
            tr.broken_otherwise,
            tr.could_not_open,
            tr.longest_loop_gap_ms,
            tr.longest_stream_gap_ms
        );
        let a = &self.arp;
        let _ = writeln!(
            t,
            "ARP for the VIP: {} requests, {} outside the failover windows: {} with two answers, {} unanswered, {} \
             from the wrong node",
            a.rounds, a.judged, a.two_answers, a.no_answer, a.wrong_node
        );
        for agent in &self.agents {
            if let Some(f) = &agent.flatness {
                let _ = writeln!(
                    t,
                    "agent {} (pid {}, {:.0} s): resident {} KiB (max {}, {:.1} %), open files {} (max {}, {:.1} %)",
                    agent.node,
                    agent.pid,
                    agent.lived_s,
                    f.rss_baseline_kib,
                    f.rss_max_kib,
                    f.rss_deviation_pct,
                    f.fds_baseline,
                    f.fds_max,
                    f.fds_deviation_pct
                );
            }
        }
        let short = self.agents.iter().filter(|a| a.flatness.is_none()).count();
        let _ = writeln!(t, "({short} agents lived too short to judge after the {} s warm-up)", WARMUP.as_secs());
        if let Some(b) = &self.burst {
            let _ = writeln!(
                t,
                "spoofed burst: {} frames in {:.1} s and {} adverts; the active node forwarded {} and found no port for \
                 {}; adverts discarded per node {:?}",
                b.frames, b.seconds, b.adverts, b.nat_forward_tx, b.drop_nat_no_port, b.adverts_discarded_per_node
            );
        }
        let changes: Vec<String> = self.reload_changes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(t, "reload changes: {}", changes.join(", "));
        let l = &self.leftovers;
        let _ = writeln!(
            t,
            "left behind: BPF {} of {} objects held, pins {} (new on the machine: {}), namespaces {}, processes {} of {}",
            l.bpf_left.total(),
            l.bpf_seen.total(),
            l.pins_ours.len(),
            l.pins_new.len(),
            l.namespaces_left.len(),
            l.processes_left.len(),
            l.processes_spawned
        );
        let _ = writeln!(t, "\n{} violations", self.violations.len());
        for v in &self.violations {
            let at = v.at.map_or_else(String::new, |a| format!("{a:.1} s "));
            let _ = writeln!(t, "  {at}{}: {}", v.what, v.detail);
        }
        t
    }
}
