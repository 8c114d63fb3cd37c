//! The pipeline end to end: the embedded object loads, attaches in native mode to a veth in a network namespace
//! made here, answers a real ARP frame through BPF_PROG_TEST_RUN, and is gone once detached. Needs root.
mod support;

use std::{net::Ipv4Addr, process::Command};

use support::frames;
use xvip::dataplane::{AttachFailure, AttachMode, DataPlane, Error, LoadOptions, ServiceSpec};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside a fresh network namespace; the namespace disappears with the thread.
fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        // SAFETY: unshare only affects this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET) needs root");
        f();
    })
    .join()
    .expect("netns thread");
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 93, 0, 250);

#[test]
fn loads_attaches_natively_to_a_veth_and_answers_arp() {
    in_netns(|| {
        sh("ip link add xva0 type veth peer name xva1 && ip link set xva0 up && ip link set xva1 up");
        // /sys shows the namespace it was mounted in, so ask ip for the MAC.
        let mac_text = sh("ip -br link show xva0 | awk '{print $3}'");
        let mac: Vec<u8> = mac_text.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("hex")).collect();
        let mac: [u8; 6] = mac.try_into().expect("6 bytes");

        let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        assert_eq!(dp.attach("xva0", AttachMode::Native).expect("attach"), "native");
        let link = sh("ip -d link show xva0");
        assert!(link.contains("prog/xdp"), "no native XDP program on xva0: {link}");

        dp.set_node(VIP, mac, 1).expect("node");
        dp.set_active(true).expect("active");
        let asker = [2, 0, 0, 0, 0, 9];
        // ARP for the VIP is answered on the interface the program was attached to (other interfaces it may
        // serve carry backends).
        // SAFETY: a NUL-terminated literal; the lookup happens in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(c"xva0".as_ptr()) };
        let request = frames::arp_request(asker, Ipv4Addr::new(10, 93, 0, 9), VIP);
        assert_eq!(dp.test_run(&request).expect("test_run").action, 2, "XDP_PASS on another interface (lo)");
        let out = dp.test_run_on(&request, ifindex).expect("test_run");
        assert_eq!(out.action, 3, "XDP_TX");
        assert_eq!(&out.frame[22..28], &mac, "the reply names the interface's MAC");

        dp.detach().expect("detach");
        assert!(!sh("ip -d link show xva0").contains("prog/xdp"), "still attached after detach");
    });
}

#[test]
fn attaching_where_another_program_sits_says_what_to_do() {
    in_netns(|| {
        sh("ip link add xvb0 type veth peer name xvb1 && ip link set xvb0 up");
        let mut first = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        first.attach("xvb0", AttachMode::Native).expect("attach");
        let mut second = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        let err = second.attach("xvb0", AttachMode::Native).expect_err("EBUSY");
        let text = format!("{err:#}");
        assert!(text.contains("xvb0") && text.contains("another XDP program"), "{text}");
        // Decided from the kernel's error code, not from the message.
        assert!(matches!(&err, Error::Attach(e) if e.failure == AttachFailure::Busy), "{err:?}");
        // The first one, attached already, refuses a second attach.
        let again = first.attach("xvb0", AttachMode::Native).expect_err("attached already");
        assert!(matches!(again, Error::Refused(_)), "{again:?}");
    });
}

#[test]
fn attaching_to_a_missing_interface_names_it() {
    in_netns(|| {
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        let err = dp.attach("nosuch0", AttachMode::Auto).expect_err("no such interface");
        let text = format!("{err:#}");
        assert!(text.contains("nosuch0"), "{text}");
        assert!(matches!(&err, Error::Attach(e) if e.failure == AttachFailure::NoDevice), "{err:?}");
    });
}

#[test]
fn process_exit_releases_the_program() {
    // The link is an fd owned by the DataPlane: dropping it (as process exit does) detaches.
    in_netns(|| {
        sh("ip link add xvc0 type veth peer name xvc1 && ip link set xvc0 up");
        {
            let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
            dp.attach("xvc0", AttachMode::Native).expect("attach");
            assert!(sh("ip -d link show xvc0").contains("prog/xdp"));
        }
        assert!(!sh("ip -d link show xvc0").contains("prog/xdp"), "still attached after drop");
    });
}

#[test]
fn generic_mode_attaches_as_xdpgeneric() {
    in_netns(|| {
        sh("ip link add xvd0 type veth peer name xvd1 && ip link set xvd0 up");
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        assert_eq!(dp.attach("xvd0", AttachMode::Generic).expect("attach"), "generic");
        let link = sh("ip -d link show xvd0");
        assert!(link.contains("xdpgeneric"), "not attached in generic mode: {link}");
    });
}

#[test]
fn more_services_than_the_maps_were_sized_for_is_a_typed_refusal() {
    in_netns(|| {
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 1, ..LoadOptions::default() }).expect("load");
        let spec = |port| ServiceSpec {
            addresses: vec![std::net::Ipv4Addr::new(10, 0, 0, 250).into()],
            port,
            protocol: 6,
            forwarding: 0,
            backends: Vec::new(),
        };
        dp.apply_service("a", &spec(80)).expect("the one service there is room for");
        let err = dp.apply_service("b", &spec(81)).expect_err("no room for a second");
        assert!(matches!(&err, Error::Full(text) if text.contains("restart")), "{err:?}");
    });
}
