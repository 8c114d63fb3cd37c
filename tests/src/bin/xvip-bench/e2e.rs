//! `xvip-bench e2e`: HTTP throughput through each L4 data plane in the netns lab, with `wrk` on the client and
//! nginx (3-byte body) on three backends; every figure also as a ratio to going straight to one backend in the
//! same round.
//!
//! Paths: straight to backend1; xvip DSR and xvip NAT (on node2); nginx stream proxy, haproxy `mode tcp` and
//! nftables DNAT (jhash + masquerade, kube-proxy style), all three on node1. The stacked layout's paths side by
//! side: xvip NAT to one remote backend (backend1) and to the active node's own backend (nginx on node2, handed to
//! its stack by XDP, replies translated by the egress program); and from a client on node2 itself, straight to
//! backend1 and through the VIP by the socket load balancer (to backend1 only). Each round sets every path up,
//! runs `wrk` keep-alive and `Connection: close`, and tears it down again, in a rotating order.
//!
//! `--compare-xvip BIN` adds an older xvip binary's DSR and NAT rows (it embeds its own eBPF object), measured
//! with the same lab and config right next to this build's in every round, the two in alternating order.
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use xvip_tests::probe;
use xvip_tests::xvip::{NodeSpec, ServiceSpec, XvipNode};
use xvip_tests::{ChildGuard, Host, Lab, LabSpec};

use crate::Options;
use crate::report::{self, Section, Table, jnum, num};

/// Port of nginx on the backends (and of the DSR service and the nftables DNAT rule).
const HTTP_PORT: u16 = 80;
/// The NAT service's port on the VIP (a port the backends do not listen on, so plain MAC forwarding cannot pass
/// for NAT).
const NAT_PORT: u16 = 8081;
const NGINX_PROXY_PORT: u16 = 9001;
const HAPROXY_PORT: u16 = 9002;
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// wrk's load, as in the reference lab measurements.
const THREADS: &str = "2";
const CONNECTIONS: &str = "32";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    XvipDsr,
    /// xvip DSR run by the older binary of `--compare-xvip`.
    XvipDsrOlder,
    XvipNat,
    /// xvip NAT run by the older binary of `--compare-xvip`.
    XvipNatOlder,
    NginxStream,
    Haproxy,
    Nftables,
    /// xvip NAT to backend1 only: the remote half of the local/remote comparison.
    XvipNatRemoteOne,
    /// xvip NAT to the active node's own backend only (nginx on node2).
    XvipNatLocal,
    /// wrk on node2 itself, straight to backend1.
    NodeDirect,
    /// wrk on node2 itself, to the VIP: the socket load balancer connects it to backend1.
    NodeSocketLb,
}

impl Path {
    /// Every path in the table's order (an older build's row right after this build's).
    const ALL: [Path; 12] = [
        Path::Direct,
        Path::XvipDsr,
        Path::XvipDsrOlder,
        Path::XvipNat,
        Path::XvipNatOlder,
        Path::NginxStream,
        Path::Haproxy,
        Path::Nftables,
        Path::XvipNatRemoteOne,
        Path::XvipNatLocal,
        Path::NodeDirect,
        Path::NodeSocketLb,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Direct => "straight to one backend (no LB)",
            Path::XvipDsr => "xvip DSR (node2)",
            Path::XvipDsrOlder => "xvip DSR (node2), older build",
            Path::XvipNat => "xvip NAT (node2)",
            Path::XvipNatOlder => "xvip NAT (node2), older build",
            Path::NginxStream => "nginx stream proxy (node1)",
            Path::Haproxy => "haproxy `mode tcp`, roundrobin (node1)",
            Path::Nftables => "nftables DNAT jhash + masquerade (node1)",
            Path::XvipNatRemoteOne => "xvip NAT to one remote backend, backend1 (node2)",
            Path::XvipNatLocal => "xvip NAT to the active node's own backend (node2: XDP_PASS + tc egress)",
            Path::NodeDirect => "from node2: straight to backend1 (no LB)",
            Path::NodeSocketLb => "from node2: through the VIP by the socket LB, to backend1",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::XvipDsr => "xvip_dsr",
            Path::XvipDsrOlder => "xvip_dsr_older",
            Path::XvipNat => "xvip_nat",
            Path::XvipNatOlder => "xvip_nat_older",
            Path::NginxStream => "nginx_stream",
            Path::Haproxy => "haproxy",
            Path::Nftables => "nftables",
            Path::XvipNatRemoteOne => "xvip_nat_remote_one",
            Path::XvipNatLocal => "xvip_nat_local",
            Path::NodeDirect => "node_direct",
            Path::NodeSocketLb => "node_socket_lb",
        }
    }

    /// The path's row in the table; `label` says what the older binary is.
    fn row_name(self, label: &str) -> String {
        match self {
            Path::XvipDsrOlder => format!("xvip DSR (older: {label})"),
            Path::XvipNatOlder => format!("xvip NAT (older: {label})"),
            _ => self.name().to_string(),
        }
    }

    /// For an older build's path, this build's path that it is compared with.
    fn counterpart(self) -> Option<Path> {
        match self {
            Path::XvipDsrOlder => Some(Path::XvipDsr),
            Path::XvipNatOlder => Some(Path::XvipNat),
            _ => None,
        }
    }

    /// The paths measured: all, or all but the older build's without `--compare-xvip`.
    fn measured(compare: bool) -> Vec<Path> {
        Path::ALL.into_iter().filter(|p| compare || p.counterpart().is_none()).collect()
    }
}

