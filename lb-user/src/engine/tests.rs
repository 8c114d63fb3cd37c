//! The engine's decisions, driven with virtual time: no sockets, no clocks.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::config::{BackendCfg, CheckKind, Forwarding, Health, Protocol, Service, Vip, Vrrp};
use crate::vrrp::packet::{Advert, ChecksumMode};
use crate::vrrp::socket6::Datagram;

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 250);
const B1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 21));
const B2: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 22));
const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 0x21];
const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 0x22];

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

const ETH0: &str = "eth0";
const ETH1: &str = "eth1";
/// This node's address on eth1.
const ME1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);

/// An instance on eth0 with 100 ms adverts and a 1 s GARP repeat.
fn instance(name: &str, vrid: u8, addresses: &[Ipv4Addr], priority: u8) -> config::Instance {
    config::Instance {
        name: name.into(),
        interface: ETH0.into(),
        vip: Vip { addresses: addresses.iter().map(|a| IpAddr::V4(*a)).collect(), hostname: None },
        vrrp: Vrrp { advert_interval_ms: 100, garp_repeat_delay_ms: 1000, ..Vrrp::with_ids(vrid, priority) },
        services: Vec::new(),
    }
}

/// A node with these instances.
fn node(instances: Vec<config::Instance>) -> Config {
    Config {
        interface: Some(ETH0.into()),
        xdp_mode: config::XdpMode::Auto,
        conntrack_entries: 65536,
        local_clients: true,
        control: config::Control::default(),
        metrics: None,
        instances,
    }
}

/// A single-form config: one instance named `default`.
fn config(priority: u8) -> Config {
    node(vec![instance(config::DEFAULT_INSTANCE, 51, &[VIP], priority)])
}

/// The one instance of `config`, to change.
fn only(config: &mut Config) -> &mut config::Instance {
    &mut config.instances[0]
}

fn service(name: &str, port: u16, backends: &[IpAddr], check: CheckKind) -> Service {
    Service {
        name: name.into(),
        port,
        protocol: Protocol::Tcp,
        forwarding: Forwarding::Nat,
        backends: backends.iter().map(|a| BackendCfg { address: *a, port: 6443, weight: 1 }).collect(),
        health: Health { check, ..Health::default() },
    }
}

fn interfaces() -> BTreeMap<String, Option<Ipv4Addr>> {
    [(ETH0.to_owned(), Some(ME)), (ETH1.to_owned(), Some(ME1))].into()
}

fn engine(config: Config) -> Engine {
    Engine::new(config, interfaces(), 8).expect("engine")
}

fn start(link_up: bool) -> Event {
    Event::Start { links: [(ETH0.to_owned(), link_up), (ETH1.to_owned(), true)].into() }
}

fn link(up: bool) -> Event {
    Event::Link { interface: ETH0.into(), up }
}

fn health(service: &str, backend: Endpoint, healthy: bool, reason: &str) -> Event {
    Event::Health { id: ServiceId::new(config::DEFAULT_INSTANCE, service), backend, healthy, reason: reason.into() }
}

/// The state of the one instance of a single-form config.
fn role(e: &Engine) -> Role {
    e.role(config::DEFAULT_INSTANCE).expect("the default instance")
}

fn priority(e: &Engine) -> u8 {
    e.effective_priority(config::DEFAULT_INSTANCE).expect("the default instance")
}

/// The default instance's IPv4 router's role and counters.
fn observed(e: &Engine) -> &RouterObserved {
    &e.observed(config::DEFAULT_INSTANCE).expect("the default instance").router
}

fn services(e: &Engine) -> &crate::services::Services {
    e.services(config::DEFAULT_INSTANCE).expect("the default instance")
}

/// An advert packet as the socket of eth0 delivers it (IPv4 header included), from `src`.
fn packet(src: Ipv4Addr, priority: u8, addresses: &[Ipv4Addr]) -> Event {
    packet_with(src, 51, priority, addresses, ChecksumMode::PseudoHeader)
}

fn packet_with(src: Ipv4Addr, vrid: u8, priority: u8, addresses: &[Ipv4Addr], mode: ChecksumMode) -> Event {
    Event::Packet { interface: ETH0.into(), bytes: raw(src, vrid, priority, addresses, mode) }
}

fn raw(src: Ipv4Addr, vrid: u8, priority: u8, addresses: &[Ipv4Addr], mode: ChecksumMode) -> Vec<u8> {
    let advert = Advert { vrid, priority, max_adver_int: 10, addresses: addresses.to_vec() };
    let vrrp = advert.to_bytes(src, packet::MULTICAST_GROUP, mode).expect("encode");
    let mut ip = vec![0x45, 0xc0, 0, 0, 0, 1, 0, 0, 255, packet::PROTOCOL, 0, 0];
    let total = u16::try_from(20 + vrrp.len()).expect("length");
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&packet::MULTICAST_GROUP.octets());
    ip.extend_from_slice(&vrrp);
    ip
}

fn adverts(commands: &[Command]) -> Vec<u8> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::SendAdvert { advert, .. } => Some(advert.priority),
            _ => None,
        })
        .collect()
}

fn garps(commands: &[Command]) -> u32 {
    commands.iter().map(|c| if let Command::SendGarps { count, .. } = c { *count } else { 0 }).sum()
}

fn active_flags(commands: &[Command]) -> Vec<bool> {
    commands
        .iter()
        .filter_map(|c| if let Command::SetActive { active, .. } = c { Some(*active) } else { None })
        .collect()
}

fn logs(commands: &[Command]) -> Vec<String> {
    commands.iter().filter_map(|c| if let Command::Log(_, m) = c { Some(m.clone()) } else { None }).collect()
}

fn installs(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| if let Command::InstallService { id, .. } = c { Some(id.service.clone()) } else { None })
        .collect()
}

/// Runs the timer at every deadline up to `until`, collecting commands.
fn run_until(e: &mut Engine, until: Duration) -> Vec<Command> {
    let mut all = Vec::new();
    while let Some(d) = e.next_deadline() {
        if d > until {
            break;
        }
        all.extend(e.handle(d, Event::Timer));
    }
    all
}

/// An engine that started alone and became active by its down timer.
fn active(config: Config) -> (Engine, Duration) {
    let mut e = engine(config);
    e.handle(Duration::ZERO, start(true));
    let t = e.next_deadline().expect("down timer");
    let commands = e.handle(t, Event::Timer);
    assert_eq!(role(&e), Role::Active, "{commands:?}");
    (e, t)
}

// ----- startup -----

