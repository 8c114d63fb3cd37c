//! Output of the benchmarks: markdown tables on stdout, a JSON file per benchmark, and its section of
//! `BENCHMARKS.md` (between `<!-- xvip-bench:NAME:begin -->` and `<!-- xvip-bench:NAME:end -->`).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::Options;

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// What the figures were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub memory_mib: u64,
}

impl Machine {
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Machine { cpus, kernel, cpu_model, memory_mib }
    }

    pub fn line(&self) -> String {
        format!("{} CPUs (`nproc`), {}, kernel {}, {} MiB RAM", self.cpus, self.cpu_model, self.kernel, self.memory_mib)
    }

    fn json(&self) -> Value {
        json!({ "nproc": self.cpus, "kernel": self.kernel, "cpu_model": self.cpu_model, "memory_mib": self.memory_mib })
    }
}

/// The result of one benchmark.
#[derive(Debug)]
pub struct Section {
    /// `xdp`, `maglev`, ...
    pub name: &'static str,
    pub title: &'static str,
    /// Markdown: tables and notes.
    pub body: String,
    pub json: Value,
    /// Wall-clock time of the whole benchmark (set by the caller).
    pub seconds: f64,
}

impl Section {
    pub fn new(name: &'static str, title: &'static str, body: String, json: Value) -> Self {
        Section { name, title, body, json, seconds: 0.0 }
    }

    /// The section as it goes to stdout and into BENCHMARKS.md.
    pub fn markdown(&self, machine: &Machine, options: &Options) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {}\n", self.title);
        let _ = writeln!(
            s,
            "Measured {} at {} on {}; took {:.1} s. Reproduce: `{}`.\n",
            utc_now(),
            revision(),
            machine.line(),
            self.seconds,
            reproduce(self.name, options)
        );
        s.push_str(self.body.trim_end());
        s.push('\n');
        s
    }

    /// Writes `<out>/<name>.json` and, unless `--no-doc`, this section of BENCHMARKS.md.
    pub fn save(&self, machine: &Machine, options: &Options) -> Result<()> {
        std::fs::create_dir_all(&options.out).with_context(|| format!("creating {}", options.out.display()))?;
        let path = options.out.join(format!("{}.json", self.name));
        let doc = json!({
            "benchmark": self.name,
            "measured_utc": utc_now(),
            "seconds": self.seconds,
            "revision": revision(),
            "machine": machine.json(),
            "command": reproduce(self.name, options),
            "results": self.json,
        });
        let text = serde_json::to_string_pretty(&doc).context("serialising the results")?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[bench] {}: wrote {}", self.name, path.display());
        if options.doc {
            let md = workspace_root().join("BENCHMARKS.md");
            update_doc(&md, self.name, &self.markdown(machine, options))?;
            eprintln!("[bench] {}: updated {}", self.name, md.display());
        }
        Ok(())
    }
}

/// The code measured: `commit abc1234`, plus a mark when the work tree has uncommitted changes.
pub fn revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "an unknown revision".into(),
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("commit {commit} + uncommitted changes") } else { format!("commit {commit}") }
        }
    }
}

/// The command that reruns just this benchmark with the same options.
fn reproduce(name: &str, options: &Options) -> String {
    let mut words: Vec<String> = options
        .command
        .split_whitespace()
        .filter(|w| !crate::ALL.contains(w) && *w != "all")
        .map(str::to_string)
        .collect();
    // "cargo xtask bench" then the name then the options.
    let at = words.len().min(3);
    words.insert(at, name.to_string());
    words.join(" ")
}

/// Replaces the text between the section's markers in `path` (appends the section when they are missing; creates
/// the file when it does not exist).
fn update_doc(path: &Path, name: &str, content: &str) -> Result<()> {
    let begin = format!("<!-- xvip-bench:{name}:begin -->");
    let end = format!("<!-- xvip-bench:{name}:end -->");
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# xvip benchmarks\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let block = format!("{begin}\n{}\n{end}", content.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// A markdown table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        s.push_str(&line(&self.headers));
        s.push_str(&line(&self.headers.iter().map(|_| "---".to_string()).collect::<Vec<_>>()));
        for row in &self.rows {
            s.push_str(&line(row));
        }
        s
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The largest of `values`; NaN when empty.
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().filter(|x| !x.is_nan()).fold(f64::NAN, f64::max)
}

/// The smallest of `values`; NaN when empty.
pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().filter(|x| !x.is_nan()).fold(f64::NAN, f64::min)
}

/// The mean of `values` after dropping the lowest and highest `trim` fraction (interrupts and cache misses on a
/// shared VM make single samples jump).
pub fn trimmed_mean(values: &[f64], trim: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let cut = ((v.len() as f64) * trim) as usize;
    let kept = &v[cut..v.len() - cut];
    if kept.is_empty() {
        return median(&v);
    }
    kept.iter().sum::<f64>() / kept.len() as f64
}

/// Milliseconds with the precision that matters for outages.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A number for a table: "n/a" for NaN, else `digits` decimals.
pub fn num(x: f64, digits: usize) -> String {
    if x.is_nan() { "n/a".into() } else { format!("{x:.digits$}") }
}

/// A JSON number, or null for NaN.
pub fn jnum(x: f64) -> Value {
    if x.is_nan() { Value::Null } else { json!(x) }
}

/// "pass" / "miss" for a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "pass" } else { "**miss**" }
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_trimmed_means() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(trimmed_mean(&[1.0, 10.0, 10.0, 10.0, 1000.0], 0.2), 10.0);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn doc_sections_are_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("xvip-bench-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("B.md");
        std::fs::write(&path, "# T\n\nintro\n").expect("write");
        update_doc(&path, "xdp", "one").expect("append");
        update_doc(&path, "maglev", "two").expect("append");
        update_doc(&path, "xdp", "three").expect("replace");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# T\n\nintro\n"));
        assert!(text.contains("<!-- xvip-bench:xdp:begin -->\nthree\n<!-- xvip-bench:xdp:end -->"));
        assert!(text.contains("two") && !text.contains("one"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
