//! BPF_PROG_TEST_RUN fixtures for NAT forwarding: input frame, expected verdict, exact expected output bytes and the
//! one counter that must move. The expected frames are built from scratch by `support::frames`, whose checksums are
//! full RFC 1071 recomputations, so an exact match also checks the program's incremental (RFC 1624) updates.
//! Needs root (loads BPF programs); nothing is sent on any interface.
mod support;

use std::{collections::HashMap, net::Ipv4Addr, sync::OnceLock, time::Duration};

use aya::maps::{Array, MapData};
use lb_common::{
    Backend, FORWARD_DSR, FORWARD_NAT, MAGLEV_M, MAX_BACKENDS, NAT_PORT_TRIES, NatKey, NatValue, PROTO_TCP, PROTO_UDP,
    Reason, flow_hash, group_seed, names, nat_port,
};
use support::fixture::{
    self, BACKENDS, CLIENT, CLIENT_MAC, NODE_IP, NODE_MAC, ROUTER, ROUTER_MAC, VIP, VRID, XDP_DROP, XDP_PASS, XDP_TX,
    run,
};
use support::frames::{self, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use xvip::{
    dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceId, ServiceSpec},
    maglev,
};

/// A client behind a router: its frames carry the router's MAC.
const REMOTE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The NAT services: TCP 80 -> 8080 and UDP 53 -> 5353 on every backend.
const HTTP: u16 = 80;
const HTTP_BACKEND: u16 = 8080;
const DNS: u16 = 53;
const DNS_BACKEND: u16 = 5353;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nbackend";
/// "Fragmentation needed" (RFC 792 type 3 code 4) with a next-hop MTU of 1400 (RFC 1191).
const FRAG_NEEDED: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x78]);
const PORT_UNREACHABLE: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);

fn seed() -> u32 {
    group_seed(VIP.octets(), VRID)
}

fn nat_service(port: u16, protocol: u8, backend_port: u16) -> ServiceSpec {
    fixture::service(port, protocol, FORWARD_NAT, backend_port)
}

fn dataplane_with(options: LoadOptions) -> DataPlane {
    // The fixture namespace first: the data plane reads the node's own addresses from it.
    support::fixture::lan();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 3, ..options })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node(VIP, NODE_MAC, seed()).expect("set_node");
    dp.set_active(true).expect("set_active");
    dp.apply_service("web", &nat_service(HTTP, PROTO_TCP, HTTP_BACKEND)).expect("web");
    dp.apply_service("dns", &nat_service(DNS, PROTO_UDP, DNS_BACKEND)).expect("dns");
    dp
}

fn dataplane() -> DataPlane {
    dataplane_with(LoadOptions::default())
}

/// Asserts `out == expected` and, independently of the builder, that every checksum in `out` verifies.
fn assert_frame(out: &[u8], expected: &[u8]) {
    assert_eq!(frames::hex(out), frames::hex(expected));
    assert!(frames::ipv4_header_ok(out), "IP header checksum");
    match out[23] {
        1 => assert!(frames::icmp_ok(out), "ICMP checksum"),
        17 if out[40..42] == [0, 0] => {}
        _ => assert!(frames::l4_ok(out), "TCP/UDP checksum"),
    }
}

/// The Maglev table of a service, built by the pure builder (what the data plane installs).
fn table(backend_port: u16) -> &'static [u32] {
    static TABLES: OnceLock<HashMap<u16, Vec<u32>>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        [HTTP_BACKEND, DNS_BACKEND]
            .into_iter()
            .map(|port| {
                let members: Vec<maglev::MaglevBackend> = BACKENDS
                    .iter()
                    .enumerate()
                    .map(|(i, (a, _))| maglev::MaglevBackend { id: i as u32, key: format!("{a}:{port}"), weight: 1 })
                    .collect();
                (port, maglev::build(&members, MAGLEV_M).expect("maglev"))
            })
            .collect()
    });
    &tables[&backend_port]
}

/// A client flow, and what NAT must make of it, predicted from the shared flow hash and the Maglev builder.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: Ipv4Addr,
    /// Source MAC of the client's frames (the client, or its router).
    mac: [u8; 6],
    cport: u16,
    protocol: u8,
}

impl Flow {
    fn tcp(cport: u16) -> Self {
        Flow { client: CLIENT, mac: CLIENT_MAC, cport, protocol: PROTO_TCP }
    }

    fn udp(cport: u16) -> Self {
        Flow { client: CLIENT, mac: CLIENT_MAC, cport, protocol: PROTO_UDP }
    }

    fn service(&self) -> u16 {
        if self.protocol == PROTO_TCP { HTTP } else { DNS }
    }

    fn backend_port(&self) -> u16 {
        if self.protocol == PROTO_TCP { HTTP_BACKEND } else { DNS_BACKEND }
    }

    fn hash(&self) -> u32 {
        flow_hash(self.client.octets(), self.cport.to_be_bytes(), self.service().to_be_bytes(), self.protocol, seed())
    }

    fn backend(&self) -> usize {
        table(self.backend_port())[(self.hash() % MAGLEV_M) as usize] as usize
    }

    fn backend_ip(&self) -> Ipv4Addr {
        BACKENDS[self.backend()].0
    }

    fn backend_mac(&self) -> [u8; 6] {
        BACKENDS[self.backend()].1
    }

    /// The NAT port of the flow's `attempt`-th candidate.
    fn nat_port(&self, attempt: u32) -> u16 {
        u16::from_be_bytes(nat_port(self.hash(), attempt))
    }

    #[expect(clippy::too_many_arguments, reason = "mirrors frames::tcp_frame")]
    fn frame(
        &self,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        if self.protocol == PROTO_TCP {
            frames::tcp_frame(dst_mac, src_mac, src, dst, sport, dport, flags, payload)
        } else {
            frames::udp_frame(dst_mac, src_mac, src, dst, sport, dport, payload)
        }
    }

    /// The flow's connection-table key.
    fn key(&self) -> lb_common::FlowKey {
        let port = self.service().to_be_bytes();
        lb_common::FlowKey::new(self.client.octets(), VIP.octets(), self.cport.to_be_bytes(), port, self.protocol)
    }

    /// What the client sends to the VIP.
    fn client_sends(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.frame(NODE_MAC, self.mac, self.client, VIP, self.cport, self.service(), flags, payload)
    }

    /// What the backend must receive when the flow uses NAT port `port`.
    fn backend_gets(&self, port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.frame(self.backend_mac(), NODE_MAC, VIP, self.backend_ip(), port, self.backend_port(), flags, payload)
    }

    /// What the backend answers to NAT port `port`.
    fn backend_sends(&self, port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.frame(NODE_MAC, self.backend_mac(), self.backend_ip(), VIP, self.backend_port(), port, flags, payload)
    }

