//! The backup's end of one replication connection, sans-IO.
//!
//! A [`Follower`] takes the bytes read from the master ([`Follower::handle_bytes`]),
//! applies the messages to a [`Target`] (the backup's [`Replica`]) in
//! [`Follower::process`], and gives back the bytes to write ([`Follower::transmit`]):
//! the handshake replies, acknowledgements and resync requests. It holds the
//! handshake, the framing, the snapshot being received and what it may acknowledge.
//!
//! **Only applied records are acknowledged.** Acknowledgements are cumulative: an ack
//! of `n` tells the master that every record up to `n` is applied and stored, and the
//! master releases the output those records describe. So when a record does not
//! apply (a gap in a session's bytes, an unknown session, or a number that does not
//! follow the last one: records after a snapshot are numbered consecutively, so a
//! missing number is a lost record even when the next one would apply), the follower
//! acknowledges
//! nothing more, discards the records that follow, asks for a fresh snapshot
//! ([`Message::Resync`], once) and resumes acknowledging when that snapshot is applied.
//! Meanwhile the master keeps holding.

use crate::replication::stream::{fill, Inbound, Outbound, StreamError};
use crate::replication::wire::Message;
use crate::session::replica::Replica;
use nonstop_shared::auth::{Key, ServerHandshake, CLIENT_FINISH_LEN, CLIENT_HELLO_LEN, NONCE_LEN};
use nonstop_shared::session::Record;

/// Where the follower applies what it receives.
pub trait Target {
    /// Applies and stores one record; an error means the record did not apply and
    /// nothing of it was kept.
    fn apply(&mut self, seq: u64, record: &Record) -> anyhow::Result<()>;
    /// Replaces everything with a snapshot's full records, current at `upto`.
    fn reset_to(&mut self, upto: u64, records: &[Record]) -> anyhow::Result<()>;
}

impl Target for Replica {
    fn apply(&mut self, seq: u64, record: &Record) -> anyhow::Result<()> {
        Replica::apply(self, seq, record)
    }

    fn reset_to(&mut self, upto: u64, records: &[Record]) -> anyhow::Result<()> {
        Replica::reset_to(self, upto, records)
    }
}

/// What one [`Follower::process`] call did, for the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records applied.
    pub applied: u64,
    /// Records that did not apply (each starts or continues a resync).
    pub not_applied: u64,
    /// Records discarded while waiting for the requested snapshot.
    pub discarded: u64,
    /// Snapshots applied.
    pub snapshots: u64,
    /// Fresh snapshots asked for.
    pub resyncs: u64,
    /// The acknowledgement queued, if any.
    pub acked: Option<u64>,
}

impl Progress {
    /// Something was written to the target: flush it before sending the ack.
    pub fn stored(&self) -> bool {
        self.applied > 0 || self.snapshots > 0
    }
}

/// A snapshot being received.
#[derive(Debug)]
struct SnapshotInProgress {
    upto: u64,
    remaining: u32,
    records: Vec<Record>,
}

enum State {
    AwaitHello {
        key: Key,
        nonce: [u8; NONCE_LEN],
    },
    AwaitFinish(ServerHandshake),
    Established {
        inbound: Inbound,
        outbound: Outbound,
    },
    /// The handshake failed; the connection must end.
    Closed,
}

/// The backup's end of one replication connection.
pub struct Follower {
    state: State,
    /// Handshake bytes received so far.
    received: Vec<u8>,
    /// Handshake bytes to send.
    reply: Vec<u8>,
    max_sessions: usize,
    snapshot: Option<SnapshotInProgress>,
    /// A record did not apply: nothing is acknowledged until a snapshot is applied.
    awaiting_snapshot: bool,
    applied_upto: u64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("established", &self.is_established())
            .field("awaiting_snapshot", &self.awaiting_snapshot)
            .field("applied_upto", &self.applied_upto)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Waits for a master's client hello; answers with `nonce`. Snapshots of more than
    /// `max_sessions` records are refused.
    pub fn new(key: &Key, nonce: [u8; NONCE_LEN], max_sessions: usize) -> Follower {
        Follower {
            state: State::AwaitHello {
                key: key.clone(),
                nonce,
            },
            received: Vec::with_capacity(CLIENT_HELLO_LEN),
            reply: Vec::new(),
            max_sessions,
            snapshot: None,
            awaiting_snapshot: false,
            applied_upto: 0,
        }
    }

    /// The handshake is done.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Waiting for the snapshot asked for after a record did not apply.
    pub fn is_awaiting_snapshot(&self) -> bool {
        self.awaiting_snapshot
    }

