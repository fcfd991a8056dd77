//! The binary layout of recovery records: one frame per [`Record`], used both on the
//! replication stream (master → backup) and in the backup's files on disk.
//!
//! A stream or a file is a plain sequence of frames; [`decode_record`] tells a partial
//! frame ([`RecordError::Incomplete`]: read more) from a damaged one (every other
//! error). The backup answers with fixed-size acknowledgement frames ([`encode_ack`]).
//!
//! # Frame (version 1, all integers big-endian)
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 0      | 4    | len: bytes after this field (14 + body)                        |
//! | 4      | 4    | crc32 (IEEE, as zlib) over every byte after this field         |
//! | 8      | 1    | version (1)                                                    |
//! | 9      | 1    | kind: 1 = `full`, 2 = `sync`, 3 = `delete`                     |
//! | 10     | 8    | replication sequence number of the record                      |
//! | 18     | …    | body, by kind (below); offsets below are from the frame start  |
//!
//! A session key (12 bytes) is peer IPv4 (4), peer port (2), local IPv4 (4), local
//! port (2). Absent optional values are marked by a flag bit; reserved flag bits must
//! be 0.
//!
//! ## `full` — every field of [`SessionState`], fixed offsets
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 18     | 12   | session key                                                    |
//! | 30     | 1    | phase (see [`Phase::code`])                                    |
//! | 31     | 1    | flags: bit 0 `our_fin` set, 1 `peer_fin` set, 2 `peer_wscale` set, 3 `our_wscale` set, 4 SACK permitted, 5 timestamps, 6 `at_risk` |
//! | 32     | 4    | `peer_isn`                                                     |
//! | 36     | 4    | `our_isn`                                                      |
//! | 40     | 4    | `rcv_nxt`                                                      |
//! | 44     | 4    | `peer_seq_max`                                                 |
//! | 48     | 4    | `snd_nxt`                                                      |
//! | 52     | 4    | `snd_una`                                                      |
//! | 56     | 2    | `peer_window` (raw)                                            |
//! | 58     | 2    | `our_window` (raw)                                             |
//! | 60     | 2    | `peer_mss`                                                     |
//! | 62     | 2    | `our_mss`                                                      |
//! | 64     | 1    | `peer_wscale` (0 when absent)                                  |
//! | 65     | 1    | `our_wscale` (0 when absent)                                   |
//! | 66     | 4    | `peer_tsval`                                                   |
//! | 70     | 4    | `our_tsval`                                                    |
//! | 74     | 4    | `our_fin` (0 when absent)                                      |
//! | 78     | 4    | `peer_fin` (0 when absent)                                     |
//! | 82     | 8    | `bytes_in`                                                     |
//! | 90     | 8    | `bytes_out`                                                    |
//! | 98     | 8    | `last_activity_ms`                                             |
//! | 106    | 4    | n = length of `unacked`                                        |
//! | 110    | n    | `unacked` bytes (the byte at `snd_una` first)                  |
//! | 110+n  | 4    | m = length of `unread_input`, **only if it is not empty**      |
//! | 114+n  | m    | `unread_input` bytes (input handed over at a switchover)       |
//!
//! Size: **110 bytes** + n ([`FULL_FIXED_LEN`]), + 4 + m in the rare record that
//! hands over unread input (the frame's length tells whether the part is there; an
//! empty part is never written, so every state still has one encoding). Full records are rare (handshake,
//! close, snapshots), so they keep fixed offsets; absent values are written as 0 and a
//! non-zero absent value is rejected, so every state has exactly one encoding.
//!
//! ## `sync` — the compact update ([`SessionSync`]), on the hot path
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 18     | 12   | session key                                                    |
//! | 30     | 1    | phase                                                          |
//! | 31     | 1    | flags: bit 0 `our_fin` present, 1 `peer_fin` present, 2 data part present |
//! | 32     | 4    | `rcv_nxt`                                                      |
//! | 36     | 4    | `peer_seq_max`                                                 |
//! | 40     | 4    | `snd_nxt`                                                      |
//! | 44     | 4    | `snd_una`                                                      |
//! | 48     | 2    | `peer_window`                                                  |
//! | 50     | 2    | `our_window`                                                   |
//! | 52     | 4    | `peer_tsval`                                                   |
//! | 56     | 4    | `our_tsval`                                                    |
//! | 60     | 8    | `bytes_in`                                                     |
//! | 68     | 8    | `bytes_out`                                                    |
//! | 76     | 8    | `last_activity_ms`                                             |
//! | 84     | 4    | `our_fin`, only if flag bit 0                                  |
//! | …      | 4    | `peer_fin`, only if flag bit 1                                 |
//! | …      | 4    | `data_seq`, only if flag bit 2                                 |
//! | …      | 4    | n = data length, only if flag bit 2                            |
//! | …      | n    | data, only if flag bit 2                                       |
//! | …      | 4    | `input_seq`, only if flag bit 3 (hot replica, design §9)       |
//! | …      | 4    | m = input length, only if flag bit 3                           |
//! | …      | m    | the peer's payload of this segment, only if flag bit 3         |
//!
//! Size: **84 bytes** ([`SYNC_FIXED_LEN`]) for a sync without FINs and without payload
//! (a pure ACK or window update), +4 per FIN present, +8 + n with a payload. The data
//! part is written when `data` is non-empty or `data_seq != snd_nxt`; when it is absent
//! the decoder yields `data_seq = snd_nxt` and empty data (so a tracker that fills
//! `data_seq` with `snd_nxt` for payload-less updates gets the short form, and every
//! record still round-trips exactly). The input part (flag bit 3) is written only by a
//! master in hot-replica mode (`service.replica = "hot"`), when the peer's segment
//! carried payload: `input` is that payload at peer sequence `input_seq`, so the
//! backup can play it to its mirror; cold mode never writes it (its records do not
//! grow), and an empty input part is never written (one encoding per record).
//!
//! ## `delete` — [`Record::Delete`]
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 18     | 12   | session key                                                    |
//!
//! Size: **30 bytes** ([`DELETE_LEN`]).
//!
//! ## Compared with the paper (57-byte full, 32-byte sync)
//!
//! Ours are larger (110 / 84 bytes) because each frame carries 18 bytes of framing the
//! paper's records do not: a length, a CRC-32 (so a torn or flipped file is detected
//! instead of restored wrongly), a version byte (so the layout can change) and a 64-bit
//! replication sequence number (so the backup can acknowledge exactly what it holds).
//! The bodies also carry more than the paper's: both windows (not only the peer's),
//! the last TSval each way (needed so the peer's PAWS check passes after takeover),
//! `peer_seq_max` beside `rcv_nxt`, both FIN positions, the phase, and three 64-bit
//! counters (bytes in, bytes out, last activity) for the console. Without framing and
//! counters a sync body would be 42 bytes.
//!
//! # Acknowledgement frame (backup → master, version 1)
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 0      | 4    | magic `NSAK`                                                   |
//! | 4      | 1    | version (1)                                                    |
//! | 5      | 8    | upto_seq: every record with a sequence number ≤ this is held   |
//! | 13     | 4    | crc32 over bytes 0..13                                         |
//!
//! Size: **17 bytes** ([`ACK_LEN`]).
//!
//! # Limits
//! Payloads (`unacked`, `data`) are at most [`MAX_PAYLOAD`] bytes, so a frame is at most
//! [`MAX_RECORD_LEN`] bytes. The decoder rejects a larger `len` before asking for the
//! bytes ([`RecordError::TooLarge`]), so hostile input cannot make a reader buffer more;
//! [`try_encode_record`] and [`encode_full`] refuse to write what the decoder would
//! refuse to read ([`encode_record`], infallible, writes a frame decoders reject).