    /// What the client must receive as the answer.
    fn client_gets(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.frame(self.mac, NODE_MAC, VIP, self.client, self.service(), self.cport, flags, payload)
    }
}

/// The backend answers with an ACK (not a SYN/ACK, not a RST): the flow's translation is established.
fn establish(dp: &mut DataPlane, f: &Flow, port: u16) {
    let out = run(dp, &f.backend_sends(port, TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, b""));
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

const OTHER_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];

/// `n` flows from distinct clients (10.77.0.100 ...) whose first NAT candidate is `port` and whose backend is
/// `backend`: they collide with each other (and with any flow whose candidate is `port`) on that backend.
fn colliding_flows(port: u16, backend: usize, protocol: u8, n: usize) -> Vec<Flow> {
    let mut found = Vec::new();
    for host in 100..=250u8 {
        for cport in 1024..=65535u16 {
            let f = Flow { client: Ipv4Addr::new(10, 77, 0, host), mac: CLIENT_MAC, cport, protocol };
            if f.nat_port(0) == port && f.backend() == backend {
                found.push(f);
                if found.len() == n {
                    return found;
                }
                break;
            }
        }
    }
    panic!("found only {} of {n} flows colliding on port {port}", found.len());
}

// ----- the forward direction -----

#[test]
fn syn_is_translated_to_the_vip_and_the_flow_port() {
    let mut dp = dataplane();
    let f = Flow::tcp(40001);
    let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_SYN, b""));
    assert!(f.nat_port(0) >= 1024);
    let c = dp.counters().expect("counters");
    assert_eq!(c.services[&"web".into()].packets, 1);
    assert_eq!(c.backends[&("web".into(), f.backend_ip().into(), HTTP_BACKEND)].packets, 1);
}

/// The new flows counted for `f`'s backend so far.
fn new_flows(dp: &DataPlane, f: &Flow) -> u64 {
    let c = dp.counters().expect("counters");
    c.backends[&(ServiceId::from("web"), f.backend_ip().into(), HTTP_BACKEND)].new_flows
}

/// Runs `attempt` with successive client flows until one finished within half the flow cache's refresh age, so
/// that an entry written at its start was still served at its end (at most 20 tries on a slow machine).
fn with_a_quick_flow(mut attempt: impl FnMut(Flow)) {
    for cport in 40400..40420 {
        let started = std::time::Instant::now();
        attempt(Flow::tcp(cport));
        if started.elapsed() < Duration::from_nanos(lb_common::FLOW_CACHE_REFRESH_NS / 2) {
            return;
        }
    }
    panic!("every attempt took longer than the flow cache's refresh age");
}

#[test]
fn an_established_flow_is_served_from_the_flow_cache_without_the_connection_table() {
    let mut dp = dataplane();
    with_a_quick_flow(|f| {
        // The SYN's new entry goes to the connection table and this CPU's flow cache together.
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        fixture::evict(&dp, &f.key());
        // Gone from the table, the flow still has its translation from the cache: not a new flow (the table would
        // have started it over, counting one).
        let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
        assert_eq!(new_flows(&dp, &f), 1, "served from the cache, not started over");
        assert!(!fixture::conntrack_holds(&dp, &f.key()));
    });
}

#[test]
fn a_nat_flow_the_agent_forgot_is_not_served_from_the_flow_cache() {
    let mut dp = dataplane();
    with_a_quick_flow(|f| {
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        let before = new_flows(&dp, &f);
        // `ForgetFlows` deletes the entries and bumps the flow generation: the cached copy is dead at once, and the
        // next packet starts the flow over (same backend and port: nothing else holds them).
        dp.forget_flows(&[VIP.into()]).expect("forget_flows");
        let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
        assert_eq!(new_flows(&dp, &f), before + 1, "started over, not served from the cache");
        assert!(fixture::conntrack_holds(&dp, &f.key()));
    });
}

#[test]
fn established_packets_keep_the_translation() {
    let mut dp = dataplane();
    let f = Flow::tcp(40002);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    for _ in 0..3 {
        let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
    }
    // One flow: four packets, one new flow (the SYN); a SYN again from the same port is a new connection.
    let backend = (ServiceId::from("web"), f.backend_ip().into(), HTTP_BACKEND);
    let c = dp.counters().expect("counters");
    assert_eq!((c.backends[&backend].packets, c.backends[&backend].new_flows), (4, 1));
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let c = dp.counters().expect("counters");
    assert_eq!((c.backends[&backend].new_flows, c.services[&ServiceId::from("web")].new_flows), (2, 2));
}

#[test]
fn many_flows_spread_over_the_backends_each_from_its_own_port() {
    let mut dp = dataplane();
    let mut per_backend = [0u32; 3];
    for cport in 20000..20300 {
        let f = Flow::tcp(cport);
        let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        // A candidate other than the first only if another of these flows took it: 300 of 64512 ports.
        let port = u16::from_be_bytes([out[34], out[35]]);
        assert!((0..NAT_PORT_TRIES).any(|a| f.nat_port(a) == port), "port {port} is not a candidate of {f:?}");
        assert_eq!(&out[30..34], &f.backend_ip().octets());
        per_backend[f.backend()] += 1;
    }
    assert!(per_backend.iter().all(|n| (60..=140).contains(n)), "{per_backend:?}");
}

// ----- the reverse direction -----

#[test]
fn reply_is_translated_back_to_the_client() {
    let mut dp = dataplane();
    let f = Flow::tcp(40003);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_SYN | TCP_ACK, b""));
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK | TCP_PSH, RESPONSE));
}

#[test]
fn replies_go_to_the_mac_the_client_came_from() {
    let mut dp = dataplane();
    let f = Flow { client: REMOTE_CLIENT, mac: ROUTER_MAC, cport: 40004, protocol: PROTO_TCP };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_eq!(&out[0..6], &ROUTER_MAC);
    assert_frame(&out, &f.client_gets(TCP_SYN | TCP_ACK, b""));
}

#[test]
fn reply_without_a_translation_is_dropped_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40005);
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE);
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNatNoEntry), reply);
    // Addressed to a port that is also a service port: still a reply, never a new client flow.
    let to_service_port = f.backend_sends(HTTP, TCP_ACK, b"");
    assert_eq!(run(&mut dp, &to_service_port, XDP_DROP, Reason::DropNatNoEntry), to_service_port);
}

