//! BPF_PROG_TEST_RUN fixtures for the per-CPU flow cache in front of `CONNTRACK6` (`lb-ebpf/src/flow_cache.rs`),
//! as `flow_cache.rs` for IPv4: which pin an IPv6 DSR packet follows when the cache and the connection table
//! disagree. Needs root. The same timing rule: an attempt whose steps took too long for a cache entry to be still
//! fresh starts over with another flow.
mod support;

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    FAMILY_IPV6, FLOW_CACHE_REFRESH_NS, FORWARD_DSR, FlowKey6, FlowValue6, MAGLEV_M, PROTO_TCP, Reason,
    flow_cache_slot, flow_hash6, group_seed6, ipv6_halves, names, router_slot,
};
use support::fixture::{self, CLIENT_MAC, NODE_MAC, VRID, XDP_TX, run};
use support::frames::{self, ETH_IPV6, TCP_ACK, TCP_SYN};
use xvip::{
    dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec, Vip6Spec},
    maglev,
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);
const BACKENDS6: [(Ipv6Addr, [u8; 6]); 3] = [
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x21), [0x02, 0, 0, 0, 0, 0x31]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x22), [0x02, 0, 0, 0, 0, 0x32]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x23), [0x02, 0, 0, 0, 0, 0x33]),
];
const ALL_UP: [(u8, bool); 3] = [(1, true); 3];

fn seed() -> u32 {
    group_seed6(VIP6.octets(), VRID)
}

fn with_web() -> DataPlane {
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 2, ..LoadOptions::default() })
        .expect("loading the XDP program (these tests need root)");
    let router = router_slot(0, FAMILY_IPV6);
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");
    dp.set_vips6(&[Vip6Spec { address: VIP6, router, hash_seed: seed(), interface: None }]).expect("set_vips6");
    dp.set_router_active(router, true).expect("set_router_active");
    dp.apply_service("web", &web(ALL_UP)).expect("apply_service");
    dp
}

/// The IPv6 web service on port 80 over the three backends, each with `weight` (0: draining) and health.
fn web(backends: [(u8, bool); 3]) -> ServiceSpec {
    let backends = (0..3)
        .map(|i| BackendSpec {
            address: IpAddr::V6(BACKENDS6[i].0),
            port: 80,
            weight: backends[i].0,
            healthy: backends[i].1,
            mac: Some(BACKENDS6[i].1),
            ifindex: 0,
        })
        .collect();
    ServiceSpec { addresses: vec![IpAddr::V6(VIP6)], port: 80, protocol: PROTO_TCP, forwarding: FORWARD_DSR, backends }
}

fn tcp(sport: u16, flags: u8) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, ETH_IPV6);
    f.extend(frames::ipv6(
        CLIENT6,
        VIP6,
        6,
        64,
        &frames::tcp6(CLIENT6, VIP6, sport, 80, flags, b"GET / HTTP/1.1\r\n\r\n"),
    ));
    f
}

fn key(sport: u16) -> FlowKey6 {
    FlowKey6::new(CLIENT6.octets(), VIP6.octets(), sport.to_be_bytes(), 80u16.to_be_bytes(), PROTO_TCP)
}

/// The backend (index into `spec.backends`) Maglev picks for the client's flow from `sport`.
fn predicted(spec: &ServiceSpec, sport: u16) -> usize {
    let members: Vec<maglev::MaglevBackend> = spec
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.usable())
        .map(|(i, b)| maglev::MaglevBackend { id: i as u32, key: format!("[{}]:{}", b.address, b.port), weight: 1 })
        .collect();
    let table = maglev::build(&members, MAGLEV_M).expect("maglev");
    let h = flow_hash6(&CLIENT6.octets(), sport.to_be_bytes(), [0, 80], PROTO_TCP, seed());
    table[(h % MAGLEV_M) as usize] as usize
}

/// Sends `frame` and checks it went, with only its MACs changed, to the backend at `mac`.
fn assert_to_mac(dp: &mut DataPlane, frame: &[u8], mac: [u8; 6]) {
    let out = run(dp, frame, XDP_TX, Reason::ForwardTx);
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&mac);
    expected[6..12].copy_from_slice(&NODE_MAC);
    assert_eq!(out, expected, "expected the backend at {mac:02x?}");
}

fn assert_to(dp: &mut DataPlane, frame: &[u8], b: usize) {
    assert_to_mac(dp, frame, BACKENDS6[b].1);
}

/// Deletes `sport`'s `CONNTRACK6` entry behind the agent's back, as an LRU eviction would.
fn evict(dp: &DataPlane, sport: u16) {
    let Some(Map::LruHashMap(data)) = dp.map(names::CONNTRACK6) else { panic!("CONNTRACK6 is an LRU hash map") };
    let id = data.info().expect("CONNTRACK6's info").id();
    let data = MapData::from_id(id).expect("a second handle on CONNTRACK6");
    let mut table: BpfHashMap<MapData, FlowKey6, FlowValue6> =
        BpfHashMap::try_from(Map::LruHashMap(data)).expect("CONNTRACK6 as a hash map");
    table.remove(&key(sport)).expect("the flow's entry is there");
}

fn conntrack_holds(dp: &DataPlane, sport: u16) -> bool {
    let table: BpfHashMap<&MapData, FlowKey6, FlowValue6> =
        BpfHashMap::try_from(dp.map(names::CONNTRACK6).expect("CONNTRACK6")).expect("CONNTRACK6 as a hash map");
    table.get(&key(sport), 0).is_ok()
}