/// The order of round `round` over `paths`: rotated by the round, so no path always runs right after the same other
/// one. An older build's path stays right next to this build's, after it in even rounds and before it in odd
/// ones, so drift over a round hits both alike.
fn schedule(paths: &[Path], round: usize) -> Vec<Path> {
    let mut slots: Vec<Vec<Path>> = Vec::new();
    for &path in paths {
        match slots.last_mut() {
            Some(slot) if path.counterpart().is_some() && path.counterpart() == slot.first().copied() => {
                slot.push(path)
            }
            _ => slots.push(vec![path]),
        }
    }
    let n = slots.len();
    (0..n)
        .flat_map(|k| {
            let mut slot = slots[(k + round) % n].clone();
            if round % 2 == 1 {
                slot.reverse();
            }
            slot
        })
        .collect()
}

/// `--compare-xvip`: the older xvip binary and what it is.
#[derive(Clone, Debug)]
struct Older {
    binary: PathBuf,
    label: String,
}

impl Older {
    fn of(options: &Options) -> Option<Older> {
        let binary = options.compare_xvip.clone()?;
        let label = options.compare_label.clone().unwrap_or_else(|| {
            binary.file_name().map_or_else(|| binary.display().to_string(), |n| n.to_string_lossy().into_owned())
        });
        Some(Older { binary, label })
    }
}

/// What one `wrk` run reported.
#[derive(Clone, Debug, Default)]
struct Wrk {
    requests_per_sec: f64,
    p99_ms: f64,
    requests: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    errors: u64,
}

/// One path's figures of one round.
#[derive(Clone, Debug)]
struct Sample {
    keepalive: Wrk,
    close: Wrk,
}

/// A path set up for measuring; [`Running::teardown`] undoes it.
struct Running {
    url: String,
    /// The namespace wrk runs in: the client's, or node2's for a client on the node.
    from: String,
    xvip: Option<XvipNode>,
    processes: Vec<ChildGuard>,
    /// Commands (namespace, argv) that undo the setup, run in order.
    undo: Vec<(String, Vec<String>)>,
}

impl Running {
    fn new(lab: &Lab, url: String) -> Self {
        Running { url, from: lab.client().ns.clone(), xvip: None, processes: Vec::new(), undo: Vec::new() }
    }

    fn teardown(mut self, lab: &Lab) -> Result<()> {
        if let Some(mut node) = self.xvip.take() {
            node.terminate()?;
        }
        self.processes.clear();
        for (ns, argv) in std::mem::take(&mut self.undo) {
            lab.exec(&ns, &argv)?;
        }
        Ok(())
    }
}

pub fn run(options: &Options) -> Result<Section> {
    let rounds = options.rounds.unwrap_or(3);
    let older = Older::of(options);
    let paths = Path::measured(older.is_some());
    let label = older.as_ref().map_or("", |o| o.label.as_str());
    for tool in ["wrk", "nginx", "haproxy", "nft"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (`cargo xtask setup` installs it)");
        }
    }
    let lab = Lab::new(LabSpec { nodes: 2, backends: 3, vip_on_backends_lo: true, backend_bin: None })?;
    let _backends: Vec<ChildGuard> = lab
        .backends()
        .iter()
        .map(|b| backend_nginx(&lab, b, &lab.client().ns))
        .collect::<Result<_>>()
        .context("backend nginx")?;
    if let Some(older) = &older {
        check_older(&lab, older)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
    let mut unavailable: Vec<Option<String>> = vec![None; paths.len()];
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds {
        for path in schedule(&paths, round) {
            let i = paths.iter().position(|p| *p == path).context("a scheduled path is measured")?;
            if unavailable[i].is_some() {
                continue;
            }
            let started = Instant::now();
            let binary = older.as_ref().filter(|_| path.counterpart().is_some()).map(|o| o.binary.clone());
            match measure(&lab, path, binary, options.duration) {
                Ok(Measured::Sample(s)) => {
                    eprintln!(
                        "[bench] e2e round {}/{rounds}: {}: {:.0} req/s keep-alive (p99 {:.2} ms), {:.0} conn/s \
                         close (p99 {:.2} ms), {} errors ({:.1} s)",
                        round + 1,
                        path.row_name(label),
                        s.keepalive.requests_per_sec,
                        s.keepalive.p99_ms,
                        s.close.requests_per_sec,
                        s.close.p99_ms,
                        s.keepalive.errors + s.close.errors,
                        started.elapsed().as_secs_f64()
                    );
                    samples[i].push(s);
                }
                Ok(Measured::Unavailable(why)) => {
                    eprintln!("[bench] e2e: {}: n/a: {why}", path.row_name(label));
                    unavailable[i] = Some(why);
                }
                Err(e) => {
                    eprintln!("[bench] e2e round {}/{rounds}: {}: failed: {e:#}", round + 1, path.row_name(label));
                    errors[i].push(format!("{e:#}"));
                }
            }
        }
    }
    Ok(section(options, rounds, older.as_ref(), &paths, &samples, &unavailable, &errors))
}

