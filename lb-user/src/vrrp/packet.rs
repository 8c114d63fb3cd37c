//! VRRPv3 advertisement codec for IPv4 and IPv6 (RFC 5798 §5, RFC 9568 §5).
//!
//! Pure: no sockets, no clocks. [`parse_ipv4`] takes what a raw IPv4 `IPPROTO_VRRP` socket delivers (the
//! IPv4 header included, so TTL and addresses can be checked); [`parse_ipv6`] takes the VRRP message of a raw
//! IPv6 socket with the source, destination and hop limit the kernel reported beside it (an IPv6 raw socket
//! never delivers the IPv6 header). Both apply the receive checks of RFC 5798 §7.1 in their RFC order, each
//! failing with its own [`Discard`] reason. [`Advert::emit`] writes the VRRP message only; the kernel adds the
//! IP header.
//!
//! The address family is a type parameter ([`Address`]: [`Ipv4Addr`] or [`Ipv6Addr`]), defaulting to IPv4: an
//! advert carries addresses of its own family only (4 or 16 bytes each), and its checksum covers that family's
//! pseudo-header.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// IP protocol number of VRRP (RFC 5798 §5.1.1.4).
pub const PROTOCOL: u8 = 112;
/// The IPv4 multicast group adverts go to; link-local scope, never forwarded (RFC 5798 §5.1.1.2).
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group adverts go to; link-local scope, never forwarded (RFC 5798 §5.1.2.2).
pub const MULTICAST_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Adverts are sent with this TTL and any other value is discarded: a GTSM-like guarantee that the
/// sender is on-link (RFC 5798 §5.1.1.3, §9).
pub const REQUIRED_TTL: u8 = 255;
/// VRRPv3 (RFC 5798 §5.2.1).
pub const VERSION: u8 = 3;
/// The only message type (RFC 5798 §5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Version..Checksum, before the address list (RFC 5798 §5.2).
pub const HEADER_LEN: usize = 8;
/// Max Adver Int is a 12-bit field in centiseconds (RFC 5798 §5.2.7).
pub const MAX_ADVER_INT_MAX: u16 = 0x0fff;
/// The smallest IPv4 header (IHL 5).
pub const IPV4_MIN_HEADER_LEN: usize = 20;

/// Byte offsets of the VRRP message fields (RFC 5798 §5.2).
mod field {
    use std::ops::Range;

    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    pub const MAX_ADVER_INT: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const ADDRESSES: usize = 8;
}

/// Byte offsets of the IPv4 header fields this module reads (RFC 791 §3.1).
mod ipv4_field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// An address family VRRP runs over: [`Ipv4Addr`] or [`Ipv6Addr`]. RFC 5798 keeps the families apart: an
/// advert carries addresses of one family, and a dual-stack group is one virtual router per family.
pub trait Address: Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// Bytes per address in the advert's address list (RFC 5798 §5.2.9).
    const LEN: usize;
    /// Where multicast adverts go.
    const GROUP: Self;
    /// Whether the RFC 9568 form (no pseudo-header) exists for this family: only IPv4's checksum changed;
    /// IPv6 always covers the pseudo-header (RFC 9568 §5.2.8).
    const CHECKSUM_WITHOUT_PSEUDO_HEADER: bool;
    /// The address in `bytes`, which holds exactly [`Address::LEN`] bytes.
    fn from_slice(bytes: &[u8]) -> Self;
    /// Writes the address into `out`, which holds exactly [`Address::LEN`] bytes.
    fn write(&self, out: &mut [u8]);
    /// The ones'-complement sum of the pseudo-header for a VRRP message of `len` bytes from `src` to `dst`.
    fn pseudo_header_sum(src: Self, dst: Self, len: usize) -> u32;
    /// As the family-agnostic type (for logs and discard reasons).
    fn to_ip(self) -> IpAddr;
}

impl Address for Ipv4Addr {
    const LEN: usize = 4;
    const GROUP: Self = MULTICAST_GROUP;
    const CHECKSUM_WITHOUT_PSEUDO_HEADER: bool = true;

    fn from_slice(bytes: &[u8]) -> Self {
        let mut octets = [0u8; 4];
        octets.copy_from_slice(bytes);
        Ipv4Addr::from(octets)
    }

    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.octets());
    }

    /// `src, dst, 0, 112, length` (RFC 768 style, as keepalived, Wireshark and tcpdump compute it).
    fn pseudo_header_sum(src: Self, dst: Self, len: usize) -> u32 {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&dst.octets());
        pseudo[9] = PROTOCOL;
        pseudo[10..12].copy_from_slice(&len.to_be_bytes());
        add_words(0, &pseudo)
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V4(self)
    }
}

impl Address for Ipv6Addr {
    const LEN: usize = 16;
    const GROUP: Self = MULTICAST_GROUP_V6;
    const CHECKSUM_WITHOUT_PSEUDO_HEADER: bool = false;

    fn from_slice(bytes: &[u8]) -> Self {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(bytes);
        Ipv6Addr::from(octets)
    }

    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.octets());
    }

    /// `src(16) dst(16) length(4) zero(3) next-header=112(1)` (RFC 8200 §8.1, which RFC 5798 §5.2.8 cites as
    /// RFC 2460 §8.1).
    fn pseudo_header_sum(src: Self, dst: Self, len: usize) -> u32 {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let mut pseudo = [0u8; 40];
        pseudo[0..16].copy_from_slice(&src.octets());
        pseudo[16..32].copy_from_slice(&dst.octets());
        pseudo[32..36].copy_from_slice(&len.to_be_bytes());
        pseudo[39] = PROTOCOL;
        add_words(0, &pseudo)
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V6(self)
    }
}