#[test]
fn the_node_taking_over_rebuilds_the_same_translation_from_the_next_client_packet() {
    // Node A saw the whole connection start; node B, after a failover, sees only its continuation.
    let mut a = dataplane();
    let mut b = dataplane();
    let f = Flow::tcp(40006);
    run(&mut a, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    run(&mut a, &f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    // The backend speaks first on B: nothing to translate yet (a server-push stream waits for the client).
    let pushed = f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE);
    assert_eq!(run(&mut b, &pushed, XDP_DROP, Reason::DropNatNoEntry), pushed);
    // The client's next packet (an ACK, not a SYN) on B: same backend, same NAT port, byte for byte.
    let from_b = run(&mut b, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    let from_a_again = run(&mut a, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    assert_eq!(from_b, from_a_again, "node B chose what node A chose");
    assert_frame(&from_b, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
    let out = run(&mut b, &pushed, XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK | TCP_PSH, RESPONSE));
}

// ----- end of a connection -----

#[test]
fn fin_from_both_sides_keeps_translating_until_the_last_ack() {
    let mut dp = dataplane();
    let f = Flow::tcp(40007);
    let p = f.nat_port(0);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(&mut dp, &f.client_sends(TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_FIN | TCP_ACK, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_FIN | TCP_ACK, b""));
    // Within the grace time the last ACK and retransmissions still go through, both ways.
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_ACK, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_FIN | TCP_ACK, b""));
}

#[test]
fn a_closed_translation_keeps_its_port_during_the_grace_time() {
    // Default grace (10 s): a colliding flow that starts right after the close must not take the port.
    let mut dp = dataplane();
    let f = Flow::tcp(40008);
    let p = f.nat_port(0);
    let [g] = colliding_flows(p, f.backend(), PROTO_TCP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    run(&mut dp, &f.client_sends(TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
}

#[test]
fn a_closed_translation_gives_its_port_up_after_the_grace_time() {
    let mut dp = dataplane_with(LoadOptions { nat_closed_grace: Duration::from_millis(1), ..LoadOptions::default() });
    let f = Flow::tcp(40009);
    let p = f.nat_port(0);
    let [g, h] = colliding_flows(p, f.backend(), PROTO_TCP, 2)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    // Only the client closed: half-closed connections keep their port however long they idle.
    run(&mut dp, &f.client_sends(TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    std::thread::sleep(Duration::from_millis(20));
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
    // Closed by both, and quiet for longer than the grace time: the next colliding flow takes the port.
    run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    std::thread::sleep(Duration::from_millis(20));
    let out = run(&mut dp, &h.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &h.backend_gets(p, TCP_SYN, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_eq!(&out[0..6], &h.mac);
    assert_eq!(&out[30..34], &h.client.octets(), "replies on that port now belong to the new flow");
}

#[test]
fn client_rst_is_forwarded_and_leaves_a_closing_flow_that_still_translates() {
    let mut dp = dataplane();
    let f = Flow::tcp(40010);
    let p = f.nat_port(0);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    let out = run(&mut dp, &f.client_sends(TCP_RST | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_RST | TCP_ACK, b""));
    // Not erased: a late packet of the backend still reaches the client.
    let out = run(&mut dp, &f.backend_sends(p, TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, b""));
}

#[test]
fn a_reset_flow_keeps_its_port_for_the_grace_then_gives_it_up() {
    let mut dp = dataplane_with(LoadOptions { nat_closed_grace: Duration::from_millis(300), ..LoadOptions::default() });
    let f = Flow::tcp(40027);
    let p = f.nat_port(0);
    let [g, h] = colliding_flows(p, f.backend(), PROTO_TCP, 2)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    run(&mut dp, &f.backend_sends(p, TCP_RST, b""), XDP_TX, Reason::NatReplyTx);
    // Within the grace: a colliding new connection takes the next candidate.
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
    std::thread::sleep(Duration::from_millis(400));
    let out = run(&mut dp, &h.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &h.backend_gets(p, TCP_SYN, b""));
}

#[test]
fn a_spoofed_rst_is_undone_by_the_flows_next_packet() {
    // An RST with the client's address (spoofed or not) marks the flow closing; the client's next ordinary packet
    // revives it, so after the grace it still owns its port.
    let mut dp = dataplane_with(LoadOptions { nat_closed_grace: Duration::from_millis(300), ..LoadOptions::default() });
    let f = Flow::tcp(40028);
    let p = f.nat_port(0);
    let [g] = colliding_flows(p, f.backend(), PROTO_TCP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    run(&mut dp, &f.client_sends(TCP_RST, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_ACK | TCP_PSH, REQUEST));
    std::thread::sleep(Duration::from_millis(400));
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_ACK, RESPONSE), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, RESPONSE));
}

#[test]
fn backend_rst_is_forwarded_and_the_client_can_go_on() {
    let mut dp = dataplane();
    let f = Flow::tcp(40011);
    let p = f.nat_port(0);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(&mut dp, &f.backend_sends(p, TCP_RST, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_RST, b""));
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_ACK, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, b""));
}

#[test]
fn a_reused_client_port_reaches_the_backend_from_the_same_nat_port() {
    // The backend sees the same 4-tuple reuse a direct client would cause (and accepts it the same way).
    let mut dp = dataplane();
    let f = Flow::tcp(40012);
    let p = f.nat_port(0);
    for _ in 0..3 {
        let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(p, TCP_SYN, b""));
        run(&mut dp, &f.client_sends(TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
        run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
        run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    }
}

#[test]
fn a_new_connection_on_a_reused_port_is_live_again() {
    // The SYN resets the closed state: the port is not up for grabs while the new connection runs.
    let mut dp = dataplane_with(LoadOptions { nat_closed_grace: Duration::from_millis(1), ..LoadOptions::default() });
    let f = Flow::tcp(40023);
    let p = f.nat_port(0);
    let [g] = colliding_flows(p, f.backend(), PROTO_TCP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    run(&mut dp, &f.client_sends(TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    std::thread::sleep(Duration::from_millis(20));
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
}

#[test]
fn a_packet_with_the_clients_address_from_another_mac_does_not_divert_its_replies() {
    // An on-link host sends bare ACKs as the client, from its own MAC: replies still go where the FIB says.
    let mut dp = dataplane();
    let f = Flow::tcp(40024);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let attacker = Flow { mac: [0x02, 0, 0, 0, 0, 0x66], ..f };
    for flags in [TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH] {
        run(&mut dp, &attacker.client_sends(flags, b""), XDP_TX, Reason::NatForwardTx);
        let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
        assert_frame(&out, &f.client_gets(TCP_ACK, b""));
    }
}

#[test]
fn replies_follow_a_route_change_within_a_second() {
    // The route to a remote client moves to another router: established flows follow once their cached route is
    // looked up again (every second).
    let mut dp = dataplane();
    let f = Flow { client: REMOTE_CLIENT, mac: ROUTER_MAC, cport: 40029, protocol: PROTO_TCP };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, b""));
    support::fixture::ip(&format!(
        "neigh replace 10.77.0.253 lladdr {} dev lan nud permanent",
        fmt_mac(OTHER_ROUTER_MAC)
    ));
    support::fixture::ip(&format!("route replace {} via 10.77.0.253", support::fixture::REMOTE_NET));
    std::thread::sleep(Duration::from_millis(1100));
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &Flow { mac: OTHER_ROUTER_MAC, ..f }.client_gets(TCP_ACK, b""));
}

#[test]
fn a_flow_moved_off_an_unhealthy_backend_releases_its_old_translation() {
    let mut dp = dataplane();
    let f = Flow::tcp(40025);
    let old = f.backend();
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let mut spec = nat_service(HTTP, PROTO_TCP, HTTP_BACKEND);
    spec.backends[old].healthy = false;
    dp.apply_service("web", &spec).expect("web without the flow's backend");
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    let moved_to = BACKENDS.iter().position(|(ip, _)| out[30..34] == ip.octets()).expect("a backend");
    assert_ne!(moved_to, old);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), f.nat_port(0), "the same port, towards the new backend");
    // Late packets from the old backend are no longer translated; the new backend's are.
    let stale = f.backend_sends(f.nat_port(0), TCP_ACK, b"");
    assert_eq!(run(&mut dp, &stale, XDP_DROP, Reason::DropNatNoEntry), stale);
    let fresh = frames::tcp_frame(
        NODE_MAC,
        BACKENDS[moved_to].1,
        BACKENDS[moved_to].0,
        VIP,
        HTTP_BACKEND,
        f.nat_port(0),
        TCP_ACK,
        b"",
    );
    run(&mut dp, &fresh, XDP_TX, Reason::NatReplyTx);
}

/// The `BACKENDS` slot holding `address:port`, read from the map.
fn slot_of(dp: &DataPlane, address: Ipv4Addr, port: u16) -> Option<u32> {
    let map = dp.map(names::BACKENDS).expect("BACKENDS map");
    let backends: Array<&MapData, Backend> = Array::try_from(map).expect("BACKENDS as an array");
    (0..MAX_BACKENDS)
        .find(|&i| backends.get(&i, 0).is_ok_and(|b| b.address == address.octets() && b.port == port.to_be_bytes()))
}

/// Whether the NAT table has a reverse entry for `backend:port` and NAT port `nport` (TCP).
fn has_translation(dp: &DataPlane, backend: Ipv4Addr, port: u16, nport: u16) -> bool {
    let map = dp.map(names::NAT).expect("NAT map");
    let nat: aya::maps::HashMap<&MapData, NatKey, NatValue> = aya::maps::HashMap::try_from(map).expect("NAT as a hash");
    nat.get(&NatKey::new(backend.octets(), VIP.octets(), port.to_be_bytes(), nport.to_be_bytes(), PROTO_TCP), 0).is_ok()
}

#[test]
fn a_flow_whose_backend_slot_went_to_another_backend_starts_over_and_releases_its_old_translation() {
    // Found by the random-frame run: a slot freed by one backend and given to another kept the flows pinned to it,
    // which then went to the new backend from a port it had no translation for, while their old translation
    // stayed behind. A flow now records its backend's address and port, not only the slot.
    let new_backend = (Ipv4Addr::new(10, 77, 0, 24), [0x02, 0, 0, 0, 0, 0x24]);
    let members = |set: &[(Ipv4Addr, [u8; 6])]| -> Vec<u32> {
        let m: Vec<maglev::MaglevBackend> = set
            .iter()
            .enumerate()
            .map(|(i, (a, _))| maglev::MaglevBackend { id: i as u32, key: format!("{a}:{HTTP_BACKEND}"), weight: 1 })
            .collect();
        maglev::build(&m, MAGLEV_M).expect("maglev")
    };
    // A flow whose backend leaves, and which the new backend set would not give to the newcomer.
    let (f, after) = (41000..41200)
        .find_map(|cport| {
            let f = Flow::tcp(cport);
            let mut set: Vec<_> = BACKENDS.iter().copied().filter(|(a, _)| *a != f.backend_ip()).collect();
            set.push(new_backend);
            let pick = set[members(&set)[(f.hash() % MAGLEV_M) as usize] as usize];
            (pick != new_backend).then_some((f, pick))
        })
        .expect("a client port whose flow stays off the new backend");

    let mut dp = dataplane();
    // Every other slot in use, so the slot the flow's backend frees is the next one given out.
    let free = MAX_BACKENDS as usize - 2 * BACKENDS.len();
    let filler = ServiceSpec {
        addresses: vec![VIP.into()],
        port: 9000,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: (0..free as u32)
            .map(|i| BackendSpec {
                address: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i).into(),
                port: 80,
                weight: 1,
                healthy: false,
                mac: Some([2, 0, 0, 0, 0, 0x99]),
                ifindex: 0,
            })
            .collect(),
    };
    dp.apply_service("filler", &filler).expect("filler");
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, f.nat_port(0));
    let slot = slot_of(&dp, f.backend_ip(), HTTP_BACKEND).expect("the flow's backend has a slot");

    // The flow's backend leaves web, and the newcomer takes its slot.
    let mut web = nat_service(HTTP, PROTO_TCP, HTTP_BACKEND);
    web.backends.retain(|b| b.address != f.backend_ip());
    dp.apply_service("web", &web).expect("web without the flow's backend");
    web.backends.push(BackendSpec {
        address: new_backend.0.into(),
        port: HTTP_BACKEND,
        weight: 1,
        healthy: true,
        mac: Some(new_backend.1),
        ifindex: 0,
    });
    dp.apply_service("web", &web).expect("web with the newcomer");
    assert_eq!(slot_of(&dp, new_backend.0, HTTP_BACKEND), Some(slot), "the newcomer took the freed slot");

    // The flow's next packet takes a fresh pick, from the port it has towards that backend...
    let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    let expected =
        frames::tcp_frame(after.1, NODE_MAC, VIP, after.0, f.nat_port(0), HTTP_BACKEND, TCP_ACK | TCP_PSH, REQUEST);
    assert_frame(&out, &expected);
    // ...and its translation towards the backend that left is gone; the new one translates back.
    assert!(!has_translation(&dp, f.backend_ip(), HTTP_BACKEND, f.nat_port(0)), "old translation released");
    assert!(has_translation(&dp, after.0, HTTP_BACKEND, f.nat_port(0)), "new translation in place");
    let answer = frames::tcp_frame(NODE_MAC, after.1, after.0, VIP, HTTP_BACKEND, f.nat_port(0), TCP_ACK, RESPONSE);
    let back = run(&mut dp, &answer, XDP_TX, Reason::NatReplyTx);
    assert_frame(&back, &f.client_gets(TCP_ACK, RESPONSE));
}

#[test]
fn an_endpoint_shared_by_two_nat_services_stays_a_nat_endpoint_until_both_are_gone() {
    let mut dp = dataplane();
    dp.apply_service("alt", &nat_service(8000, PROTO_TCP, HTTP_BACKEND)).expect("alt");
    let f = Flow::tcp(40026);
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK, b"");
    dp.remove_service("alt").expect("remove alt");
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNatNoEntry), reply, "web still uses the endpoint");
    dp.remove_service("web").expect("remove web");
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNoService), reply, "no NAT service uses it any more");
}

