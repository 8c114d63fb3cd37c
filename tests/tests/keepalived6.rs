//! Interoperability with keepalived 2.2.7 over IPv6 (VRRPv3, ff02::12 and unicast), in a netns lab: the election
//! in both orders of priority, and tshark's independent decoding of xvip's IPv6 adverts (version, type, hop limit
//! 255, link-local source, checksum over the IPv6 pseudo-header). The xvip instance has only an IPv6 address, so
//! its status's role is its IPv6 router's. IPv6 is turned on, without DAD, on the two nodes only. Needs root.
//!
//! The data plane's part of an IPv6 VIP is checked once, in the handover: a client's neighbour entry for the VIP
//! moves to xvip's MAC by xvip's unsolicited Neighbor Advertisements alone, and the VIP answers the client's ping.
//! Graceful stops both ways, and the schedule of those advertisements as tshark sees them (the burst on taking
//! over and its repeat, as for gratuitous ARPs).
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use xvip_tests::{
    Host, Keepalived, KeepalivedSpec, Lab, LabSpec, cmd, ipv6,
    xvip::{NodeSpec, XvipNode},
};

const VRID: u8 = 61;

fn vip6() -> Ipv6Addr {
    ipv6::address(0x250)
}

/// A lab with IPv6 on node1 (xvip: fe80::1, fd00:77::1) and node2 (keepalived: fe80::2, fd00:77::2).
fn lab() -> Lab {
    let lab = Lab::new(LabSpec { nodes: 2, backends: 1, ..LabSpec::default() }).expect("lab");
    ipv6::enable(lab.node(1), 1).expect("IPv6 on node1");
    ipv6::enable(lab.node(2), 2).expect("IPv6 on node2");
    lab
}

fn keepalived(lab: &Lab, priority: u8, unicast: bool) -> Keepalived {
    let mut spec = KeepalivedSpec::new(lab.vip(), VRID, priority).advert_int(0.1).ipv6(vip6());
    if unicast {
        spec = spec.unicast6(ipv6::address(2), &[ipv6::address(1)]);
    }
    lab.start_keepalived(lab.node(2), &spec).expect("keepalived")
}

fn xvip(lab: &Lab, priority: u8, unicast: bool) -> XvipNode {
    let mut spec = NodeSpec { vrid: VRID, vip4: false, vip6: vec![vip6()], ..NodeSpec::new(priority) };
    if unicast {
        spec.unicast_peers6 = vec![ipv6::address(2)];
        spec.source_address6 = Some(ipv6::address(1));
    }
    lab.start_xvip(lab.node(1), &spec).expect("xvip")
}

/// The IPv6 router's part of xvip's status.
fn ipv6_status(x: &XvipNode) -> xvip::status::RouterStatus {
    let status = x.status().expect("status");
    status.instances[0].ipv6.clone().expect("an IPv6 router in status")
}

/// xvip at `xvip_priority` and keepalived at `keepalived_priority`, both IPv6, multicast or unicast: the higher
/// one is active, the other backs up and stays so (nothing is discarded on either side).
fn election(xvip_priority: u8, keepalived_priority: u8, unicast: bool) {
    let lab = lab();
    let x = xvip(&lab, xvip_priority, unicast);
    let mut k = keepalived(&lab, keepalived_priority, unicast);
    if xvip_priority > keepalived_priority {
        x.wait_role("active", Duration::from_secs(5)).expect("xvip active");
        k.wait_for_log("Entering BACKUP STATE", Duration::from_secs(3)).expect("keepalived backup");
        std::thread::sleep(Duration::from_millis(500));
        assert!(!k.holds6(vip6()).expect("ip"), "keepalived holds the VIP too:\n{}", k.log());
        assert_eq!(k.count_in_log("Entering MASTER STATE"), 0, "{}", k.log());
        let v6 = ipv6_status(&x);
        assert_eq!(v6.role, "active");
        assert_eq!(v6.active_router.as_deref(), Some(if unicast { "fd00:77::1" } else { "fe80::1" }));
    } else {
        k.wait_master(Duration::from_secs(5)).expect("keepalived master");
        x.wait_role("backup", Duration::from_secs(3)).expect("xvip backup");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(x.role().expect("role"), "backup");
        let v6 = ipv6_status(&x);
        assert!(v6.adverts_received > 0, "{v6:?}");
        // keepalived sends from its link-local address to ff02::12, or from unicast_src_ip to its peers.
        assert_eq!(v6.active_router.as_deref(), Some(if unicast { "fd00:77::2" } else { "fe80::2" }));
    }
    let v6 = ipv6_status(&x);
    assert_eq!(v6.adverts_discarded, 0, "{v6:?}");
    assert!(!k.log().contains("Invalid VRRPv3 checksum"), "{}", k.log());
    assert!(!k.log().contains("invalid TTL/HL"), "{}", k.log());
}

