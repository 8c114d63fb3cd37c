//! Gratuitous ARP from userspace, so neighbours and switches learn that the virtual address moved
//! (RFC 5798 §6.4.1 and §6.4.2; RFC 5227 §3 for the ARP-request form).
//!
//! The frame is the one keepalived sends without `use_vmac` (vrrp.md §4.3): an ARP request "who-has
//! VIP tell VIP" from the interface's own MAC to broadcast, target hardware address ff:ff:ff:ff:ff:ff.
//!
//! For an IPv6 VIP the announcement is an unsolicited Neighbor Advertisement (RFC 4861 §7.2.6; RFC 5798 §6.4.2
//! has the active router send one per IPv6 address): from the VIP to all nodes (ff02::1, Ethernet 33:33:00:00:00:01),
//! hop limit 255, Override set and Solicited clear, the interface's MAC in a target link-layer address option. It
//! goes out with the same count, repeats and refreshes as gratuitous ARPs, through the same socket.

use std::ffi::c_int;
use std::io;
use std::mem::{self, size_of};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

pub use crate::netif::interface_mac;
use crate::vrrp::socket::interface_index;

/// The gratuitous ARP socket could not be opened, or a send failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Interface(#[from] crate::vrrp::socket::Error),
    #[error(transparent)]
    Mac(#[from] crate::netif::Error),
    #[error("ifindex {index} of {interface} is out of range")]
    IndexOutOfRange { interface: String, index: u32 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("gratuitous ARP for {vip} on {interface}: sent {sent} of {FRAME_LEN} bytes")]
    Short { vip: Ipv4Addr, interface: String, sent: usize },
    #[error("unsolicited neighbor advertisement for {vip} on {interface}: sent {sent} of {NA_FRAME_LEN} bytes")]
    ShortNa { vip: Ipv6Addr, interface: String, sent: usize },
}

type Result<T> = std::result::Result<T, Error>;

fn last_os_error(what: String) -> Error {
    Error::Io { what, source: io::Error::last_os_error() }
}

/// Ethernet header (14) + ARP for Ethernet/IPv4 (28). Not padded to 60: the NIC pads on the wire,
/// and keepalived sends exactly these 42 bytes.
pub const FRAME_LEN: usize = 42;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
use crate::netif::ARPHRD_ETHER;
const ARPOP_REQUEST: u16 = 1;

/// Byte offsets in the frame (Ethernet II, then RFC 826).
mod field {
    use std::ops::Range;

    pub const ETH_DST: Range<usize> = 0..6;
    pub const ETH_SRC: Range<usize> = 6..12;
    pub const ETH_TYPE: Range<usize> = 12..14;
    pub const HTYPE: Range<usize> = 14..16;
    pub const PTYPE: Range<usize> = 16..18;
    pub const HLEN: usize = 18;
    pub const PLEN: usize = 19;
    pub const OPER: Range<usize> = 20..22;
    pub const SHA: Range<usize> = 22..28;
    pub const SPA: Range<usize> = 28..32;
    pub const THA: Range<usize> = 32..38;
    pub const TPA: Range<usize> = 38..42;
}

/// The gratuitous ARP frame announcing `vip` at `mac`.
pub fn frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[field::ETH_DST].copy_from_slice(&BROADCAST_MAC);
    f[field::ETH_SRC].copy_from_slice(&mac);
    f[field::ETH_TYPE].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[field::HTYPE].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[field::PTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f[field::HLEN] = 6;
    f[field::PLEN] = 4;
    f[field::OPER].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[field::SHA].copy_from_slice(&mac);
    f[field::SPA].copy_from_slice(&vip.octets());
    f[field::THA].copy_from_slice(&BROADCAST_MAC);
    f[field::TPA].copy_from_slice(&vip.octets());
    f
}

/// Ethernet (14) + IPv6 (40) + Neighbor Advertisement (24) + target link-layer address option (8).
pub const NA_FRAME_LEN: usize = 86;
/// The all-nodes group ff02::1 and its Ethernet address (RFC 2464 §7).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// Override (RFC 4861 §4.4): the receiver replaces the link-layer address it has cached.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LL: u8 = 2;
/// Neighbor Discovery is sent with hop limit 255: receivers discard any other (RFC 4861 §7.1.2).
const ND_HOP_LIMIT: u8 = 255;

