//! The IPv6 VRRP transport: one raw IPv6 socket for protocol 112 per interface (the I/O edge), shared by the
//! IPv6 routers of every instance on that interface.
//!
//! An IPv6 raw socket never delivers the IPv6 header, so what RFC 5798 §7.1 checks comes beside the message:
//! the source from `recvmsg(2)`'s address, the destination from `IPV6_PKTINFO`, the hop limit from
//! `IPV6_HOPLIMIT` ([`Datagram`]; [`super::packet::parse_ipv6`] checks them). Adverts are sent with hop limit
//! 255 to ff02::12 from the interface's link-local address (RFC 5798 §5.1.2), or to each unicast peer. The
//! checksum is computed here (the IPv6 pseudo-header, [`super::packet::checksum`]), not by the kernel
//! (`IPV6_CHECKSUM`): a kernel-verified checksum would drop bad adverts before they could be counted.
//!
//! Joining ff02::12 (`IPV6_ADD_MEMBERSHIP`) makes the kernel send MLD reports for the group, which is what
//! switches with MLD snooping need to deliver adverts to this port.

use std::ffi::{c_int, c_void};
use std::io;
use std::mem::{self, size_of};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

use tokio::io::unix::AsyncFd;

use super::packet::{Advert, ChecksumMode, MULTICAST_GROUP_V6, REQUIRED_TTL};
use super::socket::{
    Error, InterfaceInfo, Result, io_error, open_raw, recv_when_readable, register, send_each, sendmsg_with_control,
    setsockopt,
};

/// What errors call this socket.
const LABEL: &str = "IPv6 VRRP";
/// The traffic class keepalived marks adverts with (CS6, network control), as for IPv4's TOS.
const TCLASS_NETWORK_CONTROL: c_int = 0xc0;
/// An IPv6 VRRP message is at most 8 + 255 × 16 = 4088 bytes.
const RECV_BUF_LEN: usize = 4096;

/// A VRRP message as an IPv6 raw socket delivered it, with what the kernel reported about its IPv6 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The VRRP message (no IP header); truncated if it was longer than any valid advert.
    pub message: Vec<u8>,
    pub src: Ipv6Addr,
    /// The destination (ff02::12, or this node's address for unicast); unspecified when the kernel did not say.
    pub dst: Ipv6Addr,
    /// 0 when the kernel did not say, which the hop-limit check then refuses.
    pub hop_limit: u8,
}

/// The raw IPv6 VRRP socket of one interface.
#[derive(Debug)]
pub struct Vrrp6Socket {
    fd: AsyncFd<OwnedFd>,
    interface: String,
    ifindex: u32,
    /// The source adverts go from when an instance sets none: the interface's link-local address.
    link_local: Ipv6Addr,
    /// Packets from these are our own (the interface's addresses when opened, and the sources).
    own: Vec<Ipv6Addr>,
}

