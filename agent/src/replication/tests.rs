//! Trace tests of the sans-IO [`Leader`]/[`Follower`] pair: bytes shuttled between
//! them by hand, exact messages and events asserted.

use crate::replication::follower::{Follower, Progress, Target};
use crate::replication::leader::{Leader, LeaderEvent};
use crate::replication::stream::StreamError;
use crate::replication::wire::Message;
use crate::session::table::SessionTable;
use crate::test_support::records::{full, sync_of};
use nonstop_shared::auth::{FrameError, Key};
use nonstop_shared::session::Record;

impl Target for SessionTable {
    fn apply(&mut self, seq: u64, record: &Record) -> anyhow::Result<()> {
        Ok(SessionTable::apply(self, seq, record)?)
    }

    fn reset_to(&mut self, upto: u64, records: &[Record]) -> anyhow::Result<()> {
        self.clear();
        for record in records {
            SessionTable::apply(self, upto, record)?;
        }
        Ok(())
    }
}

fn key() -> Key {
    Key::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key")
}

/// A leader and a follower, handshake done, nothing sent yet.
struct Pair {
    leader: Leader,
    follower: Follower,
    table: SessionTable,
}

impl Pair {
    fn new() -> Pair {
        Pair::with_limit(100)
    }

    fn with_limit(max_sessions: usize) -> Pair {
        let mut pair = Pair {
            leader: Leader::new(&key(), [1; 32], 3, "master"),
            follower: Follower::new(&key(), [2; 32], max_sessions),
            table: SessionTable::new(),
        };
        let mut events = Vec::new();
        while !pair.leader.is_established() {
            pair.deliver_to_follower().expect("handshake");
            events.extend(pair.flush_to_leader().expect("handshake"));
        }
        assert_eq!(events, vec![LeaderEvent::Established]);
        pair
    }

    /// Moves the leader's bytes to the follower without processing them.
    fn deliver_to_follower(&mut self) -> Result<(), StreamError> {
        let bytes = self.leader.transmit().to_vec();
        self.leader.transmitted();
        self.follower.handle_bytes(&bytes)
    }

    /// Moves the leader's bytes to the follower and applies them.
    fn flush_to_follower(&mut self) -> Result<Progress, StreamError> {
        self.deliver_to_follower()?;
        self.follower.process(&mut self.table)
    }

    /// Moves the follower's bytes to the leader; returns the events they caused.
    fn flush_to_leader(&mut self) -> Result<Vec<LeaderEvent>, StreamError> {
        let bytes = self.follower.transmit().to_vec();
        self.follower.transmitted();
        self.leader.handle_bytes(&bytes)?;
        Ok(std::iter::from_fn(|| self.leader.poll_event()).collect())
    }
}

#[test]
fn snapshot_then_records_are_applied_and_acked_cumulatively() {
    let mut p = Pair::new();
    let a = full(1, 1000);
    p.leader.send_snapshot(5, &[Record::Full(a.clone())]);
    let progress = p.flush_to_follower().expect("snapshot");
    assert_eq!((progress.snapshots, progress.acked), (1, Some(5)));
    assert_eq!(
        p.flush_to_leader().expect("ack"),
        vec![LeaderEvent::Acked(5)]
    );
    // Records up to the snapshot are covered by it and not sent again.
    let b = full(2, 2000);
    let batch = vec![
        (4, Record::Full(a.clone())),
        (6, Record::Sync(sync_of(&a, 1001, b"hello"))),
        (7, Record::Full(b.clone())),
    ];
    assert_eq!(p.leader.send_records(&batch), Some(7));
    let progress = p.flush_to_follower().expect("records");
    assert_eq!((progress.applied, progress.acked), (2, Some(7)));
    assert_eq!(
        p.flush_to_leader().expect("ack"),
        vec![LeaderEvent::Acked(7)]
    );
    assert_eq!(p.table.get(&a.key).map(|s| s.unacked.len()), Some(5));
    assert!(p.table.get(&b.key).is_some());
}

#[test]
fn nothing_is_sent_before_the_first_snapshot() {
    let mut p = Pair::new();
    let a = full(1, 1000);
    assert_eq!(p.leader.send_records(&[(1, Record::Full(a))]), None);
    // Only the client finish is waiting.
    p.flush_to_follower().expect("finish");
    assert!(p.leader.transmit().is_empty());
}

