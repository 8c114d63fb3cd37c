//! One test per rule: each checks the message and where it points.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::*;

/// The one instance of a single-form config, read-only.
trait Single {
    fn only(&self) -> &Instance;
    fn vrrp(&self) -> &Vrrp {
        &self.only().vrrp
    }
    fn vip(&self) -> &Vip {
        &self.only().vip
    }
    fn services(&self) -> &[Service] {
        &self.only().services
    }
}

impl Single for Config {
    fn only(&self) -> &Instance {
        assert_eq!(self.instances.len(), 1, "a single-form config has one instance");
        &self.instances[0]
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Lines 1-6: the smallest valid config. Keys appended to it land in [vrrp], starting on line 7.
const BASE: &str = "interface = \"eth0\"\n[vip]\naddress = \"10.0.0.250\"\n[vrrp]\nvrid = 51\npriority = 150\n";

/// BASE and a service (lines 7-10: header, name, port 443, one backend); `extra` starts on line 11.
fn with_service(extra: &str) -> String {
    format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\", port = 6443 }}]\n{extra}"
    )
}

/// BASE and a service whose `[service.health]` header is on line 11; `extra` starts on line 12.
fn with_health(extra: &str) -> String {
    with_service(&format!("[service.health]\n{extra}"))
}

fn problems(text: &str) -> Vec<String> {
    match parse(Path::new("xvip.toml"), text) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

/// The single problem in `text`; fails the test when there are none or several.
fn problem(text: &str) -> String {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    all.remove(0)
}

fn valid(text: &str) -> Config {
    match parse(Path::new("xvip.toml"), text) {
        Ok(config) => config,
        Err(problems) => panic!("expected a valid config, got {problems:#?}"),
    }
}

// ---- documents ----

#[test]
fn minimal_config_is_valid_and_takes_every_default() {
    let config = valid(BASE);
    assert_eq!(
        config,
        Config {
            interface: Some("eth0".into()),
            xdp_mode: XdpMode::Auto,
            conntrack_entries: 65536,
            local_clients: true,
            control: Control { socket: PathBuf::from("/run/xvip/xvip.sock") },
            metrics: None,
            instances: vec![Instance {
                name: "default".into(),
                interface: "eth0".into(),
                vip: Vip { addresses: vec![v4(10, 0, 0, 250)], hostname: None },
                vrrp: Vrrp {
                    vrid: 51,
                    priority: 150,
                    advert_interval_ms: 1000,
                    preempt: true,
                    preempt_delay_ms: 0,
                    source_address: None,
                    unicast_peers: vec![],
                    source_address6: None,
                    unicast_peers6: vec![],
                    checksum: ChecksumMode::PseudoHeader,
                    garp_count: 5,
                    garp_repeat_delay_ms: 5000,
                    garp_refresh_ms: 0,
                    backend_loss_penalty: 0,
                },
                services: vec![],
            }],
        }
    );
}

#[test]
fn service_and_health_defaults() {
    let config = valid(&with_service(""));
    let service = &config.services()[0];
    assert_eq!(service.protocol, Protocol::Tcp);
    assert_eq!(service.forwarding, Forwarding::Nat);
    assert_eq!(service.backends, vec![BackendCfg { address: v4(10, 0, 0, 11), port: 6443, weight: 1 }]);
    assert_eq!(
        service.health,
        Health {
            check: CheckKind::Tcp,
            path: "/".into(),
            expect_status: 200,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            tls_verify: true,
            ca_file: None,
            server_name: None,
        }
    );
}

/// A config with every section and most keys, commented the way users write them.
const FULL_EXAMPLE: &str = r#"
interface = "eth0"            # carries the VIP; the XDP program attaches here
xdp_mode = "auto"             # auto (native, else generic with a warning) | native | generic

[vip]
address = "10.10.74.250"      # IPv4
hostname = "test.example.com" # optional; informational (and for certificate checks)

[vrrp]
vrid = 51                     # 1..=255, the same on every node of the group
priority = 150                # 1..=254; 255 = address owner
advert_interval_ms = 1000     # 10..=40950, a multiple of 10 (VRRPv3 centiseconds)
preempt = true
preempt_delay_ms = 0
# source_address = "10.0.0.5" # default: the interface's primary IPv4
unicast_peers = []            # empty = multicast to 224.0.0.18
checksum = "pseudo-header"    # or "rfc9568" (IPv4 checksum without pseudo-header); both are accepted on receive
garp_count = 5                # gratuitous ARPs sent on becoming active
garp_repeat_delay_ms = 5000   # a second burst after this delay; 0 = none
garp_refresh_ms = 0           # periodic gratuitous ARP while active; 0 = off
backend_loss_penalty = 0      # priority is lowered by this much while any service has no healthy backend here

[control]
socket = "/run/xvip/xvip.sock" # status socket, mode 0600

[[service]]
name = "kube-apiserver"
port = 443                    # port on the VIP
protocol = "tcp"              # tcp | udp
forwarding = "nat"            # nat: backends need no change | dsr: backends hold the VIP on lo, same L2 segment
backends = [
  { address = "10.0.0.11", port = 6443 },
  { address = "10.0.0.12", port = 6443, weight = 2 },   # weight 0..=255, default 1
]

[service.health]
check = "https"               # tcp | http | https | none
path = "/readyz"              # http/https
expect_status = 200
interval_ms = 2000
timeout_ms = 1000
rise = 2                      # consecutive successes to mark a backend healthy
fall = 3                      # consecutive failures to mark it unhealthy
tls_verify = false            # or set ca_file = "/etc/kubernetes/pki/ca.crt"
# server_name = "kubernetes"  # SNI / name to verify
"#;

#[test]
fn a_full_example_is_valid() {
    let config = valid(FULL_EXAMPLE);
    assert_eq!(config.vip().addresses[0], Ipv4Addr::new(10, 10, 74, 250));
    assert_eq!(config.vip().hostname.as_deref(), Some("test.example.com"));
    let service = &config.services()[0];
    assert_eq!(service.backends[1], BackendCfg { address: v4(10, 0, 0, 12), port: 6443, weight: 2 });
    assert_eq!(service.health.check, CheckKind::Https);
    assert_eq!(service.health.path, "/readyz");
    assert!(!service.health.tls_verify);
}

#[test]
fn example_file_is_valid() {
    let config = valid(include_str!("../../../deploy/xvip.example.toml"));
    assert_eq!(config.vip().addresses[0], Ipv4Addr::new(10, 0, 0, 250));
    assert_eq!(config.conntrack_entries, 65536);
    let service = &config.services()[0];
    assert_eq!(service.port, 443);
    let addresses: Vec<_> = service.backends.iter().map(|b| (b.address.to_string(), b.port)).collect();
    assert_eq!(
        addresses,
        [("10.0.0.11".to_owned(), 6443), ("10.0.0.12".to_owned(), 6443), ("10.0.0.13".to_owned(), 6443)]
    );
    assert_eq!(service.health.check, CheckKind::Https);
    assert_eq!(service.health.path, "/readyz");
    assert!(!service.health.tls_verify);
}

#[test]
fn example_file_with_the_ca_file_alternative_is_valid() {
    let text = include_str!("../../../deploy/xvip.example.toml")
        .replace("\ntls_verify = false", "\n# tls_verify = false")
        .replace("# ca_file = ", "ca_file = ")
        .replace("# server_name = ", "server_name = ");
    let config = valid(&text);
    let health = &config.services()[0].health;
    assert!(health.tls_verify);
    assert_eq!(health.ca_file.as_deref(), Some(Path::new("/etc/kubernetes/pki/ca.crt")));
    assert_eq!(health.server_name.as_deref(), Some("kubernetes"));
}

#[test]
fn syntax_error_is_the_only_problem_and_is_located() {
    let text = format!("{BASE}preempt = tru\ngarp_count = 1000\n");
    let found = problem(&text);
    assert!(found.starts_with("xvip.toml:7:11: invalid TOML: "), "{found}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    assert_eq!(
        problem(&format!("{BASE}vrid = 52\n")),
        "xvip.toml:7:1: invalid TOML: duplicate key `vrid` in table `vrrp`"
    );
    assert_eq!(
        problem("[vrrp]\nvrid = 1\n[vrrp]\n"),
        "xvip.toml:3:1: invalid TOML: invalid table header: duplicate key `vrrp` in document root"
    );
}

#[test]
fn all_problems_are_reported_together_top_to_bottom() {
    let text = "interface = \"\"\n[vip]\naddress = \"0.0.0.0\"\n[vrrp]\nvrid = 0\npriority = 300\nbogus = 1\n";
    assert_eq!(
        problems(text),
        [
            "xvip.toml:1:13: interface must be an interface name of 1..=15 bytes without '/', ':' or whitespace, \
             like \"eth0\", got an empty name",
            "xvip.toml:3:11: vip.address must be a unicast IPv4 address, got 0.0.0.0 (the unspecified address)",
            "xvip.toml:5:8: vrrp.vrid must be 1..=255 (the same on every node of the group), got 0",
            "xvip.toml:6:12: vrrp.priority must be 1..=255 (255 = address owner), got 300",
            "xvip.toml:7:1: unknown key `bogus` in [vrrp]; allowed here: vrid, priority, advert_interval_ms, preempt, \
             preempt_delay_ms, source_address, unicast_peers, checksum, garp_count, garp_repeat_delay_ms, \
             garp_refresh_ms, backend_loss_penalty",
        ]
    );
}

// ---- keys and types ----

#[test]
fn unknown_key_suggests_the_closest_key() {
    assert_eq!(
        problem(&format!("{BASE}advert_interval = 100\n")),
        "xvip.toml:7:1: unknown key `advert_interval` in [vrrp]; did you mean `advert_interval_ms`?"
    );
}

#[test]
fn unknown_key_at_the_top_level_names_its_table() {
    assert_eq!(
        problem(&format!("garp_count = 3\n{BASE}")),
        "xvip.toml:1:1: unknown key `garp_count` at the top level; `garp_count` belongs in [vrrp]"
    );
}

#[test]
fn unknown_key_in_a_service() {
    assert_eq!(
        problem(&with_service("protocl = \"udp\"\n")),
        "xvip.toml:11:1: unknown key `protocl` in service[0]; did you mean `protocol`?"
    );
}

#[test]
fn unknown_key_in_a_backend_entry() {
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\", wieght = 2 }}]\n"
    );
    assert_eq!(
        problem(&text),
        "xvip.toml:10:38: unknown key `wieght` in service[0].backends[0]; did you mean `weight`?"
    );
}

#[test]
fn unknown_key_in_health() {
    assert_eq!(
        problem(&with_health("intervall_ms = 500\n")),
        "xvip.toml:12:1: unknown key `intervall_ms` in service[0].health; did you mean `interval_ms`?"
    );
}

#[test]
fn wrong_type_says_the_expected_type() {
    let text = "interface = \"eth0\"\n[vip]\naddress = \"10.0.0.250\"\n[vrrp]\nvrid = 51\npriority = \"150\"\n";
    assert_eq!(
        problem(text),
        "xvip.toml:6:12: vrrp.priority must be an integer 1..=255 (255 = address owner), got a string \"150\""
    );
    assert_eq!(
        problem(&format!("{BASE}preempt = \"yes\"\n")),
        "xvip.toml:7:11: vrrp.preempt must be a boolean (true or false), got a string \"yes\""
    );
    assert_eq!(
        problem(&format!("{BASE}preempt_delay_ms = 1979-05-27\n")),
        "xvip.toml:7:20: vrrp.preempt_delay_ms must be an integer 0..=1000000, got a datetime 1979-05-27"
    );
}

#[test]
fn a_section_that_is_not_a_table() {
    assert_eq!(
        problem(&format!("control = \"/run/x.sock\"\n{BASE}")),
        "xvip.toml:1:11: control must be a table, got a string \"/run/x.sock\""
    );
}

#[test]
fn service_must_be_an_array_of_tables() {
    assert_eq!(
        problem(&format!("{BASE}[service]\nname = \"api\"\n")),
        "xvip.toml:7:1: service must be an array of tables: write each service as [[service]], got a table"
    );
}

#[test]
fn missing_interface_points_at_the_top() {
    assert_eq!(
        problem("[vip]\naddress = \"10.0.0.250\"\n[vrrp]\nvrid = 51\npriority = 150\n"),
        "xvip.toml:1:1: missing required key `interface` at the top level; expected the name of the interface that \
         carries the VIP, like \"eth0\""
    );
}

#[test]
fn missing_tables_are_reported() {
    assert_eq!(
        problems("interface = \"eth0\"\n"),
        [
            "xvip.toml:1:1: missing required table [vip]; expected a [vip] table with address = \"...\"",
            "xvip.toml:1:1: missing required table [vrrp]; expected a [vrrp] table with vrid and priority",
        ]
    );
}

#[test]
fn missing_vip_address_points_at_the_vip_table() {
    assert_eq!(
        problem("interface = \"eth0\"\n[vip]\nhostname = \"api\"\n[vrrp]\nvrid = 51\npriority = 150\n"),
        "xvip.toml:2:1: missing required key `address` in [vip]; expected the virtual IPv4 or IPv6 address, like \
         address = \"10.0.0.250\" (or addresses = [...] for several)"
    );
}

#[test]
fn missing_vrid_and_priority_point_at_the_vrrp_table() {
    assert_eq!(
        problems("interface = \"eth0\"\n[vip]\naddress = \"10.0.0.250\"\n\n[vrrp]\npreempt = false\n"),
        [
            "xvip.toml:5:1: missing required key `vrid` in [vrrp]; expected the virtual router ID 1..=255, the same \
             on every node",
            "xvip.toml:5:1: missing required key `priority` in [vrrp]; expected 1..=255 (highest wins; 255 = \
             address owner)",
        ]
    );
}

#[test]
fn missing_service_keys_point_at_the_service() {
    assert_eq!(
        problems(&format!("{BASE}\n[[service]]\nprotocol = \"tcp\"\n")),
        [
            "xvip.toml:8:1: missing required key `name` in service[0]; expected a unique name like \
             name = \"kube-apiserver\"",
            "xvip.toml:8:1: missing required key `port` in service[0]; expected the port on the VIP, 1..=65535",
            "xvip.toml:8:1: missing required key `backends` in service[0]; expected an array like \
             backends = [{ address = \"10.0.0.11\", port = 6443 }]",
        ]
    );
}

#[test]
fn dotted_keys_are_read_like_tables() {
    let text = "interface = \"eth0\"\nvip.address = \"10.0.0.250\"\nvrrp.vrid = 51\nvrrp.priority = 150\n";
    assert_eq!(valid(text).vrrp().priority, 150);
    assert_eq!(
        problem("interface = \"eth0\"\nvip.address = \"10.0.0.250\"\nvrrp.vrid = 51\n"),
        "xvip.toml:3:1: missing required key `priority` in [vrrp]; expected 1..=255 (highest wins; 255 = address \
         owner)"
    );
}

// ---- top level ----

#[test]
fn interface_must_not_be_empty() {
    assert_eq!(
        problem(&BASE.replace("\"eth0\"", "\"\"")),
        "xvip.toml:1:13: interface must be an interface name of 1..=15 bytes without '/', ':' or whitespace, like \
         \"eth0\", got an empty name"
    );
}

#[test]
fn interface_is_at_most_15_bytes() {
    assert_eq!(valid(&BASE.replace("eth0", "abcdefghijklmno")).default_interface(), "abcdefghijklmno");
    assert_eq!(
        problem(&BASE.replace("eth0", "abcdefghijklmnop")),
        "xvip.toml:1:13: interface must be an interface name of 1..=15 bytes without '/', ':' or whitespace, like \
         \"eth0\", got \"abcdefghijklmnop\" (16 bytes)"
    );
}

#[test]
fn interface_has_no_slash_colon_or_space() {
    assert_eq!(
        problem(&BASE.replace("eth0", "eth0:1")),
        "xvip.toml:1:13: interface must be an interface name of 1..=15 bytes without '/', ':' or whitespace, like \
         \"eth0\", got \"eth0:1\""
    );
}

#[test]
fn xdp_mode_is_a_known_word() {
    assert_eq!(
        problem(&format!("xdp_mode = \"nativ\"\n{BASE}")),
        "xvip.toml:1:12: xdp_mode must be one of \"auto\", \"native\", \"generic\", got \"nativ\"; did you mean \
         \"native\"?"
    );
    assert_eq!(valid(&format!("xdp_mode = \"generic\"\n{BASE}")).xdp_mode, XdpMode::Generic);
}

#[test]
fn conntrack_entries_range() {
    assert_eq!(valid(&format!("conntrack_entries = 1024\n{BASE}")).conntrack_entries, 1024);
    assert_eq!(
        problem(&format!("conntrack_entries = 100\n{BASE}")),
        "xvip.toml:1:21: conntrack_entries must be 1024..=16777216 (flows the data plane remembers), got 100"
    );
}

#[test]
fn local_clients_is_on_unless_switched_off() {
    assert!(valid(BASE).local_clients);
    assert!(!valid(&format!("local_clients = false\n{BASE}")).local_clients);
    assert!(problem(&format!("local_clients = \"no\"\n{BASE}")).starts_with("xvip.toml:1:17: local_clients must be"));
}

// ---- [vip] ----

#[test]
fn vip_must_be_an_ipv4_address() {
    assert_eq!(
        problem(&BASE.replace("10.0.0.250", "10.0.0.256")),
        "xvip.toml:3:11: vip.address must be an IPv4 address in dotted-quad form like \"10.0.0.1\", got \"10.0.0.256\""
    );
}

#[test]
fn vip_must_not_be_unspecified_multicast_or_broadcast() {
    for (address, why) in [
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.18", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("127.0.0.1", "a loopback address"),
    ] {
        assert_eq!(
            problem(&BASE.replace("10.0.0.250", address)),
            format!("xvip.toml:3:11: vip.address must be a unicast IPv4 address, got {address} ({why})")
        );
    }
}

#[test]
fn vip_hostname_must_not_be_empty() {
    assert_eq!(
        problem(&BASE.replace("[vrrp]", "hostname = \"\"\n[vrrp]")),
        "xvip.toml:4:12: vip.hostname must be a DNS name like \"api.example.com\" or an IP address, got \"\""
    );
}

// ---- [vrrp] ----

#[test]
fn vrid_range() {
    assert_eq!(
        problem(&BASE.replace("vrid = 51", "vrid = 256")),
        "xvip.toml:5:8: vrrp.vrid must be 1..=255 (the same on every node of the group), got 256"
    );
}

#[test]
fn priority_range_and_owner() {
    assert_eq!(valid(&BASE.replace("priority = 150", "priority = 255")).vrrp().priority, 255);
    assert_eq!(
        problem(&BASE.replace("priority = 150", "priority = 0")),
        "xvip.toml:6:12: vrrp.priority must be 1..=255 (255 = address owner), got 0"
    );
}

#[test]
fn advert_interval_range() {
    assert_eq!(valid(&format!("{BASE}advert_interval_ms = 40950\n")).vrrp().advert_interval_ms, 40950);
    assert_eq!(
        problem(&format!("{BASE}advert_interval_ms = 40960\n")),
        "xvip.toml:7:22: vrrp.advert_interval_ms must be 10..=40950 (VRRPv3 sends centiseconds in 12 bits), got 40960"
    );
}

#[test]
fn advert_interval_is_a_multiple_of_10() {
    assert_eq!(
        problem(&format!("{BASE}advert_interval_ms = 1005\n")),
        "xvip.toml:7:22: vrrp.advert_interval_ms must be a multiple of 10 (VRRPv3 counts centiseconds), got 1005"
    );
}

#[test]
fn preempt_delay_limit() {
    assert_eq!(valid(&format!("{BASE}preempt_delay_ms = 1000000\n")).vrrp().preempt_delay_ms, 1_000_000);
    assert_eq!(
        problem(&format!("{BASE}preempt_delay_ms = 1000001\n")),
        "xvip.toml:7:20: vrrp.preempt_delay_ms must be 0..=1000000, got 1000001"
    );
}

#[test]
fn unicast_peers_are_unique() {
    assert_eq!(
        problem(&format!("{BASE}unicast_peers = [\"10.0.0.12\", \"10.0.0.13\", \"10.0.0.12\"]\n")),
        "xvip.toml:7:44: vrrp.unicast_peers[2] repeats 10.0.0.12; each peer must be listed once"
    );
}

#[test]
fn unicast_peers_exclude_the_source_address() {
    let text = format!("{BASE}source_address = \"10.0.0.11\"\nunicast_peers = [\"10.0.0.11\", \"10.0.0.12\"]\n");
    assert_eq!(
        problem(&text),
        "xvip.toml:8:18: vrrp.unicast_peers[0] is 10.0.0.11, this node's own source_address; list only the other \
         nodes"
    );
}

#[test]
fn unicast_peers_are_addresses() {
    assert_eq!(
        problem(&format!("{BASE}unicast_peers = \"10.0.0.12\"\n")),
        "xvip.toml:7:17: vrrp.unicast_peers must be an array of IP addresses (empty = multicast to 224.0.0.18 and \
         ff02::12), got a string \"10.0.0.12\""
    );
    assert_eq!(
        problem(&format!("{BASE}unicast_peers = [\"10.0.0.250\"]\n")),
        "xvip.toml:7:18: vrrp.unicast_peers[0] is the VIP 10.0.0.250; list the other nodes' own addresses"
    );
}

#[test]
fn source_address_is_not_the_vip() {
    assert_eq!(
        problem(&format!("{BASE}source_address = \"10.0.0.250\"\n")),
        "xvip.toml:7:18: vrrp.source_address must be this node's own address, not the VIP 10.0.0.250 (adverts must \
         come from an address the node keeps when it is backup)"
    );
}

#[test]
fn checksum_is_a_known_word() {
    assert_eq!(valid(&format!("{BASE}checksum = \"rfc9568\"\n")).vrrp().checksum, ChecksumMode::Rfc9568);
    assert_eq!(
        problem(&format!("{BASE}checksum = \"pseudoheader\"\n")),
        "xvip.toml:7:12: vrrp.checksum must be one of \"pseudo-header\", \"rfc9568\", got \"pseudoheader\"; did you \
         mean \"pseudo-header\"?"
    );
}

#[test]
fn garp_count_range() {
    assert_eq!(
        problem(&format!("{BASE}garp_count = 101\n")),
        "xvip.toml:7:14: vrrp.garp_count must be 0..=100, got 101"
    );
}

#[test]
fn garp_refresh_is_off_or_at_least_100ms() {
    assert_eq!(
        problem(&format!("{BASE}garp_refresh_ms = 50\n")),
        "xvip.toml:7:19: vrrp.garp_refresh_ms must be 0 (off) or at least 100, got 50"
    );
}

#[test]
fn backend_loss_penalty_range() {
    assert_eq!(
        problem(&format!("{BASE}backend_loss_penalty = 255\n")),
        "xvip.toml:7:24: vrrp.backend_loss_penalty must be 0..=254 (subtracted from the priority while a service has \
         no healthy backend), got 255"
    );
}

// ---- [control] ----

#[test]
fn control_socket_fits_a_unix_socket_address() {
    let long = format!("/run/{}", "x".repeat(103));
    assert_eq!(
        problem(&format!("{BASE}[control]\nsocket = \"{long}\"\n")),
        "xvip.toml:8:10: control.socket must be at most 107 bytes long (the limit of a Unix socket address), got 108"
    );
    assert_eq!(
        valid(&format!("{BASE}[control]\nsocket = \"/tmp/x.sock\"\n")).control.socket,
        PathBuf::from("/tmp/x.sock")
    );
}

// ---- [[service]] ----

#[test]
fn service_port_range() {
    assert_eq!(
        problem(&with_service("").replace("port = 443", "port = 0")),
        "xvip.toml:9:8: service[0].port must be 1..=65535, got 0"
    );
}

#[test]
fn service_name_must_not_be_empty() {
    assert_eq!(
        problem(&with_service("").replace("name = \"api\"", "name = \"\"")),
        "xvip.toml:8:8: service[0].name must be a non-empty name, got an empty string"
    );
}

#[test]
fn service_names_are_unique() {
    let text = with_service("[[service]]\nname = \"api\"\nport = 80\nbackends = [{ address = \"10.0.0.11\" }]\n");
    assert_eq!(
        problem(&text),
        "xvip.toml:12:8: service[1].name \"api\" is already used by service[0]; names must be unique"
    );
}

#[test]
fn service_port_and_protocol_are_unique() {
    let second = "[[service]]\nname = \"dns\"\nport = 443\n{}backends = [{ address = \"10.0.0.11\" }]\n";
    assert_eq!(
        problem(&with_service(&second.replace("{}", ""))),
        "xvip.toml:13:8: service[1].port 443/tcp is already used by service[0]; each port and protocol can belong to \
         one service only"
    );
    // The same port with the other protocol is another service.
    let config = valid(&with_service(&second.replace("{}", "protocol = \"udp\"\n")));
    assert_eq!(config.services()[1].protocol, Protocol::Udp);
}

#[test]
fn service_needs_at_least_one_backend() {
    assert_eq!(
        problem(&format!("{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = []\n")),
        "xvip.toml:10:12: service[0].backends must list at least one backend, got an empty array"
    );
}

#[test]
fn backends_are_unique_within_a_service() {
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [\n  {{ address = \"10.0.0.11\", port = 6443 }},\n  \
         {{ address = \"10.0.0.11\", port = 6443, weight = 2 }},\n]\n"
    );
    assert_eq!(
        problem(&text),
        "xvip.toml:12:3: service[0].backends[1] repeats backend 10.0.0.11:6443; each address and port may be listed \
         once per service"
    );
}

#[test]
fn backend_weight_range() {
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\", weight = 256 }}]\n"
    );
    assert_eq!(
        problem(&text),
        "xvip.toml:10:47: service[0].backends[0].weight must be 0..=255 (share of new flows; 0 = draining), got 256"
    );
}

#[test]
fn weight_zero_is_a_draining_backend() {
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\", weight = 0 }}]\n"
    );
    assert_eq!(valid(&text).services()[0].backends[0].weight, 0);
}

#[test]
fn backend_port_range_and_default() {
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\", port = 65536 }}]\n"
    );
    assert_eq!(problem(&text), "xvip.toml:10:45: service[0].backends[0].port must be 1..=65535, got 65536");
    let text = format!("{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\" }}]\n");
    assert_eq!(valid(&text).services()[0].backends[0].port, 443);
}

