//! The node the frames arrive at, set up as a real one through the agent's own data-plane API: its namespace and
//! interfaces, its VIP and role, NAT and DSR services (one behind a second interface, one without a healthy
//! backend, two sharing a backend endpoint), and the events a real node sees while traffic flows (role changes,
//! backend health flaps, a reload that removes and re-adds a service, with backend slots reused at once).
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use lb_common::{FAMILY_IPV6, FORWARD_DSR, FORWARD_NAT, MAX_BACKENDS, PROTO_TCP, PROTO_UDP, group_seed, router_slot};
use xvip::dataplane::{BackendSpec, DataPlane, LoadOptions, ServiceSpec, Vip6Spec};

use crate::traffic::Rng;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
/// The node's IPv6 VIP (the instance's IPv6 router, active and backup with the IPv4 one): the address the traffic
/// generator's IPv6 frames are for.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x250);
const ROUTER6: u32 = router_slot(0, FAMILY_IPV6);
pub const VRID: u8 = 51;
/// The node's own address on the VIP's interface, and on the second interface.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const NODE_IP2: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The MAC of the second interface: frames to the far backends leave from there, with it as their source.
pub const FAR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// Another node of the VRRP group.
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The default gateway: clients off the subnet arrive with its MAC.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The subnets of the node's interfaces, for their broadcast addresses.
pub const SUBNETS: [(Ipv4Addr, u8); 2] = [(Ipv4Addr::new(10, 77, 0, 0), 24), (Ipv4Addr::new(10, 78, 0, 0), 24)];
/// Backends on the VIP's subnet.
pub const BACKENDS: [(Ipv4Addr, [u8; 6]); 3] = [
    (Ipv4Addr::new(10, 77, 0, 21), [0x02, 0, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(10, 77, 0, 22), [0x02, 0, 0, 0, 0, 0x22]),
    (Ipv4Addr::new(10, 77, 0, 23), [0x02, 0, 0, 0, 0, 0x23]),
];
/// Backends behind the second interface (frames to them are redirected).
pub const FAR_BACKENDS: [(Ipv4Addr, [u8; 6]); 2] = [
    (Ipv4Addr::new(10, 78, 0, 31), [0x02, 0, 0, 0, 0, 0x31]),
    (Ipv4Addr::new(10, 78, 0, 32), [0x02, 0, 0, 0, 0, 0x32]),
];
/// Service ports on the VIP by kind: web 80, remote 8443 (far backends), dead 9000 (no healthy backend), alt 8080
/// (shares a backend endpoint with web).
pub const NAT_TCP_PORTS: [u16; 4] = [80, 8443, 9000, 8080];
pub const NAT_UDP_PORTS: [u16; 1] = [53];
pub const DSR_TCP_PORTS: [u16; 1] = [443];
pub const DSR_UDP_PORTS: [u16; 1] = [514];
/// IPv6 backends of the IPv6 VIP's DSR services (TCP 80 and UDP 53, the ports the IPv6 traffic goes to).
pub const BACKENDS6: [(Ipv6Addr, [u8; 6]); 2] = [
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x21), [0x02, 0x06, 0, 0, 0, 0x21]),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x22), [0x02, 0x06, 0, 0, 0, 0x22]),
];
/// (protocol, port) of the IPv6 VIP's services.
pub const SERVICES6: [(u8, u16); 2] = [(PROTO_TCP, 80), (PROTO_UDP, 53)];
/// The IPv6 VIP's NAT services over the same backends: (protocol, service port, backend port).
pub const NAT6: [(u8, u16, u16); 2] = [(PROTO_TCP, 8080, 8081), (PROTO_UDP, 5300, 5301)];
/// The on-link IPv6 client the traffic generator's IPv6 frames come from, and the node's IPv6 address.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// The MAC of a backend address (zero for an address that is none).
pub fn backend_mac(address: Ipv4Addr) -> [u8; 6] {
    BACKENDS.iter().chain(&FAR_BACKENDS).find(|(a, _)| *a == address).map(|(_, m)| *m).unwrap_or_default()
}

