//! `xvip-bench failover`: how long clients lose the VIP when the active node fails, for an xvip pair and a
//! keepalived pair in the same netns lab, and who answers ARP for the VIP afterwards.
//!
//! Lab: two nodes (priority 150 and 100, VRID 51, multicast VRRPv3), three backends with the VIP on `lo`, a
//! client. xvip serves VIP:8080 with a DSR service to `lab-backend` on the backends; with keepalived the VIP lands
//! on the node itself, so each node runs its own `lab-backend` on 8080. The client probes `GET /` on VIP:8080
//! every 10 ms (50 ms deadline); the outage is the longest time without an answer.
//!
//! Events on node1 (the active one): its link goes down (`lab.cut_link`), a graceful stop (SIGTERM), a crash
//! (SIGKILL). Each trial starts both nodes afresh and stops them afterwards.
//!
//! IPv6: the xvip instance also holds an IPv6 VIP (its own VRRP router, same timers), and the service also balances
//! to the backends' IPv6 addresses (each holds the IPv6 VIP on `lo` too); each keepalived gets a second, IPv6,
//! `vrrp_instance` (same VRID and timers) and its node server listens on both families. In every trial a second
//! client probe on the IPv6 VIP runs beside the IPv4 one, so the IPv6 figures come from the same event as the IPv4
//! ones; after the takeover a Neighbor Solicitation asks who holds the IPv6 VIP.
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use xvip_tests::keepalived::{BACKUP_LINE, MASTER_LINE};
use xvip_tests::probe::{self, ProbeSpec};
use xvip_tests::xvip::{NodeSpec, ServiceSpec, XvipNode};
use xvip_tests::{ChildGuard, Host, Keepalived, KeepalivedSpec, Lab, LabSpec, MacAddr, backend, cmd, ipv6, reach};

use crate::Options;
use crate::report::{self, Section, Table, jnum, num, verdict};

const PORT: u16 = 8080;
const VRID: u8 = 51;
const PRIORITY_ACTIVE: u8 = 150;
const PRIORITY_BACKUP: u8 = 100;
/// Probing before the event, to show the service works.
const BEFORE: Duration = Duration::from_millis(500);
/// Probing after the takeover, so an outage that outlasts it shows.
const AFTER: Duration = Duration::from_millis(1000);
/// The client's IPv6 host number (`fd00:77::10`); node N is `fd00:77::N`, backend N `fd00:77::2N`.
const CLIENT6: u16 = 0x10;

/// The IPv6 VIP of the xvip trials.
fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

fn target6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(vip6()), PORT)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Impl {
    Xvip,
    Keepalived,
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Impl::Xvip => "xvip",
            Impl::Keepalived => "keepalived",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    LinkDown,
    Graceful,
    Kill,
}

impl Event {
    const ALL: [Event; 3] = [Event::LinkDown, Event::Graceful, Event::Kill];

    fn name(self) -> &'static str {
        match self {
            Event::LinkDown => "link down",
            Event::Graceful => "graceful stop (SIGTERM)",
            Event::Kill => "crash (SIGKILL)",
        }
    }

    /// The bound of the issue, for the backup (priority 100) taking over.
    fn target(self, interval_ms: u32) -> Option<Duration> {
        let interval = Duration::from_millis(u64::from(interval_ms));
        match self {
            Event::LinkDown => Some(interval * 3 + skew(interval_ms) + Duration::from_millis(20)),
            Event::Graceful => Some(skew(interval_ms) + Duration::from_millis(30)),
            Event::Kill => None,
        }
    }
}

/// Skew_Time of the backup: (256 - priority) x interval / 256.
fn skew(interval_ms: u32) -> Duration {
    Duration::from_micros(u64::from(256 - u32::from(PRIORITY_BACKUP)) * u64::from(interval_ms) * 1000 / 256)
}

/// Master_Down_Interval of the backup.
fn master_down(interval_ms: u32) -> Duration {
    Duration::from_millis(3 * u64::from(interval_ms)) + skew(interval_ms)
}

