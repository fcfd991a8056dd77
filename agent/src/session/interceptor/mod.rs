//! The NFQUEUE thread: every packet of the service passes through here.
//!
//! The `nfq` queue is blocking and must be verdicted by the thread that owns it
//! (crates.md), so it runs on its own `std::thread` with the sans-IO [`Tracker`].
//! Each packet is fed to the tracker; the records it yields get consecutive sequence
//! numbers and go to the replication task. Inbound packets are accepted at once.
//! Outbound packets, in `sync` mode, are **held** until the backup has acknowledged
//! the record sequence number current when they were seen (design §3: nothing leaves
//! the master that the backup has not acknowledged). Holding is pipelined: any number
//! of packets wait, and one acknowledgement releases every packet it covers, in order.
//!
//! Waking: acknowledgements and commands arrive on a channel; an `eventfd` wakes the
//! thread, which `poll`s the queue's netlink socket and the eventfd together. `nfq`
//! 0.2.5 does not expose its socket, so we find it right after `Queue::open` as the
//! one new `AF_NETLINK`/`NETLINK_NETFILTER` descriptor of this process.
//!
//! The queue hands over GSO super-packets whole (`NFQA_CFG_F_GSO`: one message per up
//! to 64 KiB instead of one per MSS). Packets are taken in batches ([`queue`]), all
//! of a batch go through the core, and the verdicts it decided leave in one `sendmsg`
//! (before any packet is injected, so the order decided is the order on the wire).
//!
//! # Layout
//! - `mod.rs`: the thread (queue, eventfd, poll loop) and the packet path: track,
//!   hold, translate, verdict.
//! - `holding`: record numbering and the packets held for the backup's ack (sans-IO).
//! - `restores`: pacing of forged handshakes: parked, queued, in flight (sans-IO).
//! - `barrier`: peers' input held until a restored batch is accepted (sans-IO).
//! - `close_quarantine`: the service's closes held in case it is dying (sans-IO).
//! - `restore`: the restore work of the worker (handshakes, tails, probation, freeze).
//! - `raw`: the raw socket. Header fields come from [`crate::tcp`] (`peek`).
//! - [`queue`]: our nfnetlink-queue layer: batched receives and verdicts.

mod barrier;
mod close_quarantine;
#[cfg(test)]
mod fail_closed_tests;
mod holding;
pub mod machine;
mod mirroring;
pub mod queue;
mod raw;
mod restore;
mod restores;
#[cfg(test)]
mod tests;

use self::machine::CoreConfig;
pub use self::machine::{Decision, Interceptor, Output, Packet};
use self::queue::{QueueSocket, QueuedPacket};
use self::raw::RawSender;
pub use self::restores::{HANDSHAKE_RETRY, HANDSHAKE_TRIES, MAX_HANDSHAKES};
use crate::events::unix_ms;
use crate::nfqueue::{open_queue, poll_two, set_socket_int, EventFd};
use crate::session::queue_rules;
use crate::session::tracker::TrackerLimits;
use anyhow::{bail, Context};
use nonstop_shared::session::{Record, SessionState};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Half-open sessions idle this long are forgotten (SYN floods, lost handshakes).
pub const HANDSHAKE_IDLE_MS: u64 = 30_000;
/// Established sessions without a packet for this long are forgotten (a peer that
/// vanished without FIN or RST). Long, because an idle session without keepalives
/// is legitimate.
pub const ESTABLISHED_IDLE_MS: u64 = 24 * 3600 * 1000;

/// Most packets held at once; beyond it new outbound packets are dropped (TCP will
/// retransmit them), so memory stays bounded while the backup is away.
pub const MAX_HELD: usize = 65_536;

/// Settings of the interceptor.
#[derive(Debug, Clone)]
pub struct InterceptorConfig {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Service ports.
    pub ports: Vec<u16>,
    /// NFQUEUE number.
    pub queue: u16,
    /// Tracker limits.
    pub limits: TrackerLimits,
    /// Most bytes of outbound packets held (`session.max_held_bytes`).
    pub max_held_bytes: u64,
    /// Most record bytes waiting for replication (`session.max_record_backlog_bytes`).
    pub max_record_backlog_bytes: u64,
}

