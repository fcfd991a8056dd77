//! Our own thin nfnetlink-queue layer for the packet path: many packets per receive
//! (`recvmmsg`) and many verdicts per `sendmsg`.
//!
//! Why not `nfq` alone (crates.md): `nfq` 0.2.5 sends one `sendto` per verdict and has
//! no batch API (`NFQNL_MSG_VERDICT_BATCH` accepts *every* id up to N, unusable while
//! held packets wait), and each of its messages keeps a whole receive buffer (~72 KiB)
//! alive, so a held 60-byte ACK costs as much memory as a 64 KiB GSO super-packet.
//! The kernel, though, takes any number of `NFQNL_MSG_VERDICT` messages in one
//! netlink datagram (`netlink_rcv_skb` walks them all; a failing one is answered with
//! an `NLMSG_ERROR` and the rest still apply). So `nfq` still opens, binds and
//! configures the queue (GSO on, copy range, fail-closed), and this layer does the
//! per-packet work on the same socket:
//! - [`QueueSocket::recv_batch`]: up to [`RECV_BATCH`] messages per `recvmmsg`, each
//!   parsed ([`parse_packet`]) into a [`QueuedPacket`] that owns exactly its bytes;
//! - [`QueueSocket::verdict`] appends an encoded verdict ([`encode_verdict`]) to one
//!   buffer; [`QueueSocket::flush`] sends the buffer with one `sendmsg`.
//!
//! Fail-closed: a packet whose captured length is below its original length
//! ([`QueuedPacket::truncated`]) is handed to the core like any other, which drops and
//! counts it; a message that cannot be parsed at all has no id to verdict and is
//! counted here (the kernel keeps it queued until the queue is unbound; it never
//! passes).

use crate::session::interceptor::machine::{Decision, Packet};
use std::os::fd::RawFd;

/// `NFNL_SUBSYS_QUEUE` (linux/netfilter/nfnetlink.h).
const NFNL_SUBSYS_QUEUE: u16 = 3;
/// `NFQNL_MSG_PACKET`.
const NFQNL_MSG_PACKET: u16 = 0;
/// `NFQNL_MSG_VERDICT`.
const NFQNL_MSG_VERDICT: u16 = 1;
/// Netlink attribute types of nfnetlink_queue.h.
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
const NFQA_SKB_INFO: u16 = 14;
/// `NFQA_SKB_INFO` bits.
pub const SKB_CSUMNOTREADY: u32 = 1;
/// The packet is a GSO super-packet.
pub const SKB_GSO: u32 = 2;
/// Netlink header length, and the `nfgenmsg` that follows it.
const NLMSG_HDRLEN: usize = 16;
const NFGEN_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;

/// Messages taken per `recvmmsg`.
pub const RECV_BATCH: usize = 32;
/// Room for one queue message: a whole 64 KiB packet plus its attributes.
const RECV_BUF: usize = 65_536 + 8_192;
/// Verdict bytes gathered before a `sendmsg` is forced (the socket's send buffer is
/// raised above it, see [`QueueSocket::new`]).
const SEND_FLUSH_AT: usize = 256 * 1024;
/// The send buffer asked for (netlink refuses a datagram longer than it).
const SNDBUF_BYTES: libc::c_int = 4 << 20;

/// One packet taken from the queue. Owns exactly its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPacket {
    /// The kernel's packet id (for the verdict).
    pub id: u32,
    /// Its netfilter mark.
    pub mark: u32,
    /// The IP packet as captured.
    pub payload: Vec<u8>,
    /// Whether `payload` was changed (the verdict then carries it).
    pub modified: bool,
    /// Its length in the kernel, when larger than what was captured (`NFQA_CAP_LEN`).
    pub original_len: Option<u32>,
    /// `NFQA_SKB_INFO` bits ([`SKB_CSUMNOTREADY`], [`SKB_GSO`]).
    pub skb_info: u32,
}

impl Packet for QueuedPacket {
    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn set_payload(&mut self, packet: Vec<u8>) {
        self.payload = packet;
        self.modified = true;
    }

    fn mark(&self) -> u32 {
        self.mark
    }

    fn truncated(&self) -> bool {
        self.original_len
            .is_some_and(|len| len as usize > self.payload.len())
    }
}

