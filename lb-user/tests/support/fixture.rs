//! What the BPF_PROG_TEST_RUN fixtures share: the addresses of the pretend network and the run-and-check step.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::Ipv4Addr;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{FlowKey, FlowValue, MAGLEV_M, PROTO_TCP, Reason, flow_hash, group_seed, names};
use xvip::{
    dataplane::{BackendSpec, Counters, DataPlane, ServiceSpec},
    maglev,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
pub const VRID: u8 = 51;
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
pub const BACKENDS: [(Ipv4Addr, [u8; 6]); 3] = [
    (Ipv4Addr::new(10, 77, 0, 21), [0x02, 0, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(10, 77, 0, 22), [0x02, 0, 0, 0, 0, 0x22]),
    (Ipv4Addr::new(10, 77, 0, 23), [0x02, 0, 0, 0, 0, 0x23]),
];

pub const XDP_REDIRECT: u32 = 4;

/// Every backend of the pretend network, healthy, weight 1, its MAC known, serving on `port`.
pub fn backends(port: u16) -> Vec<BackendSpec> {
    BACKENDS
        .iter()
        .map(|(address, mac)| BackendSpec {
            address: (*address).into(),
            port,
            weight: 1,
            healthy: true,
            mac: Some(*mac),
            ifindex: 0,
        })
        .collect()
}

/// A service on the VIP's `port` over every backend's `backend_port`.
/// The backend (index into `spec.backends`) Maglev gives the TCP flow from `CLIENT`:`sport` to `spec`'s port on the
/// VIP: the pure table builder over the usable backends and the shared flow hash, what the data plane installs.
pub fn predicted_backend(spec: &ServiceSpec, sport: u16) -> usize {
    let members: Vec<maglev::MaglevBackend> = spec
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.usable())
        .map(|(i, b)| maglev::MaglevBackend { id: i as u32, key: format!("{}:{}", b.address, b.port), weight: 1 })
        .collect();
    let table = maglev::build(&members, MAGLEV_M).expect("maglev");
    let seed = group_seed(VIP.octets(), VRID);
    let h = flow_hash(CLIENT.octets(), sport.to_be_bytes(), spec.port.to_be_bytes(), PROTO_TCP, seed);
    table[(h % MAGLEV_M) as usize] as usize
}

/// Deletes `flow`'s connection-table entry behind the agent's back, as an LRU eviction would (the flow generation
/// is not bumped, so a CPU's flow cache may still serve it). Through a second handle on the map: the data plane
/// only lends it read-only.
pub fn evict(dp: &DataPlane, flow: &FlowKey) {
    let Some(Map::LruHashMap(data)) = dp.map(names::CONNTRACK) else { panic!("CONNTRACK is an LRU hash map") };
    let id = data.info().expect("CONNTRACK's info").id();
    let data = MapData::from_id(id).expect("a second handle on CONNTRACK");
    let mut table: BpfHashMap<MapData, FlowKey, FlowValue> =
        BpfHashMap::try_from(Map::LruHashMap(data)).expect("CONNTRACK as a hash map");
    table.remove(flow).expect("the flow's entry is there");
}

/// Whether less than half the flow cache's refresh age has passed since `start`: a cache entry written then is
/// still served (`lb-ebpf/src/flow_cache.rs`).
pub fn fresh_enough(start: std::time::Instant) -> bool {
    start.elapsed() < std::time::Duration::from_nanos(lb_common::FLOW_CACHE_REFRESH_NS / 2)
}

/// Runs `attempt` with successive client ports until it reports that its timing held (at most 20 tries, for a
/// slow machine).
pub fn with_a_quick_attempt(mut attempt: impl FnMut(u16) -> bool) {
    for sport in 42000..42020 {
        if attempt(sport) {
            return;
        }
    }
    panic!("every attempt took longer than the flow cache's refresh age");
}

/// Whether the connection table has an entry for `flow`.
pub fn conntrack_holds(dp: &DataPlane, flow: &FlowKey) -> bool {
    let table: BpfHashMap<&MapData, FlowKey, FlowValue> =
        BpfHashMap::try_from(dp.map(names::CONNTRACK).expect("CONNTRACK")).expect("CONNTRACK as a hash map");
    table.get(flow, 0).is_ok()
}

pub fn service(port: u16, protocol: u8, forwarding: u8, backend_port: u16) -> ServiceSpec {
    ServiceSpec { addresses: vec![VIP.into()], port, protocol, forwarding, backends: backends(backend_port) }
}

/// The node's own address on `lan`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// A router on `lan` with a route to `REMOTE_NET` behind it.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const REMOTE_NET: &str = "198.51.100.0/24";
/// The second interface of the pretend node (`wan`, 192.0.2.1/24) and its MAC.
pub const WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

thread_local! {
    /// Index of `lan` in this thread's private network namespace, once made.
    static LAN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Moves the calling thread (each test runs on its own) into a network namespace of its own, which disappears
/// with the thread, and builds the pretend node there: `lan` (a veth with `NODE_MAC`, 10.77.0.1/24,
/// IPv4 forwarding on) with permanent neighbour entries for the client, the backends and the router, a route to
/// `REMOTE_NET` via the router, and `wan` (192.0.2.1/24) with no neighbours. The program's FIB lookups
/// (`bpf_fib_lookup`) see exactly this. Returns the index of `lan`, on which frames are run.
pub fn lan() -> u32 {
    let current = LAN.with(|l| l.get());
    if current != 0 {
        return current;
    }
    // SAFETY: plain syscall; it only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {} (these tests need root)", std::io::Error::last_os_error());
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut script = vec![
        "link set lo up".to_string(),
        format!("link add lan address {} type veth peer name lan-peer", mac(NODE_MAC)),
        "link set lan-peer up".into(),
        "link set lan up".into(),
        format!("addr add {NODE_IP}/24 dev lan"),
        format!("link add wan address {} type veth peer name wan-peer", mac(WAN_MAC)),
        "link set wan-peer up".into(),
        "link set wan up".into(),
        "addr add 192.0.2.1/24 dev wan".into(),
        format!("neigh replace {CLIENT} lladdr {} dev lan nud permanent", mac(CLIENT_MAC)),
        format!("neigh replace {ROUTER} lladdr {} dev lan nud permanent", mac(ROUTER_MAC)),
        format!("route add {REMOTE_NET} via {ROUTER}"),
    ];
    for (address, m) in BACKENDS {
        script.push(format!("neigh replace {address} lladdr {} dev lan nud permanent", mac(m)));
    }
    // Other on-link clients (10.77.0.100 ..= 10.77.0.250) answer from the client's MAC.
    for host in 100..=250 {
        script.push(format!("neigh replace 10.77.0.{host} lladdr {} dev lan nud permanent", mac(CLIENT_MAC)));
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
    assert!(child.wait().expect("ip -batch").success(), "setting up the fixture namespace");
    for iface in ["all", "lan", "wan"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), "1").expect("enabling forwarding");
    }
    // SAFETY: a NUL-terminated literal; the lookup happens in this thread's namespace.
    let index = unsafe { libc::if_nametoindex(c"lan".as_ptr()) };
    assert_ne!(index, 0, "ifindex of lan");
    LAN.with(|l| l.set(index));
    index
}

/// Runs `ip ARGS` in this thread's fixture namespace (after [`lan`]).
pub fn ip(args: &str) {
    lan();
    let status = std::process::Command::new("ip").args(args.split(' ')).status().expect("running ip");
    assert!(status.success(), "ip {args}");
}

/// The index of an interface of this thread's fixture namespace.
pub fn ifindex(name: &str) -> u32 {
    lan();
    let name = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid NUL-terminated string; the lookup happens in this thread's namespace.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Runs the frame as received on `lan` and checks the verdict and that exactly one frame was counted, under
/// `reason`.
pub fn run(dp: &mut DataPlane, frame: &[u8], action: u32, reason: Reason) -> Vec<u8> {
    let ingress = lan();
    let before = dp.counters().expect("counters");
    let out = dp.test_run_on(frame, ingress).expect("test_run");
    let after = dp.counters().expect("counters");
    assert_eq!(out.action, action, "verdict for {reason:?}");
    assert_delta(&before, &after, reason);
    out.frame
}

/// Every counter moved by 0 except `reason`, which moved by 1.
pub fn assert_delta(before: &Counters, after: &Counters, reason: Reason) {
    for r in Reason::ALL {
        let delta = after.reason(r) - before.reason(r);
        let expected = u64::from(r == reason);
        assert_eq!(delta, expected, "counter {} moved by {delta}, expected {expected}", r.name());
    }
}
