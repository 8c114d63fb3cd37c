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
    XvipNat,
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
    const ALL: [Path; 10] = [
        Path::Direct,
        Path::XvipDsr,
        Path::XvipNat,
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
            Path::XvipNat => "xvip NAT (node2)",
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
            Path::XvipNat => "xvip_nat",
            Path::NginxStream => "nginx_stream",
            Path::Haproxy => "haproxy",
            Path::Nftables => "nftables",
            Path::XvipNatRemoteOne => "xvip_nat_remote_one",
            Path::XvipNatLocal => "xvip_nat_local",
            Path::NodeDirect => "node_direct",
            Path::NodeSocketLb => "node_socket_lb",
        }
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
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Path::ALL.len()];
    let mut unavailable: Vec<Option<String>> = vec![None; Path::ALL.len()];
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); Path::ALL.len()];
    for round in 0..rounds {
        for k in 0..Path::ALL.len() {
            // Rotate the order so no path always runs right after the same other one.
            let i = (k + round) % Path::ALL.len();
            let path = Path::ALL[i];
            if unavailable[i].is_some() {
                continue;
            }
            let started = Instant::now();
            match measure(&lab, path, options.duration) {
                Ok(Measured::Sample(s)) => {
                    eprintln!(
                        "[bench] e2e round {}/{rounds}: {}: {:.0} req/s keep-alive (p99 {:.2} ms), {:.0} conn/s \
                         close (p99 {:.2} ms), {} errors ({:.1} s)",
                        round + 1,
                        path.name(),
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
                    eprintln!("[bench] e2e: {}: n/a: {why}", path.name());
                    unavailable[i] = Some(why);
                }
                Err(e) => {
                    eprintln!("[bench] e2e round {}/{rounds}: {}: failed: {e:#}", round + 1, path.name());
                    errors[i].push(format!("{e:#}"));
                }
            }
        }
    }
    Ok(section(options, rounds, &samples, &unavailable, &errors))
}

enum Measured {
    Sample(Sample),
    /// The path cannot work here (xvip NAT before the NAT data path exists).
    Unavailable(String),
}

