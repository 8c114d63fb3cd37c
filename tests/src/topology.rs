//! The lab topology: one bridge namespace, a client, 2..=3 xvip nodes and some backends, each host with one veth
//! (`eth0`) plugged into the bridge `br0`.
//!
//! ```text
//!  client (.10)   node1 (.1)  node2 (.2) ...   backend1 (.21) backend2 (.22) ...
//!     eth0           eth0        eth0              eth0           eth0
//!      |              |           |                 |              |
//!     vc             vn1         vn2               vb1            vb2      <- bridge-side ends, xvip_pass attached
//!      +--------------+-----------+--- br0 --------+--------------+           (namespace xvl-<run>-br)
//! ```
//! Addresses come from 10.77.K.0/24 (K derived from the run id); the VIP is 10.77.K.250. MACs are
//! `02:77:K:00:00:<last octet of the IP>` on hosts and `02:77:K:ff:00:<octet>` on the bridge side, so captures
//! read easily.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::keepalived::{Keepalived, KeepalivedSpec};
use crate::netns::{self, Netns, RunId};
use crate::probe::{self, Probe, ProbeSpec, Tally};
use crate::process::ChildGuard;
use crate::xdp_pass::{self, PassStub};
use crate::{backend, cmd, reach};

/// The interface name inside every host namespace.
pub const IFACE: &str = "eth0";
/// The bridge inside the bridge namespace.
pub const BRIDGE: &str = "br0";
/// Prefix length of the lab subnet.
pub const PREFIX_LEN: u8 = 24;
/// Last octet of the VIP.
const VIP_OCTET: u8 = 250;
const CLIENT_OCTET: u8 = 10;
const FIRST_BACKEND_OCTET: u8 = 21;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut mac = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| anyhow!("MAC address {s:?} has fewer than 6 bytes"))?;
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            bail!("MAC address {s:?} has more than 6 bytes");
        }
        Ok(MacAddr(mac))
    }
}

/// What a host is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Node,
    Backend,
}

/// One namespace of the lab with its single interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub role: Role,
    /// Short name: `client`, `node1`, `backend2`. Lab backends answer `GET /` with it.
    pub name: String,
    /// The network namespace (`xvl-<run>-<name>`).
    pub ns: String,
    /// The interface inside `ns`: always [`IFACE`].
    pub iface: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The other end of the veth, a port of `br0` in the bridge namespace.
    pub bridge_port: String,
    pub bridge_port_mac: MacAddr,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// xvip nodes, 2..=3.
    pub nodes: usize,
    /// Backend hosts, 0..=9 (usually 3; 0 when the nodes are the only backends, as in a stacked control plane).
    pub backends: usize,
    /// DSR: every backend holds the VIP on `lo` (/32) and neither answers ARP for it nor uses it as an ARP
    /// source (`arp_ignore=1`, `arp_announce=2`).
    pub vip_on_backends_lo: bool,
    /// The `lab-backend` binary; `None` = [`backend::locate`], which finds the one cargo built next to a test or
    /// program of this package.
    pub backend_bin: Option<PathBuf>,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec { nodes: 2, backends: 3, vip_on_backends_lo: false, backend_bin: None }
    }
}

impl LabSpec {
    /// `nodes` xvip nodes and `backends` backend hosts for NAT services: the backends do not hold the VIP.
    #[must_use]
    pub fn nat(nodes: usize, backends: usize) -> Self {
        LabSpec { nodes, backends, ..LabSpec::default() }
    }

    /// `nodes` xvip nodes and `backends` backend hosts for DSR services: each backend holds the VIP on `lo`.
    #[must_use]
    pub fn dsr(nodes: usize, backends: usize) -> Self {
        LabSpec { nodes, backends, vip_on_backends_lo: true, ..LabSpec::default() }
    }
}

