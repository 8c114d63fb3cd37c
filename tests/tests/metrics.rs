//! Prometheus metrics end to end in a netns lab: a real Prometheus (Debian's package) scrapes the daemon inside the
//! node's namespace and its query API returns the daemon's series; `promtool check metrics` accepts a real page;
//! a take-over shows in the histogram; and 50 scrapes a second do not delay the adverts on the wire. Advert
//! interval 100 ms. Needs root, `prometheus` and `promtool` (`cargo xtask setup` installs them).
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xvip_tests::{
    ChildGuard, Lab, LabSpec,
    capture::{self, AdvertCapture},
    netns,
    probe::{self, StreamWatch},
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

const INTERVAL: Duration = Duration::from_millis(100);
/// Inside each node's namespace (loopback is its own there).
const LISTEN: &str = "127.0.0.1:9712";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn listen() -> SocketAddr {
    LISTEN.parse().expect("address")
}

fn lab(backends: usize) -> Lab {
    assert!(xvip_tests::is_root(), "the metrics tests need root: run them through `cargo xtask test`");
    Lab::new(LabSpec::nat(2, backends)).expect("lab")
}

fn spec(lab: &Lab, priority: u8) -> NodeSpec {
    NodeSpec {
        metrics_listen: Some(LISTEN.into()),
        ..NodeSpec::new(priority).service(ServiceSpec::http(lab, 80, 8080, "nat"))
    }
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus in `ns`, scraping the daemon there every second; stopped on drop.
struct Prometheus {
    ns: String,
    _child: ChildGuard,
}

impl Prometheus {
    fn start(lab: &Lab, ns: &str) -> Result<Self> {
        let dir = lab.dir().join(format!("prometheus-{ns}"));
        std::fs::create_dir_all(dir.join("data")).context("prometheus directory")?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: xvip\n    \
                 scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{LISTEN}\"]\n"
            ),
        )
        .context("prometheus.yml")?;
        let mut child = lab.spawn(
            ns,
            [
                "prometheus".to_string(),
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={PROMETHEUS}"),
            ],
        )?;
        child
            .wait_for_log("Server is ready to receive web requests", Duration::from_secs(30))
            .with_context(|| format!("prometheus did not start:\n{}", child.log()))?;
        Ok(Prometheus { ns: ns.to_string(), _child: child })
    }

    /// The result vector of an instant query.
    fn query(&self, query: &str) -> Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let response = probe::http_get(&self.ns, PROMETHEUS.parse()?, &path, Duration::from_secs(5))?;
        let body: Value = serde_json::from_slice(&response.body).context("prometheus answer")?;
        if body["status"] != "success" {
            bail!("query {query}: {body}");
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of `query`, once it has one that `ok` accepts (waits up to `timeout`).
    fn wait_value(&self, query: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> Result<(f64, Value)> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < timeout {
            last = self.query(query)?;
            if let [series] = last.as_slice()
                && let Some(value) = series["value"][1].as_str().and_then(|v| v.parse::<f64>().ok())
                && ok(value)
            {
                return Ok((value, series["metric"].clone()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("{query}: no acceptable value within {timeout:?}; last answer {last:?}")
    }
}

/// The value of the series written exactly as `series` on a page.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_page(node: &XvipNode, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String> {
    let start = Instant::now();
    loop {
        let page = node.metrics(listen());
        if let Ok(page) = &page
            && ok(page)
        {
            return Ok(page.clone());
        }
        if start.elapsed() > timeout {
            bail!("{}: the page did not get there within {timeout:?}: {page:?}", node.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real Prometheus scrapes the active node inside its namespace and answers queries over its series; the page
/// passes `promtool check metrics`; other paths and methods get clear errors; when the active node dies, the
/// backup's take-over histogram counts one take-over of about Master_Down_Interval.
#[test]
fn prometheus_scrapes_the_daemon_and_a_takeover_shows_in_the_histogram() {
    let lab = lab(3);
    lab.start_backends(&[8080]).expect("backends");
    let mut n1 = lab.start_xvip(lab.node(1), &spec(&lab, 150)).expect("node1");
    n1.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    let n2 = lab.start_xvip(lab.node(2), &spec(&lab, 100)).expect("node2");
    n2.wait_role("backup", Duration::from_secs(5)).expect("node2 backup");
    capture::wait_until("node1 sees 3 healthy backends", Duration::from_secs(10), || {
        n1.status().is_ok_and(|s| s.services[0].backends.iter().all(|b| b.healthy))
    })
    .expect("backends healthy");
    let tally = lab.request_many(lab.vip_addr(80), 30).expect("requests");
    assert_eq!(tally.successes(), 30, "{tally:?}");

    // Six long-lived connections through the VIP: open flows, by backend.
    let streams: Vec<StreamWatch> = (0..6)
        .map(|_| StreamWatch::start(&lab.client().ns, lab.vip_addr(80), Duration::from_secs(5)).expect("stream"))
        .collect();
    let mut open_on: BTreeMap<String, usize> = BTreeMap::new();
    for w in &streams {
        let host = lab.backends().iter().find(|b| b.name == w.backend()).expect("a lab backend");
        *open_on.entry(format!("{}:8080", host.ip)).or_default() += 1;
    }

    let prometheus = Prometheus::start(&lab, &lab.node(1).ns).expect("prometheus");
    let wait = Duration::from_secs(30);
    prometheus.wait_value(r#"up{job="xvip"}"#, wait, |v| v == 1.0).expect("a successful scrape");
    let (_, labels) = prometheus
        .wait_value(r#"xvip_vrrp_role{role="active"}"#, wait, |v| v == 1.0)
        .expect("the role through Prometheus");
    assert_eq!(labels["vrrp_instance"], "default", "{labels}");
    assert_eq!(labels["instance"], LISTEN, "Prometheus's own target label is untouched: {labels}");
    prometheus.wait_value(r#"xvip_vrrp_role{role="backup"}"#, wait, |v| v == 0.0).expect("not backup");
    prometheus.wait_value("xvip_vrrp_effective_priority", wait, |v| v == 150.0).expect("effective priority");
    // The transitions, as the status socket counts them.
    let transitions = n1.status().expect("status").transitions as f64;
    let (_, _) = prometheus
        .wait_value("sum(xvip_vrrp_transitions_total)", wait, |v| v == transitions)
        .expect("transitions as in xvip status");
    prometheus
        .wait_value("count(xvip_vrrp_adverts_discarded_total)", wait, |v| v >= 12.0)
        .expect("a discard series per reason");
    // Adverts every 100 ms: about 10 a second (the page moves once a second, and Prometheus samples it once a
    // second: a window of 10 s sees 9 to 11 seconds of adverts).
    // (A window Prometheus has only partly scraped yet reads low: wait until it holds 10 samples.)
    prometheus
        .wait_value("count_over_time(xvip_vrrp_adverts_sent_total[10s])", wait, |v| v >= 10.0)
        .expect("10 s of samples");
    let (advert_rate, _) = prometheus
        .wait_value("rate(xvip_vrrp_adverts_sent_total[10s])", wait, |v| (8.0..=12.0).contains(&v))
        .expect("adverts sent at the advert interval");
    prometheus.wait_value("xvip_vrrp_garps_sent_total", wait, |v| v >= 1.0).expect("gratuitous ARPs");
    prometheus.wait_value("count(xvip_backend_up == 1)", wait, |v| v == 3.0).expect("three backends up");
    let (flows, _) = prometheus
        .wait_value("sum(xvip_backend_new_flows_total)", wait, |v| v >= 36.0)
        .expect("the 30 connections and 6 streams as new flows");
    // 36 connections over 3 backends: each got packets (all on one or two: odds under 1e-5), and the backends'
    // packets add up to the service's.
    prometheus
        .wait_value("count(xvip_backend_packets_total > 0)", wait, |v| v == 3.0)
        .expect("packets on every backend");
    prometheus
        .wait_value("sum(xvip_backend_packets_total) - sum(xvip_service_packets_total)", wait, |v| v == 0.0)
        .expect("backend packets add up to the service's");
    prometheus.wait_value("sum(xvip_backend_bytes_total)", wait, |v| v >= 36.0 * 60.0).expect("bytes");
    for (backend, n) in &open_on {
        prometheus
            .wait_value(&format!(r#"xvip_backend_flows{{backend="{backend}"}}"#), wait, |v| v == *n as f64)
            .expect("open flows per backend: the streams on it");
    }
    prometheus.wait_value("sum(xvip_backend_flows)", wait, |v| v == 6.0).expect("six open flows in all");
    prometheus
        .wait_value(r#"xvip_dataplane_map_entries{map="conntrack"}"#, wait, |v| v >= 30.0)
        .expect("the connection table's fill");
    prometheus
        .wait_value(r#"xvip_dataplane_map_capacity{map="nat"}"#, wait, |v| v == 65536.0)
        .expect("the NAT table's size");
    prometheus
        .wait_value(r#"xvip_dataplane_frames_total{reason="nat_forward_tx"}"#, wait, |v| v > 0.0)
        .expect("frames by reason");
    prometheus
        .wait_value(r#"sum(xvip_health_checks_total{result="passed"})"#, wait, |v| v >= 3.0)
        .expect("health checks");
    eprintln!(
        "Prometheus: up, role active, {transitions} transitions, {advert_rate:.1} adverts/s, 3 backends up, {flows} \
         new flows, open flows {open_on:?}"
    );
    for w in streams {
        w.stop().expect("stream");
    }

    // promtool on a real page.
    let page = n1.metrics(listen()).expect("page");
    let page_path = lab.dir().join("metrics.txt");
    std::fs::write(&page_path, &page).expect("page file");
    let said = promtool(&page);
    eprintln!("the page:\n{page}");
    eprintln!("promtool check metrics on a {}-line page: {said:?}", page.lines().count());
    assert!(said.is_empty(), "promtool: {said}\npage in {}", page_path.display());

    // The listener answers nothing but GET/HEAD /metrics.
    let other = probe::http_get(&n1.ns, listen(), "/", Duration::from_secs(5)).expect("GET /");
    assert_eq!(other.status, 404, "{}", other.text());

    // A take-over: node1 dies; node2 counts one take-over, timed from node1's last advert to its own first.
    let page = wait_page(&n2, Duration::from_secs(5), |p| p.contains("xvip_vrrp_takeover_seconds_count")).expect("n2");
    assert_eq!(value(&page, r#"xvip_vrrp_takeover_seconds_count{vrrp_instance="default"}"#), Some(0.0), "{page}");
    n1.kill().expect("kill node1");
    n2.wait_role("active", Duration::from_secs(3)).expect("node2 takes over");
    let page = wait_page(&n2, Duration::from_secs(5), |p| {
        value(p, r#"xvip_vrrp_takeover_seconds_count{vrrp_instance="default"}"#) == Some(1.0)
    })
    .expect("one take-over on node2's page");
    let took = value(&page, r#"xvip_vrrp_takeover_seconds_sum{vrrp_instance="default"}"#).expect("sum");
    // Master_Down_Interval at priority 100: 3 intervals + (256 - 100) / 256 of one (RFC 5798 §6.1); the timer may
    // fire late on a busy machine, never early.
    let down = 3.0 * INTERVAL.as_secs_f64() + 156.0 / 256.0 * INTERVAL.as_secs_f64();
    eprintln!("take-over measured by node2: {:.1} ms (Master_Down_Interval {:.1} ms)", took * 1000.0, down * 1000.0);
    assert!(took >= down - 0.001 && took < down + 0.5, "take-over {took} s, Master_Down_Interval {down} s");
    assert_eq!(
        value(&page, r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="master_down"}"#),
        Some(1.0),
        "{page}"
    );
}

/// `promtool check metrics` on `page`: its complaints, empty when it accepts the page.
fn promtool(page: &str) -> String {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    promtool.stdin.take().expect("stdin").write_all(page.as_bytes()).expect("page to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { said.trim().to_string() } else { format!("exit {:?}: {said}", out.status.code()) }
}

/// A dual-stack instance (the lab's IPv4 VIP and an IPv6 one): its IPv6 router has its own series under
/// `family="ipv6"`, the data plane's counters for the IPv6 VIP (a client's Neighbor Solicitation, ping and TCP
/// SYN to a port without a service) among them, as `xvip status` shows them; promtool accepts the page.
#[test]
fn the_ipv6_router_has_its_own_series() {
    let lab = lab(1);
    xvip_tests::ipv6::enable(lab.node(1), 1).expect("IPv6 on node1");
    xvip_tests::ipv6::enable(lab.client(), 100).expect("IPv6 on the client");
    let vip6 = xvip_tests::ipv6::address(0x250);
    let spec = NodeSpec { metrics_listen: Some(LISTEN.into()), vip6: vec![vip6], ..NodeSpec::new(150) };
    let n1 = lab.start_xvip(lab.node(1), &spec).expect("node1");
    n1.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    capture::wait_until("the IPv6 router is active", Duration::from_secs(5), || {
        n1.status().is_ok_and(|s| s.instances[0].ipv6.as_ref().is_some_and(|v6| v6.role == "active"))
    })
    .expect("IPv6 active");
    // The client resolves the VIP (a solicitation the program answers) and pings it; a TCP SYN to a port without a
    // service is dropped.
    let ping = lab.exec(&lab.client().ns, ["ping", "-6", "-n", "-c", "2", "-W", "1", &vip6.to_string()]);
    assert!(ping.as_deref().is_ok_and(|p| p.contains("2 received")), "{ping:?}");
    let syn = netns::in_netns(&lab.client().ns, || {
        Ok(std::net::TcpStream::connect_timeout(&SocketAddr::new(vip6.into(), 80), Duration::from_millis(300)))
    })
    .expect("the client's namespace");
    assert!(syn.is_err(), "TCP to an IPv6 VIP's port without a service is dropped");

    let family = |metric: &str, labels: &str| format!(r#"{metric}{{vrrp_instance="default",family="ipv6"{labels}}}"#);
    let frames = |reason: &str| family("xvip_router_frames_total", &format!(r#",reason="{reason}""#));
    // The repeat of the unsolicited advertisements comes 1 s after the take-over (garp_repeat_delay_ms).
    let page = wait_page(&n1, Duration::from_secs(5), |p| {
        value(p, &family("xvip_vrrp_router_announcements_sent_total", "")) == Some(10.0)
            && value(p, &frames("drop_no_service")).is_some_and(|v| v >= 1.0)
    })
    .expect("the IPv6 router's series");
    for (series, ok) in [
        (family("xvip_vrrp_router_role", r#",role="active""#), &(|v: f64| v == 1.0) as &dyn Fn(f64) -> bool),
        (family("xvip_vrrp_router_role", r#",role="backup""#), &|v| v == 0.0),
        (family("xvip_vrrp_router_effective_priority", ""), &|v| v == 150.0),
        (family("xvip_vrrp_router_transitions_total", ""), &|v| v == 2.0),
        (family("xvip_vrrp_router_adverts_sent_total", ""), &|v| v >= 10.0),
        (family("xvip_vrrp_router_adverts_discarded_total", r#",reason="ttl""#), &|v| v == 0.0),
        (frames("na_replies"), &|v| v >= 1.0),
        (frames("echo_replies"), &|v| v == 2.0),
        (frames("drop_no_service"), &|v| v >= 1.0),
        (frames("arp_replies"), &|v| v == 0.0),
        (r#"xvip_router_frames_total{vrrp_instance="default",family="ipv4",reason="echo_replies"}"#.into(), &|v| {
            v == 0.0
        }),
    ] {
        let got = value(&page, &series);
        assert!(got.is_some_and(ok), "{series} = {got:?} in\n{page}");
    }
    // The same numbers in `xvip status`.
    let v6 = n1.status().expect("status").instances[0].ipv6.clone().expect("the IPv6 router");
    assert_eq!((v6.nas_sent, v6.effective_priority, v6.dataplane["echo_replies"]), (10, 150, 2), "{v6:?}");
    assert!(v6.dataplane["na_replies"] >= 1 && v6.dataplane["drop_no_service"] >= 1, "{v6:?}");
    let said = promtool(&page);
    assert!(said.is_empty(), "promtool: {said}\n{page}");
}

/// Scrapes `/metrics` from 127.0.0.1 in `ns` every `every` for `window`: (pages, failures, slowest answer).
fn scrape_for(ns: &str, window: Duration, every: Duration) -> Result<(usize, usize, Duration)> {
    let scraper = netns::spawn_in_netns(ns, move || -> Result<(usize, usize, Duration)> {
        let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < window {
            let asked = Instant::now();
            match xvip_tests::http::get(listen(), "/metrics", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 && r.text().contains("xvip_vrrp_role") => ok += 1,
                Ok(r) => {
                    failed += 1;
                    eprintln!("scrape answered {} {}", r.status, r.text());
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("scrape failed: {e}");
                }
            }
            slowest = slowest.max(asked.elapsed());
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok((ok, failed, slowest))
    })?;
    scraper.join().map_err(|_| anyhow::anyhow!("the scraper panicked"))?
}

/// 50 scrapes a second for 5 s on the active node: the largest gap between its adverts on the wire stays under 1.5
/// advert intervals, as without scrapes, every scrape gets the page, and the backup never takes over.
#[test]
fn a_scrape_storm_does_not_delay_adverts() {
    let lab = lab(1);
    lab.start_backends(&[8080]).expect("backends");
    let n1 = lab.start_xvip(lab.node(1), &spec(&lab, 150)).expect("node1");
    n1.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    let n2 = lab.start_xvip(lab.node(2), &spec(&lab, 100)).expect("node2");
    n2.wait_role("backup", Duration::from_secs(5)).expect("node2 backup");
    wait_page(&n1, Duration::from_secs(5), |p| p.contains("xvip_dataplane_map_entries")).expect("a full page");
    let n2_transitions = n2.status().expect("status").transitions;

    let ip = lab.node(1).ip;
    let at_sender = AdvertCapture::start(&lab, lab.node(1)).expect("capture on node1");
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let storm_from = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let (ok, failed, slowest) = scrape_for(&n1.ns, window, Duration::from_millis(20)).expect("storm");
    let storm_to = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let adverts = at_sender.stop().expect("capture");

    let quiet: Vec<_> = adverts.iter().filter(|a| a.time < storm_from).copied().collect();
    let stormy: Vec<_> = adverts.iter().filter(|a| a.time >= storm_from && a.time <= storm_to).copied().collect();
    let (quiet_gap, _) = capture::largest_gap(&quiet, ip).expect("adverts before the storm");
    let (storm_gap, _) = capture::largest_gap(&stormy, ip).expect("adverts during the storm");
    let rate = ok as f64 / (storm_to - storm_from);
    eprintln!(
        "measured: {ok} scrapes ({rate:.1}/s, {failed} failed, slowest {:.1} ms); largest advert gap {:.1} ms over \
         {:.1} s without scrapes ({} adverts), {:.1} ms over {:.1} s of scrapes ({} adverts)",
        slowest.as_secs_f64() * 1000.0,
        quiet_gap.as_secs_f64() * 1000.0,
        window.as_secs_f64(),
        quiet.len(),
        storm_gap.as_secs_f64() * 1000.0,
        storm_to - storm_from,
        stormy.len()
    );
    assert_eq!(failed, 0, "every scrape gets the page");
    // That the storm happened at all (the scraper itself may be slowed by a busy machine).
    assert!(rate >= 20.0, "the storm ran at {rate:.1} scrapes/s");
    assert!(storm_gap < INTERVAL * 3 / 2, "largest advert gap during the storm {storm_gap:?}");
    assert_eq!(n2.status().expect("status").transitions, n2_transitions, "node2 never took over");
}

/// What the hostile clients of [`hostile_clients`] met.
#[derive(Debug, Default)]
struct Hostile {
    /// Connections told 503 at once (over the per-address limit).
    busy: AtomicUsize,
    /// Silent connections the listener closed without an answer (the read timeout).
    silent_cut: AtomicUsize,
    /// Trickling requests the listener cut off before they were complete.
    trickles_cut: AtomicUsize,
    /// Oversized request heads answered 431.
    too_large: AtomicUsize,
    /// Oversized request heads that ended in a reset (the rest of a 64 KiB head was never read).
    reset: AtomicUsize,
    /// Answers a hostile client should never get (a page, or anything else unexpected): how many, and the first.
    wrongs: AtomicUsize,
    wrong: Mutex<Vec<String>>,
}

impl Hostile {
    /// Notes an unexpected answer (the first 10 in full).
    fn wrong(&self, what: String) {
        let mut wrong = self.wrong.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if wrong.len() < 10 {
            wrong.push(what);
        }
        self.wrongs.fetch_add(1, Ordering::Relaxed);
    }
}

/// A TCP connection to the listener from `source` (a loopback address of the namespace).
async fn connect_from(source: [u8; 4]) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(listen()).await
}

/// Reads until the listener closes (at most `limit`): what it sent.
async fn answer(stream: &mut tokio::net::TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut got)).await {
        Ok(Ok(_)) => Ok(got),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no close")),
    }
}

/// Until `stop`: 24 silent connections from 127.0.0.2 (more than every slot; each reopened when closed), three
/// clients from 127.0.0.3 trickling a request a byte every 100 ms, request heads of exactly the 8 KiB limit and of
/// 64 KiB from 127.0.0.4, and two clients from 127.0.0.5 that ask for the page with a tiny receive buffer and
/// never read it.
async fn hostile_clients(stop: Arc<AtomicBool>, seen: Arc<Hostile>) {
    use tokio::io::AsyncWriteExt as _;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let (stop, seen) = (stop.clone(), seen.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = connect_from([127, 0, 0, 2]).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                match answer(&mut stream, Duration::from_secs(15)).await {
                    Ok(got) if got.is_empty() => _ = seen.silent_cut.fetch_add(1, Ordering::Relaxed),
                    Ok(got) if got.starts_with(b"HTTP/1.1 503 ") => {
                        seen.busy.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => seen.wrong(format!("silent client: {other:?}")),
                }
            }
        });
    }
    for _ in 0..3 {
        let (stop, seen) = (stop.clone(), seen.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = connect_from([127, 0, 0, 3]).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut cut = false;
                for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')).take(600) {
                    if stop.load(Ordering::Relaxed) || stream.write_all(&[*b]).await.is_err() {
                        cut = true;
                        break;
                    }
                    // A 100 ms pause between bytes, watching for the listener closing.
                    match answer(&mut stream, Duration::from_millis(100)).await {
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Ok(got) if !got.is_empty() => {
                            seen.wrong(format!("trickling client got {}", String::from_utf8_lossy(&got)));
                        }
                        _ => {}
                    }
                    cut = true;
                    break;
                }
                if cut && !stop.load(Ordering::Relaxed) {
                    seen.trickles_cut.fetch_add(1, Ordering::Relaxed);
                } else if !cut {
                    seen.wrong("a trickled request of 600 bytes over 60 s was never cut off".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    {
        let (stop, seen) = (stop.clone(), seen.clone());
        tasks.spawn(async move {
            let mut big = false;
            while !stop.load(Ordering::Relaxed) {
                big = !big;
                let Ok(mut stream) = connect_from([127, 0, 0, 4]).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut head = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
                head.resize(if big { 64 * 1024 } else { 8 * 1024 }, b'a');
                let sent = stream.write_all(&head).await;
                match (answer(&mut stream, Duration::from_secs(10)).await, sent) {
                    (Ok(got), _) if got.starts_with(b"HTTP/1.1 431 ") => {
                        seen.too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    // The listener stops reading at 8 KiB: closing with the rest unread resets the connection,
                    // which may overtake its answer.
                    (Err(e), _) | (Ok(_), Err(e)) if big && e.kind() == std::io::ErrorKind::ConnectionReset => {
                        seen.reset.fetch_add(1, Ordering::Relaxed);
                    }
                    other => seen.wrong(format!("oversized request ({} bytes): {other:?}", head.len())),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    for _ in 0..2 {
        let stop = stop.clone();
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else { continue };
                let _ = socket.set_recv_buffer_size(1024);
                if socket.bind(SocketAddr::from(([127, 0, 0, 5], 0))).is_err() {
                    continue;
                }
                let Ok(mut stream) = socket.connect(listen()).await else { continue };
                let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
                for _ in 0..150 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Hostile clients on the active node's listener, from other loopback addresses than the scraper's: more silent
/// connections than there are slots, clients trickling their request, oversized request heads, clients that never
/// read the page. Meanwhile a scraper on 127.0.0.1 (where Prometheus would be) gets every page, 20 a second, and
/// the adverts on the wire keep their interval as before the attack.
#[test]
fn slow_silent_and_oversized_clients_do_not_stall_scrapes_or_adverts() {
    let lab = lab(1);
    lab.start_backends(&[8080]).expect("backends");
    let n1 = lab.start_xvip(lab.node(1), &spec(&lab, 150)).expect("node1");
    n1.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    let n2 = lab.start_xvip(lab.node(2), &spec(&lab, 100)).expect("node2");
    n2.wait_role("backup", Duration::from_secs(5)).expect("node2 backup");
    wait_page(&n1, Duration::from_secs(5), |p| p.contains("xvip_dataplane_map_entries")).expect("a full page");
    let n2_transitions = n2.status().expect("status").transitions;

    let ip = lab.node(1).ip;
    let at_sender = AdvertCapture::start(&lab, lab.node(1)).expect("capture on node1");
    std::thread::sleep(Duration::from_secs(3));
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Hostile::default()));
    let (flag, tally) = (stop.clone(), seen.clone());
    let attack = netns::spawn_in_netns(&n1.ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(hostile_clients(flag, tally));
        Ok(())
    })
    .expect("hostile clients");
    // Let the attack take every slot it can.
    std::thread::sleep(Duration::from_millis(500));
    let attack_from = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    // Longer than the listener's 5 s read timeout, so silent connections are cut and come back.
    let window = Duration::from_secs(8);
    let (ok, failed, slowest) = scrape_for(&n1.ns, window, Duration::from_millis(50)).expect("scrapes");
    let attack_to = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    attack.join().expect("hostile clients").expect("hostile clients");
    std::thread::sleep(Duration::from_millis(300));
    let adverts = at_sender.stop().expect("capture");

    let quiet: Vec<_> = adverts.iter().filter(|a| a.time < attack_from).copied().collect();
    let attacked: Vec<_> = adverts.iter().filter(|a| a.time >= attack_from && a.time <= attack_to).copied().collect();
    let (quiet_gap, _) = capture::largest_gap(&quiet, ip).expect("adverts before the attack");
    let (attack_gap, _) = capture::largest_gap(&attacked, ip).expect("adverts during the attack");
    eprintln!(
        "measured: {ok} scrapes ({failed} failed, slowest {:.1} ms) during {:.1} s of hostile clients: {} told busy, \
         {} silent cut off, {} trickles cut off, {} oversized answered 431, {} oversized reset; largest advert gap \
         {:.1} ms before ({} adverts), {:.1} ms during ({} adverts)",
        slowest.as_secs_f64() * 1000.0,
        attack_to - attack_from,
        seen.busy.load(Ordering::Relaxed),
        seen.silent_cut.load(Ordering::Relaxed),
        seen.trickles_cut.load(Ordering::Relaxed),
        seen.too_large.load(Ordering::Relaxed),
        seen.reset.load(Ordering::Relaxed),
        quiet_gap.as_secs_f64() * 1000.0,
        quiet.len(),
        attack_gap.as_secs_f64() * 1000.0,
        attacked.len()
    );
    let wrong = seen.wrong.lock().expect("lock");
    let wrongs = seen.wrongs.load(Ordering::Relaxed);
    assert_eq!(wrongs, 0, "hostile clients got answers they should not, the first: {wrong:?}");
    assert_eq!(failed, 0, "every scrape gets the page");
    assert!(ok > 0);
    assert!(seen.busy.load(Ordering::Relaxed) > 0, "one address is held to its share of the slots");
    assert!(seen.silent_cut.load(Ordering::Relaxed) > 0, "silent connections are closed");
    assert!(seen.trickles_cut.load(Ordering::Relaxed) > 0, "trickling requests are cut off");
    assert!(seen.too_large.load(Ordering::Relaxed) > 0, "oversized request heads get 431");
    assert!(attack_gap < INTERVAL * 3 / 2, "largest advert gap during the attack {attack_gap:?}");
    assert_eq!(n2.status().expect("status").transitions, n2_transitions, "node2 never took over");
    // Still serving once the attack is over.
    n1.metrics(listen()).expect("a page after the attack");
}
