//! Local persistence of the recovery data: an append-only log of record frames plus a
//! snapshot, in one directory (the agent uses `data_dir/sessions/`).
//!
//! # Files
//! - `log.bin`: every record appended since the last compaction, as frames of
//!   [`nonstop_shared::record`] (each with its own length and CRC).
//! - `snapshot.bin`: a `full` frame for each session live at the last compaction
//!   (all carrying the table's [`SessionTable::last_seq`]); empty when no session was.
//! - `snapshot.tmp`: a compaction in progress; removed at startup if a crash left it.
//!
//! # Startup ([`Store::open`])
//! Load the snapshot, then replay the log into a [`SessionTable`]. Replay stops at the
//! first frame that is incomplete (a torn last write) or damaged; the log is truncated
//! there, and what was discarded is counted in [`Loaded`] and logged. The store never
//! refuses to start because of its own files' content. Records that decode but do not
//! apply (e.g. a sync for a session lost with a damaged snapshot) are counted and
//! skipped.
//!
//! # Compaction ([`Store::compact`])
//! Write the table's sessions to `snapshot.tmp`, fsync, rename over `snapshot.bin`,
//! fsync the directory, then truncate the log. A crash at any point leaves either the
//! old snapshot with the whole log, or the new snapshot with (part of) the log already
//! in it; replaying records over a snapshot that contains them gives the same table
//! (applying records is idempotent), so both recover the same state. Sessions deleted
//! before a compaction are gone from disk after it; a table without sessions compacts
//! to an empty snapshot and an empty log. [`Store::compact_if_idle_or_large`] is the
//! cheap periodic check (table empty, or log above the threshold).
//!
//! # Ordering rule for callers
//! Apply a record to the table *before* (or together with) appending it, and compact
//! only with the table that has applied everything appended: compaction drops the log,
//! so a record appended but not yet in the table would be lost.
//!
//! # Durability ([`FsyncPolicy`])
//! [`Store::append`] writes a frame to the log file (in the page cache: it survives an
//! agent crash at once). [`Store::flush`] makes the writes durable as the policy asks;
//! call it after each batch ([`Store::append_batch`] does). A failed write is rolled
//! back (the log is cut to its last whole frame) so later appends stay readable; a full
//! disk is reported as [`StoreError::DiskFull`].

use crate::session::table::SessionTable;
use nonstop_shared::record::{decode_record, encode_full, try_encode_record, RecordError};
use nonstop_shared::session::Record;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Name of the append log inside the store directory.
pub const LOG_FILE: &str = "log.bin";
/// Name of the snapshot inside the store directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Name of a snapshot being written.
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
/// Default log size that triggers a compaction.
pub const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;

/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// At every [`Store::flush`] (after each batch).
    Always,
    /// At a [`Store::flush`] when at least this many milliseconds passed since the last
    /// fsync (writes between are in the page cache only).
    EveryMs(u64),
    /// Never (not even at compaction): the page cache survives an agent crash, not a
    /// host crash.
    Never,
}

/// A storage failure; every variant names the file.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file system is full (ENOSPC) or the quota is exhausted (EDQUOT).
    #[error("no space left to {op} {}", path.display())]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O error.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A record that cannot be encoded (payload larger than a frame can carry).
    #[error("cannot encode a record for {}", path.display())]
    Encode {
        /// The file it was meant for.
        path: PathBuf,
        /// Why.
        #[source]
        source: RecordError,
    },
    /// An earlier write failed and the log could not be cut back to its last whole
    /// frame; appends are refused until a [`Store::compact`] succeeds.
    #[error("log {} is damaged by an earlier failed write; compaction needed", path.display())]
    Broken {
        /// The log.
        path: PathBuf,
    },
}

impl StoreError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> StoreError {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { op, path, source },
            _ => StoreError::Io { op, path, source },
        }
    }
}

/// Where reading a file stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file.
    pub path: PathBuf,
    /// Offset of the first frame not used.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub discarded_bytes: u64,
    /// Why: [`RecordError::Incomplete`] for a torn last write, anything else for a
    /// damaged frame.
    pub error: RecordError,
}

impl Damage {
    /// A torn last write (the file ends inside a frame), as opposed to a damaged frame.
    pub fn is_torn_tail(&self) -> bool {
        self.error.is_incomplete()
    }
}