#[test]
fn startup_installs_services_watches_neighbours_starts_checkers_then_is_ready() {
    let mut c = config(150);
    only(&mut c).services =
        vec![service("api", 443, &[B1, B2], CheckKind::Http), service("dns", 53, &[B1], CheckKind::None)];
    let mut e = engine(c);
    let commands = e.handle(Duration::ZERO, start(true));
    let Command::Install { vips, services } = &commands[0] else { panic!("{commands:?}") };
    assert_eq!(services.iter().map(|(n, _)| n.service.as_str()).collect::<Vec<_>>(), ["api", "dns"]);
    assert_eq!(vips.iter().map(|v| v.address).collect::<Vec<_>>(), [VIP]);
    assert_eq!(vips[0].hash_seed, lb_common::group_seed(VIP.octets(), 51), "the seed every node of the group has");
    assert_eq!(commands[1], Command::Neighbours(vec![B1, B2]));
    let checkers: Vec<_> = commands
        .iter()
        .filter_map(|c| {
            if let Command::StartChecker { id, backend, .. } = c {
                Some((id.service.as_str(), backend.0))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(checkers, [("api", B1), ("api", B2)], "no checker for check = none");
    assert_eq!(commands.last(), Some(&Command::Ready));
    assert_eq!(role(&e), Role::Backup);
    assert_eq!(active_flags(&commands), [false]);
    assert!(adverts(&commands).is_empty(), "a starting backup sends nothing");
}

#[test]
fn the_penalty_is_known_before_the_first_advert() {
    // An address owner with a penalty and backends not yet checked: it must not advertise 255 and take the VIP
    // only to give it back once the penalty applies.
    let mut c = config(255);
    only(&mut c).vrrp.backend_loss_penalty = 100;
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::Tcp)];
    let mut e = engine(c);
    let commands = e.handle(Duration::ZERO, start(true));
    assert_eq!(priority(&e), 155);
    assert_eq!(role(&e), Role::Backup, "penalised, it is not the owner: {commands:?}");
    assert!(adverts(&commands).is_empty());
    assert!(logs(&commands).iter().any(|l| l.contains("starting with priority 155")), "{commands:?}");
    // Once the backend is healthy and resolved, it is the owner again and takes over at once.
    let commands = e.handle(ms(50), health("api", (B1, 6443), true, "ok"));
    assert_eq!(priority(&e), 155, "healthy but no MAC yet: still unusable: {commands:?}");
    let commands = e.handle(ms(60), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    assert_eq!(priority(&e), 255, "{commands:?}");
    assert_eq!(installs(&commands), ["api"]);
}

#[test]
fn a_penalised_node_joining_an_active_peer_fails_over_once() {
    // node A (150, penalty 60) starts beside an active B (100): it waits at 90, accepts B, and preempts only once
    // its backends are usable: one transition to active, never two.
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 60;
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::None)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    assert_eq!(priority(&e), 90, "check = none is healthy, but the MAC is unknown");
    let mut t = Duration::ZERO;
    let mut roles = Vec::new();
    for i in 0..50 {
        t = ms(10 + i * 100);
        e.handle(t, packet(PEER, 100, &[VIP]));
        roles.push(role(&e));
        if i == 10 {
            e.handle(t, Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
            assert_eq!(priority(&e), 150);
        }
        run_until(&mut e, t + ms(99));
        roles.push(role(&e));
    }
    let _ = t;
    assert!(roles[..20].iter().all(|r| *r == Role::Backup), "{roles:?}");
    assert_eq!(role(&e), Role::Active);
    assert_eq!(observed(&e).transitions_by_cause.get("preempt"), Some(&1));
    assert_eq!(observed(&e).transitions, 2, "startup as backup, then one preemption");
}

#[test]
fn start_without_link_is_fault_and_ready() {
    let mut e = engine(config(150));
    let commands = e.handle(Duration::ZERO, start(false));
    assert_eq!(role(&e), Role::Fault);
    assert_eq!(commands.last(), Some(&Command::Ready));
    assert_eq!(e.next_deadline(), None, "no timer runs in fault");
    assert!(logs(&commands).contains(&"role -> fault: no link on eth0: waiting for it".to_string()));
}

// ----- FAULT -----

#[test]
fn link_down_is_fault_and_link_up_rejoins_as_backup() {
    let (mut e, t) = active(config(150));
    let commands = e.handle(t + ms(10), link(false));
    assert_eq!(role(&e), Role::Fault);
    assert_eq!(active_flags(&commands), [false]);
    assert!(adverts(&commands).is_empty(), "an advert cannot leave without a link");
    assert_eq!(observed(&e).transitions_by_cause.get("link_down"), Some(&1));
    assert_eq!(e.next_deadline(), None);
    assert!(e.handle(t + ms(20), link(false)).is_empty(), "no change, nothing to do");
    let commands = e.handle(t + ms(500), link(true));
    assert_eq!(role(&e), Role::Backup, "back as a backup: preemption decides");
    assert!(logs(&commands)[0].starts_with("link up on eth0"));
    assert!(e.next_deadline().is_some_and(|d| d > t + ms(500)));
    let status = e.status(t + ms(500), 0);
    assert_eq!(status.role, "backup");
}

#[test]
fn fault_is_a_role_in_status() {
    let (mut e, t) = active(config(150));
    e.handle(t + ms(10), link(false));
    assert_eq!(e.status(t + ms(10), 1000).role, "fault");
    assert_eq!(e.status(t + ms(10), 1000).role_since_unix_ms, 1000 + u64::try_from((t + ms(10)).as_millis()).unwrap());
}

// ----- GARP schedule and rate limits -----

#[test]
fn becoming_active_advertises_then_answers_then_announces_and_repeats_the_burst() {
    let mut e = engine(config(150));
    e.handle(Duration::ZERO, start(true));
    let t = e.next_deadline().expect("down timer");
    let commands = e.handle(t, Event::Timer);
    let kinds: Vec<&str> = commands
        .iter()
        .filter_map(|c| match c {
            Command::SendAdvert { .. } => Some("advert"),
            Command::SetActive { active: true, .. } => Some("active"),
            Command::SendGarps { .. } => Some("garps"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["advert", "active", "garps"], "RFC 5798 §6.4.2 order");
    assert_eq!(garps(&commands), 5);
    // The second burst garp_repeat_delay_ms (1000) later, and no third.
    let later = run_until(&mut e, t + ms(3000));
    assert_eq!(garps(&later), 5);
    assert_eq!(observed(&e).announcements, 10);
}

#[test]
fn garp_refresh_repeats_while_active_and_stops_when_not() {
    let mut c = config(150);
    only(&mut c).vrrp.garp_refresh_ms = 500;
    only(&mut c).vrrp.garp_repeat_delay_ms = 0;
    let (mut e, t) = active(c);
    let commands = run_until(&mut e, t + ms(2050));
    assert_eq!(garps(&commands), 4 * 5, "refreshes at +0.5, +1, +1.5, +2 s");
    e.handle(t + ms(2100), packet(OTHER, 200, &[VIP]));
    assert_eq!(role(&e), Role::Backup);
    let commands = run_until(&mut e, t + ms(2300));
    assert_eq!(garps(&commands), 0, "a backup announces nothing");
}

#[test]
fn lower_priority_adverts_are_answered_at_most_once_per_interval() {
    let (mut e, t) = active(config(150));
    let mut answered = Vec::new();
    // A flood: one lower-priority advert every millisecond for a second.
    for i in 1..=1000 {
        let now = t + ms(i);
        let commands = e.handle(now, packet(PEER, 100, &[VIP]));
        if !adverts(&commands).is_empty() {
            answered.push((i, garps(&commands)));
        }
        run_until(&mut e, now);
    }
    assert!(answered.len() <= 11, "at most one answer per 100 ms interval: {answered:?}");
    assert!(answered.iter().all(|(_, g)| *g == 5));
    assert_eq!(role(&e), Role::Active);
    // The regular adverts kept their schedule besides.
    assert!(observed(&e).adverts_sent >= 10, "{} adverts in 1 s", observed(&e).adverts_sent);
}

#[test]
fn garp_count_zero_sends_none() {
    let mut c = config(150);
    only(&mut c).vrrp.garp_count = 0;
    let (mut e, t) = active(c);
    let commands = run_until(&mut e, t + ms(3000));
    assert_eq!(garps(&commands), 0);
    assert_eq!(observed(&e).announcements, 0);
}

// ----- the group's identity -----

#[test]
fn an_advert_with_our_vrid_and_other_addresses_is_a_collision_warned_and_discarded() {
    let (mut e, t) = active(config(150));
    let other_vip = Ipv4Addr::new(10, 0, 0, 77);
    // A higher priority would make us step down if it were accepted.
    let commands = e.handle(t + ms(10), packet(OTHER, 200, &[other_vip]));
    assert_eq!(role(&e), Role::Active, "the other group's advert must not move our VIP");
    assert!(adverts(&commands).is_empty());
    let lines = logs(&commands);
    assert!(lines.iter().any(|l| l.starts_with("VRID collision: adverts from 10.0.0.9 carry VRID 51 with addresses [10.0.0.77], this group's are [10.0.0.250]")), "{lines:?}");
    assert_eq!(observed(&e).discards.get("address_mismatch"), Some(&1));
    let warnings = e.warnings(t + ms(10));
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, "vrid_collision");
    assert!(warnings[0].message.contains("10.0.0.9") && warnings[0].message.contains("10.0.0.77"), "{warnings:?}");
    // Repeats are counted, logged at most once per LOG_PERIOD, and the warning stays while they keep coming.
    let mut lines = 0;
    for i in 0..100 {
        let now = t + ms(20 + i * 50);
        lines += logs(&e.handle(now, packet(OTHER, 200, &[other_vip]))).len();
        run_until(&mut e, now);
    }
    assert_eq!(observed(&e).discards.get("address_mismatch"), Some(&101));
    assert!(lines <= 1, "{lines} log lines for 100 repeats within 5 s");
    assert_eq!(e.status(t + ms(5000), 0).warnings.len(), 1);
    // And goes away a while after they stop.
    assert!(e.warnings(t + ms(5000) + WARNING_TTL).is_empty());
}

#[test]
fn an_advert_listing_our_addresses_in_another_order_is_ours() {
    let mut c = config(100);
    only(&mut c).vip.addresses = vec![IpAddr::V4(VIP), IpAddr::V4(OTHER)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    e.handle(ms(10), packet(PEER, 200, &[OTHER, VIP, VIP]));
    assert_eq!(observed(&e).adverts_received, 1);
    assert!(e.warnings(ms(10)).is_empty());
}

#[test]
fn the_address_owner_discards_every_advert() {
    let mut e = engine(config(255));
    let commands = e.handle(Duration::ZERO, start(true));
    assert_eq!(role(&e), Role::Active, "the owner starts active at once");
    assert_eq!(adverts(&commands), [255]);
    let commands = e.handle(ms(10), packet(PEER, 254, &[VIP]));
    assert!(commands.iter().all(|c| matches!(c, Command::Log(..))), "nothing but a log line: {commands:?}");
    assert_eq!(observed(&e).discards.get("owner"), Some(&1));
    assert_eq!(observed(&e).adverts_received, 0);
    // Equal priority from a higher address would win an election; the owner does not hold one.
    e.handle(ms(20), packet(Ipv4Addr::new(10, 0, 0, 200), 255, &[VIP]));
    assert_eq!(role(&e), Role::Active);
}

// ----- hostile adverts: bounded state and logs -----

#[test]
fn the_peer_table_is_bounded_and_checksum_changes_do_not_flood_the_log() {
    let (mut e, t) = active(config(150));
    let mut lines = 0;
    for i in 0..10_000u32 {
        let src = Ipv4Addr::from(0x0a00_0100 + i);
        let mode = if i % 2 == 0 { ChecksumMode::PseudoHeader } else { ChecksumMode::Rfc9568 };
        let now = t + Duration::from_micros(u64::from(i) * 10);
        lines += logs(&e.handle(now, packet_with(src, 51, 100, &[VIP], mode))).len();
    }
    let remembered = e.instances[0].peers_remembered();
    assert!(remembered <= MAX_PEERS, "{remembered} peers remembered");
    // One peer alternating forms on every packet.
    for i in 0..1000u64 {
        let mode = if i % 2 == 0 { ChecksumMode::PseudoHeader } else { ChecksumMode::Rfc9568 };
        lines += logs(&e.handle(t + ms(100) + Duration::from_micros(i * 10), packet_with(PEER, 51, 100, &[VIP], mode)))
            .len();
    }
    assert!(lines <= 2, "{lines} log lines within 0.11 s");
}

#[test]
fn discards_are_counted_by_reason_and_logged_at_most_once_per_period_each() {
    let (mut e, t) = active(config(150));
    let mut bad_ttl = raw(PEER, 51, 100, &[VIP], ChecksumMode::PseudoHeader);
    bad_ttl[8] = 64;
    let mut lines = Vec::new();
    for i in 0..500 {
        lines.extend(logs(&e.handle(t + ms(i), Event::Packet { interface: ETH0.into(), bytes: bad_ttl.clone() })));
        lines.extend(logs(&e.handle(t + ms(i), packet_with(PEER, 52, 100, &[VIP], ChecksumMode::PseudoHeader))));
        lines.extend(logs(&run_until(&mut e, t + ms(i))));
    }
    assert_eq!(observed(&e).discards.get("ttl"), Some(&500));
    assert_eq!(observed(&e).discards.get("vrid"), Some(&500));
    assert_eq!(lines.len(), 2, "{lines:?}");
    run_until(&mut e, t + ms(500) + LOG_PERIOD);
    let lines = logs(&e.handle(t + ms(500) + LOG_PERIOD, Event::Packet { interface: ETH0.into(), bytes: bad_ttl }));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("499 not logged"), "{lines:?}");
    assert_eq!(e.status(t, 0).counters.adverts_discarded, 1001);
}

// ----- stall (the dead-man switch's counterpart) -----

#[test]
fn an_active_node_that_stalled_past_the_heartbeat_limit_rejoins_as_a_backup() {
    let (mut e, t) = active(config(150));
    assert_eq!(e.heartbeat_max_age(), ms(300));
    // SIGSTOP for 2 s: the next thing it handles (a queued advert of the peer that took over, at a lower
    // priority) must not make it answer again next to that peer.
    let now = t + ms(2000);
    let commands = e.handle(now, packet(PEER, 100, &[VIP]));
    assert_eq!(active_flags(&commands), [false], "{commands:?}");
    assert!(adverts(&commands).is_empty(), "no advert (it would refresh the heartbeat): {commands:?}");
    assert_eq!(role(&e), Role::Backup);
    assert_eq!(observed(&e).transitions_by_cause.get("stall"), Some(&1));
    assert!(logs(&commands).iter().any(|l| l.contains("rejoining as a backup")), "{commands:?}");
    // The election then decides: higher priority and preempt, so it takes over again through its down timer,
    // advertising before it answers.
    let mut t2 = now;
    for i in 1..=3 {
        t2 = now + ms(i * 100);
        e.handle(t2, packet(PEER, 100, &[VIP]));
    }
    let commands = run_until(&mut e, t2 + ms(400));
    assert_eq!(role(&e), Role::Active);
    let first_advert = commands.iter().position(|c| matches!(c, Command::SendAdvert { .. }));
    let first_active = commands.iter().position(|c| matches!(c, Command::SetActive { active: true, .. }));
    assert!(first_advert < first_active, "{commands:?}");
}

#[test]
fn a_late_timer_within_the_limit_is_not_a_stall() {
    let (mut e, t) = active(config(150));
    let d = e.next_deadline().expect("advert timer");
    let commands = e.handle(d + ms(150), Event::Timer);
    assert_eq!(adverts(&commands), [150]);
    assert_eq!(role(&e), Role::Active);
    let _ = t;
}

// ----- neighbours -----

#[test]
fn a_backend_keeps_its_mac_until_the_kernel_says_failed() {
    let mut c = config(150);
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::None)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    let commands = e.handle(ms(1), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    assert_eq!(installs(&commands), ["api"]);
    // Garbage-collected (or being refreshed): no entry, but nothing says the backend moved or died.
    let commands = e.handle(ms(2), Event::Neighbour { address: B1, seen: Seen::Pending { ifindex: 2 } });
    assert!(installs(&commands).is_empty(), "{commands:?}");
    assert_eq!(services(&e).backend("api", (B1, 6443)).and_then(|b| b.mac), Some(MAC1));
    // A new MAC (the backend was replaced) is taken at once.
    let commands = e.handle(ms(3), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC2 } });
    assert_eq!(installs(&commands), ["api"]);
    // FAILED: the kernel tried and nobody answered.
    let commands = e.handle(ms(4), Event::Neighbour { address: B1, seen: Seen::Failed { ifindex: 2 } });
    assert_eq!(installs(&commands), ["api"]);
    assert_eq!(services(&e).backend("api", (B1, 6443)).and_then(|b| b.mac), None);
    assert!(logs(&commands).iter().any(|l| l.contains("FAILED")), "{commands:?}");
}

#[test]
fn a_pending_entry_on_another_interface_drops_the_old_mac() {
    let mut c = config(150);
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::None)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    e.handle(ms(1), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    let commands = e.handle(ms(2), Event::Neighbour { address: B1, seen: Seen::Pending { ifindex: 3 } });
    assert_eq!(installs(&commands), ["api"]);
    assert_eq!(services(&e).backend("api", (B1, 6443)).map(|b| (b.mac, b.ifindex)), Some((None, 3)));
}

#[test]
fn health_changes_install_the_service_and_move_the_penalty() {
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 50;
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::Tcp)];
    let (mut e, t) = active(c);
    assert_eq!(priority(&e), 100);
    e.handle(t, Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    let up = health("api", (B1, 6443), true, "ok");
    let commands = e.handle(t + ms(1), up.clone());
    assert_eq!(installs(&commands), ["api"]);
    assert_eq!(adverts(&commands), [150], "an active node re-advertises its new priority at once");
    assert!(e.handle(t + ms(2), up).is_empty(), "no change, no work");
    let down = health("api", (B1, 6443), false, "refused");
    let commands = e.handle(t + ms(3), down);
    assert_eq!(adverts(&commands), [100]);
    assert!(logs(&commands).iter().any(|l| l == "no usable backend for api"), "{commands:?}");
    assert!(logs(&commands).iter().any(|l| l.starts_with("backend 10.0.0.21:6443 of api is down: refused")));
}