/// One trial's outcome.
#[derive(Clone, Debug)]
struct Trial {
    outage: Duration,
    /// Who answered ARP for the VIP after the takeover (node names).
    holders: Vec<String>,
    summary: String,
    /// The IPv6 VIP's figures from the same trial.
    v6: Trial6,
}

/// The IPv6 VIP in one trial: the longest outage of its probe, who answered a Neighbor Solicitation for it after.
#[derive(Clone, Debug)]
struct Trial6 {
    outage: Duration,
    holders: Vec<String>,
    summary: String,
}

type Key = (u32, Event, Impl);

pub fn run(options: &Options) -> Result<Section> {
    xvip_tests::keepalived::available()?;
    let lab = Lab::new(LabSpec { nodes: 2, backends: 3, vip_on_backends_lo: true, backend_bin: None })?;
    enable_ipv6(&lab)?;
    let mut results: BTreeMap<Key, Vec<Result<Trial, String>>> = BTreeMap::new();
    let total = options.intervals.len() * Event::ALL.len() * 2 * options.trials;
    let mut done = 0;
    for &interval in &options.intervals {
        for trial in 0..options.trials {
            for event in Event::ALL {
                for which in [Impl::Xvip, Impl::Keepalived] {
                    done += 1;
                    let started = Instant::now();
                    let outcome = match which {
                        Impl::Xvip => xvip_trial(&lab, interval, event),
                        Impl::Keepalived => keepalived_trial(&lab, interval, event),
                    };
                    // Whatever happened, the next trial starts from a clean lab.
                    let cleanup = restore(&lab);
                    let outcome = outcome.and_then(|t| cleanup.map(|()| t)).map_err(|e| format!("{e:#}"));
                    match &outcome {
                        Ok(t) => eprintln!(
                            "[bench] failover {done}/{total}: {which} {interval} ms {} #{}: outage {:.0} ms, VIP \
                             holders {:?}; IPv6 VIP: outage {:.0} ms, holders {:?} ({:.1} s)",
                            event.name(),
                            trial + 1,
                            report::ms(t.outage),
                            t.holders,
                            report::ms(t.v6.outage),
                            t.v6.holders,
                            started.elapsed().as_secs_f64()
                        ),
                        Err(e) => eprintln!(
                            "[bench] failover {done}/{total}: {which} {interval} ms {} #{}: failed: {e}",
                            event.name(),
                            trial + 1
                        ),
                    }
                    results.entry((interval, event, which)).or_default().push(outcome);
                }
            }
        }
    }
    Ok(section(options, &results))
}

