//! BPF_PROG_TEST_RUN fixtures for `xvip trace`'s records: nothing while the switch is off, exactly the expected
//! record for a matching frame while it is on, nothing for frames the filter leaves out, and the rate limit.
//! The expected records are built here from the fixture's addresses and the program's output frames. Needs root
//! (loads BPF programs); nothing is sent on any interface.
mod support;

use std::{net::Ipv4Addr, time::Instant};

use lb_common::{
    FORWARD_DSR, FORWARD_NAT, PROTO_TCP, Reason, TRACE_BURST_NS, TraceConfig, TraceRecord, group_seed, names,
};
use support::fixture::{self, BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, VRID, XDP_DROP, XDP_PASS, XDP_TX, lan, run};
use support::frames::{self, TCP_ACK, TCP_PSH, TCP_SYN};
use xvip::dataplane::{DataPlane, LoadOptions, ServiceSpec, Trace, TraceCounters};

/// DSR on port 80, NAT on port 8443 to 8080 of the same backends.
const DSR_PORT: u16 = 80;
const NAT_PORT: u16 = 8443;
const NAT_BACKEND_PORT: u16 = 8080;

fn service(port: u16, backend_port: u16, forwarding: u8) -> ServiceSpec {
    fixture::service(port, PROTO_TCP, forwarding, backend_port)
}

fn dataplane_with(options: LoadOptions) -> (DataPlane, Trace) {
    lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 2, ..options })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    dp.set_active(true).expect("set_active");
    dp.apply_service("web", &service(DSR_PORT, DSR_PORT, FORWARD_DSR)).expect("web");
    dp.apply_service("api", &service(NAT_PORT, NAT_BACKEND_PORT, FORWARD_NAT)).expect("api");
    let trace = dp.trace().expect("the trace handle");
    (dp, trace)
}

fn dataplane() -> (DataPlane, Trace) {
    dataplane_with(LoadOptions::default())
}

/// On for everything, at most `rate` records per second per CPU.
fn everything(rate: u64) -> TraceConfig {
    TraceConfig { interval_ns: 1_000_000_000 / rate, ..TraceConfig::default() }
}

fn client_tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, dport, flags, b"GET / HTTP/1.1\r\n\r\n")
}

fn ip_at(frame: &[u8], offset: usize) -> [u8; 4] {
    [frame[offset], frame[offset + 1], frame[offset + 2], frame[offset + 3]]
}

fn port_at(frame: &[u8], offset: usize) -> [u8; 2] {
    [frame[offset], frame[offset + 1]]
}

/// The record of a client's TCP frame to `VIP:dport`, before the parts that depend on the decision.
fn client_record(sport: u16, dport: u16, flags: u8, reason: Reason, action: u32) -> TraceRecord {
    TraceRecord {
        from: CLIENT.octets(),
        to: VIP.octets(),
        from_port: sport.to_be_bytes(),
        to_port: dport.to_be_bytes(),
        client: CLIENT.octets(),
        client_port: sport.to_be_bytes(),
        service_port: dport.to_be_bytes(),
        backend: [0; 4],
        backend_port: [0; 2],
        nat_port: [0; 2],
        ifindex: lan(),
        reason: reason as u8,
        action: action as u8,
        protocol: PROTO_TCP,
        tcp_flags: flags,
    }
}

