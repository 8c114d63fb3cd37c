//! `xvip-bench xdp`: what each path of the XDP program costs per packet, measured by the kernel with
//! BPF_PROG_TEST_RUN, next to the do-nothing `xvip_pass` program measured the same way in the same run.
//!
//! Two figures per path:
//! - **warm**: one BPF_PROG_TEST_RUN call runs the program `--repeat` times over the same frame; the kernel
//!   reports the mean time per run. The kernel does *not* restore the frame between repetitions, so this only
//!   exists for paths whose output takes the same path again (DSR forwarding only rewrites MACs); the benchmark
//!   checks that the path's own counter grew by exactly the repeat count.
//! - **cold**: `--shots` calls with `repeat = 1`, each on a fresh copy of the frame (ARP and echo replies turn the
//!   request into a reply, which a second run would hand to the kernel); the trimmed mean of the per-call times.
//!   It includes one clock read per call, which the single-shot baseline includes too.
//!
//! Adding a path (the NAT ones, for instance) is one entry in [`paths`].
//!
//! `--compare OBJ` loads a second eBPF object (a copy of an earlier `cargo xtask build-ebpf` output) next to this
//! build's, prepares every path on both, measures them alternately within each round (which goes first alternates
//! too) and prints per path both medians and the median of the rounds' differences: a before/after in one run, on
//! the same machine state. BENCHMARKS.md is then left alone.
//!
//! A second table isolates what `xvip trace`'s hook costs ([`trace_cost`]): a few of the paths on a second copy
//! of the program whose hook the verifier pruned at load, next to the program as it runs (hook in place, switch
//! off), then with tracing on for frames that do not match and for frames over the rate limit.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use lb_common::{
    FORWARD_DSR, FORWARD_NAT, PROTO_TCP, Reason, TRACE_IPV4, TraceConfig, group_seed, names, trace_halves4,
};
use serde_json::{Value, json};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec};

use crate::Options;
use crate::frames::{self, TCP_ACK, TCP_PSH, TCP_SYN};
use crate::report::{self, Section, Table, jnum, num};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Share of the runs of a fresh-flow path that may end in another verdict: with the NAT table full of live flows
/// a new flow can find all its port candidates taken (`drop_nat_no_port`); that is counted and reported.
const FRESH_TOLERATED: f64 = 0.1;

/// What the trace hook may cost while off, above the same path without it.
const TRACE_OFF_TARGET_NS: f64 = 5.0;
/// The paths [`trace_cost`] measures (names in [`paths`]): the shortest, a drop at the VIP, a forwarded packet;
/// the last two over IPv6.
const TRACE_PATHS: [&str; 5] = [
    "frame to another address -> kernel",
    "TCP to the VIP, port without a service -> dropped (one SERVICES miss)",
    "DSR, pinned flow (ACK: flow cache hit)",
    "IPv6 TCP to the VIP, port without a service -> dropped (one SERVICES6 miss)",
    "IPv6 DSR, pinned flow (ACK: flow cache hit)",
];

