//! The page rendered from engine views driven with virtual time and from made-up data plane counters.
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use lb_common::{Reason, Traffic};

use super::*;
use crate::{
    config,
    engine::{Engine, Event},
    vrrp::packet::{self, Advert, ChecksumMode},
};

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 250);

const CONFIG: &str = r#"
interface = "eth0"
[vip]
address = "10.0.0.250"
[vrrp]
vrid = 51
priority = 150
advert_interval_ms = 1000
[metrics]
[[service]]
name = "api"
port = 443
backends = [{ address = "10.0.0.21", port = 6443 }, { address = "10.0.0.22", port = 6443, weight = 0 }]
[service.health]
check = "tcp"
"#;

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn engine() -> Engine {
    let config = config::parse(Path::new("xvip.toml"), CONFIG).expect("config");
    Engine::new(config, [("eth0".to_owned(), Some(ME))].into(), 8).expect("engine")
}

fn start() -> Event {
    Event::Start { links: [("eth0".to_owned(), true)].into() }
}

fn link(up: bool) -> Event {
    Event::Link { interface: "eth0".into(), up }
}

fn role(e: &Engine) -> Role {
    e.role(config::DEFAULT_INSTANCE).expect("the default instance")
}

/// An advert from `src` as the VRRP socket delivers it (IPv4 header included), with a 1 s interval.
fn advert(src: Ipv4Addr, priority: u8) -> Event {
    let advert = Advert { vrid: 51, priority, max_adver_int: 100, addresses: vec![VIP] };
    let vrrp = advert.to_bytes(src, packet::MULTICAST_GROUP, ChecksumMode::PseudoHeader).expect("encode");
    let mut ip = vec![0x45, 0xc0, 0, 0, 0, 1, 0, 0, 255, packet::PROTOCOL, 0, 0];
    ip[2..4].copy_from_slice(&u16::try_from(20 + vrrp.len()).expect("length").to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&packet::MULTICAST_GROUP.octets());
    ip.extend_from_slice(&vrrp);
    Event::Packet { interface: "eth0".into(), bytes: ip }
}

fn sample(engine: &Engine, now: Duration) -> Sample {
    Sample {
        instances: engine
            .view(now)
            .instances
            .into_iter()
            .map(|view| Instance { name: view.config.name.clone(), view })
            .collect(),
        dataplane: None,
        unix_time: 1_764_150_000.5,
    }
}

/// The value of the series `name{labels}` (labels written as on the page), or `None`.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts the value of each series (`name{labels}` as on the page).
fn assert_series(page: &str, expected: &[(&str, f64)]) {
    for (series, expected) in expected {
        assert_eq!(value(page, series), Some(*expected), "{series} in\n{page}");
    }
}

/// Starts the engine and lets every backend pass its first check with its MAC known, so it is not settling
/// (holding preemption back) when the take-over tests run.
fn start_checked(e: &mut Engine) {
    e.handle(Duration::ZERO, start());
    for (i, address) in [[10, 0, 0, 21], [10, 0, 0, 22]].into_iter().enumerate() {
        let (backend, id) = ((address.into(), 6443), ServiceId::new(config::DEFAULT_INSTANCE, "api"));
        e.handle(ms(1), Event::Health { id, backend, healthy: true, reason: "test".into() });
        let seen = crate::neighbour::Seen::Mac { ifindex: 2, mac: [2, 0, 0, 0, 0, 0x21 + i as u8] };
        e.handle(ms(1), Event::Neighbour { address: address.into(), seen });
    }
}

/// Runs the engine through a take-over: a peer at priority 200 advertises every second from t = 0.1 s to
/// `last_ms`, then goes silent; this node takes over when its down timer fires. Returns the time it did.
fn take_over(e: &mut Engine, from_ms: u64, last_ms: u64) -> Duration {
    let mut t = from_ms;
    while t <= last_ms {
        e.handle(ms(t), advert(PEER, 200));
        t += 1000;
    }
    let fired = e.next_deadline().expect("down timer");
    e.handle(fired, Event::Timer);
    assert_eq!(role(e), Role::Active);
    fired
}