/// What [`Store::open`] loaded from disk ("load": from disk; "restore": into a
/// service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Frames loaded from the snapshot.
    pub snapshot_records: usize,
    /// Frames replayed from the log.
    pub log_records: usize,
    /// Frames that decoded but did not apply to the table (skipped).
    pub apply_errors: usize,
    /// The snapshot stopped early (its remainder is lost; the store compacts at once).
    pub snapshot_damage: Option<Damage>,
    /// The log stopped early (it was truncated there).
    pub log_damage: Option<Damage>,
}

/// The session store of one directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    log_path: PathBuf,
    snapshot_path: PathBuf,
    tmp_path: PathBuf,
    log: File,
    log_len: u64,
    snapshot_len: u64,
    policy: FsyncPolicy,
    compact_bytes: u64,
    unsynced: bool,
    last_sync: Instant,
    broken: bool,
    scratch: Vec<u8>,
    loaded: Loaded,
    compactions: u64,
}

impl Store {
    /// Opens (creating it if needed) the store in `dir` and rebuilds the table from
    /// it (see the module doc). Fails only on I/O errors (directory not creatable,
    /// files not readable or writable), never on the files' content.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> Result<(Store, SessionTable), StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
        let log_path = dir.join(LOG_FILE);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let tmp_path = dir.join(SNAPSHOT_TMP_FILE);
        match fs::remove_file(&tmp_path) {
            Ok(()) => tracing::warn!(path = %tmp_path.display(), "removed an unfinished snapshot"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &tmp_path, e)),
        }

        let mut table = SessionTable::new();
        let mut loaded = Loaded::default();

        let snapshot = replay_file(&snapshot_path, &mut table)?;
        let snapshot_len = snapshot.valid_len + snapshot.damage_len();
        loaded.snapshot_records = snapshot.records;
        loaded.apply_errors += snapshot.apply_errors;
        loaded.snapshot_damage = snapshot.damage;
        if let Some(d) = &loaded.snapshot_damage {
            tracing::error!(
                path = %d.path.display(), offset = d.offset, discarded = d.discarded_bytes,
                error = %d.error, "session snapshot damaged: sessions after this point are lost"
            );
        }

        let log = replay_file(&log_path, &mut table)?;
        loaded.log_records = log.records;
        loaded.apply_errors += log.apply_errors;
        loaded.log_damage = log.damage;

        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| StoreError::io("open", &log_path, e))?;
        if let Some(d) = &loaded.log_damage {
            if d.is_torn_tail() {
                tracing::warn!(
                    path = %d.path.display(), offset = d.offset, discarded = d.discarded_bytes,
                    "session log ends in a torn write; truncated"
                );
            } else {
                tracing::error!(
                    path = %d.path.display(), offset = d.offset, discarded = d.discarded_bytes,
                    error = %d.error, "session log damaged; replay stopped and log truncated there"
                );
            }
            log_file
                .set_len(log.valid_len)
                .map_err(|e| StoreError::io("truncate", &log_path, e))?;
            if policy != FsyncPolicy::Never {
                log_file
                    .sync_all()
                    .map_err(|e| StoreError::io("fsync", &log_path, e))?;
            }
        }
        if loaded.apply_errors > 0 {
            tracing::warn!(
                count = loaded.apply_errors,
                "stored records that did not apply were skipped"
            );
        }

        let mut store = Store {
            dir: dir.to_path_buf(),
            log_path,
            snapshot_path,
            tmp_path,
            log: log_file,
            log_len: log.valid_len,
            snapshot_len,
            policy,
            compact_bytes: DEFAULT_COMPACT_BYTES,
            unsynced: false,
            last_sync: Instant::now(),
            broken: false,
            scratch: Vec::new(),
            loaded,
            compactions: 0,
        };
        if store.loaded.snapshot_damage.is_some() {
            // Replace the damaged snapshot with what could be read.
            store.compact(&table)?;
        }
        Ok((store, table))
    }

    /// What [`Store::open`] found.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets the log size (bytes) above which [`Store::compact_if_idle_or_large`]
    /// compacts (default [`DEFAULT_COMPACT_BYTES`]).
    pub fn set_compact_threshold(&mut self, bytes: u64) {
        self.compact_bytes = bytes;
    }

    /// Appends one record to the log (durable after the next [`Store::flush`]).
    pub fn append(&mut self, seq: u64, record: &Record) -> Result<(), StoreError> {
        self.check_usable()?;
        self.scratch.clear();
        try_encode_record(seq, record, &mut self.scratch).map_err(|source| StoreError::Encode {
            path: self.log_path.clone(),
            source,
        })?;
        self.write_scratch()
    }

    /// Appends several records with one write, then [`Store::flush`]es. Either all of
    /// them are in the log or (on error) none.
    pub fn append_batch(&mut self, records: &[(u64, Record)]) -> Result<(), StoreError> {
        self.check_usable()?;
        self.scratch.clear();
        for (seq, record) in records {
            try_encode_record(*seq, record, &mut self.scratch).map_err(|source| {
                StoreError::Encode {
                    path: self.log_path.clone(),
                    source,
                }
            })?;
        }
        self.write_scratch()?;
        self.flush()
    }

    /// Makes appended records durable as the [`FsyncPolicy`] asks: `Always` fsyncs
    /// now, `EveryMs(n)` fsyncs if n ms passed since the last fsync, `Never` does
    /// nothing. Cheap when nothing is pending; call it after every batch and also
    /// periodically, so that the last writes under `EveryMs` get their fsync.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        match self.policy {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::EveryMs(ms) => {
                if self.last_sync.elapsed() >= Duration::from_millis(ms) {
                    self.sync()
                } else {
                    Ok(())
                }
            }
            FsyncPolicy::Never => Ok(()),
        }
    }

    /// Fsyncs the log now, whatever the policy (e.g. before a planned handover).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.log
            .sync_data()
            .map_err(|e| StoreError::io("fsync", &self.log_path, e))?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes `table` as the new snapshot and empties the log (see the module doc).
    pub fn compact(&mut self, table: &SessionTable) -> Result<(), StoreError> {
        let written = self.write_snapshot(table);
        self.finish_compaction(written)
    }

    /// After a snapshot was written (`written`: its length) or failed: a failure
    /// leaves no partial snapshot.tmp behind; a success empties the log.
    fn finish_compaction(&mut self, written: Result<u64, StoreError>) -> Result<(), StoreError> {
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                // Best effort: do not leave a partial snapshot.tmp behind.
                let _ = fs::remove_file(&self.tmp_path);
                return Err(e);
            }
        };
        self.snapshot_len = written;
        if let Err(e) = self.log.set_len(0) {
            // The snapshot already holds everything; replaying the old log over it is
            // harmless, but appending after an unknown length is not.
            self.broken = true;
            return Err(StoreError::io("truncate", &self.log_path, e));
        }
        self.log_len = 0;
        self.broken = false;
        if self.policy != FsyncPolicy::Never {
            self.log
                .sync_all()
                .map_err(|e| StoreError::io("fsync", &self.log_path, e))?;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.compactions += 1;
        Ok(())
    }

    /// The periodic check (call it every second or so, and after each batch): fsyncs
    /// if due, then compacts if the table has no sessions but the disk still holds
    /// some, or if the log reached the threshold, or if the log is damaged by a failed
    /// write. Returns whether it compacted.
    pub fn compact_if_idle_or_large(&mut self, table: &SessionTable) -> Result<bool, StoreError> {
        if !self.broken {
            self.flush()?;
        }
        let idle = table.is_empty() && (self.log_len > 0 || self.snapshot_len > 0);
        let large = self.log_len >= self.compact_bytes;
        if idle || large || self.broken {
            self.compact(table)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Bytes the store holds on disk (log + snapshot).
    pub fn disk_usage(&self) -> u64 {
        self.log_len + self.snapshot_len
    }

    /// Bytes in the log.
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    /// Bytes in the snapshot.
    pub fn snapshot_len(&self) -> u64 {
        self.snapshot_len
    }

    /// Compactions done since [`Store::open`].
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Appended bytes not yet fsynced.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.broken {
            Err(StoreError::Broken {
                path: self.log_path.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Writes the encoded frames in `scratch` to the log; on failure cuts the log back
    /// to its last whole frame so later frames stay readable.
    fn write_scratch(&mut self) -> Result<(), StoreError> {
        if let Err(e) = self.log.write_all(&self.scratch) {
            if self.log.set_len(self.log_len).is_err() {
                self.broken = true;
            }
            return Err(StoreError::io("append to", &self.log_path, e));
        }
        self.log_len += self.scratch.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Installs a snapshot encoded elsewhere ([`encode_snapshot`]: the table's owner
    /// encodes it in memory, this store's thread writes it) and empties the log, as
    /// [`Store::compact`] does. Records appended before cover nothing it lacks.
    pub fn compact_encoded(&mut self, snapshot: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path.clone();
        let written = (|| {
            let mut file = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
            file.write_all(snapshot)
                .map_err(|e| StoreError::io("write", &tmp, e))?;
            self.install_snapshot(file)?;
            Ok(snapshot.len() as u64)
        })();
        self.finish_compaction(written)
    }

    /// Appends records encoded elsewhere (whole records, in order) with one write.
    pub fn append_encoded(&mut self, encoded: &[u8]) -> Result<(), StoreError> {
        self.check_usable()?;
        self.scratch.clear();
        self.scratch.extend_from_slice(encoded);
        self.write_scratch()
    }

    /// Syncs (by policy) and renames a written snapshot file into place.
    fn install_snapshot(&mut self, file: File) -> Result<(), StoreError> {
        if self.policy != FsyncPolicy::Never {
            file.sync_all()
                .map_err(|e| StoreError::io("fsync", &self.tmp_path, e))?;
        }
        drop(file);
        fs::rename(&self.tmp_path, &self.snapshot_path)
            .map_err(|e| StoreError::io("rename", &self.snapshot_path, e))?;
        if self.policy != FsyncPolicy::Never {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("fsync", &self.dir, e))?;
        }
        Ok(())
    }

    /// Writes and installs the snapshot; returns its size.
    fn write_snapshot(&mut self, table: &SessionTable) -> Result<u64, StoreError> {
        const CHUNK: usize = 1 << 20;
        let tmp = self.tmp_path.clone();
        let mut file = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        let seq = table.last_seq();
        let mut written = 0u64;
        self.scratch.clear();
        for state in table.sorted() {
            encode_full(seq, state, &mut self.scratch).map_err(|source| StoreError::Encode {
                path: tmp.clone(),
                source,
            })?;
            if self.scratch.len() >= CHUNK {
                file.write_all(&self.scratch)
                    .map_err(|e| StoreError::io("write", &tmp, e))?;
                written += self.scratch.len() as u64;
                self.scratch.clear();
            }
        }
        file.write_all(&self.scratch)
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        written += self.scratch.len() as u64;
        self.scratch.clear();
        if self.scratch.capacity() > CHUNK * 2 {
            self.scratch = Vec::new();
        }
        if self.policy != FsyncPolicy::Never {
            file.sync_all()
                .map_err(|e| StoreError::io("fsync", &tmp, e))?;
        }
        drop(file);
        fs::rename(&tmp, &self.snapshot_path)
            .map_err(|e| StoreError::io("rename", &self.snapshot_path, e))?;
        if self.policy != FsyncPolicy::Never {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("fsync", &self.dir, e))?;
        }
        Ok(written)
    }
}

/// The snapshot of `table` as [`Store::compact`] would write it (full records current
/// at its last sequence number), in memory.
pub fn encode_snapshot(table: &SessionTable) -> Result<Vec<u8>, RecordError> {
    let seq = table.last_seq();
    let mut out = Vec::new();
    for state in table.sorted() {
        encode_full(seq, state, &mut out)?;
    }
    Ok(out)
}

/// The result of replaying one file.
struct Replayed {
    records: usize,
    apply_errors: usize,
    /// Length of the prefix of whole, valid frames.
    valid_len: u64,
    damage: Option<Damage>,
}

impl Replayed {
    fn damage_len(&self) -> u64 {
        self.damage.as_ref().map_or(0, |d| d.discarded_bytes)
    }
}

/// Applies every frame of `path` (missing file = empty) to `table`, stopping at the
/// first incomplete or damaged frame.
fn replay_file(path: &Path, table: &mut SessionTable) -> Result<Replayed, StoreError> {
    const CHUNK: usize = 256 << 10;
    let mut out = Replayed {
        records: 0,
        apply_errors: 0,
        valid_len: 0,
        damage: None,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?
        .len();
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0usize; // offset in buf of the next frame (file offset valid_len)
    let mut eof = false;
    loop {
        match decode_record(&buf[start..]) {
            Ok((seq, record, used)) => {
                if table.apply(seq, &record).is_err() {
                    out.apply_errors += 1;
                }
                out.records += 1;
                start += used;
                out.valid_len += used as u64;
            }
            Err(RecordError::Incomplete { need }) if !eof => {
                buf.drain(..start);
                start = 0;
                let want = need.saturating_sub(buf.len()).max(CHUNK) as u64;
                let got = Read::by_ref(&mut file)
                    .take(want)
                    .read_to_end(&mut buf)
                    .map_err(|e| StoreError::io("read", path, e))?;
                if (got as u64) < want {
                    eof = true;
                }
            }
            Err(error) => {
                if error.is_incomplete() && start == buf.len() {
                    break; // clean end of file
                }
                out.damage = Some(Damage {
                    path: path.to_path_buf(),
                    offset: out.valid_len,
                    discarded_bytes: file_len.saturating_sub(out.valid_len),
                    error,
                });
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_shared::record::encode_record;
    use nonstop_shared::session::{Negotiated, Phase, SessionKey, SessionState};
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("nonstop-store-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        fn sessions(&self) -> PathBuf {
            self.0.join("sessions")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn key(port: u16) -> SessionKey {
        SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 1, 10),
            peer_port: port,
            local_ip: Ipv4Addr::new(198, 18, 1, 100),
            local_port: 7,
        }
    }

    fn full(port: u16, unacked: &[u8]) -> SessionState {
        let isn = u32::MAX - 2;
        SessionState {
            key: key(port),
            phase: Phase::Established,
            peer_isn: 500,
            our_isn: isn,
            rcv_nxt: 501,
            peer_seq_max: 501,
            snd_nxt: isn.wrapping_add(1 + unacked.len() as u32),
            snd_una: isn.wrapping_add(1),
            peer_window: 1000,
            our_window: 2000,
            negotiated: Negotiated {
                peer_mss: 1460,
                our_mss: 1460,
                peer_wscale: Some(7),
                our_wscale: None,
                sack_permitted: true,
                timestamps: false,
            },
            peer_tsval: 0,
            our_tsval: 0,
            our_fin: None,
            peer_fin: None,
            unacked: unacked.to_vec().into(),
            unread_input: Vec::new(),
            at_risk: false,
            bytes_in: 0,
            bytes_out: unacked.len() as u64,
            last_activity_ms: 1,
        }
    }

    /// A sync for `s` that sends `data` and acknowledges `ack` bytes.
    fn step(s: &mut SessionState, data: &[u8], ack: u32) -> Record {
        let data_seq = s.snd_nxt;
        s.snd_nxt = s.snd_nxt.wrapping_add(data.len() as u32);
        s.snd_una = s.snd_una.wrapping_add(ack);
        s.bytes_out += data.len() as u64;
        s.rcv_nxt = s.rcv_nxt.wrapping_add(1);
        Record::Sync(crate::test_support::records::sync_of(s, data_seq, data))
    }

    /// A workload over three sessions: fulls, data, acks, one delete.
    fn workload() -> Vec<(u64, Record)> {
        let mut a = full(1, b"");
        let mut b = full(2, b"bb");
        let mut c = full(3, b"");
        let mut out = vec![
            Record::Full(a.clone()),
            Record::Full(b.clone()),
            Record::Full(c.clone()),
        ];
        out.push(step(&mut a, b"hello ", 0));
        out.push(step(&mut b, b"world", 2));
        out.push(step(&mut a, b"again", 3));
        out.push(step(&mut c, &[7; 3000], 0));
        out.push(Record::Delete(b.key));
        out.push(step(&mut a, b"", 4));
        out.push(step(&mut c, &[8; 100], 1000));
        out.into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r))
            .collect()
    }

    fn table_of(records: &[(u64, Record)]) -> SessionTable {
        let mut t = SessionTable::new();
        for (seq, r) in records {
            t.apply(*seq, r).expect("workload applies");
        }
        t
    }

    fn assert_same(a: &SessionTable, b: &SessionTable) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.last_seq(), b.last_seq());
        for s in a.iter() {
            assert_eq!(b.get(&s.key), Some(s), "session {}", s.key);
        }
    }

    /// Applies and appends each record, like the agent does.
    fn feed(store: &mut Store, table: &mut SessionTable, records: &[(u64, Record)]) {
        for (seq, r) in records {
            table.apply(*seq, r).expect("applies");
            store.append(*seq, r).expect("appends");
        }
        store.flush().expect("flush");
    }

    fn frame_offsets(records: &[(u64, Record)]) -> Vec<u64> {
        let mut offsets = vec![0u64];
        let mut buf = Vec::new();
        for (seq, r) in records {
            encode_record(*seq, r, &mut buf);
            offsets.push(buf.len() as u64);
        }
        offsets
    }

    #[test]
    fn reopen_restores_the_exact_table() {
        let tmp = TempDir::new("reopen");
        let records = workload();
        let expected = table_of(&records);
        {
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("open");
            assert!(table.is_empty());
            feed(&mut store, &mut table, &records);
            assert_same(&table, &expected);
            assert!(!store.has_unsynced());
        }
        let (store, table) = Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("reopen");
        assert_same(&table, &expected);
        assert_eq!(store.loaded().log_records, records.len());
        assert_eq!(store.loaded().log_damage, None);
        assert_eq!(store.loaded().apply_errors, 0);
        assert_eq!(
            store.log_len(),
            *frame_offsets(&records).last().expect("offsets")
        );
    }

    #[test]
    fn batch_append_is_one_write_and_flushes() {
        let tmp = TempDir::new("batch");
        let records = workload();
        {
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("open");
            for (seq, r) in &records {
                table.apply(*seq, r).expect("applies");
            }
            store.append_batch(&records).expect("batch");
            assert!(!store.has_unsynced());
        }
        let (_, table) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("reopen");
        assert_same(&table, &table_of(&records));
    }

    #[test]
    fn torn_tail_at_every_offset_recovers_everything_before_it() {
        let tmp = TempDir::new("torn");
        let records = workload();
        let offsets = frame_offsets(&records);
        let n = records.len();
        let before_last = table_of(&records[..n - 1]);
        {
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
            feed(&mut store, &mut table, &records);
        }
        let log = tmp.sessions().join(LOG_FILE);
        let whole = fs::read(&log).expect("read log");
        let (last_start, end) = (offsets[n - 1], offsets[n]);
        assert_eq!(whole.len() as u64, end);
        for cut in last_start..end {
            fs::write(&log, &whole[..cut as usize]).expect("write cut log");
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open torn");
            assert_same(&table, &before_last);
            let rec = store.loaded().clone();
            assert_eq!(rec.log_records, n - 1);
            if cut == last_start {
                assert_eq!(rec.log_damage, None, "a cut at a frame boundary is clean");
            } else {
                let d = rec.log_damage.expect("torn tail reported");
                assert!(d.is_torn_tail());
                assert_eq!(d.offset, last_start);
                assert_eq!(d.discarded_bytes, cut - last_start);
            }
            assert_eq!(fs::metadata(&log).expect("stat").len(), last_start);
            // Appending after loading gives a readable log again.
            let (seq, last) = &records[n - 1];
            table.apply(*seq, last).expect("applies");
            store.append(*seq, last).expect("append");
            drop(store);
            let (_, again) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("reopen");
            assert_same(&again, &table_of(&records));
        }
    }

    #[test]
    fn corrupt_middle_byte_stops_replay_at_that_frame() {
        let tmp = TempDir::new("corrupt");
        let records = workload();
        let offsets = frame_offsets(&records);
        {
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
            feed(&mut store, &mut table, &records);
        }
        let log = tmp.sessions().join(LOG_FILE);
        let mut bytes = fs::read(&log).expect("read");
        let k = 4; // the fifth frame
        let mid = (offsets[k] + offsets[k + 1]) / 2;
        bytes[mid as usize] ^= 0x40;
        fs::write(&log, &bytes).expect("write");
        let (store, table) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
        assert_same(&table, &table_of(&records[..k]));
        let d = store.loaded().log_damage.clone().expect("damage reported");
        assert!(!d.is_torn_tail());
        assert!(matches!(d.error, RecordError::BadCrc { .. }));
        assert_eq!(d.offset, offsets[k]);
        assert_eq!(d.discarded_bytes, offsets[records.len()] - offsets[k]);
        assert_eq!(d.path, log);
        assert_eq!(store.loaded().log_records, k);
        assert_eq!(fs::metadata(&log).expect("stat").len(), offsets[k]);
    }

    #[test]
    fn compaction_shrinks_the_log_and_preserves_the_table() {
        let tmp = TempDir::new("compact");
        let records = workload();
        let (mut store, mut table) =
            Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("open");
        feed(&mut store, &mut table, &records);
        let before = store.log_len();
        assert!(before > 0);
        store.compact(&table).expect("compact");
        assert_eq!(store.log_len(), 0);
        assert_eq!(
            fs::metadata(tmp.sessions().join(LOG_FILE))
                .expect("stat")
                .len(),
            0
        );
        assert!(store.snapshot_len() > 0);
        assert!(store.disk_usage() < before);
        assert_eq!(store.compactions(), 1);
        // More records after the compaction go to the new log.
        let mut a = table.get(&key(1)).cloned().expect("a");
        let more = step(&mut a, b"tail", 0);
        table.apply(100, &more).expect("applies");
        store.append(100, &more).expect("append");
        drop(store);
        let (store, reopened) = Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("reopen");
        assert_same(&reopened, &table);
        assert_eq!(store.loaded().snapshot_records, 2);
        assert_eq!(store.loaded().log_records, 1);
        assert!(!tmp.sessions().join(SNAPSHOT_TMP_FILE).exists());
    }

    #[test]
    fn crash_between_snapshot_and_log_truncation_recovers_the_same_table() {
        let tmp = TempDir::new("crashwindow");
        let records = workload();
        let expected = table_of(&records);
        let log = tmp.sessions().join(LOG_FILE);
        {
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("open");
            feed(&mut store, &mut table, &records[..4]);
            store.compact(&table).expect("first compaction");
            feed(&mut store, &mut table, &records[4..]);
            let old_log = fs::read(&log).expect("read log");
            store.compact(&table).expect("second compaction");
            // As if the agent died after the rename, before the truncation.
            fs::write(&log, old_log).expect("restore old log");
        }
        let (_, table) = Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("reopen");
        assert_same(&table, &expected);
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        fs::read_dir(dir).expect("list").any(|entry| {
            let bytes = fs::read(entry.expect("entry").path()).expect("read");
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    #[test]
    fn deleted_sessions_vanish_from_disk_after_compaction() {
        let tmp = TempDir::new("vanish");
        let dir = tmp.sessions();
        let (mut store, mut table) = Store::open(&dir, FsyncPolicy::Always).expect("open");
        let a = full(1, b"SECRET-A-BYTES");
        let b = full(2, b"SECRET-B-BYTES");
        feed(
            &mut store,
            &mut table,
            &[(1, Record::Full(a.clone())), (2, Record::Full(b.clone()))],
        );
        assert!(!store.compact_if_idle_or_large(&table).expect("check"));
        feed(&mut store, &mut table, &[(3, Record::Delete(a.key))]);
        assert!(files_contain(&dir, b"SECRET-A"), "still in the log");
        store.compact(&table).expect("compact");
        assert!(!files_contain(&dir, b"SECRET-A"));
        assert!(files_contain(&dir, b"SECRET-B"));

        // The last session ends: the table is empty, the check compacts at once.
        feed(&mut store, &mut table, &[(4, Record::Delete(b.key))]);
        assert!(store.compact_if_idle_or_large(&table).expect("check"));
        assert!(!files_contain(&dir, b"SECRET-B"));
        assert_eq!(store.disk_usage(), 0);
        assert_eq!(fs::metadata(dir.join(LOG_FILE)).expect("stat").len(), 0);
        assert_eq!(
            fs::metadata(dir.join(SNAPSHOT_FILE)).expect("stat").len(),
            0
        );
        // Nothing more to do while idle.
        assert!(!store.compact_if_idle_or_large(&table).expect("check"));
        drop(store);
        let (_, reopened) = Store::open(&dir, FsyncPolicy::Always).expect("reopen");
        assert!(reopened.is_empty());
    }

    #[test]
    fn large_log_triggers_compaction() {
        let tmp = TempDir::new("large");
        let records = workload();
        let (mut store, mut table) =
            Store::open(&tmp.sessions(), FsyncPolicy::EveryMs(60_000)).expect("open");
        store.set_compact_threshold(2048);
        feed(&mut store, &mut table, &records[..3]);
        assert!(store.has_unsynced(), "EveryMs holds the fsync");
        assert!(!store.compact_if_idle_or_large(&table).expect("check"));
        feed(&mut store, &mut table, &records[3..]);
        assert!(store.log_len() >= 2048);
        assert!(store.compact_if_idle_or_large(&table).expect("check"));
        assert_eq!(store.log_len(), 0);
        assert!(!store.has_unsynced());
        store.sync().expect("sync");
    }

    #[test]
    fn damaged_snapshot_loads_what_it_can_and_is_rewritten() {
        let tmp = TempDir::new("snapdamage");
        let records = workload();
        let expected = table_of(&records);
        {
            let (mut store, mut table) =
                Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
            feed(&mut store, &mut table, &records);
            store.compact(&table).expect("compact");
        }
        let snap = tmp.sessions().join(SNAPSHOT_FILE);
        let mut bytes = fs::read(&snap).expect("read");
        let last = bytes.len() - 5;
        bytes[last] ^= 1; // inside the second (last) session
        fs::write(&snap, &bytes).expect("write");
        let (store, table) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
        let d = store.loaded().snapshot_damage.clone().expect("reported");
        assert_eq!(d.path, snap);
        assert_eq!(store.loaded().snapshot_records, 1);
        assert_eq!(table.len(), expected.len() - 1);
        assert_eq!(store.compactions(), 1, "rewritten at once");
        drop(store);
        let (store, again) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("reopen");
        assert_eq!(store.loaded().snapshot_damage, None);
        assert_eq!(again.len(), table.len());
    }

    #[test]
    fn stale_tmp_snapshot_is_removed() {
        let tmp = TempDir::new("staletmp");
        fs::create_dir_all(tmp.sessions()).expect("mkdir");
        let tmp_file = tmp.sessions().join(SNAPSHOT_TMP_FILE);
        fs::write(&tmp_file, b"half a snapshot").expect("write");
        let (_, table) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
        assert!(table.is_empty());
        assert!(!tmp_file.exists());
    }

    #[test]
    fn full_disk_is_a_clear_error() {
        let tmp = TempDir::new("full");
        let (mut store, mut table) =
            Store::open(&tmp.sessions(), FsyncPolicy::Always).expect("open");
        feed(&mut store, &mut table, &workload()[..1]);
        // /dev/full fails every write with ENOSPC.
        let Ok(dev_full) = OpenOptions::new().append(true).open("/dev/full") else {
            return; // not available here
        };
        store.log = dev_full;
        let record = Record::Full(full(9, b"x"));
        let err = store.append(9, &record).expect_err("disk full");
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        assert!(err.to_string().contains(LOG_FILE), "{err}");
        let batch = store.append_batch(&[(10, record)]);
        assert!(batch.is_err());
    }

    #[test]
    fn unusable_directory_is_an_error_naming_it() {
        let tmp = TempDir::new("notadir");
        let file = tmp.0.join("plainfile");
        fs::write(&file, b"x").expect("write");
        let err = Store::open(&file.join("sessions"), FsyncPolicy::Never).expect_err("fails");
        assert!(err.to_string().contains("plainfile"), "{err}");
    }

    #[test]
    fn records_that_do_not_apply_are_counted_and_skipped() {
        let tmp = TempDir::new("noapply");
        let records = workload();
        {
            let (mut store, _) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
            // Only the syncs of session 1 (its full record is missing).
            for (seq, r) in records.iter().filter(|(_, r)| matches!(r, Record::Sync(_))) {
                store.append(*seq, r).expect("append");
            }
        }
        let (store, table) = Store::open(&tmp.sessions(), FsyncPolicy::Never).expect("open");
        assert!(table.is_empty());
        assert_eq!(store.loaded().apply_errors, store.loaded().log_records);
        assert_eq!(store.loaded().log_damage, None);
    }
}