#[test]
fn backend_address_is_a_host_and_not_the_vip() {
    let text = format!("{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.250\" }}]\n");
    assert_eq!(
        problem(&text),
        "xvip.toml:10:25: service[0].backends[0].address is the VIP 10.0.0.250; a backend must be a real server's own \
         address"
    );
    let text = format!("{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ port = 443 }}]\n");
    assert_eq!(
        problem(&text),
        "xvip.toml:10:13: missing required key `address` in service[0].backends[0]; expected the backend's address, like address = \"10.0.0.11\""
    );
}

#[test]
fn dsr_backend_port_must_equal_the_service_port() {
    let text = with_service("forwarding = \"dsr\"\n");
    assert_eq!(
        problem(&text),
        "xvip.toml:10:45: service[0].backends[0].port must equal the service port 443 with forwarding = \"dsr\" (the \
         backend answers from the VIP without translation), got 6443"
    );
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nforwarding = \"dsr\"\nbackends = [{{ address = \"10.0.0.11\" }}]\n"
    );
    assert_eq!(valid(&text).services()[0].forwarding, Forwarding::Dsr);
}

#[test]
fn forwarding_and_protocol_are_known_words() {
    assert_eq!(
        problem(&with_service("forwarding = \"direct\"\n")),
        "xvip.toml:11:14: service[0].forwarding must be one of \"nat\", \"dsr\", got \"direct\""
    );
    assert_eq!(
        problem(&with_service("protocol = \"sctp\"\n")),
        "xvip.toml:11:12: service[0].protocol must be one of \"tcp\", \"udp\", got \"sctp\""
    );
}

