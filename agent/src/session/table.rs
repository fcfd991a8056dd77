//! The session table: the recovery data of every session, built by applying
//! [`Record`]s in replication order.
//!
//! The backup applies what the master replicates; the store replays its files into
//! one at startup; the restore after takeover reads from it. Sans-IO and clock-free:
//! records in, state out.
//!
//! # Applying records
//! - `full`: inserts or replaces the session.
//! - `sync`: updates a known session (unknown → [`ApplyError::UnknownSession`]). All
//!   fields take the record's values except:
//!   - `snd_una` never moves backwards (a stale ACK acknowledges nothing new);
//!   - the outbound payload `data` (starting at `data_seq`) is appended to `unacked`
//!     only where it extends the known bytes `[snd_una, snd_una + unacked.len())`;
//!     bytes already known (retransmissions, keepalive probes) are ignored; data that
//!     starts after the known end would leave a hole → [`ApplyError::Gap`];
//!   - `unacked` is trimmed at the front as `snd_una` advances (modulo 2^32), so
//!     `unacked[0]` is always the byte at `snd_una`. An ACK beyond the known bytes
//!     (our SYN or FIN, which take a sequence number but no byte) empties `unacked`.
//! - `delete`: removes the session; deleting an unknown session is a no-op.
//!
//! A rejected record leaves the table unchanged. Applying the same record twice gives
//! the same table as applying it once, so replaying a log over a snapshot that already
//! contains some of it is harmless.

use nonstop_shared::record::MAX_PAYLOAD;
use nonstop_shared::session::{seq_lt, Record, SessionKey, SessionState, SessionSync};
use std::collections::HashMap;
use thiserror::Error;

/// Why a record was not applied (the table is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// A `sync` for a session the table does not hold (e.g. the backup joined after
    /// the session's `full` record). The caller counts it; a resync repairs it.
    #[error("sync for unknown session {0}")]
    UnknownSession(SessionKey),
    /// Outbound data that starts after the last known byte: the bytes in between were
    /// never replicated.
    #[error("gap in outbound data of {key}: known up to {known_end}, data starts at {data_seq}")]
    Gap {
        /// The session.
        key: SessionKey,
        /// Sequence number after the last known unacked byte.
        known_end: u32,
        /// Where the rejected data starts.
        data_seq: u32,
    },
    /// `unacked` would grow beyond what a record can carry ([`MAX_PAYLOAD`]).
    #[error("unacked data of {key} would exceed {MAX_PAYLOAD} bytes ({len})")]
    TooLarge {
        /// The session.
        key: SessionKey,
        /// The length `unacked` would have had.
        len: usize,
    },
}

/// The recovery data of all known sessions.
#[derive(Debug, Clone, Default)]
pub struct SessionTable {
    sessions: HashMap<SessionKey, SessionState>,
    last_seq: u64,
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> SessionTable {
        SessionTable::default()
    }

    /// Applies one record with replication sequence number `seq` (see the module
    /// doc). [`SessionTable::last_seq`] advances to `seq` whether or not the record
    /// was accepted: it says how far the stream has been processed.
    pub fn apply(&mut self, seq: u64, record: &Record) -> Result<(), ApplyError> {
        self.last_seq = self.last_seq.max(seq);
        match record {
            Record::Full(state) => {
                if state.unacked.len() > MAX_PAYLOAD {
                    return Err(ApplyError::TooLarge {
                        key: state.key,
                        len: state.unacked.len(),
                    });
                }
                self.sessions.insert(state.key, state.clone());
                Ok(())
            }
            Record::Sync(sync) => {
                let state = self
                    .sessions
                    .get_mut(&sync.key)
                    .ok_or(ApplyError::UnknownSession(sync.key))?;
                apply_sync(state, sync)
            }
            Record::Delete(key) => {
                self.sessions.remove(key);
                Ok(())
            }
        }
    }

    /// The state of one session.
    pub fn get(&self, key: &SessionKey) -> Option<&SessionState> {
        self.sessions.get(key)
    }

