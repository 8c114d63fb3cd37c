//! The VRRP transport: one raw IPv4 socket for protocol 112 per interface (the I/O edge), shared by every VRRP
//! instance on that interface: each advert carries its instance's source address and destinations, and received
//! packets go to the instance of their VRID. IPv6 has its own socket, [`super::socket6`].
//!
//! A raw socket, not a packet socket, so the kernel builds and routes the IPv4 header, and still
//! delivers the received IPv4 header so the TTL = 255 rule of RFC 5798 §5.1.1.3 can be checked.

use std::ffi::{CStr, CString, c_int, c_void};
use std::io;
use std::mem::{self, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use tokio::io::unix::AsyncFd;

use super::packet::{self, Address, Advert, ChecksumMode, EmitError, MULTICAST_GROUP, REQUIRED_TTL};

/// The VRRP socket could not be opened, or a send or receive failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} contains a NUL byte")]
    InvalidName(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("ifindex {index} of {interface} is out of range")]
    IndexOutOfRange { interface: String, index: u32 },
    #[error(
        "VRRP source address {source_address} is not on interface {interface} (its addresses of that family: {addresses:?})"
    )]
    NotOnInterface { source_address: IpAddr, interface: String, addresses: Vec<IpAddr> },
    #[error(
        "interface {interface} has no IPv6 link-local address to send VRRP adverts from (RFC 5798 §5.1.2.1); \
         enable IPv6 on it, or set source_address"
    )]
    NoLinkLocal { interface: String },
    #[error("encoding a VRRP advert for {interface}: {source}")]
    Encode {
        interface: String,
        #[source]
        source: EmitError,
    },
    #[error(
        "sendmsg() of a VRRP advert from {source_address} on {interface} failed for {} of {total} destinations: {}",
        failures.len(),
        failures.iter().map(|(dst, e)| format!("{dst}: {e}")).collect::<Vec<_>>().join("; ")
    )]
    Send { source_address: IpAddr, interface: String, total: usize, failures: Vec<(IpAddr, io::Error)> },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Maps an I/O error to [`Error::Io`] saying what was being done.
pub(super) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What errors call this socket.
const LABEL: &str = "VRRP";
/// The DSCP "network control" class (CS6) keepalived marks adverts with (TOS 0xc0, vrrp.md §4.1).
const TOS_NETWORK_CONTROL: c_int = 0xc0;
/// An IPv4 VRRP packet is at most 60 + 8 + 255 × 4 = 1088 bytes.
const RECV_BUF_LEN: usize = 2048;

/// An interface's index and addresses, in the kernel's order (primary addresses first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub index: u32,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl InterfaceInfo {
    /// Looks the interface up in the calling thread's network namespace.
    ///
    /// # Errors
    /// When the interface does not exist or the addresses cannot be listed.
    pub fn lookup(name: &str) -> Result<Self> {
        let addresses = interface_addresses(name)?;
        Ok(InterfaceInfo {
            name: name.to_owned(),
            index: interface_index(name)?,
            ipv4: addresses
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            ipv6: addresses
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })
                .collect(),
        })
    }

    /// The address adverts are sourced from by default (RFC 5798 §5.1.1.1: the primary address).
    pub fn primary_ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4.first().copied()
    }

    /// The address IPv6 adverts are sourced from by default: the interface's link-local address
    /// (RFC 5798 §5.1.2.1).
    pub fn link_local_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6.iter().copied().find(Ipv6Addr::is_unicast_link_local)
    }
}

/// `if_nametoindex(3)`.
///
/// # Errors
/// When no interface has this name.
pub fn interface_index(name: &str) -> Result<u32> {
    let cname = CString::new(name).map_err(|_| Error::InvalidName(name.to_string()))?;
    // SAFETY: cname is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io_error(format!("if_nametoindex({name}): no such interface"))(io::Error::last_os_error()));
    }
    Ok(index)
}

