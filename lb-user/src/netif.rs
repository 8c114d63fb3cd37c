//! Questions about a network interface that the kernel answers through `ioctl`s on a socket: its MAC address and
//! whether its link is up. Asked on a socket so the answer comes from the calling thread's network namespace
//! (`/sys/class/net` shows the namespace sysfs was mounted in).
use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `ARPHRD_ETHER`: the hardware type of Ethernet interfaces.
pub const ARPHRD_ETHER: u16 = 1;

/// A question about an interface that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is not a valid Linux interface name (1..=15 bytes, no NUL)")]
    InvalidName(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "interface {interface} has hardware type {found}, expected Ethernet ({ARPHRD_ETHER}); gratuitous ARP needs \
         Ethernet"
    )]
    NotEthernet { interface: String, found: u16 },
}

type Result<T> = std::result::Result<T, Error>;

fn last_os_error(what: String) -> Error {
    Error::Io { what, source: io::Error::last_os_error() }
}

/// Runs an interface `ioctl` (`SIOCGIF*`) for `interface` and returns the filled `ifreq`.
fn ifreq_ioctl(interface: &str, request: libc::Ioctl, what: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(Error::InvalidName(interface.to_string()));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_os_error(format!("socket() to read the {what} of {interface}")));
    }
    // SAFETY: raw is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: req is a valid ifreq with a NUL-terminated name; the request fills one union member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) } != 0 {
        return Err(last_os_error(format!("reading the {what} of {interface}")));
    }
    Ok(req)
}

/// The interface's MAC address, by `SIOCGIFHWADDR` on a socket, so it is read in the calling
/// thread's network namespace (`/sys/class/net` shows the namespace sysfs was mounted in).
///
/// # Errors
/// When the interface does not exist or is not Ethernet.
pub fn interface_mac(interface: &str) -> Result<[u8; 6]> {
    let req = ifreq_ioctl(interface, libc::SIOCGIFHWADDR, "MAC address (SIOCGIFHWADDR)")?;
    // SAFETY: SIOCGIFHWADDR succeeded, so ifru_hwaddr is the active union member.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != ARPHRD_ETHER {
        return Err(Error::NotEthernet { interface: interface.to_string(), found: hw.sa_family });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// Whether `interface` is up and has carrier (`IFF_UP` and `IFF_RUNNING`): a pulled cable, a peer that went away
/// or `ip link set down` all make this false.
///
/// # Errors
/// When the interface does not exist.
pub fn link_up(interface: &str) -> Result<bool> {
    let req = ifreq_ioctl(interface, libc::SIOCGIFFLAGS, "flags (SIOCGIFFLAGS)")?;
    // SAFETY: SIOCGIFFLAGS succeeded, so ifru_flags is the active union member.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

/// One address of one of the node's interfaces, as `getifaddrs` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: std::net::IpAddr,
    /// The netmask, when the kernel gives one.
    pub netmask: Option<std::net::IpAddr>,
}

/// Every IPv4 and IPv6 address of the interfaces in the calling thread's network namespace (`getifaddrs`): the
/// one place that reads that list.
///
/// # Errors
/// When `getifaddrs` fails.
pub fn addresses() -> std::io::Result<Vec<InterfaceAddress>> {
    /// The address in `sa`, if it is an IPv4 or IPv6 one.
    fn ip(sa: *const libc::sockaddr) -> Option<std::net::IpAddr> {
        if sa.is_null() {
            return None;
        }
        // SAFETY: checked non-null; the family says which sockaddr it is.
        unsafe {
            match i32::from((*sa).sa_family) {
                libc::AF_INET => Some(
                    std::net::Ipv4Addr::from(u32::from_be((*(sa as *const libc::sockaddr_in)).sin_addr.s_addr)).into(),
                ),
                libc::AF_INET6 => {
                    Some(std::net::Ipv6Addr::from((*(sa as *const libc::sockaddr_in6)).sin6_addr.s6_addr).into())
                }
                _ => None,
            }
        }
    }
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        let Some(address) = ip(ifa.ifa_addr) else { continue };
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from getifaddrs.
        let interface = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        found.push(InterfaceAddress { interface, address, netmask: ip(ifa.ifa_netmask) });
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(addrs) };
    Ok(found)
}

/// The interface holding `address`, IPv4 or IPv6 (in the calling thread's network namespace), if any.
pub fn interface_of(address: std::net::IpAddr) -> Option<String> {
    addresses().ok()?.into_iter().find(|a| a.address == address).map(|a| a.interface)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::veth_pair;

    /// Polls `link_up` until it reports `want` (the kernel updates the operstate asynchronously, via linkwatch).
    fn wait_link(p: &crate::testnet::VethPair, want: bool) -> bool {
        for _ in 0..100 {
            let a_if = p.a_if.clone();
            if p.a.run(move || link_up(&a_if)).expect("run").expect("link_up") == want {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn link_is_down_while_the_peer_is_down_and_up_again_after() {
        let p = veth_pair(&[], &[]).expect("veth pair");
        assert!(wait_link(&p, true), "a fresh veth pair has carrier");
        p.b.ip(&format!("link set dev {} down", p.b_if)).expect("peer down");
        assert!(wait_link(&p, false), "no carrier with the peer down");
        p.b.ip(&format!("link set dev {} up", p.b_if)).expect("peer up");
        assert!(wait_link(&p, true), "carrier came back");
    }

    /// Both families' addresses, with their interface and netmask, in the caller's namespace only.
    #[test]
    fn addresses_lists_both_families_with_their_interface_and_netmask() {
        let p = veth_pair(&["addr add 10.93.0.1/24 dev {if}", "addr add fd00:93::1/64 dev {if} nodad"], &[])
            .expect("veth pair");
        let found = p.a.run(addresses).expect("run").expect("getifaddrs");
        let find = |address: &str| {
            let address: std::net::IpAddr = address.parse().expect("literal");
            found.iter().find(|a| a.address == address).cloned()
        };
        let v4 = find("10.93.0.1").expect("the IPv4 address");
        assert_eq!(
            (v4.interface.as_str(), v4.netmask),
            (p.a_if.as_str(), Some("255.255.255.0".parse().expect("mask")))
        );
        let v6 = find("fd00:93::1").expect("the IPv6 address");
        assert_eq!(
            (v6.interface.as_str(), v6.netmask),
            (p.a_if.as_str(), Some("ffff:ffff:ffff:ffff::".parse().expect("mask")))
        );
        let on_b = p.b.run(addresses).expect("run").expect("getifaddrs");
        assert!(on_b.iter().all(|a| a.interface != p.a_if), "another namespace's interfaces: {on_b:?}");
        let a_if = p.a_if.clone();
        assert_eq!(p.a.run(|| interface_of("fd00:93::1".parse().expect("literal"))).expect("run"), Some(a_if));
    }

    #[test]
    fn link_up_names_a_missing_interface() {
        let err = link_up("xvt-nosuch").expect_err("missing");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("xvt-nosuch"), "{err}");
    }
}
