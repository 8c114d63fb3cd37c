//! Structured random cases (proptest) for the parsers of outside input: whatever xvip writes it reads back
//! unchanged, and damage to what it reads is noticed.
//!
//! - VRRP: any advert emitted in either checksum form, behind any IPv4 header a raw socket could deliver, parses
//!   back to itself; a single flipped bit in the message is never accepted as the same advert in the same form.
//! - Config: any valid config, written out as TOML (every key, or only those that differ from their defaults),
//!   reads back to the same `Config`, and its reload plan against itself is empty.
//!
//! The unstructured side is fuzzed by `cargo xtask fuzz` (see `fuzz/`).
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use xvip::config::{
    self, BackendCfg, CheckKind, Config, Control, DEFAULT_INSTANCE, Forwarding, Health, Instance, Metrics, Protocol,
    Service, Vip, Vrrp, XdpMode,
};
use xvip::vrrp::packet::{Advert, ChecksumMode, MAX_ADVER_INT_MAX, RxFilter, checksum, parse_ipv4};

// ---- VRRP ----

fn advert() -> impl Strategy<Value = Advert> {
    (any::<u8>(), any::<u8>(), 1..=MAX_ADVER_INT_MAX, prop::collection::vec(any::<[u8; 4]>(), 1..=255)).prop_map(
        |(vrid, priority, max_adver_int, addresses)| Advert {
            vrid,
            priority,
            max_adver_int,
            addresses: addresses.into_iter().map(Ipv4Addr::from).collect(),
        },
    )
}

fn mode() -> impl Strategy<Value = ChecksumMode> {
    prop_oneof![Just(ChecksumMode::PseudoHeader), Just(ChecksumMode::Rfc9568)]
}

/// The IPv4 packet a raw protocol-112 socket delivers: header (with `options` words of options) and message.
fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, options: usize, message: &[u8]) -> Vec<u8> {
    let ihl = 5 + options;
    let total = u16::try_from(4 * ihl + message.len()).expect("fits");
    let mut p = vec![0x40 | ihl as u8, 0xc0, 0, 0, 0, 1, 0, 0, 255, 112, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    // NOP options; the kernel hands them up as they came.
    p.resize(4 * ihl, 1);
    p.extend_from_slice(message);
    p
}

/// The checksum form a parser reports for `message`: the pseudo-header form is tried first, so an RFC 9568 message
/// whose pseudo-header words happen to sum to zero (ones' complement) reads as the pseudo-header form.
fn reported_form(message: &[u8], src: Ipv4Addr, dst: Ipv4Addr, sent: ChecksumMode) -> ChecksumMode {
    let both_equal =
        checksum(message, src, dst, ChecksumMode::PseudoHeader) == checksum(message, src, dst, ChecksumMode::Rfc9568);
    if both_equal { ChecksumMode::PseudoHeader } else { sent }
}

proptest! {
    #[test]
    fn vrrp_advert_round_trips(advert in advert(), src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
                               mode in mode(), options in 0usize..=10) {
        let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let message = advert.to_bytes(src, dst, mode).expect("a valid advert is emitted");
        let packet = ipv4_packet(src, dst, options, &message);
        let rx = parse_ipv4(&packet, &RxFilter { vrid: advert.vrid, unicast_peers: &[] }).expect("parses back");
        prop_assert_eq!(&rx.advert, &advert);
        prop_assert_eq!((rx.src, rx.dst, rx.ttl), (src, dst, 255));
        prop_assert_eq!(rx.checksum, reported_form(&message, src, dst, mode));
        // Only the listed peers are heard in unicast mode.
        let peers = [src];
        let heard = parse_ipv4(&packet, &RxFilter { vrid: advert.vrid, unicast_peers: &peers });
        prop_assert!(heard.is_ok(), "{:?}", heard);
        let others = [Ipv4Addr::from(u32::from(src).wrapping_add(1))];
        let unheard = parse_ipv4(&packet, &RxFilter { vrid: advert.vrid, unicast_peers: &others });
        prop_assert!(unheard.is_err(), "{:?}", unheard);
    }

    #[test]
    fn vrrp_flipped_bit_is_never_the_same_advert(advert in advert(), src in any::<[u8; 4]>(),
                                                 dst in any::<[u8; 4]>(), mode in mode(), bit in any::<usize>()) {
        let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let mut message = advert.to_bytes(src, dst, mode).expect("a valid advert is emitted");
        let bit = bit % (8 * message.len());
        message[bit / 8] ^= 1 << (bit % 8);
        let packet = ipv4_packet(src, dst, 0, &message);
        if let Ok(rx) = parse_ipv4(&packet, &RxFilter { vrid: message[1], unicast_peers: &[] }) {
            // A one-bit change moves the ones' complement sum, so the form it was sent in cannot match; only the
            // other form can, by coincidence.
            prop_assert_ne!(rx.checksum, mode, "bit {} flipped and still accepted: {:?}", bit, rx.advert);
        }
    }
}

// ---- config ----

fn unicast(first: u8) -> impl Strategy<Value = Ipv4Addr> {
    (any::<u8>(), 1u8..=254).prop_map(move |(b, d)| Ipv4Addr::new(10, first, b, d))
}

fn name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-z][a-z0-9-]{{0,{}}}", max - 1)).expect("regex")
}