#[test]
fn at_most_512_services() {
    let mut text = BASE.to_owned();
    for i in 0..513 {
        text.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nport = {}\nbackends = [{{ address = \"10.0.0.11\" }}]\n",
            i + 1
        ));
    }
    // The 513th service starts on line 7 + 512 * 4.
    assert_eq!(
        problem(&text),
        "xvip.toml:2055:1: too many services: at most 512 Maglev tables over all instances are supported (the data \
         plane is sized for that), this service brings them to 513"
    );
    // A dual-stack instance's services take two tables each: the 257th is one too many.
    let mut text = BASE.replace("address = \"10.0.0.250\"", "addresses = [\"10.0.0.250\", \"fd00::250\"]");
    for s in 0..257 {
        text.push_str(&format!(
            "[[service]]\nname = \"s{s}\"\nport = {}\nforwarding = \"dsr\"\nbackends = [{{ address = \"10.0.0.11\" }}, \
             {{ address = \"fd00::11\" }}]\n",
            s + 1
        ));
    }
    assert_eq!(
        problem(&text),
        "xvip.toml:1287:1: too many services: at most 512 Maglev tables over all instances are supported (the data \
         plane is sized for that), this service brings them to 514 (one per service and address family)"
    );
}

#[test]
fn at_most_16384_backends_in_total() {
    let mut text = BASE.to_owned();
    for s in 0..2 {
        text.push_str(&format!("[[service]]\nname = \"s{s}\"\nport = {}\nbackends = [\n", s + 1));
        for b in 0..8193 {
            text.push_str(&format!("{{ address = \"10.{}.{}.{}\" }},\n", s + 1, b / 250, b % 250 + 1));
        }
        text.push_str("]\n");
    }
    // Service 0 takes lines 7-10 (header), 11-8203 (backends) and 8204 (`]`); service 1's backends start on line
    // 8209, and its 8192nd (0-based 8191), the 16385th in total, is on line 8209 + 8191.
    assert_eq!(
        problem(&text),
        "xvip.toml:16400:1: too many backends: at most 16384 over all services are supported (the size of the data \
         plane's backend table)"
    );
}

// ---- [service.health] ----

#[test]
fn health_rise_and_fall_are_at_least_1() {
    assert_eq!(
        problems(&with_health("rise = 0\nfall = 0\n")),
        [
            "xvip.toml:12:8: service[0].health.rise must be 1..=1000 (consecutive successes), got 0",
            "xvip.toml:13:8: service[0].health.fall must be 1..=1000 (consecutive failures), got 0",
        ]
    );
}

#[test]
fn health_timeout_must_not_exceed_interval() {
    assert_eq!(valid(&with_health("interval_ms = 500\ntimeout_ms = 500\n")).services()[0].health.timeout_ms, 500);
    assert_eq!(
        problem(&with_health("interval_ms = 500\ntimeout_ms = 600\n")),
        "xvip.toml:13:14: service[0].health.timeout_ms (600) must not exceed service[0].health.interval_ms (500): a \
         check must end before the next one starts"
    );
    // With the default timeout (1000), the interval is what the user wrote, so it is what the problem points at.
    assert_eq!(
        problem(&with_health("interval_ms = 500\n")),
        "xvip.toml:12:15: service[0].health.timeout_ms (1000) must not exceed service[0].health.interval_ms (500): a \
         check must end before the next one starts"
    );
}

#[test]
fn health_interval_is_at_least_100ms() {
    assert_eq!(
        problem(&with_health("interval_ms = 50\n")),
        "xvip.toml:12:15: service[0].health.interval_ms must be 100..=3600000, got 50"
    );
}

#[test]
fn health_expect_status_range() {
    assert_eq!(
        problem(&with_health("check = \"http\"\nexpect_status = 600\n")),
        "xvip.toml:13:17: service[0].health.expect_status must be 100..=599 (an HTTP status code), got 600"
    );
}

#[test]
fn health_path_starts_with_a_slash_and_has_no_spaces() {
    for path in ["readyz", "/ready z"] {
        assert_eq!(
            problem(&with_health(&format!("check = \"http\"\npath = {path:?}\n"))),
            format!(
                "xvip.toml:13:8: service[0].health.path must start with \"/\" and contain no spaces or control \
                 characters, like \"/readyz\", got {path:?}"
            )
        );
    }
}

#[test]
fn http_keys_need_an_http_check() {
    assert_eq!(
        problems(&with_health("path = \"/readyz\"\nexpect_status = 204\n")),
        [
            "xvip.toml:12:1: service[0].health.path is only meaningful with check = \"http\" or \"https\", got check = \
             \"tcp\"",
            "xvip.toml:13:1: service[0].health.expect_status is only meaningful with check = \"http\" or \"https\", \
             got check = \"tcp\"",
        ]
    );
}

#[test]
fn tls_keys_need_an_https_check() {
    assert_eq!(
        problem(&with_health("check = \"http\"\ntls_verify = false\n")),
        "xvip.toml:13:1: service[0].health.tls_verify is only meaningful with check = \"https\", got check = \"http\""
    );
    let health = valid(&with_health("check = \"https\"\nca_file = \"/ca.crt\"\nserver_name = \"api\"\n")).services()[0]
        .health
        .clone();
    assert_eq!(health.ca_file, Some(PathBuf::from("/ca.crt")));
    assert_eq!(health.server_name.as_deref(), Some("api"));
}

#[test]
fn ca_file_contradicts_tls_verify_false() {
    assert_eq!(
        problem(&with_health("check = \"https\"\ntls_verify = false\nca_file = \"/ca.crt\"\n")),
        "xvip.toml:14:1: service[0].health.ca_file is never used with tls_verify = false; remove it, or remove \
         tls_verify = false to verify backends against it"
    );
}

#[test]
fn udp_services_only_use_check_none() {
    let udp = format!(
        "{BASE}[[service]]\nname = \"dns\"\nport = 53\nprotocol = \"udp\"\nbackends = [{{ address = \"10.0.0.11\" }}]\n"
    );
    assert_eq!(valid(&udp).services()[0].health.check, CheckKind::None);
    assert_eq!(
        problem(&format!("{udp}[service.health]\ncheck = \"tcp\"\n")),
        "xvip.toml:13:9: service[0].health.check must be \"none\" for a udp service (xvip has no UDP health check, and \
         a TCP answer says nothing about a UDP server), got \"tcp\""
    );
}

#[test]
fn health_check_is_a_known_word() {
    assert_eq!(
        problem(&with_health("check = \"htps\"\n")),
        "xvip.toml:12:9: service[0].health.check must be one of \"tcp\", \"http\", \"https\", \"none\", got \"htps\"; \
         did you mean \"https\"?"
    );
}

// ---- files ----

#[test]
fn problem_display_is_path_line_col_message() {
    let problem = Problem { path: "/etc/xvip/xvip.toml".into(), line: 12, col: 12, message: "bad".into() };
    assert_eq!(problem.to_string(), "/etc/xvip/xvip.toml:12:12: bad");
}

#[test]
fn load_reports_a_missing_file() {
    let path = Path::new("/nonexistent/xvip.toml");
    let problems = load(path).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().starts_with("/nonexistent/xvip.toml:1:1: cannot read the config file: "),
        "{}",
        problems[0]
    );
}