impl Vrrp6Socket {
    /// Opens the socket on `interface`, for adverts sent from the interface's link-local address and from
    /// `sources` (the instances' `source_address`es here); `multicast`: some instance here uses ff02::12, so the
    /// socket joins the group (and the kernel reports the membership with MLD).
    ///
    /// Must be called inside a tokio runtime, in the network namespace of `interface`.
    ///
    /// # Errors
    /// When the interface is missing or has no link-local address, a source is not one of its addresses, or a
    /// socket call fails (needs CAP_NET_RAW).
    pub fn open(interface: &str, sources: &[Ipv6Addr], multicast: bool) -> Result<Self> {
        let info = InterfaceInfo::lookup(interface)?;
        let link_local = info.link_local_ipv6().ok_or_else(|| Error::NoLinkLocal { interface: interface.into() })?;
        if let Some(source) = sources.iter().find(|s| !info.ipv6.contains(s)) {
            return Err(Error::NotOnInterface {
                source_address: IpAddr::V6(*source),
                interface: interface.to_string(),
                addresses: info.ipv6.iter().copied().map(IpAddr::V6).collect(),
            });
        }
        let fd = open_raw(libc::AF_INET6, LABEL, interface)?;
        let raw = fd.as_raw_fd();
        let ctx = |opt: &str| format!("setsockopt({opt}) on the {LABEL} socket of {interface}");
        let ifindex = c_int::try_from(info.index)
            .map_err(|_| Error::IndexOutOfRange { interface: interface.to_string(), index: info.index })?;
        let hops = c_int::from(REQUIRED_TTL);
        for (name, opt, value) in [
            ("IPV6_UNICAST_HOPS", libc::IPV6_UNICAST_HOPS, hops),
            ("IPV6_MULTICAST_HOPS", libc::IPV6_MULTICAST_HOPS, hops),
            ("IPV6_MULTICAST_LOOP", libc::IPV6_MULTICAST_LOOP, 0),
            ("IPV6_MULTICAST_IF", libc::IPV6_MULTICAST_IF, ifindex),
            ("IPV6_TCLASS", libc::IPV6_TCLASS, TCLASS_NETWORK_CONTROL),
            ("IPV6_RECVPKTINFO", libc::IPV6_RECVPKTINFO, 1),
            ("IPV6_RECVHOPLIMIT", libc::IPV6_RECVHOPLIMIT, 1),
        ] {
            setsockopt(raw, libc::IPPROTO_IPV6, opt, &value).map_err(io_error(ctx(name)))?;
        }
        if multicast {
            let join = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr { s6_addr: MULTICAST_GROUP_V6.octets() },
                ipv6mr_interface: info.index,
            };
            setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &join)
                .map_err(io_error(ctx("IPV6_ADD_MEMBERSHIP ff02::12")))?;
        }
        let fd = register(fd, LABEL, interface)?;
        let mut own = info.ipv6;
        own.extend_from_slice(sources);
        Ok(Vrrp6Socket { fd, interface: interface.to_owned(), ifindex: info.index, link_local, own })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's link-local address: the default source of adverts, and this router's primary address in
    /// the election's tie-break.
    pub fn link_local(&self) -> Ipv6Addr {
        self.link_local
    }

    /// Sends `advert` from `source` to ff02::12 (`peers` empty), or one copy to each unicast peer, each with its
    /// own checksum (the pseudo-header holds the real destination).
    ///
    /// # Errors
    /// When the advert cannot be encoded, or sending to any destination failed; the other destinations are still
    /// tried.
    ///
    /// # Cancel safety
    /// Not cancel safe: when cancelled, some unicast peers may have been sent the advert and others not.
    pub async fn send_advert(&self, advert: &Advert<Ipv6Addr>, source: Ipv6Addr, peers: &[Ipv6Addr]) -> Result<()> {
        // The IPv6 checksum always covers the pseudo-header; the mode only matters for IPv4.
        send_each(&self.fd, &self.interface, advert, ChecksumMode::PseudoHeader, source, peers, |fd, payload, dst| {
            sendmsg_from(fd, payload, source, dst, self.ifindex)
        })
        .await
    }

    /// The next VRRP message with its IPv6 source, destination and hop limit, skipping our own.
    ///
    /// # Errors
    /// When `recvmsg(2)` fails.
    ///
    /// # Cancel safety
    /// Cancel safe: a packet is only read from the socket when it is returned.
    pub async fn recv(&self) -> Result<Datagram> {
        let mut buf = [0u8; RECV_BUF_LEN];
        loop {
            let received =
                recv_when_readable(&self.fd, LABEL, "recvmsg()", &self.interface, |fd| recvmsg_with_info(fd, &mut buf))
                    .await?;
            if self.own.contains(&received.src) {
                continue;
            }
            return Ok(received);
        }
    }
}

fn sockaddr_in6(addr: Ipv6Addr, ifindex: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut name: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    name.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    name.sin6_addr = libc::in6_addr { s6_addr: addr.octets() };
    // Link-local and multicast destinations need their interface; others ignore it.
    if addr.is_unicast_link_local() || addr.is_multicast() {
        name.sin6_scope_id = ifindex;
    }
    name
}

/// `sendmsg(2)` to `dst` with an `IPV6_PKTINFO` that sets the source address and the interface.
fn sendmsg_from(fd: RawFd, payload: &[u8], src: Ipv6Addr, dst: Ipv6Addr, ifindex: u32) -> io::Result<usize> {
    let mut name = sockaddr_in6(dst, ifindex);
    let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: src.octets() }, ipi6_ifindex: ifindex };
    sendmsg_with_control(fd, payload, &mut name, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info)
}