/// What a record counts against `session.max_record_backlog_bytes`: its payload
/// bytes plus a fixed share for its header and bookkeeping.
pub fn backlog_cost(record: &Record) -> u64 {
    let payload = match record {
        Record::Full(s) => s.unacked.len() + s.unread_input.len(),
        Record::Sync(s) => s.data.len(),
        Record::Delete(_) => 0,
    };
    payload as u64 + 128
}

/// A record with its replication sequence number.
pub type Sequenced = (u64, Record);

/// Requests to the interceptor thread.
#[derive(Debug)]
pub enum QueueCommand {
    /// The backup has applied every record up to this sequence number.
    Acked(u64),
    /// Hold outbound packets until acknowledged (sync mode on a master) or not.
    SetHolding(bool),
    /// Full records of every session and the sequence number they are current at.
    Snapshot(tokio::sync::oneshot::Sender<(u64, Vec<Record>)>),
    /// The current table, for status and the console.
    Sessions(tokio::sync::oneshot::Sender<Vec<SessionState>>),
    /// This node became master (`true`) or stopped being master (`false`). A node
    /// that is not master drops every outbound packet of the service: its app's
    /// sessions now belong to the other node.
    SetRole(bool),
    /// Restore these replicated sessions into the local service (design §4): forge
    /// each peer's handshake, then translate. Sessions already tracked are skipped.
    Park {
        /// The replicated sessions.
        states: Vec<SessionState>,
        /// When this node became master (for the report).
        promoted_at: Instant,
    },
    /// The service process died on this (master) node: drop the closes its kernel
    /// is sending (see [`close_quarantine`]) and park its sessions until
    /// [`QueueCommand::ServiceReady`] — except those marked at risk, which it cannot
    /// continue exactly (reset cleanly).
    AppDied,
    /// The dead service's sockets, looked at right after [`QueueCommand::AppDied`]:
    /// sessions whose orphaned socket still holds output never sent are reset
    /// cleanly instead of restored.
    DeadSockets(Vec<crate::session::risk::Observation>),
    /// The service listens (again): restore the parked sessions into it.
    ServiceReady,
    /// Freeze peers with a zero window (a planned switchover's drain) or thaw them.
    Freeze(bool),
    /// This node is not master and owns no session: forget the tracked ones (a
    /// restarted agent seeds its tracker from disk, for a resume as master only).
    ForgetSessions,
    /// A planned switchover hands over what the service's sockets hold
    /// ([`crate::session::handover`]): each session's unsent output and unread input
    /// go into its replicated state; `stopped` (the service's processes, stopped for
    /// the read) are continued once this node stops serving or the switchover is
    /// called off. Replies with the sessions that could not take theirs.
    HandOver {
        /// What each session's socket held.
        chunks: Vec<crate::session::handover::Taken>,
        /// Processes to continue later (`SIGCONT`).
        stopped: Vec<i32>,
        /// The sessions whose queues could not be handed over.
        reply: tokio::sync::oneshot::Sender<Vec<nonstop_shared::session::SessionKey>>,
    },
    /// A planned switchover is about to read the service's sockets' queues: from now
    /// on the peers' data is dropped (they retransmit it to the new master), so the
    /// receive queues read are final and this kernel acknowledges nothing beyond them.
    Seal,
    /// The service's sockets as the kernel shows them now (on the master, every
    /// `session.risk_poll_ms`): sessions that hold output not sent or input not read
    /// are marked at risk ([`crate::session::risk`]).
    Observe(Vec<crate::session::risk::Observation>),
    /// Reset these sessions cleanly on both sides (RST to the peer, deleted here and on
    /// the backup, counted, an event): a planned switchover could not hand over what
    /// their sockets held, and a hole is never an option.
    ResetUnsent(Vec<nonstop_shared::session::SessionKey>),
    /// Where to report finished restores.
    SetEventLog(Arc<crate::events::EventLog>),
    /// Hot replica (design §9): mirror sessions on this node while it is backup,
    /// with at most this many bytes waiting per mirror; replicate the peers' input
    /// while it is master.
    Hot {
        /// `service.mirror_backlog`.
        backlog: usize,
    },
    /// Hot replica, backup: records the replication receiver applied, in order.
    Mirror(Vec<Record>),
    /// Hot replica, backup: a snapshot replaced the table with these records (mirrors
    /// it does not contradict go on, the others turn cold).
    MirrorSnapshot(Vec<Record>),
    /// Hot replica, backup: the local service died (its mirrors turn cold).
    ReplicaServiceDied,
    /// Hot replica: each mirrored session's state (`hot`, `cold`, `diverged`,
    /// `lagging N B`), for `sessions`.
    ReplicaStates(
        tokio::sync::oneshot::Sender<
            std::collections::HashMap<nonstop_shared::session::SessionKey, String>,
        >,
    ),
    /// Stop: release held packets, remove the table, end the thread.
    Stop,
}

