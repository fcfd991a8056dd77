//! Writing and rewriting packets (used by the restore core, `crate::recovery`): a
//! whole IPv4 + TCP packet, RFC 1071 checksums, the layout of a packet already read by
//! [`Segment::parse`](super::segment::Segment::parse), and a walk over option bytes
//! that [`options::parse`](super::options::parse) has already accepted (that parser
//! returns values, not offsets; rewriting needs offsets).

use super::{flags, kind};
use std::net::Ipv4Addr;

/// Length of an IPv4 header without options.
pub(crate) const IPV4_LEN: usize = 20;
/// Length of a TCP header without options.
pub(crate) const TCP_LEN: usize = 20;
/// Length of the timestamps option (kind, length, TSval, TSecr).
pub(crate) const TS_OPTION_LEN: usize = 10;
/// TTL of the packets we write (Linux's default).
pub(crate) const TTL: u8 = 64;
/// Offset of the TCP checksum inside the TCP header.
const TCP_CHECKSUM_AT: usize = 16;
/// Offset of the IPv4 header checksum inside the IPv4 header.
const IPV4_CHECKSUM_AT: usize = 10;
/// IPv4 "don't fragment" bit in the flags/fragment-offset field.
const DONT_FRAGMENT: u16 = 0x4000;
/// IP protocol number of TCP.
const PROTO_TCP: u8 = 6;

/// One TCP segment to write as a whole IPv4 packet.
#[derive(Debug, Clone)]
pub(crate) struct Tcp<'a> {
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (sets the ACK flag), if any.
    pub ack: Option<u32>,
    /// Flags other than ACK (see [`flags`]).
    pub flags: u8,
    /// Raw window field.
    pub window: u16,
    /// Option bytes; padded with END to a multiple of 4 (at most 40 bytes are written).
    pub options: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// Writes `t` as an IPv4 packet: no IP options, ID 0, DF set, TTL 64, TOS 0, correct
/// IPv4 and TCP checksums. Option bytes beyond 40 and payload beyond what a 65535-byte
/// packet holds are not written (callers never come near either limit).
pub(crate) fn build(t: &Tcp<'_>) -> Vec<u8> {
    let options = &t.options[..t.options.len().min(40)];
    let options_len = options.len().div_ceil(4) * 4;
    let header_len = IPV4_LEN + TCP_LEN + options_len;
    let payload = &t.payload[..t.payload.len().min(usize::from(u16::MAX) - header_len)];
    let total = header_len + payload.len();
    let mut p = Vec::with_capacity(total);
    // IPv4 header.
    p.push(0x45);
    p.push(0);
    // `total` is at most 65535 by construction of `payload`.
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&DONT_FRAGMENT.to_be_bytes());
    p.push(TTL);
    p.push(PROTO_TCP);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&t.src.0.octets());
    p.extend_from_slice(&t.dst.0.octets());
    // TCP header.
    p.extend_from_slice(&t.src.1.to_be_bytes());
    p.extend_from_slice(&t.dst.1.to_be_bytes());
    p.extend_from_slice(&t.seq.to_be_bytes());
    p.extend_from_slice(&t.ack.unwrap_or(0).to_be_bytes());
    // Data offset in 32-bit words: at most (20 + 40) / 4 = 15.
    p.push((((TCP_LEN + options_len) / 4) as u8) << 4);
    p.push(t.flags | if t.ack.is_some() { flags::ACK } else { 0 });
    p.extend_from_slice(&t.window.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    p.extend_from_slice(options);
    p.resize(header_len, kind::END);
    p.extend_from_slice(payload);
    set_ipv4_checksum(&mut p);
    set_tcp_checksum(&mut p, IPV4_LEN, total);
    p
}

/// Where the parts of an IPv4 + TCP packet are. Built only by [`Layout::of`], which
/// checks every offset against the packet, so slicing with it cannot panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// IPv4 header length (start of the TCP header).
    pub ip_len: usize,
    /// IPv4 total length (end of the TCP payload).
    pub total: usize,
    /// TCP header length (fixed part and options).
    pub tcp_len: usize,
}

