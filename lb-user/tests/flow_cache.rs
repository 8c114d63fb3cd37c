//! BPF_PROG_TEST_RUN fixtures for the per-CPU flow cache in front of `CONNTRACK` (`lb-ebpf/src/flow_cache.rs`):
//! which pin a DSR packet follows when the cache and the connection table disagree. Needs root.
//!
//! A cache entry is served for `FLOW_CACHE_REFRESH_NS` (100 ms) after it was written; the fixtures that need an
//! entry to be still fresh when a packet arrives check how long the steps in between took, and start over with
//! another flow when the machine was too slow to tell (`fresh_enough`).
mod support;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{FLOW_CACHE_REFRESH_NS, FORWARD_DSR, FlowKey, PROTO_TCP, Reason, flow_cache_slot, group_seed};
use support::fixture::{self, BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, VRID, XDP_TX, run};
use support::frames::{self, TCP_ACK, TCP_SYN};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec};

fn dataplane(conntrack_entries: u32) -> DataPlane {
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 2, conntrack_entries, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    dp.set_active(true).expect("set_active");
    dp
}

/// The web service on port 80 over the three backends, each with `weight` (0: draining, its pins kept) and health.
fn web(backends: [(u8, bool); 3]) -> ServiceSpec {
    ServiceSpec {
        addresses: vec![VIP.into()],
        port: 80,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: (0..3)
            .map(|i| BackendSpec {
                address: BACKENDS[i].0.into(),
                port: 80,
                weight: backends[i].0,
                healthy: backends[i].1,
                mac: Some(BACKENDS[i].1),
                ifindex: 0,
            })
            .collect(),
    }
}

const ALL_UP: [(u8, bool); 3] = [(1, true); 3];

fn with_web(conntrack_entries: u32) -> DataPlane {
    let mut dp = dataplane(conntrack_entries);
    dp.apply_service("web", &web(ALL_UP)).expect("apply_service");
    dp
}

fn tcp(sport: u16, flags: u8) -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, 80, flags, b"GET / HTTP/1.1\r\n\r\n")
}

fn key(sport: u16) -> FlowKey {
    FlowKey::new(CLIENT.octets(), VIP.octets(), sport.to_be_bytes(), 80u16.to_be_bytes(), PROTO_TCP)
}

/// `frame` as the program sends it to the backend at `mac`: only the MACs changed.
fn to_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&mac);
    expected[6..12].copy_from_slice(&NODE_MAC);
    expected
}

/// Sends `frame` and checks it went to backend `b`, exactly.
fn assert_to(dp: &mut DataPlane, frame: &[u8], b: usize) {
    let out = run(dp, frame, XDP_TX, Reason::ForwardTx);
    assert_eq!(out, to_mac(frame, BACKENDS[b].1), "expected backend {b} ({})", BACKENDS[b].0);
}

fn evict(dp: &DataPlane, sport: u16) {
    fixture::evict(dp, &key(sport));
}

fn conntrack_holds(dp: &DataPlane, sport: u16) -> bool {
    fixture::conntrack_holds(dp, &key(sport))
}

/// Pins `sport`'s flow with a SYN, then drains its backend (weight 0: out of the Maglev table, its pins kept) and
/// refreshes the cache with an ACK. Returns the pinned backend and the backend a fresh pick gives now.
fn pin_then_drain(dp: &mut DataPlane, sport: u16) -> (usize, usize) {
    dp.apply_service("web", &web(ALL_UP)).expect("all backends in the table");
    let pinned = fixture::predicted_backend(&web(ALL_UP), sport);
    assert_to(dp, &tcp(sport, TCP_SYN), pinned);
    let mut drained = ALL_UP;
    drained[pinned].0 = 0;
    dp.apply_service("web", &web(drained)).expect("drain");
    let fresh = fixture::predicted_backend(&web(drained), sport);
    assert_ne!(fresh, pinned);
    (pinned, fresh)
}