/// What one netlink message from the queue was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A queued packet.
    Packet(QueuedPacket),
    /// An error answer (a verdict the kernel refused), with its errno.
    Error(i32),
    /// Anything else (acks, other message types): nothing to do.
    Other,
}

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its headers, or an attribute runs past the end.
    #[error("truncated nfnetlink message")]
    Truncated,
    /// A packet message without its packet header (no id).
    #[error("queue message without a packet header")]
    NoHeader,
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits a netlink datagram into its messages and reads each.
pub fn parse_datagram(buf: &[u8], out: &mut Vec<Result<Incoming, ParseError>>) {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let Some(len) = u32_ne(buf, at).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            out.push(Err(ParseError::Truncated));
            break;
        }
        out.push(parse_message(&buf[at..at + len]));
        at += align4(len);
    }
}

/// Reads one netlink message of the queue's socket.
pub fn parse_message(msg: &[u8]) -> Result<Incoming, ParseError> {
    let len = u32_ne(msg, 0).ok_or(ParseError::Truncated)? as usize;
    if len < NLMSG_HDRLEN || len > msg.len() {
        return Err(ParseError::Truncated);
    }
    let kind = u16_ne(msg, 4).ok_or(ParseError::Truncated)?;
    if kind == NLMSG_ERROR {
        let errno = u32_ne(msg, NLMSG_HDRLEN).ok_or(ParseError::Truncated)? as i32;
        return Ok(if errno == 0 {
            Incoming::Other
        } else {
            Incoming::Error(errno.abs())
        });
    }
    if kind == NLMSG_DONE || kind != (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET) {
        return Ok(Incoming::Other);
    }
    let mut at = NLMSG_HDRLEN + NFGEN_LEN;
    if at > len {
        return Err(ParseError::Truncated);
    }
    let mut id = None;
    let mut packet = QueuedPacket {
        id: 0,
        mark: 0,
        payload: Vec::new(),
        modified: false,
        original_len: None,
        skb_info: 0,
    };
    while at + 4 <= len {
        let alen = usize::from(u16_ne(msg, at).ok_or(ParseError::Truncated)?);
        // The top two bits are NLA_F_NESTED and NLA_F_NET_BYTEORDER.
        let atype = u16_ne(msg, at + 2).ok_or(ParseError::Truncated)? & 0x3fff;
        if alen < 4 || at + alen > len {
            return Err(ParseError::Truncated);
        }
        let value = &msg[at + 4..at + alen];
        match atype {
            NFQA_PACKET_HDR => id = Some(u32_be(value, 0).ok_or(ParseError::Truncated)?),
            NFQA_MARK => packet.mark = u32_be(value, 0).ok_or(ParseError::Truncated)?,
            NFQA_PAYLOAD => packet.payload = value.to_vec(),
            NFQA_CAP_LEN => {
                packet.original_len = Some(u32_be(value, 0).ok_or(ParseError::Truncated)?)
            }
            NFQA_SKB_INFO => packet.skb_info = u32_be(value, 0).ok_or(ParseError::Truncated)?,
            _ => {}
        }
        at += align4(alen);
    }
    packet.id = id.ok_or(ParseError::NoHeader)?;
    Ok(Incoming::Packet(packet))
}

