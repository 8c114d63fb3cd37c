//! IPv4 path MTU discovery through the node, end to end in the netns lab (needs root). A real TCP packet of an
//! idle keep-alive connection is captured, quoted (at its sender's next sequence number, which Linux requires to
//! be in flight) in an ICMP "fragmentation needed" (type 3 code 4, next-hop MTU 1200, RFC 1191) sent to the VIP
//! as a router on the path would, and the receiving kernel must then hold path MTU 1200 (`ip route get`):
//! - NAT, about a translated client packet (`VIP:nport -> backend:8080`), from the backend's side: the node
//!   translates it to the client, whose kernel holds the path MTU for the VIP;
//! - NAT, about a translated reply (`VIP:80 -> client:cport`), from the client's side: the node translates it to
//!   the backend, whose kernel holds the path MTU for the VIP (its peer under NAT);
//! - DSR, about a backend's reply (`VIP:8080 -> client:cport`, sent by the backend itself), from the client's
//!   side: the node passes it on to that backend, whose kernel holds the path MTU for the client.
//!
//! The NAT cases first send what a node passing the error on untranslated would deliver, and check that the
//! receiving kernel ignores it. The IPv6 counterparts (Packet Too Big) are in `hostile6.rs`.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xvip_tests::{
    Lab, LabSpec,
    pmtu::{self, IdleConnection},
    probe,
    xvip::{NodeSpec, ServiceSpec, XvipNode},
};

/// The NAT service's port and its backend's (different, so the port is translated too).
const NAT_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// The DSR service's port: the backend serves it itself, on the VIP.
const DSR_PORT: u16 = 8080;
/// The next-hop MTU the errors announce: above Linux's IPv4 minimum (`min_pmtu`, 552), below the lab's 1500.
const MTU: u16 = 1200;

