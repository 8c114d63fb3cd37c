//! BPF_PROG_TEST_RUN fixtures for `xvip trace`'s records: nothing while the switch is off, exactly the expected
//! record for a matching frame while it is on (IPv4 and IPv6: DSR, NAT both ways, ICMPv6 errors through the NAT),
//! nothing for frames the filter leaves out (a filter of one family leaves out the other), and the rate limit.
//! The expected records are built here from the fixture's addresses and the program's output frames. Needs root
//! (loads BPF programs); nothing is sent on any interface.
mod support;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use lb_common::{
    FAMILY_IPV6, FORWARD_DSR, FORWARD_NAT, PROTO_TCP, Reason, TRACE_BURST_NS, TRACE_IPV4, TRACE_IPV6, TraceConfig,
    TraceRecord, group_seed, group_seed6, names, router_slot, trace_halves, trace_halves4,
};
use support::fixture::{self, BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, VRID, XDP_DROP, XDP_PASS, XDP_TX, lan, run};
use support::frames::{self, ETH_IPV6, TCP_ACK, TCP_PSH, TCP_SYN};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec, Trace, TraceCounters, Vip6Spec};

/// DSR on port 80, NAT on port 8443 to 8080 of the same backends.
const DSR_PORT: u16 = 80;
const NAT_PORT: u16 = 8443;
const NAT_BACKEND_PORT: u16 = 8080;

fn service(port: u16, backend_port: u16, forwarding: u8) -> ServiceSpec {
    fixture::service(port, PROTO_TCP, forwarding, backend_port)
}

fn dataplane_with(options: LoadOptions) -> (DataPlane, Trace) {
    lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 4, ..options })
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

/// An address as the switch holds it.
fn words4(a: Ipv4Addr) -> [u64; 2] {
    let (high, low) = trace_halves4(a.octets());
    [high, low]
}

fn words6(a: Ipv6Addr) -> [u64; 2] {
    let (high, low) = trace_halves(&a.octets());
    [high, low]
}

/// Only frames of the client `CLIENT`, at most 100 records per second per CPU.
fn client_only() -> TraceConfig {
    TraceConfig { client: words4(CLIENT), client_mask: [u64::MAX; 2], family: TRACE_IPV4, ..everything(100) }
}

fn client_tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, dport, flags, b"GET / HTTP/1.1\r\n\r\n")
}

/// The IPv4 address at `offset` in `frame`, in a record's 16-byte form.
fn ip_at(frame: &[u8], offset: usize) -> [u8; 16] {
    TraceRecord::ipv4([frame[offset], frame[offset + 1], frame[offset + 2], frame[offset + 3]])
}

fn port_at(frame: &[u8], offset: usize) -> [u8; 2] {
    [frame[offset], frame[offset + 1]]
}