// ----- collisions -----

#[test]
fn a_colliding_flow_takes_the_next_candidate_and_both_translate_back() {
    let f = Flow::tcp(40013);
    let [g] = colliding_flows(f.nat_port(0), f.backend(), PROTO_TCP, 1)[..] else { unreachable!() };
    for _ in 0..2 {
        // Deterministic: a fresh node fed the same packets in the same order makes the same choices.
        let mut dp = dataplane();
        let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_SYN, b""));
        let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
        // Established packets of g keep the second candidate.
        let out = run(&mut dp, &g.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_ACK | TCP_PSH, REQUEST));
        let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK, RESPONSE), XDP_TX, Reason::NatReplyTx);
        assert_frame(&out, &f.client_gets(TCP_ACK, RESPONSE));
        let out = run(&mut dp, &g.backend_sends(g.nat_port(1), TCP_ACK, RESPONSE), XDP_TX, Reason::NatReplyTx);
        assert_frame(&out, &g.client_gets(TCP_ACK, RESPONSE));
    }
}

#[test]
fn a_flow_whose_candidates_are_all_taken_is_dropped() {
    let mut dp = dataplane();
    let f = Flow::tcp(40014);
    // One live flow on each of f's candidate ports, towards f's backend.
    let blockers: Vec<Flow> =
        (0..NAT_PORT_TRIES).map(|a| colliding_flows(f.nat_port(a), f.backend(), PROTO_TCP, 1)[0]).collect();
    for b in &blockers {
        let out = run(&mut dp, &b.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &b.backend_gets(b.nat_port(0), TCP_SYN, b""));
        // Established: never displaced.
        establish(&mut dp, b, b.nat_port(0));
    }
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_DROP, Reason::DropNatNoPort);
    // The blockers are untouched.
    for b in &blockers {
        run(&mut dp, &b.backend_sends(b.nat_port(0), TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    }
}

// ----- UDP -----

#[test]
fn udp_is_translated_both_ways() {
    let mut dp = dataplane();
    let f = Flow::udp(5000);
    let out = run(&mut dp, &f.client_sends(0, b"query"), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), 0, b"query"));
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), 0, b"answer"), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(0, b"answer"));
}