/// A lab with one backend (holding the VIP on `lo` for DSR) serving HTTP on 8080, and node1 alone, active, with
/// one service over it (NAT: 80 -> 8080; DSR: 8080), answering through the VIP.
fn start(forwarding: &str, port: u16) -> (Lab, XvipNode) {
    let spec = if forwarding == "dsr" { LabSpec::dsr(2, 1) } else { LabSpec::nat(2, 1) };
    let lab = Lab::new(spec).expect("lab");
    lab.start_backends(&[BACKEND_PORT]).expect("backend");
    let service = ServiceSpec::http(&lab, port, BACKEND_PORT, forwarding);
    let node = lab.start_xvip(lab.node(1), &NodeSpec::new(150).service(service)).expect("node1");
    node.wait_role("active", Duration::from_secs(5)).expect("node1 active");
    node.wait_all_healthy(Duration::from_secs(10)).expect("the backend healthy");
    for _ in 0..200 {
        if probe::http_get(&lab.client().ns, lab.vip_addr(port), "/", Duration::from_millis(500)).is_ok() {
            return (lab, node);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the service never answered through the VIP:\n{}", node.log());
}

fn counter(node: &XvipNode, name: &str) -> u64 {
    node.status().map(|s| s.counters.dataplane.get(name).copied().unwrap_or(0)).unwrap_or(0)
}

/// The captured frames of `connection`'s flow towards the client (to its local address).
fn to_client(captured: Vec<Vec<u8>>, connection: &IdleConnection) -> Vec<Vec<u8>> {
    captured.into_iter().filter(|f| pmtu::tcp_endpoints(f).is_some_and(|(_, to)| to == connection.local)).collect()
}

#[test]
fn fragmentation_needed_about_a_nat_flows_packet_to_its_backend_reaches_the_client_translated() {
    let (lab, node) = start("nat", NAT_PORT);
    let (client, backend) = (lab.client().clone(), lab.backend(1).clone());
    let vip = IpAddr::V4(lab.vip());
    // The backend captures the translated client packets (VIP:nport -> backend:8080) of one idle connection.
    let (connection, captured) =
        pmtu::sniff(&backend.ns, (vip, None), backend.ip.into(), || IdleConnection::open(&lab, lab.vip_addr(NAT_PORT)));
    assert!(!captured.is_empty(), "the backend saw none of the client's packets");
    let quoted = pmtu::at_next_sequence(&pmtu::last_packet(&captured)).expect("a TCP packet");
    assert_eq!(pmtu::path_mtu(&client.ns, vip), None, "the client holds no path MTU for the VIP before");

    // What a node that passed the error on untranslated would give the client: addressed to the client, quoting
    // VIP:nport -> backend:8080, which names none of the client's sockets. The client's kernel ignores it.
    let untranslated = pmtu::too_big(client.mac.0, backend.mac.0, backend.ip.into(), client.ip.into(), MTU, &quoted);
    pmtu::send_frame(&backend.ns, untranslated.expect("fragmentation needed"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pmtu::path_mtu(&client.ns, vip), None, "an untranslated error changed the client's path MTU");

    // A router on the backend's side (here the backend itself) reports the MTU about the translated packet, to its
    // source, the VIP.
    let before = counter(&node, "nat_icmp_to_client");
    let error = pmtu::too_big(lab.node(1).mac.0, backend.mac.0, backend.ip.into(), vip, MTU, &quoted);
    pmtu::send_frame(&backend.ns, error.expect("fragmentation needed"));
    let mtu = pmtu::wait_path_mtu(&client.ns, vip, MTU);
    let translated = counter(&node, "nat_icmp_to_client") - before;
    eprintln!(
        "NAT: the client ({}) holds path MTU {mtu:?} for the VIP; nat_icmp_to_client +{translated}",
        connection.local
    );
    assert_eq!(translated, 1, "the node translated the error once\n{}", node.log());
    assert_eq!(mtu, Some(u32::from(MTU)), "the client's kernel holds no path MTU for the VIP");
    assert!(connection.finish(), "the connection works on after it");
}

#[test]
fn fragmentation_needed_about_a_nat_flows_reply_reaches_the_backend_translated() {
    let (lab, node) = start("nat", NAT_PORT);
    let (client, backend) = (lab.client().clone(), lab.backend(1).clone());
    let vip = IpAddr::V4(lab.vip());
    // The client captures the translated replies (VIP:80 -> client:cport) of one idle connection.
    let (connection, captured) = pmtu::sniff(&client.ns, (vip, Some(NAT_PORT)), client.ip.into(), || {
        IdleConnection::open(&lab, lab.vip_addr(NAT_PORT))
    });
    let captured = to_client(captured, &connection);
    assert!(!captured.is_empty(), "the client saw no reply");
    let quoted = pmtu::at_next_sequence(&pmtu::last_packet(&captured)).expect("a TCP packet");
    assert_eq!(pmtu::path_mtu(&backend.ns, vip), None, "the backend holds no path MTU for the VIP before");

    // What a node that passed the error on untranslated would give the backend: addressed to the backend, quoting
    // VIP:80 -> client:cport, which names none of the backend's sockets. The backend's kernel ignores it.
    let untranslated = pmtu::too_big(backend.mac.0, client.mac.0, client.ip.into(), backend.ip.into(), MTU, &quoted);
    pmtu::send_frame(&client.ns, untranslated.expect("fragmentation needed"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pmtu::path_mtu(&backend.ns, vip), None, "an untranslated error changed the backend's path MTU");

    // A router on the client's side (here the client itself) reports the MTU about the reply, to its source, the
    // VIP.
    let before = counter(&node, "nat_icmp_to_backend");
    let error = pmtu::too_big(lab.node(1).mac.0, client.mac.0, client.ip.into(), vip, MTU, &quoted);
    pmtu::send_frame(&client.ns, error.expect("fragmentation needed"));
    let mtu = pmtu::wait_path_mtu(&backend.ns, vip, MTU);
    let translated = counter(&node, "nat_icmp_to_backend") - before;
    eprintln!(
        "NAT: the backend holds path MTU {mtu:?} for the VIP (client {}); nat_icmp_to_backend +{translated}",
        connection.local
    );
    assert_eq!(translated, 1, "the node translated the error once\n{}", node.log());
    assert_eq!(mtu, Some(u32::from(MTU)), "the backend's kernel holds no path MTU for the VIP");
    assert!(connection.finish(), "the connection works on after it");
}

#[test]
fn fragmentation_needed_about_a_dsr_reply_reaches_the_backend() {
    let (lab, node) = start("dsr", DSR_PORT);
    let (client, backend) = (lab.client().clone(), lab.backend(1).clone());
    let vip = IpAddr::V4(lab.vip());
    // The client captures the backend's replies (VIP:8080 -> client:cport, straight from the backend).
    let (connection, captured) = pmtu::sniff(&client.ns, (vip, Some(DSR_PORT)), client.ip.into(), || {
        IdleConnection::open(&lab, SocketAddr::new(vip, DSR_PORT))
    });
    let captured: Vec<Vec<u8>> =
        to_client(captured, &connection).into_iter().filter(|f| f[6..12] == backend.mac.0).collect();
    assert!(!captured.is_empty(), "the client saw no reply of the backend");
    let quoted = pmtu::at_next_sequence(&pmtu::last_packet(&captured)).expect("a TCP packet");
    let client_ip = IpAddr::V4(client.ip);
    assert_eq!(pmtu::path_mtu(&backend.ns, client_ip), None, "the backend holds no path MTU for the client before");

    // A router on the client's side (here the client itself) reports the MTU about the backend's reply, to its
    // source, the VIP, which the active node holds.
    let before = counter(&node, "forward_tx");
    let error = pmtu::too_big(lab.node(1).mac.0, client.mac.0, client_ip, vip, MTU, &quoted);
    pmtu::send_frame(&client.ns, error.expect("fragmentation needed"));
    let mtu = pmtu::wait_path_mtu(&backend.ns, client_ip, MTU);
    let forwarded = counter(&node, "forward_tx") - before;
    eprintln!("DSR: the backend holds path MTU {mtu:?} for the client ({}); forward_tx +{forwarded}", connection.local);
    assert!(forwarded >= 1, "the node sent the error on to no backend\n{}", node.log());
    assert_eq!(mtu, Some(u32::from(MTU)), "the backend's kernel holds no path MTU for the client");
    assert!(connection.finish(), "the connection works on after it");
}
