//! `cargo xtask soak --minutes N`: three xvip nodes, three backends, traffic through the VIP, and faults at seeded
//! random times (see `xvip_tests::soak`). Prints the seed first and the figures as a table at the end, writes them
//! as JSON to `<out>/soak-<seed>.json` (and `<out>/soak.json`), and exits 1 when any assertion was violated, 2 on
//! bad arguments.
//!
//! ```text
//! xvip-soak [--minutes N] [--seed S] [--out DIR]     (defaults: 10 minutes, a seed from the clock, target/soak)
//! ```
//! Needs root and the built binaries: `XVIP_BIN` (else target/release/xvip) and `XVIP_LAB_BACKEND` (else next to
//! this program). `cargo xtask soak` sets both.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xvip_tests::soak::{self, Options};

extern "C" fn on_signal(_: libc::c_int) {
    soak::INTERRUPTED.store(true, Ordering::SeqCst);
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("xvip-soak: {problem}\nusage: xvip-soak [--minutes N] [--seed S] [--out DIR] [--tolerate VIOLATION]...");
    ExitCode::from(2)
}

/// The options, and the kinds of violation (`Violation::what`) that are reported but do not fail the run.
fn parse() -> Result<(Options, Vec<String>)> {
    let mut minutes = 10.0_f64;
    let mut seed = None;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/soak");
    let mut tolerate = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--minutes" => minutes = value()?.parse().context("--minutes: a number")?,
            "--seed" => seed = Some(value()?.parse().context("--seed: a whole number")?),
            "--out" => out = PathBuf::from(value()?),
            "--tolerate" => tolerate.push(value()?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
        bail!("--minutes must be above 0 and at most a day, got {minutes}");
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    Ok((Options { length: Duration::from_secs_f64(minutes * 60.0), seed, backend_bin: None, out }, tolerate))
}

fn main() -> ExitCode {
    let (options, tolerate) = match parse() {
        Ok(o) => o,
        Err(e) => return usage(&format!("{e:#}")),
    };
    if !xvip_tests::is_root() {
        eprintln!("xvip-soak: needs root (it builds network namespaces and loads XDP programs)");
        return ExitCode::FAILURE;
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
    println!(
        "xvip-soak: seed {} ({:.1} minutes planned; repeat with --seed {})",
        options.seed,
        options.length.as_secs_f64() / 60.0,
        options.seed
    );
    let out = options.out.clone();
    let figures = match soak::run(options) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("xvip-soak: the run could not be judged: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("\n{}", figures.table());
    let json = match serde_json::to_string_pretty(&figures) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("xvip-soak: encoding the figures: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = std::fs::create_dir_all(&out)
        .and_then(|()| std::fs::write(out.join(format!("soak-{}.json", figures.seed)), &json))
        .and_then(|()| std::fs::write(out.join("soak.json"), &json));
    match written {
        Ok(()) => println!("figures: {}", out.join(format!("soak-{}.json", figures.seed)).display()),
        Err(e) => eprintln!("xvip-soak: writing the figures to {}: {e}", out.display()),
    }
    println!("agent logs: {}", out.join(format!("logs-{}", figures.seed)).display());
    let (tolerated, failing): (Vec<_>, Vec<_>) = figures.violations.iter().partition(|v| tolerate.contains(&v.what));
    if !tolerated.is_empty() {
        println!(
            "soak: {} violation(s) of a known open defect, tolerated by --tolerate (see RELIABILITY.md): {:?}",
            tolerated.len(),
            tolerated.iter().map(|v| v.what.as_str()).collect::<Vec<_>>()
        );
    }
    if failing.is_empty() {
        println!(
            "soak: ok, {:.0} s, no violation{}",
            figures.ran_s,
            if tolerated.is_empty() { "" } else { " but the tolerated" }
        );
        ExitCode::SUCCESS
    } else {
        println!("soak: {} violations in {:.0} s (seed {})", figures.violations.len(), figures.ran_s, figures.seed);
        ExitCode::FAILURE
    }
}
