use super::*;

fn prefix(s: &str) -> Prefix {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn filter(client: Option<&str>, vip: Option<&str>, port: Option<u16>, rate: u32) -> Filter {
    Filter { client: client.map(prefix), vip: vip.map(|v| v.parse().expect("an address")), port, rate }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    TraceRecord::ipv4(a)
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("an IPv6 address").octets()
}

/// A client's SYN to 10.0.0.250:443, sent by NAT to 10.0.0.11:6443 from port 50000.
fn nat_forward() -> TraceRecord {
    TraceRecord {
        from: v4([192, 0, 2, 7]),
        to: v4([10, 0, 0, 250]),
        from_port: 40000u16.to_be_bytes(),
        to_port: 443u16.to_be_bytes(),
        client: v4([192, 0, 2, 7]),
        client_port: 40000u16.to_be_bytes(),
        service_port: 443u16.to_be_bytes(),
        backend: v4([10, 0, 0, 11]),
        backend_port: 6443u16.to_be_bytes(),
        nat_port: 50000u16.to_be_bytes(),
        ifindex: 1,
        reason: Reason::NatForwardTx as u8,
        action: 3,
        protocol: PROTO_TCP,
        tcp_flags: 0x02,
        family: TRACE_IPV4,
        _pad: [0; 3],
    }
}

/// The backend's SYN/ACK to that flow.
fn nat_reply() -> TraceRecord {
    TraceRecord {
        from: v4([10, 0, 0, 11]),
        from_port: 6443u16.to_be_bytes(),
        to_port: 50000u16.to_be_bytes(),
        reason: Reason::NatReplyTx as u8,
        tcp_flags: 0x12,
        ..nat_forward()
    }
}

/// The same flow over IPv6: 2001:db8:7::7 to [2001:db8::250]:443, by NAT to [2001:db8::11]:6443.
fn nat6_forward() -> TraceRecord {
    TraceRecord {
        from: v6("2001:db8:7::7"),
        to: v6("2001:db8::250"),
        client: v6("2001:db8:7::7"),
        backend: v6("2001:db8::11"),
        family: TRACE_IPV6,
        ..nat_forward()
    }
}

fn nat6_reply() -> TraceRecord {
    let f = nat6_forward();
    TraceRecord {
        from: v6("2001:db8::11"),
        to: f.to,
        client: f.client,
        backend: f.backend,
        family: f.family,
        ..nat_reply()
    }
}

fn names() -> Names {
    let mut map = HashMap::new();
    let api = ("api".to_string(), "kube-apiserver".to_string());
    map.insert((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 250)), 443, PROTO_TCP), api.clone());
    map.insert(("2001:db8::250".parse().expect("address"), 443, PROTO_TCP), api);
    Names(map)
}

#[test]
fn prefixes_parse_and_print_and_refuse_host_bits() {
    assert_eq!(prefix("10.0.0.7"), Prefix { address: Ipv4Addr::new(10, 0, 0, 7).into(), len: 32 });
    assert_eq!(prefix("10.1.0.0/16").to_string(), "10.1.0.0/16");
    assert_eq!(prefix("0.0.0.0/0").to_string(), "0.0.0.0/0");
    assert!(prefix("10.1.0.0/16").contains(Ipv4Addr::new(10, 1, 200, 3).into()));
    assert!(!prefix("10.1.0.0/16").contains(Ipv4Addr::new(10, 2, 0, 3).into()));
    assert!(prefix("0.0.0.0/0").contains(Ipv4Addr::new(203, 0, 113, 9).into()));
    let e = "10.1.2.3/16".parse::<Prefix>().expect_err("host bits");
    assert!(e.contains("10.1.0.0/16"), "{e}");
    assert!("10.1.0.0/33".parse::<Prefix>().is_err());
    assert!("example.com".parse::<Prefix>().is_err());
    let json = serde_json::to_string(&prefix("10.1.0.0/16")).expect("json");
    assert_eq!(json, "\"10.1.0.0/16\"");
    assert!(serde_json::from_str::<Prefix>("\"10.1.2.3/16\"").is_err(), "checked when read from a client too");
}

