//! `xvip-bench memory`: what the agent costs in memory: its resident set (VmRSS and the peak VmHWM from
//! `/proc/PID/status`) and the kernel memory of its BPF maps (`memlock` of each map fd in `/proc/PID/fdinfo`),
//! with no service, one service of three backends, and 64 services of 64 backends (4096 backends in all).
//!
//! And the several-instance case of issue 15: 64 VRRP instances x 4 services x 16 backends, adverts every 100 ms,
//! with the largest gap between two adverts of one instance as captured on the other node.
//!
//! Health checks are `none` (always healthy); the backends are extra addresses on backend1, so every backend
//! resolves to a MAC and every Maglev table is really built and written.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_common::{MAX_BACKENDS, MAX_SERVICES};
use serde_json::{Value, json};
use xvip_tests::capture::AdvertCapture;
use xvip_tests::xvip::{InstanceSpec, NodeSpec, ServiceSpec};
use xvip_tests::{ChildGuard, Lab, LabSpec};

use crate::Options;
use crate::report::{Section, Table};

/// First host octet of the extra backend addresses on backend1.
const EXTRA_FIRST_OCTET: u8 = 100;
const FIRST_PORT: u16 = 10_000;
/// Instances of the several-instance case, their services and backends; their VIPs start at this host octet.
const INSTANCES: usize = 64;
const SERVICES_PER_INSTANCE: usize = 4;
const BACKENDS_PER_INSTANCE_SERVICE: usize = 16;
const FIRST_INSTANCE_VIP_OCTET: u8 = 170;

struct Case {
    name: String,
    /// 0: the single form; otherwise this many `[[instance]]`s of `services` services each.
    instances: usize,
    services: usize,
    backends_each: usize,
}

impl Case {
    fn backends(&self) -> usize {
        self.instances.max(1) * self.services * self.backends_each
    }
}

/// One BPF map of the agent.
#[derive(Clone, Debug)]
struct MapInfo {
    name: String,
    kind: String,
    max_entries: u64,
    memlock: u64,
}

struct Measured {
    rss_kib: u64,
    hwm_kib: u64,
    maps: Vec<MapInfo>,
    settle: Duration,
    /// Several instances: the largest gap between two adverts of one VRID, and of which.
    advert_gap: Option<(Duration, u8)>,
}

pub fn run(_options: &Options) -> Result<Section> {
    // The first wave's maximum (64 x 64); the data plane now takes up to MAX_SERVICES services and MAX_BACKENDS
    // backends, whose Maglev tables alone (512 KiB of kernel memory per service) are beyond a shared test machine.
    let services_max = 64usize;
    let backends_each = 64usize;
    const _: () = assert!(64 <= MAX_SERVICES && 64 * 64 <= MAX_BACKENDS);
    let cases = [
        Case { name: "no service".into(), instances: 0, services: 0, backends_each: 0 },
        Case { name: "1 service x 3 backends".into(), instances: 0, services: 1, backends_each: 3 },
        Case {
            name: format!(
                "{INSTANCES} instances x {SERVICES_PER_INSTANCE} services x {BACKENDS_PER_INSTANCE_SERVICE} backends"
            ),
            instances: INSTANCES,
            services: SERVICES_PER_INSTANCE,
            backends_each: BACKENDS_PER_INSTANCE_SERVICE,
        },
        Case {
            name: format!("{services_max} services x {backends_each} backends"),
            instances: 0,
            services: services_max,
            backends_each,
        },
    ];
    let lab = Lab::new(LabSpec { nodes: 2, backends: 3, vip_on_backends_lo: true, backend_bin: None })?;
    // Extra addresses for the large case, all on backend1.
    let (net, prefix) = lab.subnet();
    let extra: Vec<Ipv4Addr> = (0..backends_each)
        .map(|i| {
            let o = net.octets();
            Ipv4Addr::new(o[0], o[1], o[2], EXTRA_FIRST_OCTET + i as u8)
        })
        .collect();
    for addr in &extra {
        lab.exec(&lab.backend(1).ns, ["ip", "addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"])?;
    }
    let mut table = Table::new(&[
        "configuration",
        "agent RSS",
        "agent peak RSS (VmHWM)",
        "BPF maps (memlock)",
        "largest maps",
        "ready after",
        "largest advert gap (100 ms)",
    ]);
    let mut rows = Vec::new();
    for case in &cases {
        let spec = node_spec(&lab, case, &extra);
        let measured = measure(&lab, &spec, case).with_context(|| case.name.clone())?;
        let total: u64 = measured.maps.iter().map(|m| m.memlock).sum();
        let mut largest = measured.maps.clone();
        largest.sort_by_key(|m| std::cmp::Reverse(m.memlock));
        let top: Vec<String> = largest.iter().take(3).map(|m| format!("{} {}", m.name, mib(m.memlock))).collect();
        eprintln!(
            "[bench] memory: {}: RSS {} KiB, peak {} KiB, maps {} bytes",
            case.name, measured.rss_kib, measured.hwm_kib, total
        );
        table.row(vec![
            case.name.clone(),
            mib(measured.rss_kib * 1024),
            mib(measured.hwm_kib * 1024),
            mib(total),
            top.join(", "),
            format!("{:.1} s", measured.settle.as_secs_f64()),
            measured.advert_gap.map_or_else(
                || "-".to_string(),
                |(gap, vrid)| format!("{:.0} ms (VRID {vrid})", gap.as_secs_f64() * 1000.0),
            ),
        ]);
        let maps: Vec<Value> = measured
            .maps
            .iter()
            .map(
                |m| json!({ "name": m.name, "type": m.kind, "max_entries": m.max_entries, "memlock_bytes": m.memlock }),
            )
            .collect();
        rows.push(json!({
            "configuration": case.name,
            "instances": case.instances.max(1),
            "services": case.services,
            "backends_per_service": case.backends_each,
            "vm_rss_kib": measured.rss_kib,
            "vm_hwm_kib": measured.hwm_kib,
            "bpf_maps_memlock_bytes": total,
            "maps": maps,
            "ready_after_s": measured.settle.as_secs_f64(),
            "largest_advert_gap_ms": measured.advert_gap.map(|(gap, _)| gap.as_secs_f64() * 1000.0),
        }));
    }
    let body = format!(
        "{}\n\
         - RSS and peak from `/proc/PID/status` of `xvip run` (one node, active, advert 100 ms), read 1 s after \
         every backend shows healthy with a MAC in `xvip status`. Map memory: the `memlock` field of each BPF map \
         fd in `/proc/PID/fdinfo` (the kernel's own accounting), names from `bpftool`.\n\
         - MAGLEV holds two tables of 65537 slots for every service slot the agent loaded the program for \
         (room for more services than configured, so a reload can add some); CONNTRACK and NAT are LRU hashes \
         sized by `conntrack_entries` (65536 by default), preallocated. A BPF array rounds every value up to 8 \
         bytes: one u32 slot per element costs 8 bytes, slots packed into larger elements cost 4.\n\
         - \"ready after\": from starting the process until it is active with every backend healthy and \
         resolved (every instance active); it includes building and writing every Maglev table.\n\
         - \"largest advert gap\": with several instances, tshark on node2 captures every advert for 5 s after \
         ready; the largest time between two adverts of one VRID (interval 100 ms; the issue asks for < 150 ms).\n",
        table.markdown()
    );
    Ok(Section::new("memory", "Memory: agent RSS and BPF maps", body, json!({ "cases": Value::Array(rows) })))
}

