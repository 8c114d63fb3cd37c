//! Several VRRP instances per daemon, end to end in a netns lab: two nodes each running two instances (two VIPs),
//! node1 active for one and node2 for the other (active/active); killing a node moves only its VIP; a reload
//! adds and removes an instance while the other carries traffic. Bounds come from the RFC timers (advert interval
//! 100 ms). Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use xvip_tests::{
    Lab, LabSpec, MacAddr,
    probe::ProbeSpec,
    xvip::{InstanceSpec, NodeSpec, ServiceSpec, XvipNode},
};

const PORT: u16 = 8080;
/// Where each node serves its metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9712";

fn lab() -> Lab {
    Lab::new(LabSpec::nat(2, 3)).expect("lab")
}

/// The lab's second VIP, next to its first.
fn vip_b(lab: &Lab) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(lab.vip()) + 1)
}

fn addr(vip: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(vip, PORT))
}

/// Who answers ARP for `vip`, by node name.
fn arp_owners(lab: &Lab, vip: Ipv4Addr) -> Vec<String> {
    let macs: Vec<MacAddr> = lab.arp_probe(lab.client(), vip).expect("arp probe");
    macs.iter().map(|m| lab.host_by_mac(*m).map_or_else(|| m.to_string(), |h| h.name.clone())).collect()
}

/// Instance `a` (the lab's VIP, VRID 51) and `b` (the next address, VRID 52), each with a NAT web service over
/// every backend; `a` prefers node1 and `b` node2 when `first` is node1.
fn spec(lab: &Lab, prefer_a: bool) -> NodeSpec {
    let (pa, pb) = if prefer_a { (150, 100) } else { (100, 150) };
    let web = ServiceSpec::http(lab, PORT, PORT, "nat");
    let spec = NodeSpec::new(0)
        .instance(InstanceSpec::new("a", &[lab.vip()], 51, pa).service(web.clone()))
        .instance(InstanceSpec::new("b", &[vip_b(lab)], 52, pb).service(web));
    NodeSpec { metrics_listen: Some(METRICS.into()), ..spec }
}