#[test]
fn load_reads_a_file_and_rejects_non_utf8() {
    let dir = std::env::temp_dir().join(format!("xvip-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, BASE).unwrap();
    assert_eq!(load(&good).unwrap().default_interface(), "eth0");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, b"interface = \"eth0\"\n# caf\xe9\n").unwrap();
    let problems = load(&bad).unwrap_err();
    assert_eq!((problems[0].line, problems[0].col), (2, 6));
    assert_eq!(problems[0].message, "the config file must be UTF-8 text; this byte is not");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn suggestions_cover_typos_and_prefixes() {
    let keys = ["advert_interval_ms", "priority", "preempt", "preempt_delay_ms"];
    assert_eq!(read::suggest("priorty", &keys), Some("priority"));
    assert_eq!(read::suggest("Priority", &keys), Some("priority"));
    assert_eq!(read::suggest("advert_int", &keys), Some("advert_interval_ms"));
    assert_eq!(read::suggest("xyz", &keys), None);
}

// ---- metrics ----

#[test]
fn metrics_are_off_without_the_table_and_on_loopback_with_an_empty_one() {
    assert_eq!(valid(BASE).metrics, None);
    let on = valid(&format!("{BASE}[metrics]\n")).metrics.expect("on");
    assert_eq!(on.listen.to_string(), "127.0.0.1:9712");
}

#[test]
fn metrics_listen_takes_an_address_with_or_without_a_port() {
    for (written, read) in [
        ("0.0.0.0:9100", "0.0.0.0:9100"),
        ("10.0.0.5", "10.0.0.5:9712"),
        ("[::1]:9713", "[::1]:9713"),
        ("::", "[::]:9712"),
    ] {
        let config = valid(&format!("{BASE}[metrics]\nlisten = \"{written}\"\n"));
        assert_eq!(config.metrics.expect("on").listen.to_string(), read, "{written}");
    }
}

#[test]
fn a_bad_metrics_listen_address_is_located() {
    // BASE is 6 lines; [metrics] is line 7, listen line 8, its value at column 10.
    let message = problem(&format!("{BASE}[metrics]\nlisten = \"localhost:9712\"\n"));
    assert!(
        message.starts_with(
            "xvip.toml:8:10: metrics.listen must be an address and port to listen on, like \"127.0.0.1:9712\""
        ),
        "{message}"
    );
    assert!(message.ends_with("got \"localhost:9712\" (not an address)"), "{message}");
    let message = problem(&format!("{BASE}[metrics]\nlisten = \"127.0.0.1:0\"\n"));
    assert!(message.contains("(port 0 would be a different random port on every start)"), "{message}");
    let message = problem(&format!("{BASE}[metrics]\nlisten = 9712\n"));
    assert_eq!(message, "xvip.toml:8:10: metrics.listen must be a string, got an integer 9712");
    let message = problem(&format!("{BASE}[metrics]\nlisen = \"127.0.0.1\"\n"));
    assert_eq!(message, "xvip.toml:8:1: unknown key `lisen` in [metrics]; did you mean `listen`?");
    let message = problem(&format!("{BASE}[vrrp.metrics]\n"));
    assert!(message.contains("`metrics` belongs at the top level"), "{message}");
}

// ---- reload ----

fn two_services() -> Config {
    valid(&with_service("[[service]]\nname = \"web\"\nport = 80\nbackends = [{ address = \"10.0.0.21\" }]\n"))
}

/// The one instance of a single-form config, to change.
fn only(config: &mut Config) -> &mut Instance {
    &mut config.instances[0]
}

#[test]
fn diff_replaces_an_instance_whose_addresses_change() {
    let old = two_services();
    let mut new = old.clone();
    only(&mut new).vip.addresses = vec![v4(10, 0, 0, 251)];
    let plan = diff(&old, &new).expect("a new address list is a new VRRP router, not a restart");
    assert_eq!(plan.instances_replaced, [("default".to_owned(), vec!["vip.addresses"])]);
    assert!(plan.instances_changed.is_empty());
    assert_eq!(plan.to_string(), "instance default replaced (vip.addresses changed)");
}

#[test]
fn diff_names_every_restart_only_key() {
    let old = two_services();
    let mut new = old.clone();
    new.interface = Some("eth1".into());
    new.xdp_mode = XdpMode::Generic;
    new.conntrack_entries = 2048;
    new.local_clients = false;
    new.control.socket = "/tmp/other.sock".into();
    let error = diff(&old, &new).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "interface, xdp_mode, conntrack_entries, local_clients, control.socket changed, which needs a restart"
        ),
        "{error}"
    );
}