#[test]
fn a_zero_udp_checksum_stays_zero() {
    let mut dp = dataplane();
    let f = Flow::udp(5001);
    let unchecked = |src: Ipv4Addr, dst: Ipv4Addr, dst_mac, src_mac, sport, dport| {
        let mut frame = frames::eth(dst_mac, src_mac, frames::ETH_IPV4);
        frame.extend(frames::ipv4(src, dst, 17, &frames::udp_unchecked(sport, dport, b"query")));
        frame
    };
    let input = unchecked(f.client, VIP, NODE_MAC, f.mac, f.cport, DNS);
    let out = run(&mut dp, &input, XDP_TX, Reason::NatForwardTx);
    let expected = unchecked(VIP, f.backend_ip(), f.backend_mac(), NODE_MAC, f.nat_port(0), DNS_BACKEND);
    assert_frame(&out, &expected);
    assert_eq!(&out[40..42], &[0, 0]);
}

#[test]
fn a_udp_translation_ages_out() {
    let mut dp = dataplane_with(LoadOptions { nat_udp_timeout: Duration::from_millis(1), ..LoadOptions::default() });
    let f = Flow::udp(5002);
    let [g] = colliding_flows(f.nat_port(0), f.backend(), PROTO_UDP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(0, b"query"), XDP_TX, Reason::NatForwardTx);
    std::thread::sleep(Duration::from_millis(20));
    // Idle past the timeout: replies are no longer translated...
    let late = f.backend_sends(f.nat_port(0), 0, b"answer");
    assert_eq!(run(&mut dp, &late, XDP_DROP, Reason::DropNatNoEntry), late);
    // ...and another flow may take the port.
    let out = run(&mut dp, &g.client_sends(0, b"query"), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(f.nat_port(0), 0, b"query"));
}

#[test]
fn a_udp_translation_in_use_does_not_age() {
    // Each packet restarts the idle time: 4 s after the first packet, but 2 s after the last, a 3 s timeout has not
    // expired. (The margin, 1 s, only has to cover two map operations.)
    let mut dp = dataplane_with(LoadOptions { nat_udp_timeout: Duration::from_secs(3), ..LoadOptions::default() });
    let f = Flow::udp(5003);
    let [g] = colliding_flows(f.nat_port(0), f.backend(), PROTO_UDP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(0, b"query"), XDP_TX, Reason::NatForwardTx);
    std::thread::sleep(Duration::from_secs(2));
    run(&mut dp, &f.backend_sends(f.nat_port(0), 0, b"answer"), XDP_TX, Reason::NatReplyTx);
    std::thread::sleep(Duration::from_secs(2));
    let out = run(&mut dp, &g.client_sends(0, b"query"), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), 0, b"query"));
}

// ----- ICMP errors (path MTU discovery) -----

/// How many bytes of the offending packet an ICMP error quotes in these fixtures: IP header, TCP header, 8 more.
const QUOTE: usize = 20 + 20 + 8;

#[test]
fn frag_needed_about_a_packet_to_the_backend_reaches_the_client() {
    let mut dp = dataplane();
    let f = Flow::tcp(40015);
    let sent = f.client_sends(TCP_ACK | TCP_PSH, REQUEST);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    // A router on the way to the backend cannot forward it: it tells the sender, the VIP.
    let (kind, code, mtu) = FRAG_NEEDED;
    let error =
        frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, kind, code, mtu, &translated[14..14 + QUOTE]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToClient);
    // The client gets it from the VIP, quoting exactly what it sent (quoted TCP checksum included).
    let expected = frames::icmp_error_frame(f.mac, NODE_MAC, VIP, f.client, kind, code, mtu, &sent[14..14 + QUOTE]);
    assert_frame(&out, &expected);
}