/// The record of a client's TCP frame to `VIP:dport`, before the parts that depend on the decision.
fn client_record(sport: u16, dport: u16, flags: u8, reason: Reason, action: u32) -> TraceRecord {
    TraceRecord {
        from: TraceRecord::ipv4(CLIENT.octets()),
        to: TraceRecord::ipv4(VIP.octets()),
        from_port: sport.to_be_bytes(),
        to_port: dport.to_be_bytes(),
        client: TraceRecord::ipv4(CLIENT.octets()),
        client_port: sport.to_be_bytes(),
        service_port: dport.to_be_bytes(),
        backend: [0; 16],
        backend_port: [0; 2],
        nat_port: [0; 2],
        ifindex: lan(),
        reason: reason as u8,
        action: action as u8,
        protocol: PROTO_TCP,
        tcp_flags: flags,
        family: TRACE_IPV4,
        _pad: [0; 3],
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
    trace.set(Some(TraceConfig { port: DSR_PORT.to_be_bytes(), ..client_only() })).expect("on");
    let out = run(&mut dp, &client_tcp(40000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let backend = BACKENDS.iter().find(|(_, mac)| out[0..6] == mac[..]).expect("sent to a backend's MAC").0;
    let expected = TraceRecord {
        backend: TraceRecord::ipv4(backend.octets()),
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
    assert_eq!((records[0].backend, records[0].tcp_flags), (TraceRecord::ipv4(backend.octets()), TCP_ACK | TCP_PSH));
}

#[test]
fn nat_records_name_the_backend_and_nat_port_both_ways() {
    let (mut dp, mut trace) = dataplane();
    trace.set(Some(client_only())).expect("on");
    let out = run(&mut dp, &client_tcp(40000, NAT_PORT, TCP_SYN), XDP_TX, Reason::NatForwardTx);
    // The frame as sent: VIP:nport -> backend:8080.
    let (backend, nat_port) = (ip_at(&out, 30), port_at(&out, 34));
    assert!(BACKENDS.iter().any(|(a, _)| TraceRecord::ipv4(a.octets()) == backend), "{backend:?}");
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
    let (backend_ip, backend_mac) =
        *BACKENDS.iter().find(|(a, _)| TraceRecord::ipv4(a.octets()) == backend).expect("backend");
    let nport = u16::from_be_bytes(nat_port);
    let reply =
        frames::tcp_frame(NODE_MAC, backend_mac, backend_ip, VIP, NAT_BACKEND_PORT, nport, TCP_SYN | TCP_ACK, b"");
    run(&mut dp, &reply, XDP_TX, Reason::NatReplyTx);
    let expected = TraceRecord {
        from: backend,
        from_port: NAT_BACKEND_PORT.to_be_bytes(),
        to_port: nat_port,
        backend,
        backend_port: NAT_BACKEND_PORT.to_be_bytes(),
        nat_port,
        tcp_flags: TCP_SYN | TCP_ACK,
        ..client_record(40000, NAT_PORT, TCP_SYN, Reason::NatReplyTx, XDP_TX)
    };
    assert_eq!(trace.read(), vec![expected]);
}

#[test]
fn frames_the_filter_leaves_out_give_no_record() {
    let (mut dp, mut trace) = dataplane();
    let base = everything(100);
    let filters = [
        (
            "another client prefix",
            TraceConfig {
                client: words4(Ipv4Addr::new(10, 99, 0, 0)),
                client_mask: words4(Ipv4Addr::new(255, 255, 0, 0)),
                family: TRACE_IPV4,
                ..base
            },
        ),
        ("another VIP", TraceConfig { vip: words4(Ipv4Addr::new(10, 77, 0, 251)), family: TRACE_IPV4, ..base }),
        ("IPv6 only", TraceConfig { family: TRACE_IPV6, ..base }),
        ("an IPv6 VIP", TraceConfig { vip: words6(VIP6), family: TRACE_IPV6, ..base }),
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

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);
const ROUTER6: u32 = router_slot(0, FAMILY_IPV6);
const BACKENDS6: [(Ipv6Addr, [u8; 6]); 3] = [
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x21), [0x02, 0, 0, 0, 0, 0x31]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x22), [0x02, 0, 0, 0, 0, 0x32]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x23), [0x02, 0, 0, 0, 0, 0x33]),
];
/// A router on `lan` that sends an ICMPv6 error.
const ROUTER6_ADDRESS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0xfe);
const ROUTER6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn service6(port: u16, backend_port: u16, forwarding: u8) -> ServiceSpec {
    let backends = BACKENDS6
        .iter()
        .map(|(address, mac)| BackendSpec {
            address: (*address).into(),
            port: backend_port,
            weight: 1,
            healthy: true,
            mac: Some(*mac),
            ifindex: 0,
        })
        .collect();
    ServiceSpec { addresses: vec![VIP6.into()], port, protocol: PROTO_TCP, forwarding, backends }
}

/// Both families: the IPv4 services of [`dataplane`], and the same on the IPv6 VIP to the IPv6 backends (DSR on
/// port 80, NAT on port 8443 to 8080), with the node's IPv6 address, forwarding and neighbours on `lan` (the NAT
/// replies' FIB lookups).
fn dual_stack() -> (DataPlane, Trace) {
    let (mut dp, trace) = dataplane();
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    fixture::ip(&format!("addr replace {NODE6}/64 dev lan nodad"));
    fixture::ip(&format!("neigh replace {CLIENT6} lladdr {} dev lan nud permanent", mac(CLIENT_MAC)));
    for (address, m) in BACKENDS6 {
        fixture::ip(&format!("neigh replace {address} lladdr {} dev lan nud permanent", mac(m)));
    }
    for iface in ["all", "lan"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"), "1").expect("enabling forwarding");
    }
    let seed = group_seed6(VIP6.octets(), VRID);
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed, interface: None }]).expect("set_vips6");
    dp.set_router_active(ROUTER6, true).expect("set_router_active");
    dp.apply_service("web6", &service6(DSR_PORT, DSR_PORT, FORWARD_DSR)).expect("web6");
    dp.apply_service("api6", &service6(NAT_PORT, NAT_BACKEND_PORT, FORWARD_NAT)).expect("api6");
    (dp, trace)
}

fn tcp6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    (src, sport): (Ipv6Addr, u16),
    (dst, dport): (Ipv6Addr, u16),
    flags: u8,
) -> Vec<u8> {
    let mut f = frames::eth(dst_mac, src_mac, ETH_IPV6);
    f.extend(frames::ipv6(src, dst, PROTO_TCP, 64, &frames::tcp6(src, dst, sport, dport, flags, b"")));
    f
}

