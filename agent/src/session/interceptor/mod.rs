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

mod close_quarantine;
mod peek;
mod raw;
mod recovery;

use self::close_quarantine::CloseQuarantine;
use self::peek::Peek;
use self::raw::RawSender;
use crate::nfqueue::{open_queue, poll_two, set_socket_int, EventFd};
use crate::recovery::divergence::{reset_to_app, reset_to_peer, Divergence, Probation};
use crate::recovery::forge::{forged_ack, forged_syn, parse_synack};
use crate::recovery::freeze::{freeze_ack, zero_window};
use crate::recovery::tail::Tail;
use crate::recovery::translate::TranslateError;
use crate::recovery::translate::{duplicate_acks, probe, window_update, Translator, Verdict};
use crate::session::queue_rules;
use crate::session::tracker::{Rejection, Tracker, TrackerLimits};
use anyhow::{bail, Context};
use nonstop_shared::session::{Phase, SessionKey};
use nonstop_shared::session::{Record, SessionState};
use std::collections::HashMap;
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
    /// [`QueueCommand::ServiceReady`].
    AppDied,
    /// The service listens (again): restore the parked sessions into it.
    ServiceReady,
    /// Freeze peers with a zero window (a planned switchover's drain) or thaw them.
    Freeze(bool),
    /// This node is not master and owns no session: forget the tracked ones (a
    /// restarted agent seeds its tracker from disk, for a resume as master only).
    ForgetSessions,
    /// Where to report finished restores.
    SetEventLog(Arc<crate::events::EventLog>),
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
    /// Packets the tracker rejected as malformed (accepted unchanged).
    pub malformed: AtomicU64,
    /// Packets held right now.
    pub held: AtomicU64,
    /// Packets dropped because too many were held.
    pub overflow_drops: AtomicU64,
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
    /// Outbound packets dropped because this node is not master.
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
    /// Per-session restore time of the last restore, median, µs.
    pub restore_session_p50_us: AtomicU64,
    /// Per-session restore time of the last restore, 99th percentile, µs.
    pub restore_session_p99_us: AtomicU64,
    /// Promotion (or service death) to the last session restored, ms.
    pub restore_since_promotion_ms: AtomicU64,
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

struct Held {
    required: u64,
    message: nfq::Message,
}

struct Worker {
    queue: nfq::Queue,
    queue_fd: RawFd,
    tracker: Tracker,
    records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
    commands: mpsc::Receiver<QueueCommand>,
    wake: Arc<EventFd>,
    stats: Arc<InterceptorStats>,
    next_seq: u64,
    acked: u64,
    holding: bool,
    held: VecDeque<Held>,
    master: bool,
    vip: Ipv4Addr,
    ports: Vec<u16>,
    raw: RawSender,
    /// Forged SYN sent, waiting for the app kernel's SYN-ACK.
    restoring: HashMap<SessionKey, Restoring>,
    /// Sessions waiting for a handshake slot (see [`MAX_HANDSHAKES`]).
    restore_queue: VecDeque<SessionKey>,
    queued: HashMap<SessionKey, SessionState>,
    /// Forged ACK sent (value: the ACK number it carries), to let it through once.
    forged_acks: HashMap<SessionKey, u32>,
    translators: HashMap<SessionKey, Translator>,
    /// Restored sessions whose replicated tail the peer has not acknowledged yet.
    tails: HashMap<SessionKey, Tail>,
    /// When the tails' timers were last looked at.
    tails_checked: Option<Instant>,
    restore_began: Option<Instant>,
    /// Counters at the start of the current restore, for its report.
    restored_before: u64,
    failed_before: u64,
    events: Option<Arc<crate::events::EventLog>>,
    /// The service's closes, held a moment in case it is dying.
    closing: CloseQuarantine<nfq::Message>,
    /// Sessions of a dead service, waiting for it to listen again.
    awaiting_app: Vec<SessionKey>,
    /// Restored sessions (async mode) whose peer has not yet proven it is in step.
    probations: HashMap<SessionKey, Probation>,
    /// Sessions this node reset, and when: the app's late packets are dropped.
    reset_recently: HashMap<SessionKey, Instant>,
    /// Per-session restore times (µs) of the restore under way.
    restore_times_us: Vec<u64>,
    /// Peers are frozen: every outbound segment announces a zero window.
    frozen: bool,
    /// Packets to inject that the raw socket could not take yet (see [`Worker::inject`]).
    outbox: VecDeque<Vec<u8>>,
    /// Peers' input to restored sessions, held until the whole batch is restored
    /// and the service has accepted every connection of it.
    barrier: VecDeque<nfq::Message>,
    /// The batch is restored; the barrier waits (until this deadline at most) for the
    /// service to drain its accept queue.
    barrier_until: Option<Instant>,
    /// When the barrier last looked at the accept queue.
    barrier_checked: Option<Instant>,
    /// The promotion (or service death) the restore under way answers.
    restore_origin: Option<Instant>,
}

