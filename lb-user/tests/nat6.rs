//! BPF_PROG_TEST_RUN fixtures for NAT to IPv6 backends (`nat6.rs`, reached by a tail call): input frame, verdict,
//! exact output bytes and the one counter that must move. Expected frames are built from scratch by
//! `support::frames` (full checksums over the IPv6 pseudo-header), so an exact match also checks the program's
//! incremental updates over the 16-byte addresses. Needs root; nothing is sent on any interface.
mod support;

use std::{
    net::Ipv6Addr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    FAMILY_IPV6, FLOW_CACHE_REFRESH_NS, FORWARD_DSR, FORWARD_NAT, FlowKey6, FlowValue6, MAGLEV_M,
    NAT_CHECK_INTERVAL_NS, NAT_PORT_TRIES, NatKey6, NatValue6, PROTO_TCP, PROTO_UDP, Reason, flow_hash6, group_seed6,
    names, nat_port, router_slot,
};
use support::fixture::{self, CLIENT_MAC, NODE_MAC, VRID, XDP_DROP, XDP_PASS, XDP_TX, run};
use support::frames::{
    self, ETH_IPV6, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, assert_frame6 as assert_frame, hex,
};
use xvip::{
    dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceId, ServiceSpec, Vip6Spec},
    maglev,
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);
const ROUTER6: u32 = router_slot(0, FAMILY_IPV6);
const BACKENDS6: [(Ipv6Addr, [u8; 6]); 3] = [
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x21), [0x02, 0, 0, 0, 0, 0x31]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x22), [0x02, 0, 0, 0, 0, 0x32]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x23), [0x02, 0, 0, 0, 0, 0x33]),
];
/// The NAT services: TCP 80 -> 8080 and UDP 53 -> 5353 on every backend.
const HTTP: u16 = 80;
const HTTP_BACKEND: u16 = 8080;
const DNS: u16 = 53;
const DNS_BACKEND: u16 = 5353;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nbackend";

fn seed() -> u32 {
    group_seed6(VIP6.octets(), VRID)
}

fn service(port: u16, protocol: u8, backend_port: u16) -> ServiceSpec {
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
    ServiceSpec { addresses: vec![VIP6.into()], port, protocol, forwarding: FORWARD_NAT, backends }
}

/// The fixture namespace with IPv6 too: the node's address on `lan`, IPv6 forwarding on, permanent neighbour
/// entries for the clients (on-link, `CLIENT_MAC`) and the backends.
fn lan6() {
    fixture::lan();
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut script = vec![format!("addr replace {NODE6}/64 dev lan nodad")];
    for host in [0x10u16].into_iter().chain(0x100..=0x180) {
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, host);
        script.push(format!("neigh replace {client} lladdr {} dev lan nud permanent", mac(CLIENT_MAC)));
    }
    for (address, m) in BACKENDS6 {
        script.push(format!("neigh replace {address} lladdr {} dev lan nud permanent", mac(m)));
    }
    let mut child = std::process::Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("running ip -batch");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin of ip");
        stdin.write_all(script.join("\n").as_bytes()).expect("writing to ip");
    }
    assert!(child.wait().expect("ip -batch").success(), "setting up IPv6 in the fixture namespace");
    for iface in ["all", "lan"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"), "1").expect("enabling forwarding");
    }
}

fn dataplane_with(options: LoadOptions) -> DataPlane {
    lan6();
    let mut dp = DataPlane::load(LoadOptions { service_capacity: 3, ..options })
        .expect("loading the XDP program (these tests need root)");
    dp.set_node_mac(NODE_MAC).expect("set_node_mac");
    dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: seed(), interface: None }])
        .expect("set_vips6");
    dp.set_router_active(ROUTER6, true).expect("set_router_active");
    dp.apply_service("web", &service(HTTP, PROTO_TCP, HTTP_BACKEND)).expect("web");
    dp.apply_service("dns", &service(DNS, PROTO_UDP, DNS_BACKEND)).expect("dns");
    dp
}

fn dataplane() -> DataPlane {
    dataplane_with(LoadOptions::default())
}

/// The Maglev table of the services (both have the same backends; names are `[address]:port`).
fn table(backend_port: u16) -> Vec<u32> {
    static TABLES: OnceLock<[Vec<u32>; 2]> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        [HTTP_BACKEND, DNS_BACKEND].map(|port| {
            let members: Vec<maglev::MaglevBackend> = BACKENDS6
                .iter()
                .enumerate()
                .map(|(i, (a, _))| maglev::MaglevBackend { id: i as u32, key: format!("[{a}]:{port}"), weight: 1 })
                .collect();
            maglev::build(&members, MAGLEV_M).expect("maglev")
        })
    });
    tables[usize::from(backend_port == DNS_BACKEND)].clone()
}

