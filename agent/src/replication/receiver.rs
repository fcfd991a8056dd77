//! The backup side of replication: accepts the master's connection on the sync link,
//! applies every record to the local [`Replica`] (table + disk) and acknowledges.
//!
//! Only the configured peer address may connect, and only while this node is not
//! master. A snapshot replaces the whole table. Acknowledgements are cumulative and
//! sent after each batch read from the socket, once the records are stored.

use crate::replication::stats::ReplicationStats;
use crate::replication::wire::Message;
use crate::session::replica::Replica;
use crate::shutdown::Shutdown;
use anyhow::{bail, Context};
use nonstop_shared::session::Record;
use nonstop_shared::Mode;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the receiver needs.
pub struct ReceiverParts {
    /// Where to listen (our sync-link address).
    pub listen: SocketAddr,
    /// The only address allowed to connect.
    pub peer_ip: IpAddr,
    /// This node's persisted copy.
    pub replica: Arc<Mutex<Replica>>,
    /// Mode and epoch of this node.
    pub mode: watch::Receiver<(Mode, u64)>,
    /// Counters.
    pub stats: Arc<ReplicationStats>,
    /// Shutdown.
    pub shutdown: Shutdown,
}

/// Binds the listener now (so a bind error stops the agent) and serves until shutdown.
pub async fn bind(parts: ReceiverParts) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(parts.listen)
        .await
        .with_context(|| format!("replication cannot listen on {}", parts.listen))?;
    tracing::info!(addr = %parts.listen, "replication listener ready");
    Ok(serve(listener, parts))
}

async fn serve(listener: TcpListener, parts: ReceiverParts) {
    let mut shutdown = parts.shutdown.clone();
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, from) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "replication accept failed");
                continue;
            }
        };
        if from.ip() != parts.peer_ip {
            tracing::warn!(%from, "replication connection from an unexpected address refused");
            continue;
        }
        if parts.mode.borrow().0 == Mode::Master {
            tracing::warn!(%from, "refusing replication while master");
            continue;
        }
        // A new connection from the master supersedes the old one.
        if let Some(old) = current.take() {
            old.abort();
        }
        let replica = Arc::clone(&parts.replica);
        let stats = Arc::clone(&parts.stats);
        let mode = parts.mode.clone();
        current = Some(tokio::spawn(async move {
            stats.connected.store(true, Ordering::Relaxed);
            if let Err(e) = receive(stream, &replica, &stats, mode).await {
                tracing::warn!(%from, error = format!("{e:#}"), "replication stream ended");
            }
            stats.connected.store(false, Ordering::Relaxed);
        }));
    }
}

/// Snapshot in progress: records still expected and the ones received.
struct SnapshotInProgress {
    upto: u64,
    remaining: u32,
    records: Vec<Record>,
}

async fn receive(
    mut stream: TcpStream,
    replica: &Mutex<Replica>,
    stats: &ReplicationStats,
    mut mode: watch::Receiver<(Mode, u64)>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut snapshot: Option<SnapshotInProgress> = None;
    let mut applied_upto = 0u64;
    loop {
        let n = tokio::select! {
            n = stream.read(&mut chunk) => n?,
            _ = mode.changed() => {
                if mode.borrow().0 == Mode::Master {
                    bail!("became master");
                }
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut offset = 0;
        let mut progressed = false;
        {
            let mut replica = replica.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some((message, used)) = Message::decode(&buf[offset..])? {
                offset += used;
                match message {
                    Message::Hello { epoch, node_id } => {
                        tracing::info!(%node_id, epoch, "replication from master");
                    }
                    Message::Snapshot { upto, count } => {
                        snapshot = Some(SnapshotInProgress {
                            upto,
                            remaining: count,
                            records: Vec::new(),
                        });
                    }
                    Message::Record(seq, record) => {
                        if let Some(snap) = snapshot.as_mut() {
                            snap.records.push(record);
                            snap.remaining = snap.remaining.saturating_sub(1);
                        } else {
                            match replica.apply(seq, &record) {
                                Ok(()) => {
                                    stats.applied.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    stats.apply_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(error = format!("{e:#}"), "record not applied");
                                }
                            }
                            applied_upto = seq;
                            progressed = true;
                        }
                    }
                    Message::Ack(_) => bail!("the master sent an ack"),
                }
                if snapshot.as_ref().is_some_and(|s| s.remaining == 0) {
                    if let Some(snap) = snapshot.take() {
                        replica.reset_to(snap.upto, &snap.records)?;
                        stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            sessions = snap.records.len(),
                            upto = snap.upto,
                            "snapshot applied"
                        );
                        applied_upto = snap.upto;
                        progressed = true;
                    }
                }
            }
            if progressed {
                replica.maintain()?;
            }
        }
        buf.drain(..offset);
        if progressed {
            stats.acked_seq.store(applied_upto, Ordering::Relaxed);
            let mut ack = Vec::with_capacity(13);
            Message::Ack(applied_upto).encode(&mut ack);
            stream.write_all(&ack).await?;
        }
    }
}