#[test]
fn a_reload_that_turns_metrics_on_off_or_moves_them_needs_a_restart() {
    let old = two_services();
    let on = Config { metrics: Some(Metrics::default()), ..old.clone() };
    let moved = Config { metrics: Some(Metrics { listen: "0.0.0.0:9100".parse().unwrap() }), ..old.clone() };
    for (from, to) in [(&old, &on), (&on, &old), (&on, &moved)] {
        assert_eq!(diff(from, to).unwrap_err().keys, ["metrics.listen"]);
    }
    assert!(diff(&on, &on.clone()).unwrap().is_empty());
}

#[test]
fn diff_replaces_an_instance_for_each_identity_key() {
    let old = two_services();
    type Change = fn(&mut Instance);
    let changes: [(&str, Change); 8] = [
        ("interface", |i| i.interface = "eth1".into()),
        ("vip.addresses", |i| i.vip.addresses.push(v4(10, 0, 0, 251))),
        ("vrrp.vrid", |i| i.vrrp.vrid = 52),
        ("vrrp.source_address", |i| i.vrrp.source_address = Some(Ipv4Addr::new(10, 0, 0, 5))),
        ("vrrp.unicast_peers", |i| i.vrrp.unicast_peers = vec![Ipv4Addr::new(10, 0, 0, 6)]),
        ("vrrp.advert_interval_ms", |i| i.vrrp.advert_interval_ms = 500),
        ("vrrp.preempt", |i| i.vrrp.preempt = false),
        ("vrrp.preempt_delay_ms", |i| i.vrrp.preempt_delay_ms = 100),
    ];
    for (key, change) in changes {
        let mut new = old.clone();
        change(only(&mut new));
        let plan = diff(&old, &new).expect("replaced, not refused");
        assert_eq!(plan.instances_replaced, [("default".to_owned(), vec![key])], "{key}");
    }
}

#[test]
fn diff_applies_the_other_vrrp_keys_in_place() {
    let old = two_services();
    let mut new = old.clone();
    let v = &mut only(&mut new).vrrp;
    v.priority = 120;
    v.checksum = ChecksumMode::Rfc9568;
    v.garp_count = 2;
    v.garp_repeat_delay_ms = 0;
    v.garp_refresh_ms = 1000;
    v.backend_loss_penalty = 10;
    let plan = diff(&old, &new).unwrap();
    assert_eq!(
        plan.changed("default").expect("in place").vrrp_changed,
        ["priority", "checksum", "garp_count", "garp_repeat_delay_ms", "garp_refresh_ms", "backend_loss_penalty"]
    );
    assert!(plan.instances_replaced.is_empty());
}