/// The default target: a path within 50 ns of the baseline. The NAT paths have their own (see `paths`).
const TARGET_NS: f64 = 50.0;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
const VRID: u8 = 51;
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const BACKENDS: [(Ipv4Addr, [u8; 6]); 3] = [
    (Ipv4Addr::new(10, 77, 0, 21), [0x02, 0, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(10, 77, 0, 22), [0x02, 0, 0, 0, 0, 0x22]),
    (Ipv4Addr::new(10, 77, 0, 23), [0x02, 0, 0, 0, 0, 0x23]),
];
/// A request's worth of payload on data segments.
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";
/// What a backend answers.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
/// Services the measured paths install: web, api, local, web6, api6.
const SERVICE_CAPACITY: u32 = 5;
/// The NAT service: VIP:8443 to port 8080 of the backends.
const NAT_PORT: u16 = 8443;
const NAT_BACKEND_PORT: u16 = 8080;
/// A NAT service whose one backend is the node itself: VIP:8444 to its port 8080.
const LOCAL_NAT_PORT: u16 = 8444;

/// Where a path's frames come from.
#[derive(Clone, Copy)]
enum Frames {
    /// The same frame every time.
    Same(fn() -> Vec<u8>),
    /// The same frame every time, made after `prepare` from the data plane's state (a reply to a translated flow).
    FromState(fn(&mut DataPlane) -> Result<Vec<u8>>),
    /// Frame `i` of a sequence (a new flow per packet); always measured single-shot.
    Fresh(fn(u32) -> Vec<u8>),
}

/// One row of the table.
#[derive(Clone, Copy)]
struct PathSpec {
    name: &'static str,
    frames: Frames,
    /// Runs once before the path is measured (install a service, open the flow a packet belongs to, ...).
    prepare: fn(&mut DataPlane) -> Result<()>,
    /// The verdict and the counter every run must end in.
    action: u32,
    reason: Reason,
    /// Target: ns above the baseline.
    target: f64,
}

fn nothing(_: &mut DataPlane) -> Result<()> {
    Ok(())
}

thread_local! {
    /// The ingress interface every frame is run on (see [`enter_netns`]).
    static LAN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn lan() -> Option<u32> {
    Some(LAN.with(|l| l.get())).filter(|i| *i != 0)
}

/// Every measured path: a new one is one more entry here.
fn paths() -> Vec<PathSpec> {
    vec![
        PathSpec {
            name: "ARP request for the VIP -> reply",
            frames: Frames::Same(|| frames::arp_request(CLIENT_MAC, CLIENT, VIP)),
            prepare: nothing,
            action: XDP_TX,
            reason: Reason::ArpReply,
            target: TARGET_NS,
        },
        PathSpec {
            name: "ICMP echo to the VIP -> echo reply",
            frames: Frames::Same(|| {
                let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV4);
                f.extend(frames::ipv4(CLIENT, VIP, 1, &frames::icmp_echo(8, 0x1234, 1, &[0x5a; 56])));
                f
            }),
            prepare: nothing,
            action: XDP_TX,
            reason: Reason::EchoReply,
            target: TARGET_NS,
        },
        PathSpec {
            name: "IPv6 Neighbor Solicitation for the VIP -> advertisement",
            frames: Frames::Same(neighbor_solicitation),
            prepare: ipv6_vip,
            action: XDP_TX,
            reason: Reason::NaReply,
            target: TARGET_NS,
        },
        PathSpec {
            name: "DSR, new flow (SYN: Maglev pick + conntrack update of one flow)",
            frames: Frames::Same(|| client_tcp(40000, TCP_SYN, b"")),
            prepare: dsr_web,
            action: XDP_TX,
            reason: Reason::ForwardTx,
            target: f64::NAN,
        },
        PathSpec {
            name: "DSR, new flow (SYN, a new 5-tuple every packet: conntrack insert)",
            frames: Frames::Fresh(|i| {
                let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 78, 0, 0)) + i / 50_000);
                let sport = 1024 + (i % 50_000) as u16;
                frames::tcp_frame(NODE_MAC, CLIENT_MAC, client, VIP, sport, 80, TCP_SYN, b"")
            }),
            prepare: dsr_web,
            action: XDP_TX,
            reason: Reason::ForwardTx,
            target: f64::NAN,
        },
        PathSpec {
            name: "DSR, pinned flow (ACK: flow cache hit)",
            frames: Frames::Same(|| client_tcp(40001, TCP_ACK | TCP_PSH, PAYLOAD)),
            prepare: |dp| {
                dsr_web(dp)?;
                open_flow(dp, &client_tcp(40001, TCP_SYN, b""))
            },
            action: XDP_TX,
            reason: Reason::ForwardTx,
            target: TARGET_NS,
        },
        PathSpec {
            name: "NAT, new flow (SYN: Maglev pick, NAT port claim, conntrack + NAT entries rewritten in place, rewrite)",
            frames: Frames::Same(|| client_tcp_to(41000, NAT_PORT, TCP_SYN, b"")),
            prepare: nat_api,
            action: XDP_TX,
            reason: Reason::NatForwardTx,
            target: 250.0,
        },
        PathSpec {
            name: "NAT, new flow (SYN, a new 5-tuple every packet: conntrack + NAT inserts)",
            frames: Frames::Fresh(|i| {
                let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 79, 0, 0)) + i / 50_000);
                let sport = 1024 + (i % 50_000) as u16;
                frames::tcp_frame(NODE_MAC, CLIENT_MAC, client, VIP, sport, NAT_PORT, TCP_SYN, b"")
            }),
            prepare: nat_api,
            action: XDP_TX,
            reason: Reason::NatForwardTx,
            target: f64::NAN,
        },
        PathSpec {
            name: "NAT, established flow (ACK: flow cache hit, rewrite)",
            frames: Frames::Same(|| client_tcp_to(41001, NAT_PORT, TCP_ACK | TCP_PSH, PAYLOAD)),
            prepare: |dp| {
                nat_api(dp)?;
                open_flow(dp, &client_tcp_to(41001, NAT_PORT, TCP_SYN, b""))
            },
            action: XDP_TX,
            reason: Reason::NatForwardTx,
            target: 100.0,
        },
        PathSpec {
            name: "NAT, established flow to a backend on this node (ACK: flow cache hit, rewrite, XDP_PASS)",
            frames: Frames::Same(|| client_tcp_to(41003, LOCAL_NAT_PORT, TCP_ACK | TCP_PSH, PAYLOAD)),
            prepare: |dp| {
                nat_local(dp)?;
                let out =
                    dp.test_run_with(names::PROGRAM, &client_tcp_to(41003, LOCAL_NAT_PORT, TCP_SYN, b""), 1, lan())?;
                if out.action != XDP_PASS {
                    bail!("opening the flow: verdict {} instead of XDP_PASS", out.action);
                }
                Ok(())
            },
            action: XDP_PASS,
            reason: Reason::NatForwardLocal,
            target: 100.0,
        },
        PathSpec {
            name: "NAT, reply from the backend (NAT lookup, cached FIB route, rewrite back to the client)",
            frames: Frames::FromState(|dp| {
                let syn = dp.test_run_with(names::PROGRAM, &client_tcp_to(41002, NAT_PORT, TCP_SYN, b""), 1, lan())?;
                if syn.action != XDP_TX {
                    bail!("opening the flow: verdict {} instead of XDP_TX", syn.action);
                }
                Ok(reply_to(&syn.frame))
            }),
            prepare: nat_api,
            action: XDP_TX,
            reason: Reason::NatReplyTx,
            target: 100.0,
        },
        PathSpec {
            name: "TCP to the VIP, port without a service -> dropped (one SERVICES miss)",
            frames: Frames::Same(|| {
                frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, 40004, 9999, TCP_ACK | TCP_PSH, PAYLOAD)
            }),
            prepare: dsr_web,
            action: XDP_DROP,
            reason: Reason::DropNoService,
            target: TARGET_NS,
        },
        PathSpec {
            name: "frame to another address -> kernel",
            frames: Frames::Same(|| {
                frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, OTHER, 40002, 80, TCP_ACK | TCP_PSH, PAYLOAD)
            }),
            prepare: nothing,
            action: XDP_PASS,
            reason: Reason::PassNotVip,
            target: TARGET_NS,
        },
    ]
}