#[test]
fn ipv6_xvip_with_higher_priority_is_active_and_keepalived_backs_up() {
    election(150, 100, false);
}

#[test]
fn ipv6_keepalived_with_higher_priority_is_master_and_xvip_backs_up() {
    election(100, 150, false);
}

#[test]
fn ipv6_unicast_xvip_with_higher_priority_is_active() {
    election(150, 100, true);
}

#[test]
fn ipv6_unicast_keepalived_with_higher_priority_is_master() {
    election(100, 150, true);
}

/// How soon after a SIGTERM the backup (priority 100) must hold the VIP: RFC 5798's Skew_Time after a priority-0
/// advert, (256 - 100) / 256 of the 100 ms interval, plus the same slack as the IPv4 tests (tests/tests/keepalived.rs
/// `SLACK`: process exit, the backup's own scheduling, the polling), still below the 261 ms at which the backup
/// could take over without a handover (Master_Down_Interval after an advert sent up to one interval before).
fn graceful_bound() -> Duration {
    Duration::from_micros((256 - 100) * 100_000 / 256) + Duration::from_millis(150)
}

#[test]
fn ipv6_graceful_keepalived_stop_hands_over_to_xvip() {
    let lab = lab();
    let x = xvip(&lab, 100, false);
    let mut k = keepalived(&lab, 150, false);
    k.wait_master(Duration::from_secs(5)).expect("keepalived master");
    x.wait_role("backup", Duration::from_secs(3)).expect("xvip backup");
    let t0 = Instant::now();
    let stopper = std::thread::spawn(move || k.stop());
    x.wait_role("active", Duration::from_secs(3)).expect("xvip takes over after keepalived's priority-0 advert");
    let took = t0.elapsed();
    let bound = graceful_bound();
    eprintln!("measured: xvip took over {took:?} after keepalived's SIGTERM (bound {bound:?})");
    assert!(took <= bound, "{took:?} > {bound:?}");
    stopper.join().expect("join").expect("keepalived stop");
}

/// xvip, active for the IPv6 VIP, stops (SIGTERM): its IPv6 router sends a priority-0 advert and keeps answering
/// until keepalived announces itself, which it does after its skew time, as for IPv4.
#[test]
fn ipv6_graceful_xvip_stop_hands_over_to_keepalived_within_skew_time() {
    let lab = lab();
    let mut k = keepalived(&lab, 100, false);
    let mut x = xvip(&lab, 150, false);
    x.wait_role("active", Duration::from_secs(5)).expect("xvip active");
    k.wait_for_log("Entering BACKUP STATE", Duration::from_secs(3)).expect("keepalived backup");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let (code, _) = x.terminate().expect("SIGTERM");
    assert_eq!(code, Some(0), "{}", x.log());
    let took = loop {
        if k.holds6(vip6()).expect("ip") {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "keepalived did not take the IPv6 VIP:\n{}", k.log());
        std::thread::sleep(Duration::from_millis(5));
    };
    let bound = graceful_bound();
    eprintln!("measured: keepalived took the IPv6 VIP {took:?} after xvip's SIGTERM (bound {bound:?})");
    assert!(took <= bound, "{took:?} > {bound:?}");
    // xvip answered until keepalived announced itself, and only then stopped.
    let log = x.log();
    assert!(log.contains("IPv6 handover: fe80::2 is active"), "{log}");
    assert!(log.contains("IPv6 role -> initialize: stopping"), "{log}");
}

