//! Reloads that cannot black-hole: random sequences of service sets handed to `DataPlane::reconcile` (what a
//! SIGHUP does), each checked against the maps and through BPF_PROG_TEST_RUN. After every reload, every configured
//! port answers with one of its own service's backends, and every other port goes to the kernel. Services swap
//! ports, take each other's old ports, are renamed, added and removed in the same reload. Needs root.
mod support;

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::{FORWARD_DSR, FORWARD_NAT, PROTO_TCP, PROTO_UDP, Reason, group_seed};
use proptest::prelude::*;
use support::fixture::{CLIENT, CLIENT_MAC, NODE_MAC, VIP, VRID, XDP_DROP, XDP_TX};
use support::frames::{self, TCP_SYN};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceId, ServiceSpec, VipSpec};

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
/// (protocol, port) places a service can take.
const PLACES: [(u8, u16); 6] =
    [(PROTO_TCP, 80), (PROTO_TCP, 443), (PROTO_TCP, 6443), (PROTO_TCP, 8080), (PROTO_UDP, 53), (PROTO_UDP, 443)];

fn backend_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 21 + i as u8)
}

fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x21, i as u8]
}

/// One generated service: which place, NAT or DSR, which of 6 backends.
#[derive(Clone, Debug)]
struct Gen {
    place: usize,
    nat: bool,
    backends: Vec<usize>,
}

/// The one VIP of these fixtures, governed by router 0.
fn vips() -> Vec<VipSpec> {
    vec![VipSpec { address: VIP, router: 0, hash_seed: group_seed(VIP.octets(), VRID), interface: None }]
}

fn spec(g: &Gen) -> ServiceSpec {
    let (protocol, port) = PLACES[g.place];
    ServiceSpec {
        addresses: vec![VIP.into()],
        port,
        protocol,
        forwarding: if g.nat { FORWARD_NAT } else { FORWARD_DSR },
        backends: g
            .backends
            .iter()
            .map(|i| BackendSpec {
                address: backend_address(*i).into(),
                // DSR backends listen on the service port; NAT ones elsewhere.
                port: if g.nat { 9000 + *i as u16 } else { port },
                weight: 1,
                healthy: true,
                mac: Some(backend_mac(*i)),
                ifindex: 0,
            })
            .collect(),
    }
}

/// A config: up to 6 services with distinct names and distinct places.
fn config() -> impl Strategy<Value = Vec<(String, Gen)>> {
    let service = (any::<bool>(), proptest::collection::btree_set(0usize..6, 1..=4));
    (
        Just(NAMES).prop_shuffle(),
        Just([0usize, 1, 2, 3, 4, 5]).prop_shuffle(),
        proptest::collection::vec(service, 0..=6),
    )
        .prop_map(|(names, places, services)| {
            services
                .into_iter()
                .enumerate()
                .map(|(i, (nat, backends))| {
                    (names[i].to_string(), Gen { place: places[i], nat, backends: backends.into_iter().collect() })
                })
                .collect()
        })
}

fn probe(dp: &mut DataPlane, protocol: u8, port: u16, sport: u16) -> (u32, Vec<u8>) {
    let frame = if protocol == PROTO_TCP {
        frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, port, TCP_SYN, b"")
    } else {
        frames::udp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, port, b"q")
    };
    let out = dp.test_run(&frame).expect("test_run");
    (out.action, out.frame)
}

