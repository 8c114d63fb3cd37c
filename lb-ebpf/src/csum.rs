//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), over 16-bit words.
//! Full recomputation over a variable-length payload is not expressible for the verifier from Rust (aya#1562).

/// The checksum `check` (as stored, network order) after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    Delta::new().word(old.to_be_bytes(), new.to_be_bytes()).apply(check)
}

/// The sum of the `~m + m'` terms of RFC 1624 eqn. 3 for several changed 16-bit words, to apply to a checksum
/// at the end: `HC' = ~(~HC + Σ(~m + m'))`. Applying the terms word by word or all at once gives the same result
/// (one's complement addition is associative), and the fold happens once.
///
/// An IPv4 address is two words ([`addr`](Self::addr)), an IPv6 address eight ([`addr6`](Self::addr6)); an IPv4
/// address counts in the IP header checksum and, through the pseudo-header (RFC 793 §3.1, RFC 768, RFC 8200 §8.1),
/// both count in the TCP and UDP checksums.
#[derive(Clone, Copy)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub const fn new() -> Self {
        Delta(0)
    }

    /// One word changed. Each term is below 2^17 and a packet changes at most a few dozen words, so the u32
    /// accumulator cannot overflow.
    #[inline(always)]
    pub fn word(self, old: [u8; 2], new: [u8; 2]) -> Self {
        Delta(self.0 + u32::from(!u16::from_be_bytes(old)) + u32::from(u16::from_be_bytes(new)))
    }

    /// An IPv4 address changed: its two words.
    #[inline(always)]
    pub fn addr(self, old: [u8; 4], new: [u8; 4]) -> Self {
        self.word([old[0], old[1]], [new[0], new[1]]).word([old[2], old[3]], [new[2], new[3]])
    }

    /// An IPv6 address changed, as its [`lb_common::ipv6_halves`]: its eight words' terms, summed as four 32-bit
    /// words. A 32-bit word is congruent to the sum of its two 16-bit halves modulo 0xffff, and so is its
    /// complement to theirs, so this adds up to what eight [`word`](Self::word) calls would, in a dozen
    /// instructions instead of some eighty.
    #[inline(always)]
    pub fn addr6(self, old: (u64, u64), new: (u64, u64)) -> Self {
        let words = |x: u64| (x >> 32) + (x & 0xffff_ffff);
        // Four terms below 2^33 each: below 2^35. Two folds of the high half leave 32 bits, `fold` 16.
        let sum = words(!old.0) + words(!old.1) + words(new.0) + words(new.1);
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        Delta(self.0 + u32::from(fold(sum as u32)))
    }

    /// Both sets of changes.
    #[inline(always)]
    pub fn merge(self, other: Delta) -> Self {
        Delta(self.0 + other.0)
    }

    /// The recorded changes as the kernel's checksum helpers take a difference (a `__wsum`, as for
    /// `bpf_l4_csum_replace` of size 0): sums of memory words as the CPU loads them, so the folded sum's two bytes
    /// in network order, read as a native integer.
    #[inline(always)]
    pub fn wsum(self) -> u32 {
        u32::from(u16::from_ne_bytes(fold(self.0).to_be_bytes()))
    }

    /// `check` with every recorded change applied.
    #[inline(always)]
    pub fn apply(self, check: [u8; 2]) -> [u8; 2] {
        let mut sum = u32::from(!u16::from_be_bytes(check)) + self.0;
        // Two folds suffice: the first leaves at most 0x1fffe, the second at most 0xffff.
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        (!(sum as u16)).to_be_bytes()
    }

    /// The UDP checksum after the changes: 0 means "no checksum" (RFC 768) and stays 0; a computed 0 is sent as
    /// 0xffff, its other one's complement representation.
    #[inline(always)]
    pub fn apply_udp(self, check: [u8; 2]) -> [u8; 2] {
        if check == [0, 0] {
            return check;
        }
        let new = self.apply(check);
        if new == [0, 0] { [0xff, 0xff] } else { new }
    }
}

/// Whether a 20-byte IPv4 header's checksum verifies: its ten 16-bit words, checksum included, add up to 0xffff
/// in one's complement (RFC 1071). `words` are the header's five 32-bit words as loaded (either byte order: the
/// one's complement sum of 32-bit words folds to the sum of their 16-bit halves, and 0xffff reads the same both
/// ways), so the header costs five loads.
#[inline(always)]
pub fn ipv4_header_ok(words: [u32; 5]) -> bool {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 5 {
        sum += u64::from(words[i]);
        i += 1;
    }
    // At most 5 * (2^32 - 1).
    sum_verifies(sum)
}

/// Whether a message's one's complement sum, accumulated from 32-bit words (either byte order, see
/// [`ipv4_header_ok`]) in a 64-bit `sum` below 2^40, verifies: it folds to 0xffff.
#[inline(always)]
pub fn sum_verifies(sum: u64) -> bool {
    // Two folds of the high half leave 32 bits, `fold` 16.
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32) == 0xffff
}

/// One's complement sum of a 32-bit accumulator folded to 16 bits.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}