fn section(options: &Options, results: &BTreeMap<Key, Vec<Result<Trial, String>>>) -> Section {
    let mut table = Table::new(&[
        "advert interval",
        "event on the active node",
        "xvip median (worst)",
        "keepalived median (worst)",
        "target",
        "xvip vs target",
        "xvip vs keepalived median",
        "VIP answered by, after (xvip / keepalived)",
    ]);
    let mut cases = Vec::new();
    let mut intervals = options.intervals.clone();
    intervals.sort_unstable_by_key(|i| std::cmp::Reverse(*i));
    for interval in intervals {
        for event in Event::ALL {
            let stats = |which: Impl| {
                let trials = results.get(&(interval, event, which)).map(Vec::as_slice).unwrap_or_default();
                let outages: Vec<f64> = trials.iter().flatten().map(|t| report::ms(t.outage)).collect();
                let holders: Vec<String> = trials
                    .iter()
                    .map(|t| match t {
                        Ok(t) if t.holders.is_empty() => "nobody".to_string(),
                        Ok(t) => t.holders.join("+"),
                        Err(_) => "error".to_string(),
                    })
                    .collect();
                let errors: Vec<&String> = trials.iter().filter_map(|t| t.as_ref().err()).collect();
                (report::median(&outages), report::max(&outages), outages, holders, errors, trials)
            };
            let (x_med, x_worst, x_all, x_holders, x_errors, x_trials) = stats(Impl::Xvip);
            let (k_med, k_worst, k_all, k_holders, k_errors, k_trials) = stats(Impl::Keepalived);
            let target = event.target(interval);
            let meets_target = target.map(|t| !x_med.is_nan() && x_worst <= report::ms(t));
            // Within a probe tick (10 ms) of keepalived counts as no worse: the probe cannot resolve less.
            let keepalived_split = k_holders.iter().any(|h| h.split('+').any(|n| n == "node1"));
            let vs_keepalived = if x_med.is_nan() || k_med.is_nan() {
                "n/a".to_string()
            } else if event == Event::Kill && keepalived_split {
                // keepalived "survives" a crash only because the dead node keeps the VIP: not a fair figure.
                format!("n/a: keepalived's dead node kept the VIP ({:+.0} ms)", x_med - k_med)
            } else {
                format!("{} ({:+.0} ms)", verdict(x_med <= k_med + 10.0), x_med - k_med)
            };
            let dead_node_silent = x_trials.iter().flatten().all(|t| !t.holders.iter().any(|h| h == "node1"));
            let target_cell = match target {
                Some(t) => format!("<= {:.0} ms", report::ms(t)),
                None => "node1 silent after".to_string(),
            };
            let meets_cell = match meets_target {
                Some(ok) => format!("{} (worst)", verdict(ok)),
                None => verdict(dead_node_silent && !x_trials.is_empty() && x_errors.is_empty()).to_string(),
            };
            table.row(vec![
                format!("{interval} ms"),
                event.name().to_string(),
                outage_cell(x_med, x_worst, &x_errors),
                outage_cell(k_med, k_worst, &k_errors),
                target_cell,
                meets_cell,
                vs_keepalived,
                format!("{} / {}", summarize(&x_holders), summarize(&k_holders)),
            ]);
            cases.push(json!({
                "advert_interval_ms": interval,
                "event": event.name(),
                "target_ms": target.map(report::ms),
                "master_down_ms": report::ms(master_down(interval)),
                "skew_ms": report::ms(skew(interval)),
                "xvip": { "median_ms": jnum(x_med), "worst_ms": jnum(x_worst), "outages_ms": x_all,
                          "vip_holders_after": x_holders, "errors": x_errors,
                          "probes": x_trials.iter().flatten().map(|t| t.summary.clone()).collect::<Vec<_>>() },
                "keepalived": { "median_ms": jnum(k_med), "worst_ms": jnum(k_worst), "outages_ms": k_all,
                                "vip_holders_after": k_holders, "errors": k_errors,
                "probes": k_trials.iter().flatten().map(|t| t.summary.clone()).collect::<Vec<_>>() },
                "xvip_meets_target": meets_target,
                "xvip_dead_node_silent": dead_node_silent,
            }));
        }
    }
    let (table6, cases6) = ipv6_table(options, results);
    let body = format!(
        "{}\n\
         - {} trial(s) per cell; outage = longest time without an answer seen by a `GET /` on VIP:{PORT} every \
         10 ms (50 ms deadline), so ~10-20 ms is \"no outage\". Targets (backup priority {PRIORITY_BACKUP}): link \
         down <= 3 x interval + skew + 20 ms, graceful <= skew + 30 ms, judged on the worst trial; both no worse \
         than keepalived's median (within one 10 ms probe tick); after SIGKILL nothing answers for the VIP on the \
         dead node. Skew = (256 - 100) x interval / 256.\n\
         - xvip: DSR service to `lab-backend` on three backends; keepalived 2.2.7 (`-P`, VRRPv3, the VIP as /32 on \
         eth0): `lab-backend` on each node. The same lab, bridge and probe for both, one after the other.\n\
         - \"VIP answered by, after\": the ARP responders for the VIP from the client once the backup has taken \
         over (node1's link is still cut in the link-down rows). `node1+node2` = two holders (split brain). \
         keepalived's SIGKILL leaves the VIP on node1's interface, so node1 keeps serving: no outage, two \
         holders.\n\
         - A crash or link-down outage depends on where in the advert interval the event falls: from \
         Master_Down_Interval - interval (just before an advert was due) to Master_Down_Interval (just after one). \
         A trial's steps take about the same time every run, so the phase, and the figure, repeats within a run \
         but can move between versions of the benchmark: compare xvip with keepalived in the same run.\n",
        table.markdown(),
        options.trials
    ) + &table6;
    Section::new(
        "failover",
        "Failover: outage seen by a client, xvip vs keepalived",
        body,
        json!({ "trials": options.trials, "cases": Value::Array(cases), "ipv6_cases": Value::Array(cases6) }),
    )
}

