//! Backend MAC addresses from the kernel's neighbour table (rtnetlink), and the worker that keeps them known.
//!
//! The data plane rewrites the destination MAC itself, so it needs the backend's MAC (or the next hop's, for a
//! backend behind a router). We never guess: we ask the kernel for the route, read its neighbour entry, and when
//! there is none we ask the kernel to resolve it (RTM_NEWNEIGH with NTF_USE, which starts an ARP exchange the way
//! sending a packet would). What to make of an answer (keep a MAC until the kernel says FAILED) is the engine's
//! decision; this module reports what it [`Seen`].
//!
//! Traffic forwarded in XDP never touches the kernel's neighbour entries, so the kernel would garbage-collect the
//! entries of backends that only XDP talks to (`check = "none"` services, DSR). The [`watch`] worker therefore
//! "uses" (NTF_USE) every entry it relies on more often than the interface's `gc_stale_time`.
//!
//! A link that comes back may leave entries stuck: packets sent while its carrier was down (health probes) left
//! them INCOMPLETE, and the kernel asks again only at its next `retrans_time` (1 s by default), so a check sent at
//! link up waits that long for an answer. [`Request::Renew`] deletes the interface's unresolved entries of the
//! watched addresses and asks afresh at once.
//!
//! Every netlink call is bounded by [`NETLINK_TIMEOUT`]: a stalled kernel call delays this worker, never the
//! agent's adverts, and never forever.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::Duration,
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    },
};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until, timeout},
};

/// The longest any one netlink request (or dump) may take.
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the table is read while some address has no usable entry (the kernel resolves in the meantime).
const POLL_PENDING: Duration = Duration::from_millis(100);
/// How often the table is read (and routes looked up again) when every address is resolved.
const REFRESH: Duration = Duration::from_secs(10);
/// At most one resolution request per address per this period (the kernel retries ARP itself meanwhile).
const SOLICIT_EVERY: Duration = Duration::from_secs(1);

/// Where packets for a backend go: out of `ifindex`, to `next_hop`'s MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    pub ifindex: u32,
    /// The backend itself when it is on-link, else the gateway.
    pub next_hop: IpAddr,
    /// The backend's address is one of this node's own (a `local` route): there is no neighbour to resolve.
    pub local: bool,
}

/// What the kernel says about one backend address, as the worker last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A usable entry (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP) with this MAC.
    Mac { ifindex: u32, mac: [u8; 6] },
    /// The kernel tried and the next hop did not answer (NUD_FAILED).
    Failed { ifindex: u32 },
    /// No usable entry yet: being resolved (INCOMPLETE), or no entry at all (never resolved, or garbage-collected).
    Pending { ifindex: u32 },
    /// No route to the address.
    NoRoute(String),
    /// The address is one of this node's own, on the interface whose MAC is `mac` (a stacked node: the backend
    /// runs here, and gets its frames through the node's own stack).
    Local { mac: [u8; 6] },
}

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{what}: no answer from the kernel within {NETLINK_TIMEOUT:?}")]
    Timeout { what: String },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    #[error("the route to {0} names no output interface")]
    NoInterface(IpAddr),
}

/// A usable entry's MAC, or what else the kernel says about the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// REACHABLE, STALE, DELAY or PROBE: an entry the kernel maintains, and may garbage-collect when unused.
    Dynamic([u8; 6]),
    /// PERMANENT or NOARP: set by an operator, never collected, and never to be touched (using one with NTF_USE
    /// would turn it into a dynamic entry).
    Static([u8; 6]),
    Failed,
    Incomplete,
}

pub struct Neighbours {
    handle: Handle,
}

