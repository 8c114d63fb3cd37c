//! `xvip trace` end to end in a netns lab: the decisions of requests through the VIP (NAT) name the service and the
//! backend that answered, with their NAT ports, over IPv4 and over IPv6; a client's filter keeps other clients'
//! flows out, and a filter of one family the other family's; the data plane's switch is on exactly while a trace
//! client is connected, and a crashed daemon's successor starts with it off. The switch is read from the kernel:
//! the `TRACE` map of the program attached to the node's interface. Needs root.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;
use xvip::trace::{Decision, Event};
use xvip_tests::{
    ChildGuard, Lab, LabSpec,
    cmd::{self, exec_in, run_args},
    ipv6, probe,
    xvip::{NodeSpec, ServiceSpec, XvipNode, binary},
};

const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// Requests traced.
const REQUESTS: usize = 6;

fn lab() -> Lab {
    Lab::new(LabSpec::nat(2, 3)).expect("lab")
}

fn web() -> NodeSpec {
    NodeSpec::new(150)
}

/// node1, active, with a NAT web service (80 -> 8080 on every backend) answering through the VIP.
fn start(lab: &Lab) -> XvipNode {
    lab.start_backends(&[BACKEND_PORT]).expect("backends");
    let node = lab
        .start_xvip(lab.node(1), &web().service(ServiceSpec::http(lab, SERVICE_PORT, BACKEND_PORT, "nat")))
        .expect("node1");
    node.wait_role("active", Duration::from_secs(5)).expect("active");
    let deadline = Instant::now() + Duration::from_secs(15);
    while probe::http_get(&lab.client().ns, lab.vip_addr(SERVICE_PORT), "/", Duration::from_millis(500)).is_err() {
        assert!(Instant::now() < deadline, "the service never answered through the VIP:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

/// `xvip trace --json` against `node`, with `args`, in the node's namespace.
fn trace(lab: &Lab, node: &XvipNode, args: &[&str]) -> ChildGuard {
    let bin = binary().expect("xvip binary");
    let mut argv = vec![bin.to_string_lossy().into_owned(), "trace".into(), "--json".into()];
    argv.extend(["--socket".into(), node.socket.to_string_lossy().into_owned()]);
    argv.extend(args.iter().map(|a| (*a).to_string()));
    let mut child = lab.spawn(&node.ns, &argv).expect("xvip trace");
    child.wait_for_log("{\"tracing\":", Duration::from_secs(5)).expect("the daemon starts tracing");
    child
}

fn events(child: &ChildGuard) -> Vec<Event> {
    child.log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The `on` field of the `TRACE` entry of the program attached to `node`'s interface (from the kernel, with
/// `ip` and `bpftool`).
fn switch(lab: &Lab, node: &XvipNode) -> u32 {
    let iface = &lab.node(1).iface;
    let link: Value =
        serde_json::from_str(&exec_in(&node.ns, ["ip", "-d", "-j", "link", "show", "dev", iface]).expect("ip"))
            .expect("ip -j");
    let prog = xdp_prog_id(&link).unwrap_or_else(|| panic!("no XDP program on {iface}: {link}"));
    let info: Value =
        serde_json::from_str(&run_args("bpftool", ["-j", "prog", "show", "id", &prog.to_string()]).expect("bpftool"))
            .expect("bpftool -j");
    let maps = info["map_ids"].as_array().unwrap_or_else(|| panic!("program {prog} has no maps: {info}"));
    for id in maps.iter().filter_map(Value::as_u64) {
        let map: Value =
            serde_json::from_str(&run_args("bpftool", ["-j", "map", "show", "id", &id.to_string()]).expect("bpftool"))
                .expect("bpftool -j");
        if map["name"] != "TRACE" {
            continue;
        }
        let entry: Value = serde_json::from_str(
            &run_args("bpftool", ["-j", "map", "lookup", "id", &id.to_string(), "key", "0", "0", "0", "0"])
                .expect("bpftool lookup"),
        )
        .expect("bpftool -j");
        let bytes: Vec<u8> = entry["value"]
            .as_array()
            .expect("value bytes")
            .iter()
            .filter_map(|b| b.as_str().and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok()))
            .collect();
        return u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
    }
    panic!("program {prog} has no TRACE map");
}

/// The id of the XDP program in `ip -d -j link show` output.
fn xdp_prog_id(link: &Value) -> Option<u64> {
    fn find(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => m.get("prog").and_then(|p| p["id"].as_u64()).or_else(|| m.values().find_map(find)),
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&link[0]["xdp"])
}

/// Whether one of `replies` is the backend's answer to `syn`, through the NAT port of the SYN.
fn replied(syn: &Decision, replies: &[Decision]) -> bool {
    replies.iter().any(|r| r.client == syn.from && r.backend == syn.backend && r.nat_port == syn.nat_port)
}

fn decisions(child: &ChildGuard) -> Vec<Decision> {
    events(child)
        .into_iter()
        .filter_map(|e| match e {
            Event::Decision(d) => Some(*d),
            _ => None,
        })
        .collect()
}

/// The SYNs `child` traced through the NAT (by client `address:port`) and the backends' replies, once it has
/// `requests` SYNs, each with its reply (or after 5 s).
fn nat_syns_and_replies(child: &ChildGuard, requests: usize) -> (BTreeMap<String, Decision>, Vec<Decision>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let decisions = decisions(child);
        let syns: BTreeMap<String, _> = decisions
            .iter()
            .filter(|d| d.reason == "nat_forward_tx" && d.tcp_flags == ["SYN"])
            .map(|d| (d.from.clone(), d.clone()))
            .collect();
        let replies: Vec<_> = decisions.iter().filter(|d| d.reason == "nat_reply_tx").cloned().collect();
        // A SYN's record can reach the client before its reply's (they may come from different CPUs): wait for both.
        let answered = syns.values().all(|syn| replied(syn, &replies));
        if (syns.len() >= requests && answered) || Instant::now() > deadline {
            return (syns, replies);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_switch(lab: &Lab, node: &XvipNode, on: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while switch(lab, node) != on {
        assert!(Instant::now() < deadline, "the switch is not {on} after {within:?}:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn trace_names_the_service_and_backend_of_each_request_and_switches_off_when_the_last_client_leaves() {
    let lab = lab();
    let node = start(&lab);
    assert_eq!(switch(&lab, &node), 0, "off while nobody traces");

    let client = lab.client().ip.to_string();
    let mine = trace(&lab, &node, &["--client", &client, "--rate", "1000"]);
    let others = trace(&lab, &node, &["--client", "10.99.0.0/16"]);
    assert_eq!(switch(&lab, &node), 1, "on while clients trace");

    let tally = lab.request_many(lab.vip_addr(SERVICE_PORT), REQUESTS).expect("requests");
    assert_eq!(tally.successes(), REQUESTS, "{tally:?}");

    // Every request's SYN, translated to a backend: as many per backend as that backend answered.
    let names: BTreeMap<String, String> = lab.backends().iter().map(|b| (b.ip.to_string(), b.name.clone())).collect();
    let (syns, replies) = nat_syns_and_replies(&mine, REQUESTS);
    assert_eq!(syns.len(), REQUESTS, "one SYN per request:\n{}", mine.log());
    let mut traced: BTreeMap<String, usize> = BTreeMap::new();
    for d in syns.values() {
        assert_eq!((d.instance.as_deref(), d.service.as_deref()), (Some("default"), Some("web")), "{d:?}");
        assert_eq!(d.to, lab.vip_addr(SERVICE_PORT).to_string());
        assert!(d.from.starts_with(&format!("{client}:")), "{d:?}");
        assert!(d.nat_port.is_some(), "NAT names its port: {d:?}");
        let backend = d.backend.as_deref().expect("a backend");
        let (address, port) = backend.split_once(':').expect("address:port");
        assert_eq!(port, BACKEND_PORT.to_string());
        *traced.entry(names.get(address).cloned().unwrap_or_else(|| address.to_string())).or_default() += 1;
    }
    assert_eq!(traced, tally.per_backend, "the traced backends are the ones that answered");
    // The backends' answers come back to this client, through the NAT ports of its SYNs.
    for syn in syns.values() {
        assert!(replied(syn, &replies), "no reply traced for {syn:?}:\n{}", mine.log());
    }
    assert!(
        !events(&others).iter().any(|e| matches!(e, Event::Decision(_))),
        "a client whose filter matches nothing gets no decisions:\n{}",
        others.log()
    );

    // Leaving: interrupted, exit 0. The switch stays on for the other client, and goes off when it leaves too.
    let status = mine.stop().expect("stop");
    assert_eq!(status.code(), Some(0), "xvip trace exits 0 when interrupted");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(switch(&lab, &node), 1, "one client still traces");
    let status = others.stop().expect("stop");
    assert_eq!(status.code(), Some(0));
    wait_switch(&lab, &node, 0, Duration::from_secs(3));
    assert!(node.log().contains("trace: off (no client left)"), "{}", node.log());
}

#[test]
fn a_crashed_daemon_leaves_no_tracing_behind() {
    let lab = lab();
    let mut node = start(&lab);
    let mut client = trace(&lab, &node, &[]);
    assert_eq!(switch(&lab, &node), 1);
    node.kill().expect("SIGKILL");
    // The trace client sees the daemon go: exit 1.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = client.poll() {
            break status;
        }
        assert!(Instant::now() < deadline, "xvip trace still runs after the daemon died:\n{}", client.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{}", client.log());
    assert!(client.log().contains("the daemon closed the trace"), "{}", client.log());
    // The kernel freed the old program and its maps with the process; the next daemon's switch is off.
    let node = lab
        .start_xvip(lab.node(1), &web().service(ServiceSpec::http(&lab, SERVICE_PORT, BACKEND_PORT, "nat")))
        .expect("node1 again");
    assert_eq!(switch(&lab, &node), 0, "a restarted daemon does not trace");
}

#[test]
fn trace_without_a_daemon_exits_1_and_says_why() {
    let out = std::process::Command::new(binary().expect("xvip binary"))
        .args(["trace", "--socket", "/nonexistent/xvip.sock"])
        .output()
        .expect("run xvip trace");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no xvip daemon answers on /nonexistent/xvip.sock"), "{text}");
}

/// The IPv6 VIP of the dual-stack lab; the client is `fd00:77::10`, backend N `fd00:77::2N`.
fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

/// The NAT lab with IPv6 on the client, node1 (forwarding on, for the FIB lookups of replies) and the backends,
/// which serve both families.
fn dual_stack_lab() -> Lab {
    let lab = lab();
    ipv6::enable(lab.client(), 0x10).expect("IPv6 on the client");
    ipv6::enable(lab.node(1), 1).expect("IPv6 on node1");
    cmd::exec_in(&lab.node(1).ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]).expect("forwarding");
    for n in 1..=lab.backends().len() {
        ipv6::enable(lab.backend(n), 0x20 + n as u16).expect("IPv6 on a backend");
        lab.start_backend_listening(n, &[BACKEND_PORT], true).expect("lab-backend");
    }
    lab
}

/// node1, active, with the IPv4 VIP and `vip6()`, and the NAT web service over the IPv4 backends and the IPv6
/// ones, answering through both VIPs.
fn start_dual_stack(lab: &Lab) -> XvipNode {
    let mut service = ServiceSpec::http(lab, SERVICE_PORT, BACKEND_PORT, "nat");
    let backends6 = (1..=lab.backends().len()).map(|n| (IpAddr::V6(ipv6::address(0x20 + n as u16)), BACKEND_PORT));
    service.backends.extend(backends6);
    let node = lab.start_xvip(lab.node(1), &NodeSpec { vip6: vec![vip6()], ..web().service(service) }).expect("node1");
    node.wait_role("active", Duration::from_secs(5)).expect("active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("every backend healthy");
    for target in [lab.vip_addr(SERVICE_PORT), SocketAddr::new(vip6().into(), SERVICE_PORT)] {
        let deadline = Instant::now() + Duration::from_secs(15);
        while probe::http_get(&lab.client().ns, target, "/", Duration::from_millis(500)).is_err() {
            assert!(Instant::now() < deadline, "the service never answered through {target}:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    node
}

/// Whether `endpoint` (`address:port`, `[address]:port` or an address) is IPv6.
fn is_ipv6(endpoint: &str) -> bool {
    endpoint.starts_with('[') || endpoint.parse::<Ipv6Addr>().is_ok()
}

#[test]
fn ipv6_requests_are_traced_with_their_backends_and_replies_and_each_family_keeps_to_its_filter() {
    let lab = dual_stack_lab();
    let node = start_dual_stack(&lab);
    let v6 = trace(&lab, &node, &["--client", "fd00:77::/64", "--rate", "1000"]);
    let v6_vip = trace(&lab, &node, &["--vip", &vip6().to_string(), "--rate", "1000"]);
    let v4 = trace(&lab, &node, &["--client", &lab.client().ip.to_string(), "--rate", "1000"]);

    let target6 = SocketAddr::new(vip6().into(), SERVICE_PORT);
    let tally6 = lab.request_many(target6, REQUESTS).expect("IPv6 requests");
    assert_eq!(tally6.successes(), REQUESTS, "{tally6:?}");
    let tally4 = lab.request_many(lab.vip_addr(SERVICE_PORT), REQUESTS).expect("IPv4 requests");
    assert_eq!(tally4.successes(), REQUESTS, "{tally4:?}");

    // Every IPv6 request's SYN, translated to an IPv6 backend: as many per backend as that backend answered, each
    // with the backend's reply traced back to its client.
    let names: BTreeMap<String, String> = (1..=lab.backends().len())
        .map(|n| (ipv6::address(0x20 + n as u16).to_string(), lab.backend(n).name.clone()))
        .collect();
    let (syns, replies) = nat_syns_and_replies(&v6, REQUESTS);
    assert_eq!(syns.len(), REQUESTS, "one SYN per IPv6 request:\n{}", v6.log());
    let mut traced: BTreeMap<String, usize> = BTreeMap::new();
    for d in syns.values() {
        assert_eq!((d.instance.as_deref(), d.service.as_deref()), (Some("default"), Some("web")), "{d:?}");
        assert_eq!((d.to.as_str(), d.vip.as_str()), (target6.to_string().as_str(), target6.to_string().as_str()));
        assert!(d.from.starts_with("[fd00:77::10]:"), "{d:?}");
        assert!(d.nat_port.is_some(), "NAT names its port: {d:?}");
        let backend: SocketAddr = d.backend.as_deref().expect("a backend").parse().expect("[address]:port");
        assert_eq!(backend.port(), BACKEND_PORT);
        let address = backend.ip().to_string();
        *traced.entry(names.get(&address).cloned().unwrap_or(address)).or_default() += 1;
        assert!(replied(d, &replies), "no reply traced for {d:?}:\n{}", v6.log());
    }
    assert_eq!(traced, tally6.per_backend, "the traced backends are the ones that answered");

    // The IPv4 client's requests: traced for the IPv4 filter, and for neither IPv6 one.
    let (syns4, _) = nat_syns_and_replies(&v4, REQUESTS);
    assert_eq!(syns4.len(), REQUESTS, "one SYN per IPv4 request:\n{}", v4.log());
    let six = decisions(&v6_vip);
    assert!(
        six.iter().any(|d| d.reason == "nat_forward_tx"),
        "the VIP filter sees the IPv6 requests:\n{}",
        v6_vip.log()
    );
    for (name, child, ipv6) in [("IPv6 client", &v6, true), ("IPv6 VIP", &v6_vip, true), ("IPv4 client", &v4, false)] {
        let stray: Vec<_> = decisions(child).into_iter().filter(|d| is_ipv6(&d.from) != ipv6).collect();
        assert!(stray.is_empty(), "the {name} filter got the other family's decisions: {stray:?}");
    }
}

#[test]
fn bad_filters_are_usage_errors() {
    for (args, says) in [
        (["--client", "2001:db8::1/64"], "host bits set (the prefix is 2001:db8::/64)"),
        (["--client", "2001:db8::/129"], "a prefix length is 0..=128"),
        (["--vip", "2001:db8::/64"], "--vip"),
    ] {
        let out = std::process::Command::new(binary().expect("xvip binary"))
            .arg("trace")
            .args(args)
            .output()
            .expect("run xvip trace");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
    // A client and a VIP of different families match nothing: refused before any daemon is asked.
    let out = std::process::Command::new(binary().expect("xvip binary"))
        .args(["trace", "--client", "2001:db8::/64", "--vip", "10.0.0.250", "--socket", "/nonexistent/xvip.sock"])
        .output()
        .expect("run xvip trace");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("different address families"), "{text}");
}
