//! The XDP_PASS stub on the bridge side of every veth pair.
//!
//! veth delivers a frame sent with XDP_TX (or XDP_REDIRECT) only when the *receiving* peer has NAPI running, and
//! veth turns NAPI on only for a device with an XDP program attached; otherwise the frame is dropped silently
//! (toolchain.md, "Kernel facts"; xdp-lb.md §8; enabling GRO on the peer did not help on this kernel). A node's
//! XDP_TX lands on the bridge-side end of its veth, so every bridge port runs `xvip_pass` in native mode.
//! Generic mode would not do: mixing generic and native XDP on the receiving veth breaks delivery.

use anyhow::{Context, Result, anyhow};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::names;

use crate::netns;

/// The loaded object holding the pass program and its links. The links are bpf_links owned by file descriptors
/// in this object: dropping it detaches the program from every port.
pub struct PassStub {
    _ebpf: Ebpf,
}

impl std::fmt::Debug for PassStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassStub")
    }
}

/// Loads `xvip_pass` from the object embedded in lb-user and attaches it (native mode) to `interfaces` of
/// namespace `ns`.
///
/// The whole object is loaded, so its maps are created too. The pass program reads none of the big ones, so they
/// are shrunk: the full Maglev array alone is ~33 MB per lab.
///
/// # Errors
/// When the object does not load or an attach fails (EBUSY: the interface has an XDP program already).
pub fn attach(ns: &str, interfaces: &[String]) -> Result<PassStub> {
    let ebpf = netns::in_netns(ns, || {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::MAGLEV, lb_common::MAGLEV_M)
            .map_max_entries(names::CONNTRACK, 1024)
            .map_max_entries(names::NAT, 1024)
            .load(xvip::dataplane::EBPF_OBJECT)
            .context("loading the embedded eBPF object (needs root)")?;
        let program: &mut Xdp = ebpf
            .program_mut(names::PASS_PROGRAM)
            .ok_or_else(|| anyhow!("the eBPF object has no program {}", names::PASS_PROGRAM))?
            .try_into()
            .with_context(|| format!("{} is not an XDP program", names::PASS_PROGRAM))?;
        program.load().with_context(|| format!("loading {}", names::PASS_PROGRAM))?;
        for interface in interfaces {
            program
                .attach(interface, XdpMode::Driver)
                .with_context(|| format!("attaching {} (native) to {interface} in {ns}", names::PASS_PROGRAM))?;
        }
        Ok(ebpf)
    })?;
    Ok(PassStub { _ebpf: ebpf })
}
