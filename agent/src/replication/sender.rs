//! The master side of replication.
//!
//! One task consumes the interceptor's numbered records: each is sent to the backup
//! (while this node is master and the backup is connected) and then applied to the
//! local [`Replica`] (its table; its disk thread writes the log later). A new connection starts with a hello and a snapshot
//! of the tracker's table; records numbered at or before the snapshot are not sent
//! again. Acknowledgements go back to the interceptor, which releases held packets.
//! While disconnected, records are only stored; the next snapshot covers them.
//!
//! Each connection first runs the authenticated handshake
//! ([`nonstop_shared::auth::ClientHandshake`]); every batch then travels in frames
//! tagged with the connection's session key and counter, and every ack from the
//! backup is checked the same way. All of that, and what a snapshot covers, is the
//! sans-IO [`Leader`]'s; this task only moves bytes, records and acks. When the backup
//! asks for a fresh snapshot (a record did not apply there), it gets one on the same
//! connection; until then it acknowledges nothing and held packets stay held.

use crate::replication::leader::{Leader, LeaderEvent};
use crate::replication::stats::ReplicationStats;
use crate::session::interceptor::{backlog_cost, InterceptorHandle, QueueCommand, Sequenced};
use crate::session::replica::Replica;
use crate::shutdown::Shutdown;
use anyhow::Context;
use nonstop_shared::auth::Key;
use nonstop_shared::Mode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Most records written before a flush.
const BATCH: usize = 512;

/// What the sender needs.
pub struct SenderParts {
    /// Numbered records from the interceptor.
    pub records: mpsc::UnboundedReceiver<Sequenced>,
    /// The interceptor, for snapshots and acknowledgements.
    pub interceptor: InterceptorHandle,
    /// This node's persisted copy.
    pub replica: Arc<Mutex<Replica>>,
    /// The backup's replication address.
    pub peer: SocketAddr,
    /// Our address on the sync link (the connection's source).
    pub local: SocketAddr,
    /// This node's id.
    pub node_id: String,
    /// Mode and epoch of this node.
    pub mode: watch::Receiver<(Mode, u64)>,
    /// Counters.
    pub stats: Arc<ReplicationStats>,
    /// Shutdown.
    pub shutdown: Shutdown,
    /// The pre-shared key.
    pub key: Key,
    /// The `drop_record` fault, armed by the injector.
    pub fault: RecordFault,
    /// How often the backup's acknowledgements reach the packet thread: `None`
    /// forwards each at once (sync mode: held output waits for them); `Some(gap)`
    /// forwards at most one per `gap`, the latest (async mode: nothing waits for
    /// them but the input gate and the counters, and each forward wakes the packet
    /// thread — on a two-core host that wake-up sat in the next packet's way).
    pub ack_gap: Option<Duration>,
}

/// The gap between forwarded acknowledgements in async mode.
pub const ASYNC_ACK_GAP: Duration = Duration::from_millis(1);

/// Forwards the backup's acknowledgements to the packet thread, all of them or the
/// latest once per gap (see [`SenderParts::ack_gap`]).
#[derive(Debug)]
struct AckForward {
    gap: Option<Duration>,
    last: Option<tokio::time::Instant>,
    pending: Option<u64>,
}

impl AckForward {
    /// An acknowledgement up to `seq` arrived at `now`: `Some(seq)` to forward now.
    fn on_ack(&mut self, seq: u64, now: tokio::time::Instant) -> Option<u64> {
        let Some(gap) = self.gap else {
            return Some(seq);
        };
        if self.last.is_none_or(|at| now.duration_since(at) >= gap) {
            self.last = Some(now);
            self.pending = None;
            Some(seq)
        } else {
            self.pending = Some(self.pending.map_or(seq, |p| p.max(seq)));
            None
        }
    }

    /// When the pending acknowledgement is due.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        let gap = self.gap?;
        self.pending?;
        Some(self.last? + gap)
    }

    /// The pending acknowledgement, now due.
    fn take_due(&mut self, now: tokio::time::Instant) -> Option<u64> {
        let seq = self.pending.take()?;
        self.last = Some(now);
        Some(seq)
    }
}

/// The `drop_record` fault: when armed, the next record that carries payload bytes is
/// not sent to the backup (it is still stored here), so the backup finds a gap. Cheap
/// to clone; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct RecordFault(Arc<AtomicBool>);

