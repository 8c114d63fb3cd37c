//! `xvip verify` end to end in a netns lab: two backends serve TLS with certificates made here (rcgen), served by
//! `openssl s_server` (not xvip's code); xvip runs on node1 (active) and node2 (backup) with an https service, and
//! verify runs on node2 through the VIP and against each backend. Needs root.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use xvip_tests::{
    ChildGuard, Lab, LabSpec,
    xvip::{NodeSpec, ServiceSpec, XvipNode, binary, config},
};

const SERVICE_PORT: u16 = 443;
const BACKEND_PORT: u16 = 6443;
const HOSTNAME: &str = "api.xvip.test";

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// Writes a certificate for `sans` signed by `ca` and its key as `<stem>.crt` / `<stem>.key`.
fn server_cert(dir: &Path, stem: &str, ca: &CertifiedIssuer<'static, KeyPair>, sans: &[String]) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(sans.to_vec()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    let (crt, pem) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    std::fs::write(&crt, cert.pem()).expect("write cert");
    std::fs::write(&pem, key.serialize_pem()).expect("write key");
    (crt, pem)
}

/// `openssl s_server` answering every `GET` with 200 on the backend port, with this certificate.
fn serve_tls(lab: &Lab, n: usize, (crt, key): &(PathBuf, PathBuf)) -> ChildGuard {
    let port = BACKEND_PORT.to_string();
    let (crt, key) = (crt.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let server = lab
        .spawn(
            &lab.backend(n).ns,
            ["openssl", "s_server", "-quiet", "-www", "-accept", &port, "-cert", &crt, "-key", &key],
        )
        .expect("openssl s_server");
    // Ready once it accepts connections.
    let addr = std::net::SocketAddr::from((lab.backend(n).ip, BACKEND_PORT));
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab
        .in_netns(&lab.client().ns, move || {
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?)
        })
        .is_err()
    {
        assert!(Instant::now() < deadline, "s_server on backend{n} never listened:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// The lab's node config with an https service that verifies backends against `ca_file`, and `vip.hostname`.
fn https_config(lab: &Lab, node: usize, spec: &NodeSpec, socket: &Path, ca_file: &Path) -> String {
    let text = config(lab, lab.node(node), spec, socket);
    let text = text.replacen("[vip]\n", &format!("[vip]\nhostname = \"{HOSTNAME}\"\n"), 1);
    text.replace(
        "check = \"tcp\"\n",
        &format!("check = \"https\"\npath = \"/readyz\"\nca_file = \"{}\"\n", ca_file.display()),
    )
}

/// Runs `xvip verify -c config` in `ns`; returns (exit code, stdout + stderr).
fn verify(ns: &str, config: &Path) -> (Option<i32>, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary().expect("xvip"))
        .args(["verify", "-c"])
        .arg(config)
        .output()
        .expect("run xvip verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn wait_healthy(node: &XvipNode, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if node
            .status()
            .is_ok_and(|s| s.services[0].backends.iter().filter(|b| b.healthy && b.mac.is_some()).count() == n)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{}: backends never healthy:\n{}", node.name, node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn verify_shows_the_certificates_and_names_a_missing_vip_san_and_a_foreign_ca() {
    let lab = Lab::new(LabSpec { nodes: 2, backends: 2, vip_on_backends_lo: false, backend_bin: None }).expect("lab");
    let dir = lab.dir().to_path_buf();
    let vip = lab.vip();
    let cluster_ca = ca("xvip test cluster CA");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, cluster_ca.pem()).expect("ca file");
    let sans = |ip: Ipv4Addr, with_vip: bool| {
        let mut sans = vec!["kubernetes".to_string(), ip.to_string()];
        if with_vip {
            sans.extend([HOSTNAME.to_string(), vip.to_string()]);
        }
        sans
    };
    let good: Vec<(PathBuf, PathBuf)> =
        (1..=2).map(|n| server_cert(&dir, &format!("good{n}"), &cluster_ca, &sans(lab.backend(n).ip, true))).collect();
    let mut servers: Vec<ChildGuard> = (1..=2).map(|n| serve_tls(&lab, n, &good[n - 1])).collect();

    let mut service = ServiceSpec::http(&lab, SERVICE_PORT, BACKEND_PORT, "nat");
    service.name = "kube-apiserver".into();
    service.check = "tcp".into();
    service.interval_ms = 500;
    service.timeout_ms = 400;
    let start = |n: usize, priority: u8| {
        let spec = NodeSpec::new(priority).service(service.clone());
        let node = lab.start_xvip(lab.node(n), &spec).expect("xvip");
        std::fs::write(&node.config_path, https_config(&lab, n, &spec, &node.socket, &ca_file)).expect("config");
        node
    };
    // Started with a tcp check, then reloaded with the https one (start_xvip writes the lab's plain config).
    let mut n1 = start(1, 150);
    let mut n2 = start(2, 100);
    for node in [&mut n1, &mut n2] {
        node.signal(libc::SIGHUP).expect("reload");
    }
    n1.wait_role("active", Duration::from_secs(3)).expect("node1 active");
    n2.wait_role("backup", Duration::from_secs(3)).expect("node2 backup");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(n1.log().contains("reload: ") && n2.log().contains("reload: ")) {
        assert!(Instant::now() < deadline, "the https config was not applied:\n{}", n1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_healthy(&n1, 2);

    // Good certificates: everything holds, from the backup node. The lab leaves TX checksum offload on for the
    // nodes; a veth then hands the NAT path frames with partial checksums that the backend drops once translated
    // (a real NIC completes the checksum on the wire), so node2 sends full checksums like the lab's client.
    lab.exec(&n2.ns, ["ethtool", "-K", "eth0", "tx", "off"]).expect("ethtool");
    let (code, out) = verify(&n2.ns, &n2.config_path);
    eprintln!("--- verify with good certificates (exit {code:?}):\n{out}");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("this node is backup"), "{out}");
    assert!(out.contains(&format!("  VIP {vip}:{SERVICE_PORT}\n    subject  CN=kube-apiserver")), "{out}");
    assert!(out.contains(&format!("IP:{vip}")) && out.contains(&format!("DNS:{HOSTNAME}")), "{out}");
    assert!(out.contains(&format!("ok       SANs include the VIP {vip} and the hostname {HOSTNAME}")), "{out}");
    assert!(out.contains(&format!("ok       chain verifies against ca_file {}", ca_file.display())), "{out}");
    assert!(out.contains("ok       GET /readyz over TLS: HTTP/1.0 200 ok"), "{out}");
    assert_eq!(out.matches("chain verifies").count(), 3, "the VIP and both backends: {out}");

    // backend2 without the VIP and hostname SANs: named, exit 1.
    drop(servers.remove(1));
    let bare = server_cert(&dir, "bare2", &cluster_ca, &sans(lab.backend(2).ip, false));
    servers.push(serve_tls(&lab, 2, &bare));
    let (code, out) = verify(&n2.ns, &n2.config_path);
    eprintln!("--- verify with backend2 lacking the VIP SAN (exit {code:?}):\n{out}");
    assert_eq!(code, Some(1), "{out}");
    let backend2 = format!("  backend {}:{BACKEND_PORT}\n", lab.backend(2).ip);
    let section = &out[out.find(&backend2).expect("backend2 section")..];
    assert!(
        section.contains(&format!(
            "FAIL     SANs lack the VIP {vip} (an IP address SAN) and the hostname {HOSTNAME} (a DNS SAN)"
        )),
        "{out}"
    );
    assert!(out.trim_end().lines().last().is_some_and(|l| l.starts_with("verify: ") && l.contains("failed")), "{out}");

    // backend2 with a certificate from another CA: the chain check says so.
    drop(servers.remove(1));
    let foreign = server_cert(&dir, "foreign2", &ca("someone else's CA"), &sans(lab.backend(2).ip, true));
    servers.push(serve_tls(&lab, 2, &foreign));
    let (code, out) = verify(&n2.ns, &n2.config_path);
    eprintln!("--- verify with backend2 signed by another CA (exit {code:?}):\n{out}");
    assert_eq!(code, Some(1), "{out}");
    let section = &out[out.find(&backend2).expect("backend2 section")..];
    assert!(section.contains("its issuer is not among those CAs"), "{out}");

    // On the active node the VIP cannot be reached from itself: the report says why.
    let (code, out) = verify(&n1.ns, &n1.config_path);
    eprintln!("--- verify on the active node (exit {code:?}):\n{out}");
    assert_eq!(code, Some(1));
    assert!(out.contains("this node is the active one"), "{out}");

    // A bad config: exit 2, located.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "interface = \"eth0\"\n[vrrp]\npriority = 300\n").expect("bad config");
    let (code, out) = verify(&n2.ns, &bad);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("bad.toml:3:12:"), "{out}");
}
