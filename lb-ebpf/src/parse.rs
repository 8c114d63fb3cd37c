//! Header layout constants and what the program reads from a TCP/UDP header. Only plain 20-byte IPv4 headers are
//! handled, so every L4 field sits at a constant offset the verifier can follow.
use lb_common::{PROTO_TCP, PROTO_UDP, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    csum,
    packet::{self, Frame},
};

pub const ETH_LEN: usize = EthHdr::LEN;
pub const IP_LEN: usize = Ipv4Hdr::LEN;
pub const L4_OFF: usize = ETH_LEN + IP_LEN;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// The fixed IPv6 header; the upper-layer header follows it directly when there are no extension headers (the
/// only case handled for a VIP).
pub const IP6_LEN: usize = network_types::ip::Ipv6Hdr::LEN;
pub const L4_OFF6: usize = ETH_LEN + IP6_LEN;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const IPPROTO_ICMP: u8 = 1;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;
/// Byte 12 of the TCP header holds the data offset (the header length in 32-bit words) in its high nibble.
const TCP_DATA_OFFSET_OFF: usize = 12;
/// Byte 13 of the TCP header holds the flags (CWR ECE URG ACK PSH RST SYN FIN).
const TCP_FLAGS_OFF: usize = 13;

/// A plain 20-byte IPv4 header as its five 32-bit words, in memory order: five loads (see [`packet::load4`])
/// where reading the fields of `Ipv4Hdr` (byte arrays) costs a load per byte.
#[derive(Clone, Copy)]
pub struct Ipv4Words([u32; 5]);

impl Ipv4Words {
    /// # Safety
    /// `ip` points to 20 bytes inside the frame (bounds-checked by [`packet::at`]).
    #[inline(always)]
    pub unsafe fn load(ip: *const Ipv4Hdr) -> Self {
        let p = ip as *const u8;
        // SAFETY: the caller guarantees the 20 bytes are in the frame.
        let word = |offset: usize| u32::from_ne_bytes(unsafe { packet::load4(p.add(offset)) });
        Ipv4Words([word(0), word(4), word(8), word(12), word(16)])
    }

    #[inline(always)]
    pub fn total_len(&self) -> usize {
        let [_, _, hi, lo] = self.0[0].to_ne_bytes();
        usize::from(u16::from_be_bytes([hi, lo]))
    }

    /// The flags and fragment offset.
    #[inline(always)]
    pub fn frags(&self) -> u16 {
        let [_, _, hi, lo] = self.0[1].to_ne_bytes();
        u16::from_be_bytes([hi, lo])
    }

    #[inline(always)]
    pub fn src(&self) -> [u8; 4] {
        self.0[3].to_ne_bytes()
    }

    /// Whether the header checksum verifies.
    #[inline(always)]
    pub fn checksum_ok(&self) -> bool {
        csum::ipv4_header_ok(self.0)
    }
}

/// The destination address of the IPv4 header at `ip`, with one load.
///
/// # Safety
/// As for [`Ipv4Words::load`].
#[inline(always)]
pub unsafe fn ipv4_dst(ip: *const Ipv4Hdr) -> [u8; 4] {
    // SAFETY: the caller guarantees the header is in the frame; the destination is its last word.
    unsafe { packet::load4((ip as *const u8).add(16)) }
}

/// The ports and flags of a TCP or UDP packet to the VIP.
#[derive(Clone, Copy)]
pub struct L4 {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub protocol: u8,
    /// TCP flags (byte 13 of the header); 0 for UDP.
    pub flags: u8,
}

impl L4 {
    /// A connection's first packet: SYN without ACK.
    #[inline(always)]
    pub fn syn(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    /// Any packet with the SYN flag (a SYN or a SYN/ACK).
    #[inline(always)]
    pub fn any_syn(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & TCP_FLAG_SYN != 0
    }

    #[inline(always)]
    pub fn fin(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & TCP_FLAG_FIN != 0
    }

    #[inline(always)]
    pub fn rst(&self) -> bool {
        self.protocol == PROTO_TCP && self.flags & TCP_FLAG_RST != 0
    }

    /// Neither SYN, FIN nor RST: a packet that changes no connection state (ACKs, data; every UDP packet).
    #[inline(always)]
    pub fn plain(&self) -> bool {
        self.flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST) == 0
    }
}

/// Reads ports and flags of the TCP or UDP header after a 20-byte IPv4 header whose total length is `total`
/// (already checked against the frame), and checks that the header is consistent with the packet as a receiver
/// would (RFC 9293 §3.1, RFC 768; Linux drops the same packets): a TCP data offset of at least 5 words that ends
/// inside the packet, a UDP length of at least 8 that does not reach beyond the packet (IP payload after the
/// UDP datagram is padding). Anything else is `DropMalformedL4`, so nothing inconsistent is ever forwarded.
#[inline(always)]
pub fn l4(ctx: &impl Frame, protocol: u8, total: usize) -> Result<L4, Reason> {
    l4_at(ctx, protocol, L4_OFF, total.saturating_sub(IP_LEN))
}

/// [`l4`] for a TCP or UDP header at `offset` in the frame, in an IP payload of `payload` bytes (IPv6: the
/// header right after the fixed 40-byte header, `L4_OFF6`).
#[inline(always)]
pub fn l4_at(ctx: &impl Frame, protocol: u8, offset: usize, payload: usize) -> Result<L4, Reason> {
    if protocol == PROTO_TCP {
        let Some(tcp) = packet::at::<TcpHdr>(ctx, offset) else {
            return Err(Reason::PassTruncated);
        };
        if payload < TcpHdr::LEN {
            return Err(Reason::PassTruncated);
        }
        // SAFETY: bounds-checked by `at`; the ports are the header's first word.
        let ([s0, s1, d0, d1], offset, flags) = unsafe {
            let bytes = tcp as *const u8;
            (packet::load4(bytes), *bytes.add(TCP_DATA_OFFSET_OFF), *bytes.add(TCP_FLAGS_OFF))
        };
        let (sport, dport) = ([s0, s1], [d0, d1]);
        let header_len = usize::from(offset >> 4) * 4;
        if header_len < TcpHdr::LEN || header_len > payload {
            return Err(Reason::DropMalformedL4);
        }
        Ok(L4 { sport, dport, protocol, flags })
    } else if protocol == PROTO_UDP {
        let Some(udp) = packet::at::<UdpHdr>(ctx, offset) else {
            return Err(Reason::PassTruncated);
        };
        if payload < UdpHdr::LEN {
            return Err(Reason::PassTruncated);
        }
        // SAFETY: bounds-checked by `at`; the ports are the header's first word.
        let ([s0, s1, d0, d1], len) = unsafe { (packet::load4(udp as *const u8), (*udp).len) };
        let (sport, dport) = ([s0, s1], [d0, d1]);
        let len = usize::from(u16::from_be_bytes(len));
        if len < UdpHdr::LEN || len > payload {
            return Err(Reason::DropMalformedL4);
        }
        Ok(L4 { sport, dport, protocol, flags: 0 })
    } else {
        Err(Reason::DropNoService)
    }
}