#[test]
fn ipv6_prefixes_parse_print_contain_and_refuse_host_bits() {
    let p = prefix("2001:db8:7::/48");
    assert_eq!(p, Prefix { address: "2001:db8:7::".parse().expect("address"), len: 48 });
    assert_eq!(p.to_string(), "2001:db8:7::/48");
    assert_eq!(prefix("2001:db8::7").to_string(), "2001:db8::7", "a host: no length");
    assert_eq!(prefix("2001:db8::7").len, 128);
    assert_eq!(prefix("::/0").to_string(), "::/0");
    assert!(p.contains("2001:db8:7:ffff::1".parse().expect("address")));
    assert!(!p.contains("2001:db8:8::1".parse().expect("address")));
    assert!(prefix("::/0").contains("fd00::1".parse().expect("address")));
    // A prefix of one family contains no address of the other: ::/0 is not "everything".
    assert!(!prefix("::/0").contains(Ipv4Addr::new(10, 0, 0, 1).into()));
    assert!(!prefix("0.0.0.0/0").contains("2001:db8::1".parse().expect("address")));
    let e = "2001:db8::1/64".parse::<Prefix>().expect_err("host bits");
    assert!(e.contains("2001:db8::/64"), "{e}");
    let e = "2001:db8::/129".parse::<Prefix>().expect_err("too long");
    assert!(e.contains("0..=128"), "{e}");
    assert!("10.0.0.0/33".parse::<Prefix>().expect_err("too long").contains("0..=32"));
    assert!("2001:db8::g".parse::<Prefix>().expect_err("not an address").contains("not an IPv4 or IPv6"));
    let json = serde_json::to_string(&p).expect("json");
    assert_eq!(json, "\"2001:db8:7::/48\"");
    assert_eq!(serde_json::from_str::<Prefix>(&json).expect("back"), p);
}

#[test]
fn a_filter_with_a_client_and_a_vip_of_different_families_is_refused() {
    let f = filter(Some("2001:db8::/64"), Some("10.0.0.250"), None, 10);
    let e = f.check().expect_err("mixed families");
    assert!(e.contains("different address families"), "{e}");
    let (tx, mut rx) = mpsc::channel(4);
    let mut clients = Clients::default();
    clients.add(Subscription { filter: f, events: tx });
    assert!(clients.is_empty());
    assert!(matches!(rx.try_recv(), Ok(Event::Error(e)) if e.contains("different address families")));
    assert!(filter(Some("2001:db8::/64"), Some("2001:db8::250"), None, 10).check().is_ok());
}

#[test]
fn ipv6_filters_are_installed_with_their_family_and_match_only_ipv6_decisions() {
    let f = filter(Some("2001:db8:7::/48"), Some("2001:db8::250"), Some(443), 10);
    let c = covering([&f]).expect("on");
    assert_eq!(c.family, TRACE_IPV6);
    assert_eq!(c.client, [0x2001_0db8_0007_0000, 0]);
    assert_eq!(c.client_mask, [0xffff_ffff_ffff_0000, 0]);
    assert_eq!(c.vip, [0x2001_0db8_0000_0000, 0x250]);
    let halves = lb_common::trace_halves;
    let r = nat6_forward();
    assert!(c.matches(TRACE_IPV6, halves(&r.client), halves(&r.to), r.service_port, r.protocol));
    assert!(f.matches(&r) && f.matches(&nat6_reply()), "both ways of the flow");
    assert!(!f.matches(&nat_forward()), "an IPv4 decision");
    assert!(!c.matches(TRACE_IPV4, halves(&nat_forward().client), halves(&nat_forward().to), r.service_port, 6));

    // An IPv4 filter leaves IPv6 decisions out, on both sides.
    let four = filter(Some("0.0.0.0/0"), None, None, 10);
    let c4 = covering([&four]).expect("on");
    assert_eq!((c4.family, c4.client_mask), (TRACE_IPV4, [0, 0]), "every IPv4 client, no IPv6 one");
    assert!(!c4.matches(TRACE_IPV6, halves(&r.client), halves(&r.to), r.service_port, r.protocol));
    assert!(four.matches(&nat_forward()) && !four.matches(&r));
    // A VIP alone names the family too.
    let vip6 = filter(None, Some("2001:db8::250"), None, 10);
    assert_eq!(covering([&vip6]).expect("on").family, TRACE_IPV6);
    assert!(vip6.matches(&r) && !vip6.matches(&nat_forward()));
    // No filter: both families.
    let any = Filter::default();
    assert_eq!(covering([&any]).expect("on").family, 0);
    assert!(any.matches(&r) && any.matches(&nat_forward()));

    // Clients of both families: the switch covers both; each client keeps to its own.
    let both = covering([&f, &four]).expect("on");
    assert_eq!((both.family, both.client_mask, both.vip), (0, [0, 0], [0, 0]));
    let two6 = covering([&f, &filter(Some("2001:db8:9::1"), None, None, 10)]).expect("on");
    assert_eq!(two6.family, TRACE_IPV6);
    // 2001:db8:7:: and 2001:db8:9:: share their first 44 bits.
    assert_eq!((two6.client, two6.client_mask), ([0x2001_0db8_0000_0000, 0], [0xffff_ffff_fff0_0000, 0]));
}