fn node_spec(lab: &Lab, case: &Case, extra: &[Ipv4Addr]) -> NodeSpec {
    if case.instances > 0 {
        let o = lab.subnet().0.octets();
        let mut spec = NodeSpec::new(150);
        for i in 0..case.instances {
            let vip = Ipv4Addr::new(o[0], o[1], o[2], FIRST_INSTANCE_VIP_OCTET + i as u8);
            let mut instance = InstanceSpec::new(&format!("i{i:02}"), &[vip], 1 + i as u8, 150);
            for s in 0..case.services {
                instance = instance.service(service(s, case.backends_each, extra));
            }
            spec = spec.instance(instance);
        }
        return spec;
    }
    let mut spec = NodeSpec::new(150);
    for s in 0..case.services {
        let port = FIRST_PORT + s as u16;
        let backends: Vec<(Ipv4Addr, u16)> = if case.backends_each <= lab.backends().len() {
            lab.backends().iter().take(case.backends_each).map(|b| (b.ip, port)).collect()
        } else {
            extra.iter().take(case.backends_each).map(|a| (*a, port)).collect()
        };
        spec = spec.service(ServiceSpec {
            name: format!("svc{s:02}"),
            port,
            protocol: "tcp".into(),
            forwarding: "dsr".into(),
            backends: backends.into_iter().map(|(a, p)| (a.into(), p)).collect(),
            weights: Default::default(),
            check: "none".into(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 1,
            fall: 1,
        });
    }
    spec
}

/// Service `s` of an instance: DSR over `backends` of the extra addresses, no health check.
fn service(s: usize, backends: usize, extra: &[Ipv4Addr]) -> ServiceSpec {
    let port = FIRST_PORT + s as u16;
    ServiceSpec {
        name: format!("svc{s}"),
        port,
        protocol: "tcp".into(),
        forwarding: "dsr".into(),
        backends: extra.iter().take(backends).map(|a| ((*a).into(), port)).collect(),
        weights: Default::default(),
        check: "none".into(),
        interval_ms: 1000,
        timeout_ms: 500,
        rise: 1,
        fall: 1,
    }
}

fn measure(lab: &Lab, spec: &NodeSpec, case: &Case) -> Result<Measured> {
    let started = Instant::now();
    let mut daemon = Daemon::start(lab, spec)?;
    let pid = daemon.child.pid();
    let result = (|| -> Result<Measured> {
        daemon.wait_ready(case.backends(), Duration::from_secs(180))?;
        let settle = started.elapsed();
        let advert_gap = if case.instances > 0 {
            let capture = AdvertCapture::start(lab, lab.node(2))?;
            std::thread::sleep(Duration::from_secs(5));
            let adverts = capture.stop()?;
            let mut gaps = Vec::new();
            for vrid in 1..=case.instances as u8 {
                let times: Vec<f64> =
                    adverts.iter().filter(|a| a.vrid == vrid && a.priority > 0).map(|a| a.time).collect();
                if times.len() < 40 {
                    bail!("VRID {vrid}: only {} adverts in 5 s", times.len());
                }
                let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
                gaps.push((Duration::from_secs_f64(gap.max(0.0)), vrid));
            }
            gaps.into_iter().max()
        } else {
            std::thread::sleep(Duration::from_secs(1));
            None
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
        Ok(Measured {
            rss_kib: status_kib(&status, "VmRSS:")?,
            hwm_kib: status_kib(&status, "VmHWM:")?,
            maps: bpf_maps(pid)?,
            settle,
            advert_gap,
        })
    })();
    let log = daemon.child.log();
    daemon.child.stop()?;
    result.map_err(|e| e.context(format!("xvip's log:\n{}", xvip_tests::process::tail(&log, 20))))
}

/// `xvip run` on node1. Not [`Lab::start_xvip`]: with thousands of backends the daemon takes longer than its
/// 10 s to answer on its socket (it writes the Maglev tables first), and that time is what is measured here.
struct Daemon {
    child: ChildGuard,
    socket: PathBuf,
}

impl Daemon {
    fn start(lab: &Lab, spec: &NodeSpec) -> Result<Daemon> {
        let node = lab.node(1);
        let socket = lab.dir().join("memory.sock");
        let config = lab.dir().join("memory.toml");
        std::fs::write(&config, xvip_tests::xvip::config(lab, node, spec, &socket))
            .with_context(|| format!("writing {}", config.display()))?;
        let bin = xvip_tests::xvip::binary()?;
        let child = lab.spawn(&node.ns, [bin.as_os_str(), "run".as_ref(), "-c".as_ref(), config.as_os_str()])?;
        Ok(Daemon { child, socket })
    }

    /// Waits until the daemon is active and lists `backends` backends, all healthy and resolved.
    fn wait_ready(&mut self, backends: usize, timeout: Duration) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
        let deadline = Instant::now() + timeout;
        loop {
            let last = match runtime.block_on(xvip::control::query(&self.socket)) {
                Ok(status) => {
                    // Every instance (the single form has one) with its services.
                    let instances: Vec<(&str, &Vec<xvip::status::ServiceStatus>)> = if status.instances.is_empty() {
                        vec![(status.role.as_str(), &status.services)]
                    } else {
                        status.instances.iter().map(|i| (i.role.as_str(), &i.services)).collect()
                    };
                    let active = instances.iter().filter(|(role, _)| *role == "active").count();
                    let all: Vec<_> = instances
                        .iter()
                        .flat_map(|(_, services)| services.iter().flat_map(|s| s.backends.iter()))
                        .collect();
                    let ready = all.iter().filter(|b| b.healthy && b.mac.is_some()).count();
                    if active == instances.len() && all.len() == backends && ready == backends {
                        return Ok(());
                    }
                    format!(
                        "{active} of {} instances active, {ready} of {backends} backends ready ({} listed)",
                        instances.len(),
                        all.len()
                    )
                }
                Err(e) => format!("{e:#}"),
            };
            if !self.child.is_running() {
                bail!("xvip exited: {last}");
            }
            if Instant::now() > deadline {
                bail!("not ready after {timeout:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn status_kib(status: &str, field: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/PID/status"))
}

/// The BPF maps `pid` holds open, from `/proc/PID/fd` and `/proc/PID/fdinfo`.
fn bpf_maps(pid: u32) -> Result<Vec<MapInfo>> {
    let names = map_names();
    let mut maps = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("reading /proc/PID/fd")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        let field = |name: &str| -> Option<String> {
            info.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string())
        };
        let id: u64 = field("map_id:").and_then(|v| v.parse().ok()).unwrap_or(0);
        if !seen.insert(id) {
            continue;
        }
        let kind = field("map_type:").unwrap_or_default();
        maps.push(MapInfo {
            name: names.get(&id).cloned().unwrap_or_else(|| format!("map {id} (type {kind})")),
            kind,
            max_entries: field("max_entries:").and_then(|v| v.parse().ok()).unwrap_or(0),
            memlock: field("memlock:").and_then(|v| v.parse().ok()).unwrap_or(0),
        });
    }
    if maps.is_empty() {
        bail!("xvip (pid {pid}) holds no BPF map fd");
    }
    Ok(maps)
}

/// Map names by id, from `bpftool map show -j` (empty when bpftool is missing).
fn map_names() -> BTreeMap<u64, String> {
    let Ok(out) = std::process::Command::new("bpftool").args(["map", "show", "-j"]).output() else {
        return BTreeMap::new();
    };
    let Ok(Value::Array(maps)) = serde_json::from_slice::<Value>(&out.stdout) else {
        return BTreeMap::new();
    };
    maps.iter().filter_map(|m| Some((m.get("id")?.as_u64()?, m.get("name")?.as_str()?.to_string()))).collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
