//! An IPv6 VIP on a real link: the XDP program attached natively to one end of a veth pair, a host on the other
//! end (an IPv6 address, duplicate address detection off) resolves the VIP through the kernel's own Neighbor
//! Discovery (`ip -6 neigh`) and pings it; a backup leaves it unresolved. Everything happens in a network namespace
//! made here, which disappears with the test's thread. Needs root.
use std::{net::Ipv6Addr, process::Command};

use aya::{EbpfLoader, programs::Xdp, programs::XdpMode};
use lb_common::{FAMILY_IPV6, names, router_slot};
use xvip::dataplane::{AttachMode, DataPlane, LoadOptions, Vip6Spec};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x78, 0, 0, 0, 0, 0x250);

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd}: {out}");
    out
}

#[test]
fn a_host_on_the_link_resolves_and_pings_an_ipv6_vip_only_while_active() {
    std::thread::spawn(|| {
        // SAFETY: unshare only affects this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET) needs root");
        // The node's end (xv6n) has IPv6 off, so only the XDP program answers there; the host's end (xv6h) has
        // only its link-local address, without duplicate address detection (no wait), and a route to the VIP's
        // prefix: sharing the node's namespace, a global address of its would be one of the node's own, a source
        // no client can have.
        must("ip link set lo up && ip link add xv6n type veth peer name xv6h");
        must("sysctl -qw net.ipv6.conf.xv6n.disable_ipv6=1 net.ipv6.conf.xv6h.accept_dad=0");
        must("ip link set xv6n up && ip link set xv6h up && ip -6 route add 2001:db8:78::/64 dev xv6h");

        let router = router_slot(0, FAMILY_IPV6);
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        dp.attach("xv6n", AttachMode::Native).expect("attach");
        dp.set_vips6(&[Vip6Spec { address: VIP6, router, hash_seed: 0, interface: Some("xv6n".into()) }])
            .expect("vips6");
        // veth delivers XDP_TX frames only to a peer that runs an XDP program: the do-nothing one on the host's end.
        let mut pass = EbpfLoader::new()
            .map_max_entries(names::MAGLEV, lb_common::MAGLEV_M)
            .map_max_entries(names::CONNTRACK, 1024)
            .map_max_entries(names::NAT, 1024)
            .load(xvip::dataplane::EBPF_OBJECT)
            .expect("loading the object for the pass program");
        let program: &mut Xdp =
            pass.program_mut(names::PASS_PROGRAM).expect("pass program").try_into().expect("an XDP program");
        program.load().expect("load pass");
        program.attach("xv6h", XdpMode::Driver).expect("attach pass");

        // Backup: the solicitations go unanswered, the neighbour entry fails.
        let (ok, out) = sh(&format!("ping -6 -c 1 -W 1 {VIP6}"));
        assert!(!ok, "a backup answered: {out}");
        let neigh = must(&format!("ip -6 neigh show {VIP6} dev xv6h"));
        assert!(!neigh.contains("lladdr"), "resolved while backup: {neigh}");

        dp.set_router_active(router, true).expect("active");
        must("ip -6 neigh flush dev xv6h");
        let out = must(&format!("ping -6 -c 3 -i 0.2 -W 2 {VIP6}"));
        assert!(out.contains("3 received"), "{out}");
        // /sys shows the namespace it was mounted in, so ask ip for the MAC.
        let mac = must("ip -br link show xv6n | awk '{print $3}'");
        let neigh = must(&format!("ip -6 neigh show {VIP6} dev xv6h"));
        assert!(neigh.contains(&format!("lladdr {}", mac.trim())), "the VIP resolves to the node's MAC: {neigh}");
        let counters = dp.counters().expect("counters");
        assert!(counters.reason(lb_common::Reason::NaReply) >= 1, "answered by the program");
        assert!(counters.reason(lb_common::Reason::EchoReply) >= 3, "answered by the program");
    })
    .join()
    .expect("netns thread");
}