/// A client flow and what NAT must make of it, predicted from the shared flow hash and the Maglev builder.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: Ipv6Addr,
    cport: u16,
    protocol: u8,
}

impl Flow {
    fn tcp(cport: u16) -> Self {
        Flow { client: CLIENT6, cport, protocol: PROTO_TCP }
    }

    fn udp(cport: u16) -> Self {
        Flow { client: CLIENT6, cport, protocol: PROTO_UDP }
    }

    fn service(&self) -> u16 {
        if self.protocol == PROTO_TCP { HTTP } else { DNS }
    }

    fn backend_port(&self) -> u16 {
        if self.protocol == PROTO_TCP { HTTP_BACKEND } else { DNS_BACKEND }
    }

    fn hash(&self) -> u32 {
        flow_hash6(&self.client.octets(), self.cport.to_be_bytes(), self.service().to_be_bytes(), self.protocol, seed())
    }

    fn backend(&self) -> usize {
        table(self.backend_port())[(self.hash() % MAGLEV_M) as usize] as usize
    }

    fn nat_port(&self, attempt: u32) -> u16 {
        u16::from_be_bytes(nat_port(self.hash(), attempt))
    }

    #[expect(clippy::too_many_arguments, reason = "every field of the frame")]
    fn frame(
        &self,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = frames::eth(dst_mac, src_mac, ETH_IPV6);
        let segment = if self.protocol == PROTO_TCP {
            frames::tcp6(src, dst, sport, dport, flags, payload)
        } else {
            frames::udp6(src, dst, sport, dport, payload)
        };
        f.extend(frames::ipv6(src, dst, self.protocol, 64, &segment));
        f
    }

    fn client_sends(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.frame(NODE_MAC, CLIENT_MAC, self.client, VIP6, self.cport, self.service(), flags, payload)
    }

    fn backend_gets(&self, port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (address, mac) = BACKENDS6[self.backend()];
        self.frame(mac, NODE_MAC, VIP6, address, port, self.backend_port(), flags, payload)
    }

    fn backend_sends(&self, port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (address, mac) = BACKENDS6[self.backend()];
        self.frame(NODE_MAC, mac, address, VIP6, self.backend_port(), port, flags, payload)
    }

    fn client_gets(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.frame(CLIENT_MAC, NODE_MAC, VIP6, self.client, self.service(), self.cport, flags, payload)
    }

    /// The flow's `CONNTRACK6` key.
    fn key(&self) -> FlowKey6 {
        let (cport, service) = (self.cport.to_be_bytes(), self.service().to_be_bytes());
        FlowKey6::new(self.client.octets(), VIP6.octets(), cport, service, self.protocol)
    }

    /// The `NAT6` key of the flow's translation from NAT port `port`.
    fn nat_key(&self, port: u16) -> NatKey6 {
        let (address, _) = BACKENDS6[self.backend()];
        let (bport, nport) = (self.backend_port().to_be_bytes(), port.to_be_bytes());
        NatKey6::new(address.octets(), VIP6.octets(), bport, nport, self.protocol)
    }
}

/// The backend answers with an ACK: the flow's translation is established.
fn establish(dp: &mut DataPlane, f: &Flow, port: u16) {
    let out = run(dp, &f.backend_sends(port, TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, b""));
}

/// A flow from another client (2001:db8:77::100 ...) whose first NAT candidate is `port` on `backend`.
fn colliding_flow(port: u16, backend: usize, protocol: u8, skip: u16) -> Flow {
    for host in 0x100 + skip..=0x180 {
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, host);
        for cport in 1024..=65535u16 {
            let f = Flow { client, cport, protocol };
            if f.nat_port(0) == port && f.backend() == backend {
                return f;
            }
        }
    }
    panic!("no flow collides on port {port}");
}

#[test]
fn a_syn_is_translated_to_the_vip_and_the_flow_port_and_the_reply_back() {
    let mut dp = dataplane();
    let f = Flow::tcp(40001);
    let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_SYN, b""));
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_SYN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_SYN | TCP_ACK, b""));
    let c = dp.counters().expect("counters");
    assert_eq!(c.services[&ServiceId::from("web")].new_flows, 1);
    assert_eq!(c.backends[&("web".into(), BACKENDS6[f.backend()].0.into(), HTTP_BACKEND)].packets, 1);
}

