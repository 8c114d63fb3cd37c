//! `xvip-bench maglev`: how long the agent takes to build a Maglev table (M = 65537, the data plane's size) for
//! N backends, and how many slots (flows without connection-table state) move when one backend leaves or joins,
//! next to the ideal 1/N.
use std::time::Instant;

use anyhow::{Result, anyhow};
use lb_common::{MAGLEV_M, NO_BACKEND};
use serde_json::json;
use xvip::maglev::{self, MaglevBackend};

use crate::Options;
use crate::report::{self, Section, Table, jnum, num};

/// Backend counts measured.
const SIZES: [u32; 3] = [3, 100, 1000];
/// The target of the issue at N = 1000.
const TARGET_MS: f64 = 20.0;

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            id: i,
            key: format!("10.{}.{}.{}:6443", 10 + i / 65_536, i / 256 % 256, i % 256),
            weight: 1,
        })
        .collect()
}

fn build(members: &[MaglevBackend]) -> Result<Vec<u32>> {
    maglev::build(members, MAGLEV_M).map_err(|e| anyhow!("building a Maglev table: {e}"))
}

/// Slots per backend id: (fewest, most) relative to the even share M/N.
fn balance(table: &[u32], n: u32) -> (f64, f64) {
    let mut counts = vec![0u32; n as usize];
    for &id in table {
        if id != NO_BACKEND {
            counts[id as usize] += 1;
        }
    }
    let even = f64::from(MAGLEV_M) / f64::from(n);
    let lo = counts.iter().copied().min().unwrap_or(0);
    let hi = counts.iter().copied().max().unwrap_or(0);
    (f64::from(lo) / even, f64::from(hi) / even)
}

pub fn run(options: &Options) -> Result<Section> {
    let builds = options.rounds.unwrap_or(9);
    let mut table = Table::new(&[
        "N backends",
        "build, median (min..max)",
        "target",
        "moved when 1 leaves (ideal 1/N)",
        "moved when 1 joins (ideal 1/(N+1))",
        "slots per backend, min..max of even share",
    ]);
    let mut rows = Vec::new();
    for n in SIZES {
        let members = backends(n);
        let mut times = Vec::with_capacity(builds);
        let mut full = Vec::new();
        for _ in 0..builds {
            let start = Instant::now();
            full = build(&members)?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let median = report::median(&times);
        // One backend from the middle leaves; a new one joins.
        let mut fewer = members.clone();
        fewer.remove(n as usize / 2);
        let leave = maglev::moved_share(&full, &build(&fewer)?);
        let mut more = members.clone();
        more.push(MaglevBackend { id: n, key: "10.200.0.1:6443".into(), weight: 1 });
        let join = maglev::moved_share(&full, &build(&more)?);
        let (lo, hi) = balance(&full, n);
        let target = if n == 1000 {
            format!("< {TARGET_MS} ms: {}", report::verdict(median < TARGET_MS))
        } else {
            String::new()
        };
        eprintln!("[bench] maglev: N = {n}: {median:.2} ms, {:.2} % moved on leave", leave * 100.0);
        table.row(vec![
            n.to_string(),
            format!("{} ms ({}..{})", num(median, 2), num(report::min(&times), 2), num(report::max(&times), 2)),
            target,
            format!("{:.2} % ({:.2} %)", leave * 100.0, 100.0 / f64::from(n)),
            format!("{:.2} % ({:.2} %)", join * 100.0, 100.0 / f64::from(n + 1)),
            format!("{lo:.3}..{hi:.3}"),
        ]);
        rows.push(json!({
            "backends": n,
            "m": MAGLEV_M,
            "build_ms_median": jnum(median),
            "build_ms_samples": times,
            "target_ms": if n == 1000 { json!(TARGET_MS) } else { json!(null) },
            "moved_share_one_leaves": leave,
            "moved_share_one_joins": join,
            "ideal_leave": 1.0 / f64::from(n),
            "ideal_join": 1.0 / f64::from(n + 1),
            "slots_min_over_even": lo,
            "slots_max_over_even": hi,
        }));
    }
    let body = format!(
        "{}\n\
         - `xvip::maglev::build` as the agent calls it (release build, one thread), {builds} builds per size, \
         weights 1. The paper reports 1.8 ms at M = 65537.\n\
         - \"Moved\" is the share of the M slots whose backend changes (`maglev::moved_share`): the flows that \
         would change backend if they had no connection-table entry. The leaving backend's own slots (1/N) must \
         move; anything above that is disruption.\n\
         - Balance: the fewest and the most slots any backend holds, over the even share M/N (Maglev keeps shares \
         within ~1 % when M > 100 x N; at N = 1000, M/N is only 65).\n",
        table.markdown()
    );
    Ok(Section::new("maglev", "Maglev table builds (M = 65537)", body, json!({ "builds": builds, "sizes": rows })))
}
