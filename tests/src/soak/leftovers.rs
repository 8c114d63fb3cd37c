//! What a run must not leave behind, counting only what it created: the BPF programs, maps and links its agents
//! and its own XDP stubs held (read from `/proc/PID/fdinfo` while they ran, looked up with bpftool at the end),
//! pins of those objects, its network namespaces, and its processes (by pid and start time, so a recycled pid is
//! not mistaken for one of ours).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{cmd, netns};

/// BPF object ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BpfIds {
    pub progs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
}

impl BpfIds {
    pub fn extend(&mut self, other: &BpfIds) {
        self.progs.extend(&other.progs);
        self.maps.extend(&other.maps);
        self.links.extend(&other.links);
    }

    pub fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }

    /// The ids present in both.
    pub fn common(&self, other: &BpfIds) -> BpfIds {
        BpfIds {
            progs: self.progs.intersection(&other.progs).copied().collect(),
            maps: self.maps.intersection(&other.maps).copied().collect(),
            links: self.links.intersection(&other.links).copied().collect(),
        }
    }

    pub fn total(&self) -> usize {
        self.progs.len() + self.maps.len() + self.links.len()
    }
}

/// The BPF objects `pid` holds file descriptors of (`prog_id`, `map_id`, `link_id` lines of its fdinfo). Empty
/// when the process is gone.
pub fn bpf_ids_of(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return ids };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        parse_fdinfo(&text, &mut ids);
    }
    ids
}

fn parse_fdinfo(text: &str, ids: &mut BpfIds) {
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let Ok(id) = value.trim().parse::<u32>() else { continue };
        match key.trim() {
            "prog_id" => ids.progs.insert(id),
            "map_id" => ids.maps.insert(id),
            "link_id" => ids.links.insert(id),
            _ => false,
        };
    }
}

/// Every BPF program, map and link on the machine (`bpftool -j ... show`).
///
/// # Errors
/// When bpftool fails or prints something else than a JSON list.
pub fn bpf_existing() -> Result<BpfIds> {
    let list = |what: &str| -> Result<BTreeSet<u32>> {
        let out = cmd::run_args("bpftool", ["-j", what, "show"])?;
        let value: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("bpftool {what} show: not JSON: {out:.200}"))?;
        Ok(value
            .as_array()
            .map(|a| a.iter().filter_map(|o| o.get("id")?.as_u64()).filter_map(|id| u32::try_from(id).ok()).collect())
            .unwrap_or_default())
    };
    Ok(BpfIds { progs: list("prog")?, maps: list("map")?, links: list("link")? })
}

/// Every path under the BPF filesystem (`/sys/fs/bpf`), where pinned objects live.
pub fn pins() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, found: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, found);
            } else {
                found.insert(path);
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(Path::new("/sys/fs/bpf"), &mut found);
    found
}

/// The id of the program or map pinned at `path`, if it is one.
pub fn pinned_id(path: &Path) -> Option<(&'static str, u32)> {
    let p = path.to_string_lossy();
    for what in ["prog", "map", "link"] {
        if let Ok(out) = cmd::run_args("bpftool", ["-j", what, "show", "pinned", &p])
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&out)
            && let Some(id) = value.get("id").and_then(serde_json::Value::as_u64)
        {
            return u32::try_from(id).ok().map(|id| (what, id));
        }
    }
    None
}

/// A process the run started, recognised by pid and start time (`/proc/PID/stat` field 22).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Spawned {
    pub pid: u32,
    pub start_ticks: u64,
    pub label: String,
}

impl Spawned {
    /// Records `pid` (running now).
    pub fn of(pid: u32, label: impl Into<String>) -> Option<Spawned> {
        Some(Spawned { pid, start_ticks: start_ticks(pid)?, label: label.into() })
    }

    /// Whether this very process still exists (a zombie counts: nobody reaped it).
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Processes whose command line mentions `needle` (the run's lab directory), other than this one.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            found.push((pid, line.trim().to_owned()));
        }
    }
    found
}

/// The lab namespaces of this process (any of its labs) that still exist.
///
/// # Errors
/// When `/run/netns` cannot be read.
pub fn namespaces_of_this_process() -> Result<Vec<String>> {
    let prefix = format!("{}{}-", netns::PREFIX, std::process::id());
    Ok(netns::list_lab_namespaces()?.into_iter().filter(|n| n.starts_with(&prefix)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_maps_programs_and_links() {
        let mut ids = BpfIds::default();
        parse_fdinfo("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t2\nmap_id:\t412\n", &mut ids);
        parse_fdinfo(
            "pos:\t0\nprog_type:\t6\nprog_jited:\t1\nprog_tag:\tabc\nmemlock:\t4096\nprog_id:\t97\n",
            &mut ids,
        );
        parse_fdinfo("link_type:\txdp\nlink_id:\t31\nprog_tag:\tabc\nprog_id:\t97\nifindex:\t2\n", &mut ids);
        parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t8\n", &mut ids);
        assert_eq!(ids.maps, BTreeSet::from([412]));
        assert_eq!(ids.progs, BTreeSet::from([97]));
        assert_eq!(ids.links, BTreeSet::from([31]));
        let other = BpfIds { progs: BTreeSet::from([97, 98]), ..BpfIds::default() };
        assert_eq!(ids.common(&other).total(), 1);
    }

    #[test]
    fn this_process_is_recognised_by_its_start_time() {
        let me = Spawned::of(std::process::id(), "me").expect("own stat");
        assert!(me.alive());
        let other = Spawned { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(!other.alive(), "same pid, another start time: a recycled pid");
    }
}