/// One configured service, as the agent would hand it to the data plane.
struct Service {
    name: &'static str,
    port: u16,
    protocol: u8,
    forwarding: u8,
    /// (address, port, healthy, far side)
    backends: Vec<(Ipv4Addr, u16, bool, bool)>,
}

pub struct Node {
    pub dp: DataPlane,
    pub active: bool,
    services: Vec<Service>,
    far_ifindex: u32,
}

fn services() -> Vec<Service> {
    let near = |port: u16| BACKENDS.iter().map(|(a, _)| (*a, port, true, false)).collect::<Vec<_>>();
    vec![
        Service { name: "web", port: 80, protocol: PROTO_TCP, forwarding: FORWARD_NAT, backends: near(8080) },
        Service { name: "dns", port: 53, protocol: PROTO_UDP, forwarding: FORWARD_NAT, backends: near(5353) },
        Service { name: "api", port: 443, protocol: PROTO_TCP, forwarding: FORWARD_DSR, backends: near(443) },
        Service { name: "syslog", port: 514, protocol: PROTO_UDP, forwarding: FORWARD_DSR, backends: near(514) },
        Service {
            name: "remote",
            port: 8443,
            protocol: PROTO_TCP,
            forwarding: FORWARD_NAT,
            backends: FAR_BACKENDS.iter().map(|(a, _)| (*a, 8443, true, true)).collect(),
        },
        Service {
            name: "dead",
            port: 9000,
            protocol: PROTO_TCP,
            forwarding: FORWARD_NAT,
            backends: vec![(BACKENDS[0].0, 9000, false, false)],
        },
        Service {
            name: "alt",
            port: 8080,
            protocol: PROTO_TCP,
            forwarding: FORWARD_NAT,
            backends: vec![(BACKENDS[0].0, 8080, true, false)],
        },
    ]
}

/// Backend slots left free once every service is installed. A reload frees a service's slots and takes the oldest
/// free ones again, so with only this many spare, a reload puts backends into slots that other backends (of the
/// same service or another) held a moment ago, while flows are still pinned to them: the case for which a flow
/// records its backend's address and port, not only the slot. A real agent reuses a slot only after every other
/// slot was used since, which a long-lived node reaches too.
const SPARE_SLOTS: usize = 2;

/// A service whose backends fill every backend slot but [`SPARE_SLOTS`] (none healthy: it never gets traffic).
fn filler(used: usize) -> ServiceSpec {
    let count = MAX_BACKENDS as usize - used - SPARE_SLOTS;
    ServiceSpec {
        addresses: vec![VIP.into()],
        port: 9999,
        protocol: PROTO_UDP,
        forwarding: FORWARD_DSR,
        backends: (0..count)
            .map(|i| BackendSpec {
                address: Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8).into(),
                port: 9999,
                weight: 1,
                healthy: false,
                mac: Some([0x02, 0x99, 0, 0, (i >> 8) as u8, i as u8]),
                ifindex: 0,
            })
            .collect(),
    }
}