#[test]
fn a_weight_zero_backend_is_not_usable_for_the_penalty_either() {
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 50;
    let mut svc = service("api", 443, &[B1], CheckKind::None);
    svc.backends[0].weight = 0;
    only(&mut c).services = vec![svc];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    e.handle(ms(1), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    assert_eq!(priority(&e), 100, "healthy and resolved, but draining: one rule for usable");
}

/// A check result for `address`:6443 of `service` of the default instance.
fn check(service: &str, address: IpAddr, healthy: bool) -> Event {
    health(service, (address, 6443), healthy, "checked")
}

fn resolve(e: &mut Engine, now: Duration, addresses: &[IpAddr]) {
    for &address in addresses {
        e.handle(now, Event::Neighbour { address, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    }
}

/// `n` advert intervals of a peer's adverts at `priority`, with the engine's timers run in between.
fn hear(e: &mut Engine, mut t: Duration, n: u64, priority: u8) -> Duration {
    for _ in 0..n {
        e.handle(t, packet(PEER, priority, &[VIP]));
        run_until(e, t + ms(99));
        t += ms(100);
    }
    t
}

#[test]
fn a_starting_node_does_not_preempt_before_every_backend_is_checked() {
    // Taking over with B2 unchecked, its tables would hold B1 only, and the flows the active peer sent to B2 would
    // be moved to B1 and reset (the soak found this after restarts and link losses).
    let mut c = config(150);
    only(&mut c).services = vec![service("api", 443, &[B1, B2], CheckKind::Http)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    resolve(&mut e, ms(1), &[B1, B2]);
    e.handle(ms(5), check("api", B1, true));
    let t = hear(&mut e, ms(10), 20, 100);
    assert_eq!(role(&e), Role::Backup, "B2 not checked: the lower-priority peer stays active");
    // A failed first check is not enough: B2 may only be slow to answer.
    let commands = e.handle(t, check("api", B2, false));
    assert!(!logs(&commands).iter().any(|l| l.contains("preemption allowed")), "{commands:?}");
    let t = hear(&mut e, t, 20, 100);
    assert_eq!(role(&e), Role::Backup, "B2 failed once only");
    // B2 keeps failing for as long as it takes to mark an up backend down (200 + 3 x 2000 + 1000 ms from start).
    assert!(t < ms(7200));
    hear(&mut e, t, 60, 100);
    assert_eq!(role(&e), Role::Active);
    assert_eq!(observed(&e).transitions_by_cause.get("preempt"), Some(&1));
}

#[test]
fn after_link_up_a_failed_first_check_does_not_end_settling() {
    // The soak found this: right after the link came back the restarted checkers' first probes failed, settling
    // ended at once, and the node preempted as soon as B1 passed its next check, with B2 not back in its table
    // yet: the connections the active peer had sent to B2 were reset.
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 50;
    only(&mut c).services = vec![service("api", 443, &[B1, B2], CheckKind::Http)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    resolve(&mut e, ms(1), &[B1, B2]);
    e.handle(ms(2), check("api", B1, true));
    e.handle(ms(3), check("api", B2, true));
    let t = e.next_deadline().expect("down timer");
    e.handle(t, Event::Timer);
    assert_eq!(role(&e), Role::Active);
    e.handle(t + ms(10), link(false));
    e.handle(t + ms(400), check("api", B1, false));
    e.handle(t + ms(400), check("api", B2, false));
    e.handle(t + ms(2000), link(true));
    for b in [B1, B2] {
        let commands = e.handle(t + ms(2010), check("api", b, false));
        assert!(!logs(&commands).iter().any(|l| l.contains("preemption allowed")), "{commands:?}");
    }
    e.handle(t + ms(2210), check("api", B1, true));
    let after = hear(&mut e, t + ms(2220), 20, 120);
    assert_eq!(role(&e), Role::Backup, "B2 has not passed a check since the link came back");
    assert_eq!(priority(&e), 100);
    let commands = e.handle(after, check("api", B2, true));
    assert!(logs(&commands).iter().any(|l| l == "every backend has been checked: preemption allowed"), "{commands:?}");
    assert_eq!(priority(&e), 150);
    hear(&mut e, after, 10, 120);
    assert_eq!(role(&e), Role::Active);
}

#[test]
fn only_a_link_that_was_down_renews_its_neighbours() {
    let mut e = engine(config(150));
    e.handle(Duration::ZERO, start(true));
    let commands = e.handle(ms(10), link(true));
    assert!(!commands.iter().any(|c| matches!(c, Command::RenewNeighbours(_))), "{commands:?}");
    e.handle(ms(20), link(false));
    let commands = e.handle(ms(30), link(true));
    assert_eq!(commands.iter().filter(|c| matches!(c, Command::RenewNeighbours(_))).count(), 1, "{commands:?}");
}

#[test]
fn link_up_restarts_the_checkers_and_holds_preemption_until_each_has_reported() {
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 50;
    only(&mut c).services = vec![service("api", 443, &[B1, B2], CheckKind::Http)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    resolve(&mut e, ms(1), &[B1, B2]);
    e.handle(ms(2), check("api", B1, true));
    e.handle(ms(3), check("api", B2, true));
    assert_eq!(priority(&e), 150);
    let t = e.next_deadline().expect("down timer");
    e.handle(t, Event::Timer);
    assert_eq!(role(&e), Role::Active);
    // Without a link every check fails.
    e.handle(t + ms(10), link(false));
    e.handle(t + ms(400), check("api", B1, false));
    e.handle(t + ms(400), check("api", B2, false));
    assert_eq!(priority(&e), 100);
    let commands = e.handle(t + ms(2000), link(true));
    let stopped = commands.iter().filter(|c| matches!(c, Command::StopChecker { .. })).count();
    let started = commands.iter().filter(|c| matches!(c, Command::StartChecker { .. })).count();
    assert_eq!((stopped, started), (2, 2), "every checker starts afresh: {commands:?}");
    // Before they do, the entries the failed checks left unresolved are asked for again (else the new checks would
    // wait for the kernel's next ARP retry).
    let renew = commands.iter().position(|c| *c == Command::RenewNeighbours(ETH0.into()));
    let first_checker = commands.iter().position(|c| matches!(c, Command::StopChecker { .. }));
    assert!(renew.is_some() && renew < first_checker, "{commands:?}");
    assert_eq!(role(&e), Role::Backup);
    // B1 answers first: api is usable again, but B2 is not known yet.
    e.handle(t + ms(2010), check("api", B1, true));
    assert_eq!(priority(&e), 100, "still settling");
    let after = hear(&mut e, t + ms(2020), 20, 120);
    assert_eq!(role(&e), Role::Backup, "no preemption with B2 unchecked");
    e.handle(after, check("api", B2, true));
    assert_eq!(priority(&e), 150);
    hear(&mut e, after, 10, 120);
    assert_eq!(role(&e), Role::Active);
}

#[test]
fn a_reload_adding_a_service_keeps_the_priority_until_its_first_check_says_otherwise() {
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 50;
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::Http)];
    let (mut e, t) = active(c.clone());
    resolve(&mut e, t, &[B1, B2]);
    e.handle(t + ms(1), check("api", B1, true));
    assert_eq!(priority(&e), 150);
    let mut new = c;
    only(&mut new).services.push(service("web", 80, &[B2], CheckKind::Http));
    let commands = reload(&mut e, t + ms(10), new);
    assert!(adverts(&commands).is_empty(), "the new backend is not checked yet, not lost: {commands:?}");
    assert_eq!(priority(&e), 150);
    let commands = e.handle(t + ms(20), check("web", B2, false));
    assert_eq!(adverts(&commands), [100], "its first check failed: now web has no usable backend");
    assert!(logs(&commands).iter().any(|l| l == "no usable backend for web"), "{commands:?}");
}

// ----- reload policy -----

fn reload(e: &mut Engine, now: Duration, config: Config) -> Vec<Command> {
    e.handle(now, Event::Reload(Box::new(Ok(config))))
}

#[test]
fn a_reload_with_problems_or_restart_only_changes_keeps_the_running_config() {
    let (mut e, t) = active(config(150));
    let problem = Problem { path: "x.toml".into(), line: 3, col: 1, message: "bad".into() };
    let commands = e.handle(t, Event::Reload(Box::new(Err(vec![problem]))));
    assert_eq!(
        logs(&commands),
        ["x.toml:3:1: bad", "reload refused: the config has 1 problem(s); the running config is kept"]
    );
    for change in [
        (|c: &mut Config| c.conntrack_entries = 1024) as fn(&mut Config),
        |c: &mut Config| c.xdp_mode = config::XdpMode::Generic,
        |c: &mut Config| c.interface = Some(ETH1.into()),
        |c: &mut Config| c.control.socket = "/tmp/other.sock".into(),
    ] {
        let mut new = config(150);
        change(&mut new);
        let commands = reload(&mut e, t, new);
        assert_eq!(commands.len(), 1, "{commands:?}");
        assert!(logs(&commands)[0].starts_with("reload refused: "), "{commands:?}");
        assert!(logs(&commands)[0].contains("needs a restart"), "{commands:?}");
    }
    assert_eq!(e.config().conntrack_entries, 65536);
    assert_eq!(role(&e), Role::Active);
}

#[test]
fn a_reload_beyond_the_data_planes_capacity_is_refused() {
    let (mut e, t) = active(config(150));
    let mut new = config(150);
    only(&mut new).services = (0..9).map(|i| service(&format!("s{i}"), 1000 + i, &[B1], CheckKind::None)).collect();
    let commands = reload(&mut e, t, new);
    assert!(logs(&commands)[0].contains("sized for 8"), "{commands:?}");
    assert!(e.config().instances[0].services.is_empty());
}

#[test]
fn a_reload_applies_services_checkers_priority_and_garp_settings_in_place() {
    let mut c = config(150);
    only(&mut c).services = vec![service("a", 80, &[B1], CheckKind::Tcp), service("b", 6443, &[B2], CheckKind::Tcp)];
    let (mut e, t) = active(c.clone());
    // Ports swapped, a's health settings changed, priority and GARP count changed.
    let mut new = c;
    only(&mut new).services[0].port = 6443;
    only(&mut new).services[1].port = 80;
    only(&mut new).services[0].health.interval_ms = 500;
    only(&mut new).vrrp.priority = 120;
    only(&mut new).vrrp.garp_count = 2;
    let commands = reload(&mut e, t + ms(10), new);
    let Some(Command::Install { services, .. }) = commands.iter().find(|c| matches!(c, Command::Install { .. })) else {
        panic!("{commands:?}")
    };
    let ports: Vec<(&str, u16)> = services.iter().map(|(n, s)| (n.service.as_str(), s.port)).collect();
    assert_eq!(ports, [("a", 6443), ("b", 80)], "the whole set goes to the data plane, which owns the slots");
    let stopped: Vec<_> = commands.iter().filter(|c| matches!(c, Command::StopChecker { .. })).collect();
    let started: Vec<_> = commands.iter().filter(|c| matches!(c, Command::StartChecker { .. })).collect();
    assert_eq!((stopped.len(), started.len()), (1, 1), "only a's checker restarts: {commands:?}");
    assert_eq!(adverts(&commands), [120], "the new priority is advertised at once");
    assert_eq!(e.config().instances[0].vrrp.priority, 120);
    // The new GARP count applies to the next burst.
    e.handle(t + ms(20), packet(PEER, 100, &[VIP]));
    let commands = e.handle(t + ms(200), packet(PEER, 100, &[VIP]));
    assert_eq!(garps(&commands), 2);
}

#[test]
fn a_reload_that_changes_nothing_says_so() {
    let (mut e, t) = active(config(150));
    assert_eq!(logs(&reload(&mut e, t, config(150))), ["reload: nothing changed"]);
}

// ----- stop -----

#[test]
fn stopping_as_active_sends_priority_zero_keeps_answering_until_the_new_active_is_heard() {
    let (mut e, t) = active(config(150));
    let commands = e.handle(t + ms(10), Event::Stop);
    assert_eq!(adverts(&commands), [0]);
    assert!(active_flags(&commands).is_empty(), "still answering during the handover");
    assert_eq!(e.next_deadline(), Some(t + ms(10) + HANDOVER_WAIT));
    // A priority-0 advert from someone else is not a new active router.
    assert!(active_flags(&e.handle(t + ms(20), packet(PEER, 0, &[VIP]))).is_empty());
    let commands = e.handle(t + ms(80), packet(PEER, 100, &[VIP]));
    assert_eq!(active_flags(&commands), [false]);
    assert_eq!(commands.last(), Some(&Command::Exit));
    assert!(logs(&commands).iter().any(|l| l == "handover: 10.0.0.6 is active"));
    assert!(e.exited());
    assert!(e.handle(t + ms(90), Event::Timer).is_empty());
}

#[test]
fn stopping_as_active_with_nobody_to_take_over_waits_at_most_the_handover_time() {
    let (mut e, t) = active(config(150));
    e.handle(t, Event::Stop);
    let commands = run_until(&mut e, t + HANDOVER_WAIT);
    assert_eq!(active_flags(&commands), [false]);
    assert_eq!(commands.last(), Some(&Command::Exit));
}

#[test]
fn stopping_as_backup_exits_at_once_without_an_advert() {
    let mut e = engine(config(100));
    e.handle(Duration::ZERO, start(true));
    let commands = e.handle(ms(10), Event::Stop);
    assert!(adverts(&commands).is_empty());
    assert_eq!(commands.last(), Some(&Command::Exit));
    assert_eq!(e.status(ms(10), 0).role, "initialize");
}

// ----- observed state -----

#[test]
fn observed_state_counts_what_metrics_need() {
    let mut e = engine(config(150));
    e.handle(Duration::ZERO, start(true));
    e.handle(ms(100), packet(PEER, 200, &[VIP]));
    e.handle(ms(150), packet(PEER, 0, &[VIP]));
    let t = e.next_deadline().expect("skew timer");
    e.handle(t, Event::Timer);
    let o = observed(&e);
    assert_eq!(o.role, Role::Active);
    assert_eq!(o.adverts_received, 2);
    assert_eq!(o.transitions_by_cause.get("peer_stopped"), Some(&1));
    assert_eq!(o.transitions_by_cause.get("startup"), Some(&1));
    // Skew time at priority 150 with the peer's 100 ms interval: (256 - 150) * 100 ms / 256.
    assert_eq!(o.last_takeover, Some(Duration::from_nanos(41_406_250)));
    assert_eq!(o.announcements, 5);
    assert_eq!(o.adverts_sent, 1);
}

#[test]
fn a_round_of_neighbour_answers_installs_each_changed_service_once() {
    let mut c = config(150);
    only(&mut c).services =
        vec![service("api", 443, &[B1, B2], CheckKind::None), service("web", 80, &[B1], CheckKind::None)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    let batch = vec![
        (B1, Seen::Mac { ifindex: 2, mac: MAC1 }),
        (B2, Seen::Mac { ifindex: 2, mac: MAC2 }),
        (Ipv4Addr::new(10, 9, 9, 9).into(), Seen::Mac { ifindex: 2, mac: MAC2 }),
    ];
    let commands = e.handle(ms(1), Event::Neighbours(batch));
    assert_eq!(installs(&commands), ["api", "web"], "{commands:?}");
    // Nothing new: nothing to do (the watcher's unresolved addresses flap between pending and failed).
    let commands = e.handle(ms(2), Event::Neighbours(vec![(B1, Seen::Pending { ifindex: 2 })]));
    assert!(commands.is_empty(), "{commands:?}");
}

// ----- several instances -----

const VIP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 251);
const VIP3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 252);

/// Instance `a` (VRID 51, VIP) and `b` (VRID 52, VIP2 and VIP3) on eth0, both at priority 150.
fn two() -> Config {
    node(vec![instance("a", 51, &[VIP], 150), instance("b", 52, &[VIP2, VIP3], 150)])
}

fn flags_of(commands: &[Command], router: u32) -> Vec<bool> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::SetActive { router: r, active } if *r == router => Some(*active),
            _ => None,
        })
        .collect()
}

