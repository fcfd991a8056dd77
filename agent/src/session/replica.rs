//! This node's persisted copy of the recovery data: a [`SessionTable`] in memory plus
//! its [`Store`] on disk, kept in step record by record. The table is updated at once;
//! the disk by the [`Persister`]'s own thread, batched and fsynced by policy, so no
//! caller waits for the disk (design §10: "acknowledged" means in the backup's memory).
//!
//! On the master it is fed with the tracker's own records (so a restarted agent can
//! rebuild its table from disk); on the backup with the records replicated from the
//! master (so it can resume the sessions). Sessions that end are deleted from the
//! table at once and from disk at the next compaction, which happens when the table
//! is empty, when the log is large, and periodically.

use crate::session::persist::{PersistStats, Persister};
use crate::session::store::{encode_snapshot, FsyncPolicy, Store, DEFAULT_COMPACT_BYTES};
use crate::session::table::SessionTable;
use anyhow::Context;
use nonstop_shared::config::{FsyncMode, SessionConfig};
use nonstop_shared::session::{Record, SessionKey, SessionState};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often [`Replica::maintain`] compacts even when the log is small.
pub const COMPACT_EVERY: Duration = Duration::from_secs(10);

/// The table, its store (behind the persistence thread) and each session's last
/// record number.
pub struct Replica {
    table: SessionTable,
    persist: Persister,
    record_seqs: HashMap<SessionKey, u64>,
    last_compact: Instant,
    dirty: bool,
}

impl Replica {
    /// Opens (or creates) `data_dir/sessions` and loads what it holds.
    pub fn open(data_dir: &Path, config: &SessionConfig) -> anyhow::Result<Replica> {
        let policy = match config.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Periodic => FsyncPolicy::EveryMs(config.fsync_interval_ms),
            FsyncMode::Never => FsyncPolicy::Never,
        };
        let dir = data_dir.join("sessions");
        let (store, table) = Store::open(&dir, policy)
            .with_context(|| format!("cannot open the session store in {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), sessions = table.len(), "session store loaded");
        let persist = Persister::spawn(store).context("cannot start the persistence thread")?;
        Ok(Replica {
            table,
            persist,
            record_seqs: HashMap::new(),
            last_compact: Instant::now(),
            dirty: false,
        })
    }

    /// Applies one record to the table and queues it for the log. A record that does
    /// not apply (unknown session, gap) is not stored either.
    pub fn apply(&mut self, seq: u64, record: &Record) -> anyhow::Result<()> {
        self.table
            .apply(seq, record)
            .with_context(|| format!("record {seq} for {} does not apply", record.key()))?;
        self.note_seq(seq, record);
        self.persist.append(vec![(seq, record.clone())]);
        self.dirty = true;
        Ok(())
    }

    /// Applies a batch of records and queues those that applied for the log, as one
    /// write. Returns how many did not apply (each is logged).
    pub fn apply_batch(&mut self, batch: Vec<(u64, Record)>) -> usize {
        let mut kept = Vec::with_capacity(batch.len());
        let mut rejected = 0;
        for (seq, record) in batch {
            if let Err(e) = self.table.apply(seq, &record) {
                tracing::warn!(seq, session = %record.key(), error = %e, "record does not apply");
                rejected += 1;
                continue;
            }
            self.note_seq(seq, &record);
            kept.push((seq, record));
        }
        self.persist.append(kept);
        self.dirty = true;
        rejected
    }

    fn note_seq(&mut self, seq: u64, record: &Record) {
        match record {
            Record::Delete(key) => {
                self.record_seqs.remove(key);
            }
            other => {
                self.record_seqs.insert(other.key(), seq);
            }
        }
    }

    /// Replaces everything with a snapshot's full records.
    pub fn reset_to(&mut self, upto: u64, records: &[Record]) -> anyhow::Result<()> {
        self.table.clear();
        self.record_seqs.clear();
        for record in records {
            self.table
                .apply(upto, record)
                .with_context(|| format!("snapshot record for {} does not apply", record.key()))?;
            self.record_seqs.insert(record.key(), upto);
        }
        self.compact()?;
        Ok(())
    }

    /// Compacts when due: at once when the table is empty but the disk is not, or
    /// the log is large, and every [`COMPACT_EVERY`] after changes. The snapshot is
    /// encoded here (memory only); the persistence thread writes it. Call after each
    /// batch and periodically.
    pub fn maintain(&mut self) -> anyhow::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let stats = &self.persist.stats;
        let idle = self.table.is_empty() && stats.disk.load(Ordering::Relaxed) > 0;
        let large = stats.log_len.load(Ordering::Relaxed) >= DEFAULT_COMPACT_BYTES;
        if idle || large || self.last_compact.elapsed() >= COMPACT_EVERY {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> anyhow::Result<()> {
        let snapshot = encode_snapshot(&self.table).context("cannot encode the snapshot")?;
        self.persist.compact(snapshot);
        self.last_compact = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Waits until everything applied so far is on disk (fsynced).
    pub fn sync(&self) {
        self.persist.sync();
    }

    /// The persistence thread's counters.
    pub fn persist_stats(&self) -> Arc<PersistStats> {
        Arc::clone(&self.persist.stats)
    }

    /// The sessions, sorted by 4-tuple, with their last record numbers.
    pub fn sessions(&self) -> Vec<(SessionState, u64)> {
        let mut list: Vec<(SessionState, u64)> = self
            .table
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    self.record_seqs.get(&s.key).copied().unwrap_or(0),
                )
            })
            .collect();
        list.sort_by_key(|(s, _)| s.key);
        list
    }

    /// The sessions as plain states (to seed the tracker after a restart).
    pub fn states(&self) -> Vec<SessionState> {
        self.table.iter().cloned().collect()
    }

    /// Highest record sequence number applied (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.table.last_seq()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