/// The IPv4 and IPv6 addresses of `name` (labels such as `eth0:1` included), from `getifaddrs(3)`.
fn interface_addresses(name: &str) -> Result<Vec<IpAddr>> {
    struct List(*mut libc::ifaddrs);
    impl Drop for List {
        fn drop(&mut self) {
            // SAFETY: the pointer came from a successful getifaddrs and is freed once.
            unsafe { libc::freeifaddrs(self.0) };
        }
    }
    let mut head = ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free in List::drop.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(
            io_error(format!("getifaddrs() while listing the addresses of {name}"))(io::Error::last_os_error()),
        );
    }
    let list = List(head);
    let mut addresses = Vec::new();
    let mut cur = list.0;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, alive until `list` drops.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifa_name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes();
        let matches = ifa_name == name.as_bytes()
            || ifa_name.strip_prefix(name.as_bytes()).is_some_and(|rest| rest.starts_with(b":"));
        // SAFETY: ifa_addr is non-null and points at a sockaddr of at least sa_family's size.
        let family = c_int::from(unsafe { (*ifa.ifa_addr).sa_family });
        if !matches {
            continue;
        }
        if family == libc::AF_INET {
            // SAFETY: sa_family is AF_INET, so the sockaddr is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
        } else if family == libc::AF_INET6 {
            // SAFETY: sa_family is AF_INET6, so the sockaddr is a sockaddr_in6.
            let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
            addresses.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
        }
    }
    Ok(addresses)
}

/// The raw VRRP socket of one interface.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
    interface: String,
    ifindex: u32,
    /// Packets from these are our own (the interface's addresses when opened, and the sources).
    own: Vec<Ipv4Addr>,
}

