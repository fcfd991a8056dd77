//! The master's end of one replication connection, sans-IO.
//!
//! A [`Leader`] takes the bytes read from the backup ([`Leader::handle_bytes`]) and
//! the records and snapshots to send, and gives back the bytes to write
//! ([`Leader::transmit`]) and what happened ([`Leader::poll_event`]): the handshake
//! is done, the backup acknowledged up to a record, or it asked for a fresh snapshot.
//! It holds the handshake, the framing and what the last snapshot covered; it never
//! touches a socket, the clock or the interceptor.
//!
//! Order on the wire: client hello; (server hello read); client finish, hello,
//! snapshot and its records; then records numbered after the snapshot. A
//! [`LeaderEvent::SnapshotRequested`] is answered with another snapshot on the same
//! connection; records the backup receives before it are discarded there.

use crate::replication::stream::{fill, Inbound, Outbound, StreamError};
use crate::replication::wire::Message;
use nonstop_shared::auth::{ClientHandshake, Key, NONCE_LEN, SERVER_HELLO_LEN};
use nonstop_shared::session::Record;

/// Something the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderEvent {
    /// The handshake is done: send a snapshot ([`Leader::send_snapshot`]).
    Established,
    /// The backup applied and stored every record up to this number.
    Acked(u64),
    /// The backup could not apply a record and acknowledges nothing until it gets a
    /// fresh snapshot ([`Leader::send_snapshot`]).
    SnapshotRequested,
}

enum State {
    Handshake {
        handshake: Option<ClientHandshake>,
        hello: Vec<u8>,
        reply: Vec<u8>,
    },
    Established {
        inbound: Inbound,
        outbound: Outbound,
    },
}

/// The master's end of one replication connection.
pub struct Leader {
    state: State,
    epoch: u64,
    node_id: String,
    /// Records numbered at or before this are covered by the last snapshot sent;
    /// `None` until the first one.
    snapshot_upto: Option<u64>,
    established: bool,
    acked: Option<u64>,
    snapshot_requested: bool,
    drop_next_payload: bool,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("established", &self.is_established())
            .field("snapshot_upto", &self.snapshot_upto)
            .finish_non_exhaustive()
    }
}

impl Leader {
    /// Starts a connection as `node_id` at `epoch`; the client hello is ready in
    /// [`Leader::transmit`].
    pub fn new(key: &Key, nonce: [u8; NONCE_LEN], epoch: u64, node_id: &str) -> Leader {
        let (handshake, hello) = ClientHandshake::start(key, nonce);
        Leader {
            state: State::Handshake {
                handshake: Some(handshake),
                hello: hello.to_vec(),
                reply: Vec::with_capacity(SERVER_HELLO_LEN),
            },
            epoch,
            node_id: node_id.to_owned(),
            snapshot_upto: None,
            established: false,
            acked: None,
            snapshot_requested: false,
            drop_next_payload: false,
        }
    }

    /// The handshake is done.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Takes bytes read from the backup. An error ends the connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        match &mut self.state {
            State::Handshake {
                handshake, reply, ..
            } => {
                let mut rest = bytes;
                let Some(server_hello) = fill::<SERVER_HELLO_LEN>(reply, &mut rest) else {
                    return Ok(());
                };
                let Some(handshake) = handshake.take() else {
                    return Err(StreamError::Unexpected("handshake finished twice"));
                };
                let (finish, channel) = handshake.finish(&server_hello)?;
                let (sender, receiver) = channel.split();
                let mut inbound = Inbound::new(receiver);
                inbound.push(rest)?;
                self.state = State::Established {
                    inbound,
                    outbound: Outbound::new(sender, &finish),
                };
                self.established = true;
                self.read_messages()
            }
            State::Established { inbound, .. } => {
                inbound.push(bytes)?;
                self.read_messages()
            }
        }
    }

    fn read_messages(&mut self) -> Result<(), StreamError> {
        let State::Established { inbound, .. } = &mut self.state else {
            return Ok(());
        };
        while let Some(message) = inbound.next_message()? {
            match message {
                Message::Ack(seq) => self.acked = Some(self.acked.map_or(seq, |a| a.max(seq))),
                Message::Resync => self.snapshot_requested = true,
                Message::Hello { .. } => {
                    return Err(StreamError::Unexpected("hello from the backup"))
                }
                Message::Snapshot { .. } => {
                    return Err(StreamError::Unexpected("snapshot from the backup"))
                }
                Message::Record(..) => {
                    return Err(StreamError::Unexpected("record from the backup"))
                }
            }
        }
        Ok(())
    }

    /// The next thing to act on, if any. Acknowledgements are cumulative, so several
    /// that arrived together come out as one.
    pub fn poll_event(&mut self) -> Option<LeaderEvent> {
        if std::mem::take(&mut self.established) {
            return Some(LeaderEvent::Established);
        }
        if let Some(seq) = self.acked.take() {
            return Some(LeaderEvent::Acked(seq));
        }
        if std::mem::take(&mut self.snapshot_requested) {
            return Some(LeaderEvent::SnapshotRequested);
        }
        None
    }

    /// Queues a snapshot current at record `upto` (the first one after the handshake
    /// is preceded by our hello). Records numbered up to `upto` are not sent again.
    pub fn send_snapshot(&mut self, upto: u64, records: &[Record]) {
        let State::Established { outbound, .. } = &mut self.state else {
            debug_assert!(false, "snapshot before the handshake");
            return;
        };
        if self.snapshot_upto.is_none() {
            outbound.send(&Message::Hello {
                epoch: self.epoch,
                node_id: self.node_id.clone(),
            });
        }
        outbound.send(&Message::Snapshot {
            upto,
            count: records.len() as u32,
        });
        for record in records {
            outbound.send_record(upto, record);
        }
        outbound.seal();
        self.snapshot_upto = Some(upto);
    }

    /// Queues the records the last snapshot does not cover; returns the number of the
    /// last one queued. Nothing is sent before the first snapshot.
    pub fn send_records(&mut self, batch: &[(u64, Record)]) -> Option<u64> {
        let State::Established { outbound, .. } = &mut self.state else {
            return None;
        };
        let upto = self.snapshot_upto?;
        let mut last = None;
        for (seq, record) in batch.iter().filter(|(seq, _)| *seq > upto) {
            if self.drop_next_payload && carries_payload(record) {
                self.drop_next_payload = false;
                tracing::warn!(seq, session = %record.key(), "fault: record not sent");
                continue;
            }
            outbound.send_record(*seq, record);
            last = Some(*seq);
        }
        outbound.seal();
        last
    }

    /// Fault injection (`drop_record`): the next record that carries payload bytes is
    /// not sent, so the backup finds a gap in that session's stream.
    pub fn drop_next_payload_record(&mut self) {
        self.drop_next_payload = true;
    }

    /// Bytes to write to the backup.
    pub fn transmit(&self) -> &[u8] {
        match &self.state {
            State::Handshake { hello, .. } => hello,
            State::Established { outbound, .. } => outbound.transmit(),
        }
    }

    /// The bytes returned by [`Leader::transmit`] were written.
    pub fn transmitted(&mut self) {
        match &mut self.state {
            State::Handshake { hello, .. } => hello.clear(),
            State::Established { outbound, .. } => outbound.transmitted(),
        }
    }
}

fn carries_payload(record: &Record) -> bool {
    match record {
        Record::Sync(sync) => !sync.data.is_empty(),
        Record::Full(state) => !state.unacked.is_empty(),
        Record::Delete(_) => false,
    }
}