/// How the VRRPv3 checksum of an IPv4 advert is computed (RFC 5798 §5.2.8 vs RFC 9568 §5.2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChecksumMode {
    /// With the IPv4 pseudo-header `src, dst, 0, 112, length`, `dst` being the real destination.
    /// RFC 5798 read literally; what keepalived (2.2.7 can send nothing else), Wireshark and tcpdump do.
    #[default]
    PseudoHeader,
    /// Over the VRRP message alone: RFC 9568 §5.2.8, Cisco and Juniper, keepalived `v3_checksum_as_v2`.
    /// IPv4 only: an IPv6 advert's checksum always covers the IPv6 pseudo-header, whatever this setting.
    Rfc9568,
}

impl ChecksumMode {
    /// The spelling used in the config file and in logs.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumMode::PseudoHeader => "pseudo-header",
            ChecksumMode::Rfc9568 => "rfc9568",
        }
    }
}

impl fmt::Display for ChecksumMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a received packet was dropped. The variants follow RFC 5798 §7.1, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// Shorter than an IPv4 header, than the IPv4 total length, or than the VRRP fixed header.
    /// (IPv6: shorter than the VRRP fixed header.)
    Truncated { have: usize, need: usize },
    /// The IPv4 header is not one of an IPv4 VRRP packet (version, IHL, protocol, total length).
    BadIpHeader(String),
    /// TTL (IPv6: hop limit) other than 255: the sender is not on-link, or something forwarded it (§7.1, §9).
    Ttl { found: u8 },
    /// Version other than 3 (§7.1); a VRRPv2 peer lands here.
    Version { found: u8 },
    /// Type other than ADVERTISEMENT (§5.2.2).
    Type { found: u8 },
    /// Count IPvX Addr is 0, or the addresses it announces are not all present (§5.2.5, §7.1).
    Length { count: u8, have: usize, need: usize },
    /// The checksum matches neither the pseudo-header nor the RFC 9568 form.
    Checksum { found: u16, pseudo_header: u16, rfc9568: u16 },
    /// For a virtual router this node does not run (§7.1).
    Vrid { found: u8, expected: u8 },
    /// Unicast mode: the source is not one of the configured peers (keepalived `check_unicast_src`).
    UnknownPeer { src: IpAddr },
    /// Max Adver Int of 0: adopting it would make a backup's Master_Down_Interval almost 0 and flap.
    ZeroInterval,
}

impl Discard {
    /// A stable snake_case key, for counters and log fields.
    pub fn name(&self) -> &'static str {
        match self {
            Discard::Truncated { .. } => "truncated",
            Discard::BadIpHeader(_) => "bad_ip_header",
            Discard::Ttl { .. } => "ttl",
            Discard::Version { .. } => "version",
            Discard::Type { .. } => "type",
            Discard::Length { .. } => "length",
            Discard::Checksum { .. } => "checksum",
            Discard::Vrid { .. } => "vrid",
            Discard::UnknownPeer { .. } => "unknown_peer",
            Discard::ZeroInterval => "zero_interval",
        }
    }

    /// Every reason, so a caller can pre-create one counter per reason.
    pub const ALL_NAMES: [&'static str; 10] = [
        "truncated",
        "bad_ip_header",
        "ttl",
        "version",
        "type",
        "length",
        "checksum",
        "vrid",
        "unknown_peer",
        "zero_interval",
    ];
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discard::Truncated { have, need } => {
                write!(f, "truncated packet: {have} bytes, expected at least {need}")
            }
            Discard::BadIpHeader(what) => write!(f, "bad IPv4 header: {what}"),
            Discard::Ttl { found } => write!(f, "TTL (hop limit) is {found}, expected {REQUIRED_TTL}"),
            Discard::Version { found } => write!(f, "VRRP version is {found}, expected {VERSION}"),
            Discard::Type { found } => {
                write!(f, "VRRP type is {found}, expected {TYPE_ADVERTISEMENT}")
            }
            Discard::Length { count, have, need } => {
                write!(f, "advert announces {count} addresses: needs {need} bytes (and count >= 1), has {have}")
            }
            Discard::Checksum { found, pseudo_header, rfc9568 } => write!(
                f,
                "checksum is {found:#06x}, expected {pseudo_header:#06x} (pseudo-header) or {rfc9568:#06x} (rfc9568)"
            ),
            Discard::Vrid { found, expected } => {
                write!(f, "VRID is {found}, expected {expected}")
            }
            Discard::UnknownPeer { src } => {
                write!(f, "sender {src} is not a configured unicast peer")
            }
            Discard::ZeroInterval => write!(f, "Max Adver Int is 0, expected 1..=4095 cs"),
        }
    }
}

impl std::error::Error for Discard {}

/// Why an [`Advert`] cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// Count IPvX Addr is 8 bits and must be at least 1 (RFC 5798 §5.2.5).
    AddressCount(usize),
    /// Max Adver Int is 12 bits of centiseconds and 0 makes no sense (RFC 5798 §5.2.7).
    Interval(u16),
    /// The output buffer cannot hold the message.
    BufferTooShort { have: usize, need: usize },
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::AddressCount(n) => {
                write!(f, "advert must carry 1..=255 addresses, got {n}")
            }
            EmitError::Interval(cs) => {
                write!(f, "advert interval must be 1..={MAX_ADVER_INT_MAX} centiseconds, got {cs}")
            }
            EmitError::BufferTooShort { have, need } => {
                write!(f, "buffer of {have} bytes, advert needs {need}")
            }
        }
    }
}

impl std::error::Error for EmitError {}

/// A read-only view of a VRRP message (no IP header) whose addresses are of family `A`.
///
/// Built with [`Packet::new_checked`] (IPv4) or [`Packet::checked`] (any family), every accessor is in bounds.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>, A: Address = Ipv4Addr> {
    buffer: T,
    family: PhantomData<A>,
}