enum Measured {
    Sample(Sample),
    /// The path cannot work here (xvip NAT before the NAT data path exists).
    Unavailable(String),
}

/// Measures `path`; `binary`: the xvip binary that runs it, when not this build's.
fn measure(lab: &Lab, path: Path, binary: Option<PathBuf>, seconds: u32) -> Result<Measured> {
    let running = match setup(lab, path, binary) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Ok(Measured::Unavailable(format!(
                "NAT forwarding not available in this build (no answer on VIP:{NAT_PORT})"
            )));
        }
        Err(e) => return Err(e),
    };
    let result = (|| -> Result<Sample> {
        let keepalive = wrk(lab, &running.from, &running.url, seconds, false)?;
        let close = wrk(lab, &running.from, &running.url, seconds, true)?;
        Ok(Sample { keepalive, close })
    })();
    let torn = running.teardown(lab);
    let sample = result?;
    torn.context("tearing the path down")?;
    Ok(Measured::Sample(sample))
}

/// Sets a path up and waits until it answers; `None` when xvip NAT does not answer (not implemented yet).
/// `binary`: the xvip binary for the xvip DSR and NAT paths (`None`: this build's).
fn setup(lab: &Lab, path: Path, binary: Option<PathBuf>) -> Result<Option<Running>> {
    let node1 = lab.node(1).clone();
    let backends: Vec<Ipv4Addr> = lab.backends().iter().map(|b| b.ip).collect();
    let running = match path {
        Path::Direct => Running::new(lab, url(lab.backend(1).ip, HTTP_PORT)),
        Path::XvipDsr | Path::XvipDsrOlder => {
            let mut r = Running::new(lab, url(lab.vip(), HTTP_PORT));
            let spec = NodeSpec { binary, ..node_spec(HTTP_PORT, HTTP_PORT, "dsr", &all_backends(lab)) };
            r.xvip = Some(start_xvip(lab, &spec)?);
            r
        }
        Path::XvipNat | Path::XvipNatOlder => {
            // NAT backends need no change: take the VIP off their `lo` for this path (and put it back after).
            let mut r = Running::new(lab, url(lab.vip(), NAT_PORT));
            let vip = format!("{}/32", lab.vip());
            for b in lab.backends() {
                lab.exec(&b.ns, ["ip", "addr", "del", &vip, "dev", "lo"])?;
                r.undo.push((b.ns.clone(), argv(&["ip", "addr", "add", &vip, "dev", "lo"])));
            }
            let spec = NodeSpec { binary, ..node_spec(NAT_PORT, HTTP_PORT, "nat", &all_backends(lab)) };
            match start_xvip(lab, &spec) {
                Ok(node) => r.xvip = Some(node),
                Err(e) => {
                    r.teardown(lab)?;
                    return Err(e);
                }
            }
            if wait_http(lab, &r.url, Duration::from_secs(5)).is_err() {
                r.teardown(lab)?;
                return Ok(None);
            }
            r
        }
        Path::NginxStream => {
            let mut r = Running::new(lab, url(node1.ip, NGINX_PROXY_PORT));
            r.processes.push(nginx(lab, &node1, "nginx-stream", &stream_config(node1.ip, &backends))?);
            r
        }
        Path::Haproxy => {
            let mut r = Running::new(lab, url(node1.ip, HAPROXY_PORT));
            let dir = scratch(lab, "haproxy")?;
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(node1.ip, &backends))
                .with_context(|| format!("writing {}", cfg.display()))?;
            let cfg = cfg.to_string_lossy().into_owned();
            lab.exec(&node1.ns, ["haproxy", "-c", "-q", "-f", &cfg]).context("haproxy rejects its config")?;
            r.processes.push(lab.spawn(&node1.ns, ["haproxy", "-db", "-f", &cfg])?);
            r
        }
        Path::Nftables => {
            let mut r = Running::new(lab, url(node1.ip, HTTP_PORT));
            let dir = scratch(lab, "nftables")?;
            let rules = dir.join("dnat.nft");
            std::fs::write(&rules, nft_rules(node1.ip, &backends))
                .with_context(|| format!("writing {}", rules.display()))?;
            lab.exec(&node1.ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
            r.undo.push((node1.ns.clone(), argv(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])));
            lab.exec(&node1.ns, ["nft", "-f", &rules.to_string_lossy()]).context("loading the nftables rules")?;
            r.undo.push((node1.ns.clone(), argv(&["nft", "delete", "table", "ip", "xvip_bench"])));
            r
        }
        Path::XvipNatRemoteOne => {
            let mut r = Running::new(lab, url(lab.vip(), NAT_PORT));
            let (backend1, vip) = (lab.backend(1).clone(), format!("{}/32", lab.vip()));
            lab.exec(&backend1.ns, ["ip", "addr", "del", &vip, "dev", "lo"])?;
            r.undo.push((backend1.ns.clone(), argv(&["ip", "addr", "add", &vip, "dev", "lo"])));
            start_into(lab, &mut r, node_spec(NAT_PORT, HTTP_PORT, "nat", &[backend1.ip]))?;
            r
        }
        Path::XvipNatLocal => {
            let mut r = Running::new(lab, url(lab.vip(), NAT_PORT));
            let node2 = lab.node(2).clone();
            // As a stacked node is set up (tests/tests/local_backend.rs): the node's own frames with full checksums.
            lab.exec(&node2.ns, ["ethtool", "-K", "eth0", "tx", "off"])?;
            r.undo.push((node2.ns.clone(), argv(&["ethtool", "-K", "eth0", "tx", "on"])));
            r.processes.push(backend_nginx(lab, &node2, &lab.client().ns)?);
            start_into(lab, &mut r, node_spec(NAT_PORT, HTTP_PORT, "nat", &[node2.ip]))?;
            r
        }
        Path::NodeDirect => {
            let mut r = Running::new(lab, url(lab.backend(1).ip, HTTP_PORT));
            r.from = lab.node(2).ns.clone();
            r
        }
        Path::NodeSocketLb => {
            let mut r = Running::new(lab, url(lab.vip(), NAT_PORT));
            r.from = lab.node(2).ns.clone();
            let spec = node_spec(NAT_PORT, HTTP_PORT, "nat", &[lab.backend(1).ip]);
            start_into(lab, &mut r, NodeSpec { mount_cgroup2: true, ..spec })?;
            r
        }
    };
    if let Err(e) = wait_http_from(&running.from, &running.url, Duration::from_secs(10)) {
        let _ = running.teardown(lab);
        return Err(e.context(format!("{} never answered", path.name())));
    }
    Ok(Some(running))
}