/// Counters the thread keeps, readable from anywhere.
#[derive(Debug, Default)]
pub struct InterceptorStats {
    /// Packets seen, inbound.
    pub packets_in: AtomicU64,
    /// Packets seen, outbound.
    pub packets_out: AtomicU64,
    /// Packets the core could not parse (not IPv4/TCP, broken headers or options):
    /// dropped (fail-closed).
    pub malformed: AtomicU64,
    /// Packets the queue captured only in part (captured length below the original
    /// length): dropped (fail-closed), never accepted.
    pub truncated: AtomicU64,
    /// Queue messages that could not be read at all (no packet id to verdict).
    pub unparsable: AtomicU64,
    /// Verdicts the kernel refused (answered with an error).
    pub verdicts_refused: AtomicU64,
    /// Packets held right now.
    pub held: AtomicU64,
    /// Packets dropped because too many (or too many bytes) were held: the bound of
    /// `session.max_held_bytes` reached (backpressure; the service sends them again).
    pub overflow_drops: AtomicU64,
    /// Bytes of the packets held right now.
    pub held_bytes: AtomicU64,
    /// Outbound packets dropped because their session's replicated output reached
    /// `session.max_unacked_bytes` (backpressure; the service sends them again).
    pub unacked_bound_drops: AtomicU64,
    /// Record bytes waiting for the replication task now ([`backlog_cost`]).
    pub record_backlog: AtomicU64,
    /// The risk watch's interval now, ms (`session.risk_poll_ms`, longer when a look
    /// is slow: see [`crate::session::risk::RISK_CPU_SHARE`]).
    pub risk_poll_ms: AtomicU64,
    /// The sync loop's hops, timed ([`crate::replication::hops`]).
    pub hops: crate::replication::hops::Hops,
    /// Packets dropped before tracking because the record backlog reached
    /// `session.max_record_backlog_bytes` (backpressure; peers and service resend).
    pub backlog_drops: AtomicU64,
    /// Last record sequence number issued.
    pub last_seq: AtomicU64,
    /// Last sequence number the backup acknowledged.
    pub acked_seq: AtomicU64,
    /// Sessions in the table.
    pub sessions: AtomicU64,
    /// Whether holding is on.
    pub holding: AtomicBool,
    /// Sessions whose restore started (forged SYN sent).
    pub restore_started: AtomicU64,
    /// Sessions restored (handshake completed, translation on).
    pub restored: AtomicU64,
    /// Restores that failed (unexpected SYN-ACK, send error).
    pub restore_failed: AtomicU64,
    /// Microseconds from the restore command to the last session restored.
    pub restore_last_us: AtomicU64,
    /// Outbound packets dropped because this node is not master, and peers' packets of
    /// untracked sessions dropped while it is not (yet) serving them.
    pub not_master_drops: AtomicU64,
    /// Restores queued or waiting for a SYN-ACK.
    pub restore_pending: AtomicU64,
    /// Closes (FIN/RST) of the service waiting out [`close_quarantine::CLOSE_GRACE`].
    pub closes_waiting: AtomicU64,
    /// Closes dropped because the service had died (its sessions were restored).
    pub closes_dropped: AtomicU64,
    /// Times the service died on this master and its sessions were parked.
    pub app_deaths: AtomicU64,
    /// Restored sessions reset because their peer had seen state the replica lacked.
    pub sessions_reset: AtomicU64,
    /// Peer segments of tracked sessions the kernel would refuse (RFC 5961: outside
    /// the window, a RST not at the exact point, a SYN, an unacceptable ACK): passed
    /// on untouched, they changed no session.
    pub segments_out_of_window: AtomicU64,
    /// Sessions whose socket queues a planned switchover handed over (unsent output,
    /// unread input).
    pub handed_over: AtomicU64,
    /// Bytes of unsent output and unread input handed over.
    pub handed_over_bytes: AtomicU64,
    /// Sessions marked at risk now (a crash could not continue them exactly).
    pub sessions_at_risk: AtomicU64,
    /// Sessions reset at a takeover because they were at risk.
    pub reset_at_risk: AtomicU64,
    /// Per-session restore time of the last restore, median, µs.
    pub restore_session_p50_us: AtomicU64,
    /// Per-session restore time of the last restore, 99th percentile, µs.
    pub restore_session_p99_us: AtomicU64,
    /// Promotion (or service death) to the last session restored, ms.
    pub restore_since_promotion_ms: AtomicU64,
    /// Hot replica (backup): live mirrors now.
    pub mirrors: AtomicU64,
    /// Hot replica (backup): mirrors opened.
    pub mirrors_opened: AtomicU64,
    /// Hot replica (backup): mirrors whose output differed from the master's.
    pub mirrors_diverged: AtomicU64,
    /// Hot replica (backup): mirrors given up (the session turned cold).
    pub mirrors_cold: AtomicU64,
    /// Hot replica: sessions taken over by their mirror (no restore).
    pub mirrors_adopted: AtomicU64,
    /// Hot replica: sessions a takeover restored cold (no usable mirror).
    pub mirrors_fallback: AtomicU64,
}