#[test]
fn one_filter_is_installed_as_it_is() {
    let f = filter(Some("192.0.2.0/24"), Some("10.0.0.250"), Some(443), 10);
    let c = covering([&f]).expect("on");
    let h = lb_common::trace_halves4;
    assert_eq!(c.client, [h([192, 0, 2, 0]).0, 0]);
    assert_eq!(c.client_mask, [h([255, 255, 255, 0]).0, 0]);
    assert_eq!((c.vip, c.port, c.protocol, c.family), ([h([10, 0, 0, 250]).0, 0], 443u16.to_be_bytes(), 0, TRACE_IPV4));
    assert_eq!(c.interval_ns, 100_000_000);
    assert!(c.matches(TRACE_IPV4, h([192, 0, 2, 7]), h([10, 0, 0, 250]), 443u16.to_be_bytes(), PROTO_TCP));
    assert!(!c.matches(TRACE_IPV4, h([192, 0, 3, 7]), h([10, 0, 0, 250]), 443u16.to_be_bytes(), PROTO_TCP));
    assert_eq!(covering([]), None, "no client: off");
}

#[test]
fn several_filters_are_covered_by_the_switch_and_kept_apart_by_the_agent() {
    let a = filter(Some("192.0.2.7"), Some("10.0.0.250"), Some(443), 10);
    let b = filter(Some("192.0.2.129"), Some("10.0.0.251"), Some(443), 50);
    let c = covering([&a, &b]).expect("on");
    // 192.0.2.7 and 192.0.2.129 share the first 24 bits.
    let h = lb_common::trace_halves4;
    assert_eq!((c.client, c.client_mask), ([h([192, 0, 2, 0]).0, 0], [h([255, 255, 255, 0]).0, 0]));
    assert_eq!(c.vip, [0; 2], "the VIPs differ: any");
    assert_eq!(c.port, 443u16.to_be_bytes(), "the ports agree");
    assert_eq!(c.family, TRACE_IPV4);
    assert_eq!(c.interval_ns, 20_000_000, "the highest rate");
    let any = covering([&a, &Filter::default()]).expect("on");
    assert_eq!((any.client_mask, any.vip, any.port, any.family), ([0; 2], [0; 2], [0; 2], 0), "one wants everything");

    let mut r = nat_forward();
    r.client = v4([192, 0, 2, 7]);
    assert!(a.matches(&r));
    assert!(!b.matches(&r), "the other client's address");
    r.client = v4([192, 0, 2, 129]);
    r.to = v4([10, 0, 0, 251]);
    assert!(b.matches(&r) && !a.matches(&r));
    r.service_port = 80u16.to_be_bytes();
    assert!(!b.matches(&r), "another service port");
}

#[test]
fn a_rate_outside_the_limit_is_refused() {
    for rate in [0, TRACE_MAX_RATE + 1] {
        let (tx, mut rx) = mpsc::channel(4);
        let mut clients = Clients::default();
        clients.add(Subscription { filter: Filter { rate, ..Filter::default() }, events: tx });
        assert!(clients.is_empty());
        assert!(matches!(rx.try_recv(), Ok(Event::Error(e)) if e.contains("rate")), "rate {rate}");
    }
}