impl RecordFault {
    /// Arms the fault for the next such record.
    pub fn arm(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Disarms it; true if it was armed.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// How long the backup gets to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection to the backup.
struct Connection {
    stream: TcpStream,
    leader: Leader,
}

impl Connection {
    /// Writes what the leader has queued.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.leader.transmit().is_empty() {
            self.stream.write_all(self.leader.transmit()).await?;
            self.leader.transmitted();
        }
        Ok(())
    }
}

/// Reads from the connection, or waits forever without one.
async fn read_some(conn: &mut Option<Connection>, chunk: &mut [u8]) -> std::io::Result<usize> {
    match conn {
        Some(c) => c.stream.read(chunk).await,
        None => std::future::pending().await,
    }
}

/// Runs until shutdown.
pub async fn run(parts: SenderParts) {
    let SenderParts {
        mut records,
        interceptor,
        replica,
        peer,
        local,
        node_id,
        mut mode,
        stats,
        mut shutdown,
        key,
        fault,
        ack_gap,
    } = parts;
    let mut acks = AckForward {
        gap: ack_gap,
        last: None,
        pending: None,
    };
    let mut conn: Option<Connection> = None;
    let mut chunk = vec![0u8; 4096];
    let mut retry = tokio::time::interval(Duration::from_millis(100));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            first = records.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match records.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // Taken off the interceptor's backlog (its bound: see
                // `session.max_record_backlog_bytes`).
                let cost: u64 = batch.iter().map(|(_, r)| backlog_cost(r)).sum();
                let _ = interceptor.stats.record_backlog.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |b| Some(b.saturating_sub(cost)),
                );
                // To the backup first, to this node's replica (memory; its disk
                // thread writes later) after: nothing here waits for a disk.
                if let Some(c) = conn.as_mut() {
                    if fault.take() {
                        c.leader.drop_next_payload_record();
                    }
                    if let Some(last) = c.leader.send_records(&batch) {
                        if let Err(e) = c.flush().await {
                            tracing::warn!(error = %e, "replication connection lost");
                            disconnect(&mut conn, &stats);
                        } else {
                            stats.sent(last);
                            interceptor.stats.hops.sent(last);
                        }
                    }
                }
                store_batch(&replica, batch, &stats);
            }
            read = read_some(&mut conn, &mut chunk) => {
                let Some(c) = conn.as_mut() else { continue };
                let result = match read {
                    Ok(0) => Err(anyhow::anyhow!("closed by the backup")),
                    Ok(n) => on_bytes(c, &chunk[..n], &interceptor, &stats, &mut acks).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    tracing::warn!(%peer, error = format!("{e:#}"), "replication connection ended");
                    disconnect(&mut conn, &stats);
                }
            }
            _ = sleep_until(acks.deadline()) => {
                if let Some(seq) = acks.take_due(tokio::time::Instant::now()) {
                    interceptor.send(QueueCommand::Acked(seq));
                }
            }
            changed = mode.changed() => {
                if changed.is_err() { return; }
                if mode.borrow().0 != Mode::Master && conn.is_some() {
                    tracing::info!("no longer master: closing replication connection");
                    disconnect(&mut conn, &stats);
                }
            }
            _ = retry.tick(), if conn.is_none() && mode.borrow().0 == Mode::Master => {
                let epoch = mode.borrow().1;
                let link = Link { peer, local, key: &key, node_id: &node_id, epoch };
                match connect(link, &interceptor, &stats, &mut chunk).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => tracing::debug!(%peer, error = format!("{e:#}"), "replication connect failed"),
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Feeds bytes from the backup to the leader and acts on what they carried.
async fn on_bytes(
    conn: &mut Connection,
    bytes: &[u8],
    interceptor: &InterceptorHandle,
    stats: &ReplicationStats,
    acks: &mut AckForward,
) -> anyhow::Result<()> {
    if let Err(e) = conn.leader.handle_bytes(bytes) {
        stats.count_error(&e);
        return Err(e.into());
    }
    while let Some(event) = conn.leader.poll_event() {
        match event {
            LeaderEvent::Established => {}
            LeaderEvent::Acked(seq) => {
                stats.acked(seq);
                interceptor.stats.hops.acked(seq);
                if let Some(seq) = acks.on_ack(seq, tokio::time::Instant::now()) {
                    interceptor.send(QueueCommand::Acked(seq));
                }
            }
            LeaderEvent::SnapshotRequested => {
                let sessions = send_snapshot(conn, interceptor, stats).await?;
                stats.resyncs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sessions, "the backup asked for a fresh snapshot; sent");
            }
        }
    }
    Ok(())
}