fn both_active() -> (Engine, Duration) {
    let mut e = engine(two());
    e.handle(Duration::ZERO, start(true));
    let commands = run_until(&mut e, ms(1000));
    assert_eq!((e.role("a"), e.role("b")), (Some(Role::Active), Some(Role::Active)), "{commands:?}");
    (e, ms(1000))
}

#[test]
fn instances_have_their_own_routers_addresses_and_seeds() {
    let mut e = engine(two());
    let (ra, rb) = (e.router("a").expect("a"), e.router("b").expect("b"));
    assert_ne!(ra, rb);
    let commands = e.handle(Duration::ZERO, start(true));
    let Command::Install { vips, .. } = &commands[0] else { panic!("{commands:?}") };
    let got: Vec<(Ipv4Addr, u32, u32)> = vips.iter().map(|v| (v.address, v.router, v.hash_seed)).collect();
    assert_eq!(
        got,
        [
            (VIP, ra, lb_common::group_seed(VIP.octets(), 51)),
            (VIP2, rb, lb_common::group_seed(VIP2.octets(), 52)),
            (VIP3, rb, lb_common::group_seed(VIP3.octets(), 52)),
        ]
    );
    let commands = run_until(&mut e, ms(1000));
    // Each advert carries its own instance's VRID and every one of its addresses.
    let sent: Vec<(u8, Vec<Ipv4Addr>)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::SendAdvert { advert, .. } => Some((advert.vrid, advert.addresses.clone())),
            _ => None,
        })
        .collect();
    assert!(sent.contains(&(51, vec![VIP])) && sent.contains(&(52, vec![VIP2, VIP3])), "{sent:?}");
    let garps: Vec<Vec<Ipv4Addr>> = commands
        .iter()
        .filter_map(|c| if let Command::SendGarps { addresses, .. } = c { Some(addresses.clone()) } else { None })
        .collect();
    assert!(garps.contains(&vec![VIP2, VIP3]), "GARPs for every address of b: {garps:?}");
}

