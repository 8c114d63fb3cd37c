//! Hosts and links added to a running lab, for the hostile-traffic tests: an extra host on the bridge (an
//! attacker that is also the nodes' default router), a backend behind a second interface of a node, and a raw
//! frame sender and sniffer (AF_PACKET) for spoofed traffic. Everything lives in namespaces named after the lab's
//! run and is removed when the returned guards drop (also while unwinding).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{self, Netns};
use crate::topology::{Host, IFACE, Lab, MacAddr, PREFIX_LEN, Role};
use crate::xdp_pass::{self, PassStub};
use crate::{cmd, xvip};

/// An extra host plugged into the lab's bridge. Dropping it removes its namespace (and with it its veth).
pub struct ExtraHost {
    pub host: Host,
    _ns: Netns,
}

impl Lab {
    /// Plugs a new host `name` with address `10.77.K.octet` into the bridge (no XDP stub: frames reach it through
    /// the bridge, never by XDP_TX straight into its port).
    ///
    /// # Errors
    /// When a step fails; what exists is removed again.
    pub fn add_host(&self, name: &str, octet: u8) -> Result<ExtraHost> {
        let (subnet, _) = self.subnet();
        let k = subnet.octets()[2];
        let host = Host {
            role: Role::Client,
            name: name.to_owned(),
            ns: format!("{}{}-{name}", netns::PREFIX, self.run_id()),
            iface: IFACE.to_owned(),
            ip: Ipv4Addr::new(10, 77, k, octet),
            mac: MacAddr([0x02, 0x77, k, 0x00, 0x00, octet]),
            bridge_port: format!("vx{octet}"),
            bridge_port_mac: MacAddr([0x02, 0x77, k, 0xff, 0x00, octet]),
        };
        let ns = Netns::create(&host.ns)?;
        let (port_mac, mac) = (host.bridge_port_mac.to_string(), host.mac.to_string());
        cmd::ip_in(
            self.bridge_ns(),
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
        .with_context(|| format!("creating the veth of {name}"))?;
        cmd::ip_in(self.bridge_ns(), ["link", "set", &host.bridge_port, "master", "br0", "up"])?;
        no_ipv6(&host.ns)?;
        cmd::ip_in(&host.ns, ["addr", "add", &format!("{}/{PREFIX_LEN}", host.ip), "dev", IFACE])?;
        cmd::ip_in(&host.ns, ["link", "set", IFACE, "up"])?;
        cmd::exec_in(&host.ns, ["ethtool", "-K", IFACE, "tx", "off"])?;
        Ok(ExtraHost { host, _ns: ns })
    }

    /// Makes `node` a router like a Kubernetes node: IPv4 forwarding on (NAT replies are routed by the FIB, which
    /// answers only for forwarding interfaces), reverse-path filtering loose, and a default route via `router`.
    ///
    /// # Errors
    /// When `sysctl` or `ip` fails.
    pub fn make_router(&self, node: &Host, default_via: Option<Ipv4Addr>) -> Result<()> {
        for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            cmd::exec_in(&node.ns, ["sysctl", "-q", "-w", key]).with_context(|| format!("{key} in {}", node.name))?;
        }
        if let Some(gw) = default_via {
            cmd::ip_in(&node.ns, ["route", "replace", "default", "via", &gw.to_string()])?;
        }
        Ok(())
    }

