//! IPv6 on lab hosts, for the IPv6 VRRP tests. The lab turns IPv6 off on every host; a test that needs it turns it
//! back on for the hosts it uses, with addresses it chooses and no duplicate address detection (a tentative
//! address cannot be a source for a second or two, and VRRP adverts come from the link-local address).

use std::net::Ipv6Addr;

use anyhow::{Context, Result};

use crate::{Host, cmd, topology::IFACE};

/// The unique-local prefix of the lab's IPv6 addresses: `fd00:77::N/64`.
pub const PREFIX: [u16; 2] = [0xfd00, 0x77];

/// `fe80::N`: the link-local address [`enable`] gives host N.
pub fn link_local(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
}

/// `fd00:77::N`.
pub fn address(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(PREFIX[0], PREFIX[1], 0, 0, 0, 0, 0, n)
}

/// Turns IPv6 on for `host`'s interface with exactly `fe80::N/64` and `fd00:77::N/64`, both usable at once.
///
/// # Errors
/// When a sysctl or `ip` command fails.
pub fn enable(host: &Host, n: u16) -> Result<()> {
    let ns = &host.ns;
    // No automatic link-local address (its EUI-64 would compete with ours), and no DAD for what we add.
    cmd::ip_in(ns, ["link", "set", IFACE, "addrgenmode", "none"])?;
    for key in [
        "net.ipv6.conf.all.accept_dad=0".to_string(),
        "net.ipv6.conf.default.accept_dad=0".to_string(),
        format!("net.ipv6.conf.{IFACE}.accept_dad=0"),
        "net.ipv6.conf.all.disable_ipv6=0".to_string(),
        "net.ipv6.conf.default.disable_ipv6=0".to_string(),
        format!("net.ipv6.conf.{IFACE}.disable_ipv6=0"),
    ] {
        cmd::exec_in(ns, ["sysctl", "-q", "-w", &key]).with_context(|| format!("setting {key} in {}", host.name))?;
    }
    for addr in [format!("{}/64", link_local(n)), format!("{}/64", address(n))] {
        cmd::ip_in(ns, ["-6", "addr", "add", &addr, "dev", IFACE, "nodad"])
            .with_context(|| format!("adding {addr} on {}", host.name))?;
    }
    Ok(())
}