#[test]
fn an_icmp_error_quoting_only_eight_bytes_is_translated() {
    // RFC 792 only promises the first 8 bytes of the offending datagram's payload: ports, no TCP checksum.
    let mut dp = dataplane();
    let f = Flow::tcp(40016);
    let sent = f.client_sends(TCP_SYN, b"");
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    let (kind, code, mtu) = FRAG_NEEDED;
    let backend = f.backend_ip();
    let error = frames::icmp_error_frame(NODE_MAC, f.backend_mac(), backend, VIP, kind, code, mtu, &translated[14..42]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToClient);
    let expected = frames::icmp_error_frame(f.mac, NODE_MAC, VIP, f.client, kind, code, mtu, &sent[14..42]);
    assert_frame(&out, &expected);
}

#[test]
fn frag_needed_about_a_reply_reaches_the_backend() {
    let mut dp = dataplane();
    let f = Flow::tcp(40017);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let answer = f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE);
    let translated = run(&mut dp, &answer, XDP_TX, Reason::NatReplyTx);
    // A router on the way to the client cannot forward the reply: the backend must lower its segment size.
    let (kind, code, mtu) = FRAG_NEEDED;
    let error =
        frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, kind, code, mtu, &translated[14..14 + QUOTE]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToBackend);
    let expected = frames::icmp_error_frame(
        f.backend_mac(),
        NODE_MAC,
        VIP,
        f.backend_ip(),
        kind,
        code,
        mtu,
        &answer[14..14 + QUOTE],
    );
    assert_frame(&out, &expected);
}

#[test]
fn port_unreachable_about_udp_reaches_the_client() {
    let mut dp = dataplane();
    let f = Flow::udp(5004);
    let sent = f.client_sends(0, b"query");
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    let (kind, code, rest) = PORT_UNREACHABLE;
    let quoted = &translated[14..];
    let error = frames::icmp_error_frame(NODE_MAC, f.backend_mac(), f.backend_ip(), VIP, kind, code, rest, quoted);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToClient);
    let expected = frames::icmp_error_frame(f.mac, NODE_MAC, VIP, f.client, kind, code, rest, &sent[14..]);
    assert_frame(&out, &expected);
}

#[test]
fn icmp_errors_about_unknown_flows_are_dropped_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40018);
    let (kind, code, mtu) = FRAG_NEEDED;
    // Never translated.
    let never = f.backend_gets(f.nat_port(0), TCP_ACK, REQUEST);
    let error = frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, kind, code, mtu, &never[14..14 + QUOTE]);
    assert_eq!(run(&mut dp, &error, XDP_DROP, Reason::DropNoService), error);
    // Quoting a packet the VIP did not send.
    let foreign = f.client_sends(TCP_ACK, REQUEST);
    let error = frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, kind, code, mtu, &foreign[14..14 + QUOTE]);
    assert_eq!(run(&mut dp, &error, XDP_DROP, Reason::DropNoService), error);
}

// ----- what NAT leaves alone -----

#[test]
fn traffic_between_the_node_and_the_backends_is_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40019);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    // A health check answer from a backend to the node's own address.
    let check = frames::tcp_frame(
        NODE_MAC,
        f.backend_mac(),
        f.backend_ip(),
        NODE_IP,
        HTTP_BACKEND,
        41000,
        TCP_SYN | TCP_ACK,
        b"",
    );
    assert_eq!(run(&mut dp, &check, XDP_PASS, Reason::PassNotVip), check);
}

#[test]
fn a_backend_can_be_a_client_of_the_vip() {
    // A backend's own client socket (an ephemeral port, not its service port) is a client flow like any other,
    // even when it lands on that same backend.
    let mut dp = dataplane();
    let (ip, mac) = BACKENDS[0];
    let f = Flow { client: ip, mac, cport: 45000, protocol: PROTO_TCP };
    let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_SYN, b""));
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_SYN | TCP_ACK, b""));
}

#[test]
fn dsr_services_next_to_nat_ones_only_change_macs() {
    let mut dp = dataplane();
    let mut dsr = nat_service(443, PROTO_TCP, 443);
    dsr.forwarding = FORWARD_DSR;
    dp.apply_service("tls", &dsr).expect("tls");
    let syn = frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40020, 443, TCP_SYN, b"");
    let out = run(&mut dp, &syn, XDP_TX, Reason::ForwardTx);
    assert_eq!(out[12..], syn[12..]);
}

#[test]
fn a_service_switched_to_dsr_stops_translating_replies() {
    let mut dp = dataplane();
    let f = Flow::tcp(40021);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let mut dsr = nat_service(HTTP, PROTO_TCP, HTTP_BACKEND);
    dsr.forwarding = FORWARD_DSR;
    dp.apply_service("web", &dsr).expect("web as DSR");
    // The backend endpoints are no longer NAT endpoints: their packets to the VIP are not replies any more.
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK, b"");
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNoService), reply);
    // A flow pinned under NAT keeps its backend under DSR, and is no longer translated.
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::ForwardTx);
    assert_eq!(out[12..], f.client_sends(TCP_ACK, b"")[12..]);
}

#[test]
fn every_truncation_of_nat_frames_is_passed_or_dropped_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40022);
    let sent = f.client_sends(TCP_ACK | TCP_PSH, REQUEST);
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK, RESPONSE);
    let (kind, code, mtu) = FRAG_NEEDED;
    let error =
        frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, kind, code, mtu, &translated[14..14 + QUOTE]);
    let before = dp.counters().expect("counters");
    for full in [sent, reply, error] {
        for len in 14..full.len() {
            let cut = &full[..len];
            let out = dp.test_run(cut).expect("test_run");
            assert!(out.action == XDP_PASS || out.action == XDP_DROP, "{len}-byte cut: verdict {}", out.action);
            assert_eq!(out.frame, cut, "a {len}-byte cut was modified");
        }
    }
    let after = dp.counters().expect("counters");
    for r in [Reason::NatForwardTx, Reason::NatReplyTx, Reason::NatIcmpToClient, Reason::NatIcmpToBackend] {
        assert_eq!(after.reason(r), before.reason(r), "{}", r.name());
    }
}

// ----- hostile traffic: flow state -----

#[test]
fn a_syn_displaces_an_embryonic_holder_when_all_candidates_are_held() {
    // Spoofed SYNs never get beyond embryonic: a real connection takes the first candidate such an entry holds.
    let mut dp = dataplane();
    let f = Flow::tcp(40030);
    let blockers: Vec<Flow> =
        (0..NAT_PORT_TRIES).map(|a| colliding_flows(f.nat_port(a), f.backend(), PROTO_TCP, 1)[0]).collect();
    for b in &blockers {
        run(&mut dp, &b.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        // The backend's SYN/ACK does not establish the entry.
        run(&mut dp, &b.backend_sends(b.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    }
    let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_SYN, b""));
    // The port's replies now belong to f.
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_SYN | TCP_ACK, b""));
}

