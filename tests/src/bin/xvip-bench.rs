//! xvip-bench: the benchmarks behind `cargo xtask bench` (needs root).
//!
//! ```text
//! xvip-bench [xdp|maglev|failover|e2e|memory ...] [--rounds N] [--repeat N] [--shots N] [--compare OBJ]
//!            [--trials N] [--intervals MS,MS] [--duration S] [--compare-xvip BIN [--compare-label TEXT]]
//!            [--out DIR] [--no-doc]
//! ```
//! Without a benchmark name it runs all of them, in that order. Each prints a markdown table on stdout, writes
//! `target/bench/<name>.json` and replaces its section of `BENCHMARKS.md` at the workspace root.
//!
//! The machine is a shared, noisy 2-core VM, so every figure is paired with a baseline measured side by side in the
//! same run (the XDP_PASS program, a direct connection to one backend, keepalived in the same lab) and reported
//! as a median over rounds. Benchmarks measure and report; they do not fail on a missed target (only on errors).

#[path = "../../../lb-user/tests/support/frames.rs"]
mod frames;

#[path = "xvip-bench/e2e.rs"]
mod e2e;
#[path = "xvip-bench/failover.rs"]
mod failover;
#[path = "xvip-bench/maglev.rs"]
mod maglev;
#[path = "xvip-bench/memory.rs"]
mod memory;
#[path = "xvip-bench/report.rs"]
mod report;
#[path = "xvip-bench/xdp.rs"]
mod xdp;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use report::Section;

/// Every benchmark, in the order `xvip-bench` without arguments runs them.
const ALL: [&str; 5] = ["xdp", "maglev", "failover", "e2e", "memory"];

const USAGE: &str = "\
usage: xvip-bench [BENCH ...] [OPTIONS]

BENCH (default: all, in this order):
  xdp       ns/packet of each XDP path (BPF_PROG_TEST_RUN) next to the XDP_PASS baseline
  maglev    Maglev table build time (M = 65537) and flows moved when a backend leaves
  failover  outages on link down / SIGTERM / SIGKILL, xvip pair vs keepalived pair (netns lab)
  e2e       wrk req/s, p99 and new connections/s: direct, xvip DSR/NAT, nginx, haproxy, nftables, and the
            stacked paths (a backend on the active node, a client on a node) next to their remote ones (netns lab)
  memory    agent RSS and BPF map memory, 1 service x 3 backends and 64 services x 64 backends (netns lab)

