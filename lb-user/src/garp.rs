//! Gratuitous ARP from userspace, so neighbours and switches learn that the virtual address moved
//! (RFC 5798 §6.4.1 and §6.4.2; RFC 5227 §3 for the ARP-request form).
//!
//! The frame is the one keepalived sends without `use_vmac` (vrrp.md §4.3): an ARP request "who-has
//! VIP tell VIP" from the interface's own MAC to broadcast, target hardware address ff:ff:ff:ff:ff:ff.

use std::ffi::c_int;
use std::io;
use std::mem::{self, size_of};
use std::net::Ipv4Addr;
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

/// Sends gratuitous ARPs on one interface over an `AF_PACKET` socket.
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
        let frame = frame(self.mac, vip);
        let addr = sockaddr_ll(self.ifindex, ETHERTYPE_ARP, BROADCAST_MAC);
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
        match usize::try_from(sent) {
            Ok(FRAME_LEN) => Ok(()),
            Ok(sent) => Err(Error::Short { vip, interface: self.interface.clone(), sent }),
            Err(_) => Err(last_os_error(format!("sendto() of a gratuitous ARP for {vip} on {}", self.interface))),
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

    /// An AF_PACKET socket on `interface` that receives ARP frames, with a receive timeout.
    fn arp_listener(interface: &str) -> Result<OwnedFd> {
        let index = interface_index(interface)?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, c_int::from(ETHERTYPE_ARP.to_be()))
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_ll(c_int::try_from(index)?, ETHERTYPE_ARP, [0; 6]);
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