use crate::session::{Negotiated, Phase, Record, SessionKey, SessionState, SessionSync};
use std::net::Ipv4Addr;
use thiserror::Error;

/// The record layout version this code writes and reads.
pub const VERSION: u8 = 1;
/// Kind byte of a `full` record.
pub const KIND_FULL: u8 = 1;
/// Kind byte of a `sync` record.
pub const KIND_SYNC: u8 = 2;
/// Kind byte of a `delete` record.
pub const KIND_DELETE: u8 = 3;
/// Bytes before the body: len, crc, version, kind, seq.
pub const HEADER_LEN: usize = 18;
/// Size of an encoded session key.
pub const KEY_LEN: usize = 12;
/// Size of a `full` frame with empty `unacked`.
pub const FULL_FIXED_LEN: usize = 110;
/// Size of a `sync` frame without FINs and without a data part.
pub const SYNC_FIXED_LEN: usize = 84;
/// Size of a `delete` frame.
pub const DELETE_LEN: usize = HEADER_LEN + KEY_LEN;
/// Largest payload (`unacked` of a full record, `data` of a sync record).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Largest `unread_input` of a full record (more than a socket's receive queue holds
/// with the kernel's default `tcp_rmem`).
pub const MAX_INPUT: usize = 8 << 20;
/// Largest frame, in bytes, including the len field (a full record with the largest
/// payload and input). Readers never need to buffer more than this for one frame.
pub const MAX_RECORD_LEN: usize = FULL_FIXED_LEN + MAX_PAYLOAD + 4 + MAX_INPUT;
/// First four bytes of an acknowledgement frame.
pub const ACK_MAGIC: [u8; 4] = *b"NSAK";
/// The acknowledgement layout version.
pub const ACK_VERSION: u8 = 1;
/// Size of an acknowledgement frame.
pub const ACK_LEN: usize = 17;

const FULL_FLAG_OUR_FIN: u8 = 1 << 0;
const FULL_FLAG_PEER_FIN: u8 = 1 << 1;
const FULL_FLAG_PEER_WSCALE: u8 = 1 << 2;
const FULL_FLAG_OUR_WSCALE: u8 = 1 << 3;
const FULL_FLAG_SACK: u8 = 1 << 4;
const FULL_FLAG_TIMESTAMPS: u8 = 1 << 5;
const FULL_FLAG_AT_RISK: u8 = 1 << 6;
const FULL_FLAGS_KNOWN: u8 = 0b0111_1111;

const SYNC_FLAG_OUR_FIN: u8 = 1 << 0;
const SYNC_FLAG_PEER_FIN: u8 = 1 << 1;
const SYNC_FLAG_DATA: u8 = 1 << 2;
const SYNC_FLAG_INPUT: u8 = 1 << 3;
const SYNC_FLAGS_KNOWN: u8 = 0b0000_1111;

/// Why bytes are not (yet) a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The buffer holds only the start of a frame: read until it holds `need` bytes
    /// and decode again. Not corruption (at the end of a file: a torn last write).
    #[error("incomplete frame: need {need} bytes")]
    Incomplete {
        /// Total buffer length required to make progress.
        need: usize,
    },
    /// The checksum does not match the bytes.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// Acknowledgement frame without the `NSAK` magic.
    #[error("not an acknowledgement frame (bad magic)")]
    BadMagic,
    /// A layout version this build does not speak (checksum was valid).
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    /// A record kind this version does not define.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The len field, or a length inside the body, disagrees with the layout.
    #[error("bad record length {len}")]
    BadLength {
        /// The frame's len field.
        len: u32,
    },
    /// A field holds a value the layout does not allow.
    #[error("invalid field `{0}`")]
    BadField(&'static str),
    /// A frame (or payload) larger than [`MAX_RECORD_LEN`] / [`MAX_PAYLOAD`].
    #[error("record too large: {len} bytes")]
    TooLarge {
        /// The offending length in bytes.
        len: usize,
    },
}

impl RecordError {
    /// The frame is merely incomplete (read more), as opposed to damaged.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, RecordError::Incomplete { .. })
    }
}

/// Bytes [`encode_record`] will write for `record`.
pub fn encoded_len(record: &Record) -> usize {
    match record {
        Record::Full(s) => full_len(s),
        Record::Sync(s) => {
            let mut n = SYNC_FIXED_LEN;
            n += 4 * usize::from(s.our_fin.is_some());
            n += 4 * usize::from(s.peer_fin.is_some());
            if sync_has_data_part(s) {
                n += 8 + s.data.len();
            }
            if !s.input.is_empty() {
                n += 8 + s.input.len();
            }
            n
        }
        Record::Delete(_) => DELETE_LEN,
    }
}