/// Sends a snapshot of the tracker's table; returns its number of sessions.
async fn send_snapshot(
    conn: &mut Connection,
    interceptor: &InterceptorHandle,
    stats: &ReplicationStats,
) -> anyhow::Result<usize> {
    let (upto, snapshot) = interceptor
        .snapshot()
        .await
        .ok_or_else(|| anyhow::anyhow!("interceptor gone"))?;
    conn.leader.send_snapshot(upto, &snapshot);
    conn.flush().await?;
    stats.sent(upto);
    stats.snapshots.fetch_add(1, Ordering::Relaxed);
    Ok(snapshot.len())
}

fn disconnect(conn: &mut Option<Connection>, stats: &ReplicationStats) {
    *conn = None;
    stats.connected.store(false, Ordering::Relaxed);
    stats.reset_in_flight();
}

fn store_batch(replica: &Mutex<Replica>, batch: Vec<Sequenced>, stats: &ReplicationStats) {
    let count = batch.len() as u64;
    let mut replica = replica.lock().unwrap_or_else(PoisonError::into_inner);
    let rejected = replica.apply_batch(batch) as u64;
    stats.stored.fetch_add(count - rejected, Ordering::Relaxed);
    stats.store_errors.fetch_add(rejected, Ordering::Relaxed);
    if let Err(e) = replica.maintain() {
        stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = format!("{e:#}"), "local store maintenance");
    }
}

/// Where to connect, with which key, as whom.
struct Link<'a> {
    peer: SocketAddr,
    local: SocketAddr,
    key: &'a Key,
    node_id: &'a str,
    epoch: u64,
}

/// Connects, runs the handshake and sends the first snapshot.
async fn connect(
    link: Link<'_>,
    interceptor: &InterceptorHandle,
    stats: &ReplicationStats,
    chunk: &mut [u8],
) -> anyhow::Result<Connection> {
    let Link {
        peer,
        local,
        key,
        node_id,
        epoch,
    } = link;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local.ip(), 0))?;
    let stream: TcpStream =
        tokio::time::timeout(Duration::from_millis(500), socket.connect(peer)).await??;
    stream.set_nodelay(true)?;
    let nonce = nonstop_shared::auth::random_bytes()
        .map_err(|e| anyhow::anyhow!("no random nonce: {e}"))?;
    let mut conn = Connection {
        stream,
        leader: Leader::new(key, nonce, epoch, node_id),
    };
    let exchange = async {
        conn.flush().await?;
        while !conn.leader.is_established() {
            let n = conn.stream.read(chunk).await?;
            if n == 0 {
                anyhow::bail!("closed by the backup");
            }
            if let Err(e) = conn.leader.handle_bytes(&chunk[..n]) {
                stats.count_error(&e);
                tracing::warn!(%peer, error = %e, "replication peer failed authentication");
                return Err(e.into());
            }
        }
        Ok(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .context("replication handshake timed out")?
        .context("replication handshake")?;
    let sessions = send_snapshot(&mut conn, interceptor, stats).await?;
    stats.connected.store(true, Ordering::Relaxed);
    tracing::info!(%peer, sessions, "replication connected; snapshot sent");
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(gap: Option<Duration>) -> AckForward {
        AckForward {
            gap,
            last: None,
            pending: None,
        }
    }

    #[test]
    fn sync_mode_forwards_every_acknowledgement_at_once() {
        let mut acks = forward(None);
        let t = tokio::time::Instant::now();
        for seq in 1..=5 {
            assert_eq!(acks.on_ack(seq, t), Some(seq));
        }
        assert_eq!(acks.deadline(), None);
    }

    #[test]
    fn async_mode_forwards_the_latest_once_per_gap_and_never_loses_the_last() {
        let gap = Duration::from_millis(1);
        let mut acks = forward(Some(gap));
        let t = tokio::time::Instant::now();
        assert_eq!(acks.on_ack(1, t), Some(1), "the first goes at once");
        assert_eq!(acks.on_ack(2, t + Duration::from_micros(100)), None);
        assert_eq!(acks.on_ack(4, t + Duration::from_micros(200)), None);
        assert_eq!(acks.on_ack(3, t + Duration::from_micros(300)), None);
        assert_eq!(
            acks.deadline(),
            Some(t + gap),
            "the latest is due one gap on"
        );
        assert_eq!(
            acks.take_due(t + gap),
            Some(4),
            "the highest, not the last seen"
        );
        assert_eq!(acks.deadline(), None);
        assert_eq!(acks.take_due(t + gap), None);
        // After a quiet gap, the next goes at once again.
        assert_eq!(acks.on_ack(5, t + gap * 3), Some(5));
        assert_eq!(acks.deadline(), None);
    }
}