#[test]
fn a_record_that_does_not_apply_is_never_acked_and_a_snapshot_is_requested() {
    let mut p = Pair::new();
    let a = full(1, 1000);
    p.leader.send_snapshot(1, &[Record::Full(a.clone())]);
    p.flush_to_follower().expect("snapshot");
    assert_eq!(
        p.flush_to_leader().expect("ack"),
        vec![LeaderEvent::Acked(1)]
    );

    // Record 2 applies; record 3 leaves a hole in a's bytes (1006..1011 never came).
    let batch = vec![
        (2, Record::Sync(sync_of(&a, 1001, b"hello"))),
        (3, Record::Sync(sync_of(&a, 1011, b"world"))),
        (4, Record::Sync(sync_of(&a, 1016, b"!"))),
    ];
    p.leader.send_records(&batch);
    let progress = p.flush_to_follower().expect("records");
    assert_eq!(
        progress,
        Progress {
            applied: 1,
            not_applied: 1,
            discarded: 1,
            snapshots: 0,
            resyncs: 1,
            acked: Some(2),
        }
    );
    assert!(p.follower.is_awaiting_snapshot());
    // Acked up to 2 only; the master is asked for a snapshot.
    assert_eq!(
        p.flush_to_leader().expect("ack and resync"),
        vec![LeaderEvent::Acked(2), LeaderEvent::SnapshotRequested]
    );

    // Records the master sends meanwhile are discarded, never acked.
    p.leader
        .send_records(&[(5, Record::Sync(sync_of(&a, 1017, b"?")))]);
    let progress = p.flush_to_follower().expect("more records");
    assert_eq!((progress.discarded, progress.acked), (1, None));
    assert_eq!(p.flush_to_leader().expect("silence"), vec![]);

    // The fresh snapshot restores the table and acknowledging resumes.
    let mut current = a.clone();
    current.unacked.extend(b"helloXXXXXworld!?");
    p.leader.send_snapshot(5, &[Record::Full(current.clone())]);
    let progress = p.flush_to_follower().expect("resync snapshot");
    assert_eq!((progress.snapshots, progress.acked), (1, Some(5)));
    assert!(!p.follower.is_awaiting_snapshot());
    assert_eq!(
        p.flush_to_leader().expect("ack"),
        vec![LeaderEvent::Acked(5)]
    );
    assert_eq!(p.table.get(&a.key), Some(&current));
    // And records after it apply again.
    p.leader.send_records(&[(6, Record::Delete(a.key))]);
    assert_eq!(p.flush_to_follower().expect("delete").acked, Some(6));
}

#[test]
fn a_sync_for_an_unknown_session_asks_for_a_snapshot_once() {
    let mut p = Pair::new();
    p.leader.send_snapshot(0, &[]);
    p.flush_to_follower().expect("empty snapshot");
    p.flush_to_leader().expect("ack");
    let a = full(1, 1000);
    let batch = vec![
        (1, Record::Sync(sync_of(&a, 1001, b""))),
        (2, Record::Sync(sync_of(&a, 1001, b"x"))),
    ];
    p.leader.send_records(&batch);
    let progress = p.flush_to_follower().expect("records");
    assert_eq!(
        (progress.not_applied, progress.resyncs, progress.discarded),
        (1, 1, 1)
    );
    assert_eq!(progress.acked, None);
    assert_eq!(
        p.flush_to_leader().expect("resync"),
        vec![LeaderEvent::SnapshotRequested]
    );
}

#[test]
fn the_drop_record_fault_skips_the_next_payload_record_and_forces_a_resync() {
    let mut p = Pair::new();
    let a = full(1, 1000);
    p.leader.send_snapshot(1, &[Record::Full(a.clone())]);
    p.flush_to_follower().expect("snapshot");
    p.flush_to_leader().expect("ack");
    p.leader.drop_next_payload_record();
    let mut acked_only = a.clone();
    acked_only.rcv_nxt += 10;
    let mut all_acked = acked_only.clone();
    all_acked.snd_una = 1004;
    all_acked.snd_nxt = 1004;
    let batch = vec![
        // No payload: sent.
        (2, Record::Sync(sync_of(&acked_only, 1001, b""))),
        // Dropped.
        (3, Record::Sync(sync_of(&acked_only, 1001, b"abc"))),
        // The peer acked those bytes: this sync alone would apply cleanly (the
        // table sees no gap), yet the backup never had them.
        (4, Record::Sync(sync_of(&all_acked, 1004, b""))),
    ];
    assert_eq!(p.leader.send_records(&batch), Some(4));
    let mut probe = p.table.clone();
    if let (_, Record::Sync(sync)) = &batch[2] {
        probe
            .apply(4, &Record::Sync(sync.clone()))
            .expect("the table alone would accept record 4");
    }
    let progress = p.flush_to_follower().expect("records");
    assert_eq!(
        (progress.applied, progress.not_applied, progress.acked),
        (1, 1, Some(2))
    );
    assert_eq!(
        p.flush_to_leader().expect("events"),
        vec![LeaderEvent::Acked(2), LeaderEvent::SnapshotRequested]
    );
}

#[test]
fn bytes_in_single_byte_pieces_give_the_same_result() {
    let mut p = Pair::new();
    let a = full(1, 1000);
    p.leader.send_snapshot(1, &[Record::Full(a.clone())]);
    p.leader
        .send_records(&[(2, Record::Sync(sync_of(&a, 1001, b"pieces")))]);
    let bytes = p.leader.transmit().to_vec();
    p.leader.transmitted();
    let mut acked = None;
    for byte in bytes {
        p.follower.handle_bytes(&[byte]).expect("piece");
        let progress = p.follower.process(&mut p.table).expect("process");
        acked = progress.acked.or(acked);
    }
    assert_eq!(acked, Some(2));
    assert_eq!(p.table.get(&a.key).map(|s| s.unacked.len()), Some(6));
}