/// xvip becomes active for the IPv6 VIP alone: tshark on the other node sees `garp_count` (5) unsolicited Neighbor
/// Advertisements from the VIP on the take-over and 5 more `garp_repeat_delay_ms` (1 s) later, then no more
/// (no refresh configured), each to all nodes with Override set and Solicited clear.
#[test]
fn ipv6_unsolicited_advertisements_follow_the_gratuitous_arp_schedule() {
    let lab = lab();
    let ns = lab.node(2).ns.clone();
    let capture = std::thread::spawn(move || {
        let argv = [
            "tshark",
            "-i",
            "eth0",
            "-a",
            "duration:6",
            "-f",
            "icmp6 and ip6[40] == 136",
            "-T",
            "fields",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "icmpv6.nd.na.flag.s",
            "-e",
            "icmpv6.nd.na.flag.o",
            "-e",
            "icmpv6.nd.na.target_address",
        ];
        cmd::exec_in(&ns, argv)
    });
    // tshark needs a moment before it captures.
    std::thread::sleep(Duration::from_millis(1500));
    let x = xvip(&lab, 150, false);
    x.wait_role("active", Duration::from_secs(3)).expect("xvip active");
    let out = capture.join().expect("join").expect("tshark");
    let vip = vip6().to_string();
    let nas: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("{vip}\t"))).collect();
    assert_eq!(nas.len(), 10, "a burst of 5 and its repeat:\n{out}");
    for line in &nas {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols, [vip.as_str(), "ff02::1", "0", "1", vip.as_str()], "{line}");
    }
    assert_eq!(ipv6_status(&x).nas_sent, 10);
}

/// The client's neighbour entry for the VIP: its link-layer address, if it has one.
fn neighbour_mac(client: &Host) -> Option<String> {
    let out = cmd::exec_in(&client.ns, ["ip", "-6", "neigh", "show", &vip6().to_string()]).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words.iter().position(|w| *w == "lladdr").and_then(|i| words.get(i + 1)).map(|m| m.to_string())
}

/// One echo reply from the VIP within 5 s: ping sends a request a second until one is answered (`-w`), so a first
/// request lost to Neighbor Discovery on a loaded machine does not fail the test.
fn ping(client: &Host) -> Result<String, String> {
    cmd::exec_in(&client.ns, ["ping", "-6", "-n", "-c", "1", "-w", "5", &vip6().to_string()])
        .map_err(|e| format!("{e:#}"))
}