/// The IPv6 VIP's rows, measured in the same trials as the IPv4 ones: the table with its notes, and its JSON cases.
fn ipv6_table(options: &Options, results: &BTreeMap<Key, Vec<Result<Trial, String>>>) -> (String, Vec<Value>) {
    let mut table = Table::new(&[
        "advert interval",
        "event on the active node",
        "IPv6 VIP: xvip median (worst)",
        "keepalived median (worst)",
        "target",
        "xvip vs target",
        "xvip vs keepalived median",
        "IPv6 VIP answered by, after (xvip / keepalived)",
    ]);
    let mut cases = Vec::new();
    let mut intervals = options.intervals.clone();
    intervals.sort_unstable_by_key(|i| std::cmp::Reverse(*i));
    for interval in intervals {
        for event in Event::ALL {
            let stats = |which: Impl| {
                let trials = results.get(&(interval, event, which)).map(Vec::as_slice).unwrap_or_default();
                let outages: Vec<f64> = trials.iter().flatten().map(|t| report::ms(t.v6.outage)).collect();
                let holders: Vec<String> = trials
                    .iter()
                    .map(|t| match t {
                        Ok(t) if t.v6.holders.is_empty() => "nobody".to_string(),
                        Ok(t) => t.v6.holders.join("+"),
                        Err(_) => "error".to_string(),
                    })
                    .collect();
                let errors: Vec<&String> = trials.iter().filter_map(|t| t.as_ref().err()).collect();
                (report::median(&outages), report::max(&outages), outages, holders, errors, trials)
            };
            let (x_med, x_worst, x_all, x_holders, x_errors, x_trials) = stats(Impl::Xvip);
            let (k_med, k_worst, k_all, k_holders, k_errors, k_trials) = stats(Impl::Keepalived);
            let target = event.target(interval);
            let dead_node_silent = x_trials.iter().flatten().all(|t| !t.v6.holders.iter().any(|h| h == "node1"));
            let keepalived_split = k_holders.iter().any(|h| h.split('+').any(|n| n == "node1"));
            let vs_keepalived = if x_med.is_nan() || k_med.is_nan() {
                "n/a".to_string()
            } else if event == Event::Kill && keepalived_split {
                format!("n/a: keepalived's dead node kept the VIP ({:+.0} ms)", x_med - k_med)
            } else {
                format!("{} ({:+.0} ms)", verdict(x_med <= k_med + 10.0), x_med - k_med)
            };
            let (target_cell, meets) = match target {
                Some(t) => (
                    format!("<= {:.0} ms", report::ms(t)),
                    format!("{} (worst)", verdict(!x_med.is_nan() && x_worst <= report::ms(t))),
                ),
                None => (
                    "node1 silent after".to_string(),
                    verdict(dead_node_silent && !x_trials.is_empty() && x_errors.is_empty()).to_string(),
                ),
            };
            table.row(vec![
                format!("{interval} ms"),
                event.name().to_string(),
                outage_cell(x_med, x_worst, &x_errors),
                outage_cell(k_med, k_worst, &k_errors),
                target_cell,
                meets,
                vs_keepalived,
                format!("{} / {}", summarize(&x_holders), summarize(&k_holders)),
            ]);
            cases.push(json!({
                "advert_interval_ms": interval,
                "event": event.name(),
                "target_ms": target.map(report::ms),
                "xvip": { "median_ms": jnum(x_med), "worst_ms": jnum(x_worst), "outages_ms": x_all,
                          "vip_holders_after": x_holders, "errors": x_errors,
                          "probes": x_trials.iter().flatten().map(|t| t.v6.summary.clone()).collect::<Vec<_>>() },
                "keepalived": { "median_ms": jnum(k_med), "worst_ms": jnum(k_worst), "outages_ms": k_all,
                                "vip_holders_after": k_holders, "errors": k_errors,
                "probes": k_trials.iter().flatten().map(|t| t.v6.summary.clone()).collect::<Vec<_>>() },
                "xvip_dead_node_silent": dead_node_silent,
            }));
        }
    }
    let text = format!(
        "\n**IPv6 VIP** (the same trials as the table above: a second probe on the IPv6 VIP ran through the same \
         events):\n\n{}\n\
         - xvip: the instance holds the IPv4 VIP and an IPv6 VIP (`{}`, its own VRRP router with the same timers and \
         priorities); the DSR service also balances to the three backends' IPv6 addresses, each holding the IPv6 \
         VIP on `lo`. keepalived: a second `vrrp_instance` per node for the IPv6 VIP (VRRPv3 over IPv6, same VRID \
         and timers, the VIP as /64 on eth0); the node servers listen on both families. A second client probe, \
         `GET /` on [VIP6]:{PORT} every 10 ms (50 ms deadline), runs beside the IPv4 one; a trial waits until both \
         of the backup's routers (instances) are active. Same targets and verdicts as above.\n\
         - \"answered by, after\": the Neighbor Advertisements to a Neighbor Solicitation for the IPv6 VIP from the \
         client once the backup has taken over.\n",
        table.markdown(),
        vip6()
    );
    (text, cases)
}