#[test]
fn a_cached_pin_is_served_without_the_connection_table_until_it_ages() {
    let mut dp = with_web(65536);
    fixture::with_a_quick_attempt(|sport| {
        let (pinned, fresh) = pin_then_drain(&mut dp, sport);
        // This ACK finds the pin in `CONNTRACK` (or a still fresh cache entry) and writes this CPU's cache.
        let ack = tcp(sport, TCP_ACK);
        assert_to(&mut dp, &ack, pinned);
        let cached = Instant::now();
        evict(&dp, sport);
        // The connection table no longer has the flow: only the cache can send it to its draining backend.
        assert_to(&mut dp, &ack, pinned);
        if !fixture::fresh_enough(cached) {
            return false;
        }
        // Once the entry is older than the refresh age, the next packet asks `CONNTRACK`, finds nothing and picks
        // afresh (the draining backend is out of the table), pinning the flow there.
        std::thread::sleep(Duration::from_nanos(FLOW_CACHE_REFRESH_NS * 3 / 2));
        assert_to(&mut dp, &ack, fresh);
        assert!(conntrack_holds(&dp, sport), "the fresh pick is in the connection table");
        true
    });
}

#[test]
fn a_pin_the_agent_deleted_is_not_served_from_the_cache() {
    let mut dp = with_web(65536);
    fixture::with_a_quick_attempt(|sport| {
        let (pinned, fresh) = pin_then_drain(&mut dp, sport);
        let ack = tcp(sport, TCP_ACK);
        assert_to(&mut dp, &ack, pinned);
        let cached = Instant::now();
        // `ForgetFlows` deletes the entry and bumps the flow generation: the cached copy is dead at once.
        assert_eq!(dp.forget_flows(&[VIP.into()]).expect("forget_flows"), (1, 0));
        assert_to(&mut dp, &ack, fresh);
        fixture::fresh_enough(cached)
    });
}

#[test]
fn a_cached_pin_whose_backend_became_unhealthy_is_not_followed() {
    let mut dp = with_web(65536);
    fixture::with_a_quick_attempt(|sport| {
        let pinned = fixture::predicted_backend(&web(ALL_UP), sport);
        let ack = tcp(sport, TCP_ACK);
        assert_to(&mut dp, &tcp(sport, TCP_SYN), pinned);
        let cached = Instant::now();
        let mut down = ALL_UP;
        down[pinned].1 = false;
        dp.apply_service("web", &web(down)).expect("backend down");
        // The cached pin names a slot whose backend is down (`Backend::keeps_pin`): so does `CONNTRACK`'s, and the
        // flow moves to a fresh pick.
        assert_to(&mut dp, &ack, fixture::predicted_backend(&web(down), sport));
        let timely = fixture::fresh_enough(cached);
        dp.apply_service("web", &web(ALL_UP)).expect("backend up again");
        timely
    });
}

#[test]
fn a_cached_pin_whose_slot_went_to_another_backend_is_not_followed() {
    let mut dp = with_web(65536);
    // A fourth backend, which takes the slot the pinned one leaves.
    let (newcomer, newcomer_mac) = (Ipv4Addr::new(10, 77, 0, 24), [0x02, 0, 0, 0, 0, 0x24]);
    fixture::with_a_quick_attempt(|sport| {
        let pinned = fixture::predicted_backend(&web(ALL_UP), sport);
        let mut spec = web(ALL_UP);
        let left = spec.backends.remove(pinned);
        spec.backends.push(BackendSpec { address: newcomer.into(), mac: Some(newcomer_mac), ..left });
        let (pick, pick_mac) = match fixture::predicted_backend(&spec, sport) {
            i if i == spec.backends.len() - 1 => return false, // the newcomer either way: try another flow
            i => (i, spec.backends[i].mac.expect("a MAC")),
        };
        let ack = tcp(sport, TCP_ACK);
        assert_to(&mut dp, &tcp(sport, TCP_SYN), pinned);
        let cached = Instant::now();
        // The pinned backend leaves (its slot is freed once the new table is live), then the newcomer comes.
        let mut without = web(ALL_UP);
        without.backends.remove(pinned);
        dp.apply_service("web", &without).expect("the pinned backend leaves");
        dp.apply_service("web", &spec).expect("the newcomer comes");
        // The cached pin's slot no longer holds the backend it names (`Backend::keeps_pin`: address and port), nor
        // does `CONNTRACK`'s: the flow is picked afresh over the new set, not sent to whoever has the slot now.
        let out = run(&mut dp, &ack, XDP_TX, Reason::ForwardTx);
        assert_eq!(out, to_mac(&ack, pick_mac), "expected the fresh pick, backend {pick}");
        let timely = fixture::fresh_enough(cached);
        dp.apply_service("web", &web(ALL_UP)).expect("back to the three backends");
        timely
    });
}