/// A running lab. Dropping it (also while unwinding from a panic) stops every lab-backend, detaches the XDP
/// stubs, kills whatever still runs inside its namespaces and deletes them.
///
/// Host accessors [`node`](Self::node) and [`backend`](Self::backend) count from 1, like the names (`node(1)`
/// is `node1`); the slices [`nodes`](Self::nodes) and [`backends`](Self::backends) are ordinary 0-based slices.
pub struct Lab {
    run: RunId,
    subnet: u8,
    vip: Ipv4Addr,
    client: Host,
    nodes: Vec<Host>,
    backends: Vec<Host>,
    bridge_ns: String,
    backend_bin: Option<PathBuf>,
    /// Running lab-backends by backend number (1-based).
    servers: Mutex<BTreeMap<usize, ChildGuard>>,
    pass: Option<PassStub>,
    /// Hosts first, bridge last.
    namespaces: Vec<Netns>,
    dir: PathBuf,
    spawned: AtomicU32,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("run", &self.run.to_string())
            .field("vip", &self.vip)
            .field("client", &self.client)
            .field("nodes", &self.nodes)
            .field("backends", &self.backends)
            .field("bridge_ns", &self.bridge_ns)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Builds the topology. Removes lab namespaces left behind by dead processes first (see
    /// [`netns::reap_stale`]).
    ///
    /// # Errors
    /// When the spec is out of range or any step fails; whatever was created is removed again.
    pub fn new(spec: LabSpec) -> Result<Lab> {
        if !(2..=3).contains(&spec.nodes) {
            bail!("LabSpec.nodes must be 2..=3, got {}", spec.nodes);
        }
        if spec.backends > 9 {
            bail!("LabSpec.backends must be 0..=9, got {}", spec.backends);
        }
        if let Err(e) = netns::reap_stale() {
            eprintln!("xvip-tests: looking for stale lab namespaces: {e:#}");
        }
        let run = RunId::next();
        let k = run.subnet_octet();
        let host = |role: Role, name: String, octet: u8, port: String| Host {
            role,
            ns: format!("{}{run}-{name}", netns::PREFIX),
            name,
            iface: IFACE.to_owned(),
            ip: Ipv4Addr::new(10, 77, k, octet),
            mac: MacAddr([0x02, 0x77, k, 0x00, 0x00, octet]),
            bridge_port: port,
            bridge_port_mac: MacAddr([0x02, 0x77, k, 0xff, 0x00, octet]),
        };
        let client = host(Role::Client, "client".into(), CLIENT_OCTET, "vc".into());
        let nodes: Vec<Host> =
            (1..=spec.nodes).map(|i| host(Role::Node, format!("node{i}"), i as u8, format!("vn{i}"))).collect();
        let backends: Vec<Host> = (1..=spec.backends)
            .map(|i| host(Role::Backend, format!("backend{i}"), FIRST_BACKEND_OCTET + i as u8 - 1, format!("vb{i}")))
            .collect();
        let dir = std::env::temp_dir().join(format!("{}{run}", netns::PREFIX));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            run,
            subnet: k,
            vip: Ipv4Addr::new(10, 77, k, VIP_OCTET),
            client,
            nodes,
            backends,
            bridge_ns: format!("{}{run}-br", netns::PREFIX),
            backend_bin: spec.backend_bin.clone(),
            servers: Mutex::new(BTreeMap::new()),
            pass: None,
            namespaces: Vec::new(),
            dir,
            spawned: AtomicU32::new(0),
        };
        // From here on an error drops `lab`, which removes what exists so far.
        lab.build(&spec)?;
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        let bridge = Netns::create(&self.bridge_ns)?;
        self.namespaces.push(bridge);
        disable_ipv6(&self.bridge_ns)?;
        cmd::ip_in(
            &self.bridge_ns,
            ["link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"],
        )
        .context("creating the bridge")?;
        cmd::ip_in(&self.bridge_ns, ["link", "set", BRIDGE, "up"])?;

        let hosts: Vec<Host> = self.hosts().cloned().collect();
        for host in &hosts {
            // Bridge namespace last in the list so it is deleted last.
            let ns = Netns::create(&host.ns)?;
            self.namespaces.insert(self.namespaces.len() - 1, ns);
            self.plug(host)?;
            if host.role != Role::Node {
                // Local senders put partial checksums on veth frames (TX offload); XDP rewrites on the node need
                // full ones to adjust incrementally.
                cmd::exec_in(&host.ns, ["ethtool", "-K", IFACE, "tx", "off"])
                    .with_context(|| format!("turning TX checksum offload off in {}", host.name))?;
            }
            if host.role == Role::Backend && spec.vip_on_backends_lo {
                self.hold_vip_on_lo(host)?;
            }
            if host.role == Role::Node {
                // Nodes route, like Kubernetes nodes: NAT replies are routed by the kernel's FIB, which answers
                // only for interfaces with forwarding on.
                self.make_router(host, None)?;
            }
        }
        let ports: Vec<String> = hosts.iter().map(|h| h.bridge_port.clone()).collect();
        self.pass = Some(xdp_pass::attach(&self.bridge_ns, &ports).context("attaching the XDP_PASS stubs")?);
        Ok(())
    }