/// The IPv6 counterparts of the DSR, NAT and no-service rows, each with its IPv4 row's target (after the IPv4 rows).
fn ipv6_paths() -> Vec<PathSpec> {
    vec![
        PathSpec {
            name: "IPv6 DSR, new flow (SYN: Maglev pick + conntrack update of one flow)",
            frames: Frames::Same(|| client_tcp6(40000, 80, TCP_SYN, b"")),
            prepare: dsr_web6,
            action: XDP_TX,
            reason: Reason::ForwardTx,
            target: f64::NAN,
        },
        PathSpec {
            name: "IPv6 DSR, pinned flow (ACK: flow cache hit)",
            frames: Frames::Same(|| client_tcp6(40001, 80, TCP_ACK | TCP_PSH, PAYLOAD)),
            prepare: |dp| {
                dsr_web6(dp)?;
                open_flow(dp, &client_tcp6(40001, 80, TCP_SYN, b""))
            },
            action: XDP_TX,
            reason: Reason::ForwardTx,
            target: TARGET_NS,
        },
        PathSpec {
            name: "IPv6 NAT, new flow (SYN: Maglev pick, NAT port claim, conntrack + NAT entries rewritten in place, rewrite)",
            frames: Frames::Same(|| client_tcp6(41000, NAT_PORT, TCP_SYN, b"")),
            prepare: nat_api6,
            action: XDP_TX,
            reason: Reason::NatForwardTx,
            target: 250.0,
        },
        PathSpec {
            name: "IPv6 NAT, established flow (ACK: flow cache hit, rewrite)",
            frames: Frames::Same(|| client_tcp6(41001, NAT_PORT, TCP_ACK | TCP_PSH, PAYLOAD)),
            prepare: |dp| {
                nat_api6(dp)?;
                open_flow(dp, &client_tcp6(41001, NAT_PORT, TCP_SYN, b""))
            },
            action: XDP_TX,
            reason: Reason::NatForwardTx,
            target: 100.0,
        },
        PathSpec {
            name: "IPv6 NAT, reply from the backend (NAT lookup, cached FIB route, rewrite back to the client)",
            frames: Frames::FromState(|dp| {
                let syn = dp.test_run_with(names::PROGRAM, &client_tcp6(41002, NAT_PORT, TCP_SYN, b""), 1, lan())?;
                if syn.action != XDP_TX {
                    bail!("opening the flow: verdict {} instead of XDP_TX", syn.action);
                }
                Ok(reply_to6(&syn.frame))
            }),
            prepare: nat_api6,
            action: XDP_TX,
            reason: Reason::NatReplyTx,
            target: 100.0,
        },
        PathSpec {
            name: "IPv6 TCP to the VIP, port without a service -> dropped (one SERVICES6 miss)",
            frames: Frames::Same(|| client_tcp6(40004, 9999, TCP_ACK | TCP_PSH, PAYLOAD)),
            prepare: dsr_web6,
            action: XDP_DROP,
            reason: Reason::DropNoService,
            target: TARGET_NS,
        },
    ]
}

/// The IPv6 client of the IPv6 rows.
const CLIENT6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);

/// A TCP segment from [`CLIENT6`] to [`VIP6`].
fn client_tcp6(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frames::eth(NODE_MAC, CLIENT_MAC, frames::ETH_IPV6);
    f.extend(frames::ipv6(CLIENT6, VIP6, 6, 64, &frames::tcp6(CLIENT6, VIP6, sport, dport, flags, payload)));
    f
}

/// [`VIP6`] (its router active) with a DSR service on port 80 over three IPv6 backends.
fn dsr_web6(dp: &mut DataPlane) -> Result<()> {
    ipv6_vip(dp)?;
    Ok(dp.apply_service("web6", &service6(80, 80))?)
}

/// [`VIP6`] (its router active) with a NAT service on port 8443 to port 8080 of the same IPv6 backends.
fn nat_api6(dp: &mut DataPlane) -> Result<()> {
    ipv6_vip(dp)?;
    let spec = ServiceSpec { forwarding: FORWARD_NAT, ..service6(NAT_PORT, NAT_BACKEND_PORT) };
    Ok(dp.apply_service("api6", &spec)?)
}

/// A TCP service on [`VIP6`] over [`BACKENDS6`] (DSR; the caller changes what differs).
fn service6(port: u16, backend_port: u16) -> ServiceSpec {
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
    ServiceSpec { addresses: vec![VIP6.into()], backends, ..service(port, backend_port) }
}

/// The IPv6 backends (on-link, with permanent neighbour entries in the benchmark's namespace).
const BACKENDS6: [(std::net::Ipv6Addr, [u8; 6]); 3] = [
    (std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x21), [0x02, 0, 0, 0, 0, 0x31]),
    (std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x22), [0x02, 0, 0, 0, 0, 0x32]),
    (std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x23), [0x02, 0, 0, 0, 0, 0x33]),
];

/// The IPv6 backend's answer to `translated` (`[VIP6]:nport -> [backend]:bport`, as the IPv6 NAT path sent it).
fn reply_to6(translated: &[u8]) -> Vec<u8> {
    let mut backend_mac = [0u8; 6];
    backend_mac.copy_from_slice(&translated[0..6]);
    let mut backend = [0u8; 16];
    backend.copy_from_slice(&translated[38..54]);
    let backend = std::net::Ipv6Addr::from(backend);
    let nat_port = u16::from_be_bytes([translated[54], translated[55]]);
    let backend_port = u16::from_be_bytes([translated[56], translated[57]]);
    let mut f = frames::eth(NODE_MAC, backend_mac, frames::ETH_IPV6);
    let tcp = frames::tcp6(backend, VIP6, backend_port, nat_port, TCP_ACK | TCP_PSH, RESPONSE);
    f.extend(frames::ipv6(backend, VIP6, 6, 64, &tcp));
    f
}