fn dns_name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z]{1,10}(\\.[a-z]{1,10}){0,3}").expect("regex")
}

fn vrrp_section(vip: Ipv4Addr) -> impl Strategy<Value = Vrrp> {
    let ids = (1u8..=255, 1u8..=255, 1u32..=4095, any::<bool>(), 0u32..=1_000_000);
    let peers = (prop::option::of(unicast(2)), prop::collection::btree_set(unicast(3), 0..4));
    let garp = (
        prop_oneof![Just(ChecksumMode::PseudoHeader), Just(ChecksumMode::Rfc9568)],
        0u32..=100,
        0u32..=3_600_000,
        prop_oneof![Just(0u32), 100u32..=3_600_000],
        0u8..=254,
    );
    (ids, peers, garp).prop_map(move |((vrid, priority, cs, preempt, delay), (source, peers), garp)| {
        let (checksum, garp_count, garp_repeat_delay_ms, garp_refresh_ms, backend_loss_penalty) = garp;
        let _ = vip;
        Vrrp {
            vrid,
            priority,
            advert_interval_ms: cs * 10,
            preempt,
            preempt_delay_ms: delay,
            source_address: source,
            unicast_peers: peers.into_iter().collect(),
            source_address6: None,
            unicast_peers6: Vec::new(),
            checksum,
            garp_count,
            garp_repeat_delay_ms,
            garp_refresh_ms,
            backend_loss_penalty,
        }
    })
}

fn health(protocol: Protocol) -> impl Strategy<Value = Health> {
    let kind = prop_oneof![Just(CheckKind::Tcp), Just(CheckKind::Http), Just(CheckKind::Https), Just(CheckKind::None)];
    let http = (proptest::string::string_regex("/[a-z0-9/?=&._-]{0,30}").expect("regex"), 100u16..=599);
    let tls = (
        any::<bool>(),
        prop::option::of(Just(PathBuf::from("/etc/kubernetes/pki/ca.crt"))),
        prop::option::of(dns_name()),
    );
    let timing = (100u32..=3_600_000, 1u32..=3_600_000, 1u32..=1000, 1u32..=1000);
    (kind, http, tls, timing).prop_map(
        move |(check, (path, status), (verify, ca, server), (interval, timeout, rise, fall))| {
            let check = if protocol == Protocol::Udp { CheckKind::None } else { check };
            let mut h = Health {
                check,
                interval_ms: interval,
                timeout_ms: timeout.min(interval),
                rise,
                fall,
                ..Health::default()
            };
            if matches!(check, CheckKind::Http | CheckKind::Https) {
                h.path = path;
                h.expect_status = status;
            }
            if check == CheckKind::Https {
                h.tls_verify = verify;
                h.ca_file = if verify { ca } else { None };
                h.server_name = server;
            }
            h
        },
    )
}

