//! The `xvip` command line: `check` exit codes and messages, `status` without a daemon, and startup failures that
//! must be clear (exit 1, one line saying what to do) and leave nothing behind. Needs root for the netns cases.
use std::{path::Path, process::Command, time::Duration};

use xvip_tests::{
    Lab, LabSpec,
    xvip::{NodeSpec, binary, config},
};

fn xvip_in(ns: Option<&str>, args: &[&str]) -> (i32, String) {
    let bin = binary().expect("xvip binary");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd.args(args).output().expect("run xvip");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn lab() -> Lab {
    Lab::new(LabSpec { nodes: 2, backends: 1, ..LabSpec::default() }).expect("lab")
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/xvip.example.toml");
    let (code, out) = xvip_in(None, &["check", "-c", example.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_reports_every_problem_with_its_position_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("xvip-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "interface = \"eth0\"\n[vip]\naddress = \"10.0.0.300\"\n[vrrp]\nvrid = 51\npriority = 300\nadvert_intervall_ms = 100\n")
        .expect("write");
    let p = path.to_str().expect("utf-8");
    let (code, out) = xvip_in(None, &["check", "-c", p]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{p}:3:11: vip.address")), "{out}");
    assert!(out.contains(&format!("{p}:6:12: vrrp.priority must be 1..=255")), "{out}");
    assert!(out.contains(&format!("{p}:7:1:")) && out.contains("did you mean `advert_interval_ms`"), "{out}");
    let (code, out) = xvip_in(None, &["run", "-c", p]);
    assert_eq!(code, 2, "a bad config is a usage error for run too: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_without_a_daemon_exits_1_and_says_why() {
    let (code, out) = xvip_in(None, &["status", "--socket", "/nonexistent/xvip.sock"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no xvip daemon answers on /nonexistent/xvip.sock"), "{out}");
}

#[test]
fn a_missing_interface_is_named_and_nothing_is_left_behind() {
    let lab = lab();
    let node = lab.node(1);
    let socket = lab.dir().join("missing.sock");
    let text =
        config(&lab, node, &NodeSpec::new(150), &socket).replace("interface = \"eth0\"", "interface = \"nosuch0\"");
    let path = lab.dir().join("missing.toml");
    std::fs::write(&path, text).expect("write");
    let (code, out) = xvip_in(Some(&node.ns), &["run", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"nosuch0\"") && out.contains("ip link"), "{out}");
    assert!(!socket.exists(), "the status socket was left behind");
}

#[test]
fn an_interface_with_another_xdp_program_is_refused_and_nothing_is_left_behind() {
    let lab = lab();
    let node = lab.node(1);
    let first = lab.start_xvip(node, &NodeSpec::new(150)).expect("first xvip");
    first.wait_role("active", Duration::from_secs(3)).expect("active");
    let socket = lab.dir().join("second.sock");
    let path = lab.dir().join("second.toml");
    std::fs::write(&path, config(&lab, node, &NodeSpec::new(100), &socket)).expect("write");
    let (code, out) = xvip_in(Some(&node.ns), &["run", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another XDP program is already attached"), "{out}");
    assert!(!socket.exists(), "the status socket was left behind");
    assert_eq!(first.role().expect("the first daemon is untouched"), "active");
}

#[test]
fn a_socket_in_use_is_refused_before_touching_the_interface() {
    let lab = lab();
    let first = lab.start_xvip(lab.node(1), &NodeSpec::new(150)).expect("first xvip");
    let path = lab.dir().join("clash.toml");
    std::fs::write(&path, config(&lab, lab.node(2), &NodeSpec::new(100), &first.socket)).expect("write");
    let (code, out) = xvip_in(Some(&lab.node(2).ns), &["run", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another xvip is already answering"), "{out}");
    let link = lab.exec(&lab.node(2).ns, ["ip", "-d", "link", "show", "eth0"]).expect("ip link");
    assert!(!link.contains("prog/xdp"), "node2 got an XDP program although startup failed: {link}");
    assert!(first.status().is_ok(), "the first daemon's socket was disturbed");
}

#[test]
fn a_vip_outside_the_interface_subnet_gets_a_warning() {
    let lab = lab();
    let node = lab.node(1);
    let socket = lab.dir().join("far.sock");
    let text = config(&lab, node, &NodeSpec::new(150), &socket)
        .replace(&format!("address = \"{}\"", lab.vip()), "address = \"192.0.2.250\"");
    let path = lab.dir().join("far.toml");
    std::fs::write(&path, text).expect("write");
    let bin = binary().expect("bin");
    let mut child =
        lab.spawn(&node.ns, [bin.to_str().expect("utf-8"), "run", "-c", path.to_str().expect("utf-8")]).expect("spawn");
    child.wait_for_log("is not inside any prefix of eth0", Duration::from_secs(5)).expect("warning");
}