/// Runs `request` with [`NETLINK_TIMEOUT`], naming `what` in the error.
async fn bounded<T>(
    what: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, Error> {
    match timeout(NETLINK_TIMEOUT, request).await {
        Err(_) => Err(Error::Timeout { what: what() }),
        Ok(Err(source)) => Err(Error::Netlink { what: what(), source }),
        Ok(Ok(value)) => Ok(value),
    }
}

impl Neighbours {
    /// Opens a netlink connection in the current network namespace (the connection runs as a tokio task).
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn connect() -> Result<Self, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(connection);
        Ok(Neighbours { handle })
    }

    /// Asks the kernel how it would reach `backend` (`ip route get`).
    ///
    /// # Errors
    /// No route, or the request failed or timed out.
    pub async fn path(&self, backend: IpAddr) -> Result<Path, Error> {
        let mut message = RouteMessage::default();
        match backend {
            IpAddr::V4(v4) => {
                message.header.address_family = AddressFamily::Inet;
                message.header.destination_prefix_length = 32;
                message.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(v4)));
            }
            IpAddr::V6(v6) => {
                message.header.address_family = AddressFamily::Inet6;
                message.header.destination_prefix_length = 128;
                message.attributes.push(RouteAttribute::Destination(RouteAddress::Inet6(v6)));
            }
        }
        let mut routes = self.handle.route().get(message).execute();
        let route = bounded(|| format!("looking up the route to {backend}"), routes.try_next())
            .await?
            .ok_or(Error::NoRoute(backend))?;
        let local = route.header.kind == RouteType::Local;
        let mut path = Path { ifindex: 0, next_hop: backend, local };
        for attr in route.attributes {
            match attr {
                RouteAttribute::Oif(i) => path.ifindex = i,
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => path.next_hop = IpAddr::V4(gw),
                RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => path.next_hop = IpAddr::V6(gw),
                _ => {}
            }
        }
        if path.ifindex == 0 && !local {
            return Err(Error::NoInterface(backend));
        }
        Ok(path)
    }

    /// The whole neighbour table (IPv4 and IPv6) in one dump, by (ifindex, address). One dump serves every backend: a table
    /// of 10,000 entries is read once per round, not once per backend.
    ///
    /// # Errors
    /// The dump failed or did not finish within [`NETLINK_TIMEOUT`].
    pub async fn table(&self) -> Result<HashMap<(u32, IpAddr), Entry>, Error> {
        let dump = async {
            let mut entries = self.handle.neighbours().get().set_address_family(AddressFamily::Unspec).execute();
            let mut table = HashMap::new();
            while let Some(message) = entries.try_next().await? {
                let mut dst = None;
                let mut lladdr = None;
                for attr in &message.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                        NeighbourAttribute::LinkLayerAddress(l) => lladdr = <[u8; 6]>::try_from(l.as_slice()).ok(),
                        _ => {}
                    }
                }
                let Some(dst) = dst else { continue };
                let mac = lladdr.filter(|m| *m != [0; 6]);
                let entry = match (message.header.state, mac) {
                    (
                        NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe,
                        Some(mac),
                    ) => Entry::Dynamic(mac),
                    (NeighbourState::Permanent | NeighbourState::Noarp, Some(mac)) => Entry::Static(mac),
                    (NeighbourState::Failed, _) => Entry::Failed,
                    _ => Entry::Incomplete,
                };
                table.insert((message.header.ifindex, dst), entry);
            }
            Ok(table)
        };
        bounded(|| "reading the neighbour table".to_string(), dump).await
    }

    /// The entry of `address` on `ifindex`, if the kernel has one (one dump; prefer [`table`](Self::table) for
    /// many addresses).
    ///
    /// # Errors
    /// As [`table`](Self::table).
    pub async fn entry(&self, ifindex: u32, address: IpAddr) -> Result<Option<Entry>, Error> {
        Ok(self.table().await?.get(&(ifindex, address)).copied())
    }

    /// "Uses" the entry of `address` on `ifindex` (RTM_NEWNEIGH with NTF_USE), as sending a packet would: the
    /// kernel resolves it when it has no usable entry (an ARP request goes out), and an existing dynamic entry
    /// counts as recently used, so garbage collection leaves it alone. Never call it for a PERMANENT or NOARP entry:
    /// since Linux 5.16 NTF_USE turns such an entry into a dynamic one.
    ///
    /// # Errors
    /// The request failed or timed out.
    pub async fn touch(&self, ifindex: u32, address: IpAddr) -> Result<(), Error> {
        let mut request = self
            .handle
            .neighbours()
            .add(ifindex, address)
            .state(NeighbourState::Incomplete)
            .flags(NeighbourFlags::Use)
            .replace();
        request.message_mut().header.flags = NeighbourFlags::Use;
        bounded(|| format!("asking the kernel to resolve {address} (ifindex {ifindex})"), request.execute()).await
    }

    /// Deletes the entry of `address` on `ifindex` (RTM_DELNEIGH). The kernel drops the packets queued on it,
    /// and the next packet or [`touch`](Self::touch) starts a fresh resolution at once.
    ///
    /// # Errors
    /// The request failed (for example: there was no such entry) or timed out.
    pub async fn forget(&self, ifindex: u32, address: IpAddr) -> Result<(), Error> {
        let mut message = NeighbourMessage::default();
        message.header.ifindex = ifindex;
        match address {
            IpAddr::V4(v4) => {
                message.header.family = AddressFamily::Inet;
                message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)));
            }
            IpAddr::V6(v6) => {
                message.header.family = AddressFamily::Inet6;
                message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)));
            }
        }
        let request = self.handle.neighbours().del(message).execute();
        bounded(|| format!("deleting the neighbour entry of {address} (ifindex {ifindex})"), request).await
    }

    /// Whether `address` lies inside one of the IPv4 prefixes configured on `ifindex` (the VIP should: clients on
    /// that segment ARP for it, and only then does the XDP program's ARP answer matter).
    ///
    /// # Errors
    /// The request failed or timed out.
    pub async fn on_link(&self, ifindex: u32, address: std::net::Ipv4Addr) -> Result<bool, Error> {
        let dump = async {
            let mut addrs = self.handle.address().get().set_link_index_filter(ifindex).execute();
            while let Some(msg) = addrs.try_next().await? {
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
        };
        bounded(|| "listing the interface's addresses".to_string(), dump).await
    }
}

