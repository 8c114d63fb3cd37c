//! Backend MAC addresses from the kernel's neighbour table (rtnetlink).
//!
//! The data plane rewrites the destination MAC itself, so it needs the backend's MAC (or the next hop's, for a
//! backend behind a router). We never guess: we ask the kernel for the route, read its neighbour entry, and when
//! there is none we ask the kernel to resolve it (RTM_NEWNEIGH with NTF_USE, which starts an ARP exchange the way
//! sending a packet would). Until a MAC is known, the backend stays out of the Maglev table.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
};

/// Where packets for a backend go: out of `ifindex`, to `next_hop`'s MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    pub ifindex: u32,
    /// The backend itself when it is on-link, else the gateway.
    pub next_hop: Ipv4Addr,
}

pub struct Neighbours {
    handle: Handle,
}

impl Neighbours {
    /// Opens a netlink connection in the current network namespace (the connection runs as a tokio task).
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Neighbours { handle })
    }

    /// Asks the kernel how it would reach `backend` (`ip route get`).
    pub async fn path(&self, backend: Ipv4Addr) -> Result<Path> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 32;
        message.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(backend)));
        let mut routes = self.handle.route().get(message).execute();
        let route = routes
            .try_next()
            .await
            .with_context(|| format!("looking up the route to {backend}"))?
            .ok_or_else(|| anyhow!("no route to {backend}"))?;
        let mut path = Path { ifindex: 0, next_hop: backend };
        for attr in route.attributes {
            match attr {
                RouteAttribute::Oif(i) => path.ifindex = i,
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => path.next_hop = gw,
                _ => {}
            }
        }
        if path.ifindex == 0 {
            return Err(anyhow!("the route to {backend} names no output interface"));
        }
        Ok(path)
    }

    /// The MAC of `address` on `ifindex` if the kernel has a usable entry for it.
    pub async fn mac(&self, ifindex: u32, address: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        let mut entries = self.handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
        while let Some(entry) = entries.try_next().await.context("reading the neighbour table")? {
            if entry.header.ifindex != ifindex {
                continue;
            }
            let usable = matches!(
                entry.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            let mut dst = None;
            let mut lladdr = None;
            for attr in &entry.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) => lladdr = <[u8; 6]>::try_from(l.as_slice()).ok(),
                    _ => {}
                }
            }
            if dst == Some(address) && usable {
                return Ok(lladdr.filter(|m| *m != [0; 6]));
            }
        }
        Ok(None)
    }

    /// Asks the kernel to resolve `address` on `ifindex` (an ARP request goes out; the answer lands in the table).
    pub async fn solicit(&self, ifindex: u32, address: Ipv4Addr) -> Result<()> {
        let mut request = self
            .handle
            .neighbours()
            .add(ifindex, IpAddr::V4(address))
            .state(NeighbourState::Incomplete)
            .flags(NeighbourFlags::Use)
            .replace();
        request.message_mut().header.flags = NeighbourFlags::Use;
        request.execute().await.with_context(|| format!("asking the kernel to resolve {address} (ifindex {ifindex})"))
    }

    /// Whether `address` lies inside one of the IPv4 prefixes configured on `ifindex` (the VIP should: clients on
    /// that segment ARP for it, and only then does the XDP program's ARP answer matter).
    pub async fn on_link(&self, ifindex: u32, address: Ipv4Addr) -> Result<bool> {
        let mut addrs = self.handle.address().get().set_link_index_filter(ifindex).execute();
        while let Some(msg) = addrs.try_next().await.context("listing the interface's addresses")? {
            let prefix = msg.header.prefix_len;
            for attr in &msg.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) = attr
                    && same_prefix(*a, address, prefix)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The path and, once known, the MAC for `backend`; starts resolution when the MAC is not known yet.
    pub async fn resolve(&self, backend: Ipv4Addr) -> Result<(Path, Option<[u8; 6]>)> {
        let path = self.path(backend).await?;
        let mac = self.mac(path.ifindex, path.next_hop).await?;
        if mac.is_none() {
            self.solicit(path.ifindex, path.next_hop).await?;
        }
        Ok((path, mac))
    }
}

fn same_prefix(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_compare_only_the_network_bits() {
        use super::same_prefix;
        let a = std::net::Ipv4Addr::new(10, 0, 0, 5);
        assert!(same_prefix(a, std::net::Ipv4Addr::new(10, 0, 0, 250), 24));
        assert!(!same_prefix(a, std::net::Ipv4Addr::new(10, 0, 1, 250), 24));
        assert!(same_prefix(a, std::net::Ipv4Addr::new(10, 0, 1, 250), 16));
        assert!(same_prefix(a, std::net::Ipv4Addr::new(192, 168, 0, 1), 0));
        assert!(!same_prefix(a, std::net::Ipv4Addr::new(10, 0, 0, 6), 32));
    }

    use std::{process::Command, time::Duration};

    use super::*;

    fn sh(cmd: &str) {
        let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
        assert!(status.success(), "{cmd}");
    }

    /// Runs `f` on a thread inside a fresh network namespace (gone when the thread ends), with a current-thread
    /// runtime created there so the netlink socket belongs to that namespace.
    fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
        std::thread::spawn(move || {
            // SAFETY: unshare only affects this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET) needs root");
            f();
        })
        .join()
        .expect("netns thread");
    }

    /// Removes a named namespace when dropped, also on panic.
    struct NamedNs(String);
    impl Drop for NamedNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn resolves_an_on_link_backend_mac_through_arp() {
        in_netns(|| {
            let peer = NamedNs(format!("xvu-nb-{}", std::process::id()));
            sh(&format!(
                "ip netns add {p} && ip link add xvn0 type veth peer name xvn1 && ip link set xvn1 netns {p} && \
                 ip addr add 10.91.0.1/24 dev xvn0 && ip link set xvn0 up && \
                 ip netns exec {p} ip addr add 10.91.0.2/24 dev xvn1 && ip netns exec {p} ip link set xvn1 up",
                p = peer.0
            ));
            let out = Command::new("ip")
                .args(["netns", "exec", &peer.0, "cat", "/sys/class/net/xvn1/address"])
                .output()
                .expect("read peer MAC");
            let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let n = Neighbours::connect().expect("netlink");
                let backend = Ipv4Addr::new(10, 91, 0, 2);
                let (path, mac) = n.resolve(backend).await.expect("resolve");
                assert_eq!(path.next_hop, backend);
                assert!(path.ifindex > 0);
                assert_eq!(mac, None, "nothing was resolved yet, so nothing may be guessed");
                let mut found = None;
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    found = n.mac(path.ifindex, backend).await.expect("mac");
                    if found.is_some() {
                        break;
                    }
                }
                let found = found.expect("the kernel resolved the backend after solicit()");
                let text = found.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                assert_eq!(text, want);
            });
        });
    }

    #[test]
    fn unreachable_backend_has_no_path() {
        in_netns(|| {
            sh("ip link set lo up");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let n = Neighbours::connect().expect("netlink");
                let err = n.path(Ipv4Addr::new(10, 92, 0, 2)).await.expect_err("no route in an empty namespace");
                assert!(format!("{err:#}").contains("10.92.0.2"), "{err:#}");
            });
        });
    }
}