#[test]
fn established_packets_keep_the_translation_both_ways() {
    let mut dp = dataplane();
    let f = Flow::tcp(40002);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, f.nat_port(0));
    for _ in 0..3 {
        let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
        let out =
            run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE), XDP_TX, Reason::NatReplyTx);
        assert_frame(&out, &f.client_gets(TCP_ACK | TCP_PSH, RESPONSE));
    }
    assert_eq!(dp.counters().expect("counters").services[&ServiceId::from("web")].new_flows, 1);
}

#[test]
fn many_flows_spread_over_the_backends_each_from_its_own_port() {
    let mut dp = dataplane();
    let mut seen = [false; 3];
    for cport in 41000..41040 {
        let f = Flow::tcp(cport);
        let out = run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_SYN, b""));
        seen[f.backend()] = true;
    }
    assert_eq!(seen, [true; 3]);
}

#[test]
fn udp_is_translated_both_ways_with_valid_checksums() {
    let mut dp = dataplane();
    for cport in 50000..50020 {
        let f = Flow::udp(cport);
        let out = run(&mut dp, &f.client_sends(0, REQUEST), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(f.nat_port(0), 0, REQUEST));
        let out = run(&mut dp, &f.backend_sends(f.nat_port(0), 0, RESPONSE), XDP_TX, Reason::NatReplyTx);
        assert_frame(&out, &f.client_gets(0, RESPONSE));
        assert_ne!(&out[60..62], &[0, 0], "a UDP checksum over IPv6 is never 0");
    }
}

/// As for IPv4 (`nat.rs`), the martian test runs where state would be made, not on an established flow's packets
/// (their entries were made after it passed): a client whose address becomes the node's own keeps its NAT and DSR
/// flows, but starts no new one.
#[test]
fn an_ipv6_client_address_that_becomes_the_nodes_own_keeps_its_flows_and_starts_no_new_one() {
    let mut dp = dataplane();
    let dsr = ServiceSpec { forwarding: FORWARD_DSR, ..service(443, PROTO_TCP, 443) };
    dp.apply_service("tls", &dsr).expect("tls");
    let client = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x61);
    let f = Flow { client, cport: 40039, protocol: PROTO_TCP };
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let dsr_frame = |flags| f.frame(NODE_MAC, CLIENT_MAC, client, VIP6, 40040, 443, flags, b"");
    run(&mut dp, &dsr_frame(TCP_SYN), XDP_TX, Reason::ForwardTx);

    fixture::ip(&format!("addr add {client}/128 dev lan nodad"));
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
    let ack = Flow { cport: 40041, ..f }.client_sends(TCP_ACK, b"");
    assert_eq!(run(&mut dp, &ack, XDP_DROP, Reason::DropMartianSource), ack);
}

#[test]
fn a_reply_without_a_translation_is_dropped_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40003);
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK, RESPONSE);
    assert_eq!(run(&mut dp, &reply, XDP_DROP, Reason::DropNatNoEntry), reply);
}

#[test]
fn the_node_taking_over_rebuilds_the_same_translation_from_the_next_client_packet() {
    let mut a = dataplane();
    let mut b = dataplane();
    let f = Flow::tcp(40006);
    run(&mut a, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut a, &f, f.nat_port(0));
    let pushed = f.backend_sends(f.nat_port(0), TCP_ACK | TCP_PSH, RESPONSE);
    assert_eq!(run(&mut b, &pushed, XDP_DROP, Reason::DropNatNoEntry), pushed);
    let from_b = run(&mut b, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    let from_a = run(&mut a, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    assert_eq!(from_b, from_a, "node B chose what node A chose");
    assert_frame(&from_b, &f.backend_gets(f.nat_port(0), TCP_ACK | TCP_PSH, REQUEST));
    let out = run(&mut b, &pushed, XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK | TCP_PSH, RESPONSE));
}

#[test]
fn a_colliding_flow_takes_the_next_candidate_and_both_translate_back() {
    let mut dp = dataplane();
    let f = Flow::tcp(40010);
    let g = colliding_flow(f.nat_port(0), f.backend(), PROTO_TCP, 0);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, f.nat_port(0));
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_SYN, b""));
    let out = run(&mut dp, &g.backend_sends(g.nat_port(1), TCP_ACK, RESPONSE), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &g.client_gets(TCP_ACK, RESPONSE));
    let out = run(&mut dp, &f.backend_sends(f.nat_port(0), TCP_ACK, RESPONSE), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_ACK, RESPONSE));
}

