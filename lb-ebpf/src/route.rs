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
const AF_INET6: u8 = 10;

// The layout `lookup` builds its parameters by (include/uapi/linux/bpf.h).
const _: () = assert!(core::mem::size_of::<FibParams>() == 64);
const _: () = assert!(core::mem::offset_of!(FibParams, family) == 0);
const _: () = assert!(core::mem::offset_of!(FibParams, l4_protocol) == 1);
const _: () = assert!(core::mem::offset_of!(FibParams, __bindgen_anon_1) == 6);
const _: () = assert!(core::mem::offset_of!(FibParams, ifindex) == 8);
const _: () = assert!(core::mem::offset_of!(FibParams, __bindgen_anon_3) == 16);
const _: () = assert!(core::mem::offset_of!(FibParams, __bindgen_anon_4) == 32);

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
    /// Forwarding (of the lookup's family) is off on the ingress interface; the FIB refuses lookups.
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
    // Written as eight whole words, not `zeroed()` and field stores: zeroing 64 bytes is a `memset`, which the BPF
    // target emits as a call (a return per lookup, and returns are dear on kernels that mitigate return-address
    // speculation). Volatile, so LLVM cannot merge the zero words back into a `memset`.
    let [s0, s1, s2, s3] = src;
    let [d0, d1, d2, d3] = dst;
    let [t0, t1] = tot_len.to_ne_bytes();
    let [i0, i1, i2, i3] = ifindex.to_ne_bytes();
    let words: [u64; 8] = [
        // family, l4_protocol, sport, dport (0: no ports in the lookup), tot_len
        u64::from_ne_bytes([AF_INET, protocol, 0, 0, 0, 0, t0, t1]),
        // ifindex, tos
        u64::from_ne_bytes([i0, i1, i2, i3, 0, 0, 0, 0]),
        // ipv4_src (the first word of the IPv6 source)
        u64::from_ne_bytes([s0, s1, s2, s3, 0, 0, 0, 0]),
        0,
        // ipv4_dst
        u64::from_ne_bytes([d0, d1, d2, d3, 0, 0, 0, 0]),
        0,
        // VLAN, tbid; mark / smac, dmac (outputs)
        0,
        0,
    ];
    fib(ctx, words)
}

/// [`lookup`] for IPv6 (`AF_INET6`): from `src` to `dst`, a packet of `tot_len` bytes (fixed header included).
#[inline(always)]
pub fn lookup6(
    ctx: &XdpContext,
    src: (u64, u64),
    dst: (u64, u64),
    protocol: u8,
    tot_len: u16,
) -> Result<Route, NoRoute> {
    lookup6_from(ctx.ctx as *mut _, ctx.ingress_ifindex() as u32, src, dst, protocol, tot_len)
}

/// [`lookup6`] for any program context the helper takes, as if the packet had been received on `ifindex` (see
/// [`lookup_from`]).
#[inline(always)]
pub fn lookup6_from(
    ctx: *mut core::ffi::c_void,
    ifindex: u32,
    src: (u64, u64),
    dst: (u64, u64),
    protocol: u8,
    tot_len: u16,
) -> Result<Route, NoRoute> {
    let [t0, t1] = tot_len.to_ne_bytes();
    let [i0, i1, i2, i3] = ifindex.to_ne_bytes();
    let words: [u64; 8] = [
        // family, l4_protocol, sport, dport (0: no ports in the lookup), tot_len
        u64::from_ne_bytes([AF_INET6, protocol, 0, 0, 0, 0, t0, t1]),
        // ifindex, flowinfo
        u64::from_ne_bytes([i0, i1, i2, i3, 0, 0, 0, 0]),
        // ipv6_src, ipv6_dst: network order in memory
        u64::from_ne_bytes(src.0.to_be_bytes()),
        u64::from_ne_bytes(src.1.to_be_bytes()),
        u64::from_ne_bytes(dst.0.to_be_bytes()),
        u64::from_ne_bytes(dst.1.to_be_bytes()),
        0,
        0,
    ];
    fib(ctx, words)
}

/// Runs the FIB lookup over the parameters `words` (the 64 bytes of a `bpf_fib_lookup`).
#[inline(always)]
fn fib(ctx: *mut core::ffi::c_void, words: [u64; 8]) -> Result<Route, NoRoute> {
    // 8-byte aligned storage (a `bpf_fib_lookup` only needs 4), so each word is one store.
    let mut storage = core::mem::MaybeUninit::<[u64; 8]>::uninit();
    let base = storage.as_mut_ptr() as *mut u64;
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: `i` < 8, inside `storage`.
        unsafe { base.add(i).write_volatile(word) };
    }
    let params = base as *mut FibParams;
    // SAFETY: `params` points at 64 initialised, writable bytes: a valid `bpf_fib_lookup` (integers and unions of
    // them, layout asserted above), of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx, params, core::mem::size_of::<FibParams>() as i32, 0) };
    // SAFETY: as above; the helper has written its outputs.
    let params = unsafe { &*params };
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