    /// Takes bytes read from the master: handshake bytes, or frames, which are opened
    /// (and checked) at once and applied by [`Follower::process`]. An error ends the
    /// connection; nothing of a frame that fails to open is applied.
    pub fn handle_bytes(&mut self, mut bytes: &[u8]) -> Result<(), StreamError> {
        loop {
            match &mut self.state {
                State::AwaitHello { key, nonce } => {
                    let Some(hello) = fill::<CLIENT_HELLO_LEN>(&mut self.received, &mut bytes)
                    else {
                        return Ok(());
                    };
                    let (server, reply) = ServerHandshake::respond(key, &hello, *nonce)?;
                    self.reply.extend_from_slice(&reply);
                    self.state = State::AwaitFinish(server);
                }
                State::AwaitFinish(_) => {
                    let Some(finish) = fill::<CLIENT_FINISH_LEN>(&mut self.received, &mut bytes)
                    else {
                        return Ok(());
                    };
                    let State::AwaitFinish(server) =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        return Err(StreamError::Unexpected("handshake state lost"));
                    };
                    let channel = server.finish(&finish)?;
                    let (sender, receiver) = channel.split();
                    let outbound = Outbound::new(sender, &self.reply);
                    self.reply = Vec::new();
                    self.state = State::Established {
                        inbound: Inbound::new(receiver),
                        outbound,
                    };
                }
                State::Closed => {
                    return Err(StreamError::Unexpected("bytes after a failed handshake"))
                }
                State::Established { inbound, .. } => return inbound.push(bytes),
            }
        }
    }

    /// Applies every complete message received so far to `target`, and queues the
    /// acknowledgement or resync request they call for. Flush `target` (when
    /// [`Progress::stored`]) before writing [`Follower::transmit`]: an ack promises
    /// the records are stored.
    pub fn process(&mut self, target: &mut impl Target) -> Result<Progress, StreamError> {
        let mut progress = Progress::default();
        let State::Established { inbound, outbound } = &mut self.state else {
            return Ok(progress);
        };
        while let Some(message) = inbound.next_message()? {
            match message {
                Message::Hello { epoch, node_id } => {
                    tracing::info!(%node_id, epoch, "replication from master");
                }
                Message::Snapshot { upto, count } => {
                    if count as usize > self.max_sessions {
                        return Err(StreamError::SnapshotTooLarge {
                            count: count.into(),
                            max: self.max_sessions,
                        });
                    }
                    self.snapshot = Some(SnapshotInProgress {
                        upto,
                        remaining: count,
                        records: Vec::with_capacity(count as usize),
                    });
                }
                Message::Record(seq, record) => {
                    if let Some(snap) = self.snapshot.as_mut() {
                        snap.records.push(record);
                        snap.remaining = snap.remaining.saturating_sub(1);
                    } else if self.awaiting_snapshot {
                        progress.discarded += 1;
                    } else {
                        // Records follow their snapshot one by one (the interceptor
                        // numbers them consecutively): a missing number is a record
                        // lost on the way, which would leave a silent hole.
                        let applied = if seq == self.applied_upto + 1 {
                            target.apply(seq, &record)
                        } else {
                            Err(anyhow::anyhow!(
                                "record {seq} follows record {}: records missing",
                                self.applied_upto
                            ))
                        };
                        match applied {
                            Ok(()) => {
                                progress.applied += 1;
                                self.applied_upto = seq;
                            }
                            Err(e) => {
                                progress.not_applied += 1;
                                progress.resyncs += 1;
                                self.awaiting_snapshot = true;
                                outbound.send(&Message::Resync);
                                tracing::warn!(
                                    seq,
                                    acked = self.applied_upto,
                                    error = format!("{e:#}"),
                                    "record not applied: asking the master for a fresh snapshot"
                                );
                            }
                        }
                    }
                }
                Message::Ack(_) => return Err(StreamError::Unexpected("ack from the master")),
                Message::Resync => {
                    return Err(StreamError::Unexpected("resync request from the master"))
                }
            }
            if self.snapshot.as_ref().is_some_and(|s| s.remaining == 0) {
                if let Some(snap) = self.snapshot.take() {
                    target
                        .reset_to(snap.upto, &snap.records)
                        .map_err(StreamError::Target)?;
                    tracing::info!(
                        sessions = snap.records.len(),
                        upto = snap.upto,
                        "snapshot applied"
                    );
                    progress.snapshots += 1;
                    self.applied_upto = snap.upto;
                    self.awaiting_snapshot = false;
                }
            }
        }
        if progress.stored() {
            outbound.send(&Message::Ack(self.applied_upto));
            progress.acked = Some(self.applied_upto);
        }
        outbound.seal();
        Ok(progress)
    }

    /// Bytes to write to the master.
    pub fn transmit(&self) -> &[u8] {
        match &self.state {
            State::Established { outbound, .. } => outbound.transmit(),
            _ => &self.reply,
        }
    }

    /// The bytes returned by [`Follower::transmit`] were written.
    pub fn transmitted(&mut self) {
        match &mut self.state {
            State::Established { outbound, .. } => outbound.transmitted(),
            _ => self.reply.clear(),
        }
    }
}
