//! Trace tests: exact segments in, exact state and records out (style.md, smoltcp).
//!
//! - `crate::test_support::segment`: `seg().from_peer().syn().seq(400).mss(1460).build()` → IPv4 bytes.
//! - `handshake`, `data`, `close`, `limits`: trace tests by topic.
//! - `props`: property tests (unacked bytes vs. a model, replica fidelity, no panics).

mod close;
mod data;
mod handshake;
mod limits;
mod offpath;
mod props;

use super::{Direction, Tracker, TrackerLimits};
use crate::session::table::SessionTable;
use crate::test_support::segment::{seg, PEER, PEER_PORT, PORT, VIP};
use nonstop_shared::session::{Record, SessionKey, SessionState, SessionSync};
use std::net::Ipv4Addr;

/// Wall-clock time used by the traces.
const NOW: u64 = 1_700_000_000_000;

/// The peer's ISN in most traces.
const PEER_ISN: u32 = 400;
/// Our ISN in most traces.
const OUR_ISN: u32 = 1000;

/// The session key of the default peer.
fn key() -> SessionKey {
    SessionKey {
        peer_ip: Ipv4Addr::from(PEER),
        peer_port: PEER_PORT,
        local_ip: Ipv4Addr::from(VIP),
        local_port: PORT,
    }
}

fn tracker() -> Tracker {
    tracker_with(TrackerLimits::default())
}

fn tracker_with(limits: TrackerLimits) -> Tracker {
    Tracker::new(Ipv4Addr::from(VIP), &[PORT, 8443], limits)
}

/// A tracker and its mirror: the backup's own [`SessionTable`] applying every
/// record, so each trace also checks that the records reproduce the state.
struct Harness {
    t: Tracker,
    replica: SessionTable,
    /// Replication sequence number of the last record.
    seq: u64,
    now: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(TrackerLimits::default())
    }

    fn with(limits: TrackerLimits) -> Harness {
        Harness {
            t: tracker_with(limits),
            replica: SessionTable::new(),
            seq: 0,
            now: NOW,
        }
    }

    /// Feeds one packet; returns its records (after applying them to the replica and
    /// checking the replica matches the tracker for that session).
    fn feed(&mut self, packet: Vec<u8>) -> Vec<Record> {
        self.now += 1;
        let outcome = self.t.on_packet(&packet, self.now).expect("a valid packet");
        for record in &outcome.records {
            self.apply(record);
        }
        let key = outcome.key;
        if let (Some(state), Some(copy)) = (self.t.session(&key), self.replica.get(&key)) {
            if !outcome.records.is_empty() {
                assert_eq!(copy, state, "replica diverged");
            }
        }
        outcome.records
    }

    /// Applies a record to the replica, as the backup does; it must be accepted.
    fn apply(&mut self, record: &Record) {
        self.seq += 1;
        if let Err(e) = self.replica.apply(self.seq, record) {
            panic!("the backup's table refused {record:?}: {e}");
        }
    }

    /// Feeds a packet that must yield no record.
    fn quiet(&mut self, packet: Vec<u8>) {
        let records = self.feed(packet);
        assert_eq!(records, vec![], "expected no records");
    }

    /// Feeds a packet that must yield exactly one Sync; returns it.
    fn sync(&mut self, packet: Vec<u8>) -> SessionSync {
        match self.feed(packet).as_slice() {
            [Record::Sync(sync)] => sync.clone(),
            other => panic!("expected one Sync, got {other:?}"),
        }
    }

    fn state(&self) -> &SessionState {
        self.t.session(&key()).expect("session tracked")
    }

    /// Runs the default handshake (peer ISN 400, ours 1000, no options, windows 1024).
    fn establish(&mut self) -> SessionState {
        self.establish_with(PEER_ISN, OUR_ISN)
    }

    /// A plain handshake with the given ISNs; returns the announced state.
    fn establish_with(&mut self, peer_isn: u32, our_isn: u32) -> SessionState {
        self.quiet(seg().syn().seq(peer_isn).win(64240).build());
        self.quiet(
            seg()
                .from_us()
                .syn()
                .seq(our_isn)
                .ack(peer_isn.wrapping_add(1))
                .build(),
        );
        let records = self.feed(
            seg()
                .seq(peer_isn.wrapping_add(1))
                .ack(our_isn.wrapping_add(1))
                .build(),
        );
        match records.as_slice() {
            [Record::Full(state)] => state.clone(),
            other => panic!("expected one Full, got {other:?}"),
        }
    }
}

#[test]
fn direction_is_reported() {
    let mut t = tracker();
    let out = t
        .on_packet(&seg().syn().seq(1).build(), NOW)
        .expect("valid");
    assert_eq!(out.direction, Direction::Inbound);
    assert_eq!(out.key, key());
    let out = t
        .on_packet(&seg().from_us().syn().seq(9).ack(2).build(), NOW)
        .expect("valid");
    assert_eq!(out.direction, Direction::Outbound);
    assert_eq!(out.key, key());
}