/// Turns IPv6 on (no DAD) for the client, both nodes and the backends, gives each backend the IPv6 VIP on `lo`,
/// and starts `lab-backend` on both families there.
fn enable_ipv6(lab: &Lab) -> Result<()> {
    ipv6::enable(lab.client(), CLIENT6)?;
    for (n, node) in (1u16..).zip(lab.nodes()) {
        ipv6::enable(node, n)?;
        // The cut link of the link-down event must not take the node's IPv6 addresses with it.
        let key = format!("net.ipv6.conf.{}.keep_addr_on_down=1", node.iface);
        cmd::exec_in(&node.ns, ["sysctl", "-q", "-w", &key])?;
    }
    for n in 1..=lab.backends().len() {
        let host = lab.backend(n);
        let id = 0x20 + u16::try_from(n).context("backend number")?;
        ipv6::enable(host, id)?;
        cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"])?;
        cmd::ip_in(&host.ns, ["-6", "addr", "add", &format!("{}/128", vip6()), "dev", "lo"])?;
        lab.start_backend_listening(n, &[PORT], true)?;
    }
    Ok(())
}

/// Node names of the Neighbor Advertisements for the IPv6 VIP, seen from the client.
fn holders6(lab: &Lab) -> Result<Vec<String>> {
    let client = lab.client();
    let macs = reach::ns_probe(&client.ns, &client.iface, ipv6::address(CLIENT6), vip6(), Duration::from_millis(500))?;
    let mut names: Vec<String> =
        macs.iter().map(|m| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone())).collect();
    names.sort();
    Ok(names)
}

fn outage_cell(median: f64, worst: f64, errors: &[&String]) -> String {
    let mut s = if median.is_nan() { "n/a".to_string() } else { format!("{} ({}) ms", num(median, 0), num(worst, 0)) };
    if !errors.is_empty() {
        s.push_str(&format!(", {} failed: {}", errors.len(), errors[0].lines().next().unwrap_or_default()));
    }
    s
}

/// `node2` when every trial agrees, else each distinct answer with its count.
fn summarize(holders: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in holders {
        *counts.entry(h.as_str()).or_default() += 1;
    }
    match counts.len() {
        0 => "n/a".into(),
        1 => counts.keys().next().map(|k| k.to_string()).unwrap_or_default(),
        _ => counts.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", "),
    }
}