#[test]
fn the_takeover_histogram_times_from_the_last_advert_heard_to_the_first_advert_sent() {
    let mut e = engine();
    let mut metrics = Metrics::new();
    e.handle(Duration::ZERO, start());
    let page = metrics.render(sample(&e, ms(50)));
    assert_eq!(value(&page, r#"xvip_vrrp_takeover_seconds_count{vrrp_instance="default"}"#), Some(0.0), "{page}");

    let fired = take_over(&mut e, 100, 3100);
    // Master_Down_Interval at priority 150 with the peer's 1 s interval: 3 s + (256 - 150) / 256 s.
    let expected = Duration::from_secs(3) + Duration::from_secs(106) / 256;
    assert_eq!(fired - ms(3100), expected);
    let page = metrics.render(sample(&e, fired));
    let series = |suffix: &str| value(&page, &format!("xvip_vrrp_takeover_seconds_{suffix}"));
    assert_eq!(series(r#"count{vrrp_instance="default"}"#), Some(1.0), "{page}");
    assert_eq!(series(r#"sum{vrrp_instance="default"}"#), Some(expected.as_secs_f64()), "{page}");
    assert_eq!(series(r#"bucket{vrrp_instance="default",le="3"}"#), Some(0.0), "{page}");
    assert_eq!(series(r#"bucket{vrrp_instance="default",le="3.5"}"#), Some(1.0), "{page}");
    assert_eq!(series(r#"bucket{vrrp_instance="default",le="+Inf"}"#), Some(1.0), "{page}");
    assert_eq!(value(&page, r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="master_down"}"#), Some(1.0));

    // The next sample sees the same take-over: it is not counted again.
    let page = metrics.render(sample(&e, fired + ms(1000)));
    assert_eq!(value(&page, r#"xvip_vrrp_takeover_seconds_count{vrrp_instance="default"}"#), Some(1.0), "{page}");
}

#[test]
fn takeovers_between_two_samples_are_all_counted_and_a_restart_of_the_election_times_none() {
    let mut e = engine();
    let mut metrics = Metrics::new();
    start_checked(&mut e);
    // Twice: preempted back to backup by the peer at 200, then the peer goes silent again.
    let first = take_over(&mut e, 100, 1100);
    e.handle(first + ms(10), advert(PEER, 200));
    assert_eq!(role(&e), Role::Backup);
    let second = take_over(&mut e, (first + ms(1010)).as_millis() as u64, (first + ms(2010)).as_millis() as u64);
    // A link flap restarts the election: nothing heard since, so becoming active after it is no take-over.
    e.handle(second + ms(1), link(false));
    e.handle(second + ms(2), link(true));
    let alone = e.next_deadline().expect("down timer");
    e.handle(alone, Event::Timer);
    assert_eq!(role(&e), Role::Active);

    let page = metrics.render(sample(&e, alone));
    let expected = Duration::from_secs(3) + Duration::from_secs(106) / 256;
    assert_eq!(value(&page, r#"xvip_vrrp_takeover_seconds_count{vrrp_instance="default"}"#), Some(2.0), "{page}");
    assert_eq!(
        value(&page, r#"xvip_vrrp_takeover_seconds_sum{vrrp_instance="default"}"#),
        Some(expected.as_secs_f64() * 2.0),
        "{page}"
    );
    assert_eq!(value(&page, r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="master_down"}"#), Some(3.0));
    assert_eq!(value(&page, r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="link_down"}"#), Some(1.0));
}

#[test]
fn the_page_shows_role_priorities_adverts_and_backends_per_instance() {
    let mut e = engine();
    e.handle(Duration::ZERO, start());
    e.handle(
        ms(100),
        Event::Health {
            id: ServiceId::new(config::DEFAULT_INSTANCE, "api"),
            backend: ([10, 0, 0, 21].into(), 6443),
            healthy: true,
            reason: "test".into(),
        },
    );
    let mut bad = match advert(PEER, 200) {
        Event::Packet { bytes, .. } => bytes,
        _ => unreachable!(),
    };
    bad[8] = 64; // TTL
    e.handle(ms(200), Event::Packet { interface: "eth0".into(), bytes: bad });
    let mut metrics = Metrics::new();
    metrics.probes().recorder("default", "api", "10.0.0.21:6443").record(ms(3), true);
    metrics.probes().recorder("default", "api", "10.0.0.21:6443").record(ms(1000), false);
    let mut s = sample(&e, ms(300));
    let mut counters = Counters { reasons: vec![0; Reason::ALL.len()], ..Counters::default() };
    counters.reasons[Reason::NatForwardTx as usize] = 40;
    let api = ServiceId::new(config::DEFAULT_INSTANCE, "api");
    let key = (api.clone(), Ipv4Addr::new(10, 0, 0, 21).into(), 6443);
    counters.backends.insert(key.clone(), Traffic { packets: 40, bytes: 4000, new_flows: 7 });
    counters.services.insert(api, Traffic { packets: 40, bytes: 4000, new_flows: 7 });
    let scan = TableScan { conntrack_entries: 9, nat_entries: 8, capacity: 1024, flows: [(key, 5)].into() };
    s.dataplane = Some(DataPlaneSample { counters, tables: Some((scan, ms(12))) });
    let page = metrics.render(s);

    assert_series(
        &page,
        &[
            (r#"xvip_vrrp_role{vrrp_instance="default",role="backup"}"#, 1.0),
            (r#"xvip_vrrp_role{vrrp_instance="default",role="active"}"#, 0.0),
            (r#"xvip_vrrp_priority{vrrp_instance="default"}"#, 150.0),
            (r#"xvip_vrrp_effective_priority{vrrp_instance="default"}"#, 150.0),
            (r#"xvip_vrrp_adverts_discarded_total{vrrp_instance="default",reason="ttl"}"#, 1.0),
            (r#"xvip_vrrp_adverts_discarded_total{vrrp_instance="default",reason="owner"}"#, 0.0),
            (r#"xvip_vrrp_info{vrrp_instance="default",vrid="51",vip="10.0.0.250",interface="eth0"}"#, 1.0),
            (r#"xvip_backend_up{vrrp_instance="default",service="api",backend="10.0.0.21:6443"}"#, 1.0),
            (r#"xvip_backend_up{vrrp_instance="default",service="api",backend="10.0.0.22:6443"}"#, 0.0),
            (r#"xvip_backend_draining{vrrp_instance="default",service="api",backend="10.0.0.22:6443"}"#, 1.0),
            (r#"xvip_backend_packets_total{vrrp_instance="default",service="api",backend="10.0.0.21:6443"}"#, 40.0),
            (r#"xvip_backend_bytes_total{vrrp_instance="default",service="api",backend="10.0.0.21:6443"}"#, 4000.0),
            (r#"xvip_backend_new_flows_total{vrrp_instance="default",service="api",backend="10.0.0.21:6443"}"#, 7.0),
            (r#"xvip_backend_flows{vrrp_instance="default",service="api",backend="10.0.0.21:6443"}"#, 5.0),
            (r#"xvip_backend_flows{vrrp_instance="default",service="api",backend="10.0.0.22:6443"}"#, 0.0),
            (
                r#"xvip_health_checks_total{vrrp_instance="default",service="api",backend="10.0.0.21:6443",result="passed"}"#,
                1.0,
            ),
            (
                r#"xvip_health_checks_total{vrrp_instance="default",service="api",backend="10.0.0.21:6443",result="failed"}"#,
                1.0,
            ),
            (
                r#"xvip_health_check_duration_seconds_sum{vrrp_instance="default",service="api",backend="10.0.0.21:6443"}"#,
                0.003,
            ),
            (r#"xvip_service_new_flows_total{vrrp_instance="default",service="api"}"#, 7.0),
            (r#"xvip_dataplane_frames_total{reason="nat_forward_tx"}"#, 40.0),
            (r#"xvip_dataplane_frames_total{reason="drop_no_backend"}"#, 0.0),
            (r#"xvip_dataplane_map_entries{map="conntrack"}"#, 9.0),
            (r#"xvip_dataplane_map_entries{map="nat"}"#, 8.0),
            (r#"xvip_dataplane_map_capacity{map="nat"}"#, 1024.0),
            (r#"xvip_dataplane_scan_duration_seconds"#, 0.012),
            (r#"xvip_metrics_sample_timestamp_seconds"#, 1_764_150_000.5),
        ],
    );
    assert!(page.contains("# TYPE xvip_vrrp_adverts_sent_total counter\n"), "{page}");
    assert!(page.contains("# TYPE xvip_vrrp_takeover_seconds histogram\n"), "{page}");
}

#[test]
fn before_the_data_plane_answers_its_families_are_left_out() {
    let e = engine();
    let page = Metrics::new().render(sample(&e, Duration::ZERO));
    assert!(page.contains(r#"xvip_vrrp_role{vrrp_instance="default",role="initialize"} 1"#), "{page}");
    assert!(!page.contains("xvip_dataplane_"), "{page}");
    assert!(!page.contains("xvip_backend_packets_total"), "{page}");
    assert!(!page.contains("xvip_backend_flows"), "{page}");
}

#[test]
fn a_backend_removed_by_a_reload_leaves_the_page_with_its_health_check_series() {
    let mut e = engine();
    e.handle(Duration::ZERO, start());
    let mut metrics = Metrics::new();
    metrics.probes().recorder("default", "api", "10.0.0.22:6443").record(ms(1), true);
    let page = metrics.render(sample(&e, ms(1)));
    assert!(page.contains(r#"backend="10.0.0.22:6443",result="passed"} 1"#), "{page}");
    let text = CONFIG.replace(r#", { address = "10.0.0.22", port = 6443, weight = 0 }"#, "");
    let reloaded = config::parse(Path::new("xvip.toml"), &text).expect("config");
    e.handle(ms(2), Event::Reload(Box::new(Ok(reloaded))));
    let page = metrics.render(sample(&e, ms(3)));
    assert!(!page.contains("10.0.0.22"), "{page}");
}

/// The metric families on a page: name (as in `# TYPE`) -> (type, label names of its series).
fn families(page: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            families.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().expect("name");
            let family = families
                .keys()
                .filter(|f| name.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap_or_else(|| panic!("series {name} before its TYPE"));
            let labels = line.split_once('{').map_or("", |(_, rest)| rest.split('}').next().unwrap_or(""));
            let entry = families.get_mut(&family).expect("family");
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().expect("label");
                if key != "le" {
                    entry.1.insert(key.to_string());
                }
            }
        }
    }
    families
}

/// docs/metrics.md is the reference: every family the daemon exports is in its table with its type and labels,
/// and the table names nothing else.
#[test]
fn the_metrics_reference_lists_every_metric_with_its_type_and_labels() {
    let api = || ServiceId::new(config::DEFAULT_INSTANCE, "api");
    let mut e = engine();
    e.handle(Duration::ZERO, start());
    let fired = take_over(&mut e, 100, 1100);
    let mut metrics = Metrics::new();
    metrics.probes().recorder("default", "api", "10.0.0.21:6443").record(ms(3), true);
    let mut s = sample(&e, fired);
    let counters = Counters {
        reasons: vec![0; Reason::ALL.len()],
        backends: [((api(), Ipv4Addr::new(10, 0, 0, 21).into(), 6443), Traffic::default())].into(),
        services: [(api(), Traffic::default())].into(),
        ..Counters::default()
    };
    s.dataplane = Some(DataPlaneSample { counters, tables: Some((TableScan::default(), ms(1))) });
    let exported = families(&metrics.render(s));

    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).expect("docs/metrics.md");
    // Rows: | `name` | type | `label`, `label` | meaning |
    let mut documented = BTreeMap::new();
    for row in reference.lines().filter(|l| l.starts_with("| `xvip_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let labels: BTreeSet<String> = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| l.starts_with('`'))
            .map(|l| l.trim_matches('`').to_string())
            .collect();
        documented.insert(name, (cells[2].to_string(), labels));
    }
    for (name, family) in &exported {
        assert_eq!(documented.get(name), Some(family), "docs/metrics.md: row of {name}");
    }
    let extra: Vec<&String> = documented.keys().filter(|n| !exported.contains_key(*n)).collect();
    assert!(extra.is_empty(), "docs/metrics.md lists metrics the daemon does not export: {extra:?}");
    for reason in Reason::ALL {
        assert!(
            reference.contains(&format!("`{}`", reason.name())),
            "docs/metrics.md does not explain {}",
            reason.name()
        );
    }
}

/// The page's sample time is that of its older part: a stalled advert thread (old view) or data plane thread (old
/// counters) both stop it.
#[test]
fn the_sample_time_is_that_of_the_older_part() {
    assert_eq!(super::sample_time(100.0, None), 100.0);
    assert_eq!(super::sample_time(100.0, Some(90.0)), 90.0);
    assert_eq!(super::sample_time(80.0, Some(90.0)), 80.0);
}

/// Table walks: every 5 s while they are quick, and at most a tenth of the data plane thread's time when not.
#[test]
fn a_slow_table_walk_spaces_out_the_next_ones() {
    assert_eq!(super::scan_period(Duration::from_millis(3)), super::SCAN_PERIOD);
    assert_eq!(super::scan_period(Duration::from_millis(500)), super::SCAN_PERIOD);
    assert_eq!(super::scan_period(Duration::from_secs(2)), Duration::from_secs(20));
    assert_eq!(super::scan_period(Duration::MAX), Duration::MAX);
}

const TWO_INSTANCES: &str = r#"
interface = "eth0"
[metrics]
[[instance]]
name = "api"
[instance.vip]
address = "10.0.0.250"
[instance.vrrp]
vrid = 51
priority = 150
[[instance.service]]
name = "web"
port = 443
backends = [{ address = "10.0.0.21", port = 6443 }]
[[instance]]
name = "ingress"
[instance.vip]
addresses = ["10.0.0.240", "10.0.0.241"]
[instance.vrrp]
vrid = 52
priority = 100
[[instance.service]]
name = "web"
port = 443
backends = [{ address = "10.0.0.21", port = 6443 }]
"#;

#[test]
fn each_instance_has_its_own_series_and_the_frames_to_its_addresses() {
    let config = config::parse(Path::new("xvip.toml"), TWO_INSTANCES).expect("config");
    let mut e = Engine::new(config, [("eth0".to_owned(), Some(ME))].into(), 8).expect("engine");
    e.handle(Duration::ZERO, start());
    // Only "api" hears a peer at 200: it stays backup while "ingress", alone, becomes active.
    let mut t = 100;
    while e.role("ingress") != Some(Role::Active) {
        e.handle(ms(t), advert(PEER, 200));
        if let Some(d) = e.next_deadline().filter(|d| *d <= ms(t + 1000)) {
            e.handle(d, Event::Timer);
        }
        t += 1000;
        assert!(t < 10_000, "ingress never became active");
    }
    assert_eq!(e.role("api"), Some(Role::Backup));
    let mut s = sample(&e, ms(t));
    let routers: BTreeMap<String, Vec<u32>> =
        s.instances.iter().map(|i| (i.name.clone(), i.view.router_indices())).collect();
    let mut counters = Counters { reasons: vec![0; Reason::ALL.len()], ..Counters::default() };
    counters.reasons[Reason::ArpReply as usize] = 7;
    for (name, arp) in [("api", 5), ("ingress", 2)] {
        let mut by_reason = vec![0; Reason::ALL.len()];
        by_reason[Reason::ArpReply as usize] = arp;
        counters.routers.insert(routers[name][0], by_reason);
    }
    let web = |instance: &str| ServiceId::new(instance, "web");
    let backend = |instance: &str| (web(instance), Ipv4Addr::new(10, 0, 0, 21).into(), 6443);
    counters.backends.insert(backend("api"), Traffic { packets: 3, bytes: 300, new_flows: 1 });
    counters.backends.insert(backend("ingress"), Traffic { packets: 4, bytes: 400, new_flows: 2 });
    counters.services.insert(web("api"), Traffic { packets: 3, bytes: 300, new_flows: 1 });
    counters.services.insert(web("ingress"), Traffic { packets: 4, bytes: 400, new_flows: 2 });
    s.dataplane = Some(DataPlaneSample { counters, tables: None });
    let page = Metrics::new().render(s);

    assert_series(
        &page,
        &[
            (r#"xvip_vrrp_role{vrrp_instance="api",role="backup"}"#, 1.0),
            (r#"xvip_vrrp_role{vrrp_instance="ingress",role="active"}"#, 1.0),
            (r#"xvip_vrrp_priority{vrrp_instance="ingress"}"#, 100.0),
            (r#"xvip_vrrp_info{vrrp_instance="api",vrid="51",vip="10.0.0.250",interface="eth0"}"#, 1.0),
            (r#"xvip_vrrp_info{vrrp_instance="ingress",vrid="52",vip="10.0.0.240",interface="eth0"}"#, 1.0),
            (r#"xvip_backend_packets_total{vrrp_instance="api",service="web",backend="10.0.0.21:6443"}"#, 3.0),
            (r#"xvip_backend_packets_total{vrrp_instance="ingress",service="web",backend="10.0.0.21:6443"}"#, 4.0),
            (r#"xvip_service_new_flows_total{vrrp_instance="ingress",service="web"}"#, 2.0),
            (r#"xvip_instance_frames_total{vrrp_instance="api",reason="arp_replies"}"#, 5.0),
            (r#"xvip_instance_frames_total{vrrp_instance="ingress",reason="arp_replies"}"#, 2.0),
            (r#"xvip_instance_frames_total{vrrp_instance="ingress",reason="pass_not_vip"}"#, 0.0),
            (r#"xvip_dataplane_frames_total{reason="arp_replies"}"#, 7.0),
        ],
    );
    assert!(page.contains(r#"xvip_vrrp_takeover_seconds_count{vrrp_instance="ingress"} 0"#), "{page}");
}

const DUAL: &str = r#"
interface = "eth0"
[vip]
addresses = ["10.0.0.250", "fd00::250"]
[vrrp]
vrid = 51
priority = 150
advert_interval_ms = 1000
garp_repeat_delay_ms = 0
[metrics]
"#;

/// An IPv6 advert from `src` as the IPv6 VRRP socket delivers it, with a 1 s interval.
fn advert6(src: std::net::Ipv6Addr, priority: u8, hop_limit: u8) -> Event {
    let vip6: std::net::Ipv6Addr = "fd00::250".parse().expect("address");
    let advert = Advert { vrid: 51, priority, max_adver_int: 100, addresses: vec![vip6] };
    let message = advert.to_bytes(src, packet::MULTICAST_GROUP_V6, ChecksumMode::PseudoHeader).expect("encode");
    let datagram = crate::vrrp::socket6::Datagram { message, src, dst: packet::MULTICAST_GROUP_V6, hop_limit };
    Event::Packet6 { interface: "eth0".into(), datagram }
}

/// An engine for the config `text` on eth0, from 10.0.0.5 and, for IPv6, fe80::5.
fn engine6(text: &str) -> Engine {
    let config = config::parse(Path::new("xvip.toml"), text).expect("config");
    let me6: std::net::Ipv6Addr = "fe80::5".parse().expect("address");
    Engine::with_link_locals(config, [("eth0".to_owned(), Some(ME))].into(), [("eth0".to_owned(), me6)].into(), 8)
        .expect("engine")
}

/// Runs the engine's timers from `t` until the first instance's IPv6 router is active; returns when it became so.
fn until_ipv6_active(e: &mut Engine, mut t: Duration) -> Duration {
    let role6 = |e: &Engine, t| e.view(t).instances[0].ipv6.as_ref().map(|v6| v6.observed.role);
    while role6(e, t) != Some(Role::Active) {
        t = e.next_deadline().expect("a timer");
        assert!(t < ms(10_000), "the IPv6 router never took over");
        e.handle(t, Event::Timer);
    }
    t
}

#[test]
fn each_router_of_an_instance_has_its_series_by_family() {
    let peer6: std::net::Ipv6Addr = "fe80::6".parse().expect("address");
    let mut e = engine6(DUAL);
    e.handle(Duration::ZERO, start());
    // A higher IPv6 peer: the IPv6 router stays backup while the IPv4 router, alone, becomes active.
    e.handle(ms(100), advert6(peer6, 200, 255));
    e.handle(ms(150), advert6(peer6, 200, 64)); // off-link: discarded
    let fired = e.next_deadline().expect("a down timer");
    e.handle(fired, Event::Timer);
    assert_eq!(role(&e), Role::Active);
    let mut s = sample(&e, fired);
    let routers = s.instances[0].view.router_indices();
    assert_eq!(routers, [0, 1]);
    let mut counters = Counters { reasons: vec![0; Reason::ALL.len()], ..Counters::default() };
    for (router, reason, n) in [(0, Reason::ArpReply, 3), (1, Reason::PassNd, 4), (1, Reason::DropIpv6Transport, 2)] {
        counters.routers.entry(router).or_insert_with(|| vec![0; Reason::ALL.len()])[reason as usize] = n;
    }
    s.dataplane = Some(DataPlaneSample { counters, tables: None });
    let page = Metrics::new().render(s);

    assert_series(
        &page,
        &[
            (r#"xvip_vrrp_router_role{vrrp_instance="default",family="ipv4",role="active"}"#, 1.0),
            (r#"xvip_vrrp_router_role{vrrp_instance="default",family="ipv6",role="backup"}"#, 1.0),
            (r#"xvip_vrrp_router_role{vrrp_instance="default",family="ipv6",role="active"}"#, 0.0),
            (r#"xvip_vrrp_router_effective_priority{vrrp_instance="default",family="ipv6"}"#, 150.0),
            (r#"xvip_vrrp_router_transitions_total{vrrp_instance="default",family="ipv4"}"#, 2.0),
            (r#"xvip_vrrp_router_transitions_total{vrrp_instance="default",family="ipv6"}"#, 1.0),
            (r#"xvip_vrrp_router_adverts_sent_total{vrrp_instance="default",family="ipv4"}"#, 1.0),
            (r#"xvip_vrrp_router_adverts_sent_total{vrrp_instance="default",family="ipv6"}"#, 0.0),
            (r#"xvip_vrrp_router_adverts_received_total{vrrp_instance="default",family="ipv6"}"#, 1.0),
            (r#"xvip_vrrp_router_adverts_discarded_total{vrrp_instance="default",family="ipv6",reason="ttl"}"#, 1.0),
            (r#"xvip_vrrp_router_adverts_discarded_total{vrrp_instance="default",family="ipv4",reason="ttl"}"#, 0.0),
            (r#"xvip_vrrp_router_announcements_sent_total{vrrp_instance="default",family="ipv4"}"#, 5.0),
            (r#"xvip_vrrp_router_announcements_sent_total{vrrp_instance="default",family="ipv6"}"#, 0.0),
            (r#"xvip_router_frames_total{vrrp_instance="default",family="ipv4",reason="arp_replies"}"#, 3.0),
            (r#"xvip_router_frames_total{vrrp_instance="default",family="ipv6",reason="pass_nd"}"#, 4.0),
            (r#"xvip_router_frames_total{vrrp_instance="default",family="ipv6",reason="drop_ipv6_transport"}"#, 2.0),
            (r#"xvip_router_frames_total{vrrp_instance="default",family="ipv6",reason="arp_replies"}"#, 0.0),
            (r#"xvip_instance_frames_total{vrrp_instance="default",reason="pass_nd"}"#, 4.0),
            // The per-instance families keep showing the IPv4 router.
            (r#"xvip_vrrp_role{vrrp_instance="default",role="active"}"#, 1.0),
        ],
    );
    // Once the IPv6 peer goes quiet the IPv6 router takes over and announces the IPv6 address.
    let t = until_ipv6_active(&mut e, fired);
    let page = Metrics::new().render(sample(&e, t));
    assert_series(
        &page,
        &[
            (r#"xvip_vrrp_router_role{vrrp_instance="default",family="ipv6",role="active"}"#, 1.0),
            (r#"xvip_vrrp_router_announcements_sent_total{vrrp_instance="default",family="ipv6"}"#, 5.0),
            (r#"xvip_vrrp_router_adverts_sent_total{vrrp_instance="default",family="ipv6"}"#, 1.0),
        ],
    );
}

/// An instance with only IPv6 addresses: the per-instance families show its IPv6 router, as `xvip status` does,
/// so the alerts on `xvip_vrrp_role` hold for it too.
#[test]
fn the_per_instance_families_of_an_ipv6_only_instance_show_its_ipv6_router() {
    let text = DUAL.replace(r#"["10.0.0.250", "fd00::250"]"#, r#"["fd00::250"]"#);
    let mut e = engine6(&text);
    e.handle(Duration::ZERO, start());
    e.handle(ms(150), advert6("fe80::6".parse().expect("address"), 100, 64)); // off-link: discarded
    let fired = e.next_deadline().expect("the down timer");
    e.handle(fired, Event::Timer);
    let page = Metrics::new().render(sample(&e, fired));
    assert_series(
        &page,
        &[
            (r#"xvip_vrrp_role{vrrp_instance="default",role="active"}"#, 1.0),
            (r#"xvip_vrrp_role{vrrp_instance="default",role="initialize"}"#, 0.0),
            (r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="startup"}"#, 1.0),
            (r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="master_down"}"#, 1.0),
            (r#"xvip_vrrp_adverts_sent_total{vrrp_instance="default"}"#, 1.0),
            (r#"xvip_vrrp_adverts_discarded_total{vrrp_instance="default",reason="ttl"}"#, 1.0),
            (r#"xvip_vrrp_router_role{vrrp_instance="default",family="ipv6",role="active"}"#, 1.0),
        ],
    );
    assert!(!page.contains(r#"family="ipv4""#), "no IPv4 router without IPv4 addresses:\n{page}");
}

/// The IPv6 router's take-overs are timed as the IPv4 router's are, in a series of their own under
/// `family="ipv6"`; the IPv4 router's series keeps its labels and counts only its own.
#[test]
fn the_ipv6_routers_takeovers_have_a_histogram_series_by_family() {
    let mut e = engine6(DUAL);
    let mut metrics = Metrics::new();
    e.handle(Duration::ZERO, start());
    // A higher IPv6 peer advertises every second until 2.1 s, then goes quiet; the IPv4 router hears nobody.
    for t in [100, 1100, 2100] {
        e.handle(ms(t), advert6("fe80::6".parse().expect("address"), 200, 255));
    }
    let page = metrics.render(sample(&e, ms(2200)));
    let v4 = r#"{vrrp_instance="default"}"#;
    let v6 = r#"{vrrp_instance="default",family="ipv6"}"#;
    assert_eq!(value(&page, &format!("xvip_vrrp_takeover_seconds_count{v6}")), Some(0.0), "{page}");
    let t = until_ipv6_active(&mut e, ms(2200));
    // Master_Down_Interval at priority 150 with the peer's 1 s interval: 3 s + (256 - 150) / 256 s.
    let expected = Duration::from_secs(3) + Duration::from_secs(106) / 256;
    assert_eq!(t - ms(2100), expected);
    let page = metrics.render(sample(&e, t));
    let series = |s: &str| value(&page, &format!("xvip_vrrp_takeover_seconds_{s}"));
    assert_eq!(series(&format!("count{v6}")), Some(1.0), "{page}");
    assert_eq!(series(&format!("sum{v6}")), Some(expected.as_secs_f64()), "{page}");
    let bucket = |le: &str| format!(r#"bucket{{vrrp_instance="default",family="ipv6",le="{le}"}}"#);
    assert_eq!(series(&bucket("3")), Some(0.0), "{page}");
    assert_eq!(series(&bucket("3.5")), Some(1.0), "{page}");
    assert_eq!(series(&format!("count{v4}")), Some(0.0), "the IPv4 router took over from nobody:\n{page}");
    // The next sample sees the same take-over: it is not counted again.
    let page = metrics.render(sample(&e, t + ms(1000)));
    assert_eq!(value(&page, &format!("xvip_vrrp_takeover_seconds_count{v6}")), Some(1.0), "{page}");
}

/// The series of a page as `name{label,...}` (label names, not values) with how many of each: its shape.
fn shape(page: &str) -> BTreeMap<String, usize> {
    let mut shape = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let keys: Vec<&str> =
            labels.trim_end_matches('}').split(',').filter_map(|pair| pair.split_once('=').map(|(k, _)| k)).collect();
        *shape.entry(format!("{name}{{{}}}", keys.join(","))).or_default() += 1;
    }
    shape
}

/// Status and metrics render both routers of an instance with IPv4 and IPv6 addresses: the status document and
/// the page keep every key, series and value their readers (docs/status.md, docs/metrics.md) rely on.
#[test]
fn the_status_and_page_of_a_dual_stack_instance_keep_their_shape_and_values() {
    let peer6: std::net::Ipv6Addr = "fe80::6".parse().expect("address");
    let mut e = engine6(DUAL);
    let mut metrics = Metrics::new();
    e.handle(Duration::ZERO, start());
    e.handle(ms(100), advert6(peer6, 200, 255));
    e.handle(ms(150), advert6(peer6, 200, 64)); // off-link: discarded
    e.handle(ms(200), advert(PEER, 100)); // a lower IPv4 router
    let t = until_ipv6_active(&mut e, ms(200));
    let mut s = sample(&e, t);
    let counters = Counters { reasons: vec![0; Reason::ALL.len()], ..Counters::default() };
    s.dataplane = Some(DataPlaneSample { counters, tables: None });
    let page = metrics.render(s);
    let status = serde_json::to_value(e.status(t, 1_000)).expect("json");
    let expected: BTreeMap<String, usize> = [
        ("xvip_build_info{version}", 1),
        ("xvip_dataplane_frames_total{reason}", 41),
        ("xvip_instance_frames_total{vrrp_instance,reason}", 41),
        ("xvip_metrics_sample_timestamp_seconds{}", 1),
        ("xvip_router_frames_total{vrrp_instance,family,reason}", 82),
        ("xvip_vrrp_adverts_discarded_total{vrrp_instance,reason}", 12),
        ("xvip_vrrp_adverts_received_total{vrrp_instance}", 1),
        ("xvip_vrrp_adverts_sent_total{vrrp_instance}", 1),
        ("xvip_vrrp_effective_priority{vrrp_instance}", 1),
        ("xvip_vrrp_garps_sent_total{vrrp_instance}", 1),
        ("xvip_vrrp_info{vrrp_instance,vrid,vip,interface}", 1),
        ("xvip_vrrp_priority{vrrp_instance}", 1),
        ("xvip_vrrp_role{vrrp_instance,role}", 4),
        ("xvip_vrrp_router_adverts_discarded_total{vrrp_instance,family,reason}", 24),
        ("xvip_vrrp_router_adverts_received_total{vrrp_instance,family}", 2),
        ("xvip_vrrp_router_adverts_sent_total{vrrp_instance,family}", 2),
        ("xvip_vrrp_router_announcements_sent_total{vrrp_instance,family}", 2),
        ("xvip_vrrp_router_effective_priority{vrrp_instance,family}", 2),
        ("xvip_vrrp_router_role{vrrp_instance,family,role}", 8),
        ("xvip_vrrp_router_transitions_total{vrrp_instance,family}", 2),
        ("xvip_vrrp_takeover_seconds_bucket{vrrp_instance,family,le}", 19),
        ("xvip_vrrp_takeover_seconds_bucket{vrrp_instance,le}", 19),
        ("xvip_vrrp_takeover_seconds_count{vrrp_instance,family}", 1),
        ("xvip_vrrp_takeover_seconds_count{vrrp_instance}", 1),
        ("xvip_vrrp_takeover_seconds_sum{vrrp_instance,family}", 1),
        ("xvip_vrrp_takeover_seconds_sum{vrrp_instance}", 1),
        ("xvip_vrrp_transitions_total{vrrp_instance,reason}", 8),
    ]
    .into_iter()
    .map(|(series, n)| (series.to_string(), n))
    .collect();
    assert_eq!(shape(&page), expected, "{page}");
    assert_series(
        &page,
        &[
            (r#"xvip_vrrp_role{vrrp_instance="default",role="active"}"#, 1.0),
            (r#"xvip_vrrp_transitions_total{vrrp_instance="default",reason="preempt"}"#, 1.0),
            (r#"xvip_vrrp_adverts_discarded_total{vrrp_instance="default",reason="ttl"}"#, 0.0),
            (r#"xvip_vrrp_garps_sent_total{vrrp_instance="default"}"#, 5.0),
            (r#"xvip_vrrp_router_transitions_total{vrrp_instance="default",family="ipv6"}"#, 2.0),
            (r#"xvip_vrrp_router_adverts_discarded_total{vrrp_instance="default",family="ipv6",reason="ttl"}"#, 1.0),
            (r#"xvip_vrrp_router_announcements_sent_total{vrrp_instance="default",family="ipv6"}"#, 5.0),
            (r#"xvip_vrrp_takeover_seconds_sum{vrrp_instance="default"}"#, 3.2140625),
            (r#"xvip_vrrp_takeover_seconds_sum{vrrp_instance="default",family="ipv6"}"#, 3.4140625),
        ],
    );
    // The whole instance, values included: its own fields show the IPv4 router, `ipv6` the IPv6 one.
    let expected = serde_json::json!({
        "active_router": "10.0.0.5",
        "addresses": [
            "10.0.0.250",
            "fd00::250"
        ],
        "counters": {
            "adverts_discarded": 0,
            "adverts_discarded_by_reason": {},
            "adverts_received": 1,
            "adverts_sent": 1,
            "arp_replies": 0,
            "dataplane": {},
            "garps_sent": 5
        },
        "effective_priority": 150,
        "interface": "eth0",
        "ipv6": {
            "active_router": "fe80::5",
            "adverts_discarded": 1,
            "adverts_discarded_by_reason": {
                "ttl": 1
            },
            "adverts_received": 1,
            "adverts_sent": 1,
            "dataplane": {},
            "effective_priority": 150,
            "nas_sent": 5,
            "role": "active",
            "role_reason": "master down timer expired after 3.41 s without adverts from fe80::6",
            "role_since_unix_ms": 4514,
            "source": "fe80::5",
            "transitions": 2
        },
        "name": "default",
        "priority": 150,
        "role": "active",
        "role_reason": "preempting lower priority 100 active router 10.0.0.6 (ours 150): master down timer expired after 3.41 s",
        "role_since_unix_ms": 4414,
        "services": [],
        "transitions": 2,
        "vip": "10.0.0.250",
        "vrid": 51,
        "warnings": [],
        "xdp_mode": ""
    });
    assert_eq!(status["instances"][0], expected, "{status:#}");
    // The top level is the first instance's.
    for (key, value) in status.as_object().expect("an object") {
        if key != "instances" {
            assert_eq!(value, &expected[key], "{key}");
        }
    }
}
