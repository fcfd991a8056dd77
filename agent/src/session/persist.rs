//! The disk, off the critical path (design §10): a thread of its own owns the
//! [`Store`] and writes what the [`crate::session::replica::Replica`] hands it, in
//! order, batched (everything queued when it wakes goes out in one write), fsynced by
//! policy (`session.fsync`). Neither the packet thread nor the replication tasks ever
//! wait for the disk: on the master a record goes to the backup first and to disk
//! after, and the backup acknowledges a record once it is in its memory.
//!
//! Bounded: at most [`QUEUE_JOBS`] jobs wait; a caller that finds the queue full waits
//! for room (the disk sets the pace then; counted in [`PersistStats::waits`]).

use crate::session::store::Store;
use nonstop_shared::record::try_encode_record;
use nonstop_shared::session::Record;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Jobs that may wait for the disk.
pub const QUEUE_JOBS: usize = 1024;

/// How often the thread wakes without work (so `periodic` fsyncs happen).
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// After the first job, how long the thread lets more gather before it writes: one
/// wake-up per batch instead of one per record (the machine's cores are shared with
/// the packet path; the disk is not waited for by anyone).
const GATHER: Duration = Duration::from_millis(2);

/// What the thread does.
enum Job {
    /// Append these records to the log.
    Append(Vec<(u64, Record)>),
    /// Replace everything on disk with this encoded snapshot.
    Compact(Vec<u8>),
    /// Fsync now and answer (shutdown, tests).
    Sync(mpsc::Sender<()>),
}

/// Counters of the persistence thread.
#[derive(Debug, Default)]
pub struct PersistStats {
    /// Records written.
    pub stored: AtomicU64,
    /// Records or snapshots that could not be written.
    pub errors: AtomicU64,
    /// Bytes in the log now (for the compaction decision).
    pub log_len: AtomicU64,
    /// Bytes on disk (log + snapshot).
    pub disk: AtomicU64,
    /// Times a caller found the queue full and waited for the disk.
    pub waits: AtomicU64,
}

/// The handle to the persistence thread; dropping it writes what is queued, fsyncs
/// and ends the thread.
pub struct Persister {
    jobs: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its counters.
    pub stats: Arc<PersistStats>,
}

impl Persister {
    /// Starts the thread around `store`.
    pub fn spawn(store: Store) -> std::io::Result<Persister> {
        let (jobs, rx) = mpsc::sync_channel(QUEUE_JOBS);
        let stats = Arc::new(PersistStats::default());
        stats.log_len.store(store.log_len(), Ordering::Relaxed);
        stats.disk.store(store.disk_usage(), Ordering::Relaxed);
        let thread = {
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("persist".into())
                .spawn(move || run(store, rx, &stats))?
        };
        Ok(Persister {
            jobs: Some(jobs),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues records for the log.
    pub fn append(&self, records: Vec<(u64, Record)>) {
        if !records.is_empty() {
            self.send(Job::Append(records));
        }
    }

    /// Queues a snapshot that replaces everything written before it.
    pub fn compact(&self, snapshot: Vec<u8>) {
        self.send(Job::Compact(snapshot));
    }

    /// Waits until everything queued is written and fsynced.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Sync(tx));
        let _ = rx.recv();
    }

    fn send(&self, job: Job) {
        let Some(jobs) = &self.jobs else { return };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
                let _ = jobs.send(job);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.sync();
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("stats", &self.stats)
            .finish()
    }
}

fn run(mut store: Store, jobs: mpsc::Receiver<Job>, stats: &PersistStats) {
    let mut encoded = Vec::new();
    let mut pending = 0u64;
    let mut waiting: Vec<mpsc::Sender<()>> = Vec::new();
    let mut errors_logged = 0u64;
    loop {
        let first = match jobs.recv_timeout(IDLE_WAKE) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                let _ = store.sync();
                return;
            }
        };
        // Everything queued now, and for a moment more, goes out together (a sync
        // request is answered at once).
        if first.as_ref().is_some_and(|j| !matches!(j, Job::Sync(_))) {
            std::thread::sleep(GATHER);
        }
        for job in first
            .into_iter()
            .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
        {
            match job {
                Job::Append(records) => {
                    for (seq, record) in &records {
                        if try_encode_record(*seq, record, &mut encoded).is_err() {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                        } else {
                            pending += 1;
                        }
                    }
                }
                Job::Compact(snapshot) => {
                    // The snapshot covers every record queued before it.
                    encoded.clear();
                    pending = 0;
                    if let Err(e) = store.compact_encoded(&snapshot) {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        log_error(&mut errors_logged, &e);
                    }
                }
                Job::Sync(reply) => waiting.push(reply),
            }
        }
        if !encoded.is_empty() {
            match store.append_encoded(&encoded) {
                Ok(()) => {
                    stats.stored.fetch_add(pending, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.errors.fetch_add(pending, Ordering::Relaxed);
                    log_error(&mut errors_logged, &e);
                }
            }
            encoded.clear();
            pending = 0;
        }
        let flushed = if waiting.is_empty() {
            store.flush()
        } else {
            store.sync()
        };
        if let Err(e) = flushed {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            log_error(&mut errors_logged, &e);
        }
        stats.log_len.store(store.log_len(), Ordering::Relaxed);
        stats.disk.store(store.disk_usage(), Ordering::Relaxed);
        for reply in waiting.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// A full disk fails every write: the first few, then rarely.
fn log_error(logged: &mut u64, error: &dyn std::fmt::Display) {
    *logged += 1;
    if *logged <= 10 || logged.is_power_of_two() {
        tracing::warn!(error = %error, errors = *logged, "local store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::store::FsyncPolicy;
    use crate::test_support::records::key;

    /// A fresh directory under the system's temp dir, removed on drop.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("nonstop-persist-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn full(port: u16) -> Record {
        Record::Full(crate::test_support::records::full(port, 1000))
    }

    #[test]
    fn records_reach_the_disk_in_order_and_survive_a_reopen() {
        let dir = Dir::new("order");
        let (store, table) = Store::open(dir.path(), FsyncPolicy::Always).expect("open");
        assert!(table.is_empty());
        let p = Persister::spawn(store).expect("spawn");
        p.append(vec![(1, full(1)), (2, full(2))]);
        p.append(vec![(3, Record::Delete(key(1)))]);
        p.sync();
        assert_eq!(p.stats.stored.load(Ordering::Relaxed), 3);
        drop(p);
        let (_, table) = Store::open(dir.path(), FsyncPolicy::Always).expect("reopen");
        assert_eq!(table.len(), 1);
        assert_eq!(table.last_seq(), 3);
    }

    #[test]
    fn a_snapshot_replaces_what_came_before_it() {
        let dir = Dir::new("snap");
        let (store, mut table) = Store::open(dir.path(), FsyncPolicy::Never).expect("open");
        let p = Persister::spawn(store).expect("spawn");
        p.append(vec![(1, full(1)), (2, full(2))]);
        table.apply(1, &full(1)).expect("applies");
        table.apply(2, &full(2)).expect("applies");
        p.compact(crate::session::store::encode_snapshot(&table).expect("encodes"));
        p.append(vec![(3, full(3))]);
        p.sync();
        assert!(p.stats.disk.load(Ordering::Relaxed) > 0);
        drop(p);
        let (_, table) = Store::open(dir.path(), FsyncPolicy::Never).expect("reopen");
        assert_eq!(table.len(), 3);
    }
}