#[test]
fn a_higher_peer_for_one_instance_moves_only_that_instance() {
    let (mut e, t) = both_active();
    let (ra, rb) = (e.router("a").expect("a"), e.router("b").expect("b"));
    let commands = e.handle(t, packet_with(PEER, 52, 200, &[VIP2, VIP3], ChecksumMode::PseudoHeader));
    assert_eq!(e.role("b"), Some(Role::Backup));
    assert_eq!(e.role("a"), Some(Role::Active), "a is untouched");
    assert_eq!(flags_of(&commands, rb), [false]);
    assert!(flags_of(&commands, ra).is_empty(), "{commands:?}");
    // a's adverts go on; b waits for its peer (less than its down interval, 341 ms, here).
    let later = run_until(&mut e, t + ms(300));
    assert!(later.iter().all(|c| !matches!(c, Command::SendAdvert { advert, .. } if advert.vrid == 52)));
    assert!(later.iter().any(|c| matches!(c, Command::SendAdvert { advert, .. } if advert.vrid == 51)));
}

#[test]
fn a_packet_for_a_vrid_no_instance_has_is_discarded_without_touching_any() {
    let (mut e, t) = both_active();
    let commands = e.handle(t, packet_with(PEER, 99, 200, &[VIP], ChecksumMode::PseudoHeader));
    assert!(active_flags(&commands).is_empty(), "{commands:?}");
    assert_eq!((e.role("a"), e.role("b")), (Some(Role::Active), Some(Role::Active)));
}

#[test]
fn a_link_down_faults_only_the_instances_on_that_interface() {
    let mut c = two();
    c.instances[1].interface = ETH1.into();
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    run_until(&mut e, ms(1000));
    let rb = e.router("b").expect("b");
    let commands = e.handle(ms(1000), Event::Link { interface: ETH1.into(), up: false });
    assert_eq!((e.role("a"), e.role("b")), (Some(Role::Active), Some(Role::Fault)));
    assert_eq!(active_flags(&commands), [false]);
    assert_eq!(flags_of(&commands, rb), [false]);
}

#[test]
fn a_link_coming_back_restarts_and_settles_only_the_instances_on_that_interface() {
    let mut c = two();
    c.instances[1].interface = ETH1.into();
    for i in &mut c.instances {
        i.vrrp.backend_loss_penalty = 50;
        i.services = vec![service("api", 443, &[B1], CheckKind::Http)];
    }
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    e.handle(ms(1), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    for name in ["a", "b"] {
        let id = ServiceId::new(name, "api");
        e.handle(ms(2), Event::Health { id, backend: (B1, 6443), healthy: true, reason: "ok".into() });
    }
    assert_eq!((e.effective_priority("a"), e.effective_priority("b")), (Some(150), Some(150)));
    e.handle(ms(1000), Event::Link { interface: ETH1.into(), up: false });
    let commands = e.handle(ms(2000), Event::Link { interface: ETH1.into(), up: true });
    let restarted: Vec<(&str, &str)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::StopChecker { id, .. } => Some(("stop", id.instance.as_str())),
            Command::StartChecker { id, .. } => Some(("start", id.instance.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(restarted, [("stop", "b"), ("start", "b")], "only b's checkers start afresh: {commands:?}");
    assert_eq!(e.effective_priority("b"), Some(100), "b settles again");
    assert_eq!(e.effective_priority("a"), Some(150), "a's link never went: it does not settle");
    let id = ServiceId::new("b", "api");
    let commands = e.handle(ms(2010), Event::Health { id, backend: (B1, 6443), healthy: true, reason: "ok".into() });
    assert!(
        logs(&commands).iter().any(|l| l == "instance b: every backend has been checked: preemption allowed"),
        "{commands:?}"
    );
    assert_eq!(e.effective_priority("b"), Some(150));
}

#[test]
fn a_reload_adds_and_removes_instances_leaving_the_others_alone() {
    let (mut e, t) = both_active();
    let ra = e.router("a").expect("a");
    let rb = e.router("b").expect("b");
    let a_transitions = observed_of(&e, "a").transitions;
    // b leaves: a priority-0 advert for it, its flag cleared; a sees nothing.
    let commands = reload(&mut e, t, node(vec![instance("a", 51, &[VIP], 150)]));
    assert!(logs(&commands).iter().any(|l| l.contains("instances removed: b")), "{commands:?}");
    assert_eq!(flags_of(&commands, rb), [false]);
    assert!(flags_of(&commands, ra).is_empty(), "{commands:?}");
    let priorities: Vec<(u8, u8)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::SendAdvert { advert, .. } => Some((advert.vrid, advert.priority)),
            _ => None,
        })
        .collect();
    assert_eq!(priorities, [(52, 0)], "only b says goodbye");
    let Some(Command::Install { vips, .. }) = commands.iter().find(|c| matches!(c, Command::Install { .. })) else {
        panic!("{commands:?}")
    };
    assert_eq!(vips.iter().map(|v| v.address).collect::<Vec<_>>(), [VIP]);
    assert_eq!(e.role("b"), None);
    // c joins as a backup and becomes active by its own down timer, on a slot other than b's (freed last).
    let commands =
        reload(&mut e, t + ms(10), node(vec![instance("a", 51, &[VIP], 150), instance("c", 53, &[VIP2], 150)]));
    assert!(logs(&commands).iter().any(|l| l.contains("instances added: c")), "{commands:?}");
    assert!(flags_of(&commands, ra).is_empty(), "{commands:?}");
    let rc = e.router("c").expect("c");
    assert_ne!(rc, rb, "a freed slot is reused as late as possible");
    assert_eq!(e.role("c"), Some(Role::Backup));
    run_until(&mut e, t + ms(1000));
    assert_eq!((e.role("a"), e.role("c")), (Some(Role::Active), Some(Role::Active)));
    assert_eq!(observed_of(&e, "a").transitions, a_transitions, "a never changed role");
}

#[test]
fn a_reload_that_changes_an_instances_vrid_replaces_only_that_instance() {
    let (mut e, t) = both_active();
    let ra = e.router("a").expect("a");
    let commands = reload(&mut e, t, node(vec![instance("a", 51, &[VIP], 150), instance("b", 60, &[VIP2, VIP3], 150)]));
    assert!(logs(&commands).iter().any(|l| l.contains("instance b replaced (vrrp.vrid changed)")), "{commands:?}");
    assert!(flags_of(&commands, ra).is_empty(), "{commands:?}");
    assert_eq!(e.role("b"), Some(Role::Backup), "b starts again");
    assert_eq!(e.role("a"), Some(Role::Active));
}

fn observed_of<'e>(e: &'e Engine, name: &str) -> &'e RouterObserved {
    &e.observed(name).expect("instance").router
}