fn client_tcp(sport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    client_tcp_to(sport, 80, flags, payload)
}

fn client_tcp_to(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    frames::tcp_frame(NODE_MAC, CLIENT_MAC, CLIENT, VIP, sport, dport, flags, payload)
}

/// The backend's answer to `translated` (a client packet as the NAT path sent it: `VIP:nport -> backend:bport`).
fn reply_to(translated: &[u8]) -> Vec<u8> {
    let mut backend_mac = [0u8; 6];
    backend_mac.copy_from_slice(&translated[0..6]);
    let backend = Ipv4Addr::new(translated[30], translated[31], translated[32], translated[33]);
    let nat_port = u16::from_be_bytes([translated[34], translated[35]]);
    let backend_port = u16::from_be_bytes([translated[36], translated[37]]);
    frames::tcp_frame(NODE_MAC, backend_mac, backend, VIP, backend_port, nat_port, TCP_ACK | TCP_PSH, RESPONSE)
}

/// The IPv6 VIP of the Neighbor Solicitation row, its router (the instance's IPv6 one) active.
const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x250);

fn ipv6_vip(dp: &mut DataPlane) -> Result<()> {
    let router = lb_common::router_slot(0, lb_common::FAMILY_IPV6);
    dp.set_vips6(&[xvip::dataplane::Vip6Spec { address: VIP6, router, hash_seed: 0, interface: None }])?;
    Ok(dp.set_router_active(router, true)?)
}

/// A solicitation for [`VIP6`] to its solicited-node group, with the client's MAC as source link-layer address.
fn neighbor_solicitation() -> Vec<u8> {
    let client = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x10);
    let (group, group_mac) = frames::solicited_node(VIP6);
    let ns = frames::icmp6(client, group, frames::neighbor_solicitation(VIP6, Some(CLIENT_MAC)));
    let mut f = frames::eth(group_mac, CLIENT_MAC, frames::ETH_IPV6);
    f.extend(frames::ipv6(client, group, 58, 255, &ns));
    f
}

/// A DSR service on port 80 over three backends, as in lb-user/tests/xdp.rs.
fn dsr_web(dp: &mut DataPlane) -> Result<()> {
    Ok(dp.apply_service("web", &service(80, 80))?)
}

/// A TCP service over the three backends (DSR; the caller changes what differs).
fn service(port: u16, backend_port: u16) -> ServiceSpec {
    let backends = BACKENDS
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
    ServiceSpec { addresses: vec![VIP.into()], port, protocol: PROTO_TCP, forwarding: FORWARD_DSR, backends }
}

/// A NAT service on port 8443 to port 8080 of the same three backends.
fn nat_api(dp: &mut DataPlane) -> Result<()> {
    Ok(dp.apply_service("api", &ServiceSpec { forwarding: FORWARD_NAT, ..service(NAT_PORT, NAT_BACKEND_PORT) })?)
}

/// A NAT service on port 8444 to port 8080 of a backend on the node itself (`lan`'s address, 10.77.0.1).
fn nat_local(dp: &mut DataPlane) -> Result<()> {
    let backends = vec![BackendSpec {
        address: Ipv4Addr::new(10, 77, 0, 1).into(),
        port: NAT_BACKEND_PORT,
        weight: 1,
        healthy: true,
        mac: Some(NODE_MAC),
        ifindex: 0,
    }];
    let spec = ServiceSpec { forwarding: FORWARD_NAT, backends, ..service(LOCAL_NAT_PORT, NAT_BACKEND_PORT) };
    Ok(dp.apply_service("local", &spec)?)
}

/// Sends the first packet of a flow once, so the measured packets find it in the connection table.
fn open_flow(dp: &mut DataPlane, syn: &[u8]) -> Result<()> {
    let out = dp.test_run_with(names::PROGRAM, syn, 1, lan())?;
    if out.action != XDP_TX {
        bail!("opening the flow: verdict {} instead of XDP_TX", out.action);
    }
    Ok(())
}

/// A path ready to measure.
struct Prepared {
    spec: PathSpec,
    /// Whether every repetition of one BPF_PROG_TEST_RUN call takes the path (see the module docs).
    repeatable: bool,
    /// `shots` frames for the single-shot measurement.
    frames: Vec<Vec<u8>>,
    /// ns per packet, one per round.
    warm: Vec<f64>,
    cold: Vec<f64>,
    /// Cold runs in all, and those that ended in another verdict (a fresh flow may find no free NAT port).
    runs: u64,
    other_verdicts: u64,
    error: Option<String>,
}

impl Prepared {
    /// The figure the target is judged on: warm where it exists, else cold; and the matching baseline.
    fn judged(&self, base_warm: f64, base_cold: f64) -> (f64, f64) {
        if self.repeatable { (report::median(&self.warm), base_warm) } else { (report::median(&self.cold), base_cold) }
    }
}

/// Runs the benchmark on a thread of its own in a private network namespace (see [`enter_netns`]).
pub fn run(options: &Options) -> Result<Section> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let lan = enter_netns()?;
                measure(options, lan)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the xdp benchmark thread panicked"))?
    })
}