/// Pins `sport`'s flow with a SYN, drains its backend (out of the Maglev table, its pins kept) and writes the
/// cache with an ACK. Returns the pinned backend and the one a fresh pick gives now.
fn pin_then_drain(dp: &mut DataPlane, sport: u16) -> (usize, usize) {
    dp.apply_service("web", &web(ALL_UP)).expect("all backends in the table");
    let pinned = predicted(&web(ALL_UP), sport);
    assert_to(dp, &tcp(sport, TCP_SYN), pinned);
    let mut drained = ALL_UP;
    drained[pinned].0 = 0;
    dp.apply_service("web", &web(drained)).expect("drain");
    let fresh = predicted(&web(drained), sport);
    assert_ne!(fresh, pinned);
    assert_to(dp, &tcp(sport, TCP_ACK), pinned);
    (pinned, fresh)
}

#[test]
fn a_cached_ipv6_pin_is_served_without_the_connection_table_until_it_ages() {
    let mut dp = with_web();
    fixture::with_a_quick_attempt(|sport| {
        let (pinned, fresh) = pin_then_drain(&mut dp, sport);
        let cached = Instant::now();
        evict(&dp, sport);
        // Only the cache can send the flow to its draining backend now.
        let ack = tcp(sport, TCP_ACK);
        assert_to(&mut dp, &ack, pinned);
        if !fixture::fresh_enough(cached) {
            return false;
        }
        // Past the refresh age the next packet asks `CONNTRACK6`, finds nothing and picks afresh.
        std::thread::sleep(Duration::from_nanos(FLOW_CACHE_REFRESH_NS * 3 / 2));
        assert_to(&mut dp, &ack, fresh);
        assert!(conntrack_holds(&dp, sport), "the fresh pick is in the connection table");
        true
    });
}

#[test]
fn an_ipv6_pin_the_agent_deleted_is_not_served_from_the_cache() {
    let mut dp = with_web();
    fixture::with_a_quick_attempt(|sport| {
        let (_, fresh) = pin_then_drain(&mut dp, sport);
        let cached = Instant::now();
        // `ForgetFlows` deletes the entry and bumps the flow generation: the cached copy is dead at once.
        assert_eq!(dp.forget_flows(&[IpAddr::V6(VIP6)]).expect("forget_flows"), (1, 0));
        assert_to(&mut dp, &tcp(sport, TCP_ACK), fresh);
        fixture::fresh_enough(cached)
    });
}

#[test]
fn a_cached_ipv6_pin_whose_slot_went_to_another_backend_is_not_followed() {
    let mut dp = with_web();
    // A fourth backend, on the same port, which takes the slot the pinned one leaves: only its address differs
    // from what the pin names (`FlowValue6::keeps_pin`).
    let (newcomer, newcomer_mac) = (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x24), [0x02, 0, 0, 0, 0, 0x34]);
    fixture::with_a_quick_attempt(|sport| {
        let pinned = predicted(&web(ALL_UP), sport);
        let mut spec = web(ALL_UP);
        let left = spec.backends.remove(pinned);
        spec.backends.push(BackendSpec { address: IpAddr::V6(newcomer), mac: Some(newcomer_mac), ..left });
        let pick_mac = match predicted(&spec, sport) {
            i if i == spec.backends.len() - 1 => return false, // the newcomer either way: try another flow
            i => spec.backends[i].mac.expect("a MAC"),
        };
        let ack = tcp(sport, TCP_ACK);
        assert_to(&mut dp, &tcp(sport, TCP_SYN), pinned);
        assert_to(&mut dp, &ack, pinned);
        let cached = Instant::now();
        let mut without = web(ALL_UP);
        without.backends.remove(pinned);
        dp.apply_service("web", &without).expect("the pinned backend leaves");
        dp.apply_service("web", &spec).expect("the newcomer comes");
        // Neither the cached pin nor `CONNTRACK6`'s is followed to whoever holds the slot now: a fresh pick.
        assert_to_mac(&mut dp, &ack, pick_mac);
        let timely = fixture::fresh_enough(cached);
        dp.apply_service("web", &web(ALL_UP)).expect("back to the three backends");
        timely
    });
}

#[test]
fn ipv6_flows_sharing_a_cache_slot_each_keep_their_own_pin() {
    let mut dp = with_web();
    let words = |sport: u16| {
        FlowKey6::words_of(
            ipv6_halves(&CLIENT6.octets()),
            ipv6_halves(&VIP6.octets()),
            sport.to_be_bytes(),
            [0, 80],
            PROTO_TCP,
        )
    };
    let slot = |sport: u16| flow_cache_slot(&words(sport));
    fixture::with_a_quick_attempt(|sport| {
        let other = (1..=u16::MAX)
            .map(|d| sport.wrapping_add(d))
            .find(|p| *p != 0 && slot(*p) == slot(sport))
            .expect("another client port in the same slot");
        let (pinned, _) = pin_then_drain(&mut dp, sport);
        let start = Instant::now();
        let mut drained = ALL_UP;
        drained[pinned].0 = 0;
        let theirs = predicted(&web(drained), other);
        assert_to(&mut dp, &tcp(other, TCP_SYN), theirs);
        // The slot holds the other flow's key: the first flow's pin comes from `CONNTRACK6`, not from that entry.
        assert_to(&mut dp, &tcp(sport, TCP_ACK), pinned);
        assert_to(&mut dp, &tcp(other, TCP_ACK), theirs);
        assert_to(&mut dp, &tcp(sport, TCP_ACK), pinned);
        fixture::fresh_enough(start)
    });
}