impl Layout {
    /// The layout of `packet`, or `None` if a length field is impossible. Meant for
    /// packets already accepted by the tracker's `Segment::parse`, which checks the
    /// same things with better errors.
    pub fn of(packet: &[u8]) -> Option<Layout> {
        let ip_len = usize::from(packet.first()? & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
        let tcp_len = usize::from(packet.get(ip_len + 12)? >> 4) * 4;
        let ok = ip_len >= IPV4_LEN
            && tcp_len >= TCP_LEN
            && ip_len + tcp_len <= total
            && total <= packet.len();
        ok.then_some(Layout {
            ip_len,
            total,
            tcp_len,
        })
    }

    /// Range of the TCP option bytes in the packet.
    pub fn options(&self) -> std::ops::Range<usize> {
        self.ip_len + TCP_LEN..self.ip_len + self.tcp_len
    }
}

/// Ones' complement sum of `data` as 16-bit big-endian words (odd tail padded with 0),
/// added to `acc` without folding.
fn ones_sum(data: &[u8], acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum = acc;
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits (end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    sum as u16
}

/// Sum of the TCP pseudo-header for a segment of `len` bytes.
fn pseudo_sum(src: [u8; 4], dst: [u8; 4], len: usize) -> u64 {
    let acc = ones_sum(&src, 0);
    let acc = ones_sum(&dst, acc);
    acc + u64::from(PROTO_TCP) + len as u64
}

/// Addresses of an IPv4 header (caller guarantees 20 bytes).
fn addresses(packet: &[u8]) -> ([u8; 4], [u8; 4]) {
    let mut src = [0; 4];
    let mut dst = [0; 4];
    src.copy_from_slice(&packet[12..16]);
    dst.copy_from_slice(&packet[16..20]);
    (src, dst)
}

/// The RFC 1071 TCP checksum of `packet[ip_len..total]` (its checksum field ignored).
fn tcp_checksum(packet: &[u8], ip_len: usize, total: usize) -> u16 {
    let (src, dst) = addresses(packet);
    let segment = &packet[ip_len..total];
    let acc = pseudo_sum(src, dst, segment.len());
    let acc = ones_sum(&segment[..TCP_CHECKSUM_AT], acc);
    let acc = ones_sum(&segment[TCP_CHECKSUM_AT + 2..], acc);
    !fold(acc)
}

/// Writes the TCP checksum of `packet[ip_len..total]` (full recompute, RFC 1071).
/// The caller guarantees `ip_len >= 20` and `ip_len + 20 <= total <= packet.len()`.
pub(crate) fn set_tcp_checksum(packet: &mut [u8], ip_len: usize, total: usize) {
    let sum = tcp_checksum(packet, ip_len, total);
    let at = ip_len + TCP_CHECKSUM_AT;
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Writes the IPv4 header checksum (header length from the IHL field; the caller
/// guarantees the header is inside `packet`).
pub(crate) fn set_ipv4_checksum(packet: &mut [u8]) {
    let len = usize::from(packet[0] & 0x0f) * 4;
    let acc = ones_sum(&packet[..IPV4_CHECKSUM_AT], 0);
    let acc = ones_sum(&packet[IPV4_CHECKSUM_AT + 2..len], acc);
    let sum = !fold(acc);
    packet[IPV4_CHECKSUM_AT..IPV4_CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
}

/// What the TCP checksum field of a packet holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChecksumState {
    /// A correct checksum.
    Valid,
    /// Only the pseudo-header sum (Linux `CHECKSUM_PARTIAL`: the payload was never on
    /// a wire; the NIC or `skb_checksum_help` would complete it).
    Partial,
    /// Neither: the packet was corrupted.
    Invalid,
}

/// Classifies the TCP checksum of a packet with layout `l`.
pub(crate) fn checksum_state(packet: &[u8], l: &Layout) -> ChecksumState {
    let (src, dst) = addresses(packet);
    let segment = &packet[l.ip_len..l.total];
    let pseudo = pseudo_sum(src, dst, segment.len());
    if fold(ones_sum(segment, pseudo)) == 0xffff {
        return ChecksumState::Valid;
    }
    let field = u16::from_be_bytes([segment[TCP_CHECKSUM_AT], segment[TCP_CHECKSUM_AT + 1]]);
    // 0 and 0xffff are the same value in ones' complement.
    let norm = |v: u16| if v == 0xffff { 0 } else { v };
    if norm(field) == norm(fold(pseudo)) {
        ChecksumState::Partial
    } else {
        ChecksumState::Invalid
    }
}

/// Calls `f(kind, offset, len)` for each option in `raw` other than NOP, stopping at
/// END. Meant for option bytes the tracker's parser has accepted; anything it would
/// reject ends the walk quietly.
pub(crate) fn walk_options(raw: &[u8], mut f: impl FnMut(u8, usize, usize)) {
    let mut offset = 0;
    while let Some(&k) = raw.get(offset) {
        match k {
            kind::END => return,
            kind::NOP => offset += 1,
            _ => {
                let Some(&len) = raw.get(offset + 1) else {
                    return;
                };
                let len = usize::from(len);
                if len < 2 || offset + len > raw.len() {
                    return;
                }
                f(k, offset, len);
                offset += len;
            }
        }
    }
}

/// Reads a big-endian u32 at `at` (caller guarantees 4 bytes).
pub(crate) fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Writes a big-endian u32 at `at` (caller guarantees 4 bytes).
pub(crate) fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Writes a big-endian u16 at `at` (caller guarantees 2 bytes).
pub(crate) fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The timestamps option preceded by two NOPs (aligned, as Linux writes it).
pub(crate) fn ts_option(tsval: u32, tsecr: u32) -> [u8; 12] {
    let mut o = [0; 12];
    o[..4].copy_from_slice(&[kind::NOP, kind::NOP, kind::TIMESTAMPS, 10]);
    o[4..8].copy_from_slice(&tsval.to_be_bytes());
    o[8..].copy_from_slice(&tsecr.to_be_bytes());
    o
}