#[test]
fn switched_off_the_program_emits_nothing() {
    let (mut dp, mut trace) = dataplane();
    assert_eq!(trace.config().expect("config").on, 0, "a freshly loaded program does not trace");
    run(&mut dp, &client_tcp(40000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    run(&mut dp, &client_tcp(40001, NAT_PORT, TCP_SYN), XDP_TX, Reason::NatForwardTx);
    run(&mut dp, &client_tcp(40002, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), Vec::new());
    assert_eq!(trace.counters().expect("counters"), TraceCounters::default());
}

#[test]
fn a_matching_dsr_packet_gives_one_record_naming_its_backend() {
    let (mut dp, mut trace) = dataplane();
    trace
        .set(Some(TraceConfig {
            client: CLIENT.octets(),
            client_mask: [255; 4],
            port: DSR_PORT.to_be_bytes(),
            ..everything(100)
        }))
        .expect("on");
    let out = run(&mut dp, &client_tcp(40000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let backend = BACKENDS.iter().find(|(_, mac)| out[0..6] == mac[..]).expect("sent to a backend's MAC").0;
    let expected = TraceRecord {
        backend: backend.octets(),
        backend_port: DSR_PORT.to_be_bytes(),
        ..client_record(40000, DSR_PORT, TCP_SYN, Reason::ForwardTx, XDP_TX)
    };
    assert_eq!(trace.read(), vec![expected]);
    assert_eq!(trace.counters().expect("counters"), TraceCounters { emitted: 1, suppressed: 0, ring_full: 0 });
    assert_eq!(trace.malformed(), 0);

    // The pinned flow's next packet: the same backend, from the connection table.
    run(&mut dp, &client_tcp(40000, DSR_PORT, TCP_ACK | TCP_PSH), XDP_TX, Reason::ForwardTx);
    let records = trace.read();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].backend, records[0].tcp_flags), (backend.octets(), TCP_ACK | TCP_PSH));
}

#[test]
fn nat_records_name_the_backend_and_nat_port_both_ways() {
    let (mut dp, mut trace) = dataplane();
    trace.set(Some(TraceConfig { client: CLIENT.octets(), client_mask: [255; 4], ..everything(100) })).expect("on");
    let out = run(&mut dp, &client_tcp(40000, NAT_PORT, TCP_SYN), XDP_TX, Reason::NatForwardTx);
    // The frame as sent: VIP:nport -> backend:8080.
    let (backend, nat_port) = (ip_at(&out, 30), port_at(&out, 34));
    assert!(BACKENDS.iter().any(|(a, _)| a.octets() == backend), "{backend:?}");
    assert_eq!(port_at(&out, 36), NAT_BACKEND_PORT.to_be_bytes());
    let forward = TraceRecord {
        backend,
        backend_port: NAT_BACKEND_PORT.to_be_bytes(),
        nat_port,
        ..client_record(40000, NAT_PORT, TCP_SYN, Reason::NatForwardTx, XDP_TX)
    };
    assert_eq!(trace.read(), vec![forward]);

    // The backend's SYN/ACK comes back to VIP:nport: the record names the flow's client and service port, which
    // the filter (client = CLIENT) matches although the frame came from the backend.
    let backend_mac = BACKENDS.iter().find(|(a, _)| a.octets() == backend).expect("backend").1;
    let backend_ip = Ipv4Addr::from(backend);
    let nport = u16::from_be_bytes(nat_port);
    let reply =
        frames::tcp_frame(NODE_MAC, backend_mac, backend_ip, VIP, NAT_BACKEND_PORT, nport, TCP_SYN | TCP_ACK, b"");
    run(&mut dp, &reply, XDP_TX, Reason::NatReplyTx);
    let expected = TraceRecord {
        from: backend,
        to: VIP.octets(),
        from_port: NAT_BACKEND_PORT.to_be_bytes(),
        to_port: nat_port,
        client: CLIENT.octets(),
        client_port: 40000u16.to_be_bytes(),
        service_port: NAT_PORT.to_be_bytes(),
        backend,
        backend_port: NAT_BACKEND_PORT.to_be_bytes(),
        nat_port,
        ifindex: lan(),
        reason: Reason::NatReplyTx as u8,
        action: XDP_TX as u8,
        protocol: PROTO_TCP,
        tcp_flags: TCP_SYN | TCP_ACK,
    };
    assert_eq!(trace.read(), vec![expected]);
}

#[test]
fn frames_the_filter_leaves_out_give_no_record() {
    let (mut dp, mut trace) = dataplane();
    let base = everything(100);
    let filters = [
        ("another client prefix", TraceConfig { client: [10, 99, 0, 0], client_mask: [255, 255, 0, 0], ..base }),
        ("another VIP", TraceConfig { vip: [10, 77, 0, 251], ..base }),
        ("another port", TraceConfig { port: 443u16.to_be_bytes(), ..base }),
        ("another protocol", TraceConfig { protocol: 17, ..base }),
    ];
    for (i, (what, filter)) in filters.into_iter().enumerate() {
        trace.set(Some(filter)).expect("on");
        let sport = 41000 + i as u16;
        run(&mut dp, &client_tcp(sport, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
        assert_eq!(trace.read(), Vec::new(), "{what}");
    }
    // Frames not addressed to a VIP are never traced, whatever the filter.
    trace.set(Some(base)).expect("on");
    let other = frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, Ipv4Addr::new(10, 77, 0, 1), 41100, 80, TCP_SYN, b"");
    run(&mut dp, &other, XDP_PASS, Reason::PassNotVip);
    assert_eq!(trace.read(), Vec::new(), "not to a VIP");
    // ... while a drop at the VIP is.
    run(&mut dp, &client_tcp(41101, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), vec![client_record(41101, 9999, TCP_ACK, Reason::DropNoService, XDP_DROP)]);
    assert_eq!(trace.counters().expect("counters").emitted, 1);

    // Off again: nothing.
    trace.set(None).expect("off");
    run(&mut dp, &client_tcp(41102, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), Vec::new(), "switched off");
}

#[test]
fn the_rate_limit_lets_a_burst_through_and_counts_the_rest() {
    let (mut dp, mut trace) = dataplane();
    // A pinned DSR flow: the program only rewrites MACs, so one BPF_PROG_TEST_RUN call can run it many times.
    run(&mut dp, &client_tcp(42000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let rate = 10;
    trace.set(Some(everything(rate))).expect("on");
    let ack = client_tcp(42000, DSR_PORT, TCP_ACK | TCP_PSH);
    let repeat = 1000;
    let started = Instant::now();
    let out = dp.test_run_with(names::PROGRAM, &ack, repeat, Some(lan())).expect("test_run");
    let elapsed_ns = started.elapsed().as_nanos() as u64;
    assert_eq!(out.action, XDP_TX);
    let counters = trace.counters().expect("counters");
    // One second's burst, plus whatever credit accrued while the runs took place (none, unless the machine
    // stalled for a tenth of a second).
    let burst = TRACE_BURST_NS * rate / 1_000_000_000;
    let most = burst + elapsed_ns * rate / 1_000_000_000;
    assert!((burst..=most).contains(&counters.emitted), "{counters:?}, {elapsed_ns} ns");
    assert_eq!(counters.emitted + counters.suppressed, u64::from(repeat), "{counters:?}");
    assert_eq!(counters.ring_full, 0);
    assert_eq!(trace.read().len() as u64, counters.emitted, "every emitted record arrives");

    // New settings start a new burst.
    trace.set(Some(everything(5))).expect("on");
    dp.test_run_with(names::PROGRAM, &ack, 100, Some(lan())).expect("test_run");
    assert!(trace.read().len() >= 5);
}

#[test]
fn without_the_hook_the_program_never_traces() {
    let (mut dp, mut trace) = dataplane_with(LoadOptions { trace_hook: false, ..LoadOptions::default() });
    trace.set(Some(everything(100))).expect("on");
    run(&mut dp, &client_tcp(43000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    assert_eq!(trace.read(), Vec::new());
    assert_eq!(trace.counters().expect("counters"), TraceCounters::default());
}

#[test]
fn dropping_the_handle_switches_tracing_off() {
    let (mut dp, mut trace) = dataplane();
    trace.set(Some(everything(100))).expect("on");
    assert_eq!(trace.config().expect("config").on, 1);
    drop(trace);
    let switch: aya::maps::Array<_, TraceConfig> =
        aya::maps::Array::try_from(dp.map(names::TRACE).expect("TRACE")).expect("an array");
    assert_eq!(switch.get(&0, 0).expect("TRACE[0]").on, 0, "off once the handle is gone");
    run(&mut dp, &client_tcp(44000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let state: aya::maps::PerCpuArray<_, lb_common::TraceState> =
        aya::maps::PerCpuArray::try_from(dp.map(names::TRACE_STATE).expect("TRACE_STATE")).expect("a per-CPU array");
    let emitted: u64 = state.get(&0, 0).expect("TRACE_STATE[0]").iter().map(|s| s.emitted).sum();
    assert_eq!(emitted, 0);
}