/// Appends one frame for `record` with replication sequence number `seq` to `out`.
///
/// Never fails and never panics. A payload larger than [`MAX_PAYLOAD`] (more than any
/// TCP send buffer holds in practice) still produces a frame, but one that every
/// decoder rejects with [`RecordError::TooLarge`]; callers that may meet such a
/// payload use [`try_encode_record`] instead.
pub fn encode_record(seq: u64, record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Full(s) => {
            let start = begin_frame(out, KIND_FULL, seq, encoded_len(record));
            put_full(out, s);
            finish_frame(out, start);
        }
        Record::Sync(s) => {
            let start = begin_frame(out, KIND_SYNC, seq, encoded_len(record));
            put_sync(out, s);
            finish_frame(out, start);
        }
        Record::Delete(key) => {
            let start = begin_frame(out, KIND_DELETE, seq, DELETE_LEN);
            put_key(out, key);
            finish_frame(out, start);
        }
    }
}

/// Like [`encode_record`], but refuses a payload larger than [`MAX_PAYLOAD`] with
/// [`RecordError::TooLarge`] (leaving `out` unchanged); returns the frame's size.
pub fn try_encode_record(
    seq: u64,
    record: &Record,
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    match record {
        Record::Full(s) => check_full(s)?,
        Record::Sync(s) => {
            check_payload(s.data.len())?;
            check_payload(s.input.len())?;
        }
        Record::Delete(_) => {}
    }
    let before = out.len();
    encode_record(seq, record, out);
    Ok(out.len() - before)
}

/// Appends a `full` frame for `state` without building a [`Record`] (for snapshots:
/// no copy of `unacked`). Same contract as [`try_encode_record`].
pub fn encode_full(
    seq: u64,
    state: &SessionState,
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    check_full(state)?;
    let start = begin_frame(out, KIND_FULL, seq, full_len(state));
    put_full(out, state);
    Ok(finish_frame(out, start))
}

/// Decodes the frame at the start of `buf`: its sequence number, the record and the
/// number of bytes it took. Bytes after the frame are left alone (the next frame).
pub fn decode_record(buf: &[u8]) -> Result<(u64, Record, usize), RecordError> {
    if buf.len() < 4 {
        return Err(RecordError::Incomplete { need: 4 });
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let total = 4usize.saturating_add(len as usize);
    if total > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge { len: total });
    }
    if total < DELETE_LEN {
        // No valid frame is shorter than a delete.
        return Err(RecordError::BadLength { len });
    }
    if buf.len() < total {
        return Err(RecordError::Incomplete { need: total });
    }
    let frame = &buf[..total];
    let stored = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let computed = crc32fast::hash(&frame[8..]);
    if stored != computed {
        return Err(RecordError::BadCrc { stored, computed });
    }
    if frame[8] != VERSION {
        return Err(RecordError::UnsupportedVersion(frame[8]));
    }
    let kind = frame[9];
    let mut r = Reader {
        buf: &frame[10..],
        len,
    };
    let seq = r.u64()?;
    let record = match kind {
        KIND_FULL => Record::Full(read_full(&mut r)?),
        KIND_SYNC => Record::Sync(read_sync(&mut r)?),
        KIND_DELETE => Record::Delete(read_key(&mut r)?),
        other => return Err(RecordError::UnknownKind(other)),
    };
    if !r.buf.is_empty() {
        return Err(RecordError::BadLength { len });
    }
    Ok((seq, record, total))
}

/// The acknowledgement frame for "every record up to and including `upto_seq` is
/// applied and stored".
pub fn encode_ack(upto_seq: u64) -> [u8; ACK_LEN] {
    let mut out = [0u8; ACK_LEN];
    out[0..4].copy_from_slice(&ACK_MAGIC);
    out[4] = ACK_VERSION;
    out[5..13].copy_from_slice(&upto_seq.to_be_bytes());
    let crc = crc32fast::hash(&out[0..13]);
    out[13..17].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes the acknowledgement frame at the start of `buf`: `(upto_seq, ACK_LEN)`.
/// A prefix that cannot start an ack fails at once with [`RecordError::BadMagic`].
pub fn decode_ack(buf: &[u8]) -> Result<(u64, usize), RecordError> {
    let have = buf.len().min(ACK_MAGIC.len());
    if buf[..have] != ACK_MAGIC[..have] {
        return Err(RecordError::BadMagic);
    }
    if buf.len() < ACK_LEN {
        return Err(RecordError::Incomplete { need: ACK_LEN });
    }
    let stored = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
    let computed = crc32fast::hash(&buf[0..13]);
    if stored != computed {
        return Err(RecordError::BadCrc { stored, computed });
    }
    if buf[4] != ACK_VERSION {
        return Err(RecordError::UnsupportedVersion(buf[4]));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[5..13]);
    Ok((u64::from_be_bytes(seq), ACK_LEN))
}

/// The size of a `full` frame for `s`.
fn full_len(s: &SessionState) -> usize {
    let input = if s.unread_input.is_empty() {
        0
    } else {
        4 + s.unread_input.len()
    };
    FULL_FIXED_LEN + s.unacked.len() + input
}

fn check_full(s: &SessionState) -> Result<(), RecordError> {
    check_payload(s.unacked.len())?;
    if s.unread_input.len() > MAX_INPUT {
        return Err(RecordError::TooLarge {
            len: s.unread_input.len(),
        });
    }
    Ok(())
}

fn check_payload(n: usize) -> Result<(), RecordError> {
    if n > MAX_PAYLOAD {
        Err(RecordError::TooLarge { len: n })
    } else {
        Ok(())
    }
}

fn sync_has_data_part(s: &SessionSync) -> bool {
    !s.data.is_empty() || s.data_seq != s.snd_nxt
}

/// Writes the header with placeholder len and crc; returns the frame's start.
fn begin_frame(out: &mut Vec<u8>, kind: u8, seq: u64, total: usize) -> usize {
    out.reserve(total);
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&seq.to_be_bytes());
    start
}