#[test]
fn a_reload_cannot_add_a_multicast_instance_where_no_socket_joined_the_group_or_a_new_interface() {
    let mut unicast = instance("a", 51, &[VIP], 150);
    unicast.vrrp.unicast_peers = vec![PEER];
    let mut e = engine(node(vec![unicast.clone()]));
    e.handle(Duration::ZERO, start(true));
    let commands = reload(&mut e, ms(10), node(vec![unicast.clone(), instance("b", 52, &[VIP2], 150)]));
    assert!(logs(&commands)[0].contains("advertises by multicast on eth0"), "{commands:?}");
    assert_eq!(e.role("b"), None, "the running config is kept");
    let mut elsewhere = instance("c", 53, &[VIP3], 150);
    elsewhere.interface = "eth9".into();
    elsewhere.vrrp.unicast_peers = vec![PEER];
    let commands = reload(&mut e, ms(20), node(vec![unicast, elsewhere]));
    assert!(logs(&commands)[0].contains("restart xvip to add an interface"), "{commands:?}");
    assert_eq!(e.role("c"), None);
}

// ----- flow state across active periods -----

fn forgotten(commands: &[Command]) -> Vec<Vec<IpAddr>> {
    commands.iter().filter_map(|c| if let Command::ForgetFlows(v) = c { Some(v.clone()) } else { None }).collect()
}

#[test]
fn leaving_active_forgets_the_flows_of_its_addresses_and_nothing_else_does() {
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 251);
    let mut c = config(150);
    only(&mut c).vip.addresses = vec![IpAddr::V4(VIP), IpAddr::V4(VIP2)];
    let mut e = engine(c);
    let mut commands = e.handle(Duration::ZERO, start(true));
    let t = e.next_deadline().expect("down timer");
    commands.extend(e.handle(t, Event::Timer));
    assert_eq!(role(&e), Role::Active);
    assert!(forgotten(&commands).is_empty(), "starting and becoming active keep the (empty) tables: {commands:?}");

    // Preempted by a higher priority: the peer carries the flows from now on.
    let commands = e.handle(t + ms(50), packet(PEER, 200, &[VIP, VIP2]));
    assert_eq!(role(&e), Role::Backup);
    assert_eq!(forgotten(&commands), [vec![VIP, VIP2]]);

    // Backup to fault and back: it was not active, nothing to forget.
    let mut commands = e.handle(t + ms(100), link(false));
    commands.extend(e.handle(t + ms(200), link(true)));
    assert!(forgotten(&commands).is_empty(), "{commands:?}");

    // Active again (the peer went silent), then a link loss: forgotten again.
    let commands = run_until(&mut e, t + ms(2000));
    assert_eq!(role(&e), Role::Active, "{commands:?}");
    assert!(forgotten(&commands).is_empty());
    let commands = e.handle(t + ms(2010), link(false));
    assert_eq!(role(&e), Role::Fault);
    assert_eq!(forgotten(&commands), [vec![VIP, VIP2]]);
}

#[test]
fn a_stopping_node_does_not_spend_its_exit_on_forgetting() {
    let (mut e, t) = active(config(150));
    let mut commands = e.handle(t + ms(10), Event::Stop);
    commands.extend(run_until(&mut e, t + ms(5000)));
    assert!(commands.contains(&Command::Exit), "{commands:?}");
    assert!(forgotten(&commands).is_empty(), "{commands:?}");
}

#[test]
fn settling_waits_for_the_mac_of_a_backend_that_passed() {
    // The soak found this: after its link came back a node passed every check, but one backend's neighbour entry
    // (flushed with the link) was still being resolved, so its table lacked that backend when it preempted, and
    // the connections the active peer had sent there were reset.
    let mut c = config(150);
    only(&mut c).vrrp.backend_loss_penalty = 50;
    only(&mut c).services = vec![service("api", 443, &[B1, B2], CheckKind::Http)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    resolve(&mut e, ms(1), &[B1]);
    e.handle(ms(2), check("api", B1, true));
    let commands = e.handle(ms(3), check("api", B2, true));
    assert!(!logs(&commands).iter().any(|l| l.contains("preemption allowed")), "{commands:?}");
    let t = hear(&mut e, ms(10), 3, 100);
    assert_eq!(role(&e), Role::Backup, "B2 passed but is not in the tables yet: no preemption");
    assert_eq!(priority(&e), 100);
    let commands = e.handle(t, Event::Neighbour { address: B2, seen: Seen::Mac { ifindex: 2, mac: MAC2 } });
    assert!(logs(&commands).iter().any(|l| l == "every backend has been checked: preemption allowed"), "{commands:?}");
    assert_eq!(priority(&e), 150);
    hear(&mut e, t, 10, 120);
    assert_eq!(role(&e), Role::Active);
}

#[test]
fn an_active_node_announces_its_vip_when_a_nat_backend_comes_back() {
    // The soak found this: a backend whose link came back still had the VIP's neighbour entry it began to
    // resolve while cut off, and held its SYN/ACKs until its next ARP retry (up to a second later): the new
    // connections sent to it failed. A gratuitous ARP from the active node completes that entry.
    let mut c = config(150);
    let mut dsr = service("dns", 53, &[B2], CheckKind::Tcp);
    dsr.forwarding = Forwarding::Dsr;
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::Http), dsr];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    resolve(&mut e, ms(1), &[B1, B2]);
    e.handle(ms(2), check("api", B1, true));
    e.handle(ms(3), check("dns", B2, true));
    let t = e.next_deadline().expect("down timer");
    e.handle(t, Event::Timer);
    assert_eq!(role(&e), Role::Active);
    let garp_count = only(&mut config(150)).vrrp.garp_count;
    assert!(garp_count > 0);
    assert_eq!(garps(&e.handle(t + ms(100), check("api", B1, false))), 0, "going down announces nothing");
    assert_eq!(garps(&e.handle(t + ms(200), check("api", B1, true))), garp_count, "back: announced");
    assert_eq!(garps(&e.handle(t + ms(300), check("api", B1, true))), 0, "no change, nothing to announce");
    e.handle(t + ms(400), check("dns", B2, false));
    assert_eq!(garps(&e.handle(t + ms(500), check("dns", B2, true))), 0, "a DSR backend never sends to the VIP");

    // A backup has nothing to announce.
    e.handle(t + ms(600), packet(PEER, 200, &[VIP]));
    assert_eq!(role(&e), Role::Backup);
    e.handle(t + ms(700), check("api", B1, false));
    assert_eq!(garps(&e.handle(t + ms(800), check("api", B1, true))), 0);
}

#[test]
fn a_backend_at_one_of_the_nodes_own_addresses_is_usable_through_the_nodes_interface() {
    // A stacked node: the neighbour worker reports the backend as local (its route is a `local` one), with the
    // MAC of the interface holding the address; the engine installs it on interface 0 (the node's own, no other
    // interface gets the programs) and counts it as resolved.
    let mut c = config(150);
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::None)];
    let mut e = engine(c);
    e.handle(Duration::ZERO, start(true));
    let commands = e.handle(ms(10), Event::Neighbour { address: B1, seen: Seen::Local { mac: MAC1 } });
    assert_eq!(installs(&commands), ["api"]);
    let spec = commands
        .iter()
        .find_map(|c| if let Command::InstallService { spec, .. } = c { Some(spec) } else { None })
        .expect("an install");
    assert_eq!((spec.backends[0].mac, spec.backends[0].ifindex), (Some(MAC1), 0));
    assert!(logs(&commands).iter().any(|l| l.contains("is this node")), "{commands:?}");
    // Reported again: nothing changes, nothing is logged.
    let commands = e.handle(ms(20), Event::Neighbour { address: B1, seen: Seen::Local { mac: MAC1 } });
    assert!(installs(&commands).is_empty() && logs(&commands).is_empty(), "{commands:?}");
}

