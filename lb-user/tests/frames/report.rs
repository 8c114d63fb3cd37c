//! What the run saw: frames per kind and verdict, mutations, and each rule violation with a count and one example.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::{RULES, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use crate::traffic::{Kind, MUTATIONS};

/// The first frame that broke a rule.
pub struct Example {
    pub detail: String,
    pub kind: Kind,
    pub input: Vec<u8>,
    pub output: Option<(u32, Vec<u8>)>,
}

#[derive(Default, Clone, Copy)]
struct Row {
    frames: u64,
    mutated: u64,
    /// ABORTED, DROP, PASS, TX, REDIRECT, other.
    verdicts: [u64; 6],
}

pub struct Report {
    pub seed: u64,
    rows: BTreeMap<Kind, Row>,
    mutations: [u64; MUTATIONS.len()],
    violations: BTreeMap<&'static str, (u64, Example)>,
    /// Frames forwarded with the bad TCP/UDP checksum they arrived with (allowed; see `check`).
    pub bad_l4_passed_on: u64,
    pub epochs: u64,
    pub state_scans: u64,
    pub state_entries_read: u64,
    pub largest_tables: usize,
}

impl Report {
    pub fn new(seed: u64) -> Self {
        Report {
            seed,
            rows: BTreeMap::new(),
            mutations: [0; MUTATIONS.len()],
            violations: BTreeMap::new(),
            bad_l4_passed_on: 0,
            epochs: 0,
            state_scans: 0,
            state_entries_read: 0,
            largest_tables: 0,
        }
    }

    pub fn frame(&mut self, kind: Kind, mutations: &[usize], action: u32) {
        let row = self.rows.entry(kind).or_default();
        row.frames += 1;
        row.mutated += u64::from(!mutations.is_empty());
        let column = match action {
            XDP_ABORTED => 0,
            XDP_DROP => 1,
            XDP_PASS => 2,
            XDP_TX => 3,
            XDP_REDIRECT => 4,
            _ => 5,
        };
        row.verdicts[column] += 1;
        for &m in mutations {
            self.mutations[m] += 1;
        }
    }

    pub fn violation(&mut self, rule: &'static str, example: impl FnOnce() -> Example) {
        match self.violations.get_mut(rule) {
            Some((count, _)) => *count += 1,
            None => {
                self.violations.insert(rule, (1, example()));
            }
        }
    }

    pub fn frames(&self) -> u64 {
        self.rows.values().map(|r| r.frames).sum()
    }

    pub fn total_violations(&self) -> u64 {
        self.violations.values().map(|(n, _)| n).sum()
    }

    /// Rule names with their counts, for the assertion message.
    pub fn violation_counts(&self) -> Vec<(&'static str, u64)> {
        self.violations.iter().map(|(r, (n, _))| (*r, *n)).collect()
    }

    pub fn render(&self, seconds: f64) -> String {
        let mut s = String::new();
        let frames = self.frames();
        let _ = writeln!(
            s,
            "random frames through the XDP program: {frames} frames in {seconds:.1} s ({:.0}/s), seed {}, {} node \
             starts, {} full state scans ({} entries read, largest tables {} entries)",
            frames as f64 / seconds.max(1e-9),
            self.seed,
            self.epochs,
            self.state_scans,
            self.state_entries_read,
            self.largest_tables,
        );
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "kind", "frames", "mutated", "ABORTED", "DROP", "PASS", "TX", "REDIRECT", "other"
        );
        let mut total = Row::default();
        for kind in Kind::ALL {
            let r = self.rows.get(&kind).copied().unwrap_or_default();
            let v = r.verdicts;
            let _ = writeln!(
                s,
                "{:<28} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6}",
                kind.name(),
                r.frames,
                r.mutated,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5]
            );
            total.frames += r.frames;
            total.mutated += r.mutated;
            for (t, x) in total.verdicts.iter_mut().zip(v) {
                *t += x;
            }
        }
        let v = total.verdicts;
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "all", total.frames, total.mutated, v[0], v[1], v[2], v[3], v[4], v[5]
        );
        let mutations: Vec<String> = MUTATIONS.iter().zip(self.mutations).map(|(m, n)| format!("{m} {n}")).collect();
        let _ = writeln!(s, "mutations applied: {}", mutations.join(", "));
        let _ = writeln!(
            s,
            "forwarded with the bad TCP/UDP checksum they arrived with (allowed): {}",
            self.bad_l4_passed_on
        );
        if self.violations.is_empty() {
            let _ = writeln!(s, "violations: 0 (rules checked: {})", RULES.len());
            return s;
        }
        let _ = writeln!(s, "violations: {} of {} kinds", self.total_violations(), self.violations.len());
        for (rule, (count, e)) in &self.violations {
            let meaning = RULES.iter().find(|(r, _)| r == rule).map_or("", |(_, m)| *m);
            let _ = writeln!(s, "  {rule}: {count} ({meaning})");
            let _ = writeln!(s, "    e.g. {}: {}", e.kind.name(), e.detail);
            let _ = writeln!(s, "    in  ({} bytes): {}", e.input.len(), hex(&e.input));
            if let Some((action, out)) = &e.output {
                let _ =
                    writeln!(s, "    out {} ({} bytes): {}", crate::check::verdict_name(*action), out.len(), hex(out));
            }
        }
        s
    }
}

/// Hex, cut after 512 bytes.
pub fn hex(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(512).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 512 { format!("{shown}...") } else { shown }
}