#[test]
fn a_reset_flow_translates_its_rst_and_gives_its_port_up_after_the_grace() {
    let mut dp = dataplane_with(LoadOptions { nat_closed_grace: Duration::from_secs(2), ..LoadOptions::default() });
    let f = Flow::tcp(40011);
    let p = f.nat_port(0);
    let g = colliding_flow(p, f.backend(), PROTO_TCP, 0);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    let out = run(&mut dp, &f.client_sends(TCP_RST | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_RST | TCP_ACK, b""));
    // Within the grace the port is still the flow's.
    let out = run(&mut dp, &g.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(1), TCP_ACK, b""));
    // Timeouts long enough for a loaded machine to run the steps before them in time.
    std::thread::sleep(Duration::from_millis(2500));
    let h = colliding_flow(p, f.backend(), PROTO_TCP, g.client.segments()[7] - 0x100 + 1);
    let out = run(&mut dp, &h.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &h.backend_gets(p, TCP_SYN, b""));
}

#[test]
fn fin_from_both_sides_is_translated() {
    let mut dp = dataplane();
    let f = Flow::tcp(40012);
    let p = f.nat_port(0);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    let out = run(&mut dp, &f.client_sends(TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_FIN | TCP_ACK, b""));
    let out = run(&mut dp, &f.backend_sends(p, TCP_FIN | TCP_ACK, b""), XDP_TX, Reason::NatReplyTx);
    assert_frame(&out, &f.client_gets(TCP_FIN | TCP_ACK, b""));
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(p, TCP_ACK, b""));
}

#[test]
fn an_embryonic_translation_is_displaced_by_a_syn_and_reclaimed_after_its_timeout() {
    let mut dp =
        dataplane_with(LoadOptions { nat_embryonic_timeout: Duration::from_secs(2), ..LoadOptions::default() });
    let f = Flow::tcp(40013);
    let mut skip = 0;
    let mut blockers = Vec::new();
    for a in 0..NAT_PORT_TRIES {
        let b = colliding_flow(f.nat_port(a), f.backend(), PROTO_TCP, skip);
        skip = b.client.segments()[7] - 0x100 + 1;
        run(&mut dp, &b.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        blockers.push(b);
    }
    // A continuing flow (an ACK) takes no live port, embryonic or not.
    run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_DROP, Reason::DropNatNoPort);
    // Timeouts long enough for a loaded machine to run the steps before them in time.
    std::thread::sleep(Duration::from_millis(2500));
    let out = run(&mut dp, &f.client_sends(TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(f.nat_port(0), TCP_ACK, b""));
    // A SYN displaces the first embryonic holder at once.
    let g = Flow::tcp(40014);
    let mut skip = 0;
    for a in 0..NAT_PORT_TRIES {
        let b = colliding_flow(g.nat_port(a), g.backend(), PROTO_TCP, skip);
        skip = b.client.segments()[7] - 0x100 + 1;
        run(&mut dp, &b.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    }
    let out = run(&mut dp, &g.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &g.backend_gets(g.nat_port(0), TCP_SYN, b""));
}

#[test]
fn every_truncation_of_nat_frames_is_passed_or_dropped_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40020);
    let sent = f.client_sends(TCP_ACK | TCP_PSH, REQUEST);
    run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK, RESPONSE);
    let udp = Flow::udp(50100).client_sends(0, REQUEST);
    let before = dp.counters().expect("counters");
    for full in [sent, reply, udp] {
        for len in 14..full.len() {
            let cut = &full[..len];
            let out = dp.test_run(cut).expect("test_run");
            assert!(out.action == XDP_PASS || out.action == XDP_DROP, "{len}-byte cut: verdict {}", out.action);
            assert_eq!(out.frame, cut, "a {len}-byte cut was modified");
        }
    }
    let after = dp.counters().expect("counters");
    for r in [Reason::NatForwardTx, Reason::NatReplyTx] {
        assert_eq!(after.reason(r), before.reason(r), "{}", r.name());
    }
}