#[test]
fn diff_accepts_a_backend_addition() {
    let old = two_services();
    let mut new = old.clone();
    only(&mut new).services[0].backends.push(BackendCfg { address: v4(10, 0, 0, 12), port: 6443, weight: 1 });
    let plan = diff(&old, &new).unwrap();
    assert_eq!(
        plan,
        ReloadPlan {
            instances_changed: vec![InstancePlan {
                name: "default".into(),
                services_changed: vec!["api".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    );
    assert_eq!(plan.to_string(), "instance default: services changed: api");
}

#[test]
fn diff_reports_added_removed_priority_and_health() {
    let old = two_services();
    let mut new = old.clone();
    let i = only(&mut new);
    i.services.remove(1);
    let mut added = i.services[0].clone();
    added.name = "other".into();
    added.port = 8443;
    i.services.push(added);
    i.services[0].health.interval_ms = 5000;
    i.vrrp.priority = 100;
    let plan = diff(&old, &new).unwrap();
    assert_eq!(
        plan.changed("default"),
        Some(&InstancePlan {
            name: "default".into(),
            services_added: vec!["other".into()],
            services_removed: vec!["web".into()],
            services_changed: vec![],
            health_changed: vec!["api".into()],
            vrrp_changed: vec!["priority"],
            hostname_changed: false,
        })
    );
    assert_eq!(
        plan.to_string(),
        "instance default: services added: other; services removed: web; health checks changed: api; vrrp changed: \
         priority"
    );
}

#[test]
fn diff_of_identical_configs_is_empty() {
    let config = two_services();
    let plan = diff(&config, &config).unwrap();
    assert!(plan.is_empty());
    assert_eq!(plan.to_string(), "nothing changed");
}

#[test]
fn a_refused_check_does_not_also_refuse_its_keys() {
    assert_eq!(
        problem(&with_health("check = \"htps\"\npath = \"/readyz\"\ntls_verify = false\n")),
        "xvip.toml:12:9: service[0].health.check must be one of \"tcp\", \"http\", \"https\", \"none\", got \"htps\"; \
         did you mean \"https\"?"
    );
}

#[test]
fn server_name_is_a_dns_name_or_address() {
    assert_eq!(
        problem(&with_health("check = \"https\"\nserver_name = \"bad name\"\n")),
        "xvip.toml:13:15: service[0].health.server_name must be a DNS name like \"api.example.com\" or an IP address, \
         got \"bad name\""
    );
    let ip = valid(&with_health("check = \"https\"\nserver_name = \"10.0.0.11\"\n"));
    assert_eq!(ip.services()[0].health.server_name.as_deref(), Some("10.0.0.11"));
}

#[test]
fn empty_and_inline_tables_read_like_sections() {
    assert_eq!(valid(&format!("{BASE}[control]\n")).control, Control::default());
    let text = format!(
        "{BASE}[[service]]\nname = \"api\"\nport = 443\nbackends = [{{ address = \"10.0.0.11\" }}]\n\
         health = {{ check = \"http\", path = \"/healthz\" }}\n"
    );
    let config = valid(&text);
    let health = &config.services()[0].health;
    assert_eq!((health.check, health.path.as_str()), (CheckKind::Http, "/healthz"));
}

/// docs/config.md is the users' reference: every key the reader accepts is in its table, by its full path.
#[test]
fn the_config_reference_lists_every_key() {
    use super::read::{
        BACKEND_KEYS, CONTROL_KEYS, HEALTH_KEYS, INSTANCE_KEYS, METRICS_KEYS, ROOT_KEYS, SERVICE_KEYS, VIP_KEYS,
        VRRP_KEYS,
    };
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).expect("docs/config.md");
    let tables = ["vip", "vrrp", "control", "metrics", "service", "instance"];
    let mut wanted: Vec<String> = ROOT_KEYS.iter().filter(|k| !tables.contains(k)).map(|k| k.to_string()).collect();
    // An instance's vip, vrrp and service tables take the keys of the single form's, listed once.
    let shared = ["vip", "vrrp", "service"];
    wanted.extend(INSTANCE_KEYS.iter().filter(|k| !shared.contains(k)).map(|k| format!("instance[].{k}")));
    for table in shared {
        assert!(INSTANCE_KEYS.contains(&table), "{table} is no longer an instance key: update this test");
    }
    for (prefix, keys) in
        [("vip.", VIP_KEYS), ("vrrp.", VRRP_KEYS), ("control.", CONTROL_KEYS), ("metrics.", METRICS_KEYS)]
    {
        wanted.extend(keys.iter().map(|k| format!("{prefix}{k}")));
    }
    wanted.extend(SERVICE_KEYS.iter().filter(|k| **k != "health").map(|k| format!("service[].{k}")));
    wanted.extend(BACKEND_KEYS.iter().map(|k| format!("service[].backends[].{k}")));
    wanted.extend(HEALTH_KEYS.iter().map(|k| format!("service[].health.{k}")));
    for table in tables {
        assert!(ROOT_KEYS.contains(&table), "{table} is no longer a root key: update this test");
    }
    let rows: Vec<&str> = reference.lines().filter(|l| l.starts_with("| `")).collect();
    let missing: Vec<&String> =
        wanted.iter().filter(|k| !rows.iter().any(|r| r.starts_with(&format!("| `{k}` |")))).collect();
    assert!(missing.is_empty(), "docs/config.md does not list {missing:?}");
    assert_eq!(rows.len(), wanted.len(), "docs/config.md lists keys the reader does not accept: {rows:#?}");
}

// ---- several instances ----

/// Two instances in the list form (lines 1-20): `api` on the default interface with two addresses and a service,
/// `ingress` on eth1 with one address.
const TWO: &str = r#"interface = "eth0"
[[instance]]
name = "api"
[instance.vip]
addresses = ["10.0.0.250", "10.0.0.251"]
hostname = "api.example.com"
[instance.vrrp]
vrid = 51
priority = 150
[[instance.service]]
name = "kube-apiserver"
port = 443
backends = [ { address = "10.0.0.21", port = 6443 } ]
[[instance]]
name = "ingress"
interface = "eth1"
[instance.vip]
address = "10.1.0.250"
[instance.vrrp]
vrid = 52
priority = 100
"#;

#[test]
fn instances_are_read_in_order_with_their_own_tables() {
    let config = valid(TWO);
    assert_eq!(config.interface.as_deref(), Some("eth0"));
    assert_eq!(config.instances.len(), 2);
    let (api, ingress) = (&config.instances[0], &config.instances[1]);
    assert_eq!((api.name.as_str(), api.interface.as_str()), ("api", "eth0"), "the top-level interface is the default");
    assert_eq!(api.vip.addresses, [v4(10, 0, 0, 250), v4(10, 0, 0, 251)]);
    assert_eq!(api.vip.hostname.as_deref(), Some("api.example.com"));
    assert_eq!((api.vrrp.vrid, api.vrrp.priority, api.vrrp.advert_interval_ms), (51, 150, 1000));
    assert_eq!(api.services[0].name, "kube-apiserver");
    assert_eq!((ingress.name.as_str(), ingress.interface.as_str()), ("ingress", "eth1"));
    assert_eq!(ingress.vip.addresses, [v4(10, 1, 0, 250)]);
    assert!(ingress.services.is_empty());
    assert_eq!(config.interfaces(), ["eth0", "eth1"]);
    assert_eq!(config.service_count(), 1);
}

/// The example of the contract's "several instances" section, as written there.
#[test]
fn the_contracts_instance_example_is_valid() {
    let text = r#"
interface = "eth0"            # default interface for instances that do not name one
[[instance]]
name = "api"                  # unique; used in logs, status and metrics
# interface = "eth1"          # optional; defaults to the top-level interface
[instance.vip]
addresses = ["10.0.0.250", "10.0.0.251"]   # or `address = "..."`; all of them go in the advert's address list
hostname = "api.example.com"
[instance.vrrp]
vrid = 51
priority = 150                # ...and every other key of [vrrp]
[[instance.service]]
name = "kube-apiserver"       # ...and every other key of [[service]], with [instance.service.health]
port = 443
backends = [ { address = "10.0.0.21", port = 6443 } ]
"#;
    let config = valid(text);
    assert_eq!(config.instances[0].vip.addresses.len(), 2);
    assert_eq!(config.instances[0].services[0].backends[0].port, 6443);
}

#[test]
fn the_single_form_is_one_instance_named_default_and_takes_an_address_list_too() {
    let config = valid(BASE);
    assert_eq!(config.instances.len(), 1);
    assert_eq!(config.instances[0].name, "default");
    assert_eq!(config.instances[0].interface, "eth0");
    let list = valid(&BASE.replace("address = \"10.0.0.250\"", "addresses = [\"10.0.0.250\", \"10.0.0.251\"]"));
    assert_eq!(list.vip().addresses, [v4(10, 0, 0, 250), v4(10, 0, 0, 251)]);
}

/// A single-form file written as one `[[instance]]` named `default`: the same keys under the instance's tables.
fn as_instance(single: &str) -> String {
    let mut out = String::new();
    for line in single.lines() {
        let header = line.split('#').next().unwrap_or_default().trim();
        let renamed = match header {
            "[vip]" => "[[instance]]\nname = \"default\"\n[instance.vip]",
            "[vrrp]" => "[instance.vrrp]",
            "[[service]]" => "[[instance.service]]",
            "[service.health]" => "[instance.service.health]",
            _ => line,
        };
        out.push_str(renamed);
        out.push('\n');
    }
    out
}

#[test]
fn a_single_form_file_means_what_it_meant_one_instance_named_default() {
    // Files written before instances existed: the smallest one, one with every key, the shipped example (and its
    // variant with a CA file), one with several services. Each reads as exactly the instance form of the same keys,
    // and a reload from one form to the other changes nothing.
    let example = include_str!("../../../deploy/xvip.example.toml");
    let with_ca = example
        .replace("\ntls_verify = false", "\n# tls_verify = false")
        .replace("# ca_file = ", "ca_file = ")
        .replace("# server_name = ", "server_name = ");
    let several = format!(
        "{BASE}[[service]]\nname = \"a\"\nport = 80\nbackends = [ {{ address = \"10.0.0.21\" }} ]\n\
         [[service]]\nname = \"b\"\nport = 53\nprotocol = \"udp\"\nforwarding = \"dsr\"\n\
         backends = [ {{ address = \"10.0.0.22\" }} ]\n"
    );
    for (what, single) in [("minimal", BASE), ("every key", FULL_EXAMPLE), ("example", example), ("CA", &with_ca)]
        .into_iter()
        .chain([("several services", several.as_str())])
    {
        let old = valid(single);
        let instances = as_instance(single);
        assert!(instances.contains("[[instance]]") && !instances.contains("\n[vrrp]"), "{what}: {instances}");
        let new = valid(&instances);
        assert_eq!(old, new, "{what}");
        assert_eq!(old.only().name, DEFAULT_INSTANCE, "{what}");
        assert!(diff(&old, &new).is_ok_and(|p| p.is_empty()), "{what}");
    }
    // The values are the file's own (not defaults that happen to agree): the every-key file read in full.
    let full = valid(FULL_EXAMPLE);
    assert_eq!(full.vip().addresses, [v4(10, 10, 74, 250)]);
    assert_eq!((full.vrrp().vrid, full.vrrp().priority), (51, 150));
    assert_eq!(full.services()[0].backends[1].weight, 2);
}

#[test]
fn an_instance_without_an_interface_needs_a_top_level_one() {
    let text = TWO.replacen("interface = \"eth0\"\n", "", 1);
    assert_eq!(
        problem(&text),
        "xvip.toml:1:1: missing `interface` in instance[0], and there is no top-level `interface` to default to; \
         set one of them, like interface = \"eth0\""
    );
    // Every instance naming its own is enough; the first one's is then the node's default.
    let own = text.replacen("name = \"api\"\n", "name = \"api\"\ninterface = \"eth2\"\n", 1);
    let config = valid(&own);
    assert_eq!(config.interface, None);
    assert_eq!(config.default_interface(), "eth2");
    assert_eq!(config.interfaces(), ["eth2", "eth1"]);
}

#[test]
fn the_single_form_and_instances_do_not_mix() {
    let text = format!("[vrrp]\nvrid = 9\npriority = 1\n{}", TWO.replace("interface = \"eth0\"\n", ""));
    let text = format!("interface = \"eth0\"\n{text}");
    assert_eq!(
        problem(&text),
        "xvip.toml:2:2: `vrrp` cannot be at the top level of a file with [[instance]] tables: a file uses either the \
         single form ([vip], [vrrp], [[service]]) or [[instance]]; move it into an instance"
    );
}

#[test]
fn instance_must_be_an_array_of_tables_and_not_empty() {
    assert_eq!(
        problem("interface = \"eth0\"\ninstance = 3\n"),
        "xvip.toml:2:12: instance must be an array of tables: write each instance as [[instance]], got an integer 3"
    );
    assert_eq!(
        problem("interface = \"eth0\"\ninstance = []\n"),
        "xvip.toml:2:12: instance must list at least one instance, got an empty array"
    );
}

#[test]
fn instance_names_are_required_unique_and_plain() {
    assert_eq!(
        problem(&TWO.replace("name = \"ingress\"\n", "")),
        "xvip.toml:14:1: missing required key `name` in instance[1]; expected a unique name like name = \"api\""
    );
    assert_eq!(
        problem(&TWO.replace("\"ingress\"", "\"api\"")),
        "xvip.toml:15:8: instance[1].name \"api\" is already used by instance[0]; names must be unique"
    );
    assert_eq!(
        problem(&TWO.replace("\"ingress\"", "\"in gress/1\"")),
        "xvip.toml:15:8: instance[1].name must be 1..=64 letters, digits, '-', '_' or '.', like \"api\", got \
         \"in gress/1\""
    );
}

#[test]
fn a_vrid_is_used_once_per_interface() {
    let same_interface = TWO.replace("interface = \"eth1\"\n", "").replace("vrid = 52", "vrid = 51");
    assert_eq!(
        problem(&same_interface),
        "xvip.toml:19:8: instance[1].vrrp.vrid 51 is already used on eth0 by instance[0] (\"api\"); each instance on \
         an interface needs its own VRID (it names the VRRP group on the segment)"
    );
    // The same VRID on another interface is another segment's group.
    assert_eq!(valid(&TWO.replace("vrid = 52", "vrid = 51")).instances[1].vrrp.vrid, 51);
}

#[test]
fn an_address_belongs_to_one_instance() {
    assert_eq!(
        problem(&TWO.replace("address = \"10.1.0.250\"", "address = \"10.0.0.251\"")),
        "xvip.toml:18:11: instance[1].vip.address 10.0.0.251 is already an address of instance[0] (\"api\"); an \
         address belongs to one instance"
    );
    assert_eq!(
        problem(&TWO.replace("\"10.0.0.251\"]", "\"10.0.0.251\", \"10.0.0.250\"]")),
        "xvip.toml:5:42: instance[0].vip.addresses[2] repeats 10.0.0.250; each address must be listed once"
    );
}

#[test]
fn address_and_addresses_exclude_each_other_and_a_list_is_not_empty() {
    assert_eq!(
        problem(&TWO.replace("hostname = ", "address = \"10.0.0.9\"\nhostname = ")),
        "xvip.toml:5:1: instance[0].vip.address and instance[0].vip.addresses are both set; use address for one \
         address or addresses for several"
    );
    assert_eq!(
        problem(&TWO.replace("[\"10.0.0.250\", \"10.0.0.251\"]", "[]")),
        "xvip.toml:5:13: instance[0].vip.addresses must list at least one address, got an empty array"
    );
    assert_eq!(
        problem(&TWO.replace("address = \"10.1.0.250\"\n", "")),
        "xvip.toml:17:1: missing required key `address` in instance[1].vip; expected the virtual IPv4 or IPv6 address, like \
         address = \"10.0.0.250\" (or addresses = [...] for several)"
    );
}

#[test]
fn an_instance_may_mix_ipv4_and_ipv6_addresses() {
    let config = valid(&TWO.replace("\"10.0.0.251\"", "\"fd00::251\""));
    let api = &config.instances[0];
    assert_eq!(api.vip.ipv4(), [Ipv4Addr::new(10, 0, 0, 250)]);
    assert_eq!(api.vip.ipv6(), ["fd00::251".parse::<Ipv6Addr>().unwrap()]);
    // Its NAT service is forwarded for its IPv4 address.
    assert_eq!(api.services.len(), 1);
    // An IPv6-only instance without services.
    let config = valid(&TWO.replace("address = \"10.1.0.250\"", "address = \"2001:db8::250\""));
    assert!(config.instances[1].vip.ipv4().is_empty());
    assert_eq!(config.instances[1].vip.ipv6(), ["2001:db8::250".parse::<Ipv6Addr>().unwrap()]);
}

#[test]
fn ipv6_vips_that_name_no_host_are_refused() {
    for (written, why) in [
        ("fe80::1", "is the link-local address fe80::1; a VIP must be a global or unique-local IPv6 address"),
        ("ff02::1", "must be a unicast IPv6 address, got ff02::1 (a multicast address)"),
        ("::1", "must be a unicast IPv6 address, got ::1 (the loopback address)"),
        ("::", "must be a unicast IPv6 address, got :: (the unspecified address)"),
    ] {
        assert_eq!(
            problem(&TWO.replace("\"10.0.0.251\"", &format!("\"{written}\""))),
            format!("xvip.toml:5:28: instance[0].vip.addresses[1] {why}"),
        );
    }
}

#[test]
fn an_ipv6_only_instance_balances_to_ipv6_backends_by_dsr() {
    let text = TWO.replace("[\"10.0.0.250\", \"10.0.0.251\"]", "[\"fd00::250\"]").replace(
        "port = 443\nbackends = [ { address = \"10.0.0.21\", port = 6443 } ]",
        "port = 443\nforwarding = \"dsr\"\nbackends = [ { address = \"fd00::21\" }, { address = \"fd00::22\" } ]",
    );
    let config = valid(&text);
    let backends: Vec<IpAddr> = config.instances[0].services[0].backends.iter().map(|b| b.address).collect();
    assert_eq!(backends, ["fd00::21".parse::<IpAddr>().unwrap(), "fd00::22".parse().unwrap()]);
    assert_eq!(config.service_tables(), 1);
    // An IPv4 backend there would never get a packet.
    let v4 = text.replace("{ address = \"fd00::22\" }", "{ address = \"10.0.0.22\" }");
    assert_eq!(
        problem(&v4),
        "xvip.toml:14:52: instance[0].service[0].backends[1].address is an IPv4 address (10.0.0.22), but the instance \
         has no IPv4 address: a service's backends have the family of the VIP address they are reached through (an \
         IPv4 VIP is not balanced to IPv6 backends, nor the reverse)"
    );
    // NAT to IPv6 backends: the same family rules.
    let nat = text.replace("forwarding = \"dsr\"\n", "");
    let config = valid(&nat);
    assert_eq!(config.instances[0].services[0].forwarding, Forwarding::Nat);
    assert_eq!(config.instances[0].services[0].backends.len(), 2);
    assert_eq!(
        problem(&nat.replace("{ address = \"fd00::22\" }", "{ address = \"10.0.0.22\" }")),
        "xvip.toml:13:52: instance[0].service[0].backends[1].address is an IPv4 address (10.0.0.22), but the instance \
         has no IPv4 address: a service's backends have the family of the VIP address they are reached through (an \
         IPv4 VIP is not balanced to IPv6 backends, nor the reverse)"
    );
    let link_local = text.replace("fd00::22", "fe80::22");
    assert_eq!(
        problem(&link_local),
        "xvip.toml:14:52: instance[0].service[0].backends[1].address is a link-local address (fe80::22); a backend \
         needs a global or unique local IPv6 address"
    );
}

#[test]
fn the_ipv6_flow_table_is_sized_only_for_configs_with_ipv6_addresses() {
    let text = format!("conntrack_entries = 200000\n{BASE}");
    assert_eq!(valid(&text).conntrack6_entries(), 1024);
    let dual = text.replace("address = \"10.0.0.250\"", "addresses = [\"10.0.0.250\", \"fd00::250\"]");
    assert_eq!(valid(&dual).conntrack6_entries(), 200_000);
}

#[test]
fn a_dual_stack_dsr_service_needs_a_backend_of_each_family() {
    let text = TWO.replace("\"10.0.0.251\"", "\"fd00::251\"").replace(
        "port = 443\nbackends = [ { address = \"10.0.0.21\", port = 6443 } ]",
        "port = 443\nforwarding = \"dsr\"\nbackends = [ { address = \"10.0.0.21\" } ]",
    );
    assert_eq!(
        problem(&text),
        "xvip.toml:14:12: instance[0].service[0].backends has no IPv6 backend, but the instance has IPv6 addresses: a \
         service's backends have the family of the VIP address they are reached through, so list an IPv6 backend too \
         (or move the service to an instance without IPv6 addresses)"
    );
    let both = text.replace("{ address = \"10.0.0.21\" }", "{ address = \"10.0.0.21\" }, { address = \"fd00::21\" }");
    let config = valid(&both);
    assert_eq!(config.instances[0].services[0].backends.len(), 2);
    assert_eq!(config.service_tables(), 2, "one Maglev table per family");
    let only_v6 = text.replace("10.0.0.21", "fd00::21");
    assert!(problem(&only_v6).starts_with("xvip.toml:14:12: instance[0].service[0].backends has no IPv4 backend"));
    // A NAT service of a dual-stack instance may be forwarded over IPv4 only (its IPv6 VIP carries nothing for it),
    // or over both.
    let nat = TWO.replace("\"10.0.0.251\"", "\"fd00::251\"");
    valid(&nat);
    valid(&nat.replace(
        "{ address = \"10.0.0.21\", port = 6443 }",
        "{ address = \"10.0.0.21\", port = 6443 }, { address = \"fd00::21\", port = 6443 }",
    ));
}

#[test]
fn ipv6_source_address_and_unicast_peers_go_to_the_ipv6_router() {
    let text = TWO.replace("\"10.0.0.251\"", "\"fd00::251\"").replace(
        "vrid = 51\n",
        "vrid = 51\nsource_address = \"fd00::5\"\nunicast_peers = [\"10.0.0.6\", \"fd00::6\", \"fe80::7\"]\n",
    );
    let config = valid(&text);
    let v = &config.instances[0].vrrp;
    assert_eq!((v.source_address, v.source_address6), (None, Some("fd00::5".parse().unwrap())));
    assert_eq!(v.unicast_peers, [Ipv4Addr::new(10, 0, 0, 6)]);
    assert_eq!(v.unicast_peers6, ["fd00::6".parse::<Ipv6Addr>().unwrap(), "fe80::7".parse().unwrap()]);
    // The same rules as for IPv4: not our own source, not a VIP, each once.
    let own = text.replace("\"fd00::6\"", "\"fd00::5\"");
    assert!(problem(&own).contains("is fd00::5, this node's own source_address"), "{}", problem(&own));
    let vip = text.replace("\"fd00::6\"", "\"fd00::251\"");
    assert!(problem(&vip).contains("is the VIP fd00::251"), "{}", problem(&vip));
    let multicast = text.replace("\"fd00::6\"", "\"ff02::12\"");
    assert!(problem(&multicast).contains("(a multicast address)"), "{}", problem(&multicast));
}

#[test]
fn a_service_port_is_used_once_per_instance_and_may_repeat_across_instances() {
    let twice = TWO.replace(
        "port = 6443 } ]\n",
        "port = 6443 } ]\n[[instance.service]]\nname = \"other\"\nport = 443\nbackends = [ { address = \"10.0.0.22\" } ]\n",
    );
    assert_eq!(
        problem(&twice),
        "xvip.toml:16:8: instance[0].service[1].port 443/tcp is already used by instance[0].service[0]; each port \
         and protocol can belong to one service only on the instance's addresses"
    );
    let other_instance = format!(
        "{TWO}[[instance.service]]\nname = \"kube-apiserver\"\nport = 443\nbackends = [ {{ address = \"10.1.0.21\" }} ]\n"
    );
    let config = valid(&other_instance);
    assert_eq!(config.instances[1].services[0].port, 443, "another address, another listener");
    assert_eq!(config.service_count(), 2);
}

#[test]
fn no_backend_source_or_peer_is_another_instances_vip() {
    assert_eq!(
        problem(&TWO.replace("address = \"10.0.0.21\"", "address = \"10.1.0.250\"")),
        "xvip.toml:13:26: instance[0].service[0].backends[0].address is the VIP 10.1.0.250, an address of \
         instance[1] (\"ingress\"); a backend must be a real server's own address"
    );
    assert_eq!(
        problem(&TWO.replace("priority = 100\n", "priority = 100\nsource_address = \"10.0.0.251\"\n")),
        "xvip.toml:22:18: instance[1].vrrp.source_address must be this node's own address, not the VIP 10.0.0.251, \
         an address of instance[0] (\"api\") (adverts must come from an address the node keeps when it is backup)"
    );
    assert_eq!(
        problem(&TWO.replace("priority = 100\n", "priority = 100\nunicast_peers = [\"10.0.0.250\"]\n")),
        "xvip.toml:22:18: instance[1].vrrp.unicast_peers[0] is the VIP 10.0.0.250, an address of instance[0] \
         (\"api\"); list the other nodes' own addresses"
    );
}

#[test]
fn misplaced_keys_in_an_instance_name_their_table() {
    assert_eq!(
        problem(&TWO.replace("name = \"ingress\"\n", "name = \"ingress\"\npriority = 5\n")),
        "xvip.toml:16:1: unknown key `priority` in instance[1]; `priority` belongs in [instance.vrrp]"
    );
    assert_eq!(
        problem(&TWO.replace("vrid = 52", "vrid = 52\ngarp_cont = 2")),
        "xvip.toml:21:1: unknown key `garp_cont` in instance[1].vrrp; did you mean `garp_count`?"
    );
}

/// An instance `name` on eth0 with VRID `vrid` and these addresses.
fn instance_text(name: &str, vrid: u32, addresses: &[String]) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[instance]]\nname = \"{name}\"\n[instance.vip]\naddresses = [{}]\n[instance.vrrp]\nvrid = {vrid}\npriority = 100\n",
        list.join(", ")
    )
}

