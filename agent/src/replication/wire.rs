//! Framing of the replication stream.
//!
//! Every message is `kind u8 | len u32 (big-endian) | body[len]`:
//!
//! | kind | direction | body |
//! |-----:|-----------|------|
//! | 1 | master → backup | hello: epoch u64, node id (UTF-8, rest of body) |
//! | 2 | master → backup | snapshot: `upto` u64 (sequence number the snapshot is current at), `count` u32 full records follow |
//! | 3 | master → backup | one record frame (see `nonstop_shared::record`) |
//! | 4 | backup → master | ack: every record up to `seq` u64 is applied and stored |
//! | 5 | backup → master | resync: a record did not apply; send a fresh snapshot (empty body) |
//!
//! Bodies are limited to [`MAX_BODY`]; anything else is a protocol error that closes
//! the connection (the master reconnects and sends a fresh snapshot).

use nonstop_shared::record::{decode_record, encode_record, RecordError, MAX_RECORD_LEN};
use nonstop_shared::session::Record;
use thiserror::Error;

/// Largest message body accepted: one record of the largest size the codec allows.
pub const MAX_BODY: usize = MAX_RECORD_LEN;

/// One replication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Who is sending.
    Hello {
        /// Sender's epoch.
        epoch: u64,
        /// Sender's node id.
        node_id: String,
    },
    /// A snapshot of `count` full records follows, current at sequence `upto`.
    Snapshot {
        /// Sequence number the snapshot is current at.
        upto: u64,
        /// Number of records that follow.
        count: u32,
    },
    /// A record and its sequence number.
    Record(u64, Record),
    /// Acknowledgement of every record up to this sequence number.
    Ack(u64),
    /// The backup could not apply a record and asks for a fresh snapshot; it sends no
    /// acknowledgement until that snapshot is applied.
    Resync,
}

/// A stream that is not speaking this protocol.
#[derive(Debug, Error)]
pub enum WireError {
    /// Unknown message kind.
    #[error("unknown replication message kind {0}")]
    UnknownKind(u8),
    /// Body too long or of the wrong size for its kind.
    #[error("bad replication message length {0}")]
    BadLength(usize),
    /// The embedded record did not decode.
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    /// Node id not UTF-8.
    #[error("hello carries a non-UTF-8 node id")]
    BadNodeId,
}

impl Message {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let kind = match self {
            Message::Hello { .. } => 1,
            Message::Snapshot { .. } => 2,
            Message::Record(..) => 3,
            Message::Ack(_) => 4,
            Message::Resync => 5,
        };
        let start = begin(kind, out);
        match self {
            Message::Hello { epoch, node_id } => {
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(node_id.as_bytes());
            }
            Message::Snapshot { upto, count } => {
                out.extend_from_slice(&upto.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Message::Record(seq, record) => encode_record(*seq, record, out),
            Message::Ack(seq) => out.extend_from_slice(&seq.to_be_bytes()),
            Message::Resync => {}
        }
        finish(start, out);
    }

    /// Appends `Record(seq, record)` without copying the record (the hot path: every
    /// record the master streams goes through here).
    pub fn encode_record(seq: u64, record: &Record, out: &mut Vec<u8>) {
        let start = begin(3, out);
        encode_record(seq, record, out);
        finish(start, out);
    }

    /// Decodes one message from the front of `buf`: `Ok(None)` if more bytes are
    /// needed, otherwise the message and the bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_BODY {
            return Err(WireError::BadLength(len));
        }
        if !(1..=5).contains(&kind) {
            return Err(WireError::UnknownKind(kind));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let body = &buf[5..5 + len];
        let u64_at = |b: &[u8]| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&b[..8]);
            u64::from_be_bytes(raw)
        };
        let message = match kind {
            1 => {
                if len < 8 {
                    return Err(WireError::BadLength(len));
                }
                let node_id = std::str::from_utf8(&body[8..]).map_err(|_| WireError::BadNodeId)?;
                Message::Hello {
                    epoch: u64_at(body),
                    node_id: node_id.to_owned(),
                }
            }
            2 => {
                if len != 12 {
                    return Err(WireError::BadLength(len));
                }
                Message::Snapshot {
                    upto: u64_at(body),
                    count: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
                }
            }
            3 => {
                let (seq, record, used) = decode_record(body)?;
                if used != len {
                    return Err(WireError::BadLength(len));
                }
                Message::Record(seq, record)
            }
            4 => {
                if len != 8 {
                    return Err(WireError::BadLength(len));
                }
                Message::Ack(u64_at(body))
            }
            _ => {
                if len != 0 {
                    return Err(WireError::BadLength(len));
                }
                Message::Resync
            }
        };
        Ok(Some((message, 5 + len)))
    }
}

/// Writes a message header with a placeholder length; returns where it starts.
fn begin(kind: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    start
}

/// Fills in the length of the message that starts at `start`.
fn finish(start: usize, out: &mut [u8]) {
    let len = (out.len() - start - 5) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_shared::session::SessionKey;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn key() -> SessionKey {
        SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 1, 10),
            peer_port: 40000,
            local_ip: Ipv4Addr::new(198, 18, 1, 100),
            local_port: 7000,
        }
    }

    #[test]
    fn messages_round_trip_back_to_back_and_in_pieces() {
        let messages = vec![
            Message::Hello {
                epoch: 3,
                node_id: "master".into(),
            },
            Message::Snapshot { upto: 99, count: 2 },
            Message::Record(100, Record::Delete(key())),
            Message::Ack(100),
            Message::Resync,
        ];
        let mut buf = Vec::new();
        for m in &messages {
            m.encode(&mut buf);
        }
        // Every prefix is either incomplete or yields whole messages.
        for cut in 0..buf.len() {
            let mut offset = 0;
            while let Ok(Some((_, used))) = Message::decode(&buf[offset..cut]) {
                offset += used;
            }
        }
        let mut decoded = Vec::new();
        let mut offset = 0;
        while offset < buf.len() {
            let (m, used) = Message::decode(&buf[offset..])
                .expect("valid")
                .expect("complete");
            decoded.push(m);
            offset += used;
        }
        assert_eq!(decoded, messages);
        let mut by_ref = Vec::new();
        Message::encode_record(100, &Record::Delete(key()), &mut by_ref);
        let mut owned = Vec::new();
        Message::Record(100, Record::Delete(key())).encode(&mut owned);
        assert_eq!(by_ref, owned);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Message::decode(&[9, 0, 0, 0, 0]),
            Err(WireError::UnknownKind(9))
        ));
        assert!(matches!(
            Message::decode(&[4, 0xff, 0xff, 0xff, 0xff]),
            Err(WireError::BadLength(_))
        ));
        assert!(matches!(
            Message::decode(&[4, 0, 0, 0, 3, 1, 2, 3]),
            Err(WireError::BadLength(3))
        ));
        assert!(matches!(
            Message::decode(&[1, 0, 0, 0, 2, 1, 2]),
            Err(WireError::BadLength(2))
        ));
        assert!(matches!(
            Message::decode(&[5, 0, 0, 0, 1, 0]),
            Err(WireError::BadLength(1))
        ));
        assert!(matches!(
            Message::decode(&[6, 0, 0, 0, 0]),
            Err(WireError::UnknownKind(6))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
        }
    }
}