/// The backend Maglev picks for `f` among the `usable` backends (the data plane's table over them).
fn pick(f: &Flow, usable: &[usize]) -> usize {
    let members: Vec<maglev::MaglevBackend> = usable
        .iter()
        .map(|&i| maglev::MaglevBackend {
            id: i as u32,
            key: format!("[{}]:{}", BACKENDS6[i].0, f.backend_port()),
            weight: 1,
        })
        .collect();
    let table = maglev::build(&members, MAGLEV_M).expect("maglev");
    table[(f.hash() % MAGLEV_M) as usize] as usize
}

#[test]
fn a_flow_moved_off_an_unhealthy_backend_releases_its_old_translation() {
    let mut dp = dataplane();
    let f = Flow::tcp(40030);
    let p = f.nat_port(0);
    let old = f.backend();
    assert_eq!(pick(&f, &[0, 1, 2]), old, "the helper agrees with the table");
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    establish(&mut dp, &f, p);
    let mut spec = service(HTTP, PROTO_TCP, HTTP_BACKEND);
    spec.backends[old].healthy = false;
    dp.apply_service("web", &spec).expect("web with a backend down");
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = pick(&f, &others);
    let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    let (address, mac) = BACKENDS6[new];
    assert_frame(&out, &f.frame(mac, NODE_MAC, VIP6, address, p, HTTP_BACKEND, TCP_ACK | TCP_PSH, REQUEST));
    // The old backend's late reply finds no translation: the flow's old entry was deleted, not left to age.
    let late = f.backend_sends(p, TCP_ACK, RESPONSE);
    assert_eq!(run(&mut dp, &late, XDP_DROP, Reason::DropNatNoEntry), late);
}

#[test]
fn without_the_nat_program_in_its_slot_client_packets_are_dropped_and_counted() {
    use aya::maps::{Map, MapData, ProgramArray};
    let mut dp = dataplane();
    let Some(Map::ProgramArray(data)) = dp.map(lb_common::names::NAT6_PROGRAMS) else {
        panic!("NAT6_PROGRAMS is a program array");
    };
    let id = data.info().expect("map info").id();
    let mut programs =
        ProgramArray::try_from(Map::ProgramArray(MapData::from_id(id).expect("map by id"))).expect("program array");
    programs.clear_index(&0).expect("emptying the slot");
    let syn = Flow::tcp(40040).client_sends(TCP_SYN, b"");
    assert_eq!(run(&mut dp, &syn, XDP_DROP, Reason::DropIpv6Transport), syn);
}

/// A router between the node and a backend or client.
const ROUTER6_ADDRESS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0xfe);
const ROUTER6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// An ICMPv6 Packet Too Big (MTU 1280) from `src` to `dst` quoting `quoted` (an IPv6 packet), in a frame.
fn packet_too_big(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, quoted: &[u8]) -> Vec<u8> {
    let mut message = vec![2, 0, 0, 0, 0, 0, 5, 0];
    message.extend_from_slice(quoted);
    let mut f = frames::eth(dst_mac, src_mac, ETH_IPV6);
    f.extend(frames::ipv6(src, dst, 58, 64, &frames::icmp6(src, dst, message)));
    f
}

#[test]
fn packet_too_big_about_a_packet_to_the_backend_reaches_the_client_translated() {
    let mut dp = dataplane();
    let f = Flow::tcp(40050);
    let sent = f.client_sends(TCP_ACK | TCP_PSH, REQUEST);
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    let error = packet_too_big(NODE_MAC, ROUTER6_MAC, ROUTER6_ADDRESS, VIP6, &translated[14..]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToClient);
    // The client gets the error about its own packet, as it sent it.
    let expected = packet_too_big(CLIENT_MAC, NODE_MAC, ROUTER6_ADDRESS, CLIENT6, &sent[14..]);
    assert_eq!(hex(&out), hex(&expected));
    assert!(frames::icmp6_ok(&out), "ICMPv6 checksum");
}

