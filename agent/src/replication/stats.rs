//! Replication counters and lag, shared between the replication tasks and status.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Live replication figures of one agent.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// A replication connection is up (either side).
    pub connected: AtomicBool,
    /// Master: last sequence number sent.
    pub sent_seq: AtomicU64,
    /// Master: last sequence number acknowledged. Backup: last applied.
    pub acked_seq: AtomicU64,
    /// Snapshots sent (master) or received (backup).
    pub snapshots: AtomicU64,
    /// Backup: records applied.
    pub applied: AtomicU64,
    /// Backup: records that did not apply (unknown session, gap).
    pub apply_errors: AtomicU64,
    /// Backup: fresh snapshots asked for because a record did not apply. Master:
    /// snapshots sent at the backup's request.
    pub resyncs: AtomicU64,
    /// Records written to the local store.
    pub stored: AtomicU64,
    /// Store write failures.
    pub store_errors: AtomicU64,
    /// Replication connections refused: failed handshake or forged frame (either side).
    pub replication_rejected: AtomicU64,
    /// Replication frames rejected as replays (authentic, but not the next counter).
    pub replication_replayed: AtomicU64,
    /// Send times of records not yet acknowledged (master), for lag in time.
    in_flight: Mutex<VecDeque<(u64, Instant)>>,
}

impl ReplicationStats {
    /// Notes that `seq` was sent now.
    pub fn sent(&self, seq: u64) {
        self.sent_seq.store(seq, Ordering::Relaxed);
        if let Ok(mut q) = self.in_flight.lock() {
            if q.len() < 1_000_000 {
                q.push_back((seq, Instant::now()));
            }
        }
    }

    /// Notes an acknowledgement up to `seq`.
    pub fn acked(&self, seq: u64) {
        self.acked_seq.fetch_max(seq, Ordering::Relaxed);
        if let Ok(mut q) = self.in_flight.lock() {
            while q.front().is_some_and(|(s, _)| *s <= seq) {
                q.pop_front();
            }
        }
    }

    /// Counts a stream error that is the other side's fault: a failed handshake or
    /// forged frame (`replication_rejected`) or a replayed frame
    /// (`replication_replayed`). Other errors are not counted here.
    pub fn count_error(&self, error: &crate::replication::stream::StreamError) {
        if error.is_replay() {
            self.replication_replayed.fetch_add(1, Ordering::Relaxed);
        } else if error.is_rejection() {
            self.replication_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets in-flight records (connection lost; a snapshot will follow).
    pub fn reset_in_flight(&self) {
        if let Ok(mut q) = self.in_flight.lock() {
            q.clear();
        }
    }

    /// Records sent but not acknowledged.
    pub fn lag_records(&self) -> u64 {
        self.sent_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked_seq.load(Ordering::Relaxed))
    }

    /// Age of the oldest unacknowledged record, milliseconds.
    pub fn lag_ms(&self) -> u64 {
        self.in_flight
            .lock()
            .ok()
            .and_then(|q| q.front().map(|(_, at)| at.elapsed().as_millis() as u64))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_follows_sends_and_acks() {
        let stats = ReplicationStats::default();
        for seq in 1..=5 {
            stats.sent(seq);
        }
        assert_eq!(stats.lag_records(), 5);
        stats.acked(3);
        assert_eq!(stats.lag_records(), 2);
        stats.acked(2); // acks never go back
        assert_eq!(stats.lag_records(), 2);
        stats.acked(5);
        assert_eq!((stats.lag_records(), stats.lag_ms()), (0, 0));
    }
}
