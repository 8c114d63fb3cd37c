//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), over 16-bit words.
//! Full recomputation over a variable-length payload is not expressible for the verifier from Rust (aya#1562).

/// The checksum `check` (as stored, network order) after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(check)) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
