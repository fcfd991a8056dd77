//! The backup side of replication: accepts the master's connection on the sync link,
//! applies every record to the local [`Replica`] (table + disk) and acknowledges.
//!
//! Only the configured peer address may connect, and only while this node is not
//! master. Every connection must first pass the authenticated handshake
//! ([`nonstop_shared::auth::ServerHandshake`]); only then does it supersede the current
//! one, so an unauthenticated connection can never interrupt replication. Every frame
//! after the handshake is checked (tag and counter) before any byte of it is decoded;
//! a forged or replayed frame is counted and ends the connection, so it can never alter
//! a session. A snapshot replaces the whole table (at most `session.max_sessions`
//! records). Acknowledgements are cumulative and sent after each batch read from the
//! socket, once the records are stored; a record that does not apply is never
//! acknowledged (the backup asks for a fresh snapshot instead). All of that is the
//! sans-IO [`Follower`]'s; this task moves bytes and flushes the replica.

use crate::replication::follower::Follower;
use crate::replication::stats::ReplicationStats;
use crate::replication::stream::StreamError;
use crate::session::replica::Replica;
use crate::shutdown::Shutdown;
use anyhow::{bail, Context};
use nonstop_shared::auth::Key;
use nonstop_shared::Mode;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long a connecting master gets to complete the handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// The pre-shared key.
    pub key: Key,
    /// Largest snapshot accepted (`session.max_sessions`).
    pub max_sessions: usize,
    /// Hot replica: told what was applied, in order (the mirrors follow it).
    pub tap: Option<Tap>,
}

/// What the backup applied, for the hot replica's mirrors (design §9).
#[derive(Debug)]
pub enum Applied {
    /// A snapshot replaced the table with these (`Full`) records.
    Snapshot(Vec<nonstop_shared::session::Record>),
    /// These records were applied, in order.
    Records(Vec<nonstop_shared::session::Record>),
}

/// Where [`Applied`] goes (called on the receiving task, before the acknowledgement).
pub type Tap = Arc<dyn Fn(Applied) + Send + Sync>;

/// The replica, with a copy of what was applied for the [`Tap`].
struct Tapped<'a> {
    replica: &'a mut Replica,
    snapshot: Option<Vec<nonstop_shared::session::Record>>,
    records: Vec<nonstop_shared::session::Record>,
}

impl crate::replication::follower::Target for Tapped<'_> {
    fn apply(&mut self, seq: u64, record: &nonstop_shared::session::Record) -> anyhow::Result<()> {
        self.replica.apply(seq, record)?;
        self.records.push(record.clone());
        Ok(())
    }

    fn reset_to(
        &mut self,
        upto: u64,
        records: &[nonstop_shared::session::Record],
    ) -> anyhow::Result<()> {
        self.replica.reset_to(upto, records)?;
        self.snapshot = Some(records.to_vec());
        self.records.clear();
        Ok(())
    }
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
    let (ready_tx, mut ready_rx) = mpsc::channel::<Authenticated>(4);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            ready = ready_rx.recv() => {
                let Some(ready) = ready else { return };
                if parts.mode.borrow().0 == Mode::Master {
                    tracing::warn!(from = %ready.from, "refusing replication while master");
                    continue;
                }
                // An authenticated connection from the master supersedes the old one.
                if let Some(old) = current.take() {
                    if !old.is_finished() {
                        tracing::info!(from = %ready.from, "new authenticated replication connection supersedes the current one");
                    }
                    old.abort();
                }
                let replica = Arc::clone(&parts.replica);
                let stats = Arc::clone(&parts.stats);
                let mode = parts.mode.clone();
                let tap = parts.tap.clone();
                current = Some(tokio::spawn(async move {
                    let from = ready.from;
                    stats.connected.store(true, Ordering::Relaxed);
                    if let Err(e) = receive(ready, &replica, &stats, mode, tap).await {
                        tracing::warn!(%from, error = format!("{e:#}"), "replication stream ended");
                    }
                    stats.connected.store(false, Ordering::Relaxed);
                }));
                continue;
            }
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
            parts
                .stats
                .replication_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%from, "replication connection from an unexpected address refused");
            continue;
        }
        if parts.mode.borrow().0 == Mode::Master {
            tracing::warn!(%from, "refusing replication while master");
            continue;
        }
        let key = parts.key.clone();
        let stats = Arc::clone(&parts.stats);
        let ready = ready_tx.clone();
        let max_sessions = parts.max_sessions;
        tokio::spawn(async move {
            let follower = handshake(stream, &key, max_sessions, &stats);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, follower).await {
                Ok(Ok((stream, follower))) => {
                    let _ = ready
                        .send(Authenticated {
                            stream,
                            from,
                            follower,
                        })
                        .await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = format!("{e:#}"), "replication handshake failed");
                }
                Err(_) => {
                    stats.replication_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%from, "replication handshake timed out");
                }
            }
        });
    }
}