fn service(index: usize) -> impl Strategy<Value = Service> {
    let basics = (
        name(20),
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        prop_oneof![Just(Forwarding::Nat), Just(Forwarding::Dsr)],
    );
    let backends = prop::collection::btree_map(unicast(4), (1u16..=65535, 1u8..=255), 1..5);
    (basics, backends)
        .prop_flat_map(move |((name, protocol, forwarding), backends)| {
            // Distinct services get distinct ports: 1000 apart, plus a random part.
            (Just((name, protocol, forwarding, backends)), 1u16..=999, health(protocol))
        })
        .prop_map(move |((name, protocol, forwarding, backends), port, health)| {
            let port = 1000 * (index as u16 + 1) + port;
            Service {
                name: format!("s{index}-{name}"),
                port,
                protocol,
                forwarding,
                backends: backends
                    .into_iter()
                    .map(|(address, (p, weight))| BackendCfg {
                        address: address.into(),
                        port: if forwarding == Forwarding::Dsr { port } else { p },
                        weight,
                    })
                    .collect(),
                health,
            }
        })
}

fn any_config() -> impl Strategy<Value = Config> {
    let top = (
        proptest::string::string_regex("[a-z][a-z0-9]{0,14}").expect("regex"),
        prop_oneof![Just(XdpMode::Auto), Just(XdpMode::Native), Just(XdpMode::Generic)],
        (1024u32..=16_777_216, any::<bool>()),
        unicast(1),
        prop::option::of(dns_name()),
        proptest::string::string_regex("/[a-z]{1,12}/[a-z]{1,20}\\.sock").expect("regex"),
    );
    // `[metrics]`: absent, or listening on an IPv4 or IPv6 address and a port other than 0.
    let metrics = prop::option::of(prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(a, p)| std::net::SocketAddr::from((a, p))),
        (any::<[u16; 8]>(), 1u16..).prop_map(|(a, p)| std::net::SocketAddr::from((a, p))),
    ])
    .prop_filter("not multicast", |m| m.is_none_or(|a| !a.ip().is_multicast()))
    .prop_map(|listen| listen.map(|listen| Metrics { listen }));
    (top, metrics, 0usize..4)
        .prop_flat_map(|((interface, xdp_mode, conntrack_entries, vip, hostname, socket), metrics, n)| {
            let services: Vec<_> = (0..n).map(service).collect();
            let top = (interface, xdp_mode, conntrack_entries, vip, hostname, socket, metrics);
            (Just(top), vrrp_section(vip), services)
        })
        .prop_map(
            |(
                (interface, xdp_mode, (conntrack_entries, local_clients), vip, hostname, socket, metrics),
                vrrp,
                services,
            )| Config {
                interface: Some(interface.clone()),
                xdp_mode,
                conntrack_entries,
                local_clients,
                control: Control { socket: PathBuf::from(socket) },
                instances: vec![Instance {
                    name: DEFAULT_INSTANCE.to_string(),
                    interface,
                    vip: Vip { addresses: vec![IpAddr::V4(vip)], hostname },
                    vrrp,
                    services,
                }],
                metrics,
            },
        )
}