/// An IPv6 VIP that xvip takes over from keepalived: xvip's unsolicited Neighbor Advertisements move a client's
/// neighbour entry for the VIP from keepalived's node to xvip's without the client asking, and xvip's node then
/// answers the client's ping (ICMPv6 echo in XDP, after Neighbor Discovery). Fails without either half of the
/// wiring from the IPv6 router to the data plane (the VIP installed, the advertisements sent).
#[test]
fn ipv6_vip_moves_to_xvip_by_unsolicited_advertisements_and_answers_there() {
    let lab = lab();
    let client = lab.client();
    ipv6::enable(client, 100).expect("IPv6 on the client");
    let x = xvip(&lab, 100, false);
    let mut k = keepalived(&lab, 150, false);
    k.wait_master(Duration::from_secs(5)).expect("keepalived master");
    x.wait_role("backup", Duration::from_secs(3)).expect("xvip backup");
    ping(client).expect("keepalived's node answers the VIP's ping");
    let keepalived_mac = lab.node(2).mac.to_string();
    assert_eq!(neighbour_mac(client).as_deref(), Some(keepalived_mac.as_str()), "the VIP resolved to node2 first");

    k.stop().expect("keepalived stop");
    x.wait_role("active", Duration::from_secs(3)).expect("xvip takes over");
    let xvip_mac = lab.node(1).mac.to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    while neighbour_mac(client).as_deref() != Some(xvip_mac.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the client's entry for the VIP is still {:?}, not xvip's {xvip_mac}: no unsolicited advertisement",
            neighbour_mac(client)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = ping(client).expect("xvip's node answers the VIP's ping");
    assert!(reply.contains("1 received"), "{reply}");
    let counters = x.status().expect("status").counters.dataplane;
    eprintln!("xvip data plane after the handover: {counters:?}");
}

#[test]
fn tshark_decodes_xvips_ipv6_adverts_as_valid_vrrpv3() {
    let lab = lab();
    let x = xvip(&lab, 150, false);
    x.wait_role("active", Duration::from_secs(5)).expect("active");
    let fields = [
        "ipv6.src",
        "ipv6.dst",
        "ipv6.hlim",
        "vrrp.version",
        "vrrp.type",
        "vrrp.virt_rtr_id",
        "vrrp.prio",
        "vrrp.short_adver_int",
        "vrrp.checksum.status",
        "vrrp.ipv6_addr",
    ];
    let mut argv = vec!["tshark", "-i", "eth0", "-a", "duration:2", "-c", "5", "-f", "ip6 proto 112", "-T", "fields"];
    for f in &fields {
        argv.extend(["-e", f]);
    }
    let out = lab.exec(&lab.node(2).ns, argv).expect("tshark");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "tshark saw too few adverts: {out}");
    for line in lines {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols,
            ["fe80::1", "ff02::12", "255", "3", "1", "61", "150", "10", "1", "fd00:77::250"],
            "a decoded advert: {line}"
        );
    }
}

/// Dual stack: one xvip instance with an IPv4 and an IPv6 address runs one router per family; keepalived has an
/// IPv4 and an IPv6 instance with the same VRID. keepalived wins both, then stops: xvip takes over both.
#[test]
fn dual_stack_instance_fails_over_in_both_families() {
    let lab = lab();
    let x =
        lab.start_xvip(lab.node(1), &NodeSpec { vrid: VRID, vip6: vec![vip6()], ..NodeSpec::new(100) }).expect("xvip");
    let v4 = KeepalivedSpec::new(lab.vip(), VRID, 150).advert_int(0.1);
    let v6 = KeepalivedSpec { instance: "VI_6".into(), ..v4.clone().ipv6(vip6()) };
    let mut k = lab.start_keepalived(lab.node(2), &v4.with_instance(v6)).expect("keepalived");
    k.wait_for_log("(VI_6) Entering MASTER STATE", Duration::from_secs(5)).expect("keepalived IPv6 master");
    k.wait_for_log("(VI_1) Entering MASTER STATE", Duration::from_secs(5)).expect("keepalived IPv4 master");
    x.wait_role("backup", Duration::from_secs(3)).expect("xvip IPv4 backup");
    std::thread::sleep(Duration::from_millis(500));
    let status = x.status().expect("status");
    let v6 = status.instances[0].ipv6.clone().expect("IPv6 router");
    assert_eq!((status.role.as_str(), v6.role.as_str()), ("backup", "backup"));
    assert_eq!(status.active_router.as_deref(), Some(lab.node(2).ip.to_string().as_str()));
    assert_eq!(v6.active_router.as_deref(), Some("fe80::2"));
    assert_eq!((status.counters.adverts_discarded, v6.adverts_discarded), (0, 0));
    let stopper = std::thread::spawn(move || k.stop());
    x.wait_role("active", Duration::from_secs(3)).expect("xvip takes the IPv4 address");
    let deadline = Instant::now() + Duration::from_secs(3);
    while ipv6_status(&x).role != "active" {
        assert!(Instant::now() < deadline, "the IPv6 router did not take over: {:?}", ipv6_status(&x));
        std::thread::sleep(Duration::from_millis(10));
    }
    stopper.join().expect("join").expect("keepalived stop");
}