#[test]
fn a_non_syn_packet_never_displaces_but_takes_an_embryonic_port_after_the_timeout() {
    let mut dp =
        dataplane_with(LoadOptions { nat_embryonic_timeout: Duration::from_millis(300), ..LoadOptions::default() });
    let f = Flow::tcp(40031);
    let blockers: Vec<Flow> =
        (0..NAT_PORT_TRIES).map(|a| colliding_flows(f.nat_port(a), f.backend(), PROTO_TCP, 1)[0]).collect();
    for b in &blockers {
        run(&mut dp, &b.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    }
    // A flow continuing after a failover (its first packet here is an ACK) does not take live ports.
    run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_DROP, Reason::DropNatNoPort);
    // The backend retransmitting SYN/ACKs to a spoofed source does not keep its entry alive.
    std::thread::sleep(Duration::from_millis(200));
    for b in &blockers {
        run(&mut dp, &b.backend_sends(b.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK, b""));
}

#[test]
fn an_established_translation_outlives_the_embryonic_timeout() {
    let mut dp =
        dataplane_with(LoadOptions { nat_embryonic_timeout: Duration::from_millis(100), ..LoadOptions::default() });
    let f = Flow::tcp(40032);
    let p = f.nat_port(0);
    let [g] = colliding_flows(p, f.backend(), PROTO_TCP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    std::thread::sleep(Duration::from_millis(300));
    // Neither a new connection nor a continuing one may take it.
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_ACK, RESPONSE), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, RESPONSE));
}

#[test]
fn an_established_translation_is_reusable_after_the_established_timeout() {
    let mut dp =
        dataplane_with(LoadOptions { nat_established_timeout: Duration::from_millis(300), ..LoadOptions::default() });
    let f = Flow::tcp(40033);
    let p = f.nat_port(0);
    let [g] = colliding_flows(p, f.backend(), PROTO_TCP, 1)[..] else { unreachable!() };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    std::thread::sleep(Duration::from_millis(500));
    let out = run(&mut dp, &g.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(p, TCP_ACK, b""));
}

// ----- hostile traffic: sources -----

#[test]
fn martian_and_self_sources_are_dropped_before_any_state() {
    let mut dp = dataplane();
    for source in [
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(224, 0, 0, 5),
        Ipv4Addr::new(240, 1, 1, 1),
        Ipv4Addr::BROADCAST,
        VIP,
        NODE_IP,
        // The subnet's broadcast address: the FIB calls it a broadcast, not a host.
        Ipv4Addr::new(10, 77, 0, 255),
    ] {
        let f = Flow { client: source, mac: CLIENT_MAC, cport: 40034, protocol: PROTO_TCP };
        let syn = f.client_sends(TCP_SYN, b"");
        assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropMartianSource), syn, "{source}");
        let ack = f.client_sends(TCP_ACK, b"");
        assert_eq!(run(&mut dp, &ack, XDP_DROP, Reason::DropMartianSource), ack, "{source}");
        // No state: the backend's packet for that flow finds no translation.
        let reply = f.backend_sends(f.nat_port(0), TCP_ACK, b"");
        assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNatNoEntry), reply, "{source}");
    }
    // DSR services too.
    let mut dsr = nat_service(443, PROTO_TCP, 443);
    dsr.forwarding = FORWARD_DSR;
    dp.apply_service("tls", &dsr).expect("tls");
    for source in [VIP, NODE_IP, Ipv4Addr::new(127, 0, 0, 1)] {
        let syn = frames::tcp_frame(NODE_MAC, CLIENT_MAC, source, VIP, 40035, 443, TCP_SYN, b"");
        assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropMartianSource), syn, "{source}");
    }
}

/// The martian test runs where state would be made, not on an established flow's packets (their entry was made
/// after it passed): a client whose address becomes the node's own keeps its flows, but starts no new one.
#[test]
fn a_client_address_that_becomes_the_nodes_own_keeps_its_flows_and_starts_no_new_one() {
    let mut dp = dataplane();
    let mut dsr = nat_service(443, PROTO_TCP, 443);
    dsr.forwarding = FORWARD_DSR;
    dp.apply_service("tls", &dsr).expect("tls");
    let client = Ipv4Addr::new(10, 77, 0, 61);
    let f = Flow { client, mac: CLIENT_MAC, cport: 40039, protocol: PROTO_TCP };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let dsr_frame = |flags| frames::tcp_frame(NODE_MAC, CLIENT_MAC, client, VIP, 40040, 443, flags, b"");
    run(&mut dp, &dsr_frame(TCP_SYN), XDP_TX, Reason::ForwardTx);

    support::fixture::ip(&format!("addr add {client}/32 dev lan"));
    // Any write of the data plane reads the node's addresses afresh.
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");

    let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
    run(&mut dp, &dsr_frame(TCP_ACK), XDP_TX, Reason::ForwardTx);
    // A new connection (a SYN starts over) and a flow without an entry are tested, and dropped.
    let syn = f.client_sends(TCP_SYN, b"");
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropMartianSource), syn);
    let syn = dsr_frame(TCP_SYN);
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropMartianSource), syn);
    let other = Flow { cport: 40041, ..f };
    let ack = other.client_sends(TCP_ACK, b"");
    assert_eq!(run(&mut dp, &ack, XDP_DROP, Reason::DropMartianSource), ack);
}

#[test]
fn traffic_to_the_vip_that_no_service_takes_is_dropped_and_echo_is_still_answered() {
    let mut dp = dataplane();
    let tcp = frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40036, 22, TCP_SYN, b"");
    assert_eq!(run(&mut dp, &tcp, XDP_DROP, Reason::DropNoService), tcp);
    let udp = frames::udp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40036, 161, b"x");
    assert_eq!(run(&mut dp, &udp, XDP_DROP, Reason::DropNoService), udp);
    let mut gre = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    gre.extend(frames::ipv4(CLIENT, VIP, 47, &[0; 8]));
    assert_eq!(run(&mut dp, &gre, XDP_DROP, Reason::DropNoService), gre);
    let mut timestamp = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    timestamp.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_error(13, 0, [0; 4], &[0; 12])));
    assert_eq!(run(&mut dp, &timestamp, XDP_DROP, Reason::DropNoService), timestamp);
    let mut ping = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
    ping.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 7, 1, b"ping")));
    run(&mut dp, &ping, XDP_TX, Reason::EchoReply);
}

// ----- hostile traffic: where replies go (the FIB) -----