/// Node names of the ARP responders for the VIP, seen from the client.
fn holders(lab: &Lab) -> Result<Vec<String>> {
    let macs: Vec<MacAddr> = lab.arp_probe(lab.client(), lab.vip())?;
    let mut names: Vec<String> =
        macs.iter().map(|m| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone())).collect();
    names.sort();
    Ok(names)
}

/// Waits until `GET /` on VIP:8080 answers from the client.
fn wait_service(lab: &Lab, timeout: Duration) -> Result<()> {
    wait_answered(lab, lab.vip_addr(PORT), timeout)
}

/// Waits until `GET /` on `target` answers from the client.
fn wait_answered(lab: &Lab, target: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe::http_get(&lab.client().ns, target, "/", Duration::from_millis(200)) {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(r) => bail!("the service answers HTTP {} through the VIP", r.status),
            Err(e) => return Err(e).context("the service never answered through the VIP"),
        }
    }
}

/// How long an election may take: the backup's Master_Down_Interval plus slack.
fn election_timeout(interval_ms: u32) -> Duration {
    master_down(interval_ms) + Duration::from_millis(u64::from(interval_ms)) + Duration::from_secs(3)
}

/// The measured part of a trial: probe, event, wait for the takeover, probe on, then ask who holds the VIP.
/// A second probe on the IPv6 VIP runs beside the first, and a Neighbor Solicitation asks who holds it after.
fn measure(
    lab: &Lab,
    event: Event,
    act: impl FnOnce() -> Result<()>,
    wait: impl FnOnce() -> Result<()>,
) -> Result<Trial> {
    let probe = lab.probe(ProbeSpec::http(lab.vip_addr(PORT)))?;
    let probe6 = lab.probe(ProbeSpec::http(target6()))?;
    std::thread::sleep(BEFORE);
    if event == Event::LinkDown {
        lab.cut_link(lab.node(1))?;
    } else {
        act()?;
    }
    wait()?;
    std::thread::sleep(AFTER);
    let report = probe.stop()?;
    let report6 = probe6.stop()?;
    let v6 = Trial6 { outage: report6.longest_gap, holders: holders6(lab)?, summary: report6.summary() };
    Ok(Trial { outage: report.longest_gap, holders: holders(lab)?, summary: report.summary(), v6 })
}

/// Waits until both routers of `node`'s instance (IPv4 and IPv6) are `role`.
fn wait_both(node: &XvipNode, role: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    node.wait_role(role, timeout)?;
    loop {
        let status = node.status()?;
        let instance = status.instances.first().context("no instance in status")?;
        if instance.role == role && instance.ipv6.as_ref().is_some_and(|r| r.role == role) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} is not {role} for both families after {timeout:?}: {instance:?}", node.name);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn xvip_trial(lab: &Lab, interval_ms: u32, event: Event) -> Result<Trial> {
    let mut service = ServiceSpec::http(lab, PORT, PORT, "dsr");
    service.backends.extend((1..=3).map(|n| (IpAddr::V6(ipv6::address(0x20 + n)), PORT)));
    let spec = |priority: u8| NodeSpec {
        advert_interval_ms: interval_ms,
        vrid: VRID,
        vip6: vec![vip6()],
        ..NodeSpec::new(priority).service(service.clone())
    };
    let mut n1 = lab.start_xvip(lab.node(1), &spec(PRIORITY_ACTIVE))?;
    wait_both(&n1, "active", election_timeout(interval_ms))?;
    let n2 = lab.start_xvip(lab.node(2), &spec(PRIORITY_BACKUP))?;
    wait_both(&n2, "backup", Duration::from_secs(3))?;
    wait_service(lab, Duration::from_secs(10))?;
    wait_answered(lab, target6(), Duration::from_secs(10))?;
    let trial = measure(
        lab,
        event,
        || match event {
            Event::Graceful => n1.terminate().map(drop),
            _ => n1.kill(),
        },
        || wait_both(&n2, "active", election_timeout(interval_ms)),
    );
    stop_xvip(n1);
    stop_xvip(n2);
    trial.map_err(|e| e.context(format!("xvip, {} at {interval_ms} ms", event.name())))
}