#[test]
fn a_wrong_key_fails_the_handshake_on_both_ends() {
    let other = Key::from_bytes(b"another key that is long enough!!").expect("key");
    let mut leader = Leader::new(&other, [1; 32], 1, "master");
    let mut follower = Follower::new(&key(), [2; 32], 10);
    follower
        .handle_bytes(leader.transmit())
        .expect("hello is fine");
    leader.transmitted();
    let err = leader
        .handle_bytes(follower.transmit())
        .expect_err("the backup cannot prove our key");
    assert!(err.is_rejection(), "{err}");
    // A finish that does not prove the key is refused by the follower too.
    let mut follower = Follower::new(&key(), [2; 32], 10);
    let (_, hello) = nonstop_shared::auth::ClientHandshake::start(&key(), [3; 32]);
    follower.handle_bytes(&hello).expect("hello");
    let err = follower.handle_bytes(&[0; 32]).expect_err("bad finish");
    assert!(err.is_rejection());
    assert!(!follower.is_established());
}

#[test]
fn a_replayed_frame_ends_the_connection_before_anything_applies() {
    let mut p = Pair::new();
    p.leader.send_snapshot(0, &[]);
    p.flush_to_follower().expect("snapshot");
    let a = full(1, 1000);
    p.leader.send_records(&[(1, Record::Full(a.clone()))]);
    let frame = p.leader.transmit().to_vec();
    p.leader.transmitted();
    p.follower.handle_bytes(&frame).expect("first time");
    let err = p.follower.handle_bytes(&frame).expect_err("replay");
    assert!(err.is_replay(), "{err}");
    // A flipped bit is a forgery.
    let mut q = Pair::new();
    q.leader.send_snapshot(0, &[]);
    let mut forged = q.leader.transmit().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let err = q.follower.handle_bytes(&forged).expect_err("forged");
    assert!(matches!(err, StreamError::Frame(FrameError::BadTag)));
    assert!(q
        .follower
        .process(&mut q.table)
        .expect("nothing")
        .acked
        .is_none());
    assert!(q.table.is_empty());
}

#[test]
fn an_oversized_snapshot_is_refused() {
    let mut p = Pair::with_limit(1);
    p.leader
        .send_snapshot(9, &[Record::Full(full(1, 1)), Record::Full(full(2, 2))]);
    let err = p.flush_to_follower().expect_err("too large");
    assert!(matches!(
        err,
        StreamError::SnapshotTooLarge { count: 2, max: 1 }
    ));
    assert!(p.table.is_empty());
}

#[test]
fn the_follower_refuses_an_ack_and_the_leader_a_record() {
    use nonstop_shared::auth::{ClientHandshake, ServerHandshake};
    // A client that speaks the handshake but then sends what only a backup sends.
    let mut follower = Follower::new(&key(), [2; 32], 10);
    let (client, hello) = ClientHandshake::start(&key(), [3; 32]);
    follower.handle_bytes(&hello).expect("hello");
    let mut reply = [0u8; nonstop_shared::auth::SERVER_HELLO_LEN];
    reply.copy_from_slice(follower.transmit());
    let (finish, mut channel) = client.finish(&reply).expect("server proof");
    let mut plain = Vec::new();
    Message::Ack(1).encode(&mut plain);
    let mut bytes = finish.to_vec();
    channel.seal(&plain, &mut bytes);
    follower.handle_bytes(&bytes).expect("authentic");
    let mut table = SessionTable::new();
    let err = follower
        .process(&mut table)
        .expect_err("an ack from the master");
    assert!(matches!(err, StreamError::Unexpected(_)), "{err}");

    // A server that answers the handshake and then sends a record.
    let mut leader = Leader::new(&key(), [1; 32], 1, "master");
    let mut hello = [0u8; nonstop_shared::auth::CLIENT_HELLO_LEN];
    hello.copy_from_slice(leader.transmit());
    let (server, reply) = ServerHandshake::respond(&key(), &hello, [4; 32]).expect("hello");
    leader.handle_bytes(&reply).expect("proof");
    let mut finish = [0u8; nonstop_shared::auth::CLIENT_FINISH_LEN];
    finish.copy_from_slice(&leader.transmit()[..nonstop_shared::auth::CLIENT_FINISH_LEN]);
    let mut channel = server.finish(&finish).expect("client proof");
    let mut plain = Vec::new();
    Message::Record(1, Record::Full(full(1, 1))).encode(&mut plain);
    let mut bytes = Vec::new();
    channel.seal(&plain, &mut bytes);
    let err = leader
        .handle_bytes(&bytes)
        .expect_err("a record from the backup");
    assert!(matches!(err, StreamError::Unexpected(_)), "{err}");
}