#[test]
fn a_reply_to_a_client_without_a_neighbour_entry_is_translated_and_handed_to_the_kernel() {
    let mut dp = dataplane();
    // On-link, but the node has not resolved it yet.
    let f = Flow { client: Ipv4Addr::new(10, 77, 0, 60), mac: CLIENT_MAC, cport: 40037, protocol: PROTO_TCP };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let reply = f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b"");
    let out = run(&mut dp, &reply, XDP_PASS, Reason::PassNoNeighbour);
    // Translated; the MACs are the backend's frame's (the kernel routes it and fills them in).
    let mut expected = f.client_gets(TCP_SYN | TCP_ACK, b"");
    expected[0..12].copy_from_slice(&reply[0..12]);
    assert_frame(&out, &expected);
    // Once the kernel knows the neighbour, replies go straight out (after the cached lookup expires: a miss is not
    // cached).
    support::fixture::ip(&format!("neigh replace {} lladdr {} dev lan nud permanent", f.client, fmt_mac(CLIENT_MAC)));
    let out = run(&mut dp, &reply, XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_SYN | TCP_ACK, b""));
}

#[test]
fn replies_to_a_client_without_a_route_back_are_dropped_and_counted() {
    let mut dp = dataplane();
    // The node has no default route: no route back to 203.0.113.9 at all.
    let f = Flow { client: Ipv4Addr::new(203, 0, 113, 9), mac: ROUTER_MAC, cport: 40038, protocol: PROTO_TCP };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let reply = f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b"");
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNoRoute), reply);
    // An explicitly unreachable (or blackholed, or prohibited) destination.
    support::fixture::ip("route add unreachable 203.0.113.0/24");
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNoRoute), reply);
}

#[test]
fn without_ip_forwarding_replies_are_dropped_and_counted() {
    let mut dp = dataplane();
    support::fixture::lan();
    std::fs::write("/proc/sys/net/ipv4/conf/lan/forwarding", "0").expect("forwarding off");
    let f = Flow::tcp(40039);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let reply = f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b"");
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropForwardingDisabled), reply);
}

#[test]
fn replies_to_a_client_behind_another_interface_are_redirected_with_its_mac() {
    let mut dp = dataplane();
    let wan_client = Ipv4Addr::new(192, 0, 2, 50);
    let wan_client_mac = [0x02, 0, 0, 0, 0, 0x50];
    support::fixture::ip(&format!(
        "neigh replace {wan_client} lladdr {} dev wan nud permanent",
        fmt_mac(wan_client_mac)
    ));
    let f = Flow { client: wan_client, mac: wan_client_mac, cport: 40040, protocol: PROTO_TCP };
    // It arrives on lan here (the fixture runs every frame there), its route points out of wan.
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let out = run(
        &mut dp,
        &f.backend_sends(f.nat_port(0), TCP_ACK, b""),
        support::fixture::XDP_REDIRECT,
        Reason::NatReplyRedirect,
    );
    let mut expected = f.client_gets(TCP_ACK, b"");
    expected[6..12].copy_from_slice(&support::fixture::WAN_MAC);
    assert_frame(&out, &expected);
}

#[test]
fn a_backend_behind_another_interface_gets_frames_from_that_interfaces_mac() {
    let mut dp = dataplane();
    let wan = support::fixture::ifindex("wan");
    let far = (Ipv4Addr::new(192, 0, 2, 21), [0x02, 0, 0, 0, 0, 0x77]);
    let spec = ServiceSpec {
        addresses: vec![VIP.into()],
        port: 8001,
        protocol: PROTO_TCP,
        forwarding: FORWARD_NAT,
        backends: vec![BackendSpec {
            address: far.0.into(),
            port: 8080,
            weight: 1,
            healthy: true,
            mac: Some(far.1),
            ifindex: wan,
        }],
    };
    dp.apply_service("far", &spec).expect("far");
    let syn = frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40041, 8001, TCP_SYN, b"");
    let out = run(&mut dp, &syn, support::fixture::XDP_REDIRECT, Reason::NatForwardRedirect);
    assert_eq!(&out[0..6], &far.1, "to the backend's MAC");
    assert_eq!(&out[6..12], &support::fixture::WAN_MAC, "from wan's MAC");
    assert_eq!(&out[30..34], &far.0.octets());
}

#[test]
fn an_icmp_error_for_a_flow_whose_backend_slot_changed_hands_is_not_sent_to_the_new_owner() {
    let mut dp = dataplane();
    let f = Flow::tcp(40042);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let answer = f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE);
    let translated = run(&mut dp, &answer, XDP_TX, Reason::NatReplyTx);
    // The flow's backend leaves web; its slot is handed to a backend of another service (filler takes every
    // never-used slot first, so "alt" gets the freed one).
    let mut web = nat_service(HTTP, PROTO_TCP, HTTP_BACKEND);
    web.backends.remove(f.backend());
    dp.apply_service("web", &web).expect("web without the flow's backend");
    let filler = |n: u32| ServiceSpec {
        addresses: vec![VIP.into()],
        port: 9000,
        protocol: PROTO_TCP,
        forwarding: FORWARD_DSR,
        backends: (0..n)
            .map(|i| BackendSpec {
                address: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i).into(),
                port: 80,
                weight: 1,
                healthy: true,
                mac: Some([2, 0, 0, 0, 0, 0x99]),
                ifindex: 0,
            })
            .collect(),
    };
    dp.apply_service("filler", &filler(lb_common::MAX_BACKENDS - 6)).expect("filler");
    dp.remove_service("filler").expect("remove filler");
    dp.apply_service("filler", &ServiceSpec { port: 9001, ..filler(1) }).expect("alt on the freed slot");
    let (kind, code, mtu) = FRAG_NEEDED;
    let error =
        frames::icmp_error_frame(NODE_MAC, ROUTER_MAC, ROUTER, VIP, kind, code, mtu, &translated[14..14 + QUOTE]);
    assert_eq!(run(&mut dp, &error, XDP_DROP, Reason::DropNoService), error);
}

// ----- what metrics read -----

/// The table scan behind `xvip_dataplane_map_entries` and `xvip_backend_flows`: every connection-table and NAT
/// entry counts towards the fill, only flows not reset (nor closed by both sides) count as open.
#[test]
fn a_table_scan_counts_every_entry_and_the_open_flows() {
    let mut dp = dataplane_with(LoadOptions { conntrack_entries: 2048, ..LoadOptions::default() });
    for cport in 30000..30010 {
        run(&mut dp, &Flow::tcp(cport).client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    }
    run(&mut dp, &Flow::tcp(30000).client_sends(TCP_RST, b""), XDP_TX, Reason::NatForwardTx);
    let scan = dp.scan_tables().expect("scan");
    assert_eq!((scan.conntrack_entries, scan.nat_entries, scan.capacity), (10, 10, 2048));
    assert_eq!(scan.flows.values().sum::<u64>(), 9, "{:?}", scan.flows);
    assert!(scan.flows.keys().all(|(service, _, port)| service.service == "web" && *port == HTTP_BACKEND));
    assert_eq!(dp.flows_per_backend().expect("flows"), scan.flows);
}