// ----- IPv6: one router per address family -----

const LL_ME: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);
const LL_PEER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 6);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x250);

/// An instance on eth0 whose addresses are `v4` and `v6`.
fn dual(v4: &[Ipv4Addr], v6: &[Ipv6Addr], priority: u8) -> Config {
    let mut c = instance(config::DEFAULT_INSTANCE, 51, v4, priority);
    c.vip.addresses.extend(v6.iter().map(|a| IpAddr::V6(*a)));
    node(vec![c])
}

fn engine6(config: Config) -> Engine {
    Engine::with_link_locals(config, interfaces(), [(ETH0.to_owned(), LL_ME)].into(), 8).expect("engine")
}

/// An IPv6 advert as the IPv6 socket of eth0 delivers it.
fn packet6(src: Ipv6Addr, priority: u8, addresses: &[Ipv6Addr], hop_limit: u8) -> Event {
    let advert = Advert { vrid: 51, priority, max_adver_int: 10, addresses: addresses.to_vec() };
    let message = advert.to_bytes(src, packet::MULTICAST_GROUP_V6, ChecksumMode::PseudoHeader).expect("encode");
    Event::Packet6 {
        interface: ETH0.into(),
        datagram: Datagram { message, src, dst: packet::MULTICAST_GROUP_V6, hop_limit },
    }
}

fn adverts6(commands: &[Command]) -> Vec<(Ipv6Addr, u8, Vec<Ipv6Addr>)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::SendAdvert6 { source, advert, .. } => Some((*source, advert.priority, advert.addresses.clone())),
            _ => None,
        })
        .collect()
}

fn set_active(commands: &[Command]) -> Vec<(u32, bool)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::SetActive { router, active } => Some((*router, *active)),
            _ => None,
        })
        .collect()
}

fn role6(e: &Engine) -> Option<Role> {
    e.find(config::DEFAULT_INSTANCE).and_then(Instance::role6)
}

#[test]
fn a_mixed_instance_runs_one_router_per_family() {
    let mut e = engine6(dual(&[VIP], &[VIP6], 150));
    let start = e.handle(ms(0), start(true));
    assert!(
        start.contains(&Command::InstallVips6(vec![Vip6Spec {
            address: VIP6,
            router: 1,
            hash_seed: lb_common::group_seed6(VIP6.octets(), 51),
            interface: Some(ETH0.into())
        }])),
        "{start:?}"
    );
    assert_eq!((role(&e), role6(&e)), (Role::Backup, Some(Role::Backup)));
    // Both down timers run out together (same priority and timers): both become active, each with its flag.
    let deadline = e.next_deadline().expect("a down timer");
    let took = e.handle(deadline, Event::Timer);
    assert_eq!((role(&e), role6(&e)), (Role::Active, Some(Role::Active)));
    assert_eq!(set_active(&took), [(1, true), (0, true)]);
    assert_eq!(adverts(&took), [150]);
    assert_eq!(adverts6(&took), [(LL_ME, 150, vec![VIP6])]);
    assert!(
        took.iter()
            .any(|c| matches!(c, Command::SendUnsolicitedNas { addresses, count: 5, .. } if *addresses == [VIP6]))
    );
    assert!(took.iter().any(|c| matches!(c, Command::Log(_, l) if l.starts_with("IPv6 role -> active:"))), "{took:?}");
    // The IPv4 advert carries only the IPv4 address.
    assert!(took.iter().any(|c| matches!(c, Command::SendAdvert { advert, .. } if advert.addresses == [VIP])));
}

#[test]
fn the_ipv6_router_is_elected_on_its_own() {
    let mut e = engine6(dual(&[VIP], &[VIP6], 100));
    e.handle(ms(0), start(true));
    let deadline = e.next_deadline().expect("a down timer");
    e.handle(deadline, Event::Timer);
    // A higher priority for the IPv6 group only: the IPv6 router steps down, the IPv4 one stays.
    let out = e.handle(deadline + ms(5), packet6(LL_PEER, 200, &[VIP6], 255));
    assert_eq!((role(&e), role6(&e)), (Role::Active, Some(Role::Backup)));
    assert_eq!(set_active(&out), [(1, false)]);
    assert_eq!(forgotten(&out), [vec![IpAddr::V6(VIP6)]], "the IPv6 VIPs' flows only");
    let status = e.status(deadline + ms(5), 0);
    let v6 = status.instances[0].ipv6.clone().expect("the IPv6 router in status");
    assert_eq!((v6.role.as_str(), v6.active_router.as_deref()), ("backup", Some("fe80::6")));
    assert_eq!(v6.source, "fe80::5");
    assert_eq!(status.role, "active");
    // Off-link (hop limit below 255): discarded, counted, nothing changes.
    let before = e.status(deadline + ms(6), 0).instances[0].ipv6.clone().expect("v6").adverts_discarded;
    let out = e.handle(deadline + ms(6), packet6(LL_PEER, 0, &[VIP6], 64));
    assert!(set_active(&out).is_empty());
    let after = e.status(deadline + ms(6), 0).instances[0].ipv6.clone().expect("v6").adverts_discarded;
    assert_eq!(after, before + 1);
    // Its peer stops (priority 0): it takes over after the skew time, the IPv4 router untouched.
    e.handle(deadline + ms(20), packet6(LL_PEER, 0, &[VIP6], 255));
    let next = e.next_deadline().expect("skew timer");
    let out = e.handle(next, Event::Timer);
    assert_eq!(role6(&e), Some(Role::Active));
    assert!(set_active(&out).contains(&(1, true)), "{out:?}");
    assert!(forgotten(&out).is_empty(), "becoming active forgets nothing");
}

#[test]
fn an_ipv6_only_instance_is_its_ipv6_router() {
    let mut e = engine6(dual(&[], &[VIP6], 150));
    let start = e.handle(ms(0), start(true));
    assert!(adverts(&start).is_empty());
    let deadline = e.next_deadline().expect("a down timer");
    let took = e.handle(deadline, Event::Timer);
    assert_eq!(role(&e), Role::Active);
    assert_eq!(set_active(&took), [(1, true)]);
    assert!(adverts(&took).is_empty(), "no IPv4 advert without IPv4 addresses");
    // An off-link advert: discarded, counted by reason in the instance's counters too.
    e.handle(deadline + ms(1), packet6(LL_PEER, 100, &[VIP6], 64));
    let status = e.status(deadline, 0);
    assert_eq!((status.role.as_str(), status.active_router.as_deref()), ("active", Some("fe80::5")));
    assert_eq!(status.counters.adverts_discarded_by_reason.get("ttl"), Some(&1), "{:?}", status.counters);
    // A stop sends the IPv6 priority-0 advert and answers until a new active router is heard, as for IPv4.
    let stop = e.handle(deadline + ms(50), Event::Stop);
    assert_eq!(adverts6(&stop), [(LL_ME, 0, vec![VIP6])]);
    assert!(!set_active(&stop).contains(&(1, false)), "{stop:?}");
    assert!(!e.exited());
    let out = e.handle(deadline + ms(90), packet6(LL_PEER, 100, &[VIP6], 255));
    assert!(set_active(&out).contains(&(1, false)), "{out:?}");
    assert_eq!(out.last(), Some(&Command::Exit));
    assert!(e.exited());
}

fn nas(commands: &[Command]) -> u32 {
    commands.iter().map(|c| if let Command::SendUnsolicitedNas { count, .. } = c { *count } else { 0 }).sum()
}

#[test]
fn the_ipv6_router_repeats_its_unsolicited_nas_on_the_garp_schedule() {
    // garp_count 5, garp_repeat_delay_ms 1000, no refresh.
    let mut e = engine6(dual(&[VIP], &[VIP6], 150));
    e.handle(ms(0), start(true));
    let t = e.next_deadline().expect("a down timer");
    let took = e.handle(t, Event::Timer);
    assert_eq!((nas(&took), garps(&took)), (5, 5));
    // The second burst garp_repeat_delay_ms later, with the IPv4 one, and no third.
    assert_eq!(e.next_deadline().map(|d| d <= t + ms(1000)), Some(true));
    let repeat = run_until(&mut e, t + ms(999));
    assert_eq!(nas(&repeat), 0);
    let repeat = run_until(&mut e, t + ms(3000));
    assert_eq!((nas(&repeat), garps(&repeat)), (5, 5));
    let v6 = e.status(t + ms(3000), 0).instances[0].ipv6.clone().expect("v6");
    assert_eq!(v6.nas_sent, 10);
}

#[test]
fn the_ipv6_router_refreshes_its_unsolicited_nas_while_active_and_stops_when_not() {
    let mut c = dual(&[], &[VIP6], 150);
    only(&mut c).vrrp.garp_refresh_ms = 500;
    only(&mut c).vrrp.garp_repeat_delay_ms = 0;
    let mut e = engine6(c);
    e.handle(ms(0), start(true));
    let t = e.next_deadline().expect("a down timer");
    assert_eq!(nas(&e.handle(t, Event::Timer)), 5);
    let refreshes = run_until(&mut e, t + ms(2050));
    assert_eq!(nas(&refreshes), 4 * 5, "refreshes at +0.5, +1, +1.5, +2 s");
    // A reload to another period applies at once.
    let mut slower = dual(&[], &[VIP6], 150);
    slower.instances[0].vrrp.garp_refresh_ms = 2000;
    slower.instances[0].vrrp.garp_repeat_delay_ms = 0;
    e.handle(t + ms(2100), Event::Reload(Box::new(Ok(slower))));
    assert_eq!(nas(&run_until(&mut e, t + ms(4050))), 0, "next refresh at +4.1 s");
    assert_eq!(nas(&run_until(&mut e, t + ms(4150))), 5);
    // Preempted by a higher priority that goes on advertising: a backup announces nothing (an active router
    // would have refreshed at +6.15 s).
    let mut backup = Vec::new();
    for k in 0..25 {
        let at = t + ms(4200 + k * 100);
        backup.extend(e.handle(at, packet6(LL_PEER, 200, &[VIP6], 255)));
        backup.extend(run_until(&mut e, at + ms(99)));
        assert_eq!(role6(&e), Some(Role::Backup));
    }
    assert_eq!(nas(&backup), 0);
}