impl VrrpSocket {
    /// Opens the socket on `interface`, for adverts sent from `sources` (each instance's on this interface);
    /// `multicast`: some instance here uses 224.0.0.18, so the socket joins the group.
    ///
    /// The socket is not `bind(2)`-ed to a source: a raw socket bound to an address only receives
    /// packets addressed to it, which would drop every multicast advert. The source is set per packet
    /// with `IP_PKTINFO` instead.
    ///
    /// Must be called inside a tokio runtime (the fd is registered with its reactor), in the network
    /// namespace of `interface`.
    ///
    /// # Errors
    /// When the interface is missing, a source is not one of its addresses, or a socket call fails (needs
    /// CAP_NET_RAW).
    pub fn open(interface: &str, sources: &[Ipv4Addr], multicast: bool) -> Result<Self> {
        let info = InterfaceInfo::lookup(interface)?;
        if let Some(source) = sources.iter().find(|s| !info.ipv4.contains(s)) {
            return Err(Error::NotOnInterface {
                source_address: IpAddr::V4(*source),
                interface: interface.to_string(),
                addresses: info.ipv4.iter().copied().map(IpAddr::V4).collect(),
            });
        }
        let fd = open_raw(libc::AF_INET, LABEL, interface)?;
        let raw = fd.as_raw_fd();
        let ctx = |opt: &str| format!("setsockopt({opt}) on the {LABEL} socket of {interface}");
        let ttl = c_int::from(REQUIRED_TTL);
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_TTL, &ttl).map_err(io_error(ctx("IP_TTL")))?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &ttl).map_err(io_error(ctx("IP_MULTICAST_TTL")))?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &0 as &c_int)
            .map_err(io_error(ctx("IP_MULTICAST_LOOP")))?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_TOS, &TOS_NETWORK_CONTROL).map_err(io_error(ctx("IP_TOS")))?;
        let ifindex = c_int::try_from(info.index)
            .map_err(|_| Error::IndexOutOfRange { interface: interface.to_string(), index: info.index })?;
        // Multicast leaves through this interface; each advert names its source itself (IP_PKTINFO).
        let out = libc::ip_mreqn {
            imr_multiaddr: in_addr(Ipv4Addr::UNSPECIFIED),
            imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
            imr_ifindex: ifindex,
        };
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &out).map_err(io_error(ctx("IP_MULTICAST_IF")))?;
        if multicast {
            let join = libc::ip_mreqn {
                imr_multiaddr: in_addr(MULTICAST_GROUP),
                imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
                imr_ifindex: ifindex,
            };
            setsockopt(raw, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &join)
                .map_err(io_error(ctx("IP_ADD_MEMBERSHIP 224.0.0.18")))?;
        }
        let fd = register(fd, LABEL, interface)?;
        let mut own = info.ipv4;
        own.extend_from_slice(sources);
        Ok(VrrpSocket { fd, interface: interface.to_owned(), ifindex: info.index, own })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Sends `advert` from `source` to the group (`peers` empty), or one copy to each unicast peer, each with its
    /// own checksum (the pseudo-header holds the real destination).
    ///
    /// # Errors
    /// When the advert cannot be encoded, or sending to any destination failed; the other
    /// destinations are still tried.
    ///
    /// # Cancel safety
    /// Not cancel safe: when cancelled, some unicast peers may have been sent the advert and others not.
    pub async fn send_advert(
        &self,
        advert: &Advert,
        checksum: ChecksumMode,
        source: Ipv4Addr,
        peers: &[Ipv4Addr],
    ) -> Result<()> {
        send_each(&self.fd, &self.interface, advert, checksum, source, peers, |fd, payload, dst| {
            sendmsg_from(fd, payload, source, dst, self.ifindex)
        })
        .await
    }

    /// The next IPv4 packet (header included) for protocol 112, skipping our own.
    ///
    /// An oversized packet is returned truncated; [`packet::parse_ipv4`] then discards it as such.
    ///
    /// # Errors
    /// When `recv(2)` fails.
    ///
    /// # Cancel safety
    /// Cancel safe: a packet is only read from the socket when it is returned.
    pub async fn recv(&self) -> Result<Vec<u8>> {
        let mut buf = [0u8; RECV_BUF_LEN];
        loop {
            let received =
                recv_when_readable(&self.fd, LABEL, "recv()", &self.interface, |fd| recv_truncating(fd, &mut buf))
                    .await?;
            let bytes = &buf[..received.min(buf.len())];
            if source_of(bytes).is_some_and(|src| self.own.contains(&src)) {
                continue;
            }
            return Ok(bytes.to_vec());
        }
    }
}