#[test]
fn packet_too_big_about_a_reply_reaches_the_backend_translated() {
    let mut dp = dataplane();
    let f = Flow::tcp(40051);
    run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    let reply = f.backend_sends(f.nat_port(0), TCP_ACK, RESPONSE);
    let to_client = run(&mut dp, &reply, XDP_TX, Reason::NatReplyTx);
    let error = packet_too_big(NODE_MAC, ROUTER6_MAC, ROUTER6_ADDRESS, VIP6, &to_client[14..]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToBackend);
    let (address, mac) = BACKENDS6[f.backend()];
    let expected = packet_too_big(mac, NODE_MAC, ROUTER6_ADDRESS, address, &reply[14..]);
    assert_eq!(hex(&out), hex(&expected));
    assert!(frames::icmp6_ok(&out), "ICMPv6 checksum");
    // UDP too, quoting only the first bytes of the datagram (its checksum included).
    let u = Flow::udp(50200);
    let sent = u.client_sends(0, REQUEST);
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    let error = packet_too_big(NODE_MAC, ROUTER6_MAC, ROUTER6_ADDRESS, VIP6, &translated[14..14 + 48]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToClient);
    let expected = packet_too_big(CLIENT_MAC, NODE_MAC, ROUTER6_ADDRESS, CLIENT6, &sent[14..14 + 48]);
    assert_eq!(hex(&out), hex(&expected));
}

#[test]
fn icmpv6_errors_about_no_nat_flow_are_dropped_untouched() {
    let mut dp = dataplane();
    let f = Flow::tcp(40052);
    // Quoting a packet the node never translated: to a backend from a NAT port, and to a client from the service.
    let to_backend = f.backend_gets(f.nat_port(0), TCP_SYN, b"");
    let to_client = f.client_gets(TCP_ACK, RESPONSE);
    for quoted in [to_backend, to_client] {
        let error = packet_too_big(NODE_MAC, ROUTER6_MAC, ROUTER6_ADDRESS, VIP6, &quoted[14..]);
        assert_eq!(run(&mut dp, &error, XDP_DROP, Reason::DropNoService), error);
    }
}