#[test]
fn stopping_hands_over_each_active_router_of_an_instance_on_its_own() {
    let mut e = engine6(dual(&[VIP], &[VIP6], 150));
    e.handle(ms(0), start(true));
    let t = e.next_deadline().expect("a down timer");
    e.handle(t, Event::Timer);
    assert_eq!((role(&e), role6(&e)), (Role::Active, Some(Role::Active)));
    let stop = e.handle(t + ms(10), Event::Stop);
    assert_eq!(adverts(&stop), [0]);
    assert_eq!(adverts6(&stop), [(LL_ME, 0, vec![VIP6])]);
    assert!(set_active(&stop).is_empty(), "both keep answering during the handover: {stop:?}");
    assert_eq!(e.next_deadline(), Some(t + ms(10) + HANDOVER_WAIT));
    // The IPv4 peer announces itself: only the IPv4 router stops answering.
    let out = e.handle(t + ms(50), packet(PEER, 100, &[VIP]));
    assert_eq!(set_active(&out), [(0, false)]);
    assert!(!e.exited());
    // An IPv6 priority-0 advert is another router stopping, not a new active one.
    assert!(set_active(&e.handle(t + ms(60), packet6(LL_PEER, 0, &[VIP6], 255))).is_empty());
    // Nor is an off-link one (discarded by the checks).
    assert!(set_active(&e.handle(t + ms(65), packet6(LL_PEER, 100, &[VIP6], 64))).is_empty());
    let out = e.handle(t + ms(70), packet6(LL_PEER, 100, &[VIP6], 255));
    assert_eq!(set_active(&out), [(1, false)]);
    assert!(logs(&out).iter().any(|l| l == "IPv6 handover: fe80::6 is active"), "{out:?}");
    assert!(logs(&out).iter().any(|l| l == "IPv6 role -> initialize: stopping"), "{out:?}");
    assert_eq!(out.last(), Some(&Command::Exit));
    assert!(e.exited());
}

#[test]
fn a_stopping_ipv6_router_with_nobody_to_take_over_waits_at_most_the_handover_time() {
    let mut e = engine6(dual(&[VIP], &[VIP6], 100));
    e.handle(ms(0), start(true));
    let t = e.next_deadline().expect("a down timer");
    e.handle(t, Event::Timer);
    // The IPv4 group has a higher peer: only the IPv6 router is active when the stop comes.
    e.handle(t + ms(5), packet(PEER, 200, &[VIP]));
    assert_eq!((role(&e), role6(&e)), (Role::Backup, Some(Role::Active)));
    let stop = e.handle(t + ms(10), Event::Stop);
    assert_eq!(adverts(&stop), Vec::<u8>::new());
    assert_eq!(adverts6(&stop).len(), 1);
    assert!(!set_active(&stop).contains(&(1, false)), "{stop:?}");
    let out = run_until(&mut e, t + ms(10) + HANDOVER_WAIT);
    assert!(set_active(&out).contains(&(1, false)), "{out:?}");
    assert_eq!(out.last(), Some(&Command::Exit));
}

#[test]
fn a_backup_ipv6_router_stops_at_once() {
    let mut e = engine6(dual(&[VIP], &[VIP6], 150));
    e.handle(ms(0), start(true));
    let t = e.next_deadline().expect("a down timer");
    e.handle(t, Event::Timer);
    e.handle(t + ms(5), packet6(LL_PEER, 200, &[VIP6], 255));
    assert_eq!((role(&e), role6(&e)), (Role::Active, Some(Role::Backup)));
    let stop = e.handle(t + ms(10), Event::Stop);
    assert!(adverts6(&stop).is_empty(), "{stop:?}");
    assert_eq!(set_active(&stop), [(1, false)], "the IPv4 router hands over, the IPv6 one is done");
    assert_eq!(role6(&e), Some(Role::Initialize));
}

#[test]
fn an_instance_with_ipv6_addresses_needs_an_ipv6_source() {
    let err = Engine::new(dual(&[VIP], &[VIP6], 150), interfaces(), 8).expect_err("no link-local address");
    assert!(matches!(err, Error::NoSource6 { .. }), "{err}");
    let mut config = dual(&[VIP], &[VIP6], 150);
    only(&mut config).vrrp.source_address6 = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));
    let mut e = Engine::new(config, interfaces(), 8).expect("the configured source");
    e.handle(ms(0), start(true));
    let deadline = e.next_deadline().expect("a down timer");
    let took = e.handle(deadline, Event::Timer);
    assert_eq!(adverts6(&took)[0].0, Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));
}

#[test]
fn a_reload_in_place_reaches_the_ipv6_router() {
    let mut e = engine6(dual(&[VIP], &[VIP6], 150));
    e.handle(ms(0), start(true));
    let mut changed = dual(&[VIP], &[VIP6], 150);
    only(&mut changed).vrrp.garp_count = 2;
    e.handle(ms(10), Event::Reload(Box::new(Ok(changed))));
    let deadline = e.next_deadline().expect("a down timer");
    let took = e.handle(deadline, Event::Timer);
    let nas: Vec<u32> = took
        .iter()
        .filter_map(|c| if let Command::SendUnsolicitedNas { count, .. } = c { Some(*count) } else { None })
        .collect();
    assert_eq!(nas, [2]);
}

#[test]
fn a_reload_that_needs_an_ipv6_socket_not_opened_at_start_is_refused() {
    let mut e = engine6(config(150));
    e.handle(ms(0), start(true));
    let out = e.handle(ms(10), Event::Reload(Box::new(Ok(dual(&[VIP], &[VIP6], 150)))));
    assert!(
        out.iter().any(|c| matches!(c, Command::Log(Level::Error, l)
            if l.contains("reload refused") && l.contains("no IPv6 VRRP socket there"))),
        "{out:?}"
    );
    assert!(role6(&e).is_none(), "the running config is kept");
    // Started with IPv6 by multicast: a reload to IPv6 unicast peers is fine, back to multicast is fine too.
    let mut e = engine6(dual(&[VIP], &[VIP6], 150));
    e.handle(ms(0), start(true));
    let mut unicast = dual(&[VIP], &[VIP6], 150);
    only(&mut unicast).vrrp.unicast_peers6 = vec![LL_PEER];
    let out = e.handle(ms(10), Event::Reload(Box::new(Ok(unicast.clone()))));
    assert!(!out.iter().any(|c| matches!(c, Command::Log(Level::Error, _))), "{out:?}");
    assert_eq!(role6(&e), Some(Role::Backup));
    // Started with IPv6 unicast only: the socket did not join ff02::12, so multicast needs a restart.
    let mut e = engine6(unicast);
    e.handle(ms(0), start(true));
    let out = e.handle(ms(10), Event::Reload(Box::new(Ok(dual(&[VIP], &[VIP6], 150)))));
    assert!(
        out.iter().any(|c| matches!(c, Command::Log(Level::Error, l) if l.contains("did not join ff02::12"))),
        "{out:?}"
    );
}

#[test]
fn a_stalled_ipv6_router_rejoins_as_a_backup() {
    let mut e = engine6(dual(&[], &[VIP6], 150));
    e.handle(ms(0), start(true));
    let deadline = e.next_deadline().expect("a down timer");
    e.handle(deadline, Event::Timer);
    assert_eq!(role6(&e), Some(Role::Active));
    // Not scheduled for 1 s (10 intervals): its peers have taken over; it must not answer next to them.
    let out = e.handle(deadline + ms(1000), Event::Timer);
    assert_eq!(role6(&e), Some(Role::Backup));
    assert!(set_active(&out).contains(&(1, false)), "{out:?}");
    assert!(out.iter().any(|c| matches!(c, Command::Log(_, l) if l.contains("IPv6 role -> backup: no advert sent"))));
}

#[test]
fn the_ipv6_router_advertises_the_penalised_priority_too() {
    let mut c = dual(&[VIP], &[VIP6], 150);
    only(&mut c).vrrp.backend_loss_penalty = 100;
    only(&mut c).services = vec![service("api", 443, &[B1], CheckKind::Tcp)];
    let mut e = engine6(c);
    e.handle(ms(0), start(true));
    let deadline = e.next_deadline().expect("a timer");
    let out = e.handle(deadline, Event::Timer);
    // Penalised while its backend is unchecked: both routers advertise priority 50.
    assert_eq!(adverts(&out), [50]);
    assert_eq!(adverts6(&out).iter().map(|a| a.1).collect::<Vec<_>>(), [50]);
    e.handle(deadline + ms(4), Event::Neighbour { address: B1, seen: Seen::Mac { ifindex: 2, mac: MAC1 } });
    let out = e.handle(deadline + ms(5), health("api", (B1, 6443), true, "connected"));
    assert!(adverts6(&out).iter().all(|a| a.1 == 150), "{out:?}");
    assert!(!adverts6(&out).is_empty(), "the new priority is advertised at once: {out:?}");
}