/// Opens a raw, non-blocking socket of `family` for protocol 112, bound to `interface` (`SO_BINDTODEVICE`);
/// `label` names the socket in errors.
pub(super) fn open_raw(family: c_int, label: &str, interface: &str) -> Result<OwnedFd> {
    let family_name = if family == libc::AF_INET6 { "AF_INET6" } else { "AF_INET" };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(family, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, c_int::from(packet::PROTOCOL))
    };
    if raw < 0 {
        return Err(io_error(format!(
            "socket({family_name}, SOCK_RAW, 112) for VRRP on {interface} (needs CAP_NET_RAW)"
        ))(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_bytes(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BINDTODEVICE, interface.as_bytes())
        .map_err(io_error(format!("setsockopt(SO_BINDTODEVICE) on the {label} socket of {interface}")))?;
    Ok(fd)
}

/// Registers the socket with the tokio reactor (must be called inside a runtime).
pub(super) fn register(fd: OwnedFd, label: &str, interface: &str) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives and always returns the same fd.
    unsafe { AsyncFd::register(fd) }
        .map_err(io::Error::from)
        .map_err(io_error(format!("registering the {label} socket of {interface} with the tokio reactor")))
}

/// Sends `advert` from `source` to the family's group (`peers` empty), or one copy to each unicast peer, each
/// encoded for its destination, with `sendmsg(fd, payload, dst)`; every destination is tried, and the failures
/// are reported together.
pub(super) async fn send_each<A: Address>(
    fd: &AsyncFd<OwnedFd>,
    interface: &str,
    advert: &Advert<A>,
    checksum: ChecksumMode,
    source: A,
    peers: &[A],
    sendmsg: impl Fn(RawFd, &[u8], A) -> io::Result<usize>,
) -> Result<()> {
    let multicast = [A::GROUP];
    let destinations = if peers.is_empty() { &multicast[..] } else { peers };
    let mut failures = Vec::new();
    for dst in destinations {
        let bytes = advert
            .to_bytes(source, *dst, checksum)
            .map_err(|e| Error::Encode { interface: interface.to_owned(), source: e })?;
        if let Err(err) = send_when_writable(fd, |raw| sendmsg(raw, &bytes, *dst)).await {
            failures.push((dst.to_ip(), err));
        }
    }
    if !failures.is_empty() {
        return Err(Error::Send {
            source_address: source.to_ip(),
            interface: interface.to_owned(),
            total: destinations.len(),
            failures,
        });
    }
    Ok(())
}

async fn send_when_writable(fd: &AsyncFd<OwnedFd>, mut send: impl FnMut(RawFd) -> io::Result<usize>) -> io::Result<()> {
    loop {
        let mut guard = fd.writable().await?;
        // Err: the readiness was stale (EAGAIN); try_io cleared it, so wait again.
        if let Ok(result) = guard.try_io(|fd| send(fd.as_raw_fd())) {
            return result.map(drop);
        }
    }
}

/// Waits until the socket is readable and receives one packet with `recv`; `call` names it in errors.
///
/// Cancel safe: a packet is only read from the socket when it is returned.
pub(super) async fn recv_when_readable<T>(
    fd: &AsyncFd<OwnedFd>,
    label: &str,
    call: &str,
    interface: &str,
    mut recv: impl FnMut(RawFd) -> io::Result<T>,
) -> Result<T> {
    loop {
        let mut guard = fd.readable().await.map_err(io_error(format!("waiting for {label} packets on {interface}")))?;
        match guard.try_io(|fd| recv(fd.as_raw_fd())) {
            Ok(result) => return result.map_err(io_error(format!("{call} on the {label} socket of {interface}"))),
            Err(_would_block) => continue,
        }
    }
}

/// The IPv4 source address of a raw packet, if it has a header.
fn source_of(packet: &[u8]) -> Option<Ipv4Addr> {
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(src))
}

fn in_addr(addr: Ipv4Addr) -> libc::in_addr {
    libc::in_addr { s_addr: u32::from(addr).to_be() }
}