OPTIONS:
  --rounds N        xdp rounds (default 5), e2e rounds (default 3), maglev builds (default 9); medians
  --repeat N        xdp: repetitions per BPF_PROG_TEST_RUN call (default 1000000)
  --shots N         xdp: calls per round for paths that change their own frame (default 50000)
  --paths TEXT      xdp: only the paths whose name contains TEXT (for profiling one path)
  --compare OBJ     xdp: also measure the eBPF object OBJ (a copy of an earlier `cargo xtask build-ebpf`),
                    alternately with this build in every round, and print the difference per path
                    (BENCHMARKS.md is then left alone)
  --trials N        failover: trials per case (default 3)
  --intervals LIST  failover: advert intervals in ms, comma separated (default 1000,100)
  --duration S      e2e: seconds per wrk run (default 5)
  --compare-xvip BIN
                    e2e: also measure the xvip binary BIN (an older build, with its own eBPF object) on the DSR
                    and NAT paths, right next to this build's in every round (the order alternating), as rows
                    \"xvip DSR (older: LABEL)\" and \"xvip NAT (older: LABEL)\"
  --compare-label TEXT
                    e2e: what BIN is, for those rows (a commit, say; default: BIN's file name)
  --out DIR         where the JSON goes (default <workspace>/target/bench)
  --no-doc          do not update BENCHMARKS.md
";

/// Command-line options shared by all benchmarks.
#[derive(Clone, Debug)]
pub struct Options {
    pub benches: Vec<String>,
    pub rounds: Option<usize>,
    pub repeat: u32,
    pub shots: usize,
    /// xdp: only the paths whose name contains this (every path when empty).
    pub paths: String,
    /// xdp: an earlier eBPF object to measure alternately with this build.
    pub compare: Option<PathBuf>,
    pub trials: usize,
    pub intervals: Vec<u32>,
    pub duration: u32,
    /// e2e: an older xvip binary whose DSR and NAT rows are measured next to this build's.
    pub compare_xvip: Option<PathBuf>,
    /// e2e: what `compare_xvip` is (`None`: its file name).
    pub compare_label: Option<String>,
    pub out: PathBuf,
    pub doc: bool,
    /// The command line, for the report's "reproduce" line.
    pub command: String,
}

fn parse_args() -> Result<Options> {
    parse(std::env::args().skip(1).collect())
}

/// The options of a command line (without the program name).
fn parse(args: Vec<String>) -> Result<Options> {
    let mut o = Options {
        benches: Vec::new(),
        rounds: None,
        repeat: 1_000_000,
        shots: 50_000,
        paths: String::new(),
        compare: None,
        trials: 3,
        intervals: vec![1000, 100],
        duration: 5,
        compare_xvip: None,
        compare_label: None,
        out: report::workspace_root().join("target/bench"),
        doc: true,
        command: format!("cargo xtask bench {}", args.join(" ")).trim_end().to_string(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--rounds" => o.rounds = Some(number(&value("--rounds")?, "--rounds")?),
            "--repeat" => o.repeat = number(&value("--repeat")?, "--repeat")?,
            "--shots" => o.shots = number(&value("--shots")?, "--shots")?,
            "--paths" => o.paths = value("--paths")?,
            "--compare" => {
                o.compare = Some(PathBuf::from(value("--compare")?));
                o.doc = false;
            }
            "--trials" => o.trials = number(&value("--trials")?, "--trials")?,
            "--duration" => o.duration = number(&value("--duration")?, "--duration")?,
            "--intervals" => {
                o.intervals = value("--intervals")?
                    .split(',')
                    .map(|s| number::<u32>(s.trim(), "--intervals"))
                    .collect::<Result<_>>()?;
            }
            "--compare-xvip" => o.compare_xvip = Some(PathBuf::from(value("--compare-xvip")?)),
            "--compare-label" => o.compare_label = Some(value("--compare-label")?),
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--no-doc" => o.doc = false,
            "all" => o.benches.extend(ALL.iter().map(|s| s.to_string())),
            name if ALL.contains(&name) => o.benches.push(name.to_string()),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    match (&o.compare_xvip, &o.compare_label) {
        (None, Some(_)) => bail!("--compare-label names the binary of --compare-xvip, which is missing\n{USAGE}"),
        (Some(bin), _) if !bin.is_file() => {
            bail!(
                "--compare-xvip: no xvip binary at {} (build it with `cargo xtask build` in a checkout of the older commit)",
                bin.display()
            )
        }
        (_, Some(label)) if label.trim().is_empty() => bail!("--compare-label must not be empty"),
        _ => {}
    }
    if o.benches.is_empty() {
        o.benches = ALL.iter().map(|s| s.to_string()).collect();
    }
    for interval in &o.intervals {
        if !(10..=40950).contains(interval) || interval % 10 != 0 {
            bail!("--intervals: {interval} ms is not a VRRPv3 advert interval (10..=40950, a multiple of 10)");
        }
    }
    Ok(o)
}

fn number<T: std::str::FromStr + PartialOrd + Default>(text: &str, name: &str) -> Result<T> {
    match text.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => bail!("{name} must be a positive number, got {text:?}"),
    }
}

fn run(name: &str, options: &Options) -> Result<Section> {
    match name {
        "xdp" => xdp::run(options),
        "maglev" => maglev::run(options),
        "failover" => failover::run(options),
        "e2e" => e2e::run(options),
        "memory" => memory::run(options),
        other => bail!("no benchmark {other:?}"),
    }
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xvip-bench: {e:#}");
            std::process::exit(2);
        }
    };
    if !xvip_tests::is_root() {
        eprintln!("xvip-bench: needs root (it loads BPF programs and builds network namespaces)");
        std::process::exit(2);
    }
    let machine = report::Machine::detect();
    eprintln!("[bench] machine: {}", machine.line());
    let mut failed = Vec::new();
    for name in &options.benches {
        let started = Instant::now();
        eprintln!("[bench] {name}: starting");
        match run(name, &options) {
            Ok(mut section) => {
                section.seconds = started.elapsed().as_secs_f64();
                println!("{}", section.markdown(&machine, &options));
                if let Err(e) = section.save(&machine, &options) {
                    eprintln!("[bench] {name}: saving the results: {e:#}");
                    failed.push(name.clone());
                }
                eprintln!("[bench] {name}: done in {:.1} s", section.seconds);
            }
            Err(e) => {
                eprintln!("[bench] {name}: failed after {:.1} s: {e:#}", started.elapsed().as_secs_f64());
                failed.push(name.clone());
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("[bench] failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn error(words: &[&str]) -> String {
        format!("{:#}", parse(args(words)).expect_err("refused"))
    }

    #[test]
    fn compare_xvip_takes_a_binary_and_a_label() {
        let plain = parse(args(&["e2e"])).expect("parses");
        assert_eq!((plain.compare_xvip, plain.compare_label), (None, None));
        let exe = std::env::current_exe().expect("the test binary");
        let exe_text = exe.to_string_lossy().into_owned();
        let o = parse(args(&["e2e", "--compare-xvip", &exe_text, "--compare-label", "ed5542d"])).expect("parses");
        assert_eq!(o.compare_xvip, Some(exe.clone()));
        assert_eq!(o.compare_label.as_deref(), Some("ed5542d"));
        assert!(o.doc, "the e2e section is still written");
        let o = parse(args(&["--compare-xvip", &exe_text])).expect("parses");
        assert_eq!((o.compare_xvip, o.compare_label), (Some(exe), None));
    }

    #[test]
    fn compare_xvip_errors_are_clear() {
        assert!(error(&["e2e", "--compare-xvip"]).starts_with("--compare-xvip needs a value"));
        assert!(
            error(&["e2e", "--compare-label", "old"]).starts_with("--compare-label names the binary of --compare-xvip")
        );
        let missing = error(&["e2e", "--compare-xvip", "/nonexistent/xvip-old"]);
        assert!(missing.starts_with("--compare-xvip: no xvip binary at /nonexistent/xvip-old"), "{missing}");
        let exe = std::env::current_exe().expect("the test binary").to_string_lossy().into_owned();
        assert!(
            error(&["--compare-xvip", &exe, "--compare-label", " "]).starts_with("--compare-label must not be empty")
        );
    }
}
