//! The heartbeat datagram: one UDP packet every `heartbeat_ms` on the sync link.
//!
//! Layout (version 1, all integers big-endian):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 4    | magic `NSHB`                                                 |
//! | 4      | 1    | version (1)                                                  |
//! | 5      | 1    | mode code (see [`Mode::code`])                               |
//! | 6      | 1    | flags: bit 0 = handover (sender yields mastership to peer); |
//! |        |      | bit 1 = unhealthy (sender's service fails its health check) |
//! | 7      | 1    | priority                                                     |
//! | 8      | 8    | epoch (term; +1 on every promotion)                          |
//! | 16     | 8    | sequence number of this heartbeat                            |
//! | 24     | 8    | sender's monotonic clock, microseconds                       |
//! | 32     | 8    | echo: the peer's clock value from its last heartbeat, or 0   |
//! | 40     | 4    | echo delay: microseconds between receiving that and sending  |
//! | 44     | 8    | replication position (records the backup acknowledged)      |
//! | 52     | 1    | node id length n (1..=64)                                    |
//! | 53     | n    | node id, UTF-8                                               |
//!
//! The echo fields let each side measure the round-trip time with its own clock only.
//!
//! On the wire every heartbeat travels inside the authenticated envelope of
//! [`crate::auth::HeartbeatAuth`] (boot nonce, counter, echo, HMAC-SHA256 tag); this
//! layout is what the envelope carries and what the failover machine reads.

use crate::Mode;
use thiserror::Error;

/// First four bytes of every heartbeat.
pub const MAGIC: [u8; 4] = *b"NSHB";
/// The layout version this code writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed part before the node id.
pub const FIXED_LEN: usize = 53;
/// Longest node id accepted on the wire and in config.
pub const MAX_NODE_ID_LEN: usize = 64;
/// Flag bit: the sender is handing mastership over to the receiver.
pub const FLAG_HANDOVER: u8 = 0b0000_0001;
/// Flag bit: the sender's service fails its health check (`[service.check]`).
pub const FLAG_UNHEALTHY: u8 = 0b0000_0010;

/// One decoded heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's node id.
    pub node_id: String,
    /// The sender's epoch.
    pub epoch: u64,
    /// The sender's mode.
    pub mode: Mode,
    /// The sender's priority (higher wins ties).
    pub priority: u8,
    /// The sender is a master handing over to the receiver (planned switchover).
    pub handover: bool,
    /// The sender's service fails its health check.
    pub unhealthy: bool,
    /// Sequence number of this heartbeat, +1 per datagram.
    pub seq: u64,
    /// Sender's monotonic clock at send time, microseconds.
    pub sent_us: u64,
    /// The receiver's `sent_us` from the last heartbeat the sender heard, 0 if none.
    pub echo_us: u64,
    /// Microseconds the sender held that echo before sending this heartbeat.
    pub echo_delay_us: u32,
    /// Replication position (number of records acknowledged by the backup).
    pub repl_pos: u64,
}

/// Why a datagram is not a valid heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeartbeatError {
    /// Shorter than the layout requires.
    #[error("heartbeat truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// Does not start with `NSHB`.
    #[error("not a heartbeat (bad magic)")]
    BadMagic,
    /// A version this build does not speak.
    #[error("unsupported heartbeat version {0}")]
    UnsupportedVersion(u8),
    /// Mode byte out of range.
    #[error("unknown mode code {0}")]
    UnknownMode(u8),
    /// Flag bits this version does not define.
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// Node id empty, too long or not UTF-8.
    #[error("invalid node id")]
    BadNodeId,
    /// Bytes after the node id.
    #[error("{0} trailing bytes after heartbeat")]
    TrailingBytes(usize),
}

impl Heartbeat {
    /// Encodes into a fresh buffer. Node ids longer than [`MAX_NODE_ID_LEN`] are
    /// rejected by config validation before they get here; this truncates defensively
    /// at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut id = self.node_id.as_str();
        while id.len() > MAX_NODE_ID_LEN {
            let mut cut = MAX_NODE_ID_LEN;
            while !id.is_char_boundary(cut) {
                cut -= 1;
            }
            id = &id[..cut];
        }
        let mut out = Vec::with_capacity(FIXED_LEN + id.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.mode.code());
        out.push(
            if self.handover { FLAG_HANDOVER } else { 0 }
                | if self.unhealthy { FLAG_UNHEALTHY } else { 0 },
        );
        out.push(self.priority);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.extend_from_slice(&self.echo_us.to_be_bytes());
        out.extend_from_slice(&self.echo_delay_us.to_be_bytes());
        out.extend_from_slice(&self.repl_pos.to_be_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out
    }