/// The index of the interface named `name` in the caller's network namespace.
fn ifindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn same_prefix(a: std::net::Ipv4Addr, b: std::net::Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    u32::from(a) & mask == u32::from(b) & mask
}

/// The kernel's `gc_stale_time` of an interface's neighbour table for `family`'s addresses (IPv4's ARP table and
/// IPv6's Neighbor Discovery table are configured apart), in the caller's network namespace: an entry unused for
/// longer may be garbage-collected. `None` when it cannot be read.
fn gc_stale_time(ifindex: u32, family: Family) -> Option<Duration> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_str().ok()?;
    let table = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    let text = std::fs::read_to_string(format!("/proc/sys/net/{table}/neigh/{name}/gc_stale_time")).ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How often to use an entry of `family` so it is never older than half the interface's `gc_stale_time` for
/// that family (at most [`REFRESH`], at least one second).
fn refresh_period(ifindex: u32, family: Family) -> Duration {
    gc_stale_time(ifindex, family).map_or(REFRESH, |stale| (stale / 2).clamp(Duration::from_secs(1), REFRESH))
}

/// Which neighbour table of an interface an address lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(address: IpAddr) -> Family {
        if address.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// What a backend at one of this node's own addresses (IPv4 or IPv6) is: reached through the node's own stack,
/// with the MAC of the interface that holds the address.
fn local(address: IpAddr) -> Seen {
    match crate::netif::interface_of(address).map(|name| crate::netif::interface_mac(&name)) {
        Some(Ok(mac)) => Seen::Local { mac },
        _ => Seen::NoRoute(format!("{address} is local, but on no Ethernet interface of this node")),
    }
}

/// What the agent asks of the [`watch`] worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Watch exactly these backend addresses from now on.
    Watch(Vec<IpAddr>),
    /// The link of this interface came back: delete its unresolved entries (INCOMPLETE or FAILED) of watched
    /// addresses and ask for them again now, instead of at the kernel's next retry.
    Renew(String),
}