    /// All sessions, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &SessionState> + '_ {
        self.sessions.values()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// No sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Highest sequence number passed to [`SessionTable::apply`] since creation or
    /// [`SessionTable::clear`]; 0 if none (replication numbers records from 1).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// A `full` record for every session, ordered by key (deterministic output for
    /// snapshots and resyncs).
    pub fn snapshot(&self) -> Vec<Record> {
        self.sorted()
            .into_iter()
            .cloned()
            .map(Record::Full)
            .collect()
    }

    /// Every session ordered by key, without copying.
    pub fn sorted(&self) -> Vec<&SessionState> {
        let mut all: Vec<&SessionState> = self.sessions.values().collect();
        all.sort_unstable_by_key(|s| s.key);
        all
    }

    /// Forgets every session and resets [`SessionTable::last_seq`] to 0 (before a
    /// resync from a new replication stream).
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.last_seq = 0;
    }
}

/// Applies a sync to a known session, all or nothing.
fn apply_sync(state: &mut SessionState, sync: &SessionSync) -> Result<(), ApplyError> {
    let una = state.snd_una;
    let known = state.unacked.len();
    // known <= MAX_PAYLOAD < 2^31, so the cast and the wrapping add are exact mod 2^32.
    let known_end = una.wrapping_add(known as u32);

    // Bytes of `data` that extend the known bytes: data[skip..].
    let mut skip = sync.data.len();
    if !sync.data.is_empty() {
        if seq_lt(known_end, sync.data_seq) {
            return Err(ApplyError::Gap {
                key: sync.key,
                known_end,
                data_seq: sync.data_seq,
            });
        }
        let already = known_end.wrapping_sub(sync.data_seq) as usize;
        skip = already.min(sync.data.len());
    }
    let grown = known + (sync.data.len() - skip);

    // snd_una never moves back; bytes before the new snd_una go.
    let new_una = if seq_lt(una, sync.snd_una) {
        sync.snd_una
    } else {
        una
    };
    let acked = (new_una.wrapping_sub(una) as usize).min(grown);
    let new_len = grown - acked;
    if new_len > MAX_PAYLOAD {
        return Err(ApplyError::TooLarge {
            key: sync.key,
            len: new_len,
        });
    }

    // Validated: mutate.
    state.unacked.extend(&sync.data[skip..]);
    state.unacked.drain(..acked);
    state.snd_una = new_una;
    state.phase = sync.phase;
    state.rcv_nxt = sync.rcv_nxt;
    state.peer_seq_max = sync.peer_seq_max;
    state.snd_nxt = sync.snd_nxt;
    state.peer_window = sync.peer_window;
    state.our_window = sync.our_window;
    state.peer_tsval = sync.peer_tsval;
    state.our_tsval = sync.our_tsval;
    state.our_fin = sync.our_fin;
    state.peer_fin = sync.peer_fin;
    state.bytes_in = sync.bytes_in;
    state.bytes_out = sync.bytes_out;
    state.last_activity_ms = sync.last_activity_ms;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::records::{full, sync_of};
    use nonstop_shared::session::Phase;
    use proptest::prelude::*;

    fn table_with(s: &SessionState) -> SessionTable {
        let mut t = SessionTable::new();
        t.apply(1, &Record::Full(s.clone())).expect("full applies");
        t
    }

    #[test]
    fn full_inserts_and_replaces() {
        let mut t = SessionTable::new();
        assert!(t.is_empty());
        let a = full(1, 100);
        t.apply(1, &Record::Full(a.clone())).expect("insert");
        t.apply(2, &Record::Full(full(2, 200))).expect("insert");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&a.key), Some(&a));
        let mut a2 = a.clone();
        a2.unacked = b"xyz".to_vec().into();
        a2.snd_nxt = a2.snd_una.wrapping_add(3);
        t.apply(3, &Record::Full(a2.clone())).expect("replace");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&a.key), Some(&a2));
        assert_eq!(t.last_seq(), 3);
        assert_eq!(t.iter().count(), 2);
    }

    #[test]
    fn sync_for_unknown_session_is_refused() {
        let mut t = SessionTable::new();
        let s = full(1, 100);
        let sync = sync_of(&s, s.snd_nxt, b"");
        assert_eq!(
            t.apply(4, &Record::Sync(sync)),
            Err(ApplyError::UnknownSession(s.key))
        );
        assert!(t.is_empty());
        assert_eq!(t.last_seq(), 4, "processed even though refused");
    }

    #[test]
    fn sync_updates_every_field_and_appends_data() {
        let s = full(1, 100);
        let mut t = table_with(&s);
        let mut y = sync_of(&s, 101, b"hello");
        y.phase = Phase::PeerClosed;
        y.rcv_nxt = 600;
        y.peer_seq_max = 601;
        y.snd_nxt = 106;
        y.peer_window = 7;
        y.our_window = 8;
        y.peer_tsval = 9;
        y.our_tsval = 10;
        y.peer_fin = Some(600);
        y.bytes_in = 99;
        y.bytes_out = 5;
        y.last_activity_ms = 1234;
        t.apply(2, &Record::Sync(y)).expect("applies");
        let got = t.get(&s.key).expect("present");
        let mut want = s.clone();
        want.phase = Phase::PeerClosed;
        want.rcv_nxt = 600;
        want.peer_seq_max = 601;
        want.snd_nxt = 106;
        want.peer_window = 7;
        want.our_window = 8;
        want.peer_tsval = 9;
        want.our_tsval = 10;
        want.peer_fin = Some(600);
        want.bytes_in = 99;
        want.bytes_out = 5;
        want.last_activity_ms = 1234;
        want.unacked = (b"hello".to_vec()).into();
        assert_eq!(got, &want);
    }

    #[test]
    fn retransmitted_bytes_are_ignored_and_overlap_extends() {
        let s = full(1, 100);
        let mut t = table_with(&s);
        let mut cur = s.clone();
        cur.snd_nxt = 111;
        t.apply(2, &Record::Sync(sync_of(&cur, 101, b"0123456789")))
            .expect("first");
        // Pure retransmission.
        t.apply(3, &Record::Sync(sync_of(&cur, 103, b"234")))
            .expect("retransmit");
        assert_eq!(t.get(&s.key).expect("present").unacked, b"0123456789");
        // Overlapping retransmission plus new bytes.
        cur.snd_nxt = 114;
        t.apply(4, &Record::Sync(sync_of(&cur, 109, b"89abc")))
            .expect("overlap");
        assert_eq!(t.get(&s.key).expect("present").unacked, b"0123456789abc");
        // Keepalive probe: one byte before snd_una after everything is acked.
        cur.snd_una = 114;
        t.apply(5, &Record::Sync(sync_of(&cur, 113, b"c")))
            .expect("keepalive");
        assert!(t.get(&s.key).expect("present").unacked.is_empty());
    }

    #[test]
    fn gap_is_refused_and_state_unchanged() {
        let s = full(1, 100);
        let mut t = table_with(&s);
        let mut cur = s.clone();
        cur.snd_nxt = 104;
        t.apply(2, &Record::Sync(sync_of(&cur, 101, b"abc")))
            .expect("first");
        let before = t.get(&s.key).cloned();
        let mut y = sync_of(&cur, 105, b"zz");
        y.snd_nxt = 107;
        y.bytes_out = 77;
        assert_eq!(
            t.apply(3, &Record::Sync(y)),
            Err(ApplyError::Gap {
                key: s.key,
                known_end: 104,
                data_seq: 105
            })
        );
        assert_eq!(t.get(&s.key).cloned(), before);
    }

    #[test]
    fn ack_trims_across_wrap_and_never_moves_back() {
        let isn = u32::MAX - 3; // data starts at MAX-2, wraps after 3 bytes
        let s = full(1, isn);
        let mut t = table_with(&s);
        let mut cur = s.clone();
        cur.snd_nxt = isn.wrapping_add(9);
        t.apply(
            2,
            &Record::Sync(sync_of(&cur, isn.wrapping_add(1), b"abcdefgh")),
        )
        .expect("data");
        cur.snd_una = 2; // MAX-2, MAX-1, MAX, 0, 1 acked: 5 bytes
        t.apply(3, &Record::Sync(sync_of(&cur, cur.snd_nxt, b"")))
            .expect("ack");
        let got = t.get(&s.key).expect("present");
        assert_eq!(got.unacked, b"fgh");
        assert_eq!(got.snd_una, 2);
        // A stale ACK (old snd_una) does not bring bytes back nor move snd_una.
        cur.snd_una = u32::MAX;
        t.apply(4, &Record::Sync(sync_of(&cur, cur.snd_nxt, b"")))
            .expect("stale ack");
        let got = t.get(&s.key).expect("present");
        assert_eq!(got.unacked, b"fgh");
        assert_eq!(got.snd_una, 2);
    }

    #[test]
    fn fin_ack_beyond_data_empties_unacked() {
        let s = full(1, 100);
        let mut t = table_with(&s);
        let mut cur = s.clone();
        cur.snd_nxt = 105; // 3 bytes + FIN
        cur.our_fin = Some(104);
        cur.phase = Phase::LocalClosed;
        t.apply(2, &Record::Sync(sync_of(&cur, 101, b"end")))
            .expect("data+fin");
        cur.snd_una = 105;
        cur.phase = Phase::Closing;
        t.apply(3, &Record::Sync(sync_of(&cur, cur.snd_nxt, b"")))
            .expect("fin acked");
        let got = t.get(&s.key).expect("present");
        assert!(got.unacked.is_empty());
        assert_eq!(got.snd_una, 105);
        assert_eq!(got.our_fin, Some(104));
    }

    #[test]
    fn syn_ack_acknowledged_moves_data_start() {
        // Full sent before the peer acked our SYN-ACK: snd_una == our_isn.
        let mut s = full(1, 100);
        s.phase = Phase::Handshake;
        s.snd_una = 100;
        let mut t = table_with(&s);
        let mut cur = s.clone();
        cur.phase = Phase::Established;
        cur.snd_una = 101;
        t.apply(2, &Record::Sync(sync_of(&cur, cur.snd_nxt, b"")))
            .expect("ack of syn");
        cur.snd_nxt = 103;
        t.apply(3, &Record::Sync(sync_of(&cur, 101, b"hi")))
            .expect("data");
        assert_eq!(t.get(&s.key).expect("present").unacked, b"hi");
    }

    #[test]
    fn delete_removes_and_is_idempotent() {
        let s = full(1, 100);
        let mut t = table_with(&s);
        t.apply(2, &Record::Delete(s.key)).expect("delete");
        assert!(t.get(&s.key).is_none());
        t.apply(3, &Record::Delete(s.key)).expect("delete again");
        assert!(t.is_empty());
    }

    #[test]
    fn same_sync_twice_is_idempotent() {
        let s = full(1, 100);
        let mut t = table_with(&s);
        let mut cur = s.clone();
        cur.snd_nxt = 106;
        cur.snd_una = 103;
        let y = Record::Sync(sync_of(&cur, 101, b"abcde"));
        t.apply(2, &y).expect("once");
        let once = t.get(&s.key).cloned();
        t.apply(2, &y).expect("twice");
        assert_eq!(t.get(&s.key).cloned(), once);
        assert_eq!(once.map(|s| s.unacked), Some(b"cde".to_vec().into()));
    }

    #[test]
    fn oversized_unacked_is_refused() {
        let mut s = full(1, 100);
        s.unacked = (vec![0; MAX_PAYLOAD]).into();
        let mut t = table_with(&s);
        let y = sync_of(&s, 101u32.wrapping_add(MAX_PAYLOAD as u32), b"x");
        assert!(matches!(
            t.apply(2, &Record::Sync(y)),
            Err(ApplyError::TooLarge { .. })
        ));
        assert_eq!(t.get(&s.key).map(|s| s.unacked.len()), Some(MAX_PAYLOAD));
        let mut big = full(2, 100);
        big.unacked = (vec![0; MAX_PAYLOAD + 1]).into();
        assert!(matches!(
            t.apply(3, &Record::Full(big)),
            Err(ApplyError::TooLarge { .. })
        ));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn snapshot_rebuilds_the_same_table_and_clear_empties() {
        let mut t = SessionTable::new();
        for port in [5, 3, 9] {
            let mut s = full(port, u32::from(port) * 1000);
            s.unacked = (vec![port as u8; port as usize]).into();
            s.snd_nxt = s.snd_una.wrapping_add(u32::from(port));
            t.apply(u64::from(port), &Record::Full(s)).expect("insert");
        }
        let snap = t.snapshot();
        let ports: Vec<u16> = snap.iter().map(|r| r.key().peer_port).collect();
        assert_eq!(ports, vec![3, 5, 9]);
        assert!(snap.iter().all(|r| matches!(r, Record::Full(_))));
        let mut copy = SessionTable::new();
        for r in &snap {
            copy.apply(t.last_seq(), r).expect("apply");
        }
        for s in t.iter() {
            assert_eq!(copy.get(&s.key), Some(s));
        }
        assert_eq!(copy.last_seq(), 9);
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.last_seq(), 0);
    }

    /// One step of the generated outbound stream.
    #[derive(Debug, Clone)]
    enum Op {
        /// Send `len` new bytes (optionally re-sending the last `back` bytes with them).
        Send { len: usize, back: usize },
        /// Retransmit a range inside what was sent.
        Retransmit { from: usize, len: usize },
        /// The peer acknowledges a fraction (per mille) of the in-flight bytes.
        Ack { permille: u16 },
        /// A stale ACK: an older snd_una arrives.
        StaleAck { back: usize },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..3000, 0usize..50).prop_map(|(len, back)| Op::Send { len, back }),
            (0usize..5000, 1usize..2000).prop_map(|(from, len)| Op::Retransmit { from, len }),
            (0u16..=1000).prop_map(|permille| Op::Ack { permille }),
            (0usize..100).prop_map(|back| Op::StaleAck { back }),
        ]
    }

    /// Byte `i` of the generated stream.
    fn stream_byte(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 7)) as u8
    }

    proptest! {
        #[test]
        fn unacked_is_exactly_the_unacknowledged_stream(
            isn in prop_oneof![any::<u32>(), (u32::MAX - 5000)..=u32::MAX],
            ops in proptest::collection::vec(arb_op(), 1..60),
        ) {
            let s = full(1, isn);
            let mut t = table_with(&s);
            let base = isn.wrapping_add(1); // sequence number of stream byte 0
            let (mut una, mut nxt) = (0usize, 0usize); // stream offsets
            let mut cur = s.clone();
            let stream: Vec<u8> = (0..200_000).map(stream_byte).collect();
            let mut log = vec![Record::Full(s.clone())];
            for (i, op) in ops.iter().enumerate() {
                let (from, to) = match *op {
                    Op::Send { len, back } => {
                        let from = nxt.saturating_sub(back);
                        nxt += len;
                        (from, nxt)
                    }
                    Op::Retransmit { from, len } => {
                        let from = from.min(nxt);
                        (from, (from + len).min(nxt))
                    }
                    Op::Ack { permille } => {
                        una += (nxt - una) * usize::from(permille) / 1000;
                        (nxt, nxt)
                    }
                    Op::StaleAck { .. } => (nxt, nxt),
                };
                cur.snd_nxt = base.wrapping_add(nxt as u32);
                cur.snd_una = match *op {
                    Op::StaleAck { back } => base.wrapping_add(una.saturating_sub(back) as u32),
                    _ => base.wrapping_add(una as u32),
                };
                let y = Record::Sync(sync_of(&cur, base.wrapping_add(from as u32), &stream[from..to]));
                prop_assert_eq!(t.apply(i as u64 + 2, &y), Ok(()));
                log.push(y);
                let got = t.get(&s.key).expect("present");
                prop_assert_eq!(got.snd_una, base.wrapping_add(una as u32));
                prop_assert_eq!(got.snd_nxt, base.wrapping_add(nxt as u32));
                prop_assert_eq!(&got.unacked.iter().copied().collect::<Vec<u8>>()[..], &stream[una..nxt]);
            }
            // Replaying the whole log over the final state (a crash between a
            // snapshot's rename and the log's truncation) gives the final state again.
            let final_state = t.get(&s.key).cloned();
            for (i, r) in log.iter().enumerate() {
                prop_assert_eq!(t.apply(i as u64 + 1, r), Ok(()));
            }
            prop_assert_eq!(t.get(&s.key).cloned(), final_state);
        }
    }
}