/// Moves the calling thread into a new network namespace (gone with the thread) holding a pretend node: `lan`, a
/// veth with the node's MAC, 10.77.0.1/24 and 2001:db8:77::1/64, IPv4 and IPv6 forwarding on, and permanent
/// neighbour entries for the clients and the backends. Returns the index of `lan`, on which every frame is run.
fn enter_netns() -> Result<u32> {
    // SAFETY: plain syscall; it only affects the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut script = vec![
        "link set lo up".to_string(),
        format!("link add lan address {} type veth peer name lan-peer", mac(NODE_MAC)),
        "link set lan-peer up".into(),
        "link set lan up".into(),
        "addr add 10.77.0.1/24 dev lan".into(),
        format!("neigh replace {CLIENT} lladdr {} dev lan nud permanent", mac(CLIENT_MAC)),
        // The fresh-flow rows' clients (10.78.0.0/15) sit behind a router.
        format!("neigh replace 10.77.0.254 lladdr {} dev lan nud permanent", mac(CLIENT_MAC)),
        "route add 10.78.0.0/15 via 10.77.0.254".into(),
    ];
    for (address, m) in BACKENDS {
        script.push(format!("neigh replace {address} lladdr {} dev lan nud permanent", mac(m)));
    }
    // IPv6 (the IPv6 NAT rows' reply route): the node's address, the client and the IPv6 backends on-link.
    script.push("addr add 2001:db8:77::1/64 dev lan nodad".into());
    script.push(format!("neigh replace {CLIENT6} lladdr {} dev lan nud permanent", mac(CLIENT_MAC)));
    for (address, m) in BACKENDS6 {
        script.push(format!("neigh replace {address} lladdr {} dev lan nud permanent", mac(m)));
    }
    for line in script {
        let status = std::process::Command::new("ip").args(line.split(' ')).status().context("running ip")?;
        if !status.success() {
            bail!("ip {line} failed");
        }
    }
    for (family, iface) in [("ipv4", "all"), ("ipv4", "lan"), ("ipv6", "all"), ("ipv6", "lan")] {
        std::fs::write(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"), "1")
            .with_context(|| format!("enabling {family} forwarding on {iface}"))?;
    }
    // SAFETY: a NUL-terminated literal; the lookup happens in this thread's namespace.
    let index = unsafe { libc::if_nametoindex(c"lan".as_ptr()) };
    if index == 0 {
        bail!("no interface lan in the benchmark's namespace");
    }
    Ok(index)
}