impl<T: AsRef<[u8]>> Packet<T, Ipv4Addr> {
    /// An IPv4 advert: [`Packet::checked`] with 4-byte addresses.
    ///
    /// # Errors
    /// [`Discard::Truncated`] or [`Discard::Length`].
    pub fn new_checked(buffer: T) -> Result<Self, Discard> {
        Self::checked(buffer)
    }
}

impl<T: AsRef<[u8]>, A: Address> Packet<T, A> {
    /// Wraps a buffer and checks it holds the fixed header and the `count` addresses it announces.
    ///
    /// # Errors
    /// [`Discard::Truncated`] or [`Discard::Length`].
    pub fn checked(buffer: T) -> Result<Self, Discard> {
        let packet = Packet { buffer, family: PhantomData };
        packet.check_len()?;
        Ok(packet)
    }

    fn check_len(&self) -> Result<(), Discard> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Discard::Truncated { have: data.len(), need: HEADER_LEN });
        }
        let count = data[field::COUNT];
        let need = message_len::<A>(count);
        if count == 0 || data.len() < need {
            return Err(Discard::Length { count, have: data.len(), need });
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] >> 4
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] & 0x0f
    }

    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }

    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }

    pub fn count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }

    /// Centiseconds; the 4 reserved bits are ignored on receive (RFC 5798 §5.2.6).
    pub fn max_adver_int(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::MAX_ADVER_INT) & MAX_ADVER_INT_MAX
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The message as delimited by `count`; bytes after it are not part of the advert.
    pub fn message(&self) -> &[u8] {
        &self.buffer.as_ref()[..message_len::<A>(self.count())]
    }

    pub fn addresses(&self) -> impl Iterator<Item = A> + '_ {
        self.message()[field::ADDRESSES..].chunks_exact(A::LEN).map(A::from_slice)
    }

    /// Which checksum form the message carries, if any (IPv6 has only the pseudo-header form).
    pub fn verify_checksum(&self, src: A, dst: A) -> Option<ChecksumMode> {
        let found = self.checksum();
        let forms: &[ChecksumMode] = if A::CHECKSUM_WITHOUT_PSEUDO_HEADER {
            &[ChecksumMode::PseudoHeader, ChecksumMode::Rfc9568]
        } else {
            &[ChecksumMode::PseudoHeader]
        };
        forms.iter().copied().find(|&mode| checksum(self.message(), src, dst, mode) == found)
    }
}

/// A VRRPv3 advertisement, as carried on the wire (the Repr of [`Packet`]), with addresses of family `A`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert<A: Address = Ipv4Addr> {
    pub vrid: u8,
    /// 0 = the active router is stopping; 255 = the address owner (RFC 5798 §5.2.4).
    pub priority: u8,
    /// Max Adver Int in centiseconds.
    pub max_adver_int: u16,
    /// The virtual addresses, for troubleshooting only (RFC 5798 §5.2.9).
    pub addresses: Vec<A>,
}

impl<A: Address> Advert<A> {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T, A>) -> Self {
        Advert {
            vrid: packet.vrid(),
            priority: packet.priority(),
            max_adver_int: packet.max_adver_int(),
            addresses: packet.addresses().collect(),
        }
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + A::LEN * self.addresses.len()
    }

    /// Writes the VRRP message into `buf` and returns its length.
    ///
    /// `src` and `dst` only feed the pseudo-header; in unicast mode `dst` is the peer, so every peer
    /// gets its own checksum (keepalived ≥ 1.3.6).
    ///
    /// # Errors
    /// [`EmitError`] when the advert cannot be encoded or `buf` is too short.
    pub fn emit(&self, buf: &mut [u8], src: A, dst: A, mode: ChecksumMode) -> Result<usize, EmitError> {
        let count = match u8::try_from(self.addresses.len()) {
            Ok(n) if n >= 1 => n,
            _ => return Err(EmitError::AddressCount(self.addresses.len())),
        };
        if self.max_adver_int == 0 || self.max_adver_int > MAX_ADVER_INT_MAX {
            return Err(EmitError::Interval(self.max_adver_int));
        }
        let need = self.buffer_len();
        let Some(out) = buf.get_mut(..need) else {
            return Err(EmitError::BufferTooShort { have: buf.len(), need });
        };
        out[field::VER_TYPE] = (VERSION << 4) | TYPE_ADVERTISEMENT;
        out[field::VRID] = self.vrid;
        out[field::PRIORITY] = self.priority;
        out[field::COUNT] = count;
        // The reserved high nibble MUST be 0 on send (RFC 5798 §5.2.6).
        out[field::MAX_ADVER_INT].copy_from_slice(&self.max_adver_int.to_be_bytes());
        out[field::CHECKSUM].copy_from_slice(&[0, 0]);
        for (slot, addr) in out[field::ADDRESSES..].chunks_exact_mut(A::LEN).zip(&self.addresses) {
            addr.write(slot);
        }
        let sum = checksum(out, src, dst, mode);
        out[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        Ok(need)
    }

    /// [`Advert::emit`] into a new buffer of the right size.
    ///
    /// # Errors
    /// [`EmitError`] when the advert cannot be encoded.
    pub fn to_bytes(&self, src: A, dst: A, mode: ChecksumMode) -> Result<Vec<u8>, EmitError> {
        let mut buf = vec![0; self.buffer_len()];
        self.emit(&mut buf, src, dst, mode)?;
        Ok(buf)
    }
}

/// What the receive path knows about this node, for the §7.1 checks.
#[derive(Debug, Clone, Copy)]
pub struct RxFilter<'a, A: Address = Ipv4Addr> {
    pub vrid: u8,
    /// Empty in multicast mode; otherwise only these senders are accepted.
    pub unicast_peers: &'a [A],
}