/// Checks the maps and the program's answers against `services`.
fn check(dp: &mut DataPlane, services: &[(String, Gen)], step: usize) -> Result<(), TestCaseError> {
    let wanted: BTreeMap<(u8, u16), &str> = services.iter().map(|(n, g)| (PLACES[g.place], n.as_str())).collect();
    let owners = dp.slot_owners();
    let owners: BTreeMap<(u8, u16), &str> = owners
        .iter()
        .map(|((vip, protocol, port), id)| {
            assert_eq!(*vip, VIP, "an entry on another address");
            ((*protocol, *port), id.service.as_str())
        })
        .collect();
    prop_assert_eq!(&owners, &wanted, "slot owners after reload {}", step);
    for (i, (protocol, port)) in PLACES.iter().copied().enumerate() {
        let value = dp.service_value(VIP, protocol, port).expect("SERVICES");
        match services.iter().find(|(_, g)| g.place == i) {
            Some((name, g)) => {
                prop_assert!(value.is_some(), "{} on {}/{} after reload {}", name, protocol, port, step);
                prop_assert_eq!(value.map(|v| v.index), dp.service_index(name.as_str()), "index of {}", name);
                let macs: Vec<[u8; 6]> = g.backends.iter().map(|b| backend_mac(*b)).collect();
                for sport in [40_000u16, 40_001, 40_002, 51_234] {
                    let before = dp.counters().expect("counters");
                    let (action, frame) = probe(dp, protocol, port, sport);
                    let after = dp.counters().expect("counters");
                    let dropped = after.reason(Reason::DropNoBackend) - before.reason(Reason::DropNoBackend);
                    prop_assert_eq!(
                        action,
                        XDP_TX,
                        "{} on port {} did not answer (dropped {}) after reload {}",
                        name,
                        port,
                        dropped,
                        step
                    );
                    let dst: [u8; 6] = frame[0..6].try_into().expect("mac");
                    prop_assert!(
                        macs.contains(&dst),
                        "{} on port {} went to {:02x?}, not one of its backends {:02x?}",
                        name,
                        port,
                        dst,
                        macs
                    );
                }
            }
            None => {
                prop_assert_eq!(value, None, "nothing is configured on {}/{} after reload {}", protocol, port, step);
                let before = dp.counters().expect("counters").reason(Reason::DropNoService);
                let (action, _) = probe(dp, protocol, port, 40_000);
                let after = dp.counters().expect("counters").reason(Reason::DropNoService);
                // Traffic to the VIP that no service takes is dropped, never handed to the kernel's forwarding.
                prop_assert_eq!((action, after - before), (XDP_DROP, 1), "port {} is no service's", port);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_reload_ends_with_exactly_the_configured_services_answering(
        reloads in proptest::collection::vec(config(), 1..8)
    ) {
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 6, ..LoadOptions::default() })
            .expect("loading the XDP program (these tests need root)");
        dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
        dp.set_active(true).expect("set_active");
        for (step, services) in reloads.iter().enumerate() {
            let specs: Vec<(ServiceId, ServiceSpec)> =
                services.iter().map(|(n, g)| (ServiceId::from(n.as_str()), spec(g))).collect();
            dp.reconcile(&vips(), &specs).expect("reconcile");
            check(&mut dp, services, step)?;
        }
    }
}

/// The case the issue reported, spelled out: `a` on 80 and `b` on 6443 swap ports.
#[test]
fn swapping_two_services_ports_keeps_both_answering() {
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 2, ..LoadOptions::default() }).expect("load");
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID)).expect("set_node");
    dp.set_active(true).expect("set_active");
    let a = |place| Gen { place, nat: true, backends: vec![0, 1] };
    let b = |place| Gen { place, nat: true, backends: vec![2] };
    let before = vec![("a".to_string(), a(0)), ("b".to_string(), b(2))];
    let after = vec![("a".to_string(), a(2)), ("b".to_string(), b(0))];
    for (step, services) in [before, after.clone(), after].iter().enumerate() {
        let specs: Vec<(ServiceId, ServiceSpec)> =
            services.iter().map(|(n, g)| (ServiceId::from(n.as_str()), spec(g))).collect();
        dp.reconcile(&vips(), &specs).expect("reconcile");
        check(&mut dp, services, step).expect("both ports answer with their own service's backends");
    }
    // One service at a time, in the order a per-service update would come: still no black hole.
    dp.apply_service("a", &spec(&a(0))).expect("a to 80");
    dp.apply_service("b", &spec(&b(2))).expect("b to 6443");
    check(&mut dp, &[("a".to_string(), a(0)), ("b".to_string(), b(2))], 9).expect("per-service moves");
}