    /// Decodes one datagram, rejecting anything that is not exactly one heartbeat.
    pub fn decode(buf: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        if buf.len() < FIXED_LEN {
            return Err(HeartbeatError::Truncated {
                len: buf.len(),
                need: FIXED_LEN,
            });
        }
        if buf[0..4] != MAGIC {
            return Err(HeartbeatError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(HeartbeatError::UnsupportedVersion(buf[4]));
        }
        let mode = Mode::from_code(buf[5]).ok_or(HeartbeatError::UnknownMode(buf[5]))?;
        let flags = buf[6];
        if flags & !(FLAG_HANDOVER | FLAG_UNHEALTHY) != 0 {
            return Err(HeartbeatError::UnknownFlags(flags));
        }
        let id_len = usize::from(buf[52]);
        if id_len == 0 || id_len > MAX_NODE_ID_LEN {
            return Err(HeartbeatError::BadNodeId);
        }
        let need = FIXED_LEN + id_len;
        if buf.len() < need {
            return Err(HeartbeatError::Truncated {
                len: buf.len(),
                need,
            });
        }
        if buf.len() > need {
            return Err(HeartbeatError::TrailingBytes(buf.len() - need));
        }
        let node_id = std::str::from_utf8(&buf[FIXED_LEN..need])
            .map_err(|_| HeartbeatError::BadNodeId)?
            .to_owned();
        Ok(Heartbeat {
            node_id,
            epoch: be_u64(&buf[8..16]),
            mode,
            priority: buf[7],
            handover: flags & FLAG_HANDOVER != 0,
            unhealthy: flags & FLAG_UNHEALTHY != 0,
            seq: be_u64(&buf[16..24]),
            sent_us: be_u64(&buf[24..32]),
            echo_us: be_u64(&buf[32..40]),
            echo_delay_us: u32::from_be_bytes([buf[40], buf[41], buf[42], buf[43]]),
            repl_pos: be_u64(&buf[44..52]),
        })
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Heartbeat {
        Heartbeat {
            node_id: "master".into(),
            epoch: 7,
            mode: Mode::Master,
            priority: 100,
            handover: true,
            unhealthy: false,
            seq: 42,
            sent_us: 1_000_000,
            echo_us: 999_000,
            echo_delay_us: 17,
            repl_pos: 123_456,
        }
    }

    #[test]
    fn the_unhealthy_flag_is_bit_one() {
        let mut hb = sample();
        hb.unhealthy = true;
        let bytes = hb.encode();
        assert_eq!(bytes[6], FLAG_HANDOVER | FLAG_UNHEALTHY);
        assert_eq!(Heartbeat::decode(&bytes), Ok(hb));
        let mut unknown = bytes.clone();
        unknown[6] |= 0b100;
        assert!(Heartbeat::decode(&unknown).is_err());
    }

    #[test]
    fn layout_size_and_fixed_offsets() {
        let bytes = sample().encode();
        assert_eq!(bytes.len(), FIXED_LEN + "master".len());
        assert_eq!(&bytes[0..4], b"NSHB");
        assert_eq!(bytes[4], VERSION);
        assert_eq!(bytes[5], Mode::Master.code());
        assert_eq!(bytes[6], FLAG_HANDOVER);
        assert_eq!(bytes[7], 100);
        assert_eq!(&bytes[8..16], &7u64.to_be_bytes());
        assert_eq!(bytes[52], 6);
    }

    #[test]
    fn round_trip() {
        let hb = sample();
        assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb));
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let good = sample().encode();
        assert!(matches!(
            Heartbeat::decode(&good[..10]),
            Err(HeartbeatError::Truncated { .. })
        ));
        assert!(matches!(
            Heartbeat::decode(&good[..good.len() - 1]),
            Err(HeartbeatError::Truncated { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::BadMagic));
        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(
            Heartbeat::decode(&bad),
            Err(HeartbeatError::UnsupportedVersion(9))
        );
        let mut bad = good.clone();
        bad[5] = 77;
        assert_eq!(
            Heartbeat::decode(&bad),
            Err(HeartbeatError::UnknownMode(77))
        );
        let mut bad = good.clone();
        bad[6] = 0x80;
        assert_eq!(
            Heartbeat::decode(&bad),
            Err(HeartbeatError::UnknownFlags(0x80))
        );
        let mut bad = good.clone();
        bad[52] = 0;
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::BadNodeId));
        let mut bad = good.clone();
        bad[53] = 0xff;
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::BadNodeId));
        let mut bad = good;
        bad.push(0);
        assert_eq!(
            Heartbeat::decode(&bad),
            Err(HeartbeatError::TrailingBytes(1))
        );
    }

    #[test]
    fn overlong_node_id_is_truncated_on_encode() {
        let mut hb = sample();
        hb.node_id = "é".repeat(40); // 80 bytes
        let decoded = Heartbeat::decode(&hb.encode()).expect("decodes");
        assert!(decoded.node_id.len() <= MAX_NODE_ID_LEN);
        assert!(hb.node_id.starts_with(&decoded.node_id));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Heartbeat::decode(&bytes);
        }

        #[test]
        fn any_valid_heartbeat_round_trips(
            id in "[a-z0-9-]{1,64}", epoch in any::<u64>(), mode in 0u8..4, prio in any::<u8>(),
            handover in any::<bool>(), seq in any::<u64>(), sent in any::<u64>(),
            echo in any::<u64>(), delay in any::<u32>(), pos in any::<u64>(),
        ) {
            let hb = Heartbeat {
                node_id: id, epoch, mode: Mode::from_code(mode).expect("in range"), priority: prio,
                handover, unhealthy: !handover, seq, sent_us: sent, echo_us: echo, echo_delay_us: delay,
                repl_pos: pos,
            };
            prop_assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb));
        }

        #[test]
        fn single_byte_corruption_never_panics(idx in 0usize..59, val in any::<u8>()) {
            let mut bytes = sample().encode();
            let i = idx % bytes.len();
            bytes[i] = val;
            let _ = Heartbeat::decode(&bytes);
        }
    }
}