#[test]
fn at_most_128_instances() {
    let mut text = "interface = \"eth0\"\n".to_owned();
    for i in 0..129u32 {
        // VRIDs repeat past 255 on one interface; 129 instances stay below that.
        let text_i = instance_text(&format!("i{i}"), i + 1, &[format!("10.9.{}.{}", i / 200, i % 200 + 1)]);
        text.push_str(&text_i.replace("[[instance]]", if i < 128 { "[[instance]]" } else { "[[instance]] # 129" }));
    }
    // Each instance takes 7 lines; the 129th starts on line 2 + 128 * 7.
    assert_eq!(
        problem(&text),
        "xvip.toml:898:1: too many instances: at most 128 are supported (the data plane keeps an active flag per \
         instance and address family), this is number 129"
    );
}

#[test]
fn at_most_255_addresses_per_instance_and_1024_in_all() {
    let many: Vec<String> = (0..256).map(|i| format!("10.9.{}.{}", i / 200, i % 200 + 1)).collect();
    let text = format!("interface = \"eth0\"\n{}", instance_text("big", 1, &many));
    let found = problem(&text);
    assert!(
        found.starts_with("xvip.toml:5:")
            && found.ends_with(
                "instance[0].vip.addresses[255] is one address too many: an instance holds at most 255 (a VRRP advert \
             counts them in one byte)"
            ),
        "{found}"
    );
    let mut text = "interface = \"eth0\"\n".to_owned();
    for i in 0..5u32 {
        let addresses: Vec<String> = (0..205).map(|a| format!("10.{}.{}.{}", 100 + i, a / 200, a % 200 + 1)).collect();
        text.push_str(&instance_text(&format!("i{i}"), i + 1, &addresses));
    }
    let found = problem(&text);
    assert!(
        found.contains(
            "too many addresses: at most 1024 over all instances are supported (the size of the data plane's VIP \
             table), instance[4].vip.addresses[204] is number 1025"
        ),
        "{found}"
    );
}