/// Byte offsets of the unsolicited Neighbor Advertisement (Ethernet II, RFC 8200, RFC 4861 §4.4).
mod na_field {
    use std::ops::Range;

    pub const ETH_DST: Range<usize> = 0..6;
    pub const ETH_SRC: Range<usize> = 6..12;
    pub const ETH_TYPE: Range<usize> = 12..14;
    pub const VERSION: usize = 14;
    pub const PAYLOAD_LEN: Range<usize> = 18..20;
    pub const NEXT_HEADER: usize = 20;
    pub const HOP_LIMIT: usize = 21;
    pub const SRC: Range<usize> = 22..38;
    pub const DST: Range<usize> = 38..54;
    pub const ICMP: usize = 54;
    pub const TYPE: usize = 54;
    pub const CHECKSUM: Range<usize> = 56..58;
    pub const FLAGS: usize = 58;
    pub const TARGET: Range<usize> = 62..78;
    pub const OPTION: Range<usize> = 78..80;
    pub const OPTION_MAC: Range<usize> = 80..86;
}

/// The unsolicited Neighbor Advertisement announcing the IPv6 `vip` at `mac`.
pub fn neighbor_advertisement(mac: [u8; 6], vip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[na_field::ETH_DST].copy_from_slice(&ALL_NODES_MAC);
    f[na_field::ETH_SRC].copy_from_slice(&mac);
    f[na_field::ETH_TYPE].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f[na_field::VERSION] = 0x60;
    let icmp_len = (NA_FRAME_LEN - na_field::ICMP) as u16;
    f[na_field::PAYLOAD_LEN].copy_from_slice(&icmp_len.to_be_bytes());
    f[na_field::NEXT_HEADER] = IPPROTO_ICMPV6;
    f[na_field::HOP_LIMIT] = ND_HOP_LIMIT;
    f[na_field::SRC].copy_from_slice(&vip.octets());
    f[na_field::DST].copy_from_slice(&ALL_NODES.octets());
    f[na_field::TYPE] = ND_NEIGHBOR_ADVERT;
    f[na_field::FLAGS] = NA_FLAG_OVERRIDE;
    f[na_field::TARGET].copy_from_slice(&vip.octets());
    f[na_field::OPTION].copy_from_slice(&[ND_OPT_TARGET_LL, 1]);
    f[na_field::OPTION_MAC].copy_from_slice(&mac);
    // The checksum over the pseudo-header (source, destination, length, next header; RFC 8200 §8.1) and the
    // message (RFC 4443 §2.3).
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for word in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([word[0], word.get(1).copied().unwrap_or(0)]));
        }
    };
    add(&f[na_field::SRC]);
    add(&f[na_field::DST]);
    add(&u32::from(icmp_len).to_be_bytes());
    add(&[0, IPPROTO_ICMPV6]);
    add(&f[na_field::ICMP..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[na_field::CHECKSUM].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// Sends gratuitous ARPs (and, for IPv6 VIPs, unsolicited Neighbor Advertisements) on one interface over an
/// `AF_PACKET` socket.
#[derive(Debug)]
pub struct GarpSender {
    fd: OwnedFd,
    interface: String,
    ifindex: c_int,
    mac: [u8; 6],
}

impl GarpSender {
    /// Opens the sender; the MAC is read once, here.
    ///
    /// The socket is bound with protocol 0, so it receives nothing and needs no draining.
    ///
    /// # Errors
    /// When the interface is missing or not Ethernet, or the socket cannot be made (needs
    /// CAP_NET_RAW).
    pub fn open(interface: &str) -> Result<Self> {
        let index = interface_index(interface)?;
        let ifindex =
            c_int::try_from(index).map_err(|_| Error::IndexOutOfRange { interface: interface.to_string(), index })?;
        let mac = interface_mac(interface)?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_os_error(format!(
                "socket(AF_PACKET, SOCK_RAW) for gratuitous ARP on {interface} (needs CAP_NET_RAW)"
            )));
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_ll(ifindex, 0, [0; 6]);
        // SAFETY: addr is a valid sockaddr_ll of the length passed.
        let rc = unsafe {
            libc::bind(fd.as_raw_fd(), ptr::from_ref(&addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(last_os_error(format!("bind(AF_PACKET) to {interface} (ifindex {index})")));
        }
        Ok(GarpSender { fd, interface: interface.to_owned(), ifindex, mac })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one gratuitous ARP for `vip`. Does not block: the socket is non-blocking, and a full
    /// queue is reported as an error rather than waited on.
    ///
    /// # Errors
    /// When `sendto(2)` fails or sends a short frame.
    pub fn send(&self, vip: Ipv4Addr) -> Result<()> {
        match self.send_frame(&frame(self.mac, vip), ETHERTYPE_ARP, BROADCAST_MAC) {
            Ok(FRAME_LEN) => Ok(()),
            Ok(sent) => Err(Error::Short { vip, interface: self.interface.clone(), sent }),
            Err(source) => {
                Err(Error::Io { what: format!("sendto() of a gratuitous ARP for {vip} on {}", self.interface), source })
            }
        }
    }

    /// Sends `frame` out of the interface to the link-layer address `dest` with EtherType `protocol`, without
    /// blocking; returns how many bytes went out.
    fn send_frame(&self, frame: &[u8], protocol: u16, dest: [u8; 6]) -> io::Result<usize> {
        let addr = sockaddr_ll(self.ifindex, protocol, dest);
        // SAFETY: frame and addr are live and their lengths are passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }
}

impl GarpSender {
    /// Sends one unsolicited Neighbor Advertisement for the IPv6 `vip` (the IPv6 gratuitous ARP), without
    /// blocking, like [`send`](Self::send).
    ///
    /// # Errors
    /// When `sendto(2)` fails or sends a short frame.
    pub fn send_na(&self, vip: Ipv6Addr) -> Result<()> {
        match self.send_frame(&neighbor_advertisement(self.mac, vip), ETHERTYPE_IPV6, ALL_NODES_MAC) {
            Ok(NA_FRAME_LEN) => Ok(()),
            Ok(sent) => Err(Error::ShortNa { vip, interface: self.interface.clone(), sent }),
            Err(source) => Err(Error::Io {
                what: format!("sendto() of an unsolicited neighbor advertisement for {vip} on {}", self.interface),
                source,
            }),
        }
    }

    /// Announces `vip` in its family's way: a gratuitous ARP for IPv4, an unsolicited Neighbor Advertisement for
    /// IPv6.
    ///
    /// # Errors
    /// As [`send`](Self::send) and [`send_na`](Self::send_na).
    pub fn announce(&self, vip: impl Into<std::net::IpAddr>) -> Result<()> {
        match vip.into() {
            std::net::IpAddr::V4(v4) => self.send(v4),
            std::net::IpAddr::V6(v6) => self.send_na(v6),
        }
    }
}

fn sockaddr_ll(ifindex: c_int, protocol: u16, addr: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&addr);
    sll
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result};

    use super::*;
    use crate::testnet::veth_pair;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

    #[rustfmt::skip]
    const EXPECTED: [u8; FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  0x02, 0x00, 0x5e, 0x10, 0x00, 0x01,  0x08, 0x06,
        0x00, 0x01,  0x08, 0x00,  6,  4,  0x00, 0x01,
        0x02, 0x00, 0x5e, 0x10, 0x00, 0x01,  10, 99, 0, 100,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  10, 99, 0, 100,
    ];

    #[test]
    fn frame_is_keepalived_request_who_has_vip_tell_vip() {
        assert_eq!(frame(MAC, VIP), EXPECTED);
    }

    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x100);

    /// The checksum 0x97ea was computed separately (RFC 1071 over the pseudo-header and the message).
    #[rustfmt::skip]
    const EXPECTED_NA: [u8; NA_FRAME_LEN] = [
        0x33, 0x33, 0, 0, 0, 1,  0x02, 0x00, 0x5e, 0x10, 0x00, 0x01,  0x86, 0xdd,
        0x60, 0, 0, 0,  0, 32,  58,  255,
        0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        136, 0,  0x97, 0xea,  0x20, 0, 0, 0,
        0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
        2, 1,  0x02, 0x00, 0x5e, 0x10, 0x00, 0x01,
    ];

    #[test]
    fn unsolicited_na_is_override_to_all_nodes_with_hop_limit_255() {
        assert_eq!(neighbor_advertisement(MAC, VIP6), EXPECTED_NA);
    }

    /// An AF_PACKET socket on `interface` that receives ARP frames, with a receive timeout.
    fn arp_listener(interface: &str) -> Result<OwnedFd> {
        listener(interface, ETHERTYPE_ARP)
    }

    /// An AF_PACKET socket on `interface` that receives frames of `ethertype`, with a receive timeout.
    fn listener(interface: &str, ethertype: u16) -> Result<OwnedFd> {
        let index = interface_index(interface)?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, c_int::from(ethertype.to_be()))
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_ll(c_int::try_from(index)?, ethertype, [0; 6]);
        // SAFETY: addr is a valid sockaddr_ll of the length passed.
        let rc = unsafe {
            libc::bind(fd.as_raw_fd(), ptr::from_ref(&addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        let timeout = libc::timeval { tv_sec: 3, tv_usec: 0 };
        // SAFETY: timeout is a live timeval of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("SO_RCVTIMEO");
        }
        Ok(fd)
    }

    /// The next ARP frame whose sender protocol address is `vip`.
    fn recv_garp(fd: &OwnedFd, vip: Ipv4Addr) -> Vec<u8> {
        let mut buf = [0u8; 1600];
        loop {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).unwrap_or_else(|_| panic!("no ARP frame: {}", io::Error::last_os_error()));
            let got = &buf[..n];
            if got.get(field::SPA) == Some(&vip.octets()[..]) {
                return got.to_vec();
            }
        }
    }

    #[test]
    fn gratuitous_arp_arrives_on_the_peer_byte_exact() {
        let p = veth_pair(&["link set dev {if} address 02:00:5e:10:00:01"], &[]).unwrap();
        let b_if = p.b_if.clone();
        let listener = p.b.run(move || arp_listener(&b_if)).unwrap().unwrap();
        let a_if = p.a_if.clone();
        let sender = p.a.run(move || GarpSender::open(&a_if)).unwrap().unwrap();
        assert_eq!(sender.mac(), MAC);
        sender.send(VIP).unwrap();
        assert_eq!(recv_garp(&listener, VIP), EXPECTED);
        // A second one, as in a burst, is just as exact.
        sender.send(Ipv4Addr::new(10, 99, 0, 101)).unwrap();
        let second = recv_garp(&listener, Ipv4Addr::new(10, 99, 0, 101));
        assert_eq!(second, frame(MAC, Ipv4Addr::new(10, 99, 0, 101)));
    }

    #[test]
    fn unsolicited_na_arrives_on_the_peer_byte_exact() {
        let p = veth_pair(&["link set dev {if} address 02:00:5e:10:00:01"], &[]).unwrap();
        let b_if = p.b_if.clone();
        let listener = p.b.run(move || listener(&b_if, ETHERTYPE_IPV6)).unwrap().unwrap();
        let a_if = p.a_if.clone();
        let sender = p.a.run(move || GarpSender::open(&a_if)).unwrap().unwrap();
        sender.announce(VIP6).unwrap();
        let mut buf = [0u8; 1600];
        // The peer's own IPv6 traffic (router solicitations, MLD) may come first: skip to our advertisement.
        let got = loop {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(listener.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).unwrap_or_else(|_| panic!("no IPv6 frame: {}", io::Error::last_os_error()));
            if buf[..n].get(na_field::SRC) == Some(&VIP6.octets()[..]) {
                break buf[..n].to_vec();
            }
        };
        assert_eq!(got, EXPECTED_NA);
    }

    #[test]
    fn interface_mac_reads_the_namespaced_interface() {
        let p = veth_pair(&["link set dev {if} address 02:00:5e:aa:bb:cc"], &[]).unwrap();
        let a_if = p.a_if.clone();
        let mac = p.a.run(move || interface_mac(&a_if)).unwrap().unwrap();
        assert_eq!(mac, [0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn interface_mac_refuses_non_ethernet() {
        let p = veth_pair(&[], &[]).unwrap();
        let err = p.a.run(|| interface_mac("lo")).unwrap().unwrap_err();
        assert!(err.to_string().contains("hardware type 772"), "{err}");
    }

    #[test]
    fn open_names_a_missing_interface() {
        let p = veth_pair(&[], &[]).unwrap();
        let err = p.a.run(|| GarpSender::open("xvt-missing")).unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("xvt-missing"), "{err:#}");
    }

    #[test]
    fn interface_mac_refuses_overlong_name() {
        let err = interface_mac("a-name-of-16-byt").unwrap_err();
        assert!(err.to_string().contains("1..=15 bytes"), "{err}");
    }
}