fn stop_xvip(mut node: XvipNode) {
    if node.pid().is_some() {
        let _ = node.terminate();
    }
}

/// A `lab-backend` on a node, for keepalived (the VIPs are local there), on both families.
fn node_server(lab: &Lab, node: &Host) -> Result<ChildGuard> {
    let bin = backend::locate()?;
    let mut child = lab.spawn(
        &node.ns,
        [bin.to_string_lossy().as_ref(), "--name", &node.name, "--port", &PORT.to_string(), "--ipv6"],
    )?;
    child.wait_for_log(xvip_tests::READY_LINE, Duration::from_secs(5))?;
    Ok(child)
}

fn keepalived_trial(lab: &Lab, interval_ms: u32, event: Event) -> Result<Trial> {
    let _servers = [node_server(lab, lab.node(1))?, node_server(lab, lab.node(2))?];
    // Two instances, IPv4 and IPv6, as xvip's two routers.
    let spec = |priority: u8| {
        let instance = KeepalivedSpec::new(lab.vip(), VRID, priority).advert_int(f64::from(interval_ms) / 1000.0);
        let v6 = KeepalivedSpec { instance: "VI_6".into(), ..instance.clone() }.ipv6(vip6());
        instance.with_instance(v6)
    };
    let k1 = lab.start_keepalived(lab.node(1), &spec(PRIORITY_ACTIVE))?;
    wait_log_count(&k1, MASTER_LINE, 2, election_timeout(interval_ms))?;
    let k2 = lab.start_keepalived(lab.node(2), &spec(PRIORITY_BACKUP))?;
    wait_log_count(&k2, BACKUP_LINE, 2, Duration::from_secs(5))?;
    wait_service(lab, Duration::from_secs(10))?;
    wait_answered(lab, target6(), Duration::from_secs(10))?;
    let masters_before = k2.count_in_log(MASTER_LINE);
    let mut k1 = Some(k1);
    let trial = measure(
        lab,
        event,
        || {
            let k1 = k1.take().context("keepalived on node1 is gone")?;
            match event {
                Event::Graceful => k1.stop(),
                _ => k1.kill(),
            }
        },
        || wait_log_count(&k2, MASTER_LINE, masters_before + 2, election_timeout(interval_ms)),
    );
    drop(k1);
    drop(k2);
    trial.map_err(|e| e.context(format!("keepalived, {} at {interval_ms} ms", event.name())))
}

fn wait_log_count(k: &Keepalived, needle: &str, count: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while k.count_in_log(needle) < count {
        if Instant::now() > deadline {
            bail!("keepalived did not log {needle:?} within {timeout:?}:\n{}", k.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Back to the starting point: node1's link up, the VIPs on no node's interface (keepalived killed with SIGKILL
/// leaves them there).
fn restore(lab: &Lab) -> Result<()> {
    lab.restore_link(lab.node(1))?;
    let vip = format!("{}/32", lab.vip());
    let vip6 = format!("{}/64", vip6());
    for node in lab.nodes() {
        let addrs = lab.exec(&node.ns, ["ip", "-4", "-o", "addr", "show", "dev", &node.iface])?;
        if addrs.contains(&format!(" {vip} ")) {
            lab.exec(&node.ns, ["ip", "addr", "del", &vip, "dev", &node.iface])?;
        }
        let addrs = lab.exec(&node.ns, ["ip", "-6", "-o", "addr", "show", "dev", &node.iface])?;
        if addrs.contains(&format!(" {vip6} ")) {
            lab.exec(&node.ns, ["ip", "-6", "addr", "del", &vip6, "dev", &node.iface])?;
        }
    }
    Ok(())
}