/// An advert that passed every receive check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<A: Address = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    pub advert: Advert<A>,
    /// The checksum form the sender used (logged once per peer, so interop problems show).
    pub checksum: ChecksumMode,
}

/// The VRID of a raw IPv4 VRRP packet, read without any check (to find the instance it is for, which then checks
/// it in full); `None` when the packet is too short to hold one.
pub fn peek_vrid(bytes: &[u8]) -> Option<u8> {
    let ihl = usize::from(bytes.first()? & 0x0f) * 4;
    bytes.get(ihl + field::VRID).copied()
}

/// Parses an IPv4 packet as delivered by a raw protocol-112 socket and applies the receive checks of
/// RFC 5798 §7.1 in order: IP header, TTL, version, type, length, checksum, VRID, then the unicast
/// peer allow-list and a non-zero interval.
///
/// # Errors
/// The first check that fails, as a [`Discard`].
pub fn parse_ipv4(bytes: &[u8], filter: &RxFilter<'_>) -> Result<Received, Discard> {
    if bytes.len() < IPV4_MIN_HEADER_LEN {
        return Err(Discard::Truncated { have: bytes.len(), need: IPV4_MIN_HEADER_LEN });
    }
    let version = bytes[ipv4_field::VER_IHL] >> 4;
    if version != 4 {
        return Err(Discard::BadIpHeader(format!("IP version is {version}, expected 4")));
    }
    let ihl = usize::from(bytes[ipv4_field::VER_IHL] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER_LEN {
        return Err(Discard::BadIpHeader(format!(
            "header length is {ihl} bytes, expected at least {IPV4_MIN_HEADER_LEN}"
        )));
    }
    let protocol = bytes[ipv4_field::PROTOCOL];
    if protocol != PROTOCOL {
        return Err(Discard::BadIpHeader(format!("protocol is {protocol}, expected {PROTOCOL}")));
    }
    let total_len = usize::from(read_u16(bytes, ipv4_field::TOTAL_LEN));
    if total_len < ihl {
        return Err(Discard::BadIpHeader(format!("total length {total_len} is shorter than the header length {ihl}")));
    }
    if bytes.len() < total_len {
        return Err(Discard::Truncated { have: bytes.len(), need: total_len });
    }
    let ttl = bytes[ipv4_field::TTL];
    let src = read_ipv4(bytes, ipv4_field::SRC);
    let dst = read_ipv4(bytes, ipv4_field::DST);
    check_message(&bytes[ihl..total_len], src, dst, ttl, true, filter)
}

/// Parses the VRRP message a raw IPv6 protocol-112 socket delivered, with the source, destination and hop
/// limit the kernel reported beside it (`recvmsg`'s address, `IPV6_PKTINFO`, `IPV6_HOPLIMIT`), and applies the
/// receive checks of RFC 5798 §7.1 in the order of [`parse_ipv4`].
///
/// The hop limit must be 255 for multicast. A unicast advert from a configured peer is accepted with any
/// hop limit: keepalived (2.2.7, as captured) sends its IPv6 unicast adverts with the default hop limit 64 and
/// itself skips the check in unicast mode; the peer allow-list is the check there. Adverts to ff02::12 are
/// always checked, as is any advert while no unicast peer is configured.
///
/// # Errors
/// The first check that fails, as a [`Discard`].
pub fn parse_ipv6(
    message: &[u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    filter: &RxFilter<'_, Ipv6Addr>,
) -> Result<Received<Ipv6Addr>, Discard> {
    let check_hop_limit = filter.unicast_peers.is_empty() || dst.is_multicast();
    check_message(message, src, dst, hop_limit, check_hop_limit, filter)
}

/// The §7.1 checks after the IP header: TTL/hop limit, version, type, length, checksum, VRID, peer, interval.
fn check_message<A: Address>(
    payload: &[u8],
    src: A,
    dst: A,
    ttl: u8,
    check_ttl: bool,
    filter: &RxFilter<'_, A>,
) -> Result<Received<A>, Discard> {
    if payload.len() < HEADER_LEN {
        return Err(Discard::Truncated { have: payload.len(), need: HEADER_LEN });
    }
    if check_ttl && ttl != REQUIRED_TTL {
        return Err(Discard::Ttl { found: ttl });
    }
    let version = payload[field::VER_TYPE] >> 4;
    if version != VERSION {
        return Err(Discard::Version { found: version });
    }
    let msg_type = payload[field::VER_TYPE] & 0x0f;
    if msg_type != TYPE_ADVERTISEMENT {
        return Err(Discard::Type { found: msg_type });
    }
    let packet = Packet::<_, A>::checked(payload)?;
    let Some(checksum_mode) = packet.verify_checksum(src, dst) else {
        return Err(Discard::Checksum {
            found: packet.checksum(),
            pseudo_header: checksum(packet.message(), src, dst, ChecksumMode::PseudoHeader),
            rfc9568: checksum(packet.message(), src, dst, ChecksumMode::Rfc9568),
        });
    };
    if packet.vrid() != filter.vrid {
        return Err(Discard::Vrid { found: packet.vrid(), expected: filter.vrid });
    }
    if !filter.unicast_peers.is_empty() && !filter.unicast_peers.contains(&src) {
        return Err(Discard::UnknownPeer { src: src.to_ip() });
    }
    if packet.max_adver_int() == 0 {
        return Err(Discard::ZeroInterval);
    }
    Ok(Received { src, dst, ttl, advert: Advert::parse(&packet), checksum: checksum_mode })
}

/// The VRRP checksum of `message`, its own checksum field counted as zero.
///
/// The pseudo-header length is the message length, as keepalived computes it (`vrrp.c`).
/// For IPv6 the pseudo-header is always included, whatever `mode` says (RFC 9568 §5.2.8).
pub fn checksum<A: Address>(message: &[u8], src: A, dst: A, mode: ChecksumMode) -> u16 {
    let mut sum: u32 = 0;
    if mode == ChecksumMode::PseudoHeader || !A::CHECKSUM_WITHOUT_PSEUDO_HEADER {
        sum = A::pseudo_header_sum(src, dst, message.len());
    }
    if message.len() >= field::CHECKSUM.end {
        sum = add_words(sum, &message[..field::CHECKSUM.start]);
        sum = add_words(sum, &message[field::CHECKSUM.end..]);
    } else {
        sum = add_words(sum, message);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Adds big-endian 16-bit words; an odd trailing byte is padded with zero (RFC 1071).
fn add_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        // Fold eagerly so a long buffer can never overflow u32.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn message_len<A: Address>(count: u8) -> usize {
    HEADER_LEN + A::LEN * usize::from(count)
}

fn read_u16(data: &[u8], range: Range<usize>) -> u16 {
    u16::from_be_bytes([data[range.start], data[range.start + 1]])
}

fn read_ipv4(data: &[u8], range: Range<usize>) -> Ipv4Addr {
    let a = &data[range];
    Ipv4Addr::new(a[0], a[1], a[2], a[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the hex of vrrp.md §4.3 (spaces and `|` are separators).
    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|c| match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => c - b'A' + 10,
            })
            .collect();
        digits.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect()
    }

    const A1: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const A2: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    // vrrp.md §4.3, captured from keepalived 2.2.7.
    const MULTICAST: &str = "45c0 0020 0001 0000 ff70 d035 0a63 0002 e000 0012 | 3133 6401 0064 74ac 0a63 0064";
    const PRIO_ZERO: &str = "45c0 0020 001a 0000 ff70 d01d 0a63 0001 e000 0012 | 3133 0001 0064 d8ad 0a63 0064";
    const UNICAST: &str = "45c0 0020 0001 0000 ff70 a5e4 0a63 0002 0a63 0001 | 3134 6401 0032 4a8b 0a63 0065";

    const MCAST_FILTER: RxFilter<'static> = RxFilter { vrid: 51, unicast_peers: &[] };

    fn multicast_advert() -> Advert {
        Advert { vrid: 51, priority: 100, max_adver_int: 100, addresses: vec![Ipv4Addr::new(10, 99, 0, 100)] }
    }

    /// A valid multicast packet with the given IPv4 header/VRRP bytes patched by `edit`, checksum
    /// recomputed (pseudo-header form) so only the intended check can fail.
    fn patched(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut bytes = hex(MULTICAST);
        edit(&mut bytes);
        let total = usize::from(read_u16(&bytes, ipv4_field::TOTAL_LEN)).min(bytes.len());
        let src = read_ipv4(&bytes, ipv4_field::SRC);
        let dst = read_ipv4(&bytes, ipv4_field::DST);
        if total >= 20 + HEADER_LEN {
            let sum = checksum(&bytes[20..total], src, dst, ChecksumMode::PseudoHeader);
            bytes[26..28].copy_from_slice(&sum.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn parses_captured_multicast_advert() {
        let rx = parse_ipv4(&hex(MULTICAST), &MCAST_FILTER).unwrap();
        assert_eq!(rx.src, A2);
        assert_eq!(rx.dst, MULTICAST_GROUP);
        assert_eq!(rx.ttl, 255);
        assert_eq!(rx.advert, multicast_advert());
        assert_eq!(rx.checksum, ChecksumMode::PseudoHeader);
    }

    #[test]
    fn reemits_captured_multicast_advert_byte_identical() {
        let bytes = hex(MULTICAST);
        let out = multicast_advert().to_bytes(A2, MULTICAST_GROUP, ChecksumMode::PseudoHeader).unwrap();
        assert_eq!(out, bytes[20..]);
    }

    #[test]
    fn multicast_checksum_in_both_modes() {
        let bytes = hex(MULTICAST);
        let msg = &bytes[20..];
        assert_eq!(checksum(msg, A2, MULTICAST_GROUP, ChecksumMode::PseudoHeader), 0x74ac);
        assert_eq!(checksum(msg, A2, MULTICAST_GROUP, ChecksumMode::Rfc9568), 0x5fa0);
        let rfc = multicast_advert().to_bytes(A2, MULTICAST_GROUP, ChecksumMode::Rfc9568).unwrap();
        assert_eq!(rfc[6..8], [0x5f, 0xa0]);
    }

    #[test]
    fn accepts_rfc9568_checksum_on_receive() {
        let mut bytes = hex(MULTICAST);
        bytes[26..28].copy_from_slice(&[0x5f, 0xa0]);
        let rx = parse_ipv4(&bytes, &MCAST_FILTER).unwrap();
        assert_eq!(rx.checksum, ChecksumMode::Rfc9568);
        assert_eq!(rx.advert, multicast_advert());
    }

    #[test]
    fn parses_and_reemits_captured_priority_zero_advert() {
        let bytes = hex(PRIO_ZERO);
        let rx = parse_ipv4(&bytes, &MCAST_FILTER).unwrap();
        assert_eq!(rx.src, A1);
        assert_eq!(rx.advert.priority, 0);
        assert_eq!(rx.advert.max_adver_int, 100);
        let out = rx.advert.to_bytes(A1, MULTICAST_GROUP, ChecksumMode::PseudoHeader).unwrap();
        assert_eq!(out, bytes[20..]);
        assert_eq!(checksum(&out, A1, MULTICAST_GROUP, ChecksumMode::PseudoHeader), 0xd8ad);
    }

    #[test]
    fn parses_and_reemits_captured_unicast_advert() {
        let bytes = hex(UNICAST);
        let peers = [A2];
        let filter = RxFilter { vrid: 52, unicast_peers: &peers };
        let rx = parse_ipv4(&bytes, &filter).unwrap();
        assert_eq!((rx.src, rx.dst), (A2, A1));
        assert_eq!(
            rx.advert,
            Advert { vrid: 52, priority: 100, max_adver_int: 50, addresses: vec![Ipv4Addr::new(10, 99, 0, 101)] }
        );
        let out = rx.advert.to_bytes(A2, A1, ChecksumMode::PseudoHeader).unwrap();
        assert_eq!(out, bytes[20..]);
    }

    #[test]
    fn unicast_checksum_uses_the_real_destination() {
        let bytes = hex(UNICAST);
        let msg = &bytes[20..];
        assert_eq!(checksum(msg, A2, A1, ChecksumMode::PseudoHeader), 0x4a8b);
        assert_eq!(checksum(msg, A2, MULTICAST_GROUP, ChecksumMode::PseudoHeader), 0x74dc);
        assert_eq!(checksum(msg, A2, A1, ChecksumMode::Rfc9568), 0x5fd0);
    }

    #[test]
    fn old_keepalived_unicast_checksum_with_group_address_is_discarded() {
        // keepalived < 1.3.6 put 224.0.0.18 in the pseudo-header even for unicast; not accepted.
        let mut bytes = hex(UNICAST);
        bytes[26..28].copy_from_slice(&[0x74, 0xdc]);
        let filter = RxFilter { vrid: 52, unicast_peers: &[] };
        assert_eq!(
            parse_ipv4(&bytes, &filter).unwrap_err(),
            Discard::Checksum { found: 0x74dc, pseudo_header: 0x4a8b, rfc9568: 0x5fd0 }
        );
    }

    #[test]
    fn reserved_bits_are_ignored_on_receive() {
        let bytes = patched(|b| b[24] |= 0xf0);
        let rx = parse_ipv4(&bytes, &MCAST_FILTER).unwrap();
        assert_eq!(rx.advert.max_adver_int, 100);
    }

    #[test]
    fn bytes_after_the_announced_addresses_are_ignored() {
        // Checksum and pseudo-header length cover 8 + 4*count bytes, as in keepalived.
        let mut bytes = hex(MULTICAST);
        bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        bytes[2..4].copy_from_slice(&36u16.to_be_bytes());
        let rx = parse_ipv4(&bytes, &MCAST_FILTER).unwrap();
        assert_eq!(rx.advert, multicast_advert());
    }

    #[test]
    fn discards_truncated_packet() {
        let bytes = hex(MULTICAST);
        let err = parse_ipv4(&bytes[..19], &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Truncated { have: 19, need: 20 });
        assert_eq!(err.name(), "truncated");
        // Shorter than the IPv4 total length says.
        let err = parse_ipv4(&bytes[..30], &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Truncated { have: 30, need: 32 });
        // IPv4 header complete but no room for the VRRP fixed header.
        let short = patched(|b| {
            b.truncate(24);
            b[2..4].copy_from_slice(&24u16.to_be_bytes());
        });
        assert_eq!(parse_ipv4(&short, &MCAST_FILTER).unwrap_err(), Discard::Truncated { have: 4, need: 8 });
    }

    #[test]
    fn discards_bad_ip_header() {
        for edit in [
            (|b: &mut Vec<u8>| b[0] = 0x65) as fn(&mut Vec<u8>),
            |b| b[0] = 0x44,
            |b| b[9] = 17,
            |b| b[2..4].copy_from_slice(&10u16.to_be_bytes()),
        ] {
            let bytes = patched(edit);
            let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
            assert_eq!(err.name(), "bad_ip_header", "{err}");
        }
    }

    #[test]
    fn discards_ttl_other_than_255() {
        let bytes = patched(|b| b[8] = 254);
        let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Ttl { found: 254 });
        assert_eq!(err.name(), "ttl");
    }

    #[test]
    fn discards_version_other_than_3() {
        let bytes = patched(|b| b[20] = 0x21);
        let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Version { found: 2 });
        assert_eq!(err.name(), "version");
    }

    #[test]
    fn discards_type_other_than_advertisement() {
        let bytes = patched(|b| b[20] = 0x32);
        let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Type { found: 2 });
        assert_eq!(err.name(), "type");
    }

    #[test]
    fn discards_count_larger_than_the_packet() {
        let bytes = patched(|b| b[23] = 2);
        let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Length { count: 2, have: 12, need: 16 });
        assert_eq!(err.name(), "length");
    }

    #[test]
    fn discards_count_of_zero() {
        let bytes = patched(|b| b[23] = 0);
        assert_eq!(parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err().name(), "length");
    }

    #[test]
    fn discards_bad_checksum() {
        let mut bytes = hex(MULTICAST);
        bytes[27] ^= 1;
        let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Checksum { found: 0x74ad, pseudo_header: 0x74ac, rfc9568: 0x5fa0 });
        assert_eq!(err.name(), "checksum");
    }

    #[test]
    fn discards_other_vrid() {
        let filter = RxFilter { vrid: 52, unicast_peers: &[] };
        let err = parse_ipv4(&hex(MULTICAST), &filter).unwrap_err();
        assert_eq!(err, Discard::Vrid { found: 51, expected: 52 });
        assert_eq!(err.name(), "vrid");
    }

    #[test]
    fn discards_unicast_sender_not_in_peer_list() {
        let peers = [Ipv4Addr::new(10, 99, 0, 3)];
        let filter = RxFilter { vrid: 52, unicast_peers: &peers };
        let err = parse_ipv4(&hex(UNICAST), &filter).unwrap_err();
        assert_eq!(err, Discard::UnknownPeer { src: A2.into() });
        assert_eq!(err.name(), "unknown_peer");
    }

    #[test]
    fn discards_zero_interval() {
        let bytes = patched(|b| b[24..26].copy_from_slice(&[0xf0, 0x00]));
        let err = parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::ZeroInterval);
        assert_eq!(err.name(), "zero_interval");
    }

    #[test]
    fn checks_run_in_rfc_order() {
        // TTL is checked before version, version before VRID: a v2 packet from off-link counts as ttl.
        let bytes = patched(|b| {
            b[8] = 64;
            b[20] = 0x21;
            b[21] = 7;
        });
        assert_eq!(parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err().name(), "ttl");
        let bytes = patched(|b| {
            b[20] = 0x21;
            b[21] = 7;
        });
        assert_eq!(parse_ipv4(&bytes, &MCAST_FILTER).unwrap_err().name(), "version");
    }

    #[test]
    fn discard_names_are_unique_and_listed() {
        let all = [
            Discard::Truncated { have: 0, need: 0 },
            Discard::BadIpHeader(String::new()),
            Discard::Ttl { found: 0 },
            Discard::Version { found: 0 },
            Discard::Type { found: 0 },
            Discard::Length { count: 0, have: 0, need: 0 },
            Discard::Checksum { found: 0, pseudo_header: 0, rfc9568: 0 },
            Discard::Vrid { found: 0, expected: 0 },
            Discard::UnknownPeer { src: A1.into() },
            Discard::ZeroInterval,
        ];
        let names: Vec<_> = all.iter().map(Discard::name).collect();
        assert_eq!(names, Discard::ALL_NAMES);
    }

    #[test]
    fn emit_refuses_zero_or_too_many_addresses() {
        let mut advert = multicast_advert();
        advert.addresses.clear();
        assert_eq!(advert.to_bytes(A1, MULTICAST_GROUP, ChecksumMode::PseudoHeader), Err(EmitError::AddressCount(0)));
        advert.addresses = vec![A1; 256];
        assert_eq!(advert.to_bytes(A1, MULTICAST_GROUP, ChecksumMode::PseudoHeader), Err(EmitError::AddressCount(256)));
    }

    #[test]
    fn emit_refuses_interval_outside_12_bits() {
        let mut advert = multicast_advert();
        for bad in [0, 4096] {
            advert.max_adver_int = bad;
            assert_eq!(advert.to_bytes(A1, MULTICAST_GROUP, ChecksumMode::PseudoHeader), Err(EmitError::Interval(bad)));
        }
    }

    #[test]
    fn emit_refuses_short_buffer() {
        let mut buf = [0u8; 11];
        assert_eq!(
            multicast_advert().emit(&mut buf, A1, MULTICAST_GROUP, ChecksumMode::PseudoHeader),
            Err(EmitError::BufferTooShort { have: 11, need: 12 })
        );
    }

    #[test]
    fn emit_round_trips_many_addresses() {
        let advert = Advert {
            vrid: 255,
            priority: 255,
            max_adver_int: 4095,
            addresses: (1..=255).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect(),
        };
        let msg = advert.to_bytes(A1, A2, ChecksumMode::Rfc9568).unwrap();
        let packet = Packet::new_checked(&msg[..]).unwrap();
        assert_eq!(packet.verify_checksum(A1, A2), Some(ChecksumMode::Rfc9568));
        assert_eq!(Advert::parse(&packet), advert);
    }

    // IPv6: captured from keepalived 2.2.7 (Debian) in a netns pair; the IPv6 header's fields as tcpdump showed them.
    const LL_A: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0a);
    const U1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
    const U2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
    /// fe80::ff:fe00:a -> ff02::12, hop limit 255: vrid 61, priority 100, 100 cs, VIP fd00:99::100.
    const V6_MULTICAST: &str = "313d 6401 0064 6e9b fd00 0099 0000 0000 0000 0000 0000 0100";
    /// The same router stopping (SIGTERM): priority 0.
    const V6_PRIO_ZERO: &str = "313d 0001 0064 d29b fd00 0099 0000 0000 0000 0000 0000 0100";
    /// fd00:99::1 -> fd00:99::2 (unicast_src_ip, unicast_peer), hop limit 64: vrid 62, priority 100, 50 cs,
    /// VIPs fd00:99::101 and fd00:99::102.
    const V6_UNICAST: &str = "313e 6402 0032 7187 fd00 0099 0000 0000 0000 0000 0000 0101 \
                              fd00 0099 0000 0000 0000 0000 0000 0102";

    fn v6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, last)
    }

    const V6_MCAST_FILTER: RxFilter<'static, Ipv6Addr> = RxFilter { vrid: 61, unicast_peers: &[] };

    #[test]
    fn parses_captured_keepalived_ipv6_multicast_advert() {
        let rx = parse_ipv6(&hex(V6_MULTICAST), LL_A, MULTICAST_GROUP_V6, 255, &V6_MCAST_FILTER).unwrap();
        assert_eq!((rx.src, rx.dst, rx.ttl), (LL_A, MULTICAST_GROUP_V6, 255));
        assert_eq!(rx.advert, Advert { vrid: 61, priority: 100, max_adver_int: 100, addresses: vec![v6(0x100)] });
        assert_eq!(rx.checksum, ChecksumMode::PseudoHeader);
    }

    #[test]
    fn reemits_captured_ipv6_adverts_byte_identical() {
        for (hexed, priority) in [(V6_MULTICAST, 100), (V6_PRIO_ZERO, 0)] {
            let advert = Advert { vrid: 61, priority, max_adver_int: 100, addresses: vec![v6(0x100)] };
            let out = advert.to_bytes(LL_A, MULTICAST_GROUP_V6, ChecksumMode::PseudoHeader).unwrap();
            assert_eq!(out, hex(hexed), "priority {priority}");
        }
    }

    #[test]
    fn ipv6_checksum_covers_the_ipv6_pseudo_header_in_both_modes() {
        let msg = hex(V6_MULTICAST);
        assert_eq!(checksum(&msg, LL_A, MULTICAST_GROUP_V6, ChecksumMode::PseudoHeader), 0x6e9b);
        // RFC 9568 dropped the pseudo-header for IPv4 only.
        assert_eq!(checksum(&msg, LL_A, MULTICAST_GROUP_V6, ChecksumMode::Rfc9568), 0x6e9b);
        let advert = Advert { vrid: 61, priority: 100, max_adver_int: 100, addresses: vec![v6(0x100)] };
        assert_eq!(advert.to_bytes(LL_A, MULTICAST_GROUP_V6, ChecksumMode::Rfc9568).unwrap(), msg);
        // Another source gives another checksum: the source is in the sum.
        assert_ne!(checksum(&msg, U1, MULTICAST_GROUP_V6, ChecksumMode::PseudoHeader), 0x6e9b);
    }

    #[test]
    fn ipv6_checksum_without_pseudo_header_is_discarded() {
        // The IPv4 RFC 9568 form (the message alone) is not a valid IPv6 checksum.
        let mut msg = hex(V6_MULTICAST);
        let bare = {
            let mut sum = add_words(0, &msg[..6]);
            sum = add_words(sum, &msg[8..]);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !(sum as u16)
        };
        msg[6..8].copy_from_slice(&bare.to_be_bytes());
        let err = parse_ipv6(&msg, LL_A, MULTICAST_GROUP_V6, 255, &V6_MCAST_FILTER).unwrap_err();
        assert_eq!(err, Discard::Checksum { found: bare, pseudo_header: 0x6e9b, rfc9568: 0x6e9b });
    }

    #[test]
    fn parses_captured_keepalived_ipv6_unicast_advert_with_hop_limit_64() {
        let bytes = hex(V6_UNICAST);
        let peers = [U1];
        let filter = RxFilter { vrid: 62, unicast_peers: &peers[..] };
        let rx = parse_ipv6(&bytes, U1, U2, 64, &filter).unwrap();
        assert_eq!(
            rx.advert,
            Advert { vrid: 62, priority: 100, max_adver_int: 50, addresses: vec![v6(0x101), v6(0x102)] }
        );
        assert_eq!(rx.advert.to_bytes(U1, U2, ChecksumMode::PseudoHeader).unwrap(), bytes);
        assert_eq!(checksum(&bytes, U1, U2, ChecksumMode::PseudoHeader), 0x7187);
        // The peer list is the check in unicast mode: another sender is refused whatever its hop limit.
        let others = [v6(3)];
        let filter = RxFilter { vrid: 62, unicast_peers: &others[..] };
        let err = parse_ipv6(&bytes, U1, U2, 255, &filter).unwrap_err();
        assert_eq!(err, Discard::UnknownPeer { src: IpAddr::V6(U1) });
    }

    #[test]
    fn ipv6_hop_limit_must_be_255_for_multicast() {
        let msg = hex(V6_MULTICAST);
        for hop_limit in [0, 1, 64, 254] {
            let err = parse_ipv6(&msg, LL_A, MULTICAST_GROUP_V6, hop_limit, &V6_MCAST_FILTER).unwrap_err();
            assert_eq!(err, Discard::Ttl { found: hop_limit });
        }
        // Unicast mode does not relax it for adverts that went to the group.
        let peers = [LL_A];
        let filter = RxFilter { vrid: 61, unicast_peers: &peers[..] };
        let err = parse_ipv6(&msg, LL_A, MULTICAST_GROUP_V6, 64, &filter).unwrap_err();
        assert_eq!(err.name(), "ttl");
        // Multicast mode checks a unicast-addressed advert too.
        let unicast = hex(V6_UNICAST);
        let filter = RxFilter { vrid: 62, unicast_peers: &[] };
        assert_eq!(parse_ipv6(&unicast, U1, U2, 64, &filter).unwrap_err().name(), "ttl");
    }

    #[test]
    fn ipv6_advert_checks_run_as_for_ipv4() {
        let msg = hex(V6_MULTICAST);
        let parse = |m: &[u8]| parse_ipv6(m, LL_A, MULTICAST_GROUP_V6, 255, &V6_MCAST_FILTER);
        assert_eq!(parse(&msg[..7]).unwrap_err(), Discard::Truncated { have: 7, need: 8 });
        // Count 1 needs 8 + 16 bytes: an IPv4-sized address list is short.
        assert_eq!(parse(&msg[..12]).unwrap_err(), Discard::Length { count: 1, have: 12, need: 24 });
        let mut v2 = msg.clone();
        v2[0] = 0x21;
        assert_eq!(parse(&v2).unwrap_err().name(), "version");
        let mut other = msg.clone();
        other[1] = 62;
        assert_eq!(parse(&other).unwrap_err().name(), "checksum");
        let filter = RxFilter { vrid: 62, unicast_peers: &[] };
        let err = parse_ipv6(&msg, LL_A, MULTICAST_GROUP_V6, 255, &filter).unwrap_err();
        assert_eq!(err, Discard::Vrid { found: 61, expected: 62 });
    }

    #[test]
    fn ipv6_emit_round_trips_many_addresses() {
        let advert = Advert {
            vrid: 9,
            priority: 254,
            max_adver_int: 4095,
            addresses: (1..=255).map(v6).collect::<Vec<Ipv6Addr>>(),
        };
        let msg = advert.to_bytes(LL_A, MULTICAST_GROUP_V6, ChecksumMode::PseudoHeader).unwrap();
        assert_eq!(msg.len(), 8 + 16 * 255);
        let packet = Packet::<_, Ipv6Addr>::checked(&msg[..]).unwrap();
        assert_eq!(packet.verify_checksum(LL_A, MULTICAST_GROUP_V6), Some(ChecksumMode::PseudoHeader));
        assert_eq!(Advert::parse(&packet), advert);
    }
}
