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
