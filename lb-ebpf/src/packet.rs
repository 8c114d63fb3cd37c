//! Bounds-checked access to the frame. Every header is read through `at`, with a constant offset, which is the
//! shape the verifier can follow (variable-length slices over packet data are rejected, aya#100).
use aya_ebpf::programs::{TcContext, XdpContext};

/// A frame in packet memory: the XDP program's (`XdpContext`) or the egress program's (`TcContext`, whose headers
/// the program pulled into the linear area first).
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` bytes into the frame, or `None` if the frame is too short.
#[inline(always)]
pub fn at<T>(ctx: &impl Frame, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Length of the whole frame in bytes.
#[inline(always)]
pub fn len(ctx: &impl Frame) -> usize {
    ctx.data_end() - ctx.data()
}

/// The four bytes at `p` in packet memory, read with one 32-bit load whatever the address's alignment.
///
/// Header fields are byte arrays (alignment 1), and the BPF target splits every access to one into byte loads
/// and stores (an address costs four loads, three shifts and three ors). Packet memory may be accessed unaligned:
/// x86-64 and arm64 load and store unaligned words, and the verifier allows unaligned packet pointers unless strict
/// alignment is asked for (`BPF_F_STRICT_ALIGNMENT`, or an architecture without efficient unaligned access). The
/// accesses are `asm!`, so the compiler assumes no alignment.
///
/// # Safety
/// `p..p + 4` lies inside the frame (bounds-checked through [`at`]).
#[inline(always)]
pub unsafe fn load4(p: *const u8) -> [u8; 4] {
    let word: u64;
    // SAFETY: the caller guarantees the bytes are in the frame; the asm only reads them.
    unsafe {
        core::arch::asm!("{w} = *(u32 *)({p} + 0)", p = in(reg) p, w = lateout(reg) word,
            options(pure, readonly, nostack, preserves_flags));
    }
    (word as u32).to_ne_bytes()
}

/// The eight bytes at `p` in packet memory, with one 64-bit load (see [`load4`]).
///
/// # Safety
/// `p..p + 8` lies inside the frame.
#[inline(always)]
pub unsafe fn load8(p: *const u8) -> [u8; 8] {
    let word: u64;
    // SAFETY: as in `load4`.
    unsafe {
        core::arch::asm!("{w} = *(u64 *)({p} + 0)", p = in(reg) p, w = lateout(reg) word,
            options(pure, readonly, nostack, preserves_flags));
    }
    word.to_ne_bytes()
}

/// Writes `bytes` at `p` in packet memory with one 32-bit store (see [`load4`]).
///
/// # Safety
/// `p..p + 4` lies inside the frame.
#[inline(always)]
pub unsafe fn store4(p: *mut u8, bytes: [u8; 4]) {
    let word = u64::from(u32::from_ne_bytes(bytes));
    // SAFETY: the caller guarantees the bytes are in the frame.
    unsafe {
        core::arch::asm!("*(u32 *)({p} + 0) = {w}", p = in(reg) p, w = in(reg) word,
            options(nostack, preserves_flags));
    }
}

/// The [`lb_common::ipv6_halves`] of a 16-byte address in packet memory or in a map value, read as two 64-bit
/// loads and two byte swaps (where the byte-array form costs sixteen loads, fourteen shifts and fourteen ors).
/// Never for an address on the stack: the verifier requires aligned stack access (and would refuse the program),
/// and a stack copy's alignment is the compiler's to choose.
#[inline(always)]
pub fn halves(address: &[u8; 16]) -> (u64, u64) {
    let p = address.as_ptr();
    // SAFETY: a reference: its 16 bytes are readable, and the loads have no alignment requirement.
    unsafe { (u64::from_be_bytes(load8(p)), u64::from_be_bytes(load8(p.add(8)))) }
}

/// Writes an address from its [`lb_common::ipv6_halves`] into packet memory as two 64-bit stores (as [`halves`]:
/// never on the stack).
#[inline(always)]
pub fn store_halves(address: &mut [u8; 16], (high, low): (u64, u64)) {
    let p = address.as_mut_ptr();
    // SAFETY: a mutable reference: its 16 bytes are writable, and the stores have no alignment requirement.
    unsafe {
        store8(p, high.to_be_bytes());
        store8(p.add(8), low.to_be_bytes());
    }
}

/// Writes `bytes` at `p` in packet memory with one 64-bit store (see [`load4`]).
///
/// # Safety
/// `p..p + 8` lies inside the frame.
#[inline(always)]
pub unsafe fn store8(p: *mut u8, bytes: [u8; 8]) {
    let word = u64::from_ne_bytes(bytes);
    // SAFETY: the caller guarantees the bytes are in the frame.
    unsafe {
        core::arch::asm!("*(u64 *)({p} + 0) = {w}", p = in(reg) p, w = in(reg) word,
            options(nostack, preserves_flags));
    }
}
