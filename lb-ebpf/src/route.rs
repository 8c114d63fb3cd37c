//! Where packets to a client go: the kernel's FIB (`bpf_fib_lookup`), never the addresses a received frame
//! carried. A spoofed frame cannot steer replies, a changed gateway is followed, and the source MAC is the egress
//! interface's.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::Reason;

const AF_INET: u8 = 2;

/// The next hop towards an address, as the FIB says.
#[derive(Clone, Copy)]
pub struct Route {
    pub next_hop_mac: [u8; 6],
    pub egress_mac: [u8; 6],
    pub ifindex: u32,
}

/// Why there is no usable route.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// Routable, but the next hop's MAC is not in the neighbour table yet: the kernel must resolve it.
    Neighbour,
    /// The FIB would not forward to the address: no route at all, or a local or broadcast address (sources of
    /// that kind were dropped before any state, so in practice: no route).
    NotForwarded,
    /// IPv4 forwarding is off on the ingress interface; the FIB refuses lookups.
    ForwardingDisabled,
    /// An unreachable, blackhole or prohibit route, or anything else.
    Unreachable,
}

impl NoRoute {
    /// The counter of a packet that could not be sent for this reason (all drops but `Neighbour`).
    #[inline(always)]
    pub fn reason(self) -> Reason {
        match self {
            NoRoute::Neighbour => Reason::PassNoNeighbour,
            NoRoute::NotForwarded => Reason::DropNoRoute,
            NoRoute::ForwardingDisabled => Reason::DropForwardingDisabled,
            NoRoute::Unreachable => Reason::DropNoRoute,
        }
    }
}

/// Looks up the route from `src` to `dst` as if forwarding a packet of `tot_len` bytes received on the ingress
/// interface of `ctx`.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], protocol: u8, tot_len: u16) -> Result<Route, NoRoute> {
    lookup_from(ctx.ctx as *mut _, ctx.ingress_ifindex() as u32, src, dst, protocol, tot_len)
}

/// [`lookup`] for any program context the helper takes (`xdp_md`, `__sk_buff`), as if the packet had been
/// received on `ifindex`.
#[inline(always)]
pub fn lookup_from(
    ctx: *mut core::ffi::c_void,
    ifindex: u32,
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    tot_len: u16,
) -> Result<Route, NoRoute> {
    // SAFETY: an all-zero `bpf_fib_lookup` is valid (plain integers and unions of them).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: `params` is a valid, writable `bpf_fib_lookup` of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx, &mut params as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Ok(Route { next_hop_mac: params.dmac, egress_mac: params.smac, ifindex: params.ifindex });
    }
    Err(if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        NoRoute::Neighbour
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED) {
        NoRoute::NotForwarded
    } else if rc == i64::from(BPF_FIB_LKUP_RET_FWD_DISABLED) {
        NoRoute::ForwardingDisabled
    } else {
        NoRoute::Unreachable
    })
}