/// The table scan behind `xvip status` flows (draining) and the metrics: IPv6 NAT entries count towards the fill,
/// only flows whose translation is their own and open count as open flows of their backend.
#[test]
fn a_table_scan_counts_ipv6_nat_entries_and_their_open_flows() {
    let mut dp = dataplane_with(LoadOptions { conntrack_entries: 2048, ..LoadOptions::default() });
    for cport in 30000..30010 {
        run(&mut dp, &Flow::tcp(cport).client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
    }
    run(&mut dp, &Flow::tcp(30000).client_sends(TCP_RST, b""), XDP_TX, Reason::NatForwardTx);
    let scan = dp.scan_tables().expect("scan");
    assert_eq!((scan.conntrack_entries, scan.nat_entries), (10, 10));
    assert_eq!(scan.flows.values().sum::<u64>(), 9, "{:?}", scan.flows);
    assert!(
        scan.flows
            .keys()
            .all(|(service, address, port)| service.service == "web" && address.is_ipv6() && *port == HTTP_BACKEND)
    );
    assert_eq!(dp.flows_per_backend().expect("flows"), scan.flows);
    // An instance leaving the active role forgets them all.
    assert_eq!(dp.forget_flows(&[VIP6.into()]).expect("forget"), (10, 10));
    assert_eq!(dp.scan_tables().expect("scan").nat_entries, 0);
}

#[test]
fn a_short_quote_in_a_padded_frame_keeps_the_padding_out_of_the_checksum() {
    let mut dp = dataplane();
    let f = Flow::tcp(40053);
    let sent = f.client_sends(TCP_ACK | TCP_PSH, REQUEST);
    let translated = run(&mut dp, &sent, XDP_TX, Reason::NatForwardTx);
    // The quote ends after the ports (no checksum); the frame carries 20 bytes after the IPv6 payload, where the
    // quoted checksum would be.
    let mut error = packet_too_big(NODE_MAC, ROUTER6_MAC, ROUTER6_ADDRESS, VIP6, &translated[14..14 + 44]);
    error.extend_from_slice(&[0xab; 20]);
    let out = run(&mut dp, &error, XDP_TX, Reason::NatIcmpToClient);
    let mut expected = packet_too_big(CLIENT_MAC, NODE_MAC, ROUTER6_ADDRESS, CLIENT6, &sent[14..14 + 44]);
    expected.extend_from_slice(&[0xab; 20]);
    assert_eq!(hex(&out), hex(&expected));
    assert!(frames::icmp6_ok(&out), "ICMPv6 checksum");
}

/// A second, writable handle on the LRU hash map `name` (the data plane only lends its maps read-only), to delete
/// entries behind the agent's back as an LRU eviction or another flow would.
fn writable<K: aya::Pod, V: aya::Pod>(dp: &DataPlane, name: &str) -> BpfHashMap<MapData, K, V> {
    let Some(Map::LruHashMap(data)) = dp.map(name) else { panic!("{name} is an LRU hash map") };
    let id = data.info().expect("map info").id();
    let data = MapData::from_id(id).expect("a second handle on the map");
    BpfHashMap::try_from(Map::LruHashMap(data)).expect("an LRU hash map")
}

/// Deletes `f`'s `CONNTRACK6` entry (the flow generation is not bumped: a CPU's flow cache may still serve it).
fn evict(dp: &DataPlane, f: &Flow) {
    writable::<FlowKey6, FlowValue6>(dp, names::CONNTRACK6).remove(&f.key()).expect("the flow's entry is there");
}

fn conntrack_holds(dp: &DataPlane, f: &Flow) -> bool {
    let table: BpfHashMap<&MapData, FlowKey6, FlowValue6> =
        BpfHashMap::try_from(dp.map(names::CONNTRACK6).expect("CONNTRACK6")).expect("CONNTRACK6 as a hash map");
    table.get(&f.key(), 0).is_ok()
}

/// Deletes `f`'s translation from `port` (as another flow taking the port over would leave it: not the flow's).
fn drop_translation(dp: &DataPlane, f: &Flow, port: u16) {
    writable::<NatKey6, NatValue6>(dp, names::NAT6).remove(&f.nat_key(port)).expect("the translation is there");
}

fn has_translation(dp: &DataPlane, f: &Flow, port: u16) -> bool {
    let table: BpfHashMap<&MapData, NatKey6, NatValue6> =
        BpfHashMap::try_from(dp.map(names::NAT6).expect("NAT6")).expect("NAT6 as a hash map");
    table.get(&f.nat_key(port), 0).is_ok()
}

/// The new flows counted for `f`'s backend so far.
fn new_flows(dp: &DataPlane, f: &Flow) -> u64 {
    let c = dp.counters().expect("counters");
    let (address, _) = BACKENDS6[f.backend()];
    c.backends[&(ServiceId::from("web"), address.into(), HTTP_BACKEND)].new_flows
}

/// Runs `attempt` with successive client flows until one reports that its timing held: its steps that a flow cache
/// entry or a confirmation must outlive ran within half their age (at most 20 tries on a slow machine).
fn with_a_quick_flow(first: u16, mut attempt: impl FnMut(Flow) -> bool) {
    for cport in first..first + 20 {
        if attempt(Flow::tcp(cport)) {
            return;
        }
    }
    panic!("every attempt took longer than the flow cache's refresh age");
}

/// Sends a plain data packet of `f` and checks it reached `f`'s backend from NAT port `port`.
fn request(dp: &mut DataPlane, f: &Flow, port: u16) {
    let out = run(dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
    assert_frame(&out, &f.backend_gets(port, TCP_ACK | TCP_PSH, REQUEST));
}

fn within(start: Instant, ns: u64) -> bool {
    start.elapsed() < Duration::from_nanos(ns / 2)
}

#[test]
fn an_established_ipv6_nat_flow_is_served_from_the_flow_cache_without_the_connection_table() {
    let mut dp = dataplane();
    with_a_quick_flow(40100, |f| {
        let p = f.nat_port(0);
        // The SYN's new entry goes to `CONNTRACK6` and this CPU's flow cache together.
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        let (start, flows) = (Instant::now(), new_flows(&dp, &f));
        evict(&dp, &f);
        // Gone from the table, the flow still has its translation from the cache: not a new flow (the table would
        // have started it over, counting one and writing its entry again).
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows, "served from the cache, not started over");
        assert!(!conntrack_holds(&dp, &f));
        if !within(start, FLOW_CACHE_REFRESH_NS) {
            return false;
        }
        // Past the refresh age the next packet asks `CONNTRACK6`, finds nothing and starts over (same port).
        std::thread::sleep(Duration::from_nanos(FLOW_CACHE_REFRESH_NS * 3 / 2));
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows + 1, "started over once the cached copy aged");
        assert!(conntrack_holds(&dp, &f));
        true
    });
}