    /// A backend reached through a second interface of `node`: a new namespace `far` linked to the node by a veth
    /// pair (`eth1` on the node, 10.78.K.1/24; `eth0` in `far`, 10.78.K.21/24, routing the lab subnet via the
    /// node), running `lab-backend` (at `backend_bin`) on `port`. With `dsr`, `far` holds the VIP on `lo` (a NAT
    /// backend must not: packets from the VIP would look like its own). The node becomes a router
    /// ([`make_router`](Self::make_router)).
    ///
    /// # Errors
    /// When a step fails; what exists is removed again.
    pub fn add_far_backend(
        &self,
        node: &Host,
        backend_bin: &std::path::Path,
        port: u16,
        dsr: bool,
    ) -> Result<FarBackend> {
        let (subnet, _) = self.subnet();
        let k = subnet.octets()[2];
        let ns_name = format!("{}{}-far", netns::PREFIX, self.run_id());
        let ns = Netns::create(&ns_name)?;
        let (node_ip, far_ip) = (Ipv4Addr::new(10, 78, k, 1), Ipv4Addr::new(10, 78, k, 21));
        let far_mac = MacAddr([0x02, 0x78, k, 0x00, 0x00, 21]);
        let node_mac = MacAddr([0x02, 0x78, k, 0x00, 0x00, 1]);
        cmd::ip_in(
            &ns_name,
            [
                "link",
                "add",
                IFACE,
                "address",
                &far_mac.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "eth1",
                "address",
                &node_mac.to_string(),
                "netns",
                &node.ns,
            ],
        )
        .context("creating the second link")?;
        no_ipv6(&ns_name)?;
        cmd::ip_in(&ns_name, ["addr", "add", &format!("{far_ip}/24"), "dev", IFACE])?;
        cmd::ip_in(&ns_name, ["link", "set", IFACE, "up"])?;
        cmd::ip_in(&ns_name, ["route", "add", &format!("{subnet}/{PREFIX_LEN}"), "via", &node_ip.to_string()])?;
        if dsr {
            cmd::ip_in(&ns_name, ["addr", "add", &format!("{}/32", self.vip()), "dev", "lo"])?;
        }
        cmd::exec_in(&ns_name, ["ethtool", "-K", IFACE, "tx", "off"])?;
        cmd::ip_in(&node.ns, ["addr", "add", &format!("{node_ip}/24"), "dev", "eth1"])?;
        cmd::ip_in(&node.ns, ["link", "set", "eth1", "up"])?;
        self.make_router(node, None)?;
        // Frames the node redirects into eth1 are delivered to far's eth0 only if it runs an XDP program.
        let pass = xdp_pass::attach(&ns_name, &[IFACE.to_owned()])?;
        let server = self.spawn(
            &ns_name,
            [backend_bin.as_os_str(), "--name".as_ref(), "far".as_ref(), "--port".as_ref(), port.to_string().as_ref()],
        )?;
        let far =
            FarBackend { ip: far_ip, mac: far_mac, node_mac, ns: ns_name, server: Some(server), _pass: pass, _ns: ns };
        far.wait_listening(port)?;
        Ok(far)
    }
}

/// A backend behind a node's second interface (see [`Lab::add_far_backend`]).
pub struct FarBackend {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The MAC of the node's `eth1`: the source of every frame the node sends to this backend.
    pub node_mac: MacAddr,
    pub ns: String,
    server: Option<crate::ChildGuard>,
    _pass: PassStub,
    _ns: Netns,
}

impl FarBackend {
    fn wait_listening(&self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let addr = std::net::SocketAddr::from((self.ip, port));
        loop {
            if netns::in_netns(&self.ns, || {
                Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
            })?
            .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the far backend never listened on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FarBackend {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.kill();
        }
        let _ = netns::kill_all_in(&self.ns);
    }
}

fn no_ipv6(ns: &str) -> Result<()> {
    for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
        cmd::exec_in(ns, ["sysctl", "-q", "-w", key]).with_context(|| format!("setting {key} in {ns}"))?;
    }
    Ok(())
}

/// An AF_PACKET socket on `eth0` of the namespace it was opened in.
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens it; call on a thread inside the namespace (see [`Lab::in_netns`]).
    ///
    /// # Errors
    /// When the socket cannot be opened or bound.
    pub fn open(iface: &str) -> Result<Self> {
        // SAFETY: plain syscall.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {iface}");
        }
        // SAFETY: zeroed sockaddr_ll is valid; we fill what bind needs.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: valid pointer and length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: valid option pointer and length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(RawSocket { fd, ifindex })
    }

    /// Sends one whole Ethernet frame. A full transmit queue (ENOBUFS) is retried after a pause.
    ///
    /// # Errors
    /// When sending fails otherwise.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        loop {
            // SAFETY: valid buffer.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            return Err(e).with_context(|| format!("send on ifindex {}", self.ifindex));
        }
    }

    /// The next frame received (or sent) on the interface, or `None` after the 100 ms receive timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }
}

/// The lab's xvip node spec with a larger connection table.
pub fn with_conntrack(spec: xvip::NodeSpec, entries: u32) -> xvip::NodeSpec {
    xvip::NodeSpec { conntrack_entries: Some(entries), ..spec }
}