/// Appends one `NFQNL_MSG_VERDICT` for `packet` to `out` (the payload only when the
/// packet was changed and is accepted).
pub fn encode_verdict(out: &mut Vec<u8>, queue: u16, packet: &QueuedPacket, decision: Decision) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // length, patched below
    out.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT).to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.push(libc::AF_UNSPEC as u8);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&queue.to_be_bytes());
    let verdict: u32 = match decision {
        Decision::Accept => 1, // NF_ACCEPT
        Decision::Drop => 0,   // NF_DROP
    };
    put_attr(out, NFQA_VERDICT_HDR, |o| {
        o.extend_from_slice(&verdict.to_be_bytes());
        o.extend_from_slice(&packet.id.to_be_bytes());
    });
    if packet.modified && decision == Decision::Accept {
        put_attr(out, NFQA_PAYLOAD, |o| o.extend_from_slice(&packet.payload));
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn put_attr(out: &mut Vec<u8>, kind: u16, value: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    value(out);
    let len = out.len() - start;
    // The kernel caps the copy range at 0xffff - 4 (`NFQNL_MAX_COPY_RANGE`), so a
    // packet we captured whole always fits an attribute's u16 length.
    let alen = u16::try_from(len).unwrap_or(u16::MAX);
    out[start..start + 2].copy_from_slice(&alen.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
    out.resize(start + align4(len), 0);
}

/// The queue's netlink socket, for receiving and verdicts (configuration stays with
/// `nfq`, which owns and closes the descriptor).
pub struct QueueSocket {
    fd: RawFd,
    queue: u16,
    bufs: Vec<Vec<u8>>,
    verdicts: Vec<u8>,
    parsed: Vec<Result<Incoming, ParseError>>,
}

/// What a receive brought besides packets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecvReport {
    /// Datagrams read.
    pub datagrams: usize,
    /// Messages that could not be read (no id: cannot be verdicted).
    pub unparsable: usize,
    /// Verdicts the kernel refused (errno of the last).
    pub refused: usize,
    /// The errno of the last refusal.
    pub last_errno: i32,
}

impl QueueSocket {
    /// Wraps the queue socket `fd` (bound to `queue`) and raises its send buffer so a
    /// batch of verdicts fits one datagram.
    pub fn new(fd: RawFd, queue: u16) -> std::io::Result<QueueSocket> {
        crate::nfqueue::set_socket_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF_BYTES)?;
        Ok(QueueSocket {
            fd,
            queue,
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUF]).collect(),
            verdicts: Vec::with_capacity(SEND_FLUSH_AT + RECV_BUF),
            parsed: Vec::new(),
        })
    }

    /// Takes what the socket holds now (never blocks), at most [`RECV_BATCH`]
    /// datagrams, appending the packets to `out`.
    pub fn recv_batch(&mut self, out: &mut Vec<QueuedPacket>) -> std::io::Result<RecvReport> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; each points at one iovec that points at one
        // live buffer of its stated length.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs is a valid array of RECV_BATCH mmsghdr.
        let n = unsafe {
            libc::recvmmsg(
                self.fd,
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut report = RecvReport {
            datagrams: n as usize,
            ..RecvReport::default()
        };
        for (m, buf) in msgs.iter().zip(&self.bufs).take(n as usize) {
            let len = (m.msg_len as usize).min(buf.len());
            self.parsed.clear();
            parse_datagram(&buf[..len], &mut self.parsed);
            for item in self.parsed.drain(..) {
                match item {
                    Ok(Incoming::Packet(p)) => out.push(p),
                    Ok(Incoming::Error(errno)) => {
                        report.refused += 1;
                        report.last_errno = errno;
                    }
                    Ok(Incoming::Other) => {}
                    Err(_) => report.unparsable += 1,
                }
            }
        }
        Ok(report)
    }

    /// Queues a verdict; sends the gathered ones first when the buffer is full.
    pub fn verdict(&mut self, packet: &QueuedPacket, decision: Decision) -> std::io::Result<()> {
        encode_verdict(&mut self.verdicts, self.queue, packet, decision);
        if self.verdicts.len() >= SEND_FLUSH_AT {
            return self.flush();
        }
        Ok(())
    }

    /// Whether verdicts wait to be sent.
    pub fn pending(&self) -> bool {
        !self.verdicts.is_empty()
    }

    /// Sends every gathered verdict in one datagram.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.verdicts.is_empty() {
            return Ok(());
        }
        // SAFETY: zeroed sockaddr_nl is the kernel's address once the family is set.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let result = loop {
            // SAFETY: valid buffer and address of the stated lengths.
            let rc = unsafe {
                libc::sendto(
                    self.fd,
                    self.verdicts.as_ptr().cast(),
                    self.verdicts.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                break Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                break Err(err);
            }
        };
        self.verdicts.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue message as the kernel builds it.
    fn kernel_message(id: u32, payload: &[u8], cap_len: Option<u32>, skb_info: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[2, 0, 0, 5]);
        put_attr(&mut m, NFQA_PACKET_HDR, |o| {
            o.extend_from_slice(&id.to_be_bytes());
            o.extend_from_slice(&0x0800u16.to_be_bytes());
            o.push(3);
        });
        put_attr(&mut m, NFQA_MARK, |o| {
            o.extend_from_slice(&7u32.to_be_bytes())
        });
        if skb_info != 0 {
            put_attr(&mut m, NFQA_SKB_INFO, |o| {
                o.extend_from_slice(&skb_info.to_be_bytes())
            });
        }
        if let Some(cap) = cap_len {
            put_attr(&mut m, NFQA_CAP_LEN, |o| {
                o.extend_from_slice(&cap.to_be_bytes())
            });
        }
        put_attr(&mut m, NFQA_PAYLOAD, |o| o.extend_from_slice(payload));
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn a_packet_message_is_read_whole() {
        let msg = kernel_message(42, &[0x45, 1, 2, 3, 4], None, SKB_CSUMNOTREADY | SKB_GSO);
        let Ok(Incoming::Packet(p)) = parse_message(&msg) else {
            panic!("not a packet");
        };
        assert_eq!(p.id, 42);
        assert_eq!(p.mark, 7);
        assert_eq!(p.payload, vec![0x45, 1, 2, 3, 4]);
        assert_eq!(p.skb_info, SKB_CSUMNOTREADY | SKB_GSO);
        assert!(!p.truncated());
        assert!(!p.modified);
    }

    #[test]
    fn a_captured_length_below_the_original_is_truncated() {
        let msg = kernel_message(1, &[0x45; 100], Some(70_000), 0);
        let Ok(Incoming::Packet(p)) = parse_message(&msg) else {
            panic!("not a packet");
        };
        assert!(p.truncated());
        assert_eq!(p.original_len, Some(70_000));
    }

    #[test]
    fn broken_messages_are_errors_not_panics() {
        let msg = kernel_message(1, &[0x45; 10], None, 0);
        for cut in 0..msg.len() {
            // Every prefix, with its length field claiming the whole: an error or a
            // shorter packet, never a panic.
            let _ = parse_message(&msg[..cut]);
        }
        // An attribute running past the end.
        let mut bad = msg.clone();
        let at = NLMSG_HDRLEN + NFGEN_LEN;
        bad[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert_eq!(parse_message(&bad), Err(ParseError::Truncated));
        // No packet header: no id to verdict.
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + NFGEN_LEN) as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 0, 0, 5]);
        assert_eq!(parse_message(&m), Err(ParseError::NoHeader));
    }

    #[test]
    fn datagrams_hold_several_messages_and_errors() {
        let mut dgram = kernel_message(1, &[0x45; 3], None, 0);
        dgram.resize(align4(dgram.len()), 0);
        dgram.extend_from_slice(&kernel_message(2, &[0x45; 9], None, 0));
        dgram.resize(align4(dgram.len()), 0);
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-22i32).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        dgram.extend_from_slice(&err);
        let mut out = Vec::new();
        parse_datagram(&dgram, &mut out);
        let ids: Vec<_> = out
            .iter()
            .map(|r| match r {
                Ok(Incoming::Packet(p)) => p.id as i32,
                Ok(Incoming::Error(e)) => -e,
                _ => 0,
            })
            .collect();
        assert_eq!(ids, vec![1, 2, -22]);
    }

    #[test]
    fn verdicts_carry_the_payload_only_when_changed_and_accepted() {
        let mut p = QueuedPacket {
            id: 9,
            mark: 0,
            payload: vec![1, 2, 3],
            modified: false,
            original_len: None,
            skb_info: 0,
        };
        let mut out = Vec::new();
        encode_verdict(&mut out, 5, &p, Decision::Accept);
        // nlmsghdr + nfgenmsg + verdict header attribute (4 + 8).
        assert_eq!(out.len(), 16 + 4 + 12);
        assert_eq!(u32_ne(&out, 0), Some(32));
        assert_eq!(u16_ne(&out, 4), Some(3 << 8 | 1));
        assert_eq!(&out[18..20], &5u16.to_be_bytes());
        assert_eq!(u32_be(&out, 24), Some(1));
        assert_eq!(u32_be(&out, 28), Some(9));
        p.set_payload(vec![4, 5, 6, 7, 8]);
        let before = out.len();
        encode_verdict(&mut out, 5, &p, Decision::Accept);
        // + payload attribute 4 + 5, padded to 12.
        assert_eq!(out.len() - before, 32 + 12);
        assert_eq!(&out[before + 36..before + 41], &[4, 5, 6, 7, 8]);
        let before = out.len();
        encode_verdict(&mut out, 5, &p, Decision::Drop);
        assert_eq!(out.len() - before, 32);
        assert_eq!(u32_be(&out, before + 24), Some(0));
    }
}