impl Node {
    /// A freshly started node (empty connection and NAT tables), active, with every service installed and all but
    /// [`SPARE_SLOTS`] backend slots in use.
    pub fn start(options: LoadOptions, far_ifindex: u32) -> Result<Self> {
        let mut dp = DataPlane::load(LoadOptions { service_capacity: 12, ..options })
            .context("loading the XDP program (needs root)")?;
        dp.set_node(VIP, NODE_MAC, group_seed(VIP.octets(), VRID))?;
        dp.set_vips6(&[Vip6Spec { address: VIP6, router: ROUTER6, hash_seed: 0, interface: None }])?;
        dp.set_active(true)?;
        dp.set_router_active(ROUTER6, true)?;
        let mut node = Node { dp, active: true, services: services(), far_ifindex };
        for i in 0..node.services.len() {
            node.apply(i)?;
        }
        for (protocol, port) in SERVICES6 {
            let spec = ServiceSpec {
                addresses: vec![VIP6.into()],
                port,
                protocol,
                forwarding: FORWARD_DSR,
                backends: BACKENDS6
                    .iter()
                    .map(|(address, mac)| BackendSpec {
                        address: (*address).into(),
                        port,
                        weight: 1,
                        healthy: true,
                        mac: Some(*mac),
                        ifindex: 0,
                    })
                    .collect(),
            };
            let name = if protocol == PROTO_TCP { "web6" } else { "dns6" };
            node.dp.apply_service(name, &spec).with_context(|| format!("installing service {name}"))?;
        }
        for (protocol, port, backend_port) in NAT6 {
            let spec = ServiceSpec {
                addresses: vec![VIP6.into()],
                port,
                protocol,
                forwarding: FORWARD_NAT,
                backends: BACKENDS6
                    .iter()
                    .map(|(address, mac)| BackendSpec {
                        address: (*address).into(),
                        port: backend_port,
                        weight: 1,
                        healthy: true,
                        mac: Some(*mac),
                        ifindex: 0,
                    })
                    .collect(),
            };
            let name = if protocol == PROTO_TCP { "web6nat" } else { "dns6nat" };
            node.dp.apply_service(name, &spec).with_context(|| format!("installing service {name}"))?;
        }
        let used = node.services.iter().map(|s| s.backends.len()).sum::<usize>()
            + (SERVICES6.len() + NAT6.len()) * BACKENDS6.len();
        node.dp.apply_service("filler", &filler(used)).context("installing the filler service")?;
        Ok(node)
    }

    fn apply(&mut self, i: usize) -> Result<()> {
        let s = &self.services[i];
        let spec = ServiceSpec {
            addresses: vec![VIP.into()],
            port: s.port,
            protocol: s.protocol,
            forwarding: s.forwarding,
            backends: s
                .backends
                .iter()
                .map(|&(address, port, healthy, far)| BackendSpec {
                    address: address.into(),
                    port,
                    weight: 1,
                    healthy,
                    mac: Some(backend_mac(address)),
                    ifindex: if far { self.far_ifindex } else { 0 },
                })
                .collect(),
        };
        self.dp.apply_service(s.name, &spec).with_context(|| format!("installing service {}", s.name))
    }

    pub fn set_active(&mut self, active: bool) -> Result<()> {
        self.active = active;
        self.dp.set_active(active)?;
        Ok(self.dp.set_router_active(ROUTER6, active)?)
    }

    /// A health check changes its mind about one backend of one service (not `dead`, which stays dead).
    pub fn flap(&mut self, rng: &mut Rng) -> Result<()> {
        let i = rng.below(self.services.len() as u64) as usize;
        if self.services[i].name == "dead" {
            return Ok(());
        }
        let b = rng.below(self.services[i].backends.len() as u64) as usize;
        let healthy = &mut self.services[i].backends[b].2;
        *healthy = !*healthy;
        self.apply(i)
    }

    /// A reload that drops a service and brings it back (its port is unserved in between), its backends listed in
    /// another order now and then (they take free slots in the order listed).
    pub fn reload(&mut self, rng: &mut Rng) -> Result<()> {
        let i = rng.below(self.services.len() as u64) as usize;
        let name = self.services[i].name;
        self.dp.remove_service(name).with_context(|| format!("removing service {name}"))?;
        if rng.one_in(2) {
            self.services[i].backends.rotate_left(1);
        }
        self.apply(i)
    }
}

