//! This node's persisted copy of the recovery data: a [`SessionTable`] plus its
//! [`Store`] on disk, kept in step record by record.
//!
//! On the master it is fed with the tracker's own records (so a restarted agent can
//! rebuild its table from disk); on the backup with the records replicated from the
//! master (so it can resume the sessions). Sessions that end are deleted from the
//! table at once and from disk at the next compaction, which happens when the table
//! is empty, when the log is large, and periodically.

use crate::session::store::{FsyncPolicy, Store};
use crate::session::table::SessionTable;
use anyhow::Context;
use nonstop_shared::config::{FsyncMode, SessionConfig};
use nonstop_shared::session::{Record, SessionKey, SessionState};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often [`Replica::maintain`] compacts even when the log is small.
pub const COMPACT_EVERY: Duration = Duration::from_secs(10);

/// The table, its store and each session's last record number.
pub struct Replica {
    table: SessionTable,
    store: Store,
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
        Ok(Replica {
            table,
            store,
            record_seqs: HashMap::new(),
            last_compact: Instant::now(),
            dirty: false,
        })
    }

    /// Applies one record to the table and appends it to the log. A record that does
    /// not apply (unknown session, gap) is not stored either.
    pub fn apply(&mut self, seq: u64, record: &Record) -> anyhow::Result<()> {
        self.table
            .apply(seq, record)
            .with_context(|| format!("record {seq} for {} does not apply", record.key()))?;
        match record {
            Record::Delete(key) => {
                self.record_seqs.remove(key);
            }
            other => {
                self.record_seqs.insert(other.key(), seq);
            }
        }
        self.store
            .append(seq, record)
            .with_context(|| format!("cannot store record {seq}"))?;
        self.dirty = true;
        Ok(())
    }

    /// Applies a batch of records and appends those that applied with one write.
    /// Returns how many did not apply (each is logged).
    pub fn apply_batch(&mut self, batch: &[(u64, Record)]) -> anyhow::Result<usize> {
        let mut rejected = Vec::new();
        for (i, (seq, record)) in batch.iter().enumerate() {
            if let Err(e) = self.table.apply(*seq, record) {
                tracing::warn!(seq, session = %record.key(), error = %e, "record does not apply");
                rejected.push(i);
                continue;
            }
            match record {
                Record::Delete(key) => {
                    self.record_seqs.remove(key);
                }
                other => {
                    self.record_seqs.insert(other.key(), *seq);
                }
            }
        }
        if rejected.is_empty() {
            self.store
                .append_batch(batch)
                .context("cannot store records")?;
        } else {
            let kept: Vec<(u64, Record)> = batch
                .iter()
                .enumerate()
                .filter(|(i, _)| !rejected.contains(i))
                .map(|(_, r)| r.clone())
                .collect();
            self.store
                .append_batch(&kept)
                .context("cannot store records")?;
        }
        self.dirty = true;
        Ok(rejected.len())
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
        self.store
            .compact(&self.table)
            .context("cannot write the snapshot")?;
        self.last_compact = Instant::now();
        Ok(())
    }

    /// Flushes per the fsync policy (a no-op when nothing is pending) and compacts
    /// when due: at once when the table is empty or the log large, and every
    /// [`COMPACT_EVERY`]. Call after each batch and periodically.
    pub fn maintain(&mut self) -> anyhow::Result<()> {
        self.store.flush().context("cannot flush the session log")?;
        if self.dirty
            && self
                .store
                .compact_if_idle_or_large(&self.table)
                .context("cannot compact the session store")?
        {
            self.last_compact = Instant::now();
        }
        if self.dirty && self.last_compact.elapsed() >= COMPACT_EVERY {
            self.store
                .compact(&self.table)
                .context("cannot compact the session store")?;
            self.last_compact = Instant::now();
            self.dirty = false;
        }
        Ok(())
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