/// `recvmsg(2)` of one message with its source, and the destination and hop limit from the control messages.
fn recvmsg_with_info(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    // Room for an in6_pktinfo and an int, each in its own cmsghdr, with slack.
    const CONTROL_LEN: usize = 128;
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut name: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast::<c_void>(), iov_len: buf.len() };
    let mut control = [0u64; CONTROL_LEN / 8];
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = ptr::from_mut(&mut name).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN;
    // SAFETY: every pointer in msg points at a live buffer of the length it is given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut hop_limit = 0u8;
    // SAFETY: the kernel filled msg_controllen bytes of control with well-formed cmsghdrs; CMSG_NXTHDR stops at
    // the end, and each payload is read unaligned with the size its type says.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let level = (*cmsg).cmsg_level;
            let kind = (*cmsg).cmsg_type;
            let len = (*cmsg).cmsg_len as usize;
            if level == libc::IPPROTO_IPV6 {
                if kind == libc::IPV6_PKTINFO && len >= libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize {
                    let info = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                    dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                } else if kind == libc::IPV6_HOPLIMIT && len >= libc::CMSG_LEN(size_of::<c_int>() as u32) as usize {
                    let hops = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>());
                    hop_limit = u8::try_from(hops).unwrap_or(0);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Datagram {
        message: buf[..n.min(buf.len())].to_vec(),
        src: Ipv6Addr::from(name.sin6_addr.s6_addr),
        dst,
        hop_limit,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::runtime::Handle;
    use tokio::time::timeout;

    use super::*;
    use crate::testnet::{self, VethPair, veth_pair};
    use crate::vrrp::packet::{RxFilter, parse_ipv6};

    const LL_A: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xa);
    const LL_B: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xb);
    const A1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
    const B2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
    const B4: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 4);
    const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100);

    /// Link-local addresses of our choosing, usable at once (no automatic one, no DAD).
    fn pair() -> VethPair {
        veth_pair(
            &[
                "link set {if} addrgenmode none",
                "addr add fe80::a/64 dev {if} nodad",
                "addr add fd00:77::1/64 dev {if} nodad",
            ],
            &[
                "link set {if} addrgenmode none",
                "addr add fe80::b/64 dev {if} nodad",
                "addr add fd00:77::2/64 dev {if} nodad",
                "addr add fd00:77::4/64 dev {if} nodad",
            ],
        )
        .unwrap()
    }

    fn open(ns: &testnet::Netns, interface: &str, sources: &[Ipv6Addr], multicast: bool) -> Result<Vrrp6Socket> {
        let handle = Handle::current();
        let interface = interface.to_owned();
        let sources = sources.to_vec();
        ns.run(move || {
            let _rt = handle.enter();
            Vrrp6Socket::open(&interface, &sources, multicast)
        })
        .expect("the namespace's thread runs")
    }

    fn advert(priority: u8) -> Advert<Ipv6Addr> {
        Advert { vrid: 61, priority, max_adver_int: 100, addresses: vec![VIP] }
    }

    async fn recv_one(sock: &Vrrp6Socket) -> Datagram {
        timeout(Duration::from_secs(3), sock.recv()).await.expect("no VRRP packet within 3 s").unwrap()
    }

    #[tokio::test]
    async fn multicast_advert_goes_from_the_link_local_address_with_hop_limit_255() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[], true).unwrap();
        let b = open(&p.b, &p.b_if, &[], true).unwrap();
        assert_eq!((a.link_local(), b.link_local()), (LL_A, LL_B));
        a.send_advert(&advert(150), a.link_local(), &[]).await.unwrap();
        let got = recv_one(&b).await;
        assert_eq!((got.src, got.dst, got.hop_limit), (LL_A, MULTICAST_GROUP_V6, 255));
        let filter = RxFilter { vrid: 61, unicast_peers: &[] };
        let rx = parse_ipv6(&got.message, got.src, got.dst, got.hop_limit, &filter).unwrap();
        assert_eq!(rx.advert, advert(150));
        // And back.
        b.send_advert(&advert(100), b.link_local(), &[]).await.unwrap();
        let got = recv_one(&a).await;
        assert_eq!((got.src, got.hop_limit), (LL_B, 255));
    }

    #[tokio::test]
    async fn a_socket_that_did_not_join_the_group_hears_no_multicast() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[], true).unwrap();
        let b = open(&p.b, &p.b_if, &[], false).unwrap();
        a.send_advert(&advert(150), a.link_local(), &[]).await.unwrap();
        assert!(timeout(Duration::from_millis(500), b.recv()).await.is_err(), "ff02::12 delivered without joining");
        // A unicast advert still arrives.
        a.send_advert(&advert(150), A1, &[B2]).await.unwrap();
        assert_eq!(recv_one(&b).await.src, A1);
    }

    #[tokio::test]
    async fn unicast_sends_one_copy_to_each_peer_with_its_own_checksum() {
        let p = pair();
        let a = open(&p.a, &p.a_if, &[A1], false).unwrap();
        let b = open(&p.b, &p.b_if, &[B2], false).unwrap();
        a.send_advert(&advert(150), A1, &[B2, B4]).await.unwrap();
        let peers = [A1];
        let filter = RxFilter { vrid: 61, unicast_peers: &peers[..] };
        let mut dsts = Vec::new();
        for _ in 0..2 {
            let got = recv_one(&b).await;
            assert_eq!((got.src, got.hop_limit), (A1, 255));
            let rx = parse_ipv6(&got.message, got.src, got.dst, got.hop_limit, &filter).unwrap();
            assert_eq!(rx.advert, advert(150));
            dsts.push(got.dst);
        }
        dsts.sort();
        assert_eq!(dsts, [B2, B4]);
    }

    #[tokio::test]
    async fn joins_ff02_12_and_refuses_a_source_not_on_the_interface() {
        let p = pair();
        let _a = open(&p.a, &p.a_if, &[], true).unwrap();
        let groups = p.a.ip_output(&format!("-6 maddr show dev {}", p.a_if)).unwrap();
        assert!(groups.contains("ff02::12"), "{groups}");
        let err = open(&p.a, &p.a_if, &[B2], false).unwrap_err();
        assert!(matches!(err, Error::NotOnInterface { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_interface_without_link_local_address_is_refused() {
        let p = veth_pair(&["link set {if} addrgenmode none"], &["link set {if} addrgenmode none"]).unwrap();
        let err = open(&p.a, &p.a_if, &[], true).unwrap_err();
        assert!(matches!(err, Error::NoLinkLocal { .. }), "{err}");
    }
}
