//! `xvip trace` end to end in a netns lab: the decisions of requests through the VIP (NAT) name the service and the
//! backend that answered, with their NAT ports; a client's filter keeps other clients' flows out; the data plane's
//! switch is on exactly while a trace client is connected, and a crashed daemon's successor starts with it off.
//! The switch is read from the kernel: the `TRACE` map of the program attached to the node's interface. Needs
//! root.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;
use xvip::trace::{Decision, Event};
use xvip_tests::{
    ChildGuard, Lab, LabSpec,
    cmd::{exec_in, run_args},
    probe,
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
    let deadline = Instant::now() + Duration::from_secs(5);
    let (syns, replies) = loop {
        let decisions: Vec<_> = events(&mine)
            .into_iter()
            .filter_map(|e| match e {
                Event::Decision(d) => Some(*d),
                _ => None,
            })
            .collect();
        let syns: BTreeMap<String, _> = decisions
            .iter()
            .filter(|d| d.reason == "nat_forward_tx" && d.tcp_flags == ["SYN"])
            .map(|d| (d.from.clone(), d.clone()))
            .collect();
        let replies: Vec<_> = decisions.iter().filter(|d| d.reason == "nat_reply_tx").cloned().collect();
        // A SYN's record can reach the client before its reply's (they may come from different CPUs): wait for both.
        let answered = syns.values().all(|syn| replied(syn, &replies));
        if (syns.len() >= REQUESTS && answered) || Instant::now() > deadline {
            break (syns, replies);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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