    /// Creates the veth pair of `host` from inside the bridge namespace, with the host end moved straight into the
    /// host's namespace: nothing ever appears in the root namespace.
    fn plug(&self, host: &Host) -> Result<()> {
        let (port_mac, mac) = (host.bridge_port_mac.to_string(), host.mac.to_string());
        cmd::ip_in(
            &self.bridge_ns,
            [
                "link",
                "add",
                &host.bridge_port,
                "address",
                &port_mac,
                "type",
                "veth",
                "peer",
                "name",
                IFACE,
                "address",
                &mac,
                "netns",
                &host.ns,
            ],
        )
        .with_context(|| format!("creating the veth of {}", host.name))?;
        cmd::ip_in(&self.bridge_ns, ["link", "set", &host.bridge_port, "master", BRIDGE, "up"])?;
        disable_ipv6(&host.ns)?;
        let cidr = format!("{}/{PREFIX_LEN}", host.ip);
        cmd::ip_in(&host.ns, ["addr", "add", &cidr, "dev", IFACE])?;
        cmd::ip_in(&host.ns, ["link", "set", IFACE, "up"])?;
        Ok(())
    }

    fn hold_vip_on_lo(&self, host: &Host) -> Result<()> {
        let vip = format!("{}/32", self.vip);
        cmd::ip_in(&host.ns, ["addr", "add", &vip, "dev", "lo"])
            .with_context(|| format!("adding the VIP to lo of {}", host.name))?;
        // arp_ignore=1: answer ARP only for addresses on the receiving interface (not the VIP on lo).
        // arp_announce=2: never use the VIP as the source of our own ARP requests.
        for setting in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
            cmd::exec_in(&host.ns, ["sysctl", "-q", "-w", setting])
                .with_context(|| format!("setting {setting} in {}", host.name))?;
        }
        Ok(())
    }

    // ----- accessors -----

    /// The run id (`<pid>-<counter>`) in every namespace name.
    pub fn run_id(&self) -> String {
        self.run.to_string()
    }

    /// The lab subnet's network address (10.77.K.0) and prefix length.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 77, self.subnet, 0), PREFIX_LEN)
    }

    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }

    /// `VIP:port`.
    pub fn vip_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.vip, port))
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn nodes(&self) -> &[Host] {
        &self.nodes
    }

    pub fn backends(&self) -> &[Host] {
        &self.backends
    }

    /// `nodeN`, counted from 1.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node(&self, n: usize) -> &Host {
        n.checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .unwrap_or_else(|| panic!("no node{n} in a lab of {} nodes (numbered from 1)", self.nodes.len()))
    }

    /// `backendN`, counted from 1.
    ///
    /// # Panics
    /// When there is no such backend.
    pub fn backend(&self, n: usize) -> &Host {
        n.checked_sub(1)
            .and_then(|i| self.backends.get(i))
            .unwrap_or_else(|| panic!("no backend{n} in a lab of {} backends (numbered from 1)", self.backends.len()))
    }

    /// The client, the nodes, then the backends.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        std::iter::once(&self.client).chain(&self.nodes).chain(&self.backends)
    }

    /// The host called `name` (`client`, `node2`, ...).
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts().find(|h| h.name == name)
    }

    /// The namespace holding `br0`.
    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }

    /// Every namespace of this lab, the bridge's last.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.iter().map(|n| n.name().to_owned()).collect()
    }

    /// A scratch directory for this lab (logs, configs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ----- running things -----

    /// Runs a command inside `ns` to completion (`ip netns exec`); returns its stdout.
    ///
    /// # Errors
    /// When it cannot start or exits unsuccessfully; the error holds its stderr.
    pub fn exec<I, S>(&self, ns: &str, argv: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::exec_in(ns, argv)
    }

    /// Starts a process inside `ns`; it is stopped when the returned guard drops. Its output goes to a log file in
    /// [`dir`](Self::dir) (see [`ChildGuard::log`]). Keep the guard on the thread that called this (see
    /// [`ChildGuard`] about `PR_SET_PDEATHSIG`).
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn<I, S>(&self, ns: &str, argv: I) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<_> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let program = argv
            .first()
            .and_then(|p| Path::new(p).file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".into());
        ChildGuard::spawn(ns, &argv, &self.log_path(&program))
    }

    /// A fresh log path in the lab directory: `<stem>-<n>.log`.
    pub fn log_path(&self, stem: &str) -> PathBuf {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{stem}-{n}.log"))
    }

    /// Runs `f` on a thread inside `ns` (sockets it opens live in that namespace).
    ///
    /// # Errors
    /// When the namespace cannot be entered, or what `f` returns.
    pub fn in_netns<T: Send>(&self, ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        netns::in_netns(ns, f)
    }

    // ----- links -----

    /// Pulls the cable of `host`: its bridge-side veth goes down, so its `eth0` loses carrier.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn cut_link(&self, host: &Host) -> Result<()> {
        cmd::ip_in(&self.bridge_ns, ["link", "set", &host.bridge_port, "down"])
            .with_context(|| format!("cutting the link of {}", host.name))
            .map(drop)
    }

    /// Plugs the cable of `host` back in.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn restore_link(&self, host: &Host) -> Result<()> {
        cmd::ip_in(&self.bridge_ns, ["link", "set", &host.bridge_port, "up"])
            .with_context(|| format!("restoring the link of {}", host.name))
            .map(drop)
    }

    // ----- reachability -----

    /// One ping from `from` to `addr` (1 s timeout).
    ///
    /// # Errors
    /// When no echo reply arrives.
    pub fn ping(&self, from: &Host, addr: Ipv4Addr) -> Result<()> {
        reach::ping(&from.ns, addr)
    }

    /// The MACs that answer an ARP request for `target` sent from `from`'s `eth0` (500 ms window).
    ///
    /// # Errors
    /// When the probe cannot run.
    pub fn arp_probe(&self, from: &Host, target: Ipv4Addr) -> Result<Vec<MacAddr>> {
        reach::arp_probe(&from.ns, &from.iface, target, Duration::from_millis(500))
    }

    /// The MAC `from` currently has in its neighbour table for `addr` (who it would send to).
    ///
    /// # Errors
    /// When `ip neigh` fails.
    pub fn neighbour(&self, from: &Host, addr: Ipv4Addr) -> Result<Option<MacAddr>> {
        reach::neighbour(&from.ns, &from.iface, addr)
    }

    // ----- client measurements -----

    /// Starts a [`Probe`] from the client.
    ///
    /// # Errors
    /// As [`Probe::start`].
    pub fn probe(&self, spec: ProbeSpec) -> Result<Probe> {
        Probe::start(&self.client.ns, spec)
    }

    /// [`probe::request_many`] from the client (1 s timeout per request).
    ///
    /// # Errors
    /// As [`probe::request_many`].
    pub fn request_many(&self, target: SocketAddr, n: usize) -> Result<Tally> {
        probe::request_many(&self.client.ns, target, n, Duration::from_secs(1))
    }

    /// The host whose `eth0` has `mac`.
    pub fn host_by_mac(&self, mac: MacAddr) -> Option<&Host> {
        self.hosts().find(|h| h.mac == mac)
    }

    // ----- lab backends -----

    fn backend_binary(&self) -> Result<PathBuf> {
        match &self.backend_bin {
            Some(path) => Ok(path.clone()),
            None => backend::locate(),
        }
    }

    /// Starts `lab-backend` in `backendN` (from 1) listening on `ports`, and waits until it accepts connections.
    /// A running one is stopped first.
    ///
    /// # Errors
    /// When the binary is missing or does not come up within 5 s.
    pub fn start_backend(&self, n: usize, ports: &[u16]) -> Result<()> {
        self.start_backend_listening(n, ports, false)
    }

    /// [`start_backend`](Self::start_backend), listening on `[::]` (IPv6 and IPv4) when `ipv6`.
    ///
    /// # Errors
    /// As [`start_backend`](Self::start_backend).
    pub fn start_backend_listening(&self, n: usize, ports: &[u16], ipv6: bool) -> Result<()> {
        let host = self.backend(n).clone();
        self.stop_backend(n)?;
        let bin = self.backend_binary()?;
        let mut argv = vec![bin.into_os_string(), "--name".into(), host.name.clone().into()];
        if ipv6 {
            argv.push("--ipv6".into());
        }
        for port in ports {
            argv.push("--port".into());
            argv.push(port.to_string().into());
        }
        let mut child = ChildGuard::spawn(&host.ns, &argv, &self.log_path(&host.name))?;
        child.wait_for_log(crate::READY_LINE, Duration::from_secs(5))?;
        self.servers.lock().map_err(|_| anyhow!("lab backend table poisoned"))?.insert(n, child);
        Ok(())
    }

    /// Starts `lab-backend` in every backend host.
    ///
    /// # Errors
    /// As [`start_backend`](Self::start_backend).
    pub fn start_backends(&self, ports: &[u16]) -> Result<()> {
        (1..=self.backends.len()).try_for_each(|n| self.start_backend(n, ports))
    }

    fn take_server(&self, n: usize) -> Result<Option<ChildGuard>> {
        Ok(self.servers.lock().map_err(|_| anyhow!("lab backend table poisoned"))?.remove(&n))
    }

    /// Stops `backendN`'s server cleanly (SIGTERM); a no-op when it is not running.
    ///
    /// # Errors
    /// When waiting for it fails.
    pub fn stop_backend(&self, n: usize) -> Result<()> {
        if let Some(child) = self.take_server(n)? {
            child.stop()?;
        }
        Ok(())
    }

    /// Kills `backendN`'s server at once (SIGKILL): its port answers with RST from then on.
    ///
    /// # Errors
    /// When it is not running or waiting fails.
    pub fn kill_backend(&self, n: usize) -> Result<()> {
        let child = self.take_server(n)?.ok_or_else(|| anyhow!("backend{n} has no running server"))?;
        child.kill()?;
        Ok(())
    }

    /// The pid of `backendN`'s server, if one runs.
    pub fn backend_pid(&self, n: usize) -> Option<u32> {
        self.servers.lock().ok()?.get(&n).map(ChildGuard::pid)
    }

    /// Makes `backendN` report unready (`/readyz` → 503, SIGUSR1) or ready again (SIGUSR2); it keeps serving
    /// `GET /` either way.
    ///
    /// # Errors
    /// When it is not running.
    pub fn set_backend_ready(&self, n: usize, ready: bool) -> Result<()> {
        let mut servers = self.servers.lock().map_err(|_| anyhow!("lab backend table poisoned"))?;
        let child = servers.get_mut(&n).ok_or_else(|| anyhow!("backend{n} has no running server"))?;
        child.signal(if ready { libc::SIGUSR2 } else { libc::SIGUSR1 })
    }

    // ----- keepalived -----

    /// Starts a keepalived VRRP peer in `host` (normally a node) with `spec`.
    ///
    /// # Errors
    /// When the config does not validate or keepalived cannot start.
    pub fn start_keepalived(&self, host: &Host, spec: &KeepalivedSpec) -> Result<Keepalived> {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("keepalived-{}-{n}", host.name));
        Keepalived::start(&host.ns, spec, &dir)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (they may hold the links' devices busy), then the XDP stubs, then the namespaces:
        // deleting a namespace deletes its veths and with them the bridge ports.
        match self.servers.get_mut() {
            Ok(servers) => servers.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
        self.pass = None;
        self.namespaces.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("xvip-tests: removing {}: {e}", self.dir.display());
        }
    }
}

/// IPv6 off: no DAD, router solicitations or MLD reports cluttering captures and counters (xvip is IPv4-only).
fn disable_ipv6(ns: &str) -> Result<()> {
    for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
        cmd::exec_in(ns, ["sysctl", "-q", "-w", key]).with_context(|| format!("setting {key} in {ns}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Lab>();
    }

    #[test]
    fn mac_addresses_round_trip() {
        let mac: MacAddr = "02:77:0a:ff:00:15".parse().expect("valid");
        assert_eq!(mac, MacAddr([0x02, 0x77, 0x0a, 0xff, 0x00, 0x15]));
        assert_eq!(mac.to_string(), "02:77:0a:ff:00:15");
        assert!("02:77:0a:ff:00".parse::<MacAddr>().is_err());
        assert!("02:77:0a:ff:00:15:01".parse::<MacAddr>().is_err());
        assert!("02:77:0a:ff:00:zz".parse::<MacAddr>().is_err());
    }
}