#[test]
fn service_listeners_are_bounded_by_the_data_planes_table() {
    // 200 addresses x 82 services = 16400 (address, port) pairs, over the 16384 the data plane holds.
    let addresses: Vec<String> = (0..200).map(|a| format!("10.9.0.{}", a + 1)).collect();
    let mut text = format!("interface = \"eth0\"\n{}", instance_text("big", 1, &addresses));
    for port in 0..82 {
        text.push_str(&format!(
            "[[instance.service]]\nname = \"s{port}\"\nport = {}\nbackends = [{{ address = \"10.8.0.1\" }}]\n",
            port + 1
        ));
    }
    let found = problem(&text);
    assert!(
        found.contains(
            "too many service listeners: each service listens on every address of its instance, and the data plane \
             holds at most 16384 (address, port) pairs; instance[0].service[81] brings the total to 16400"
        ),
        "{found}"
    );
}

#[test]
fn diff_adds_removes_and_changes_instances_by_name() {
    let old = valid(TWO);
    let mut new = old.clone();
    new.instances.remove(1);
    let mut web = new.instances[0].clone();
    web.name = "web".into();
    web.vip.addresses = vec![v4(10, 0, 0, 240)];
    web.vrrp.vrid = 60;
    new.instances.push(web);
    new.instances[0].vrrp.priority = 120;
    let plan = diff(&old, &new).expect("a reload adds and removes instances");
    assert_eq!(plan.instances_added, ["web"]);
    assert_eq!(plan.instances_removed, ["ingress"]);
    assert_eq!(plan.changed("api").map(|p| p.vrrp_changed.clone()), Some(vec!["priority"]));
    assert_eq!(
        plan.to_string(),
        "instances added: web; instances removed: ingress; instance api: vrrp changed: priority"
    );
    // The top-level interface stays a restart; an instance moving to another interface is replaced.
    let mut moved = old.clone();
    moved.instances[1].interface = "eth2".into();
    assert_eq!(diff(&old, &moved).expect("replaced").instances_replaced, [("ingress".to_owned(), vec!["interface"])]);
}
