//! `cargo xtask fuzz`: libFuzzer (through cargo-fuzz, with nightly) over every parser of outside input, one target
//! after the other, and a table of what each run did.
//!
//! The targets live in `fuzz/` (its own cargo workspace, like lb-ebpf). Each run starts from the committed seeds
//! (`fuzz/seeds/TARGET`) and the corpus earlier runs grew (`fuzz/corpus/TARGET`, not committed); a crash leaves its
//! input in `fuzz/artifacts/TARGET/` and fails the command, with the line that replays it.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{root, run, step};

/// Every target, with what it feeds.
pub const TARGETS: &[(&str, &str)] = &[
    ("vrrp_packet", "VRRP adverts from the raw socket: parse_ipv4, then emit and parse again"),
    ("vrrp_machine", "the VRRP state machine driven by received adverts, timers and priority changes"),
    ("config", "the config file: config::parse, and reload plans of what it accepts"),
    ("http_status", "the http/https health probe's reading of a server's answer"),
];

/// How long each target runs.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Seconds(u64),
    Runs(u64),
}

/// What one target's run did, from libFuzzer's final statistics.
struct Outcome {
    target: &'static str,
    executions: u64,
    seconds: f64,
    corpus: usize,
    crashed: bool,
    log: PathBuf,
}

/// Fuzzes `only` (or every target) within `budget` each; fails if any target crashed.
pub fn fuzz(only: Option<&str>, budget: Budget) -> Result<()> {
    let targets: Vec<&'static str> = match only {
        None => TARGETS.iter().map(|(name, _)| *name).collect(),
        Some(name) => match TARGETS.iter().find(|(t, _)| *t == name) {
            Some((t, _)) => vec![*t],
            None => {
                let known: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
                bail!("no fuzz target {name:?}; the targets are {}", known.join(", "));
            }
        },
    };
    // lb-user embeds the eBPF object, so the library the targets link needs it built (a no-op when it is).
    crate::build_ebpf()?;
    step("building the fuzz targets (cargo-fuzz, nightly, with overflow checks)");
    run(cargo_fuzz("build").args(targets_arg(&targets)))?;
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(fuzz_one(target, budget)?);
    }
    print_table(&outcomes);
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crashed).collect();
    if !crashed.is_empty() {
        for o in &crashed {
            eprintln!("--- {} (full log: {})", o.target, o.log.display());
            eprintln!("{}", tail(&o.log, 40));
        }
        let names: Vec<&str> = crashed.iter().map(|o| o.target).collect();
        bail!(
            "fuzzing found a crash in {}: the input is in fuzz/artifacts/<target>/; replay it with \
             `cargo +nightly fuzz run --fuzz-dir fuzz -s none -a <target> <file>`",
            names.join(", ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz <sub> --fuzz-dir fuzz -s none -a`: no sanitizer (the code under test is safe Rust; a panic
/// or an overflow is what is looked for, and without ASan a run is about twice as fast), debug assertions and
/// overflow checks on.
fn cargo_fuzz(sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("PATH", crate::path_with_cargo_bin())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .args(["+nightly", "fuzz", sub, "--fuzz-dir", "fuzz", "--sanitizer", "none", "--debug-assertions"]);
    cmd
}

fn targets_arg(targets: &[&str]) -> Vec<String> {
    // `cargo fuzz build` takes one target or none (all).
    if targets.len() == 1 { vec![targets[0].to_string()] } else { Vec::new() }
}

fn fuzz_one(target: &'static str, budget: Budget) -> Result<Outcome> {
    let fuzz_dir = root().join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if target == "config" {
        // The shipped example is the best seed there is; copied each time so it never goes stale.
        let example = root().join("deploy/xvip.example.toml");
        std::fs::copy(&example, corpus.join("deploy-xvip.example.toml"))
            .with_context(|| format!("copying {} into the corpus", example.display()))?;
    }
    let logs = root().join("target/fuzz");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!("{target}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    let mut cmd = cargo_fuzz("run");
    cmd.arg(target).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--");
    match budget {
        Budget::Seconds(s) => cmd.arg(format!("-max_total_time={s}")),
        Budget::Runs(n) => cmd.arg(format!("-runs={n}")),
    };
    let dict = fuzz_dir.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    // A unit that takes 10 s is a finding too (a parser that is quadratic in its input).
    cmd.args(["-timeout=10", "-print_final_stats=1"]);
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()));
    cmd.stdout(log_file.try_clone().context("duplicating the log file")?).stderr(log_file);

    let what = match budget {
        Budget::Seconds(s) => format!("{s} s"),
        Budget::Runs(n) => format!("{n} runs"),
    };
    step(&format!("fuzzing {target} for {what} (log: {})", log.display()));
    let started = Instant::now();
    let status = cmd.status().context("starting cargo fuzz (is cargo-fuzz installed? `cargo xtask setup`)")?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let executions = final_stat(&text, "stat::number_of_executed_units").unwrap_or(0);
    let corpus_files = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    let crashed = !status.success();
    if crashed && executions == 0 && !text.contains("ERROR: libFuzzer") {
        eprintln!("{}", tail(&log, 40));
        bail!("cargo fuzz run {target} failed before fuzzing ({status}); log: {}", log.display());
    }
    Ok(Outcome { target, executions, seconds, corpus: corpus_files, crashed, log })
}

/// The value of a `-print_final_stats=1` line (`stat::name: value`).
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| l.strip_prefix(name)?.trim_start_matches(':').trim().parse().ok())
}

fn print_table(outcomes: &[Outcome]) {
    step("fuzzing summary");
    eprintln!("{:<14} {:>12} {:>9} {:>10} {:>8}  result", "target", "executions", "seconds", "exec/s", "corpus");
    for o in outcomes {
        let rate = if o.seconds > 0.0 { o.executions as f64 / o.seconds } else { 0.0 };
        let result = if o.crashed { "CRASH" } else { "0 crashes" };
        eprintln!("{:<14} {:>12} {:>9.1} {:>10.0} {:>8}  {result}", o.target, o.executions, o.seconds, rate, o.corpus);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether the given `cargo-fuzz` is the pinned version.
pub fn cargo_fuzz_version_ok(output: &[u8], version: &str) -> bool {
    String::from_utf8_lossy(output).split_whitespace().any(|w| w == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#1000000\tDONE   cov: 812 ft: 3301 corp: 410/21Kb\nDone 1000000 runs in 41 second(s)\n\
                   stat::number_of_executed_units: 1000000\nstat::average_exec_per_sec:     24390\n";
        assert_eq!(final_stat(log, "stat::number_of_executed_units"), Some(1_000_000));
        assert_eq!(final_stat(log, "stat::average_exec_per_sec"), Some(24390));
        assert_eq!(final_stat(log, "stat::new_units_added"), None);
    }

    #[test]
    fn recognises_the_pinned_cargo_fuzz() {
        assert!(cargo_fuzz_version_ok(b"cargo-fuzz 0.13.2\n", "0.13.2"));
        assert!(!cargo_fuzz_version_ok(b"cargo-fuzz 0.13.20\n", "0.13.2"));
        assert!(!cargo_fuzz_version_ok(b"", "0.13.2"));
    }
}