/// Fills in len and crc; returns the frame's size.
fn finish_frame(out: &mut [u8], start: usize) -> usize {
    let total = out.len() - start;
    // At most MAX_RECORD_LEN for payloads within MAX_PAYLOAD; an oversized frame gets
    // a len that decoders reject as too large.
    let len = u32::try_from(total - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    total
}

fn put_key(out: &mut Vec<u8>, key: &SessionKey) {
    out.extend_from_slice(&key.peer_ip.octets());
    out.extend_from_slice(&key.peer_port.to_be_bytes());
    out.extend_from_slice(&key.local_ip.octets());
    out.extend_from_slice(&key.local_port.to_be_bytes());
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_full(out: &mut Vec<u8>, s: &SessionState) {
    let n = &s.negotiated;
    let mut flags = 0u8;
    if s.our_fin.is_some() {
        flags |= FULL_FLAG_OUR_FIN;
    }
    if s.peer_fin.is_some() {
        flags |= FULL_FLAG_PEER_FIN;
    }
    if n.peer_wscale.is_some() {
        flags |= FULL_FLAG_PEER_WSCALE;
    }
    if n.our_wscale.is_some() {
        flags |= FULL_FLAG_OUR_WSCALE;
    }
    if n.sack_permitted {
        flags |= FULL_FLAG_SACK;
    }
    if n.timestamps {
        flags |= FULL_FLAG_TIMESTAMPS;
    }
    if s.at_risk {
        flags |= FULL_FLAG_AT_RISK;
    }
    put_key(out, &s.key);
    out.push(s.phase.code());
    out.push(flags);
    put_u32(out, s.peer_isn);
    put_u32(out, s.our_isn);
    put_u32(out, s.rcv_nxt);
    put_u32(out, s.peer_seq_max);
    put_u32(out, s.snd_nxt);
    put_u32(out, s.snd_una);
    put_u16(out, s.peer_window);
    put_u16(out, s.our_window);
    put_u16(out, n.peer_mss);
    put_u16(out, n.our_mss);
    out.push(n.peer_wscale.unwrap_or(0));
    out.push(n.our_wscale.unwrap_or(0));
    put_u32(out, s.peer_tsval);
    put_u32(out, s.our_tsval);
    put_u32(out, s.our_fin.unwrap_or(0));
    put_u32(out, s.peer_fin.unwrap_or(0));
    put_u64(out, s.bytes_in);
    put_u64(out, s.bytes_out);
    put_u64(out, s.last_activity_ms);
    put_u32(out, u32::try_from(s.unacked.len()).unwrap_or(u32::MAX));
    let (front, back) = s.unacked.as_slices();
    out.extend_from_slice(front);
    out.extend_from_slice(back);
    if !s.unread_input.is_empty() {
        put_u32(out, u32::try_from(s.unread_input.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&s.unread_input);
    }
}

fn put_sync(out: &mut Vec<u8>, s: &SessionSync) {
    let data_part = sync_has_data_part(s);
    let mut flags = 0u8;
    if s.our_fin.is_some() {
        flags |= SYNC_FLAG_OUR_FIN;
    }
    if s.peer_fin.is_some() {
        flags |= SYNC_FLAG_PEER_FIN;
    }
    if data_part {
        flags |= SYNC_FLAG_DATA;
    }
    if !s.input.is_empty() {
        flags |= SYNC_FLAG_INPUT;
    }
    put_key(out, &s.key);
    out.push(s.phase.code());
    out.push(flags);
    put_u32(out, s.rcv_nxt);
    put_u32(out, s.peer_seq_max);
    put_u32(out, s.snd_nxt);
    put_u32(out, s.snd_una);
    put_u16(out, s.peer_window);
    put_u16(out, s.our_window);
    put_u32(out, s.peer_tsval);
    put_u32(out, s.our_tsval);
    put_u64(out, s.bytes_in);
    put_u64(out, s.bytes_out);
    put_u64(out, s.last_activity_ms);
    if let Some(fin) = s.our_fin {
        put_u32(out, fin);
    }
    if let Some(fin) = s.peer_fin {
        put_u32(out, fin);
    }
    if data_part {
        put_u32(out, s.data_seq);
        put_u32(out, u32::try_from(s.data.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&s.data);
    }
    if !s.input.is_empty() {
        put_u32(out, s.input_seq);
        put_u32(out, u32::try_from(s.input.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&s.input);
    }
}

/// Reads fields from a complete, checksummed frame body; running short is a length
/// error (the frame's len disagrees with its content).
struct Reader<'a> {
    buf: &'a [u8],
    len: u32,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::BadLength { len: self.len });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(u64::from_be_bytes(raw))
    }

    fn ipv4(&mut self) -> Result<Ipv4Addr, RecordError> {
        let b = self.take(4)?;
        Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }

    /// A u32 length followed by that many bytes.
    fn payload(&mut self) -> Result<Vec<u8>, RecordError> {
        let n = self.u32()? as usize;
        if n > MAX_PAYLOAD {
            return Err(RecordError::TooLarge { len: n });
        }
        // take() checks n against the bytes actually present before anything is
        // allocated, so a hostile length cannot cause a large allocation.
        Ok(self.take(n)?.to_vec())
    }
}

fn read_key(r: &mut Reader<'_>) -> Result<SessionKey, RecordError> {
    Ok(SessionKey {
        peer_ip: r.ipv4()?,
        peer_port: r.u16()?,
        local_ip: r.ipv4()?,
        local_port: r.u16()?,
    })
}

fn read_phase(r: &mut Reader<'_>) -> Result<Phase, RecordError> {
    Phase::from_code(r.u8()?).ok_or(RecordError::BadField("phase"))
}

/// A value that is present only if `flag` is set in `flags`; an absent value must be
/// written as zero.
fn optional<T: Default + PartialEq>(
    flags: u8,
    flag: u8,
    value: T,
    field: &'static str,
) -> Result<Option<T>, RecordError> {
    if flags & flag != 0 {
        Ok(Some(value))
    } else if value == T::default() {
        Ok(None)
    } else {
        Err(RecordError::BadField(field))
    }
}

fn read_full(r: &mut Reader<'_>) -> Result<SessionState, RecordError> {
    let key = read_key(r)?;
    let phase = read_phase(r)?;
    let flags = r.u8()?;
    if flags & !FULL_FLAGS_KNOWN != 0 {
        return Err(RecordError::BadField("flags"));
    }
    let peer_isn = r.u32()?;
    let our_isn = r.u32()?;
    let rcv_nxt = r.u32()?;
    let peer_seq_max = r.u32()?;
    let snd_nxt = r.u32()?;
    let snd_una = r.u32()?;
    let peer_window = r.u16()?;
    let our_window = r.u16()?;
    let peer_mss = r.u16()?;
    let our_mss = r.u16()?;
    let peer_wscale = optional(flags, FULL_FLAG_PEER_WSCALE, r.u8()?, "peer_wscale")?;
    let our_wscale = optional(flags, FULL_FLAG_OUR_WSCALE, r.u8()?, "our_wscale")?;
    let peer_tsval = r.u32()?;
    let our_tsval = r.u32()?;
    let our_fin = optional(flags, FULL_FLAG_OUR_FIN, r.u32()?, "our_fin")?;
    let peer_fin = optional(flags, FULL_FLAG_PEER_FIN, r.u32()?, "peer_fin")?;
    let bytes_in = r.u64()?;
    let bytes_out = r.u64()?;
    let last_activity_ms = r.u64()?;
    let unacked = r.payload()?;
    let unread_input = if r.buf.is_empty() {
        Vec::new()
    } else {
        let n = r.u32()? as usize;
        if n == 0 || n > MAX_INPUT {
            return Err(RecordError::BadField("unread_input"));
        }
        r.take(n)?.to_vec()
    };
    Ok(SessionState {
        key,
        phase,
        peer_isn,
        our_isn,
        rcv_nxt,
        peer_seq_max,
        snd_nxt,
        snd_una,
        peer_window,
        our_window,
        negotiated: Negotiated {
            peer_mss,
            our_mss,
            peer_wscale,
            our_wscale,
            sack_permitted: flags & FULL_FLAG_SACK != 0,
            timestamps: flags & FULL_FLAG_TIMESTAMPS != 0,
        },
        peer_tsval,
        our_tsval,
        our_fin,
        peer_fin,
        unacked: unacked.into(),
        unread_input,
        at_risk: flags & FULL_FLAG_AT_RISK != 0,
        bytes_in,
        bytes_out,
        last_activity_ms,
    })
}

fn read_sync(r: &mut Reader<'_>) -> Result<SessionSync, RecordError> {
    let key = read_key(r)?;
    let phase = read_phase(r)?;
    let flags = r.u8()?;
    if flags & !SYNC_FLAGS_KNOWN != 0 {
        return Err(RecordError::BadField("flags"));
    }
    let rcv_nxt = r.u32()?;
    let peer_seq_max = r.u32()?;
    let snd_nxt = r.u32()?;
    let snd_una = r.u32()?;
    let peer_window = r.u16()?;
    let our_window = r.u16()?;
    let peer_tsval = r.u32()?;
    let our_tsval = r.u32()?;
    let bytes_in = r.u64()?;
    let bytes_out = r.u64()?;
    let last_activity_ms = r.u64()?;
    let our_fin = if flags & SYNC_FLAG_OUR_FIN != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    let peer_fin = if flags & SYNC_FLAG_PEER_FIN != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    let (data_seq, data) = if flags & SYNC_FLAG_DATA != 0 {
        let data_seq = r.u32()?;
        let data = r.payload()?;
        if data.is_empty() && data_seq == snd_nxt {
            // The encoder would have used the short form: not canonical.
            return Err(RecordError::BadField("data"));
        }
        (data_seq, data)
    } else {
        (snd_nxt, Vec::new())
    };
    let (input_seq, input) = if flags & SYNC_FLAG_INPUT != 0 {
        let input_seq = r.u32()?;
        let input = r.payload()?;
        if input.is_empty() {
            // The encoder never writes an empty input part: not canonical.
            return Err(RecordError::BadField("input"));
        }
        (input_seq, input)
    } else {
        (0, Vec::new())
    };
    Ok(SessionSync {
        key,
        phase,
        rcv_nxt,
        peer_seq_max,
        snd_nxt,
        snd_una,
        peer_window,
        our_window,
        peer_tsval,
        our_tsval,
        our_fin,
        peer_fin,
        data_seq,
        data,
        input_seq,
        input,
        bytes_in,
        bytes_out,
        last_activity_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SessionKey {
        SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 1, 10),
            peer_port: 40_000,
            local_ip: Ipv4Addr::new(198, 18, 1, 100),
            local_port: 7,
        }
    }

    fn full(unacked: Vec<u8>) -> SessionState {
        SessionState {
            key: key(),
            phase: Phase::Established,
            peer_isn: 0xffff_fff0,
            our_isn: 1000,
            rcv_nxt: 0xffff_fff5,
            peer_seq_max: 0xffff_fff5,
            snd_nxt: 1001 + unacked.len() as u32,
            snd_una: 1001,
            peer_window: 502,
            our_window: 509,
            negotiated: Negotiated {
                peer_mss: 1460,
                our_mss: 1448,
                peer_wscale: Some(7),
                our_wscale: Some(9),
                sack_permitted: true,
                timestamps: true,
            },
            peer_tsval: 123_456,
            our_tsval: 654_321,
            our_fin: None,
            peer_fin: Some(0xffff_fff4),
            unacked: unacked.into(),
            unread_input: Vec::new(),
            at_risk: false,
            bytes_in: 4,
            bytes_out: 99,
            last_activity_ms: 1_700_000_000_000,
        }
    }

    fn sync(data: Vec<u8>) -> SessionSync {
        SessionSync {
            key: key(),
            phase: Phase::PeerClosed,
            rcv_nxt: 5,
            peer_seq_max: 5,
            snd_nxt: u32::MAX,
            snd_una: u32::MAX - 10,
            peer_window: 1,
            our_window: 2,
            peer_tsval: 3,
            our_tsval: 4,
            our_fin: None,
            peer_fin: None,
            data_seq: if data.is_empty() {
                u32::MAX
            } else {
                u32::MAX - 3
            },
            data,
            input_seq: 0,
            input: Vec::new(),
            bytes_in: 10,
            bytes_out: 20,
            last_activity_ms: 30,
        }
    }

    #[test]
    fn sync_input_part_round_trips_and_cold_records_do_not_grow() {
        let cold = Record::Sync(sync(b"out".to_vec()));
        let cold_len = encode(7, &cold).len();
        let mut hot = sync(b"out".to_vec());
        hot.input_seq = 4000;
        hot.input = b"peer bytes".to_vec();
        let hot = Record::Sync(hot);
        let bytes = encode(7, &hot);
        assert_eq!(bytes.len(), cold_len + 8 + 10);
        assert_eq!(bytes.len(), encoded_len(&hot));
        assert_eq!(bytes[31] & SYNC_FLAG_INPUT, SYNC_FLAG_INPUT);
        let (seq, back, used) = decode_record(&bytes).expect("decodes");
        assert_eq!((seq, &back, used), (7, &hot, bytes.len()));
        // An empty input part is not canonical.
        let mut forged = bytes.clone();
        let at = forged.len() - 10 - 4;
        forged.truncate(at);
        forged.extend_from_slice(&0u32.to_be_bytes());
        let len = (forged.len() - 4) as u32;
        forged[0..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&forged[8..]);
        forged[4..8].copy_from_slice(&crc.to_be_bytes());
        assert!(decode_record(&forged).is_err());
    }

    fn encode(seq: u64, record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(seq, record, &mut out);
        let mut checked = Vec::new();
        let n = try_encode_record(seq, record, &mut checked).expect("encodes");
        assert_eq!(checked, out);
        assert_eq!(n, out.len());
        assert_eq!(n, encoded_len(record));
        out
    }

    fn round_trip(seq: u64, record: Record) {
        let bytes = encode(seq, &record);
        assert_eq!(decode_record(&bytes), Ok((seq, record, bytes.len())));
    }

    /// Re-seals a hand-edited frame so that only the edited field is wrong.
    fn reseal(frame: &mut [u8]) {
        let crc = crc32fast::hash(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn fixed_sizes() {
        let mut s = full(Vec::new());
        s.our_fin = None;
        s.peer_fin = None;
        assert_eq!(encode(1, &Record::Full(s.clone())).len(), 110);
        s.our_fin = Some(1);
        s.peer_fin = Some(2);
        assert_eq!(
            encode(1, &Record::Full(s)).len(),
            110,
            "full has fixed offsets"
        );
        assert_eq!(FULL_FIXED_LEN, 110);

        let y = sync(Vec::new());
        assert_eq!(encode(1, &Record::Sync(y.clone())).len(), 84);
        assert_eq!(SYNC_FIXED_LEN, 84);
        let mut fins = y.clone();
        fins.our_fin = Some(7);
        fins.peer_fin = Some(8);
        assert_eq!(encode(1, &Record::Sync(fins)).len(), 92);
        let with_data = sync(vec![1, 2, 3]);
        assert_eq!(encode(1, &Record::Sync(with_data)).len(), 84 + 8 + 3);
        let mut odd_seq = y;
        odd_seq.data_seq = 17;
        assert_eq!(encode(1, &Record::Sync(odd_seq)).len(), 84 + 8);

        assert_eq!(encode(1, &Record::Delete(key())).len(), 30);
        assert_eq!(DELETE_LEN, 30);
        assert_eq!(encode_ack(9).len(), 17);
        assert_eq!(MAX_RECORD_LEN, FULL_FIXED_LEN + MAX_PAYLOAD + 4 + MAX_INPUT);
        let mut handing_over = full(vec![1; 5]);
        handing_over.unread_input = vec![2; 7];
        assert_eq!(
            encode(1, &Record::Full(handing_over)).len(),
            110 + 5 + 4 + 7
        );
    }

    #[test]
    fn header_and_offsets() {
        let bytes = encode(0x0102_0304_0506_0708, &Record::Full(full(vec![0xaa; 3])));
        assert_eq!(&bytes[0..4], &(113u32 - 4).to_be_bytes());
        assert_eq!(&bytes[4..8], &crc32fast::hash(&bytes[8..]).to_be_bytes());
        assert_eq!(bytes[8], VERSION);
        assert_eq!(bytes[9], KIND_FULL);
        assert_eq!(&bytes[10..18], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&bytes[18..22], &[198, 18, 1, 10]);
        assert_eq!(&bytes[22..24], &40_000u16.to_be_bytes());
        assert_eq!(&bytes[24..28], &[198, 18, 1, 100]);
        assert_eq!(&bytes[28..30], &7u16.to_be_bytes());
        assert_eq!(bytes[30], Phase::Established.code());
        assert_eq!(bytes[31], 0b0011_1110);
        assert_eq!(&bytes[32..36], &0xffff_fff0u32.to_be_bytes());
        assert_eq!(&bytes[52..56], &1001u32.to_be_bytes());
        assert_eq!(&bytes[60..62], &1460u16.to_be_bytes());
        assert_eq!(bytes[64], 7);
        assert_eq!(bytes[65], 9);
        assert_eq!(&bytes[74..78], &[0, 0, 0, 0]);
        assert_eq!(&bytes[78..82], &0xffff_fff4u32.to_be_bytes());
        assert_eq!(&bytes[98..106], &1_700_000_000_000u64.to_be_bytes());
        assert_eq!(&bytes[106..110], &3u32.to_be_bytes());
        assert_eq!(&bytes[110..], &[0xaa; 3]);

        let bytes = encode(5, &Record::Sync(sync(vec![9, 8])));
        assert_eq!(bytes[9], KIND_SYNC);
        assert_eq!(bytes[31], SYNC_FLAG_DATA);
        assert_eq!(&bytes[40..44], &u32::MAX.to_be_bytes());
        assert_eq!(&bytes[76..84], &30u64.to_be_bytes());
        assert_eq!(&bytes[84..88], &(u32::MAX - 3).to_be_bytes());
        assert_eq!(&bytes[88..92], &2u32.to_be_bytes());
        assert_eq!(&bytes[92..], &[9, 8]);
    }

    #[test]
    fn round_trips_each_kind() {
        round_trip(1, Record::Full(full(Vec::new())));
        round_trip(2, Record::Full(full(vec![7; 3000])));
        let mut bare = full(Vec::new());
        bare.negotiated = Negotiated::default();
        bare.peer_fin = None;
        bare.phase = Phase::Handshake;
        round_trip(3, Record::Full(bare));
        let mut closing = full(vec![1]);
        closing.our_fin = Some(u32::MAX);
        closing.peer_fin = Some(0);
        closing.phase = Phase::Closing;
        round_trip(u64::MAX, Record::Full(closing));

        round_trip(0, Record::Sync(sync(Vec::new())));
        round_trip(4, Record::Sync(sync(vec![0x55; 65_535])));
        let mut fins = sync(b"bye".to_vec());
        fins.our_fin = Some(0);
        fins.peer_fin = Some(u32::MAX);
        round_trip(5, Record::Sync(fins));
        let mut odd = sync(Vec::new());
        odd.data_seq = 0;
        round_trip(6, Record::Sync(odd));

        round_trip(7, Record::Delete(key()));
    }

    #[test]
    fn largest_payload_round_trips_and_larger_is_refused() {
        let mut big = full(vec![3; MAX_PAYLOAD]);
        big.unread_input = vec![4; MAX_INPUT];
        let bytes = encode(1, &Record::Full(big.clone()));
        assert_eq!(bytes.len(), MAX_RECORD_LEN);
        assert_eq!(
            decode_record(&bytes),
            Ok((1, Record::Full(big), MAX_RECORD_LEN))
        );

        let mut out = vec![1, 2, 3];
        let too_big = Record::Sync(sync(vec![0; MAX_PAYLOAD + 1]));
        assert_eq!(
            try_encode_record(1, &too_big, &mut out),
            Err(RecordError::TooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
        assert_eq!(out, vec![1, 2, 3], "output untouched on error");
        let mut state = full(vec![0; MAX_PAYLOAD + 1]);
        assert!(encode_full(1, &state, &mut out).is_err());
        let mut input = full(Vec::new());
        input.unread_input = vec![0; MAX_INPUT + 1];
        assert!(encode_full(1, &input, &mut out).is_err());
        assert_eq!(out, vec![1, 2, 3]);
        // The infallible encoder writes a frame that decoders refuse, without panicking.
        encode_record(1, &too_big, &mut out);
        assert!(matches!(
            decode_record(&out[3..]),
            Err(RecordError::TooLarge { .. })
        ));
        state.unacked.truncate(10);
        let mut a = Vec::new();
        encode_full(4, &state, &mut a).expect("fits");
        let mut b = Vec::new();
        encode_record(4, &Record::Full(state), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn frames_concatenate() {
        let records = [
            Record::Full(full(vec![1, 2])),
            Record::Sync(sync(vec![3])),
            Record::Delete(key()),
        ];
        let mut buf = Vec::new();
        for (i, r) in records.iter().enumerate() {
            encode_record(i as u64 + 10, r, &mut buf);
        }
        let mut at = 0;
        for (i, r) in records.iter().enumerate() {
            let (seq, got, used) = decode_record(&buf[at..]).expect("decodes");
            assert_eq!(seq, i as u64 + 10);
            assert_eq!(&got, r);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            decode_record(&buf[at..]),
            Err(RecordError::Incomplete { need: 4 })
        );
    }

    #[test]
    fn truncation_at_every_length_is_incomplete() {
        for record in [
            Record::Full(full(vec![9; 40])),
            Record::Sync(sync(vec![1, 2, 3])),
            Record::Delete(key()),
        ] {
            let bytes = encode(77, &record);
            for cut in 0..bytes.len() {
                match decode_record(&bytes[..cut]) {
                    Err(RecordError::Incomplete { need }) => {
                        assert!(need > cut && need <= bytes.len(), "cut {cut} need {need}")
                    }
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn hostile_lengths_are_rejected_before_reading() {
        // A huge len with only the header present: rejected, not "read 4 GiB more".
        let mut bytes = encode(1, &Record::Delete(key()));
        bytes[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_record(&bytes[..8]),
            Err(RecordError::TooLarge {
                len: 4 + u32::MAX as usize
            })
        );
        let just_over = (MAX_RECORD_LEN - 4 + 1) as u32;
        bytes[0..4].copy_from_slice(&just_over.to_be_bytes());
        assert!(matches!(
            decode_record(&bytes),
            Err(RecordError::TooLarge { .. })
        ));
        // Shorter than any frame.
        bytes[0..4].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(
            decode_record(&bytes),
            Err(RecordError::BadLength { len: 10 })
        );

        // A valid frame whose inner payload length lies: a length error, no allocation.
        let mut bytes = encode(1, &Record::Full(full(vec![1; 4])));
        bytes[106..110].copy_from_slice(&(MAX_PAYLOAD as u32).to_be_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            decode_record(&bytes),
            Err(RecordError::BadLength { .. })
        ));
        bytes[106..110].copy_from_slice(&u32::MAX.to_be_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            decode_record(&bytes),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let good = encode(3, &Record::Sync(sync(vec![1])));

        let mut bad = good.clone();
        bad[50] ^= 0x10;
        assert!(matches!(
            decode_record(&bad),
            Err(RecordError::BadCrc { .. })
        ));

        let mut bad = good.clone();
        bad[8] = 2;
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::UnsupportedVersion(2)));

        let mut bad = good.clone();
        bad[9] = 9;
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::UnknownKind(9)));

        let mut bad = good.clone();
        bad[30] = 6;
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::BadField("phase")));

        let mut bad = good.clone();
        bad[31] |= 0x80;
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::BadField("flags")));

        // Trailing byte inside the frame.
        let mut bad = good.clone();
        bad.push(0);
        let len = (bad.len() - 4) as u32;
        bad[0..4].copy_from_slice(&len.to_be_bytes());
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::BadLength { len }));

        // A frame shorter than its kind.
        let mut bad = good[..60].to_vec();
        bad[0..4].copy_from_slice(&56u32.to_be_bytes());
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::BadLength { len: 56 }));

        // Non-canonical: an absent FIN with a value, an empty data part that says nothing.
        let mut bad = encode(3, &Record::Full(full(Vec::new())));
        bad[74..78].copy_from_slice(&5u32.to_be_bytes());
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::BadField("our_fin")));
        let mut bad = encode(3, &Record::Full(full(Vec::new())));
        bad[31] &= !FULL_FLAG_OUR_WSCALE;
        reseal(&mut bad);
        assert_eq!(
            decode_record(&bad),
            Err(RecordError::BadField("our_wscale"))
        );
        let mut odd = sync(Vec::new());
        odd.data_seq = odd.snd_nxt.wrapping_add(1);
        let mut bad = encode(3, &Record::Sync(odd));
        bad[84..88].copy_from_slice(&u32::MAX.to_be_bytes());
        reseal(&mut bad);
        assert_eq!(decode_record(&bad), Err(RecordError::BadField("data")));
    }

    #[test]
    fn ack_round_trip_and_damage() {
        let ack = encode_ack(0xdead_beef_0000_0001);
        assert_eq!(&ack[0..4], b"NSAK");
        assert_eq!(decode_ack(&ack), Ok((0xdead_beef_0000_0001, ACK_LEN)));
        let mut stream = ack.to_vec();
        stream.extend_from_slice(&encode_ack(2));
        assert_eq!(decode_ack(&stream), Ok((0xdead_beef_0000_0001, ACK_LEN)));
        assert_eq!(decode_ack(&stream[ACK_LEN..]), Ok((2, ACK_LEN)));
        for cut in 0..ACK_LEN {
            assert_eq!(
                decode_ack(&ack[..cut]),
                Err(RecordError::Incomplete { need: ACK_LEN })
            );
        }
        assert_eq!(decode_ack(b"NSX"), Err(RecordError::BadMagic));
        let mut bad = ack;
        bad[7] ^= 1;
        assert!(matches!(decode_ack(&bad), Err(RecordError::BadCrc { .. })));
        let mut bad = ack;
        bad[4] = 2;
        let crc = crc32fast::hash(&bad[0..13]);
        bad[13..17].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_ack(&bad), Err(RecordError::UnsupportedVersion(2)));
        // A record frame is not an ack, and an ack is not a record.
        assert_eq!(
            decode_ack(&encode(1, &Record::Delete(key()))),
            Err(RecordError::BadMagic)
        );
        assert!(decode_record(&ack).is_err());
    }

    fn arb_opt_u32() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![Just(None), any::<u32>().prop_map(Some)]
    }

    fn arb_key() -> impl Strategy<Value = SessionKey> {
        (any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(a, b, c, d)| {
            SessionKey {
                peer_ip: Ipv4Addr::from(a),
                peer_port: b,
                local_ip: Ipv4Addr::from(c),
                local_port: d,
            }
        })
    }

    fn arb_phase() -> impl Strategy<Value = Phase> {
        (0u8..6).prop_map(|c| Phase::from_code(c).unwrap_or(Phase::Closed))
    }

    fn arb_full() -> impl Strategy<Value = SessionState> {
        (
            (arb_key(), arb_phase(), any::<[u32; 6]>(), any::<[u16; 4]>()),
            (
                proptest::option::of(any::<u8>()),
                proptest::option::of(any::<u8>()),
                any::<bool>(),
                any::<bool>(),
            ),
            (any::<[u32; 2]>(), arb_opt_u32(), arb_opt_u32()),
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                any::<[u64; 3]>(),
                prop_oneof![
                    3 => Just(Vec::new()),
                    1 => proptest::collection::vec(any::<u8>(), 1..40),
                ],
            ),
        )
            .prop_map(
                |(
                    (key, phase, s, w),
                    (pws, ows, sack, ts),
                    (tsv, our_fin, peer_fin),
                    (u, c, input),
                )| {
                    SessionState {
                        key,
                        phase,
                        peer_isn: s[0],
                        our_isn: s[1],
                        rcv_nxt: s[2],
                        peer_seq_max: s[3],
                        snd_nxt: s[4],
                        snd_una: s[5],
                        peer_window: w[0],
                        our_window: w[1],
                        negotiated: Negotiated {
                            peer_mss: w[2],
                            our_mss: w[3],
                            peer_wscale: pws,
                            our_wscale: ows,
                            sack_permitted: sack,
                            timestamps: ts,
                        },
                        peer_tsval: tsv[0],
                        our_tsval: tsv[1],
                        our_fin,
                        peer_fin,
                        unacked: u.into(),
                        unread_input: input,
                        at_risk: c[0] % 3 == 0,
                        bytes_in: c[0],
                        bytes_out: c[1],
                        last_activity_ms: c[2],
                    }
                },
            )
    }

    fn arb_sync() -> impl Strategy<Value = SessionSync> {
        (
            (arb_key(), arb_phase(), any::<[u32; 6]>(), any::<[u16; 2]>()),
            (arb_opt_u32(), arb_opt_u32(), any::<bool>(), any::<u32>()),
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                any::<[u64; 3]>(),
            ),
        )
            .prop_map(
                |((key, phase, s, w), (our_fin, peer_fin, seq_is_nxt, dseq), (data, c))| {
                    SessionSync {
                        key,
                        phase,
                        rcv_nxt: s[0],
                        peer_seq_max: s[1],
                        snd_nxt: s[2],
                        snd_una: s[3],
                        peer_window: w[0],
                        our_window: w[1],
                        peer_tsval: s[4],
                        our_tsval: s[5],
                        our_fin,
                        peer_fin,
                        data_seq: if seq_is_nxt { s[2] } else { dseq },
                        data,
                        input_seq: 0,
                        input: Vec::new(),
                        bytes_in: c[0],
                        bytes_out: c[1],
                        last_activity_ms: c[2],
                    }
                },
            )
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            arb_full().prop_map(Record::Full),
            arb_sync().prop_map(Record::Sync),
            arb_key().prop_map(Record::Delete),
        ]
    }

    proptest! {
        #[test]
        fn any_record_round_trips(seq in any::<u64>(), record in arb_record()) {
            let bytes = encode(seq, &record);
            prop_assert_eq!(decode_record(&bytes), Ok((seq, record, bytes.len())));
        }

        #[test]
        fn every_single_bit_flip_is_detected(seq in any::<u64>(), record in arb_record()) {
            let good = encode(seq, &record);
            let mut bad = good.clone();
            for bit in 0..good.len() * 8 {
                bad[bit / 8] ^= 1 << (bit % 8);
                match decode_record(&bad) {
                    Err(_) => {}
                    Ok((s, r, n)) => {
                        prop_assert_eq!((s, &r, n), (seq, &record, good.len()), "bit {}", bit);
                    }
                }
                bad[bit / 8] ^= 1 << (bit % 8);
            }
        }

        #[test]
        fn truncated_any_record_is_incomplete(record in arb_record(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(1, &record);
            let cut = cut.index(bytes.len());
            let is_incomplete = matches!(decode_record(&bytes[..cut]), Err(RecordError::Incomplete { .. }));
            prop_assert!(is_incomplete);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_record(&bytes);
            let _ = decode_ack(&bytes);
        }

        #[test]
        fn framed_garbage_never_panics(kind in 0u8..5, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Valid length, checksum and version around random bodies: exercises the
            // body parsers rather than the checksum.
            let mut frame = Vec::new();
            frame.extend_from_slice(&((body.len() + 14) as u32).to_be_bytes());
            frame.extend_from_slice(&[0; 4]);
            frame.push(VERSION);
            frame.push(kind);
            frame.extend_from_slice(&1u64.to_be_bytes());
            frame.extend_from_slice(&body);
            reseal(&mut frame);
            if let Ok((_, record, n)) = decode_record(&frame) {
                prop_assert_eq!(n, frame.len());
                prop_assert_eq!(encode(1, &record), frame);
            }
        }

        #[test]
        fn any_ack_round_trips(seq in any::<u64>()) {
            prop_assert_eq!(decode_ack(&encode_ack(seq)), Ok((seq, ACK_LEN)));
        }
    }
}