fn url(ip: Ipv4Addr, port: u16) -> String {
    format!("http://{ip}:{port}/")
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A fresh directory in the lab's scratch directory.
fn scratch(lab: &Lab, stem: &str) -> Result<PathBuf> {
    let log = lab.log_path(stem);
    let dir = log.with_extension("d");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn all_backends(lab: &Lab) -> Vec<Ipv4Addr> {
    lab.backends().iter().map(|b| b.ip).collect()
}

/// [`start_xvip`] into `r`; tears `r` down when it fails.
fn start_into(lab: &Lab, r: &mut Running, spec: NodeSpec) -> Result<()> {
    match start_xvip(lab, &spec) {
        Ok(node) => {
            r.xvip = Some(node);
            Ok(())
        }
        Err(e) => {
            let undo = std::mem::replace(r, Running::new(lab, String::new()));
            undo.teardown(lab)?;
            Err(e)
        }
    }
}

/// The config of xvip alone on node2 (it becomes active by itself) with one service `port` -> `backends`'
/// `backend_port`.
fn node_spec(port: u16, backend_port: u16, forwarding: &str, backends: &[Ipv4Addr]) -> NodeSpec {
    let service = ServiceSpec {
        name: "web".into(),
        port,
        protocol: "tcp".into(),
        forwarding: forwarding.into(),
        backends: backends.iter().map(|b| ((*b).into(), backend_port)).collect(),
        weights: Default::default(),
        check: "tcp".into(),
        interval_ms: 200,
        timeout_ms: 150,
        rise: 1,
        fall: 2,
    };
    NodeSpec::new(150).service(service)
}

/// xvip on node2 with `spec`, once active; with `mount_cgroup2`, once its socket load balancer is attached
/// (`local_clients`).
fn start_xvip(lab: &Lab, spec: &NodeSpec) -> Result<XvipNode> {
    let node = lab.start_xvip(lab.node(2), spec)?;
    node.wait_role("active", Duration::from_secs(5))?;
    if spec.mount_cgroup2 && !node.log().contains("local clients: TCP connects") {
        bail!("xvip on node2 did not attach its socket load balancer:\n{}", node.log());
    }
    Ok(node)
}

/// `xvip check` by the older binary on the configs its DSR and NAT rows run with, so a config it cannot read fails
/// the benchmark before the first round.
fn check_older(lab: &Lab, older: &Older) -> Result<()> {
    for (port, forwarding) in [(HTTP_PORT, "dsr"), (NAT_PORT, "nat")] {
        let dir = scratch(lab, &format!("older-{forwarding}"))?;
        let path = dir.join("xvip.toml");
        let spec = node_spec(port, HTTP_PORT, forwarding, &all_backends(lab));
        std::fs::write(&path, xvip_tests::xvip::config(lab, lab.node(2), &spec, &dir.join("xvip.sock")))
            .with_context(|| format!("writing {}", path.display()))?;
        let out = std::process::Command::new(&older.binary)
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .with_context(|| format!("running {} check", older.binary.display()))?;
        if !out.status.success() {
            bail!(
                "the older xvip {} refuses the {forwarding} config of its rows ({}):\n{}{}",
                older.binary.display(),
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Waits until `GET /` on `url` answers 200 from the client.
fn wait_http(lab: &Lab, url: &str, timeout: Duration) -> Result<()> {
    wait_http_from(&lab.client().ns, url, timeout)
}

/// Waits until `GET /` on `url` answers 200 from namespace `from`.
fn wait_http_from(from: &str, url: &str, timeout: Duration) -> Result<()> {
    let target: std::net::SocketAddr =
        url.trim_start_matches("http://").trim_end_matches('/').parse().with_context(|| format!("bad url {url}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let answer = probe::http_get(from, target, "/", Duration::from_millis(300));
        match answer {
            Ok(r) if r.status == 200 => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(r) => bail!("{url} answers HTTP {}", r.status),
            Err(e) => return Err(e),
        }
    }
}

/// Runs wrk in namespace `from` and parses its report.
fn wrk(lab: &Lab, from: &str, url: &str, seconds: u32, close: bool) -> Result<Wrk> {
    let duration = format!("{seconds}s");
    let mut args = vec!["wrk", "-t", THREADS, "-c", CONNECTIONS, "-d", duration.as_str(), "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = lab.exec(from, &args)?;
    parse_wrk(&out).with_context(|| format!("parsing wrk's output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut w = Wrk { p99_ms: f64::NAN, ..Wrk::default() };
    let mut found = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.requests_per_sec = v.trim().parse().context("Requests/sec")?;
            found = true;
        } else if words.first() == Some(&"99%") && words.len() >= 2 {
            w.p99_ms = duration_ms(words[1])?;
        } else if words.len() >= 2 && words[1] == "requests" && words.get(2) == Some(&"in") {
            w.requests = words[0].parse().context("requests")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    w.errors += n.parse::<u64>().context("socket errors")?;
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += n.trim().parse::<u64>().context("non-2xx")?;
        }
    }
    if !found {
        bail!("no Requests/sec line");
    }
    Ok(w)
}

/// wrk's `1.23ms`, `456.00us`, `1.02s`, `2.00m` in milliseconds.
fn duration_ms(text: &str) -> Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit in {text:?}"))?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().with_context(|| format!("bad number in {text:?}"))?;
    Ok(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        other => bail!("unknown unit {other:?} in {text:?}"),
    })
}

/// nginx in `host`'s namespace with `body` as its config (main context; pid, logs and temp paths are added).
fn nginx(lab: &Lab, host: &Host, stem: &str, body: &str) -> Result<ChildGuard> {
    let dir = scratch(lab, stem)?;
    let d = dir.to_string_lossy();
    let mut conf = String::new();
    let _ = writeln!(conf, "daemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;");
    conf.push_str(&body.replace("@DIR@", &d));
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let (path, error_log) = (path.to_string_lossy().into_owned(), format!("{d}/error.log"));
    lab.exec(&host.ns, ["nginx", "-t", "-q", "-e", &error_log, "-p", &d, "-c", &path])
        .with_context(|| format!("nginx rejects {path}"))?;
    lab.spawn(&host.ns, ["nginx", "-e", &error_log, "-p", &d, "-c", &path])
}

/// A backend's nginx: `GET` anything answers `ok\n` (3 bytes); keep-alive connections are never closed by count.
/// Waits until it answers from namespace `from`.
fn backend_nginx(lab: &Lab, backend: &Host, from: &str) -> Result<ChildGuard> {
    let body = format!(
        "worker_processes auto;\n\
         worker_rlimit_nofile 16384;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path @DIR@/body;\n\
         \x20   proxy_temp_path @DIR@/proxy;\n\
         \x20   fastcgi_temp_path @DIR@/fastcgi;\n\
         \x20   uwsgi_temp_path @DIR@/uwsgi;\n\
         \x20   scgi_temp_path @DIR@/scgi;\n\
         \x20   keepalive_requests 100000000;\n\
         \x20   server {{\n\
         \x20       listen {HTTP_PORT} backlog=4096;\n\
         \x20       location / {{ default_type text/plain; return 200 \"ok\\n\"; }}\n\
         \x20   }}\n\
         }}\n"
    );
    let guard = nginx(lab, backend, &format!("nginx-{}", backend.name), &body)?;
    wait_http_from(from, &url(backend.ip, HTTP_PORT), Duration::from_secs(10))?;
    Ok(guard)
}

fn stream_config(listen: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let servers: String = backends.iter().map(|b| format!("        server {b}:{HTTP_PORT};\n")).collect();
    format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         worker_processes auto;\n\
         worker_rlimit_nofile 16384;\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n\
         \x20   upstream backends {{\n{servers}    }}\n\
         \x20   server {{ listen {listen}:{NGINX_PROXY_PORT} backlog=4096; proxy_pass backends; }}\n\
         }}\n"
    )
}

fn haproxy_config(listen: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let servers: String =
        backends.iter().enumerate().map(|(i, b)| format!("    server b{} {b}:{HTTP_PORT}\n", i + 1)).collect();
    format!(
        "global\n    maxconn 8000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         frontend fe\n    bind {listen}:{HAPROXY_PORT}\n    default_backend be\n\n\
         backend be\n    balance roundrobin\n{servers}"
    )
}

/// kube-proxy style: DNAT by a hash of the client's address and port, masquerade towards the backends.
fn nft_rules(node: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let map: Vec<String> = backends.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
    let set: Vec<String> = backends.iter().map(Ipv4Addr::to_string).collect();
    format!(
        "table ip xvip_bench {{\n\
         \x20   chain prerouting {{\n\
         \x20       type nat hook prerouting priority dstnat; policy accept;\n\
         \x20       ip daddr {node} tcp dport {HTTP_PORT} dnat to jhash ip saddr . tcp sport mod {} map {{ {} }}\n\
         \x20   }}\n\
         \x20   chain postrouting {{\n\
         \x20       type nat hook postrouting priority srcnat; policy accept;\n\
         \x20       ip daddr {{ {} }} tcp dport {HTTP_PORT} ct status dnat masquerade\n\
         \x20   }}\n\
         }}\n",
        backends.len(),
        map.join(", "),
        set.join(", ")
    )
}

/// The table, notes and JSON of `paths` (`samples`, `unavailable` and `errors` in the same order, direct first).
fn section(
    options: &Options,
    rounds: usize,
    older: Option<&Older>,
    paths: &[Path],
    samples: &[Vec<Sample>],
    unavailable: &[Option<String>],
    errors: &[Vec<String>],
) -> Section {
    let direct = &samples[0];
    let mut table = Table::new(&[
        "path",
        "keep-alive req/s (x direct)",
        "p99",
        "new connections/s, `Connection: close` (x direct)",
        "p99",
        "wrk errors",
    ]);
    let mut rows = Vec::new();
    let mut outliers = String::new();
    let mut versus_older = Vec::new();
    let label = older.map_or("", |o| o.label.as_str());
    for (i, path) in paths.iter().enumerate() {
        let s = &samples[i];
        let ka: Vec<f64> = s.iter().map(|x| x.keepalive.requests_per_sec).collect();
        let cl: Vec<f64> = s.iter().map(|x| x.close.requests_per_sec).collect();
        let ka_p99: Vec<f64> = s.iter().map(|x| x.keepalive.p99_ms).collect();
        let cl_p99: Vec<f64> = s.iter().map(|x| x.close.p99_ms).collect();
        let errs: u64 = s.iter().map(|x| x.keepalive.errors + x.close.errors).sum();
        let requests: u64 = s.iter().map(|x| x.keepalive.requests + x.close.requests).sum();
        // Ratios per round against the direct figure of the same round, then the median.
        let ratio = |f: fn(&Sample) -> f64| -> f64 {
            let r: Vec<f64> = s.iter().zip(direct.iter()).map(|(x, d)| f(x) / f(d)).collect();
            report::median(&r)
        };
        // A round far below the median (a collapse, as reference runs saw for haproxy and nftables) hides in it.
        for (what, values) in [("keep-alive", &ka), ("Connection: close", &cl)] {
            let (low, mid) = (report::min(values), report::median(values));
            if low < mid / 2.0 {
                let _ = writeln!(
                    outliers,
                    "- {}, {what}: one round fell to {} (median {}); all rounds: {}.",
                    path.row_name(label),
                    kilo(low),
                    kilo(mid),
                    values.iter().map(|v| kilo(*v)).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let ka_ratio = ratio(|x| x.keepalive.requests_per_sec);
        let cl_ratio = ratio(|x| x.close.requests_per_sec);
        // An older build's path: this build's figure over the older one's, per round, then the median.
        let this_over_older = path.counterpart().and_then(|c| paths.iter().position(|p| *p == c)).map(|j| {
            let per_round = |f: fn(&Sample) -> f64| -> f64 {
                let r: Vec<f64> = samples[j].iter().zip(s.iter()).map(|(this, old)| f(this) / f(old)).collect();
                report::median(&r)
            };
            (per_round(|x| x.keepalive.requests_per_sec), per_round(|x| x.close.requests_per_sec))
        });
        if let Some((ka_this, cl_this)) = this_over_older {
            let what = if *path == Path::XvipDsrOlder { "DSR" } else { "NAT" };
            versus_older.push(format!("{what} {}x keep-alive, {}x new connections", num(ka_this, 2), num(cl_this, 2)));
        }
        if let Some(why) = &unavailable[i] {
            table.row(vec![
                path.row_name(label),
                format!("n/a: {why}"),
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
                String::new(),
            ]);
        } else if s.is_empty() {
            let why = errors[i].first().map_or("no sample", |e| e.lines().next().unwrap_or_default());
            table.row(vec![
                path.row_name(label),
                format!("failed: {why}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        } else {
            table.row(vec![
                path.row_name(label),
                format!("{} ({}x)", kilo(report::median(&ka)), num(ka_ratio, 2)),
                format!("{} ms", num(report::median(&ka_p99), 2)),
                format!("{} ({}x)", kilo(report::median(&cl)), num(cl_ratio, 2)),
                format!("{} ms", num(report::median(&cl_p99), 2)),
                if errs == 0 { "0".into() } else { format!("{errs} of {requests}") },
            ]);
        }
        let mut row = json!({
            "path": path.key(),
            "name": path.row_name(label),
            "unavailable": unavailable[i],
            "errors": errors[i],
            "keepalive_rps_median": jnum(report::median(&ka)),
            "keepalive_rps_samples": ka,
            "keepalive_ratio_to_direct": jnum(ka_ratio),
            "keepalive_p99_ms_median": jnum(report::median(&ka_p99)),
            "close_cps_median": jnum(report::median(&cl)),
            "close_cps_samples": cl,
            "close_ratio_to_direct": jnum(cl_ratio),
            "close_p99_ms_median": jnum(report::median(&cl_p99)),
            "wrk_errors": errs,
        });
        if let Some((ka_this, cl_this)) = this_over_older {
            row["this_build_over_older_keepalive"] = jnum(ka_this);
            row["this_build_over_older_close"] = jnum(cl_this);
        }
        rows.push(row);
    }
    let older_note = match older {
        None => String::new(),
        Some(o) => format!(
            "- Older build (`--compare-xvip`): {} ({}), with the eBPF object it embeds, started the same way with the \
             same config as this build's DSR and NAT rows; every round measures the two right after each other, in \
             alternating order. This build over the older one, median of the rounds' ratios: {}.\n",
            o.binary.display(),
            o.label,
            versus_older.join("; ")
        ),
    };
    let body = format!(
        "{}\n\
         - `wrk -t{THREADS} -c{CONNECTIONS} -d{}s --latency` from the client, keep-alive, then with \
         `-H 'Connection: close'` (a new TCP connection per request, so requests/s = new connections/s). Median of \
         {rounds} rounds; ratios are taken per round against the direct figure of the same round, then the \
         median. Each round sets every path up and tears it down, in a rotating order.\n\
         - Backends: nginx {} (`worker_processes auto`, `return 200 \"ok\\n\"`, no access log). xvip on node2 \
         (native XDP on its veth, one node, advert 100 ms, TCP health checks); the proxies and the nftables rules \
         on node1. The direct row goes to one backend, the others spread over three: all namespaces share the same \
         {} cores, so only ratios within one run mean anything.\n\
         - xvip NAT: a service on VIP:{NAT_PORT} to the backends' port {HTTP_PORT}, with the VIP taken off the \
         backends' `lo`; \"n/a\" when nothing answers there (the NAT data path is not in this build).\n\
         - nftables: `dnat to jhash ip saddr . tcp sport mod 3 map {{...}}` in prerouting and `masquerade` in \
         postrouting on node1 (conntrack, default sysctls).\n\
         - Stacked layout, local and remote side by side (one backend each, so only the path differs): xvip NAT \
         (VIP:{NAT_PORT}) to backend1 alone, and to an nginx on node2 itself alone (the XDP program translates the \
         frames and hands them to node2's stack, the tc egress program translates the replies back; node2's TX \
         checksum offload off for that row, as on a stacked node). From a client on node2 (wrk in node2's \
         namespace): straight to backend1, and to VIP:{NAT_PORT} with the socket load balancer (cgroup connect4, \
         `local_clients`) connecting it to backend1, the service's only backend. All ratios are to the client's \
         direct row of the same round; the node's direct row shows what the vantage point alone changes.\n\
         - The lab turns TX checksum offload off on the client and the backends (XDP rewrites need full \
         checksums) and runs an XDP_PASS stub on every bridge port (veth delivers XDP_TX frames only then), for \
         every row alike. Absolute figures move a lot between runs on this shared VM; compare the ratios. Every \
         hop (bridge, veths, the LB node) runs on the same cores as wrk and nginx, so a path that adds a hop costs \
         throughput here even where it would not on separate machines.\n{older_note}{outliers}",
        table.markdown(),
        options.duration,
        nginx_version(),
        std::thread::available_parallelism().map(usize::from).unwrap_or(1),
    );
    let mut json = json!({ "rounds": rounds, "seconds_per_run": options.duration, "threads": THREADS,
                           "connections": CONNECTIONS, "paths": Value::Array(rows) });
    if let Some(o) = older {
        json["compare_xvip"] = json!({ "binary": o.binary.display().to_string(), "label": o.label });
    }
    Section::new("e2e", "End to end: HTTP through each L4 data plane (netns lab, wrk)", body, json)
}

/// `12.3k` for a rate.
fn kilo(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

fn nginx_version() -> String {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: nginx/").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 5s test @ http://10.77.5.21:80/\n  2 threads and 32 connections\n  Thread Stats   Avg \
                   Stdev     Max   +/- Stdev\n    Latency   250.00us  300.00us  10.00ms   90.00%\n  Latency \
                   Distribution\n     50%  200.00us\n     75%  300.00us\n     90%  500.00us\n     99%    3.80ms\n  \
                   655000 requests in 5.00s, 100.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 4\nRequests/sec: 131000.50\nTransfer/sec:     20.00MB\n";
        let w = parse_wrk(out).expect("parses");
        assert_eq!(w.requests_per_sec, 131000.5);
        assert_eq!(w.p99_ms, 3.8);
        assert_eq!(w.requests, 655000);
        assert_eq!(w.errors, 7);
        assert_eq!(duration_ms("456.00us").expect("us"), 0.456);
        assert_eq!(duration_ms("1.50s").expect("s"), 1500.0);
    }

    #[test]
    fn without_compare_xvip_the_paths_and_their_order_are_unchanged() {
        let paths = Path::measured(false);
        assert_eq!(paths.len(), 10);
        assert!(paths.iter().all(|p| p.counterpart().is_none()));
        for round in 0..4 {
            let rotated: Vec<Path> = (0..paths.len()).map(|k| paths[(k + round) % paths.len()]).collect();
            assert_eq!(schedule(&paths, round), rotated, "round {round}");
        }
    }

    #[test]
    fn older_paths_run_right_next_to_this_builds_in_alternating_order() {
        let paths = Path::measured(true);
        assert_eq!(paths.len(), 12);
        for round in 0..4 {
            let order = schedule(&paths, round);
            let mut sorted = order.clone();
            sorted.sort_by_key(|p| paths.iter().position(|q| q == p));
            assert_eq!(sorted, paths, "round {round}: every path once");
            for (older, this) in [(Path::XvipDsrOlder, Path::XvipDsr), (Path::XvipNatOlder, Path::XvipNat)] {
                let at = |p: Path| order.iter().position(|q| *q == p).expect("scheduled");
                let expected = if round % 2 == 0 { at(this) + 1 } else { at(this) - 1 };
                assert_eq!(at(older), expected, "round {round}: {order:?}");
            }
        }
        // The rotation still moves the paths through the round: round 1 starts with the older DSR row.
        assert_eq!(schedule(&paths, 0)[0], Path::Direct);
        assert_eq!(schedule(&paths, 1)[0], Path::XvipDsrOlder);
    }

    fn sample(keepalive: f64, close: f64) -> Sample {
        let wrk = |rps| Wrk { requests_per_sec: rps, p99_ms: 1.0, requests: 100, errors: 0 };
        Sample { keepalive: wrk(keepalive), close: wrk(close) }
    }

    /// Three rounds of every path in `paths`: direct at 100 and 10 per second, the others as `figure` says.
    fn rounds_of(paths: &[Path], figure: impl Fn(Path) -> (f64, f64)) -> Vec<Vec<Sample>> {
        paths.iter().map(|p| (0..3).map(|_| figure(*p)).map(|(ka, cl)| sample(ka, cl)).collect()).collect()
    }

    #[test]
    fn the_older_builds_rows_are_in_the_table_the_notes_and_the_json() {
        let options = crate::parse(vec!["e2e".into()]).expect("options");
        let older = Older { binary: PathBuf::from("/tmp/xvip-old"), label: "ed5542d".into() };
        let paths = Path::measured(true);
        let samples = rounds_of(&paths, |p| match p {
            Path::Direct => (100.0, 10.0),
            Path::XvipDsr => (80.0, 8.0),
            Path::XvipDsrOlder => (40.0, 16.0),
            Path::XvipNat => (70.0, 7.0),
            Path::XvipNatOlder => (70.0, 14.0),
            _ => (50.0, 5.0),
        });
        let (none, no_errors) = (vec![None; paths.len()], vec![Vec::new(); paths.len()]);
        let with = section(&options, 3, Some(&older), &paths, &samples, &none, &no_errors);
        assert!(with.body.contains("| xvip DSR (node2) | 80 (0.80x) |"), "{}", with.body);
        assert!(with.body.contains("| xvip DSR (older: ed5542d) | 40 (0.40x) |"), "{}", with.body);
        assert!(with.body.contains("| xvip NAT (older: ed5542d) | 70 (0.70x) |"), "{}", with.body);
        assert!(with.body.contains("- Older build (`--compare-xvip`): /tmp/xvip-old (ed5542d)"), "{}", with.body);
        assert!(
            with.body.contains("DSR 2.00x keep-alive, 0.50x new connections; NAT 1.00x keep-alive, 0.50x"),
            "{}",
            with.body
        );
        let rows = with.json["paths"].as_array().expect("rows");
        let dsr_older = rows.iter().find(|r| r["path"] == "xvip_dsr_older").expect("the older DSR row");
        assert_eq!(dsr_older["name"], "xvip DSR (older: ed5542d)");
        assert_eq!(dsr_older["keepalive_ratio_to_direct"], 0.4);
        assert_eq!(dsr_older["this_build_over_older_keepalive"], 2.0);
        assert_eq!(dsr_older["this_build_over_older_close"], 0.5);
        assert_eq!(with.json["compare_xvip"]["label"], "ed5542d");

        let paths = Path::measured(false);
        let samples = rounds_of(&paths, |p| if p == Path::Direct { (100.0, 10.0) } else { (50.0, 5.0) });
        let (none, no_errors) = (vec![None; paths.len()], vec![Vec::new(); paths.len()]);
        let without = section(&options, 3, None, &paths, &samples, &none, &no_errors);
        assert!(!without.body.contains("older"), "{}", without.body);
        assert_eq!(without.json["paths"].as_array().expect("rows").len(), 10);
        assert!(without.json.get("compare_xvip").is_none());
    }
}