fn measure(options: &Options, lan: u32) -> Result<Section> {
    LAN.with(|l| l.set(lan));
    let rounds = options.rounds.unwrap_or(5);
    // Loaded inside the benchmark's namespace: the data plane reads the node's addresses there.
    let mut dp = DataPlane::load(LoadOptions { service_capacity: SERVICE_CAPACITY, ..LoadOptions::default() })
        .context("loading the XDP program (needs root)")?;
    dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID))?;
    dp.set_active(true)?;

    let mut prepared: Vec<Prepared> = paths()
        .into_iter()
        .chain(ipv6_paths())
        .filter(|spec| spec.name.contains(&options.paths))
        .map(|spec| prepare(&mut dp, spec, options))
        .collect();
    for p in &prepared {
        match &p.error {
            None if p.repeatable => eprintln!("[bench] xdp: {}: warm (repeat) and cold (single)", p.spec.name),
            None => eprintln!("[bench] xdp: {}: cold (single) only", p.spec.name),
            Some(e) => eprintln!("[bench] xdp: {}: skipped: {e}", p.spec.name),
        }
    }
    // `--compare`: the earlier object, its paths prepared the same way, measured alternately with this build.
    let mut compared = match &options.compare {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let object: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let mut other = DataPlane::load(LoadOptions {
                service_capacity: SERVICE_CAPACITY,
                object: Some(object),
                ..LoadOptions::default()
            })
            .with_context(|| format!("loading {}", path.display()))?;
            other.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID))?;
            other.set_active(true)?;
            let theirs: Vec<Prepared> = prepared.iter().map(|p| prepare(&mut other, p.spec, options)).collect();
            Some((other, theirs))
        }
        None => None,
    };
    let baseline_frame = client_tcp(40003, TCP_ACK | TCP_PSH, PAYLOAD);
    let baseline_frames = vec![baseline_frame.clone(); options.shots];
    let mut base_warm = Vec::new();
    let mut base_cold = Vec::new();
    for round in 0..rounds {
        eprintln!("[bench] xdp: round {}/{rounds}", round + 1);
        // Baselines at the start and the end of each round, averaged, so drift within a round hits both sides.
        let w1 = repeat_ns(&mut dp, names::PASS_PROGRAM, &baseline_frame, options.repeat, None)?;
        let (c1, _) = single_ns(&mut dp, names::PASS_PROGRAM, &baseline_frames, XDP_PASS, 0.0)?;
        for (i, p) in prepared.iter_mut().enumerate() {
            match compared.as_mut() {
                // Alternately first, so drift within a round hits both objects alike.
                Some((other, theirs)) if round % 2 == 0 => {
                    measure_path(other, &mut theirs[i], round, options);
                    measure_path(&mut dp, p, round, options);
                }
                Some((other, theirs)) => {
                    measure_path(&mut dp, p, round, options);
                    measure_path(other, &mut theirs[i], round, options);
                }
                None => measure_path(&mut dp, p, round, options),
            }
        }
        let w2 = repeat_ns(&mut dp, names::PASS_PROGRAM, &baseline_frame, options.repeat, None)?;
        let (c2, _) = single_ns(&mut dp, names::PASS_PROGRAM, &baseline_frames, XDP_PASS, 0.0)?;
        base_warm.push((w1 + w2) / 2.0);
        base_cold.push((c1 + c2) / 2.0);
    }
    let (bw, bc) = (report::median(&base_warm), report::median(&base_cold));
    if let (Some((_, theirs)), Some(path)) = (&compared, &options.compare) {
        println!("{}", comparison(path, &prepared, theirs));
    }
    let (trace_table, trace_json) = trace_cost(options, rounds, &mut dp)?;

    let mut table = Table::new(&[
        "path",
        "verdict",
        "warm: ns/packet (above baseline)",
        "cold: ns/packet (above baseline)",
        "target: ns above baseline",
    ]);
    table.row(vec![
        "baseline: `xvip_pass` (returns XDP_PASS)".into(),
        "PASS".into(),
        format!("{} (0)", num(bw, 1)),
        format!("{} (0)", num(bc, 1)),
        String::new(),
    ]);
    let mut rows_json = Vec::new();
    for p in &prepared {
        let verdict = match p.spec.action {
            XDP_TX => "TX",
            XDP_DROP => "DROP",
            _ => "PASS",
        };
        let (warm, cold) = (report::median(&p.warm), report::median(&p.cold));
        let (judged, base) = p.judged(bw, bc);
        let meets = p.error.is_none() && judged - base < p.spec.target;
        let cell = |ns: f64, base: f64| {
            if ns.is_nan() { "n/a".to_string() } else { format!("{} ({})", num(ns, 1), num(ns - base, 1)) }
        };
        match &p.error {
            Some(e) => {
                table.row(vec![p.spec.name.into(), verdict.into(), "n/a".into(), "n/a".into(), format!("n/a: {e}")])
            }
            None => table.row(vec![
                p.spec.name.into(),
                verdict.into(),
                cell(warm, bw),
                if p.other_verdicts == 0 {
                    cell(cold, bc)
                } else {
                    format!(
                        "{}; {:.2} % of runs ended otherwise",
                        cell(cold, bc),
                        100.0 * p.other_verdicts as f64 / p.runs as f64
                    )
                },
                if p.spec.target.is_nan() {
                    String::new()
                } else {
                    format!(
                        "< {}: {} ({})",
                        p.spec.target,
                        report::verdict(meets),
                        if p.repeatable { "warm" } else { "cold" }
                    )
                },
            ]),
        }
        rows_json.push(json!({
            "path": p.spec.name,
            "verdict": verdict,
            "reason": p.spec.reason.name(),
            "warm_ns": jnum(warm),
            "warm_above_baseline_ns": jnum(warm - bw),
            "cold_ns": jnum(cold),
            "cold_above_baseline_ns": jnum(cold - bc),
            "judged_on": if p.repeatable { "warm" } else { "cold" },
            "target_above_baseline_ns": jnum(p.spec.target),
            "meets_target": meets,
            "warm_samples_ns": p.warm,
            "cold_samples_ns": p.cold,
            "cold_runs": p.runs,
            "cold_runs_other_verdict": p.other_verdicts,
            "error": p.error,
        }));
    }

    let body = format!(
        "{}\n\
         - **warm**: one BPF_PROG_TEST_RUN call of {} repetitions over the same frame; the kernel's mean per run, \
         in whole ns. Caches and the branch predictor are warm, as under a steady flood. Only for paths whose \
         output frame takes the same path again (checked: the path's counter must grow by the repeat count); ARP \
         and echo replies turn the request into a reply, so they have no warm figure.\n\
         - **cold**: {} calls of one run each, on a fresh copy of the frame; trimmed mean (10 %) of the kernel's \
         per-call time, which includes one clock read. Every call enters the kernel afresh (syscall, frame copy), \
         so caches and branch predictors are colder than under a flood: a pessimistic figure.\n\
         - The baselines hold the kernel's own per-run overhead (softirq disable/enable around each run, the \
         loop, and in cold mode the clock read), which every path pays too: \"above baseline\" is the program's \
         own work.\n\
         - Each figure is the median of {rounds} rounds; both baselines are measured at the start and the end of \
         every round. A target (cost above the baseline) is judged on the warm figure where there is one, else on \
         the cold one.\n\
         - The program runs in a private network namespace of the benchmark with a pretend node interface (`lan`, \
         forwarding on, permanent neighbour entries), so the FIB lookups (new flows, reply routes) find a route.\n\
         - The repeated-SYN row re-inserts the same connection-table key every packet (an LRU update: allocate, \
         link, free the old element); the fresh-SYN row inserts a new key every packet ({} new flows per round \
         into a 65536-entry LRU, so it evicts as well).\n\
         - Runs that end in another verdict are counted (shown in the cell) and left out of the time. For fresh \
         NAT flows these are `drop_nat_no_port`: once the NAT table (an LRU) is full of live flows, a new flow may \
         find all of its port candidates towards its backend taken.\n\
         - NAT paths rewrite addresses and ports, so a repeated run would see a different packet: they only have \
         a cold figure, and are judged on it.\n\
         - The IPv6 rows (the last ones) send TCP from an IPv6 client to an IPv6 VIP of the same instance, whose \
         DSR service on port 80 and NAT service on port 8443 (to port 8080) balance over three IPv6 backends: the \
         IPv4 rows' paths over IPv6, each with its IPv4 row's target. IPv6 NAT runs in its own program (a tail \
         call), except for an established flow's packets that the flow cache serves (as IPv4's, before the tail \
         call).\n\
         - For scale: line rate at 64-byte frames is 67.2 ns/packet at 10G, 26.9 ns at 25G.\n\n\
         **The `xvip trace` hook** (warm, ns/packet; in brackets the difference to the same path with the hook \
         pruned, the median of the rounds' differences):\n\n{}\n\
         - *pruned*: a second copy of the program loaded with `TRACE_HOOK = 0`, a load-time constant that lets the \
         verifier remove the hook (translated program: {} bytes, against {} with the hook); it cannot trace.\n\
         - *off*: the program as it runs (every row above): the hook in place, the switch off. Target: less than \
         {TRACE_OFF_TARGET_NS} ns above pruned.\n\
         - *on, not matching*: tracing on with a client filter these frames miss (another client traces).\n\
         - *on, over the rate limit*: tracing on for these frames at 1 record per second: all but the first are \
         counted as suppressed. Frames not addressed to a VIP are never traced, so their row only adds the header \
         copy.\n\
         - In each round the two copies run alternately (pruned, off, off, pruned), so drift hits both.\n",
        table.markdown(),
        options.repeat,
        options.shots,
        options.shots,
        trace_table,
        trace_json["translated_bytes_pruned"],
        trace_json["translated_bytes_with_hook"],
    );
    let json = json!({
        "rounds": rounds,
        "repeat": options.repeat,
        "shots": options.shots,
        "baseline_warm_ns": jnum(bw),
        "baseline_cold_ns": jnum(bc),
        "baseline_warm_samples_ns": base_warm,
        "baseline_cold_samples_ns": base_cold,
        "paths": Value::Array(rows_json),
        "trace_hook": trace_json,
    });
    Ok(Section::new("xdp", "XDP data path: ns per packet (BPF_PROG_TEST_RUN)", body, json))
}