pub(super) fn setsockopt<T>(fd: RawFd, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: value points at a live T of len bytes.
    let rc = unsafe { libc::setsockopt(fd, level, name, ptr::from_ref(value).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

pub(super) fn setsockopt_bytes(fd: RawFd, level: c_int, name: c_int, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: value is a live slice of len bytes.
    let rc = unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `sendmsg(2)` to `dst` with an `IP_PKTINFO` that sets the source address (`ipi_spec_dst`).
fn sendmsg_from(fd: RawFd, payload: &[u8], src: Ipv4Addr, dst: Ipv4Addr, ifindex: u32) -> io::Result<usize> {
    let mut name: libc::sockaddr_in = {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        unsafe { mem::zeroed() }
    };
    name.sin_family = libc::AF_INET as libc::sa_family_t;
    name.sin_addr = in_addr(dst);
    let info = libc::in_pktinfo {
        ipi_ifindex: c_int::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        ipi_spec_dst: in_addr(src),
        ipi_addr: in_addr(Ipv4Addr::UNSPECIFIED),
    };
    sendmsg_with_control(fd, payload, &mut name, libc::IPPROTO_IP, libc::IP_PKTINFO, info)
}

/// `sendmsg(2)` of `payload` to the socket address `name` with one control message (`level`, `kind`, `data`).
pub(super) fn sendmsg_with_control<N, C>(
    fd: RawFd,
    payload: &[u8],
    name: &mut N,
    level: c_int,
    kind: c_int,
    data: C,
) -> io::Result<usize> {
    let data_len = u32::try_from(size_of::<C>()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let control_len = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr; room for a pktinfo of either family.
    let mut control = [0u64; 8];
    if control_len > size_of_val(&control) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut iov = libc::iovec { iov_base: payload.as_ptr().cast_mut().cast::<c_void>(), iov_len: payload.len() };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = ptr::from_mut(name).cast();
    msg.msg_namelen =
        libc::socklen_t::try_from(size_of::<N>()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len;
    // SAFETY: msg_control points at control_len bytes (checked above), enough for one aligned cmsghdr carrying a
    // C, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in bounds.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<C>(), data);
        libc::sendmsg(fd, &msg, 0)
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// `recv(2)` with `MSG_TRUNC`, so the real length of an oversized packet is reported.
fn recv_truncating(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live, writable slice of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::runtime::Handle;
    use tokio::time::timeout;

    use super::*;
    use crate::testnet::{self, VethPair, veth_pair};
    use crate::vrrp::packet::{Received, RxFilter, parse_ipv4};

    const A1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const A3: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
    const B2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const B4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 4);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

    fn pair() -> VethPair {
        veth_pair(
            &["addr add 10.77.0.1/24 dev {if}", "addr add 10.77.0.3/24 dev {if}"],
            &["addr add 10.77.0.2/24 dev {if}", "addr add 10.77.0.4/24 dev {if}"],
        )
        .unwrap()
    }

    fn open(ns: &testnet::Netns, interface: &str, sources: &[Ipv4Addr], multicast: bool) -> Result<VrrpSocket> {
        let handle = Handle::current();
        let interface = interface.to_owned();
        let sources = sources.to_vec();
        ns.run(move || {
            let _rt = handle.enter();
            VrrpSocket::open(&interface, &sources, multicast)
        })
        .expect("the namespace's thread runs")
    }

    fn advert(priority: u8) -> Advert {
        advert_of(51, priority)
    }

    fn advert_of(vrid: u8, priority: u8) -> Advert {
        Advert { vrid, priority, max_adver_int: 100, addresses: vec![VIP] }
    }

    async fn recv_one(sock: &VrrpSocket) -> Vec<u8> {
        timeout(Duration::from_secs(3), sock.recv()).await.expect("no VRRP packet within 3 s").unwrap()
    }

    fn parse(bytes: &[u8], peers: &[Ipv4Addr]) -> Received {
        parse_ipv4(bytes, &RxFilter { vrid: 51, unicast_peers: peers }).unwrap()
    }

    #[tokio::test]
    async fn multicast_advert_crosses_the_link_with_ttl_255() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A1], true).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], true).unwrap();
        a.send_advert(&advert(150), ChecksumMode::PseudoHeader, A1, &[]).await.unwrap();
        let bytes = recv_one(&b).await;
        assert_eq!(bytes[1], 0xc0, "TOS network control");
        let rx = parse(&bytes, &[]);
        assert_eq!((rx.src, rx.dst, rx.ttl), (A1, MULTICAST_GROUP, 255));
        assert_eq!(rx.advert, advert(150));
        assert_eq!(rx.checksum, ChecksumMode::PseudoHeader);
        // And back, in the RFC 9568 form.
        b.send_advert(&advert(100), ChecksumMode::Rfc9568, B2, &[]).await.unwrap();
        let rx = parse(&recv_one(&a).await, &[]);
        assert_eq!((rx.src, rx.checksum), (B2, ChecksumMode::Rfc9568));
    }

    fn getsockopt_int(sock: &VrrpSocket, level: c_int, name: c_int) -> c_int {
        let mut value: c_int = -1;
        let mut len = size_of::<c_int>() as libc::socklen_t;
        // SAFETY: value and len are live and sized for an int.
        let rc = unsafe {
            libc::getsockopt(sock.fd.get_ref().as_raw_fd(), level, name, ptr::from_mut(&mut value).cast(), &mut len)
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    #[tokio::test]
    async fn socket_options_follow_rfc_5798() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A1], true).unwrap();
        let opt = |level, name| getsockopt_int(&a, level, name);
        assert_eq!(opt(libc::IPPROTO_IP, libc::IP_TTL), 255);
        assert_eq!(opt(libc::IPPROTO_IP, libc::IP_MULTICAST_TTL), 255);
        assert_eq!(opt(libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP), 0);
        assert_eq!(opt(libc::IPPROTO_IP, libc::IP_TOS), 0xc0);
        let mut name = [0u8; libc::IFNAMSIZ];
        let mut len = name.len() as libc::socklen_t;
        // SAFETY: name and len are live and sized for an interface name.
        let rc = unsafe {
            libc::getsockopt(
                a.fd.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let bound = CStr::from_bytes_until_nul(&name).unwrap();
        assert_eq!(bound.to_str().unwrap(), p.a_if);
    }

    #[tokio::test]
    async fn recv_skips_packets_from_own_addresses() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A1], true).unwrap();
        let a_listener = open(&p.a, &p.a_if, &[A3], true).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], true).unwrap();
        // Loop a's multicast back so a_listener, on the same interface, sees it.
        setsockopt(a.fd.get_ref().as_raw_fd(), libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &1 as &c_int).unwrap();
        a.send_advert(&advert(150), ChecksumMode::PseudoHeader, A1, &[]).await.unwrap();
        b.send_advert(&advert(100), ChecksumMode::PseudoHeader, B2, &[]).await.unwrap();
        let rx = parse(&recv_one(&a_listener).await, &[]);
        assert_eq!(rx.src, B2, "our own looped advert must be skipped");
    }

    #[tokio::test]
    async fn unicast_sends_one_copy_to_each_peer_with_its_own_checksum() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A1], false).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], false).unwrap();
        a.send_advert(&advert(150), ChecksumMode::PseudoHeader, A1, &[B2, B4]).await.unwrap();
        let mut dsts = Vec::new();
        for _ in 0..2 {
            let rx = parse(&recv_one(&b).await, &[A1]);
            assert_eq!((rx.src, rx.ttl), (A1, 255));
            assert_eq!(rx.checksum, ChecksumMode::PseudoHeader);
            dsts.push(rx.dst);
        }
        dsts.sort();
        assert_eq!(dsts, [B2, B4]);
    }

    #[tokio::test]
    async fn unicast_socket_does_not_join_the_group() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A1], true).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], false).unwrap();
        a.send_advert(&advert(150), ChecksumMode::PseudoHeader, A1, &[]).await.unwrap();
        assert!(timeout(Duration::from_millis(300), b.recv()).await.is_err());
    }

    #[tokio::test]
    async fn advert_is_sourced_from_the_given_secondary_address() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A3], false).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], true).unwrap();
        a.send_advert(&advert(150), ChecksumMode::PseudoHeader, A3, &[B2]).await.unwrap();
        let rx = parse(&recv_one(&b).await, &[A3]);
        assert_eq!(rx.src, A3);
        let m = open(&p.a, &p.a_if, &[A3], true).unwrap();
        m.send_advert(&advert(150), ChecksumMode::PseudoHeader, A3, &[]).await.unwrap();
        let rx = parse(&recv_one(&b).await, &[]);
        assert_eq!((rx.src, rx.dst), (A3, MULTICAST_GROUP));
    }

    #[tokio::test]
    async fn failed_unicast_peer_is_reported_and_others_still_sent() {
        let p = pair();
        // A broadcast "peer" is refused by the kernel (EACCES without SO_BROADCAST); B2 still gets
        // its copy.
        let a = open(&p.a, &p.a_if, &[A1], false).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], false).unwrap();
        let err =
            a.send_advert(&advert(150), ChecksumMode::PseudoHeader, A1, &[Ipv4Addr::BROADCAST, B2]).await.unwrap_err();
        assert!(matches!(&err, Error::Send { total: 2, failures, .. } if failures.len() == 1), "{err}");
        let err = err.to_string();
        assert!(err.contains("1 of 2 destinations"), "{err}");
        assert!(err.contains("255.255.255.255"), "{err}");
        assert!(err.contains(&p.a_if), "{err}");
        assert_eq!(parse(&recv_one(&b).await, &[A1]).dst, B2);
    }

    #[tokio::test]
    async fn open_refuses_source_not_on_the_interface() {
        let p = pair();
        let err = open(&p.a, &p.a_if, &[B2], true).unwrap_err();
        assert!(matches!(err, Error::NotOnInterface { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("10.77.0.2") && err.contains(&p.a_if), "{err}");
    }

    #[tokio::test]
    async fn one_socket_carries_each_instances_adverts_from_its_own_source() {
        let p = pair();
        // Two instances on one interface: VRID 51 from A1 by multicast, VRID 52 from A3 to a unicast peer.
        let a = open(&p.a, &p.a_if, &[A1, A3], true).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], true).unwrap();
        a.send_advert(&advert_of(51, 150), ChecksumMode::PseudoHeader, A1, &[]).await.unwrap();
        a.send_advert(&advert_of(52, 100), ChecksumMode::PseudoHeader, A3, &[B2]).await.unwrap();
        let first = parse_ipv4(&recv_one(&b).await, &RxFilter { vrid: 51, unicast_peers: &[] }).unwrap();
        assert_eq!((first.src, first.dst, first.advert.priority), (A1, MULTICAST_GROUP, 150));
        let second = parse_ipv4(&recv_one(&b).await, &RxFilter { vrid: 52, unicast_peers: &[A3] }).unwrap();
        assert_eq!((second.src, second.dst, second.advert.priority), (A3, B2, 100));
        // And both sources count as our own: the other end's adverts arrive, ours looped back would not.
        b.send_advert(&advert_of(52, 90), ChecksumMode::PseudoHeader, B2, &[A3]).await.unwrap();
        assert_eq!(parse_ipv4(&recv_one(&a).await, &RxFilter { vrid: 52, unicast_peers: &[B2] }).unwrap().src, B2);
    }

    #[tokio::test]
    async fn open_names_a_missing_interface() {
        let p = pair();
        let err = open(&p.a, "xvt-missing", &[A1], true).unwrap_err().to_string();
        assert!(err.contains("xvt-missing"), "{err}");
    }

    #[test]
    fn interface_info_lists_primary_address_first() {
        let p = pair();
        let name = p.a_if.clone();
        let info = p.a.run(move || InterfaceInfo::lookup(&name)).unwrap().unwrap();
        assert_eq!(info.ipv4, [A1, A3]);
        assert_eq!(info.primary_ipv4(), Some(A1));
        let name = p.a_if.clone();
        let index = p.a.run(move || interface_index(&name)).unwrap().unwrap();
        assert_eq!(info.index, index);
        assert!(index > 1);
    }

    #[test]
    fn interface_info_includes_labelled_addresses() {
        let p =
            veth_pair(&["addr add 10.78.0.1/24 dev {if}", "addr add 10.78.1.1/24 dev {if} label {if}:v"], &[]).unwrap();
        let name = p.a_if.clone();
        let info = p.a.run(move || InterfaceInfo::lookup(&name)).unwrap().unwrap();
        assert_eq!(info.ipv4, [Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 1, 1)]);
    }

    #[test]
    fn source_of_reads_the_ipv4_source() {
        let mut header = [0u8; 20];
        header[12..16].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(source_of(&header), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(source_of(&header[..15]), None);
    }
}