fn measure(lab: &Lab, path: Path, seconds: u32) -> Result<Measured> {
    let running = match setup(lab, path) {
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
fn setup(lab: &Lab, path: Path) -> Result<Option<Running>> {
    let node1 = lab.node(1).clone();
    let backends: Vec<Ipv4Addr> = lab.backends().iter().map(|b| b.ip).collect();
    let running = match path {
        Path::Direct => Running::new(lab, url(lab.backend(1).ip, HTTP_PORT)),
        Path::XvipDsr => {
            let mut r = Running::new(lab, url(lab.vip(), HTTP_PORT));
            r.xvip = Some(start_xvip(lab, HTTP_PORT, HTTP_PORT, "dsr", &all_backends(lab), false)?);
            r
        }
        Path::XvipNat => {
            // NAT backends need no change: take the VIP off their `lo` for this path (and put it back after).
            let mut r = Running::new(lab, url(lab.vip(), NAT_PORT));
            let vip = format!("{}/32", lab.vip());
            for b in lab.backends() {
                lab.exec(&b.ns, ["ip", "addr", "del", &vip, "dev", "lo"])?;
                r.undo.push((b.ns.clone(), argv(&["ip", "addr", "add", &vip, "dev", "lo"])));
            }
            match start_xvip(lab, NAT_PORT, HTTP_PORT, "nat", &all_backends(lab), false) {
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
            start_into(lab, &mut r, NAT_PORT, HTTP_PORT, &[backend1.ip], false)?;
            r
        }
        Path::XvipNatLocal => {
            let mut r = Running::new(lab, url(lab.vip(), NAT_PORT));
            let node2 = lab.node(2).clone();
            // As a stacked node is set up (tests/tests/local_backend.rs): the node's own frames with full checksums.
            lab.exec(&node2.ns, ["ethtool", "-K", "eth0", "tx", "off"])?;
            r.undo.push((node2.ns.clone(), argv(&["ethtool", "-K", "eth0", "tx", "on"])));
            r.processes.push(backend_nginx(lab, &node2, &lab.client().ns)?);
            start_into(lab, &mut r, NAT_PORT, HTTP_PORT, &[node2.ip], false)?;
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
            start_into(lab, &mut r, NAT_PORT, HTTP_PORT, &[lab.backend(1).ip], true)?;
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

/// [`start_xvip`] with a NAT service into `r`; tears `r` down when it fails.
fn start_into(
    lab: &Lab,
    r: &mut Running,
    port: u16,
    backend_port: u16,
    backends: &[Ipv4Addr],
    cgroup2: bool,
) -> Result<()> {
    match start_xvip(lab, port, backend_port, "nat", backends, cgroup2) {
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

/// xvip alone on node2 (it becomes active by itself) with one service `port` -> `backends`' `backend_port`;
/// `cgroup2`: cgroup v2 mounted for it, so its socket load balancer attaches (`local_clients`).
fn start_xvip(
    lab: &Lab,
    port: u16,
    backend_port: u16,
    forwarding: &str,
    backends: &[Ipv4Addr],
    cgroup2: bool,
) -> Result<XvipNode> {
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
    let spec = NodeSpec { mount_cgroup2: cgroup2, ..NodeSpec::new(150).service(service) };
    let node = lab.start_xvip(lab.node(2), &spec)?;
    node.wait_role("active", Duration::from_secs(5))?;
    if cgroup2 && !node.log().contains("local clients: TCP connects") {
        bail!("xvip on node2 did not attach its socket load balancer:\n{}", node.log());
    }
    Ok(node)
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

fn section(
    options: &Options,
    rounds: usize,
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
    for (i, path) in Path::ALL.iter().enumerate() {
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
        for (label, values) in [("keep-alive", &ka), ("Connection: close", &cl)] {
            let (low, mid) = (report::min(values), report::median(values));
            if low < mid / 2.0 {
                let _ = writeln!(
                    outliers,
                    "- {}, {label}: one round fell to {} (median {}); all rounds: {}.",
                    path.name(),
                    kilo(low),
                    kilo(mid),
                    values.iter().map(|v| kilo(*v)).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let ka_ratio = ratio(|x| x.keepalive.requests_per_sec);
        let cl_ratio = ratio(|x| x.close.requests_per_sec);
        if let Some(why) = &unavailable[i] {
            table.row(vec![
                path.name().into(),
                format!("n/a: {why}"),
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
                String::new(),
            ]);
        } else if s.is_empty() {
            let why = errors[i].first().map_or("no sample", |e| e.lines().next().unwrap_or_default());
            table.row(vec![
                path.name().into(),
                format!("failed: {why}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        } else {
            table.row(vec![
                path.name().into(),
                format!("{} ({}x)", kilo(report::median(&ka)), num(ka_ratio, 2)),
                format!("{} ms", num(report::median(&ka_p99), 2)),
                format!("{} ({}x)", kilo(report::median(&cl)), num(cl_ratio, 2)),
                format!("{} ms", num(report::median(&cl_p99), 2)),
                if errs == 0 { "0".into() } else { format!("{errs} of {requests}") },
            ]);
        }
        rows.push(json!({
            "path": path.key(),
            "name": path.name(),
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
        }));
    }
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
         throughput here even where it would not on separate machines.\n{outliers}",
        table.markdown(),
        options.duration,
        nginx_version(),
        std::thread::available_parallelism().map(usize::from).unwrap_or(1),
    );
    Section::new(
        "e2e",
        "End to end: HTTP through each L4 data plane (netns lab, wrk)",
        body,
        json!({ "rounds": rounds, "seconds_per_run": options.duration, "threads": THREADS, "connections": CONNECTIONS,
                "paths": Value::Array(rows) }),
    )
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
}