/// The trace hook's cost on [`TRACE_PATHS`] (see the module docs): the table and its JSON.
fn trace_cost(options: &Options, rounds: usize, dp: &mut DataPlane) -> Result<(String, Value)> {
    let mut pruned = DataPlane::load(LoadOptions { service_capacity: 3, trace_hook: false, ..LoadOptions::default() })
        .context("loading the XDP program without its trace hook")?;
    pruned.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID))?;
    pruned.set_active(true)?;
    let sizes = (pruned.translated_size(names::PROGRAM)?, dp.translated_size(names::PROGRAM)?);
    let mut trace = dp.trace().context("the trace handle")?;
    let specs: Vec<PathSpec> =
        paths().into_iter().chain(ipv6_paths()).filter(|p| TRACE_PATHS.contains(&p.name)).collect();
    let mut frames = Vec::new();
    for spec in &specs {
        (spec.prepare)(&mut pruned)?;
        (spec.prepare)(dp)?;
        let Frames::Same(make) = spec.frames else { bail!("{}: the trace rows need a repeatable frame", spec.name) };
        frames.push(make());
    }
    // Filters: one these frames miss (another client), and one they match at 1 record per second.
    let elsewhere = TraceConfig {
        client: [trace_halves4([10, 99, 0, 0]).0, 0],
        client_mask: [trace_halves4([255, 255, 0, 0]).0, 0],
        family: TRACE_IPV4,
        interval_ns: 1_000_000_000 / 100,
        ..TraceConfig::default()
    };
    let limited = TraceConfig { interval_ns: 1_000_000_000, ..TraceConfig::default() };
    // Per path: pruned, off, on (not matching), on (over the limit), each one value per round.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; specs.len()];
    for round in 0..rounds {
        eprintln!("[bench] xdp: trace hook, round {}/{rounds}", round + 1);
        for (i, spec) in specs.iter().enumerate() {
            let frame = &frames[i];
            let a1 = repeat_ns(&mut pruned, names::PROGRAM, frame, options.repeat, Some(*spec))?;
            let b1 = repeat_ns(dp, names::PROGRAM, frame, options.repeat, Some(*spec))?;
            let b2 = repeat_ns(dp, names::PROGRAM, frame, options.repeat, Some(*spec))?;
            let a2 = repeat_ns(&mut pruned, names::PROGRAM, frame, options.repeat, Some(*spec))?;
            trace.set(Some(elsewhere))?;
            let c = repeat_ns(dp, names::PROGRAM, frame, options.repeat, Some(*spec))?;
            trace.set(Some(limited))?;
            let d = repeat_ns(dp, names::PROGRAM, frame, options.repeat, Some(*spec))?;
            trace.set(None)?;
            trace.read();
            let s = &mut samples[i];
            s[0].push((a1 + a2) / 2.0);
            s[1].push((b1 + b2) / 2.0);
            s[2].push(c);
            s[3].push(d);
        }
    }
    let counters = trace.counters()?;
    let mut table = Table::new(&[
        "path",
        "pruned",
        "off (above pruned)",
        "on, not matching (above pruned)",
        "on, over the rate limit (above pruned)",
        "off: target",
    ]);
    let mut rows = Vec::new();
    for (spec, s) in specs.iter().zip(&samples) {
        let above = |k: usize| report::median(&s[k].iter().zip(&s[0]).map(|(x, p)| x - p).collect::<Vec<_>>());
        let cell = |k: usize| format!("{} ({})", num(report::median(&s[k]), 1), num(above(k), 1));
        let meets = above(1) < TRACE_OFF_TARGET_NS;
        table.row(vec![
            spec.name.into(),
            num(report::median(&s[0]), 1),
            cell(1),
            cell(2),
            cell(3),
            format!("< {TRACE_OFF_TARGET_NS}: {}", report::verdict(meets)),
        ]);
        rows.push(json!({
            "path": spec.name,
            "pruned_ns": jnum(report::median(&s[0])),
            "off_ns": jnum(report::median(&s[1])),
            "off_above_pruned_ns": jnum(above(1)),
            "on_not_matching_ns": jnum(report::median(&s[2])),
            "on_not_matching_above_pruned_ns": jnum(above(2)),
            "on_over_limit_ns": jnum(report::median(&s[3])),
            "on_over_limit_above_pruned_ns": jnum(above(3)),
            "target_off_above_pruned_ns": TRACE_OFF_TARGET_NS,
            "meets_target": meets,
            "samples_ns": { "pruned": s[0], "off": s[1], "on_not_matching": s[2], "on_over_limit": s[3] },
        }));
    }
    let json = json!({
        "translated_bytes_pruned": sizes.0,
        "translated_bytes_with_hook": sizes.1,
        "records_emitted": counters.emitted,
        "records_suppressed": counters.suppressed,
        "paths": rows,
    });
    Ok((table.markdown(), json))
}