#[test]
fn decisions_carry_names_backend_nat_port_and_the_flow_of_a_reply() {
    let d = names().decision(&nat_forward(), 1_764_000_000_123, "eth0".into());
    assert_eq!((d.instance.as_deref(), d.service.as_deref()), (Some("api"), Some("kube-apiserver")));
    assert_eq!((d.from.as_str(), d.to.as_str(), d.protocol.as_str()), ("192.0.2.7:40000", "10.0.0.250:443", "tcp"));
    assert_eq!((d.backend.as_deref(), d.nat_port), (Some("10.0.0.11:6443"), Some(50000)));
    assert_eq!(
        (d.reason.as_str(), d.action.as_str(), d.tcp_flags.clone()),
        ("nat_forward_tx", "tx", vec!["SYN".into()])
    );
    assert_eq!(
        Event::Decision(Box::new(d)).render(),
        "16:00:00.123 api/kube-apiserver tcp 192.0.2.7:40000 -> 10.0.0.250:443 [SYN] on eth0: nat_forward_tx (tx) \
         backend 10.0.0.11:6443 nat port 50000"
    );

    let d = names().decision(&nat_reply(), 1_764_000_000_123, "eth0".into());
    assert_eq!((d.client.as_str(), d.vip.as_str()), ("192.0.2.7:40000", "10.0.0.250:443"));
    assert_eq!(d.tcp_flags, vec!["SYN".to_string(), "ACK".to_string()]);
    assert!(Event::Decision(Box::new(d)).render().ends_with(
        "tcp 10.0.0.11:6443 -> 10.0.0.250:50000 [SYN,ACK] on eth0: nat_reply_tx (tx) backend 10.0.0.11:6443 nat \
             port 50000 client 192.0.2.7:40000 to 10.0.0.250:443"
    ));

    // The same over IPv6: addresses with ports in brackets.
    let d = names().decision(&nat6_forward(), 1_764_000_000_123, "eth0".into());
    assert_eq!((d.instance.as_deref(), d.service.as_deref()), (Some("api"), Some("kube-apiserver")));
    assert_eq!((d.from.as_str(), d.to.as_str()), ("[2001:db8:7::7]:40000", "[2001:db8::250]:443"));
    assert_eq!((d.client.as_str(), d.vip.as_str()), ("[2001:db8:7::7]:40000", "[2001:db8::250]:443"));
    assert_eq!((d.backend.as_deref(), d.nat_port), (Some("[2001:db8::11]:6443"), Some(50000)));
    let d = names().decision(&nat6_reply(), 1_764_000_000_123, "eth0".into());
    assert_eq!((d.from.as_str(), d.client.as_str()), ("[2001:db8::11]:6443", "[2001:db8:7::7]:40000"));
    assert!(Event::Decision(Box::new(d)).render().ends_with(
        "tcp [2001:db8::11]:6443 -> [2001:db8::250]:50000 [SYN,ACK] on eth0: nat_reply_tx (tx) backend \
         [2001:db8::11]:6443 nat port 50000 client [2001:db8:7::7]:40000 to [2001:db8::250]:443"
    ));
    let ping6 = TraceRecord {
        protocol: 58,
        from_port: [0; 2],
        to_port: [0; 2],
        client_port: [0; 2],
        service_port: [0; 2],
        backend: [0; 16],
        backend_port: [0; 2],
        nat_port: [0; 2],
        reason: Reason::DropInactive as u8,
        action: 1,
        tcp_flags: 0,
        ..nat6_forward()
    };
    assert_eq!(
        Event::Decision(Box::new(names().decision(&ping6, 0, "eth0".into()))).render(),
        "00:00:00.000 - icmpv6 2001:db8:7::7 -> 2001:db8::250 on eth0: drop_inactive (drop)"
    );

    // No service there, no backend, no ports (ICMP).
    let ping = TraceRecord {
        protocol: 1,
        from_port: [0; 2],
        to_port: [0; 2],
        client_port: [0; 2],
        service_port: [0; 2],
        backend: [0; 16],
        backend_port: [0; 2],
        nat_port: [0; 2],
        reason: Reason::DropInactive as u8,
        action: 1,
        tcp_flags: 0,
        ..nat_forward()
    };
    let d = names().decision(&ping, 0, "eth0".into());
    assert_eq!((d.service.clone(), d.backend.clone(), d.nat_port), (None, None, None));
    assert_eq!(
        Event::Decision(Box::new(d)).render(),
        "00:00:00.000 - icmp 192.0.2.7 -> 10.0.0.250 on eth0: drop_inactive (drop)"
    );
}