/// A forged handshake in flight.
struct Restoring {
    state: SessionState,
    /// First forged SYN.
    started: Instant,
    /// Latest forged SYN.
    sent_at: Instant,
    tries: u32,
}

/// Forged handshakes in flight at once: the app kernel's SYN queue is small (128 by
/// default in a fresh namespace) and an overflow would turn on SYN cookies.
pub const MAX_HANDSHAKES: usize = 32;
/// A forged SYN unanswered this long is sent again.
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(300);
/// Forged SYNs per session before the restore is given up.
pub const HANDSHAKE_TRIES: u32 = 10;

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
        queue.set_recv_gso(config.queue, false)?;
        queue.set_nonblocking(true);
        queue_rules::install(config.vip, &config.ports, config.queue)?;
        let mut tracker = Tracker::new(config.vip, &config.ports, config.limits);
        tracker.restore(restored);
        stats
            .sessions
            .store(tracker.len() as u64, Ordering::Relaxed);
        tracing::info!(queue = config.queue, vip = %config.vip, ports = ?config.ports, sessions = tracker.len(), "intercepting service traffic");
        Ok(Worker {
            queue,
            queue_fd,
            tracker,
            records,
            commands,
            wake,
            stats,
            next_seq: first_seq,
            acked: first_seq.saturating_sub(1),
            holding: false,
            held: VecDeque::new(),
            master: false,
            vip: config.vip,
            ports: config.ports.clone(),
            raw: RawSender::open().context("raw socket for restores")?,
            restoring: HashMap::new(),
            restore_queue: VecDeque::new(),
            queued: HashMap::new(),
            forged_acks: HashMap::new(),
            translators: HashMap::new(),
            tails: HashMap::new(),
            tails_checked: None,
            restore_began: None,
            restored_before: 0,
            failed_before: 0,
            events: None,
            closing: CloseQuarantine::new(close_quarantine::CLOSE_GRACE),
            awaiting_app: Vec::new(),
            probations: HashMap::new(),
            reset_recently: HashMap::new(),
            restore_times_us: Vec::new(),
            frozen: false,
            barrier: VecDeque::new(),
            outbox: VecDeque::new(),
            barrier_until: None,
            barrier_checked: None,
            restore_origin: None,
        })
    }

    fn run(&mut self) {
        let mut last_error_log = Instant::now() - Duration::from_secs(10);
        let mut last_expiry = Instant::now();
        loop {
            if last_expiry.elapsed() >= Duration::from_secs(1) {
                last_expiry = Instant::now();
                let now_ms = crate::events::unix_ms();
                for record in self
                    .tracker
                    .expire(now_ms, HANDSHAKE_IDLE_MS, ESTABLISHED_IDLE_MS)
                {
                    tracing::info!(session = %record.key(), "idle session expired");
                    self.issue(record);
                }
            }
            // Commands first (a role change must apply before the packets that follow
            // it), then everything the socket has.
            loop {
                match self.commands.try_recv() {
                    Ok(QueueCommand::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.stop();
                        return;
                    }
                    Ok(command) => self.on_command(command),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            loop {
                match self.queue.recv() {
                    Ok(message) => self.on_packet(message),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // A rejected verdict of an earlier packet shows up here.
                        if last_error_log.elapsed() > Duration::from_secs(1) {
                            tracing::warn!(error = %e, "NFQUEUE receive error");
                            last_error_log = Instant::now();
                        }
                        break;
                    }
                }
            }
            self.release();
            self.flush_outbox();
            self.release_closes();
            self.check_probations();
            self.check_tails();
            self.check_barrier();
            if !self.restoring.is_empty() {
                self.pump_restores();
            }
            let mut timeout_ms = if self.restoring.is_empty() { 1000 } else { 50 };
            if self.barrier_until.is_some() || !self.outbox.is_empty() {
                timeout_ms = 1;
            }
            if !self.tails.is_empty() {
                timeout_ms = timeout_ms.min(TAIL_POLL.as_millis() as i32);
            }
            if let Some(due) = self.closing.next_due(Instant::now()) {
                timeout_ms = timeout_ms.min(due.as_millis() as i32 + 1);
            }
            if let Err(e) = poll_two(self.queue_fd, self.wake.fd(), timeout_ms) {
                tracing::warn!(error = %e, "poll failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            self.wake.drain();
        }
    }

    fn on_packet(&mut self, mut message: nfq::Message) {
        let Some(peek) = Peek::of(message.get_payload(), self.vip) else {
            // Not IPv4/TCP as we expect: let the tracker count it, pass it on.
            self.track(message.get_payload());
            message.set_verdict(nfq::Verdict::Accept);
            self.verdict(message);
            return;
        };
        let counter = if peek.outbound {
            &self.stats.packets_out
        } else {
            &self.stats.packets_in
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Our own forged handshake into the local stack: deliver untouched, untracked.
        if !peek.outbound && self.is_forged_inbound(&peek) {
            message.set_verdict(nfq::Verdict::Accept);
            self.verdict(message);
            return;
        }
        // Our own retransmissions to the peer: already in the peer's sequence space.
        if peek.outbound && message.get_nfmark() == INJECT_MARK {
            self.track(message.get_payload());
            message.set_verdict(nfq::Verdict::Accept);
            self.verdict(message);
            return;
        }
        if peek.outbound && !self.master {
            self.stats.not_master_drops.fetch_add(1, Ordering::Relaxed);
            message.set_verdict(nfq::Verdict::Drop);
            self.verdict(message);
            return;
        }
        if self.restoring.contains_key(&peek.key) || self.queued.contains_key(&peek.key) {
            if peek.outbound && peek.syn && peek.ack {
                self.complete_restore(peek.key, message.get_payload());
            } else if !peek.outbound {
                // The peer, before the restored socket exists: note it, drop it;
                // the peer retransmits.
                self.track(message.get_payload());
            }
            message.set_verdict(nfq::Verdict::Drop);
            self.verdict(message);
            return;
        }
        if peek.outbound
            && (self.closing.holds(&peek.key)
                || ((peek.fin || peek.rst) && self.tracker.session(&peek.key).is_some()))
        {
            self.closing.hold(peek.key, message, Instant::now());
            self.stats
                .closes_waiting
                .store(self.closing.len() as u64, Ordering::Relaxed);
            return;
        }
        self.forward(message, peek);
    }

    /// Translates (restored sessions), tracks and passes on or holds a packet.
    fn forward(&mut self, mut message: nfq::Message, peek: Peek) {
        if self.frozen && peek.outbound {
            let mut packet = message.get_payload().to_vec();
            if zero_window(&mut packet).is_ok() {
                message.set_payload(packet);
            }
        }
        if peek.outbound && self.reset_recently.contains_key(&peek.key) {
            self.verdict_with(message, nfq::Verdict::Drop);
            return;
        }
        if self.translators.contains_key(&peek.key) {
            let mut packet = message.get_payload().to_vec();
            if peek.outbound {
                if let Some(probation) = self.probations.get_mut(&peek.key) {
                    if peek.ack {
                        probation.app_acked(peek.ack_no);
                    }
                    if !probation.verified() && (peek.payload_len > 0 || peek.fin) {
                        // Not before the peer has shown where it stands; the app
                        // kernel retransmits.
                        self.verdict_with(message, nfq::Verdict::Drop);
                        return;
                    }
                    if probation.finished() {
                        self.probations.remove(&peek.key);
                    }
                }
                let Some(translator) = self.translators.get_mut(&peek.key) else {
                    self.verdict_with(message, nfq::Verdict::Drop);
                    return;
                };
                match translator.outbound(&mut packet) {
                    Ok(Verdict::Accept) => {
                        self.track(&packet);
                        message.set_payload(packet);
                        self.hold_or_accept(message);
                    }
                    Ok(Verdict::Drop) | Err(_) => {
                        message.set_verdict(nfq::Verdict::Drop);
                        self.verdict(message);
                    }
                }
            } else {
                self.forward_inbound_translated(message, peek, packet);
            }
            return;
        }
        self.track(message.get_payload());
        if peek.outbound {
            self.hold_or_accept(message);
        } else {
            message.set_verdict(nfq::Verdict::Accept);
            self.verdict(message);
        }
    }

    /// A peer's segment of a restored session: checked against the kernel's rules in
    /// the peer's sequence space first (RFC 5961: a segment the kernel would refuse
    /// passes on untouched — never translated, whose clamping could make a forged ACK
    /// acceptable — and changes nothing), then translated into the service's space.
    fn forward_inbound_translated(
        &mut self,
        mut message: nfq::Message,
        peek: Peek,
        mut packet: Vec<u8>,
    ) {
        let batch_open = self.restore_began.is_some() || self.barrier_until.is_some();
        if batch_open
            && (peek.payload_len > 0 || peek.fin)
            && self.tracker.rejection(&packet).is_none()
        {
            // The restore barrier: no peer's input reaches the new service
            // before every session of the batch is connected to it, so a
            // service that relays between clients (chat) misses no one.
            if self.barrier.len() < MAX_HELD {
                self.barrier.push_back(message);
            } else {
                self.verdict_with(message, nfq::Verdict::Drop);
            }
            return;
        }
        if let Some(rejection) = self.track(&packet) {
            if rejection == Rejection::UnsentAck && self.unsent_ack_proves_divergence(&peek) {
                self.verdict_with(message, nfq::Verdict::Drop);
                self.reset_diverged(peek.key, Some(peek.ack_no), Divergence::AckBeyondSent);
            } else {
                self.verdict_with(message, nfq::Verdict::Accept);
            }
            return;
        }
        self.feed_tail(&peek);
        let translator = self.translators.get_mut(&peek.key);
        match translator.map(|t| t.inbound(&mut packet)) {
            Some(Ok(Verdict::Accept)) => {
                if let Some(probation) = self.probations.get_mut(&peek.key) {
                    let ack = peek.ack.then_some(peek.ack_no);
                    probation.peer_segment(peek.seq, peek.payload_len, ack, Instant::now());
                }
                message.set_payload(packet);
                message.set_verdict(nfq::Verdict::Accept);
            }
            Some(Err(TranslateError::AckBeyondSent { ack, .. })) => {
                message.set_verdict(nfq::Verdict::Drop);
                self.reset_diverged(peek.key, Some(ack), Divergence::AckBeyondSent);
            }
            _ => message.set_verdict(nfq::Verdict::Drop),
        }
        self.verdict(message);
    }

    /// An acceptable peer segment whose ACK covers bytes the replica never saw sent:
    /// in async mode (a session on probation) the proof that the peer saw more than
    /// the replica — when it cannot be a blind forgery: its sequence number is exactly
    /// where the peer stands, or the same ACK came twice ([`Probation::unsent_ack`]).
    fn unsent_ack_proves_divergence(&mut self, peek: &Peek) -> bool {
        let exact = self
            .tracker
            .session(&peek.key)
            .is_some_and(|s| peek.seq == s.rcv_nxt || peek.seq == s.peer_seq_max);
        self.probations
            .get_mut(&peek.key)
            .is_some_and(|p| p.unsent_ack(peek.ack_no, exact))
    }

    /// Feeds a packet (in the peer's sequence space) to the tracker and issues its
    /// records; a peer's segment the kernel would refuse changes nothing and is
    /// counted ([`Rejection`]).
    fn track(&mut self, packet: &[u8]) -> Option<Rejection> {
        match self.tracker.on_packet(packet, crate::events::unix_ms()) {
            Ok(outcome) => {
                if let Some(rejection) = outcome.rejected {
                    self.stats
                        .segments_out_of_window
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(session = %outcome.key, ?rejection, "peer segment refused");
                }
                for record in outcome.records {
                    self.issue(record);
                }
                outcome.rejected
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "packet not tracked");
                None
            }
        }
    }

    /// In sync mode an outbound packet waits until the backup has acknowledged the
    /// record current now (and everything held before it).
    fn hold_or_accept(&mut self, mut message: nfq::Message) {
        let required = self.next_seq - 1;
        if self.holding && (required > self.acked || !self.held.is_empty()) {
            if self.held.len() >= MAX_HELD {
                self.stats.overflow_drops.fetch_add(1, Ordering::Relaxed);
                message.set_verdict(nfq::Verdict::Drop);
                self.verdict(message);
                return;
            }
            self.held.push_back(Held { required, message });
            self.stats
                .held
                .store(self.held.len() as u64, Ordering::Relaxed);
            return;
        }
        message.set_verdict(nfq::Verdict::Accept);
        self.verdict(message);
    }

    /// Numbers a record and hands it to replication.
    fn issue(&mut self, record: Record) {
        if let Record::Delete(key) = &record {
            self.translators.remove(key);
            self.tails.remove(key);
            self.restoring.remove(key);
            self.queued.remove(key);
            self.forged_acks.remove(key);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = self.records.send((seq, record));
        self.stats.last_seq.store(seq, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.tracker.len() as u64, Ordering::Relaxed);
    }

    fn on_command(&mut self, command: QueueCommand) {
        match command {
            QueueCommand::Acked(seq) => {
                self.acked = self.acked.max(seq);
                self.stats.acked_seq.store(self.acked, Ordering::Relaxed);
            }
            QueueCommand::SetHolding(on) => {
                if self.holding != on {
                    tracing::info!(holding = on, "outbound holding changed");
                }
                self.holding = on;
                self.stats.holding.store(on, Ordering::Relaxed);
                if !on {
                    self.release_all();
                }
            }
            QueueCommand::ForgetSessions => {
                if !self.master {
                    self.forget_reign();
                }
            }
            QueueCommand::SetRole(master) => {
                if self.master && !master {
                    self.forget_reign();
                }
                self.master = master;
            }
            QueueCommand::Park {
                states,
                promoted_at,
            } => {
                self.restore_origin = Some(promoted_at);
                self.park(states);
            }
            QueueCommand::AppDied => self.on_app_died(),
            QueueCommand::ServiceReady => self.restore_parked(),
            QueueCommand::Freeze(on) => self.freeze(on),
            QueueCommand::SetEventLog(events) => self.events = Some(events),
            QueueCommand::Snapshot(reply) => {
                let _ = reply.send((self.next_seq - 1, self.tracker.snapshot()));
            }
            QueueCommand::Sessions(reply) => {
                let _ = reply.send(self.tracker.sessions().cloned().collect());
            }
            QueueCommand::Stop => {}
        }
    }

    /// The end of this node's reign: held packets and waiting closes dropped (never
    /// acknowledged by the backup; the new master retransmits from its replica), every
    /// restore and translation abandoned, the tracker emptied.
    fn forget_reign(&mut self) {
        // Whatever is held was never acknowledged by the backup; the new
        // master retransmits from its replica.
        while let Some(mut held) = self.held.pop_front() {
            held.message.set_verdict(nfq::Verdict::Drop);
            self.verdict(held.message);
        }
        self.stats.held.store(0, Ordering::Relaxed);
        self.drop_closes();
        self.drop_barrier();
        self.barrier_until = None;
        self.outbox.clear();
        self.restore_began = None;
        self.frozen = false;
        self.awaiting_app.clear();
        self.restoring.clear();
        self.restore_queue.clear();
        self.queued.clear();
        self.forged_acks.clear();
        self.translators.clear();
        self.tails.clear();
        self.probations.clear();
        self.stats.restore_pending.store(0, Ordering::Relaxed);
        // The sessions now live on the other node; if this node becomes
        // master again it restores them afresh from its replica.
        let limits = self.tracker.limits();
        self.tracker = Tracker::new(self.vip, &self.ports, limits);
        self.stats.sessions.store(0, Ordering::Relaxed);
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

    /// Drops the peers' input held at the restore barrier (they retransmit).
    fn drop_barrier(&mut self) {
        for message in std::mem::take(&mut self.barrier) {
            self.verdict_with(message, nfq::Verdict::Drop);
        }
    }

    /// Releases, in order, every held packet the backup's acknowledgement covers.
    fn release(&mut self) {
        while self.held.front().is_some_and(|h| h.required <= self.acked) {
            if let Some(mut held) = self.held.pop_front() {
                held.message.set_verdict(nfq::Verdict::Accept);
                self.verdict(held.message);
            }
        }
        self.stats
            .held
            .store(self.held.len() as u64, Ordering::Relaxed);
    }

    fn release_all(&mut self) {
        while let Some(mut held) = self.held.pop_front() {
            held.message.set_verdict(nfq::Verdict::Accept);
            self.verdict(held.message);
        }
        self.stats.held.store(0, Ordering::Relaxed);
    }

    fn verdict_with(&mut self, mut message: nfq::Message, verdict: nfq::Verdict) {
        message.set_verdict(verdict);
        self.verdict(message);
    }

    fn verdict(&mut self, message: nfq::Message) {
        if let Err(e) = self.queue.verdict(message) {
            tracing::warn!(error = %e, "NFQUEUE verdict failed");
        }
    }

    /// Shutdown: held packets are dropped, not released (their state may never reach
    /// the backup; TCP retransmits them), and the table goes with the agent.
    fn stop(&mut self) {
        while let Some(mut held) = self.held.pop_front() {
            held.message.set_verdict(nfq::Verdict::Drop);
            self.verdict(held.message);
        }
        self.drop_closes();
        self.drop_barrier();
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