/// The handle other tasks use to talk to the thread.
#[derive(Debug, Clone)]
pub struct InterceptorHandle {
    commands: mpsc::Sender<QueueCommand>,
    wake: Arc<EventFd>,
    /// Live counters.
    pub stats: Arc<InterceptorStats>,
}

impl InterceptorHandle {
    /// Sends a command and wakes the thread.
    pub fn send(&self, command: QueueCommand) {
        if self.commands.send(command).is_ok() {
            self.wake.notify();
        }
    }

    /// Asks for the session table.
    pub async fn sessions(&self) -> Vec<SessionState> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(QueueCommand::Sessions(tx));
        rx.await.unwrap_or_default()
    }

    /// Asks for a snapshot: (sequence number, full records).
    pub async fn snapshot(&self) -> Option<(u64, Vec<Record>)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(QueueCommand::Snapshot(tx));
        rx.await.ok()
    }
}

/// Starts the thread: opens and configures the queue, then installs the queue rules
/// (in that order, so no packet meets a queue nobody reads), seeded with the
/// sessions restored from disk.
pub fn spawn(
    config: InterceptorConfig,
    records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
    restored: Vec<SessionState>,
    first_seq: u64,
) -> anyhow::Result<(InterceptorHandle, std::thread::JoinHandle<()>)> {
    let (commands_tx, commands_rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new().context("eventfd")?);
    let stats = Arc::new(InterceptorStats::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = {
        let wake = Arc::clone(&wake);
        let stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("nfqueue".into())
            .spawn(move || {
                let mut worker = match Worker::open(
                    config,
                    records,
                    commands_rx,
                    wake,
                    stats,
                    restored,
                    first_seq,
                ) {
                    Ok(worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker.run();
            })
            .context("cannot start the nfqueue thread")?
    };
    ready_rx
        .recv()
        .context("nfqueue thread died during setup")??;
    Ok((
        InterceptorHandle {
            commands: commands_tx,
            wake,
            stats,
        },
        thread,
    ))
}

struct Worker {
    /// Owns the socket and its configuration (unbound when dropped).
    _queue: nfq::Queue,
    queue_fd: RawFd,
    /// Receives and verdicts on the same socket, batched.
    socket: QueueSocket,
    /// The packets of one receive.
    batch: Vec<QueuedPacket>,
    records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
    commands: mpsc::Receiver<QueueCommand>,
    wake: Arc<EventFd>,
    raw: RawSender,
    /// Packets to inject that the raw socket could not take yet (see [`Worker::inject`]).
    outbox: VecDeque<Vec<u8>>,
    /// Every decision.
    core: Interceptor<QueuedPacket>,
    /// The counters the core shares (the driver adds the queue's own).
    stats: Arc<InterceptorStats>,
    /// `session.max_record_backlog_bytes`.
    max_backlog: u64,
}

/// The restore barrier's look at the service: no connection waits in the accept
/// queue of its listeners on `vip` at `ports` (IPv4 and dual-stack IPv6; the kernel
/// walks only its listening hash). Unreadable counts as empty.
fn accept_queues(vip: Ipv4Addr, ports: &[u16]) -> machine::AcceptQueues {
    match crate::sockets::diag::Diag::open().and_then(|mut diag| diag.listeners(vip, ports)) {
        Ok(listeners) if !listeners.is_empty() => machine::AcceptQueues {
            queued: listeners.iter().map(|l| u64::from(l.accept_queue)).sum(),
            limit: listeners.iter().map(|l| u64::from(l.backlog)).sum(),
        },
        // Unknown: nothing seen waiting, no limit known.
        _ => machine::AcceptQueues {
            queued: 0,
            limit: u64::MAX,
        },
    }
}

/// The `p` quantile (0..=1) of sorted values, nearest rank; 0 if empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How long the app's packets of a session this node reset are dropped (its socket
/// is being reset too; nothing it still sends may reach the peer untranslated).
pub const RESET_QUIET: Duration = Duration::from_secs(10);

/// Mark on packets the agent injects itself (forged handshakes, retransmissions).
pub const INJECT_MARK: u32 = 0x4e53_0001;

impl Worker {
    fn open(
        config: InterceptorConfig,
        records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
        commands: mpsc::Receiver<QueueCommand>,
        wake: Arc<EventFd>,
        stats: Arc<InterceptorStats>,
        restored: Vec<SessionState>,
        first_seq: u64,
    ) -> anyhow::Result<Worker> {
        let (mut queue, queue_fd) =
            open_queue().context("cannot open NFQUEUE (need CAP_NET_ADMIN)")?;
        let Some(queue_fd) = queue_fd else {
            bail!("cannot identify the NFQUEUE socket");
        };
        // A burst larger than the socket buffer makes the kernel drop packets on the
        // way to us ("user_dropped" in /proc/net/netfilter/nfnetlink_queue), which TCP
        // repairs only after a retransmission timeout: give the socket room.
        set_socket_int(
            queue_fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RCVBUF_BYTES,
        )
        .context("cannot enlarge the NFQUEUE socket buffer")?;
        queue
            .bind(config.queue)
            .with_context(|| format!("cannot bind NFQUEUE {}", config.queue))?;
        queue.set_copy_range(config.queue, 0xffff)?;
        queue.set_queue_max_len(config.queue, MAX_HELD as u32)?;
        queue.set_fail_open(config.queue, false)?;
        // GSO super-packets whole (crates.md): partial checksums are handled where a
        // packet is rewritten (`crate::tcp::wire::checksum_state`), truncation is
        // refused by the core.
        queue.set_recv_gso(config.queue, true)?;
        queue.set_nonblocking(true);
        let socket = QueueSocket::new(queue_fd, config.queue)
            .context("cannot enlarge the NFQUEUE send buffer")?;
        queue_rules::install(config.vip, &config.ports, config.queue)?;
        let core = Interceptor::new(
            CoreConfig {
                vip: config.vip,
                ports: config.ports.clone(),
                limits: config.limits,
                restored,
                first_seq,
            },
            Arc::clone(&stats),
            {
                let vip = config.vip;
                Box::new(move |ports: &[u16]| accept_queues(vip, ports))
            },
            Instant::now(),
        );
        let mut core = core;
        core.set_max_held_bytes(usize::try_from(config.max_held_bytes).unwrap_or(usize::MAX));
        tracing::info!(queue = config.queue, vip = %config.vip, ports = ?config.ports, sessions = core.sessions(), "intercepting service traffic");
        Ok(Worker {
            _queue: queue,
            queue_fd,
            socket,
            batch: Vec::with_capacity(queue::RECV_BATCH),
            records,
            commands,
            wake,
            raw: RawSender::open().context("raw socket for restores")?,
            outbox: VecDeque::new(),
            core,
            stats,
            max_backlog: config.max_record_backlog_bytes,
        })
    }

    /// The thread: commands first (a role change must apply before the packets that
    /// follow it), then everything the queue has, then the core's timers; everything
    /// the core decided is carried out after each input.
    fn run(&mut self) {
        let mut last_error_log = Instant::now() - Duration::from_secs(10);
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(QueueCommand::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.stop();
                        return;
                    }
                    Ok(command) => {
                        let acked = match &command {
                            QueueCommand::Acked(seq) => Some(*seq),
                            _ => None,
                        };
                        self.core.handle_command(command, Instant::now(), unix_ms());
                        self.carry_out();
                        if let Some(seq) = acked {
                            self.flush_verdicts();
                            self.stats.hops.applied(seq);
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            loop {
                match self.socket.recv_batch(&mut self.batch) {
                    Ok(report) => {
                        self.count(&report, &mut last_error_log);
                        let now = Instant::now();
                        let now_ms = unix_ms();
                        let mut batch = std::mem::take(&mut self.batch);
                        for packet in batch.drain(..) {
                            if self.backlog_full() && packet.mark != INJECT_MARK {
                                // Backpressure: nothing is tracked while replication
                                // is this far behind; the packet is sent again.
                                self.stats.backlog_drops.fetch_add(1, Ordering::Relaxed);
                                self.carry_out();
                                if let Err(e) = self.socket.verdict(&packet, Decision::Drop) {
                                    tracing::warn!(error = %e, "NFQUEUE verdicts not sent");
                                }
                                continue;
                            }
                            self.core.handle_packet(packet, now, now_ms);
                        }
                        self.batch = batch;
                        self.carry_out();
                        if report.datagrams < queue::RECV_BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        if last_error_log.elapsed() > Duration::from_secs(1) {
                            tracing::warn!(error = %e, "NFQUEUE receive error");
                            last_error_log = Instant::now();
                        }
                        break;
                    }
                }
            }
            self.flush_outbox();
            self.core.handle_timeout(Instant::now(), unix_ms());
            self.carry_out();
            self.flush_verdicts();
            let mut timeout = self.core.poll_timeout(Instant::now());
            if !self.outbox.is_empty() {
                timeout = timeout.min(Duration::from_millis(1));
            }
            let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            if let Err(e) = poll_two(self.queue_fd, self.wake.fd(), timeout_ms) {
                tracing::warn!(error = %e, "poll failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            self.wake.drain();
        }
    }

    /// Carries out what the core decided: verdicts and injections in the order they
    /// were decided (the verdicts sent at once), then records to replication. The
    /// packets go first because nothing they carry waits for the record's journey:
    /// a packet that must wait for the backup (sync mode) is held by the core until
    /// the backup acknowledged its record, which is sent just after; waking the
    /// replication task first only put its thread in the packet's way on a busy
    /// machine.
    fn carry_out(&mut self) {
        let mut decided = false;
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Verdict(message, decision) => {
                    decided = true;
                    if let Err(e) = self.socket.verdict(&message, decision) {
                        tracing::warn!(error = %e, "NFQUEUE verdicts not sent");
                    }
                }
                Output::Inject(packet) => {
                    // Verdicts decided before it leave first.
                    self.flush_verdicts();
                    self.inject(packet);
                }
                Output::ForgetInjections => self.outbox.clear(),
                Output::Continue(pids) => {
                    crate::session::handover::signal_all(&pids, libc::SIGCONT);
                }
            }
        }
        if decided {
            self.flush_verdicts();
        }
        while let Some(record) = self.core.poll_record() {
            self.stats
                .record_backlog
                .fetch_add(backlog_cost(&record.1), Ordering::Relaxed);
            self.stats.hops.issued(record.0);
            let _ = self.records.send(record);
        }
    }

    /// Whether the records waiting for replication reached their bound.
    fn backlog_full(&self) -> bool {
        self.stats.record_backlog.load(Ordering::Relaxed) >= self.max_backlog
    }

    /// Sends the verdicts gathered so far (one `sendmsg`).
    fn flush_verdicts(&mut self) {
        if let Err(e) = self.socket.flush() {
            tracing::warn!(error = %e, "NFQUEUE verdicts not sent");
        }
    }

    /// Counts what a receive brought besides packets.
    fn count(&self, report: &queue::RecvReport, last_error_log: &mut Instant) {
        let stats = &self.stats;
        if report.unparsable > 0 {
            stats
                .unparsable
                .fetch_add(report.unparsable as u64, Ordering::Relaxed);
        }
        if report.refused > 0 {
            stats
                .verdicts_refused
                .fetch_add(report.refused as u64, Ordering::Relaxed);
            if last_error_log.elapsed() > Duration::from_secs(1) {
                tracing::warn!(
                    errno = report.last_errno,
                    refused = report.refused,
                    "NFQUEUE refused verdicts"
                );
                *last_error_log = Instant::now();
            }
        }
    }

    /// Sends a forged or retransmitted packet from the raw socket, in order after any
    /// still waiting. The socket never blocks: its packets pass through this very
    /// queue (outbound ones wait for our verdict, charged to the socket's send
    /// buffer), so a blocking send of a large burst — a freeze of thousands of
    /// sessions, a long retransmitted tail — would wait on itself forever.
    fn inject(&mut self, packet: Vec<u8>) {
        if self.outbox.is_empty() {
            match self.raw.send(&packet) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!(error = %e, "injected packet not sent");
                    return;
                }
            }
        }
        if self.outbox.len() >= MAX_HELD {
            tracing::warn!("injection backlog full: packet dropped (TCP repairs it)");
            return;
        }
        self.outbox.push_back(packet);
    }

    /// Sends what waits in the outbox, until the socket is full again.
    fn flush_outbox(&mut self) {
        while let Some(packet) = self.outbox.front() {
            match self.raw.send(packet) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => tracing::warn!(error = %e, "injected packet not sent"),
            }
            self.outbox.pop_front();
        }
    }

    /// Shutdown: held packets are dropped, not released (their state may never reach
    /// the backup; TCP retransmits them), and the table goes with the agent.
    fn stop(&mut self) {
        self.core.stop();
        self.carry_out();
        self.flush_verdicts();
        if let Err(e) = queue_rules::remove() {
            tracing::error!(error = %e, "could not remove the queue rules");
        }
        tracing::info!("interception stopped");
    }
}

/// How often the tails' retransmission timers are looked at.
pub const TAIL_POLL: Duration = Duration::from_millis(20);

/// Receive buffer of the NFQUEUE socket.
pub const RCVBUF_BYTES: libc::c_int = 32 << 20;