/// Load options of the epochs: the defaults, and short NAT timeouts so that aged and closed translations get taken
/// over by other flows while traffic runs.
pub fn load_options(epoch: u64) -> LoadOptions {
    let base = LoadOptions { conntrack_entries: 262_144, ..LoadOptions::default() };
    if epoch.is_multiple_of(2) {
        base
    } else {
        LoadOptions { nat_udp_timeout: Duration::from_millis(2), nat_closed_grace: Duration::from_millis(2), ..base }
    }
}

/// The node's interfaces in its namespace: where frames arrive (the VIP's interface) and where the far backends
/// are.
#[derive(Clone, Copy)]
pub struct Interfaces {
    pub near: u32,
    pub far: u32,
}

/// Moves this thread into a network namespace of its own and builds the node's network there: the VIP's
/// interface with the node's address, a second interface towards the far backends, a default route, IPv4
/// forwarding on (as on a Kubernetes node; the FIB answers the program's route lookups only then), and permanent
/// neighbour entries for the router, the backends and the on-link clients. Nothing is sent: the frames only go
/// through BPF_PROG_TEST_RUN, as if received on the VIP's interface, but a program that looks up routes or
/// neighbours finds a real node's. The namespace and its interfaces go away with the thread.
pub fn enter_namespace() -> Result<Interfaces> {
    // SAFETY: unshare only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {} (needs root)", std::io::Error::last_os_error());
    }
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut commands = vec![
        "link set lo up".to_string(),
        "link add xvf0 type veth peer name xvf0p".to_string(),
        "link add xvf1 type veth peer name xvf1p".to_string(),
        format!("link set xvf0 address {}", mac(NODE_MAC)),
        format!("link set xvf1 address {}", mac(FAR_MAC)),
        format!("addr add {NODE_IP}/24 dev xvf0"),
        format!("addr add {NODE_IP2}/24 dev xvf1"),
    ];
    for dev in ["xvf0", "xvf0p", "xvf1", "xvf1p"] {
        commands.push(format!("link set {dev} up"));
    }
    commands.push(format!("route add default via {ROUTER}"));
    let mut near: Vec<(Ipv4Addr, [u8; 6])> = BACKENDS.to_vec();
    near.push((ROUTER, ROUTER_MAC));
    near.push((PEER, PEER_MAC));
    near.extend((10..20).map(|i| (Ipv4Addr::new(10, 77, 0, i), [0x02, 0, 0, 0, 0, i])));
    for (address, m) in near {
        commands.push(format!("neigh replace {address} lladdr {} dev xvf0 nud permanent", mac(m)));
    }
    for (address, m) in FAR_BACKENDS {
        commands.push(format!("neigh replace {address} lladdr {} dev xvf1 nud permanent", mac(m)));
    }
    for args in &commands {
        let out = Command::new("ip").args(args.split_whitespace()).output().context("running ip")?;
        if !out.status.success() {
            bail!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    for iface in ["all", "xvf0", "xvf1"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), "1")
            .with_context(|| format!("enabling IPv4 forwarding on {iface}"))?;
    }
    // IPv6 on the VIP's interface too, for the FIB lookups of IPv6 NAT replies (to the on-link client).
    let ipv6 = [
        format!("addr add {NODE_IP6}/64 dev xvf0 nodad"),
        format!("neigh replace {CLIENT6} lladdr 02:00:00:00:00:10 dev xvf0 nud permanent"),
    ];
    for args in &ipv6 {
        let out = Command::new("ip").args(args.split_whitespace()).output().context("running ip")?;
        if !out.status.success() {
            bail!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    for iface in ["all", "xvf0"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"), "1")
            .with_context(|| format!("enabling IPv6 forwarding on {iface}"))?;
    }
    let index = |name: &str| -> Result<u32> {
        let c = std::ffi::CString::new(name).context("interface name")?;
        // SAFETY: a valid C string; the lookup happens in this thread's namespace.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            bail!("{name} has no index: {}", std::io::Error::last_os_error());
        }
        Ok(index)
    };
    Ok(Interfaces { near: index("xvf0")?, far: index("xvf1")? })
}