#[test]
fn events_are_one_json_object_each_and_errors_read_like_the_sockets_other_errors() {
    let event = Event::Decision(Box::new(names().decision(&nat_forward(), 5, "eth0".into())));
    let line = serde_json::to_string(&event).expect("json");
    assert!(line.starts_with("{\"decision\":{") && !line.contains('\n'), "{line}");
    assert_eq!(serde_json::from_str::<Event>(&line).expect("back"), event);
    // What the status socket answers to a request it does not know (a daemon without trace) is an error event.
    let old = serde_json::json!({ "error": "unknown request \"trace\"; send \"status\"" }).to_string();
    assert!(matches!(serde_json::from_str::<Event>(&old), Ok(Event::Error(e)) if e.contains("unknown request")));
    let summary = serde_json::to_string(&Event::Summary(Summary { suppressed: 3, ring_full: 0, dropped: 1 }));
    assert_eq!(summary.expect("json"), r#"{"summary":{"suppressed":3,"ring_full":0,"dropped":1}}"#);
    let filter: Filter = serde_json::from_str(r#"{"port": 443}"#).expect("defaults");
    assert_eq!(filter, Filter { port: Some(443), ..Filter::default() });
}

#[test]
fn a_client_that_does_not_read_loses_events_and_is_told_how_many() {
    let mut clients = Clients::default();
    let (slow_tx, mut slow_rx) = mpsc::channel(3);
    let (fast_tx, mut fast_rx) = mpsc::channel(100);
    clients.add(Subscription { filter: Filter::default(), events: slow_tx });
    clients.add(Subscription { filter: Filter::default(), events: fast_tx });
    let record = nat_forward();
    let decision = names().decision(&record, 0, "eth0".into());
    for _ in 0..10 {
        clients.dispatch(&record, &decision);
    }
    // The slow client's queue held its first event and two decisions; eight were dropped.
    let mut slow = Vec::new();
    while let Ok(e) = slow_rx.try_recv() {
        slow.push(e);
    }
    assert_eq!(slow.len(), 3);
    assert!(matches!(slow[0], Event::Tracing { .. }));
    let mut fast = 0;
    while let Ok(e) = fast_rx.try_recv() {
        fast += usize::from(matches!(e, Event::Decision(_)));
    }
    assert_eq!(fast, 10, "the other client is not held back");

    clients.tick(TraceCounters { emitted: 12, suppressed: 40, ring_full: 2 });
    clients.tick(TraceCounters { emitted: 12, suppressed: 45, ring_full: 2 });
    assert_eq!(slow_rx.try_recv().ok(), Some(Event::Summary(Summary { suppressed: 40, ring_full: 2, dropped: 8 })));
    assert_eq!(slow_rx.try_recv().ok(), Some(Event::Summary(Summary { suppressed: 5, ring_full: 0, dropped: 0 })));
    assert_eq!(fast_rx.try_recv().ok(), Some(Event::Summary(Summary { suppressed: 40, ring_full: 2, dropped: 0 })));
}

#[test]
fn the_switch_goes_on_with_the_first_client_and_off_when_the_last_leaves() {
    let mut clients = Clients::default();
    assert_eq!(clients.wanted_change(), None, "off, and off is installed");
    let (a_tx, a_rx) = mpsc::channel(8);
    let (b_tx, b_rx) = mpsc::channel(8);
    clients.add(Subscription { filter: filter(Some("192.0.2.7"), None, None, 10), events: a_tx });
    let on = clients.wanted_change().expect("a change").expect("on");
    assert_eq!(on.client, [lb_common::trace_halves4([192, 0, 2, 7]).0, 0]);
    clients.installed(Some(on));
    assert_eq!(clients.wanted_change(), None);
    clients.add(Subscription { filter: Filter::default(), events: b_tx });
    let wider = clients.wanted_change().expect("a change").expect("on");
    assert_eq!(wider.client_mask, [0; 2]);
    clients.installed(Some(wider));
    drop(b_rx);
    clients.prune();
    assert_eq!(clients.wanted_change(), Some(Some(on)), "back to the remaining client's filter");
    clients.installed(Some(on));
    drop(a_rx);
    clients.prune();
    assert_eq!(clients.wanted_change(), Some(None), "off");
}

#[test]
fn more_clients_than_the_limit_are_refused() {
    let mut clients = Clients::default();
    let mut keep = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let (tx, rx) = mpsc::channel(8);
        clients.add(Subscription { filter: Filter::default(), events: tx });
        keep.push(rx);
    }
    let (tx, mut rx) = mpsc::channel(8);
    clients.add(Subscription { filter: Filter::default(), events: tx });
    assert_eq!(clients.len(), MAX_CLIENTS);
    assert!(matches!(rx.try_recv(), Ok(Event::Error(e)) if e.contains("try later")));
}