/// Writes `config` (one instance, in the single form) as TOML: every key, or (`terse`) only the keys whose value
/// differs from the default.
fn render(config: &Config, terse: bool) -> String {
    let mut s = String::new();
    let instance = &config.instances[0];
    let key = |s: &mut String, name: &str, value: String, is_default: bool| {
        if !(terse && is_default) {
            s.push_str(&format!("{name} = {value}\n"));
        }
    };
    let q = |v: &str| format!("{v:?}");
    key(&mut s, "interface", q(config.interface.as_deref().unwrap_or_default()), false);
    key(&mut s, "xdp_mode", q(config.xdp_mode.as_str()), config.xdp_mode == XdpMode::Auto);
    key(&mut s, "conntrack_entries", config.conntrack_entries.to_string(), config.conntrack_entries == 65536);
    key(&mut s, "local_clients", config.local_clients.to_string(), config.local_clients);
    s.push_str("[vip]\n");
    key(&mut s, "address", q(&instance.vip.first().to_string()), false);
    if let Some(h) = &instance.vip.hostname {
        key(&mut s, "hostname", q(h), false);
    }
    let v = &instance.vrrp;
    s.push_str("[vrrp]\n");
    key(&mut s, "vrid", v.vrid.to_string(), false);
    key(&mut s, "priority", v.priority.to_string(), false);
    key(&mut s, "advert_interval_ms", v.advert_interval_ms.to_string(), v.advert_interval_ms == 1000);
    key(&mut s, "preempt", v.preempt.to_string(), v.preempt);
    key(&mut s, "preempt_delay_ms", v.preempt_delay_ms.to_string(), v.preempt_delay_ms == 0);
    if let Some(a) = v.source_address {
        key(&mut s, "source_address", q(&a.to_string()), false);
    }
    let peers: Vec<String> = v.unicast_peers.iter().map(|p| q(&p.to_string())).collect();
    key(&mut s, "unicast_peers", format!("[{}]", peers.join(", ")), peers.is_empty());
    key(&mut s, "checksum", q(v.checksum.name()), v.checksum == ChecksumMode::PseudoHeader);
    key(&mut s, "garp_count", v.garp_count.to_string(), v.garp_count == 5);
    key(&mut s, "garp_repeat_delay_ms", v.garp_repeat_delay_ms.to_string(), v.garp_repeat_delay_ms == 5000);
    key(&mut s, "garp_refresh_ms", v.garp_refresh_ms.to_string(), v.garp_refresh_ms == 0);
    key(&mut s, "backend_loss_penalty", v.backend_loss_penalty.to_string(), v.backend_loss_penalty == 0);
    s.push_str("[control]\n");
    let socket = config.control.socket.to_string_lossy();
    key(&mut s, "socket", q(&socket), socket == "/run/xvip/xvip.sock");
    if let Some(metrics) = &config.metrics {
        s.push_str("[metrics]\n");
        key(&mut s, "listen", q(&metrics.listen.to_string()), metrics.listen.to_string() == "127.0.0.1:9712");
    }
    for svc in &instance.services {
        s.push_str("[[service]]\n");
        key(&mut s, "name", q(&svc.name), false);
        key(&mut s, "port", svc.port.to_string(), false);
        key(&mut s, "protocol", q(svc.protocol.as_str()), svc.protocol == Protocol::Tcp);
        key(&mut s, "forwarding", q(svc.forwarding.as_str()), svc.forwarding == Forwarding::Nat);
        let backends: Vec<String> = svc
            .backends
            .iter()
            .map(|b| {
                let mut fields = vec![format!("address = {}", q(&b.address.to_string()))];
                if !(terse && b.port == svc.port) {
                    fields.push(format!("port = {}", b.port));
                }
                if !(terse && b.weight == 1) {
                    fields.push(format!("weight = {}", b.weight));
                }
                format!("{{ {} }}", fields.join(", "))
            })
            .collect();
        key(&mut s, "backends", format!("[\n  {},\n]", backends.join(",\n  ")), false);
        let h = &svc.health;
        s.push_str("[service.health]\n");
        let default_check = if svc.protocol == Protocol::Udp { CheckKind::None } else { CheckKind::Tcp };
        key(&mut s, "check", q(h.check.as_str()), h.check == default_check);
        if matches!(h.check, CheckKind::Http | CheckKind::Https) {
            key(&mut s, "path", q(&h.path), h.path == "/");
            key(&mut s, "expect_status", h.expect_status.to_string(), h.expect_status == 200);
        }
        if h.check == CheckKind::Https {
            key(&mut s, "tls_verify", h.tls_verify.to_string(), h.tls_verify);
            if let Some(ca) = &h.ca_file {
                key(&mut s, "ca_file", q(&ca.to_string_lossy()), false);
            }
            if let Some(n) = &h.server_name {
                key(&mut s, "server_name", q(n), false);
            }
        }
        key(&mut s, "interval_ms", h.interval_ms.to_string(), h.interval_ms == 2000);
        key(&mut s, "timeout_ms", h.timeout_ms.to_string(), h.timeout_ms == 1000);
        key(&mut s, "rise", h.rise.to_string(), h.rise == 2);
        key(&mut s, "fall", h.fall.to_string(), h.fall == 3);
    }
    s
}

proptest! {
    #[test]
    fn config_written_out_reads_back_the_same(config in any_config(), terse in any::<bool>()) {
        let text = render(&config, terse);
        let parsed = config::parse(Path::new("roundtrip.toml"), &text);
        let problems: Vec<String> = parsed.as_ref().err().map(|p| p.iter().map(ToString::to_string).collect()).unwrap_or_default();
        prop_assert!(parsed.is_ok(), "refused:\n{}\n{}", problems.join("\n"), text);
        let parsed = parsed.expect("checked above");
        prop_assert_eq!(&parsed, &config, "{}", text);
        let plan = config::diff(&parsed, &config);
        prop_assert!(plan.as_ref().is_ok_and(|p| p.is_empty()), "{:?}", plan);
    }
}