fn client6_tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp6_frame(NODE_MAC, CLIENT_MAC, (CLIENT6, sport), (VIP6, dport), flags)
}

fn ip6_at(frame: &[u8], offset: usize) -> [u8; 16] {
    frame[offset..offset + 16].try_into().expect("16 bytes")
}

/// The record of the IPv6 client's TCP frame to `VIP6:dport`, before the parts that depend on the decision.
fn client6_record(sport: u16, dport: u16, flags: u8, reason: Reason, action: u32) -> TraceRecord {
    TraceRecord {
        from: CLIENT6.octets(),
        to: VIP6.octets(),
        client: CLIENT6.octets(),
        family: TRACE_IPV6,
        ..client_record(sport, dport, flags, reason, action)
    }
}

/// Only frames of the IPv6 client `CLIENT6` (a /128).
fn client6_only() -> TraceConfig {
    TraceConfig { client: words6(CLIENT6), client_mask: [u64::MAX; 2], family: TRACE_IPV6, ..everything(100) }
}

#[test]
fn an_ipv6_dsr_packet_gives_one_record_naming_its_pinned_backend() {
    let (mut dp, mut trace) = dual_stack();
    trace.set(Some(client6_only())).expect("on");
    let out = run(&mut dp, &client6_tcp(40000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let backend = BACKENDS6.iter().find(|(_, mac)| out[0..6] == mac[..]).expect("sent to a backend's MAC").0;
    let expected = TraceRecord {
        backend: backend.octets(),
        backend_port: DSR_PORT.to_be_bytes(),
        ..client6_record(40000, DSR_PORT, TCP_SYN, Reason::ForwardTx, XDP_TX)
    };
    assert_eq!(trace.read(), vec![expected]);
    assert_eq!(trace.malformed(), 0);
    // The pinned flow's next packet: the same backend, from CONNTRACK6.
    run(&mut dp, &client6_tcp(40000, DSR_PORT, TCP_ACK | TCP_PSH), XDP_TX, Reason::ForwardTx);
    let records = trace.read();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].backend, records[0].tcp_flags), (backend.octets(), TCP_ACK | TCP_PSH));
    // The IPv4 client's packets: another family, no record.
    run(&mut dp, &client_tcp(40000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    assert_eq!(trace.read(), Vec::new(), "an IPv6 filter leaves IPv4 out");
}

#[test]
fn ipv6_nat_records_name_the_backend_and_nat_port_both_ways() {
    let (mut dp, mut trace) = dual_stack();
    trace.set(Some(client6_only())).expect("on");
    // Through the tail call to `xvip_nat6`, which traces the frame itself.
    let out = run(&mut dp, &client6_tcp(40000, NAT_PORT, TCP_SYN), XDP_TX, Reason::NatForwardTx);
    // The frame as sent: [VIP6]:nport -> [backend]:8080.
    assert_eq!(ip6_at(&out, 22), VIP6.octets());
    let (backend, nat_port) = (ip6_at(&out, 38), port_at(&out, 54));
    assert_eq!(port_at(&out, 56), NAT_BACKEND_PORT.to_be_bytes());
    let (backend_ip, backend_mac) = *BACKENDS6.iter().find(|(a, _)| a.octets() == backend).expect("a backend");
    let forward = TraceRecord {
        backend,
        backend_port: NAT_BACKEND_PORT.to_be_bytes(),
        nat_port,
        ..client6_record(40000, NAT_PORT, TCP_SYN, Reason::NatForwardTx, XDP_TX)
    };
    assert_eq!(trace.read(), vec![forward]);

    // The backend's SYN/ACK to [VIP6]:nport: the record names the flow's client and service port, which the
    // filter (client = CLIENT6) matches although the frame came from the backend.
    let nport = u16::from_be_bytes(nat_port);
    let reply = tcp6_frame(NODE_MAC, backend_mac, (backend_ip, NAT_BACKEND_PORT), (VIP6, nport), TCP_SYN | TCP_ACK);
    let to_client = run(&mut dp, &reply, XDP_TX, Reason::NatReplyTx);
    let expected = TraceRecord {
        from: backend,
        from_port: NAT_BACKEND_PORT.to_be_bytes(),
        to_port: nat_port,
        backend,
        backend_port: NAT_BACKEND_PORT.to_be_bytes(),
        nat_port,
        tcp_flags: TCP_SYN | TCP_ACK,
        ..client6_record(40000, NAT_PORT, TCP_SYN, Reason::NatReplyTx, XDP_TX)
    };
    assert_eq!(trace.read(), vec![expected]);

    // An ICMPv6 error about the reply (a router's Packet Too Big), through `xvip_nat6_icmp`: traced too, as the
    // router's ICMPv6 to the VIP (its client is the router, so the switch takes every client here).
    trace.set(Some(TraceConfig { family: TRACE_IPV6, ..everything(100) })).expect("on");
    let mut message = vec![2, 0, 0, 0, 0, 0, 5, 0];
    message.extend_from_slice(&to_client[14..]);
    let mut error = frames::eth(NODE_MAC, ROUTER6_MAC, ETH_IPV6);
    error.extend(frames::ipv6(ROUTER6_ADDRESS, VIP6, 58, 64, &frames::icmp6(ROUTER6_ADDRESS, VIP6, message)));
    run(&mut dp, &error, XDP_TX, Reason::NatIcmpToBackend);
    let records = trace.read();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = records[0];
    assert_eq!((r.from, r.to, r.client), (ROUTER6_ADDRESS.octets(), VIP6.octets(), ROUTER6_ADDRESS.octets()));
    assert_eq!((r.protocol, r.reason, r.action, r.family), (58, Reason::NatIcmpToBackend as u8, XDP_TX as u8, 6));
}

#[test]
fn a_filter_of_one_family_leaves_out_the_others_frames_and_none_takes_both() {
    let (mut dp, mut trace) = dual_stack();
    // IPv4 only (every IPv4 client: 0.0.0.0/0): the IPv6 client's packets give no record, the IPv4 one's do.
    trace.set(Some(TraceConfig { family: TRACE_IPV4, ..everything(100) })).expect("on");
    run(&mut dp, &client6_tcp(45000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    run(&mut dp, &client6_tcp(45001, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), Vec::new(), "IPv4 only");
    run(&mut dp, &client_tcp(45002, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), vec![client_record(45002, 9999, TCP_ACK, Reason::DropNoService, XDP_DROP)]);
    // An IPv6 VIP: nothing of IPv4.
    trace.set(Some(TraceConfig { vip: words6(VIP6), family: TRACE_IPV6, ..everything(100) })).expect("on");
    run(&mut dp, &client_tcp(45003, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), Vec::new(), "IPv6 only");
    run(&mut dp, &client6_tcp(45004, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    assert_eq!(trace.read(), vec![client6_record(45004, 9999, TCP_ACK, Reason::DropNoService, XDP_DROP)]);
    // No filter: both.
    trace.set(Some(everything(100))).expect("on");
    run(&mut dp, &client_tcp(45005, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    run(&mut dp, &client6_tcp(45006, 9999, TCP_ACK), XDP_DROP, Reason::DropNoService);
    let families: Vec<u8> = trace.read().iter().map(|r| r.family).collect();
    assert_eq!(families, vec![TRACE_IPV4, TRACE_IPV6]);
    // A Neighbor Solicitation to the VIP's solicited-node group is not addressed to the VIP (as ARP): not traced.
    let (group, group_mac) = frames::solicited_node(VIP6);
    let mut ns = frames::eth(group_mac, CLIENT_MAC, ETH_IPV6);
    let message = frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC));
    ns.extend(frames::ipv6(CLIENT6, group, 58, 255, &frames::icmp6(CLIENT6, group, message)));
    run(&mut dp, &ns, XDP_TX, Reason::NaReply);
    assert_eq!(trace.read(), Vec::new(), "a solicitation to a multicast group");
    assert_eq!(trace.malformed(), 0);
}

#[test]
fn the_rate_limit_holds_ipv6_records_too() {
    let (mut dp, mut trace) = dual_stack();
    // A pinned IPv6 DSR flow: only the MACs change, so one BPF_PROG_TEST_RUN call runs it many times.
    run(&mut dp, &client6_tcp(46000, DSR_PORT, TCP_SYN), XDP_TX, Reason::ForwardTx);
    let rate = 10;
    trace.set(Some(TraceConfig { family: TRACE_IPV6, ..everything(rate) })).expect("on");
    let repeat = 1000;
    let started = Instant::now();
    let ack = client6_tcp(46000, DSR_PORT, TCP_ACK | TCP_PSH);
    let out = dp.test_run_with(names::PROGRAM, &ack, repeat, Some(lan())).expect("test_run");
    let elapsed_ns = started.elapsed().as_nanos() as u64;
    assert_eq!(out.action, XDP_TX);
    let counters = trace.counters().expect("counters");
    let burst = TRACE_BURST_NS * rate / 1_000_000_000;
    let most = burst + elapsed_ns * rate / 1_000_000_000;
    assert!((burst..=most).contains(&counters.emitted), "{counters:?}, {elapsed_ns} ns");
    assert_eq!(counters.emitted + counters.suppressed, u64::from(repeat), "{counters:?}");
    let records = trace.read();
    assert_eq!(records.len() as u64, counters.emitted, "every emitted record arrives");
    assert!(records.iter().all(|r| r.family == TRACE_IPV6 && r.from == CLIENT6.octets()), "{records:?}");
}