/// The value of the series written exactly as `series` on a metrics page.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `node`'s metrics page once `ok` holds for it (the page is sampled once a second).
fn metrics_page(node: &XvipNode, ok: impl Fn(&str) -> bool) -> String {
    let listen: SocketAddr = METRICS.parse().expect("address");
    let start = std::time::Instant::now();
    loop {
        let page = node.metrics(listen);
        if let Ok(page) = &page
            && ok(page)
        {
            return page.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}: metrics page never got there: {page:?}", node.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The role of instance `name` on `node`.
fn role(node: &XvipNode, name: &str) -> String {
    let status = node.status().expect("status");
    status.instances.iter().find(|i| i.name == name).map(|i| i.role.clone()).unwrap_or_default()
}

fn wait_instance(node: &XvipNode, name: &str, wanted: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    while role(node, name) != wanted {
        assert!(start.elapsed() < timeout, "{} instance {name} is not {wanted}:\n{}", node.name, node.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn transitions(node: &XvipNode, name: &str) -> u64 {
    let status = node.status().expect("status");
    status.instances.iter().find(|i| i.name == name).map_or(0, |i| i.transitions)
}

/// Waits until `vip` answers on the web port (health checks passed, MACs resolved).
fn wait_service(lab: &Lab, vip: Ipv4Addr, node: &XvipNode) {
    for _ in 0..200 {
        if lab.request_many(addr(vip), 1).is_ok_and(|t| t.successes() == 1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{vip} never answered:\n{}", node.log());
}

/// Two nodes active for one VIP each.
fn active_active(lab: &Lab) -> (XvipNode, XvipNode) {
    lab.start_backends(&[PORT]).expect("backends");
    let n1 = lab.start_xvip(lab.node(1), &spec(lab, true)).expect("node1");
    let n2 = lab.start_xvip(lab.node(2), &spec(lab, false)).expect("node2");
    wait_instance(&n1, "a", "active", Duration::from_secs(3));
    wait_instance(&n2, "b", "active", Duration::from_secs(3));
    wait_instance(&n1, "b", "backup", Duration::from_secs(3));
    wait_instance(&n2, "a", "backup", Duration::from_secs(3));
    wait_service(lab, lab.vip(), &n1);
    wait_service(lab, vip_b(lab), &n2);
    (n1, n2)
}

#[test]
fn each_node_is_active_for_one_vip_and_both_are_balanced_over_the_backends() {
    let lab = lab();
    let (n1, n2) = active_active(&lab);
    assert_eq!(arp_owners(&lab, lab.vip()), vec!["node1".to_string()]);
    assert_eq!(arp_owners(&lab, vip_b(&lab)), vec!["node2".to_string()]);
    lab.ping(lab.client(), lab.vip()).expect("ping VIP a");
    lab.ping(lab.client(), vip_b(&lab)).expect("ping VIP b");
    for vip in [lab.vip(), vip_b(&lab)] {
        let tally = lab.request_many(addr(vip), 60).expect("requests");
        assert_eq!(tally.failures, 0, "{vip}: {tally:?}");
        assert_eq!(tally.per_backend.len(), 3, "{vip} is balanced over every backend: {tally:?}");
    }
    // The top-level fields describe the first instance; `instances` has both.
    let status = n1.status().expect("status");
    assert_eq!((status.role.as_str(), status.vip.clone()), ("active", lab.vip().to_string()));
    let names: Vec<(String, Vec<String>)> =
        status.instances.iter().map(|i| (i.name.clone(), i.addresses.clone())).collect();
    assert_eq!(
        names,
        vec![("a".to_string(), vec![lab.vip().to_string()]), ("b".to_string(), vec![vip_b(&lab).to_string()])]
    );
    assert_eq!(n2.status().expect("status").role, "backup", "node2's first instance (a) is backup");

    // Metrics: each instance's own series, on a node active for one and backup for the other.
    let a_web = r#"xvip_service_packets_total{vrrp_instance="a",service="web"}"#;
    let page = metrics_page(&n1, |p| value(p, a_web).is_some_and(|v| v >= 60.0));
    for (series, expected) in [
        (r#"xvip_vrrp_role{vrrp_instance="a",role="active"}"#, 1.0),
        (r#"xvip_vrrp_role{vrrp_instance="b",role="backup"}"#, 1.0),
        (r#"xvip_service_packets_total{vrrp_instance="b",service="web"}"#, 0.0),
        (r#"xvip_instance_frames_total{vrrp_instance="b",reason="arp_replies"}"#, 0.0),
    ] {
        assert_eq!(value(&page, series), Some(expected), "{series} in\n{page}");
    }
    let info = format!(r#"xvip_vrrp_info{{vrrp_instance="b",vrid="52",vip="{}",interface="#, vip_b(&lab));
    assert!(page.contains(&info), "{info} in\n{page}");
    let arp_a = r#"xvip_instance_frames_total{vrrp_instance="a",reason="arp_replies"}"#;
    assert!(value(&page, arp_a).is_some_and(|v| v >= 1.0), "{arp_a} in\n{page}");
    let checked = format!(
        r#"xvip_health_checks_total{{vrrp_instance="b",service="web",backend="{}:{PORT}",result="passed"}}"#,
        lab.backends()[0].ip
    );
    assert!(value(&page, &checked).is_some_and(|v| v >= 1.0), "{checked}: b's checkers record under b\n{page}");
}

#[test]
fn killing_a_node_moves_only_its_vip() {
    let lab = lab();
    let (mut n1, n2) = active_active(&lab);
    let b_transitions = transitions(&n2, "b");
    // Traffic to b (node2's) runs through node1's death; a moves to node2.
    let probe = lab.probe(ProbeSpec::http(addr(vip_b(&lab)))).expect("probe b");
    std::thread::sleep(Duration::from_millis(300));
    n1.kill().expect("SIGKILL node1");
    wait_instance(&n2, "a", "active", Duration::from_secs(2));
    wait_service(&lab, lab.vip(), &n2);
    std::thread::sleep(Duration::from_millis(300));
    let report = probe.stop().expect("probe report");
    eprintln!("measured (VIP b while node1 dies): {}", report.summary());
    assert_eq!(report.failures, 0, "VIP b was disturbed: {}", report.summary());
    assert_eq!(transitions(&n2, "b"), b_transitions, "instance b changed role:\n{}", n2.log());
    assert_eq!(role(&n2, "b"), "active");
    assert_eq!(arp_owners(&lab, lab.vip()), vec!["node2".to_string()]);
    assert_eq!(arp_owners(&lab, vip_b(&lab)), vec!["node2".to_string()]);
    let tally = lab.request_many(addr(lab.vip()), 30).expect("requests to a");
    assert_eq!(tally.failures, 0, "{tally:?}");
}

#[test]
fn a_reload_adds_and_removes_an_instance_without_disturbing_the_other() {
    let lab = lab();
    lab.start_backends(&[PORT]).expect("backends");
    let web = ServiceSpec::http(&lab, PORT, PORT, "nat");
    let only_a = NodeSpec::new(0).instance(InstanceSpec::new("a", &[lab.vip()], 51, 150).service(web.clone()));
    let both = only_a.clone().instance(InstanceSpec::new("b", &[vip_b(&lab)], 52, 150).service(web));
    let node = lab.node(1).clone();
    let mut n1 = lab.start_xvip(&node, &only_a).expect("node1");
    wait_instance(&n1, "a", "active", Duration::from_secs(3));
    wait_service(&lab, lab.vip(), &n1);
    assert!(arp_owners(&lab, vip_b(&lab)).is_empty(), "nobody answers for b before it is configured");

    let a_transitions = transitions(&n1, "a");
    let probe = lab.probe(ProbeSpec::http(addr(lab.vip()))).expect("probe a");
    std::thread::sleep(Duration::from_millis(300));
    n1.reload(&lab, &node, &both).expect("reload adding b");
    wait_instance(&n1, "b", "active", Duration::from_secs(3));
    wait_service(&lab, vip_b(&lab), &n1);
    n1.reload(&lab, &node, &only_a).expect("reload removing b");
    let start = std::time::Instant::now();
    while !arp_owners(&lab, vip_b(&lab)).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(3), "b is still answered:\n{}", n1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = probe.stop().expect("probe report");
    eprintln!("measured (VIP a through two reloads): {}", report.summary());
    assert_eq!(report.failures, 0, "VIP a was disturbed: {}", report.summary());
    assert_eq!(transitions(&n1, "a"), a_transitions, "instance a changed role:\n{}", n1.log());
    let log = n1.log();
    assert!(log.contains("instances added: b") && log.contains("instances removed: b"), "{log}");
}