/// Keeps watching the addresses last received on `requests` and sends what it sees of each to `report`, only when
/// that changed, one batch per round. Uses every entry it relies on often enough that garbage collection leaves it alone, and asks the
/// kernel to resolve the missing ones, and renews an interface's unresolved entries when asked. Ends when
/// `requests` is closed.
///
/// `report` must not block (the engine's event queue is unbounded).
pub async fn watch(
    neighbours: Neighbours,
    mut requests: mpsc::UnboundedReceiver<Request>,
    report: impl Fn(Vec<(IpAddr, Seen)>),
) {
    // Interfaces whose link came back, to renew in the next round.
    let mut renew: BTreeSet<u32> = BTreeSet::new();
    let mut watched: BTreeSet<IpAddr> = BTreeSet::new();
    let mut last: HashMap<IpAddr, Seen> = HashMap::new();
    let mut paths: HashMap<IpAddr, Path> = HashMap::new();
    let mut solicited: HashMap<IpAddr, Instant> = HashMap::new();
    let mut refreshed: HashMap<IpAddr, Instant> = HashMap::new();
    let mut routes_at = Instant::now();
    let mut next = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                None => return,
                Some(Request::Watch(set)) => {
                    watched = set.into_iter().collect();
                    last.retain(|a, _| watched.contains(a));
                    paths.retain(|a, _| watched.contains(a));
                    next = Instant::now();
                    continue;
                }
                Some(Request::Renew(interface)) => {
                    match ifindex(&interface) {
                        Some(index) => {
                            renew.insert(index);
                            // The link's routes came back with it: look them up again.
                            paths.clear();
                        }
                        None => log::debug!("backend neighbours: no interface {interface} to renew"),
                    }
                    next = Instant::now();
                    continue;
                }
            },
            _ = sleep_until(next) => {}
        }
        let now = Instant::now();
        // Routes change rarely: look them up for new addresses every round, for all of them every REFRESH.
        if now >= routes_at {
            paths.clear();
            routes_at = now + REFRESH;
        }
        let table = match neighbours.table().await {
            Ok(table) => {
                failures = 0;
                table
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    log::warn!("backend neighbours: {e} ({failures} failure(s) in a row; retrying)");
                }
                next = Instant::now() + POLL_PENDING.max(Duration::from_millis(500));
                continue;
            }
        };
        let mut pending = false;
        let mut periods: HashMap<(u32, Family), Duration> = HashMap::new();
        let mut changes = Vec::new();
        for &address in &watched {
            let path = match paths.get(&address) {
                Some(path) => *path,
                None => match neighbours.path(address).await {
                    Ok(path) => {
                        paths.insert(address, path);
                        path
                    }
                    Err(e) => {
                        let seen = Seen::NoRoute(e.to_string());
                        if last.get(&address) != Some(&seen) {
                            last.insert(address, seen.clone());
                            changes.push((address, seen));
                        }
                        continue;
                    }
                },
            };
            if path.local {
                // Nothing to resolve or refresh: the backend is this node.
                let seen = local(address);
                if last.get(&address) != Some(&seen) {
                    last.insert(address, seen.clone());
                    changes.push((address, seen));
                }
                continue;
            }
            let entry = table.get(&(path.ifindex, path.next_hop)).copied();
            let seen = match entry {
                Some(Entry::Dynamic(mac) | Entry::Static(mac)) => Seen::Mac { ifindex: path.ifindex, mac },
                Some(Entry::Failed) => Seen::Failed { ifindex: path.ifindex },
                Some(Entry::Incomplete) | None => Seen::Pending { ifindex: path.ifindex },
            };
            let now = Instant::now();
            if renew.contains(&path.ifindex) && matches!(entry, Some(Entry::Incomplete | Entry::Failed)) {
                // Left unresolved while the link was down: start again now (the touch below asks at once).
                match neighbours.forget(path.ifindex, path.next_hop).await {
                    Ok(()) => {
                        log::info!("backend {address}: asking again for {} after link up", path.next_hop);
                        solicited.remove(&address);
                    }
                    Err(e) => log::debug!("backend {address}: {e}"),
                }
            }
            let touch = match (&seen, entry) {
                // An operator's static entry needs no refresh, and must not be touched.
                (_, Some(Entry::Static(_))) => false,
                (Seen::Mac { .. }, _) => {
                    let family = Family::of(path.next_hop);
                    let period =
                        *periods.entry((path.ifindex, family)).or_insert_with(|| refresh_period(path.ifindex, family));
                    let due = refreshed.get(&address).is_none_or(|t| now >= *t + period);
                    if due {
                        refreshed.insert(address, now);
                    }
                    due
                }
                (_, _) => {
                    pending = true;
                    let due = solicited.get(&address).is_none_or(|t| now >= *t + SOLICIT_EVERY);
                    if due {
                        solicited.insert(address, now);
                    }
                    due
                }
            };
            if touch && let Err(e) = neighbours.touch(path.ifindex, path.next_hop).await {
                log::debug!("backend {address}: {e}");
            }
            if last.get(&address) != Some(&seen) {
                last.insert(address, seen.clone());
                changes.push((address, seen));
            }
        }
        renew.clear();
        if !changes.is_empty() {
            report(changes);
        }
        solicited.retain(|a, _| watched.contains(a));
        refreshed.retain(|a, _| watched.contains(a));
        let smallest = periods.values().min().copied().unwrap_or(REFRESH);
        next = Instant::now() + if pending { POLL_PENDING } else { smallest.min(REFRESH) };
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, process::Command, time::Duration};

    use super::*;

    #[test]
    fn prefixes_compare_only_the_network_bits() {
        let a = Ipv4Addr::new(10, 0, 0, 5);
        assert!(same_prefix(a, Ipv4Addr::new(10, 0, 0, 250), 24));
        assert!(!same_prefix(a, Ipv4Addr::new(10, 0, 1, 250), 24));
        assert!(same_prefix(a, Ipv4Addr::new(10, 0, 1, 250), 16));
        assert!(same_prefix(a, Ipv4Addr::new(192, 168, 0, 1), 0));
        assert!(!same_prefix(a, Ipv4Addr::new(10, 0, 0, 6), 32));
    }

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

    fn veth_to_peer(tag: &str, subnet: u8) -> (NamedNs, String) {
        let peer = NamedNs(format!("xvu-{tag}-{}", std::process::id()));
        sh(&format!(
            "ip netns add {p} && ip link add xvn0 type veth peer name xvn1 && ip link set xvn1 netns {p} && \
             ip addr add 10.{subnet}.0.1/24 dev xvn0 && ip link set xvn0 up && \
             ip netns exec {p} ip addr add 10.{subnet}.0.2/24 dev xvn1 && ip netns exec {p} ip link set xvn1 up",
            p = peer.0
        ));
        let out = Command::new("ip")
            .args(["netns", "exec", &peer.0, "cat", "/sys/class/net/xvn1/address"])
            .output()
            .expect("read peer MAC");
        (peer, String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// An IPv6 backend's entry is used as often as the interface's IPv6 table asks, not its IPv4 one's.
    #[test]
    fn refresh_period_follows_the_addresss_own_neighbour_table() {
        in_netns(|| {
            sh("ip link add xvn0 type veth peer name xvn1 && \
                sysctl -q -w net.ipv4.neigh.xvn0.gc_stale_time=4 net.ipv6.neigh.xvn0.gc_stale_time=12");
            let index = ifindex("xvn0").expect("xvn0 exists");
            assert_eq!(refresh_period(index, Family::V4), Duration::from_secs(2));
            assert_eq!(refresh_period(index, Family::V6), Duration::from_secs(6));
            assert_eq!(Family::of(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)), Family::V6);
            assert_eq!(Family::of(IpAddr::V4(Ipv4Addr::LOCALHOST)), Family::V4);
        });
    }

    /// Waits until our end (`xvn0`) has (`up`) or has lost its carrier as the kernel reports it. The kernel
    /// applies a carrier change later (its link watch runs deferred, up to a second under load) and flushes the
    /// link's neighbour entries when it does: a test that needs an entry made while the carrier is down must wait.
    fn wait_for_carrier(up: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ip").args(["-o", "link", "show", "xvn0"]).output().expect("ip link show");
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            if line.contains(if up { "LOWER_UP" } else { "NO-CARRIER" }) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "xvn0's carrier did not become {up}: {line}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn text(mac: [u8; 6]) -> String {
        mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }

    #[test]
    fn resolves_an_on_link_backend_mac_through_arp() {
        in_netns(|| {
            let (_peer, want) = veth_to_peer("nb", 91);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let n = Neighbours::connect().expect("netlink");
                let backend = IpAddr::V4(Ipv4Addr::new(10, 91, 0, 2));
                let path = n.path(backend).await.expect("path");
                assert_eq!(path.next_hop, backend);
                assert!(path.ifindex > 0);
                assert_eq!(n.entry(path.ifindex, backend).await.expect("entry"), None, "nothing may be guessed");
                n.touch(path.ifindex, backend).await.expect("solicit");
                let mut found = None;
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(Entry::Dynamic(mac)) = n.entry(path.ifindex, backend).await.expect("entry") {
                        found = Some(mac);
                        break;
                    }
                }
                let found = found.expect("the kernel resolved the backend after touch()");
                assert_eq!(text(found), want);
            });
        });
    }

    /// Whether `address` gets a local route within a second: the kernel adds an IPv6 address's from a work queue,
    /// an instant after the address.
    async fn local_route(n: &Neighbours, address: IpAddr) -> bool {
        for _ in 0..100 {
            if n.path(address).await.is_ok_and(|p| p.local) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A backend at one of the node's own addresses, IPv4 or IPv6, is delivered through its stack (the MAC of the
    /// interface holding it); one on loopback alone is on no Ethernet interface.
    #[test]
    fn a_backend_at_the_nodes_own_address_is_local_over_either_family() {
        in_netns(|| {
            let (_peer, _) = veth_to_peer("nl", 92);
            sh("ip addr add fd00:92::1/64 dev xvn0 nodad");
            // From `ip` (this thread's namespace), not /sys (the mount's).
            let out = Command::new("ip").args(["-o", "link", "show", "xvn0"]).output().expect("ip link show");
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            let own_mac = line.split("link/ether ").nth(1).and_then(|r| r.split(' ').next()).expect("xvn0's MAC");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let n = Neighbours::connect().expect("netlink");
                let v4 = IpAddr::V4(Ipv4Addr::new(10, 92, 0, 1));
                let v6 = IpAddr::V6("fd00:92::1".parse().expect("literal"));
                assert!(n.path(v4).await.expect("IPv4 path").local);
                assert!(local_route(&n, v6).await, "no local route for fd00:92::1");
                match local(v4) {
                    Seen::Local { mac } => assert_eq!(text(mac), own_mac),
                    other => panic!("own IPv4 address: {other:?}"),
                }
                match local(v6) {
                    Seen::Local { mac } => assert_eq!(text(mac), own_mac),
                    other => panic!("own IPv6 address: {other:?}"),
                }
                sh("ip link set lo up && ip addr add fd00:93::1/128 dev lo nodad");
                let on_lo = IpAddr::V6("fd00:93::1".parse().expect("literal"));
                assert!(local_route(&n, on_lo).await, "no local route for fd00:93::1 on lo");
                match local(on_lo) {
                    Seen::NoRoute(why) => assert!(why.contains("on no Ethernet interface"), "{why}"),
                    other => panic!("an address on lo: {other:?}"),
                }
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
                let err =
                    n.path(IpAddr::V4(Ipv4Addr::new(10, 92, 0, 2))).await.expect_err("no route in an empty namespace");
                assert!(err.to_string().contains("10.92.0.2"), "{err}");
            });
        });
    }

    /// The watcher uses the entries it relies on, but never changes them: an operator's PERMANENT entry stays
    /// PERMANENT (NTF_USE would turn it into a dynamic one), a resolved one keeps its MAC.
    #[test]
    fn the_watcher_keeps_static_entries_static_and_resolved_ones_resolved() {
        in_netns(|| {
            let (_peer, want) = veth_to_peer("nt", 95);
            sh("ip neigh add 10.95.0.9 lladdr 02:95:00:00:00:09 dev xvn0 nud permanent");
            sh("ping -c 1 -W 1 10.95.0.2 > /dev/null");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (set_tx, set_rx) = mpsc::unbounded_channel();
                let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
                let n = Neighbours::connect().expect("netlink");
                tokio::spawn(watch(n, set_rx, move |batch| {
                    for change in batch {
                        let _ = seen_tx.send(change);
                    }
                }));
                set_tx
                    .send(Request::Watch(vec![Ipv4Addr::new(10, 95, 0, 2).into(), Ipv4Addr::new(10, 95, 0, 9).into()]))
                    .expect("watch");
                let mut macs = 0;
                while macs < 2 {
                    let (_, seen) = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                        .await
                        .expect("a report in time")
                        .expect("the watcher runs");
                    assert!(matches!(seen, Seen::Mac { .. }), "{seen:?}");
                    macs += 1;
                }
                // The first round used the dynamic entry; give the kernel time to act on it.
                tokio::time::sleep(Duration::from_millis(300)).await;
            });
            let show = |a: &str| {
                let out = Command::new("ip").args(["neigh", "show", a, "dev", "xvn0"]).output().expect("ip neigh");
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            let permanent = show("10.95.0.9");
            assert!(permanent.contains("lladdr 02:95:00:00:00:09 PERMANENT"), "{permanent}");
            let resolved = show("10.95.0.2");
            assert!(resolved.contains(&format!("lladdr {want}")), "{resolved}");
        });
    }

    /// The watcher reports the MAC, then Pending (not a loss) when the entry is deleted the way garbage collection
    /// deletes it, uses the entry again so the kernel resolves it, and reports Failed when the peer is gone.
    #[test]
    fn watcher_reports_mac_pending_and_failed_and_brings_a_deleted_entry_back() {
        in_netns(|| {
            let (peer, want) = veth_to_peer("nw", 94);
            // Quick failure detection for the last step; gc_stale_time 2 s makes the watcher use the entry every 1 s.
            sh(
                "sysctl -q -w net.ipv4.neigh.xvn0.gc_stale_time=2 net.ipv4.neigh.xvn0.retrans_time_ms=100 net.ipv4.neigh.xvn0.mcast_solicit=1 \
                net.ipv4.neigh.xvn0.ucast_solicit=1 net.ipv4.neigh.xvn0.base_reachable_time_ms=200 \
                net.ipv4.neigh.xvn0.delay_first_probe_time=0",
            );
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let backend = IpAddr::V4(Ipv4Addr::new(10, 94, 0, 2));
                let (set_tx, set_rx) = mpsc::unbounded_channel();
                let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
                let n = Neighbours::connect().expect("netlink");
                tokio::spawn(watch(n, set_rx, move |batch| {
                    for change in batch {
                        let _ = seen_tx.send(change);
                    }
                }));
                set_tx.send(Request::Watch(vec![backend])).expect("watch");
                let mut next = async || {
                    tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                        .await
                        .expect("a report in time")
                        .expect("the watcher runs")
                };
                assert!(matches!(next().await, (a, Seen::Pending { .. }) if a == backend));
                let (_, seen) = next().await;
                let Seen::Mac { mac, .. } = seen else { panic!("expected the MAC, got {seen:?}") };
                assert_eq!(text(mac), want);
                // What the garbage collector does: the entry disappears.
                sh("ip neigh flush dev xvn0");
                assert!(matches!(next().await, (_, Seen::Pending { .. })), "a deleted entry is pending, not failed");
                assert!(matches!(next().await, (_, Seen::Mac { .. })), "and is resolved again");
                // The backend goes away for good: the kernel's probes fail.
                sh(&format!("ip netns exec {} ip link set xvn1 down", peer.0));
                loop {
                    match next().await {
                        (_, Seen::Failed { .. }) => break,
                        (_, Seen::Mac { .. } | Seen::Pending { .. }) => continue,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            });
        });
    }

    /// Probes sent while the carrier was down leave an entry INCOMPLETE, and the kernel asks again only at its
    /// next `retrans_time` (10 s here, to tell the two apart): a renewal after link up resolves it now.
    #[test]
    fn renewing_after_link_up_resolves_an_entry_left_incomplete_while_the_link_was_down() {
        in_netns(|| {
            let (peer, want) = veth_to_peer("nr", 96);
            sh("sysctl -q -w net.ipv4.neigh.xvn0.retrans_time_ms=10000");
            let backend = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 2));
            // The peer's end goes down: our end loses its carrier, and an ARP request sent now goes nowhere.
            sh(&format!("ip netns exec {} ip link set xvn1 down", peer.0));
            wait_for_carrier(false);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let n = Neighbours::connect().expect("netlink");
                let path = n.path(backend).await.expect("path");
                n.touch(path.ifindex, backend).await.expect("solicit");
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(n.entry(path.ifindex, backend).await.expect("entry"), Some(Entry::Incomplete));
                sh(&format!("ip netns exec {} ip link set xvn1 up", peer.0));
                wait_for_carrier(true);
                let (set_tx, set_rx) = mpsc::unbounded_channel();
                let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
                tokio::spawn(watch(Neighbours::connect().expect("netlink"), set_rx, move |batch| {
                    for change in batch {
                        let _ = seen_tx.send(change);
                    }
                }));
                set_tx.send(Request::Watch(vec![backend])).expect("watch");
                let next = async |rx: &mut mpsc::UnboundedReceiver<(IpAddr, Seen)>, within: Duration| {
                    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
                };
                assert!(matches!(next(&mut seen_rx, Duration::from_secs(5)).await, Some((_, Seen::Pending { .. }))));
                // Using the entry again does not help: the kernel waits for its retry.
                assert_eq!(next(&mut seen_rx, Duration::from_millis(1500)).await, None, "resolved without renewal");
                set_tx.send(Request::Renew("xvn0".into())).expect("renew");
                let seen = next(&mut seen_rx, Duration::from_secs(5)).await;
                let Some((_, Seen::Mac { mac, .. })) = seen else { panic!("expected the MAC, got {seen:?}") };
                assert_eq!(text(mac), want);
            });
        });
    }
}