#[test]
fn flows_sharing_a_cache_slot_each_keep_their_own_pin() {
    let mut dp = with_web(65536);
    let slot = |sport: u16| flow_cache_slot(&key(sport).words());
    fixture::with_a_quick_attempt(|sport| {
        let other = (1..=u16::MAX)
            .map(|d| sport.wrapping_add(d))
            .find(|p| *p != 0 && slot(*p) == slot(sport))
            .expect("another client port in the same slot");
        let (pinned, _) = pin_then_drain(&mut dp, sport);
        // The other flow starts after the drain, so its backend is another one; its pin takes the shared slot.
        let start = Instant::now();
        let mut drained = ALL_UP;
        drained[pinned].0 = 0;
        let theirs = fixture::predicted_backend(&web(drained), other);
        assert_ne!(theirs, pinned);
        assert_to(&mut dp, &tcp(other, TCP_SYN), theirs);
        // The slot holds the other flow's key: the first flow's pin comes from `CONNTRACK`, not from that entry.
        assert_to(&mut dp, &tcp(sport, TCP_ACK), pinned);
        assert_to(&mut dp, &tcp(other, TCP_ACK), theirs);
        assert_to(&mut dp, &tcp(sport, TCP_ACK), pinned);
        fixture::fresh_enough(start)
    });
}

#[test]
fn a_busy_flow_served_from_the_cache_keeps_its_connection_table_entry_through_a_flood() {
    // The smallest table, flooded four times over by new flows from other clients while one flow sends now and
    // then: its packets are served from the cache, but each one after the refresh age looks it up in `CONNTRACK`,
    // which marks the LRU entry as used, so the LRU keeps it. (Served from the cache alone, it would be evicted
    // like any idle flow.)
    let entries = 1024;
    let mut dp = with_web(entries);
    let busy = 42000;
    assert_to(&mut dp, &tcp(busy, TCP_SYN), fixture::predicted_backend(&web(ALL_UP), busy));
    let per_round = 64;
    let mut flooded = 0u32;
    let mut client = 0u32;
    while flooded < 4 * entries {
        for _ in 0..per_round {
            client += 1;
            let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + client);
            let syn = frames::tcp_frame(NODE_MAC, CLIENT_MAC, source, VIP, 40000, 80, TCP_SYN, b"");
            run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
        }
        flooded += per_round;
        std::thread::sleep(Duration::from_nanos(FLOW_CACHE_REFRESH_NS * 6 / 5));
        for _ in 0..4 {
            run(&mut dp, &tcp(busy, TCP_ACK), XDP_TX, Reason::ForwardTx);
        }
    }
    assert!(conntrack_holds(&dp, busy), "the busy flow's entry survived the flood");
    let first: Ipv4Addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + 1);
    let idle = FlowKey::new(first.octets(), VIP.octets(), 40000u16.to_be_bytes(), [0, 80], PROTO_TCP);
    assert!(!fixture::conntrack_holds(&dp, &idle), "the flood did evict: the first flooding flow is gone");
}