#[test]
fn an_ipv6_nat_flow_skips_its_translation_for_a_second_then_checks_it_again() {
    let mut dp = dataplane();
    with_a_quick_flow(40120, |f| {
        let p = f.nat_port(0);
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        let (confirmed, flows) = (Instant::now(), new_flows(&dp, &f));
        establish(&mut dp, &f, p);
        // The translation goes behind the flow's back: within the second of its last confirmation (the SYN's
        // claim) the flow does not look at it, from the cache or, past the cache's age, from `CONNTRACK6`.
        drop_translation(&dp, &f, p);
        request(&mut dp, &f, p);
        std::thread::sleep(Duration::from_nanos(FLOW_CACHE_REFRESH_NS * 3 / 2));
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows, "the pin alone, within the second");
        assert!(!has_translation(&dp, &f, p));
        if !within(confirmed, NAT_CHECK_INTERVAL_NS) {
            return false;
        }
        // Past the second the next packet checks the translation, finds it gone and starts over, claiming the
        // port again.
        std::thread::sleep(Duration::from_nanos(NAT_CHECK_INTERVAL_NS));
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows + 1, "checked again after the second");
        assert!(has_translation(&dp, &f, p));
        true
    });
}

#[test]
fn a_rst_makes_an_ipv6_nat_flow_check_its_translation() {
    let mut dp = dataplane();
    let rst = |dp: &mut DataPlane, f: &Flow, p: u16| {
        let out = run(dp, &f.client_sends(TCP_RST | TCP_ACK, b""), XDP_TX, Reason::NatForwardTx);
        assert_frame(&out, &f.backend_gets(p, TCP_RST | TCP_ACK, b""));
    };
    with_a_quick_flow(40140, |f| {
        let p = f.nat_port(0);
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        let (start, flows) = (Instant::now(), new_flows(&dp, &f));
        establish(&mut dp, &f, p);
        // Within the second a plain packet goes on the pin alone, the translation gone or not...
        drop_translation(&dp, &f, p);
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows, "the pin alone");
        // ...a RST does not: it finds the translation gone and starts the flow over (and is translated).
        rst(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows + 1, "the RST checked the translation");
        assert!(has_translation(&dp, &f, p));
        // A RST that finds its translation leaves the flow to check again with its next packet (within the
        // second, from the cache's fresh copy too): with the translation gone, it starts over.
        rst(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows + 1);
        drop_translation(&dp, &f, p);
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows + 2, "checked after the RST");
        assert!(has_translation(&dp, &f, p));
        within(start, FLOW_CACHE_REFRESH_NS)
    });
}

#[test]
fn an_ipv6_nat_flow_the_agent_forgot_is_not_served_from_the_flow_cache() {
    let mut dp = dataplane();
    with_a_quick_flow(40160, |f| {
        let p = f.nat_port(0);
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        let (start, flows) = (Instant::now(), new_flows(&dp, &f));
        // Served from the cache while the entry is missing from the table...
        evict(&dp, &f);
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows, "served from the cache");
        // ...but `ForgetFlows` bumps the flow generation: the cached copy is dead at once, and the next packet
        // starts the flow over (same backend and port: nothing else holds them).
        dp.forget_flows(&[VIP6.into()]).expect("forget_flows");
        request(&mut dp, &f, p);
        assert_eq!(new_flows(&dp, &f), flows + 1, "started over, not served from the cache");
        assert!(conntrack_holds(&dp, &f));
        within(start, FLOW_CACHE_REFRESH_NS)
    });
}

#[test]
fn a_cached_ipv6_nat_flow_whose_backend_went_down_is_not_sent_there() {
    let mut dp = dataplane();
    with_a_quick_flow(40180, |f| {
        let (p, old) = (f.nat_port(0), f.backend());
        run(&mut dp, &f.client_sends(TCP_SYN, b""), XDP_TX, Reason::NatForwardTx);
        let start = Instant::now();
        establish(&mut dp, &f, p);
        // Only the cache knows the flow now.
        evict(&dp, &f);
        request(&mut dp, &f, p);
        let mut spec = service(HTTP, PROTO_TCP, HTTP_BACKEND);
        spec.backends[old].healthy = false;
        dp.apply_service("web", &spec).expect("web with the flow's backend down");
        // The cached copy names a slot whose backend may not take traffic: the flow goes to a fresh pick.
        let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
        let new = pick(&f, &others);
        let out = run(&mut dp, &f.client_sends(TCP_ACK | TCP_PSH, REQUEST), XDP_TX, Reason::NatForwardTx);
        let (address, mac) = BACKENDS6[new];
        assert_frame(&out, &f.frame(mac, NODE_MAC, VIP6, address, p, HTTP_BACKEND, TCP_ACK | TCP_PSH, REQUEST));
        let timely = within(start, FLOW_CACHE_REFRESH_NS);
        dp.apply_service("web", &service(HTTP, PROTO_TCP, HTTP_BACKEND)).expect("web with every backend up");
        timely
    });
}
