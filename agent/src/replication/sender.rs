//! The master side of replication.
//!
//! One task consumes the interceptor's numbered records: each is applied to the local
//! [`Replica`] (table + disk) and, while this node is master and the backup is
//! connected, sent to the backup. A new connection starts with a hello and a snapshot
//! of the tracker's table; records numbered at or before the snapshot are not sent
//! again. Acknowledgements go back to the interceptor, which releases held packets.
//! While disconnected, records are only stored; the next snapshot covers them.
//!
//! Each connection first runs the authenticated handshake
//! ([`nonstop_shared::auth::ClientHandshake`]); every batch then travels in frames
//! tagged with the connection's session key and counter, and every ack from the
//! backup is checked the same way.

use crate::replication::stats::ReplicationStats;
use crate::replication::wire::Message;
use crate::session::interceptor::{InterceptorHandle, QueueCommand, Sequenced};
use crate::session::replica::Replica;
use crate::shutdown::Shutdown;
use anyhow::Context;
use nonstop_shared::auth::{
    ChannelSender, ClientHandshake, FrameError, Key, CLIENT_HELLO_LEN, SERVER_HELLO_LEN,
};
use nonstop_shared::Mode;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
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
}

/// How long the backup gets to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

struct Connection {
    writer: OwnedWriteHalf,
    channel: ChannelSender,
    snapshot_upto: u64,
    buffer: Vec<u8>,
    sealed: Vec<u8>,
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
    } = parts;
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<Option<u64>>();
    let mut conn: Option<Connection> = None;
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
                store_batch(&replica, &batch, &stats);
                if let Some(c) = conn.as_mut() {
                    if let Err(e) = send_batch(c, &batch, &stats).await {
                        tracing::warn!(error = %e, "replication connection lost");
                        disconnect(&mut conn, &stats);
                    }
                }
            }
            ack = acks.recv() => match ack {
                Some(Some(seq)) => {
                    stats.acked(seq);
                    interceptor.send(QueueCommand::Acked(seq));
                }
                Some(None) => {
                    tracing::warn!(%peer, "replication connection closed by the backup");
                    disconnect(&mut conn, &stats);
                }
                None => return,
            },
            changed = mode.changed() => {
                if changed.is_err() { return; }
                if mode.borrow().0 != Mode::Master && conn.is_some() {
                    tracing::info!("no longer master: closing replication connection");
                    disconnect(&mut conn, &stats);
                }
            }
            _ = retry.tick(), if conn.is_none() && mode.borrow().0 == Mode::Master => {
                let epoch = mode.borrow().1;
                let link = Link { peer, local, key: &key };
                match connect(link, &node_id, epoch, &interceptor, &stats, acks_tx.clone()).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => tracing::debug!(%peer, error = format!("{e:#}"), "replication connect failed"),
                }
            }
        }
    }
}

fn disconnect(conn: &mut Option<Connection>, stats: &ReplicationStats) {
    *conn = None;
    stats.connected.store(false, Ordering::Relaxed);
    stats.reset_in_flight();
}

fn store_batch(replica: &Mutex<Replica>, batch: &[Sequenced], stats: &ReplicationStats) {
    let mut replica = replica.lock().unwrap_or_else(PoisonError::into_inner);
    match replica.apply_batch(batch) {
        Ok(rejected) => {
            stats
                .stored
                .fetch_add((batch.len() - rejected) as u64, Ordering::Relaxed);
            stats
                .store_errors
                .fetch_add(rejected as u64, Ordering::Relaxed);
        }
        Err(e) => {
            let before = stats
                .store_errors
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // A full disk fails every batch: log the first few, then rarely.
            let count = before + batch.len() as u64;
            if before < 10 || (before + 1..=count).any(u64::is_power_of_two) {
                tracing::warn!(error = format!("{e:#}"), errors = count, "local store");
            }
        }
    }
    if let Err(e) = replica.maintain() {
        stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = format!("{e:#}"), "local store maintenance");
    }
}

async fn send_batch(
    conn: &mut Connection,
    batch: &[Sequenced],
    stats: &ReplicationStats,
) -> std::io::Result<()> {
    conn.buffer.clear();
    let mut last = None;
    for (seq, record) in batch {
        if *seq <= conn.snapshot_upto {
            continue;
        }
        Message::Record(*seq, record.clone()).encode(&mut conn.buffer);
        last = Some(*seq);
    }
    if let Some(last) = last {
        conn.sealed.clear();
        conn.channel.seal(&conn.buffer, &mut conn.sealed);
        conn.writer.write_all(&conn.sealed).await?;
        stats.sent(last);
    }
    Ok(())
}