/// One round of path `p` on `dp`: warm (if the path repeats) and cold. A failure marks the path.
fn measure_path(dp: &mut DataPlane, p: &mut Prepared, round: usize, options: &Options) {
    if p.error.is_some() {
        return;
    }
    if let Frames::Fresh(make) = p.spec.frames {
        // New flows every round: the connection table must not hold them already.
        let first = (round * options.shots) as u32;
        p.frames = (first..first + options.shots as u32).map(make).collect();
    }
    let measured = (|| -> Result<()> {
        if p.repeatable {
            p.warm.push(repeat_ns(dp, names::PROGRAM, &p.frames[0], options.repeat, Some(p.spec))?);
        }
        let tolerated = if matches!(p.spec.frames, Frames::Fresh(_)) { FRESH_TOLERATED } else { 0.0 };
        let (ns, others) = single_ns(dp, names::PROGRAM, &p.frames, p.spec.action, tolerated)?;
        p.cold.push(ns);
        p.other_verdicts += others;
        p.runs += p.frames.len() as u64;
        Ok(())
    })();
    if let Err(e) = measured {
        p.error = Some(format!("{e:#}"));
    }
}

/// `--compare`: per path, the earlier object's figures, this build's, and the median of the rounds' differences
/// (this build minus the earlier one; both measured in the same rounds, alternately).
fn comparison(path: &std::path::Path, ours: &[Prepared], theirs: &[Prepared]) -> String {
    let mut table =
        Table::new(&["path", "warm: compared -> this build (difference)", "cold: compared -> this build (difference)"]);
    let cell = |a: &[f64], b: &[f64]| {
        if a.is_empty() || b.is_empty() {
            return "n/a".to_string();
        }
        let difference = report::median(&b.iter().zip(a).map(|(x, y)| x - y).collect::<Vec<_>>());
        format!("{} -> {} ({})", num(report::median(a), 1), num(report::median(b), 1), num(difference, 1))
    };
    for (o, t) in ours.iter().zip(theirs) {
        match (&o.error, &t.error) {
            (None, None) => table.row(vec![o.spec.name.into(), cell(&t.warm, &o.warm), cell(&t.cold, &o.cold)]),
            (e1, e2) => table.row(vec![o.spec.name.into(), format!("n/a: {e1:?} / {e2:?}"), String::new()]),
        }
    }
    format!("Compared with {} (ns per packet, medians of the rounds):\n\n{}", path.display(), table.markdown())
}

/// Runs the path's preparation, builds its frames and finds out whether it can be measured warm.
fn prepare(dp: &mut DataPlane, spec: PathSpec, options: &Options) -> Prepared {
    let mut p = Prepared {
        spec,
        repeatable: false,
        frames: Vec::new(),
        warm: Vec::new(),
        cold: Vec::new(),
        runs: 0,
        other_verdicts: 0,
        error: None,
    };
    let result = (|| -> Result<()> {
        (spec.prepare)(dp)?;
        let frame = match spec.frames {
            Frames::Same(make) => make(),
            Frames::FromState(make) => make(dp)?,
            Frames::Fresh(make) => {
                // A trial packet from a flow no round uses; the rounds make their own frames.
                return single_ns(dp, names::PROGRAM, &[make(u32::MAX)], spec.action, 0.0).map(drop);
            }
        };
        single_ns(dp, names::PROGRAM, std::slice::from_ref(&frame), spec.action, 0.0)?;
        p.repeatable = repeat_ns(dp, names::PROGRAM, &frame, 1000, Some(spec)).is_ok();
        p.frames = vec![frame; options.shots];
        Ok(())
    })();
    if let Err(e) = result {
        p.error = Some(format!("{e:#}"));
    }
    p
}

/// One call of `repeat` runs; ns per run. With `check`, the verdict and the counter must show that every run took
/// the path.
fn repeat_ns(dp: &mut DataPlane, program: &str, frame: &[u8], repeat: u32, check: Option<PathSpec>) -> Result<f64> {
    let before = match check {
        Some(spec) => dp.counters()?.reason(spec.reason),
        None => 0,
    };
    let out = dp.test_run_with(program, frame, repeat, lan())?;
    if let Some(spec) = check {
        let moved = dp.counters()?.reason(spec.reason) - before;
        if out.action != spec.action || moved != u64::from(repeat) {
            bail!(
                "{repeat} x {}: verdict {} (expected {}), counter {} moved by {moved} (expected {repeat})",
                spec.name,
                out.action,
                spec.action,
                spec.reason.name()
            );
        }
    }
    Ok(out.duration.as_nanos() as f64)
}

/// One call per frame with `repeat = 1`; the trimmed mean of the per-call times of the calls that ended in
/// `action`, and how many did not. More than `tolerated` (a share) of other verdicts is an error.
fn single_ns(dp: &mut DataPlane, program: &str, frames: &[Vec<u8>], action: u32, tolerated: f64) -> Result<(f64, u64)> {
    let mut samples = Vec::with_capacity(frames.len());
    let mut other: BTreeMap<u32, u64> = BTreeMap::new();
    for frame in frames {
        let out = dp.test_run_with(program, frame, 1, lan())?;
        if out.action == action {
            samples.push(out.duration.as_nanos() as f64);
        } else {
            *other.entry(out.action).or_default() += 1;
        }
    }
    let others: u64 = other.values().sum();
    if others as f64 > tolerated * frames.len() as f64 {
        bail!("{others} of {} runs ended in another verdict than {action}: {other:?} (verdict: runs)", frames.len());
    }
    Ok((report::trimmed_mean(&samples, 0.1), others))
}