/// A connection that passed the handshake.
struct Authenticated {
    stream: TcpStream,
    from: SocketAddr,
    follower: Follower,
}

/// The backup's half of the handshake: client hello, server hello, client finish.
/// Bytes the master sent after its finish stay in the follower. A failure is counted
/// here: a failed handshake as rejected, a bad frame read along with the finish as
/// [`ReplicationStats::count_error`] says.
async fn handshake(
    stream: TcpStream,
    key: &Key,
    max_sessions: usize,
    stats: &ReplicationStats,
) -> anyhow::Result<(TcpStream, Follower)> {
    let mut follower = None;
    let result = exchange(stream, key, max_sessions, &mut follower).await;
    if let Err(e) = &result {
        match (e.downcast_ref::<StreamError>(), &follower) {
            (Some(e), Some(f)) if f.is_established() => stats.count_error(e),
            _ => {
                stats.replication_rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let stream = result?;
    let follower = follower.ok_or_else(|| anyhow::anyhow!("handshake state lost"))?;
    Ok((stream, follower))
}

async fn exchange(
    mut stream: TcpStream,
    key: &Key,
    max_sessions: usize,
    slot: &mut Option<Follower>,
) -> anyhow::Result<TcpStream> {
    stream.set_nodelay(true)?;
    let nonce = nonstop_shared::auth::random_bytes()
        .map_err(|e| anyhow::anyhow!("no random nonce: {e}"))?;
    let follower = slot.insert(Follower::new(key, nonce, max_sessions));
    let mut chunk = [0u8; 4096];
    while !follower.is_established() {
        let n = stream.read(&mut chunk).await.context("handshake")?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        follower.handle_bytes(&chunk[..n])?;
        stream
            .write_all(follower.transmit())
            .await
            .context("server hello")?;
        follower.transmitted();
    }
    Ok(stream)
}

async fn receive(
    conn: Authenticated,
    replica: &Mutex<Replica>,
    stats: &ReplicationStats,
    mut mode: watch::Receiver<(Mode, u64)>,
    tap: Option<Tap>,
) -> anyhow::Result<()> {
    let Authenticated {
        mut stream,
        mut follower,
        ..
    } = conn;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Apply what has arrived (the handshake may have read past its end), then
        // acknowledge or ask for a snapshot.
        {
            let mut replica = replica.lock().unwrap_or_else(PoisonError::into_inner);
            let progress = match &tap {
                None => follower.process(&mut *replica)?,
                Some(tap) => {
                    let mut tapped = Tapped {
                        replica: &mut replica,
                        snapshot: None,
                        records: Vec::new(),
                    };
                    let progress = follower.process(&mut tapped)?;
                    if let Some(records) = tapped.snapshot.take() {
                        tap(Applied::Snapshot(records));
                    }
                    if !tapped.records.is_empty() {
                        tap(Applied::Records(tapped.records));
                    }
                    progress
                }
            };
            if progress.stored() {
                replica.maintain()?;
            }
            stats.applied.fetch_add(progress.applied, Ordering::Relaxed);
            stats
                .apply_errors
                .fetch_add(progress.not_applied, Ordering::Relaxed);
            stats
                .snapshots
                .fetch_add(progress.snapshots, Ordering::Relaxed);
            stats.resyncs.fetch_add(progress.resyncs, Ordering::Relaxed);
            if let Some(acked) = progress.acked {
                stats.acked_seq.store(acked, Ordering::Relaxed);
            }
        }
        if !follower.transmit().is_empty() {
            stream.write_all(follower.transmit()).await?;
            follower.transmitted();
        }
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
        if let Err(e) = follower.handle_bytes(&chunk[..n]) {
            // Nothing of this frame was decoded or applied.
            stats.count_error(&e);
            return Err(e.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::Message;
    use nonstop_shared::auth::{ClientHandshake, SERVER_HELLO_LEN};
    use nonstop_shared::session::{Record, SessionKey};
    use std::net::Ipv4Addr;

    fn key() -> Key {
        Key::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    struct Backup {
        addr: SocketAddr,
        replica: Arc<Mutex<Replica>>,
        stats: Arc<ReplicationStats>,
        _mode: watch::Sender<(Mode, u64)>,
        _trigger: crate::shutdown::ShutdownTrigger,
        dir: std::path::PathBuf,
    }

    impl Backup {
        /// Sessions in the backup's replica.
        fn sessions(&self) -> usize {
            self.replica
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        }
    }

    async fn backup(max_sessions: usize, tag: &str) -> Backup {
        let dir = std::env::temp_dir().join(format!("nonstop-recv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let replica = Arc::new(Mutex::new(
            Replica::open(&dir, &Default::default()).expect("replica"),
        ));
        let stats = Arc::new(ReplicationStats::default());
        let (mode_tx, mode) = watch::channel((Mode::Backup, 1));
        let (trigger, shutdown) = crate::shutdown::channel();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let serve = bind(ReceiverParts {
            listen: addr,
            peer_ip: IpAddr::from(Ipv4Addr::LOCALHOST),
            replica: Arc::clone(&replica),
            mode,
            stats: Arc::clone(&stats),
            shutdown,
            key: key(),
            max_sessions,
            tap: None,
        })
        .await
        .expect("bind");
        tokio::spawn(serve);
        Backup {
            addr,
            replica,
            stats,
            _mode: mode_tx,
            _trigger: trigger,
            dir,
        }
    }

    async fn connect(addr: SocketAddr) -> (TcpStream, nonstop_shared::auth::Channel) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let (handshake, hello) = ClientHandshake::start(&key(), [7; 32]);
        stream.write_all(&hello).await.expect("hello");
        let mut reply = [0u8; SERVER_HELLO_LEN];
        stream.read_exact(&mut reply).await.expect("server hello");
        let (finish, channel) = handshake.finish(&reply).expect("proof");
        stream.write_all(&finish).await.expect("finish");
        (stream, channel)
    }

    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        });
        read.await.unwrap_or(false)
    }

    fn delete(port: u16) -> Record {
        Record::Delete(SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 1, 10),
            peer_port: port,
            local_ip: Ipv4Addr::new(198, 18, 1, 100),
            local_port: 7000,
        })
    }

    #[tokio::test]
    async fn oversized_snapshot_is_refused_and_the_table_kept() {
        let b = backup(2, "snap").await;
        let (mut stream, mut channel) = connect(b.addr).await;
        let mut plain = Vec::new();
        Message::Snapshot { upto: 9, count: 3 }.encode(&mut plain);
        let mut sealed = Vec::new();
        channel.seal(&plain, &mut sealed);
        stream.write_all(&sealed).await.expect("send");
        assert!(
            closed(&mut stream).await,
            "connection kept after a too-big snapshot"
        );
        let replica = b.replica.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(replica.len(), 0);
        let _ = std::fs::remove_dir_all(&b.dir);
    }

    #[tokio::test]
    async fn oversized_and_forged_frames_close_the_connection_and_are_counted() {
        let b = backup(10, "frame").await;
        // An announced frame body beyond the limit: refused before reading it.
        let (mut stream, _) = connect(b.addr).await;
        let mut huge = ((nonstop_shared::auth::MAX_FRAME_BODY + 1) as u32)
            .to_be_bytes()
            .to_vec();
        huge.extend_from_slice(&[0; 8]);
        stream.write_all(&huge).await.expect("send");
        assert!(closed(&mut stream).await);
        // A frame sealed for another connection.
        let (_, mut other) = connect(b.addr).await;
        let mut plain = Vec::new();
        Message::Record(1, delete(1)).encode(&mut plain);
        let mut sealed = Vec::new();
        other.seal(&plain, &mut sealed);
        let (mut stream, _) = connect(b.addr).await;
        stream.write_all(&sealed).await.expect("send");
        assert!(closed(&mut stream).await);
        // A handshake with the wrong key never gets a channel.
        let mut stream = TcpStream::connect(b.addr).await.expect("connect");
        let wrong = Key::from_bytes(b"another key that is long enough!!").expect("key");
        let (handshake, hello) = ClientHandshake::start(&wrong, [8; 32]);
        stream.write_all(&hello).await.expect("hello");
        let mut reply = [0u8; SERVER_HELLO_LEN];
        stream.read_exact(&mut reply).await.expect("server hello");
        assert!(
            handshake.finish(&reply).is_err(),
            "backup proved a key we do not hold"
        );
        stream.write_all(&[0u8; 32]).await.expect("finish");
        assert!(closed(&mut stream).await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(b.stats.replication_rejected.load(Ordering::Relaxed), 3);
        assert_eq!(b.sessions(), 0);
        let _ = std::fs::remove_dir_all(&b.dir);
    }

    /// Reads the backup's messages until `want` of them arrived (or 3 s passed).
    async fn replies(
        stream: &mut TcpStream,
        channel: &mut nonstop_shared::auth::Channel,
        want: usize,
    ) -> Vec<Message> {
        let mut raw = Vec::new();
        let mut plain = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while out.len() < want {
            let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
            let Ok(Ok(n)) = read else { break };
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
            while let Some((body, used)) = channel.open(&raw).expect("authentic") {
                plain.extend_from_slice(&raw[body]);
                raw.drain(..used);
            }
            while let Some((m, used)) = Message::decode(&plain).expect("valid") {
                out.push(m);
                plain.drain(..used);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_record_that_does_not_apply_is_not_acknowledged() {
        let b = backup(10, "gap").await;
        let (mut stream, mut channel) = connect(b.addr).await;
        let mut plain = Vec::new();
        Message::Snapshot { upto: 1, count: 0 }.encode(&mut plain);
        // A sync for a session the backup does not know: it cannot apply.
        let s = crate::test_support::records::full(1, 1000);
        let sync = crate::test_support::records::sync_of(&s, 1001, b"data");
        Message::Record(2, Record::Sync(sync)).encode(&mut plain);
        let mut sealed = Vec::new();
        channel.seal(&plain, &mut sealed);
        stream.write_all(&sealed).await.expect("send");
        let got = replies(&mut stream, &mut channel, 2).await;
        assert!(
            !got.contains(&Message::Ack(2)),
            "the backup acknowledged a record it did not apply: {got:?}"
        );
        assert!(got.contains(&Message::Resync), "no resync request: {got:?}");
        // Once the session is known (a fresh snapshot), acknowledging resumes.
        let mut plain = Vec::new();
        Message::Snapshot { upto: 2, count: 1 }.encode(&mut plain);
        Message::Record(2, Record::Full(s)).encode(&mut plain);
        let mut sealed = Vec::new();
        channel.seal(&plain, &mut sealed);
        stream.write_all(&sealed).await.expect("send");
        assert_eq!(
            replies(&mut stream, &mut channel, 1).await,
            vec![Message::Ack(2)]
        );
        assert_eq!(b.stats.resyncs.load(Ordering::Relaxed), 1);
        assert_eq!(b.stats.apply_errors.load(Ordering::Relaxed), 1);
        assert_eq!(b.sessions(), 1);
        let _ = std::fs::remove_dir_all(&b.dir);
    }
}