/// Where to connect and with which key.
struct Link<'a> {
    peer: SocketAddr,
    local: SocketAddr,
    key: &'a Key,
}

async fn connect(
    link: Link<'_>,
    node_id: &str,
    epoch: u64,
    interceptor: &InterceptorHandle,
    stats: &Arc<ReplicationStats>,
    acks: mpsc::UnboundedSender<Option<u64>>,
) -> anyhow::Result<Connection> {
    let Link { peer, local, key } = link;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local.ip(), 0))?;
    let mut stream: TcpStream =
        tokio::time::timeout(Duration::from_millis(500), socket.connect(peer)).await??;
    stream.set_nodelay(true)?;
    let nonce = nonstop_shared::auth::random_bytes()
        .map_err(|e| anyhow::anyhow!("no random nonce: {e}"))?;
    let (handshake, hello) = ClientHandshake::start(key, nonce);
    let mut server_hello = [0u8; SERVER_HELLO_LEN];
    let exchange = async {
        stream.write_all(&hello).await?;
        stream.read_exact(&mut server_hello).await?;
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .context("replication handshake timed out")?
        .context("replication handshake")?;
    let (finish, channel) = match handshake.finish(&server_hello) {
        Ok(done) => done,
        Err(e) => {
            stats.replication_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "replication peer failed authentication");
            return Err(e.into());
        }
    };
    stream.write_all(&finish).await?;
    debug_assert_eq!(hello.len(), CLIENT_HELLO_LEN);
    let (mut sender, mut receiver) = channel.split();
    let (mut reader, mut writer) = stream.into_split();
    let (upto, snapshot) = interceptor
        .snapshot()
        .await
        .ok_or_else(|| anyhow::anyhow!("interceptor gone"))?;
    let mut buffer = Vec::new();
    Message::Hello {
        epoch,
        node_id: node_id.to_owned(),
    }
    .encode(&mut buffer);
    Message::Snapshot {
        upto,
        count: snapshot.len() as u32,
    }
    .encode(&mut buffer);
    for record in &snapshot {
        Message::Record(upto, record.clone()).encode(&mut buffer);
    }
    let mut sealed = Vec::with_capacity(buffer.len() + 64);
    sender.seal(&buffer, &mut sealed);
    writer.write_all(&sealed).await?;
    stats.sent(upto);
    stats.snapshots.fetch_add(1, Ordering::Relaxed);
    stats.connected.store(true, Ordering::Relaxed);
    tracing::info!(%peer, sessions = snapshot.len(), upto, "replication connected; snapshot sent");
    let stats_for_acks = Arc::clone(stats);
    tokio::spawn(async move {
        let mut raw = Vec::with_capacity(4096);
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            raw.extend_from_slice(&chunk[..n]);
            let mut opened = 0;
            loop {
                match receiver.open(&raw[opened..]) {
                    Ok(Some((body, used))) => {
                        buf.extend_from_slice(&raw[opened..][body]);
                        opened += used;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let counter = match e {
                            FrameError::Replayed { .. } => &stats_for_acks.replication_replayed,
                            _ => &stats_for_acks.replication_rejected,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "unauthenticated ack frame from the backup");
                        let _ = acks.send(None);
                        return;
                    }
                }
            }
            raw.drain(..opened);
            let mut offset = 0;
            loop {
                match Message::decode(&buf[offset..]) {
                    Ok(Some((Message::Ack(seq), used))) => {
                        offset += used;
                        if acks.send(Some(seq)).is_err() {
                            return;
                        }
                    }
                    Ok(Some((other, _))) => {
                        tracing::warn!(?other, "unexpected message from the backup");
                        let _ = acks.send(None);
                        return;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad message from the backup");
                        let _ = acks.send(None);
                        return;
                    }
                }
            }
            buf.drain(..offset);
        }
        let _ = acks.send(None);
    });
    Ok(Connection {
        writer,
        channel: sender,
        snapshot_upto: upto,
        buffer: Vec::new(),
        sealed: Vec::new(),
    })
}
