//! The interceptor's decisions, sans-IO (quinn-proto's `Connection` shape): packets,
//! acknowledgements and commands go in with the time (`handle_packet`,
//! `handle_command`, `handle_timeout`); verdicts, packets to inject and numbered
//! records come out (`poll_output`, `poll_record`) with the next deadline
//! (`poll_timeout`). Track, hold and release in order (sync), pass (async), park,
//! restore pacing, the restore barrier, close quarantine and `AppDied`, probation,
//! freeze/thaw, not-master drops and translation all live here; the NFQUEUE thread
//! around it (`mod.rs`) owns only the queue, the raw socket with its outbox, the
//! eventfd and the clock. No `nfq`, no socket, no clock read in this file: the
//! packet handle is any [`Packet`], and the one look at the host (the service's
//! accept queue, for the barrier) is a function given at construction.
//!
//! State by concern: [`Holding`] (record numbers, held packets), [`Restores`]
//! (parked, queued, in-flight handshakes), [`Barrier`] (peers' input until a batch is
//! accepted), [`CloseQuarantine`] (the service's closes), translation (translators,
//! forged ACKs, tails, probations, recent resets).

use super::barrier::Barrier;
use super::close_quarantine::{self, CloseQuarantine};
use super::holding::{Holding, Offer};
use super::mirroring::MirrorCommand;
use super::restores::Restores;
use super::{
    InterceptorStats, QueueCommand, Sequenced, ESTABLISHED_IDLE_MS, HANDSHAKE_IDLE_MS, INJECT_MARK,
    MAX_HELD, TAIL_POLL,
};

/// Looks in a row a session must owe output or input before it is marked at risk.
pub const RISK_POLLS: u32 = 4;

/// How long a restored session's translator outlives the session in the tracker: the
/// segments that end a close (the peer's last ACK, the service's retransmitted FIN,
/// a late retransmission) still cross in the right space. Without it the last ACK was
/// dropped and the service's socket stayed in LAST-ACK, retransmitting its FIN
/// untranslated, for minutes. Twice Linux's TIME-WAIT.
pub const TRANSLATOR_LINGER: Duration = Duration::from_secs(120);

/// At most this many ended sessions' translators linger (the oldest go first).
pub const MAX_LINGERING: usize = 65_536;
use crate::recovery::divergence::{Divergence, Probation};
use crate::recovery::feed::Feed;
use crate::recovery::freeze::zero_window;
use crate::recovery::tail::Tail;
use crate::recovery::translate::{TranslateError, Translator, Verdict};
use crate::session::tracker::{Rejection, Tracker, TrackerLimits};
use crate::tcp::peek::Peek;
use crate::tcp::PacketError;
use nonstop_shared::session::{Record, SessionKey, SessionState};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A queued packet as the core sees it (the NFQUEUE message in the agent).
pub trait Packet {
    /// The IPv4 packet.
    fn payload(&self) -> &[u8];
    /// Replaces the packet (a translated or rewritten one).
    fn set_payload(&mut self, packet: Vec<u8>);
    /// The packet's firewall mark (ours on injected packets: [`INJECT_MARK`]).
    fn mark(&self) -> u32;
    /// Whether the queue captured less than the whole packet (dropped, never
    /// accepted: the core cannot see what it would let through).
    fn truncated(&self) -> bool {
        false
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Accept,
    /// Drop it.
    Drop,
}

/// Something for the thread to carry out, in this order.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<M> {
    /// Give this packet its verdict.
    Verdict(M, Decision),
    /// Send this packet from the raw socket.
    Inject(Vec<u8>),
    /// Forget the packets still waiting for the raw socket (this node stopped
    /// serving: they belong to the other node's sessions now).
    ForgetInjections,
    /// Continue these processes (`SIGCONT`): the service, stopped while a planned
    /// switchover read its sockets' queues, may go on (this node no longer serves,
    /// or the switchover was called off).
    Continue(Vec<i32>),
}

/// The service's accept queues on the service ports, summed over its listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueues {
    /// Connections completed by the kernel, not `accept()`ed yet.
    pub queued: u64,
    /// What the queues hold at most (the `listen()` backlogs); `u64::MAX` unknown.
    pub limit: u64,
}

impl AcceptQueues {
    /// Connections the queues can still take.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.queued)
    }
}

/// Looks at the service's listening sockets on these ports.
pub type AcceptProbe = Box<dyn FnMut(&[u16]) -> AcceptQueues + Send>;

/// Settings of the core.
pub struct CoreConfig {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Service ports.
    pub ports: Vec<u16>,
    /// Tracker limits.
    pub limits: TrackerLimits,
    /// Sessions loaded from disk (tracked from the start).
    pub restored: Vec<SessionState>,
    /// The number of the first record.
    pub first_seq: u64,
}

/// Every decision of the NFQUEUE worker.
pub struct Interceptor<M> {
    pub(super) tracker: Tracker,
    pub(super) stats: Arc<InterceptorStats>,
    /// Record numbers and the outbound packets waiting for the backup.
    pub(super) holding: Holding<M>,
    pub(super) master: bool,
    pub(super) vip: Ipv4Addr,
    pub(super) ports: Vec<u16>,
    /// Sessions parked, queued for a handshake slot, or with a forged SYN in flight.
    pub(super) restores: Restores,
    /// Forged ACK sent (value: the ACK number it carries), to let it through once.
    pub(super) forged_acks: HashMap<SessionKey, u32>,
    pub(super) translators: HashMap<SessionKey, Translator>,
    /// Ended restored sessions whose translator is kept until the deadline
    /// ([`TRANSLATOR_LINGER`]); a new SYN on the 4-tuple ends it at once.
    pub(super) lingering: HashMap<SessionKey, Instant>,
    /// Restored sessions whose replicated tail the peer has not acknowledged yet.
    pub(super) tails: HashMap<SessionKey, Tail>,
    /// When the tails' timers were last looked at.
    pub(super) tails_checked: Option<Instant>,
    /// Restored sessions whose handed-over input the service has not taken yet.
    pub(super) feeds: HashMap<SessionKey, Feed>,
    /// This node just became master and the replicated sessions are not parked yet
    /// ([`QueueCommand::Park`] or [`QueueCommand::ServiceReady`] ends it).
    pub(super) awaiting_park: bool,
    /// The service's processes, stopped while a planned switchover read its sockets'
    /// queues: continued once this node stops serving or the freeze ends.
    pub(super) stopped: Vec<i32>,
    /// The sockets' queues were handed over in this reign: the service is stopped,
    /// its queues are in the replica, nothing here may mark a session at risk.
    pub(super) handed_over: bool,
    /// Which sessions hold output not sent or input not read (master).
    pub(super) risk: crate::session::risk::RiskMonitor,
    pub(super) restore_began: Option<Instant>,
    /// Counters at the start of the current restore, for its report.
    pub(super) restored_before: u64,
    pub(super) failed_before: u64,
    pub(super) events: Option<Arc<crate::events::EventLog>>,
    /// The service's closes, held a moment in case it is dying.
    pub(super) closing: CloseQuarantine<M>,
    /// Restored sessions (async mode) whose peer has not yet proven it is in step.
    pub(super) probations: HashMap<SessionKey, Probation>,
    /// Sessions this node reset, and when: the app's late packets are dropped.
    pub(super) reset_recently: HashMap<SessionKey, Instant>,
    /// Per-session restore times (µs) of the restore under way.
    pub(super) restore_times_us: Vec<u64>,
    /// Peers are frozen: every outbound segment announces a zero window.
    pub(super) frozen: bool,
    /// Peers' input to restored sessions, held until the whole batch is restored
    /// and the service has accepted every connection of it.
    pub(super) barrier: Barrier<M>,
    /// The promotion (or service death) the restore under way answers.
    pub(super) restore_origin: Option<Instant>,
    /// The service's accept queues (for the barrier).
    pub(super) accept_probe: AcceptProbe,
    /// The service's accept queues at the last look, and when (restore pacing).
    pub(super) accept_seen: Option<(Instant, AcceptQueues)>,
    /// Hot replica: the mirrors (backup) and whether input is replicated (master).
    pub(super) mirrors: crate::session::mirror::Mirrors,
    /// Hot replica, after a planned switchover: peers' input is held until the new
    /// backup acknowledged a record from this number on (its snapshot), so its
    /// mirrors miss no input (see `mirroring.rs`).
    pub(super) input_gate: Option<(u64, Instant)>,
    /// The peers' input waiting at the gate, in order.
    pub(super) gated_input: VecDeque<M>,
    /// The time of the current input.
    pub(super) now: Instant,
    /// Wall-clock milliseconds of the current input (session activity, expiry).
    pub(super) now_ms: u64,
    /// When idle sessions were last expired.
    last_expiry: Instant,
    /// Verdicts and injections, in order.
    output: VecDeque<Output<M>>,
    /// Numbered records for replication.
    records: VecDeque<Sequenced>,
}

impl<M: Packet> Interceptor<M> {
    /// A core for `config` at `now`; `accept_probe` looks at the service's accept
    /// queues; counters go to `stats`.
    pub fn new(
        config: CoreConfig,
        stats: Arc<InterceptorStats>,
        accept_probe: AcceptProbe,
        now: Instant,
    ) -> Interceptor<M> {
        let mut tracker = Tracker::new(config.vip, &config.ports, config.limits);
        tracker.restore(config.restored);
        stats
            .sessions
            .store(tracker.len() as u64, Ordering::Relaxed);
        Interceptor {
            tracker,
            stats,
            holding: Holding::new(config.first_seq, MAX_HELD),
            master: false,
            vip: config.vip,
            ports: config.ports,
            restores: Restores::default(),
            forged_acks: HashMap::new(),
            translators: HashMap::new(),
            lingering: HashMap::new(),
            tails: HashMap::new(),
            tails_checked: None,
            feeds: HashMap::new(),
            awaiting_park: false,
            stopped: Vec::new(),
            handed_over: false,
            risk: crate::session::risk::RiskMonitor::new(RISK_POLLS),
            restore_began: None,
            restored_before: 0,
            failed_before: 0,
            events: None,
            closing: CloseQuarantine::new(close_quarantine::CLOSE_GRACE),
            probations: HashMap::new(),
            reset_recently: HashMap::new(),
            restore_times_us: Vec::new(),
            frozen: false,
            barrier: Barrier::new(MAX_HELD),
            restore_origin: None,
            accept_probe,
            accept_seen: None,
            mirrors: crate::session::mirror::Mirrors::new(),
            input_gate: None,
            gated_input: VecDeque::new(),
            now,
            now_ms: 0,
            last_expiry: now,
            output: VecDeque::new(),
            records: VecDeque::new(),
        }
    }

    /// Holds at most `bytes` bytes of outbound packets (`session.max_held_bytes`);
    /// beyond, new output is dropped and counted (`overflow_drops`).
    pub fn set_max_held_bytes(&mut self, bytes: usize) {
        self.holding.set_byte_limit(bytes);
    }

    /// Sessions tracked.
    pub fn sessions(&self) -> usize {
        self.tracker.len()
    }

    /// A packet from the queue (`now_ms`: wall-clock milliseconds).
    pub fn handle_packet(&mut self, message: M, now: Instant, now_ms: u64) {
        self.now = now;
        self.now_ms = now_ms;
        self.on_packet(message);
    }

    /// A command (acknowledgements included). [`QueueCommand::Stop`] drops what is
    /// held ([`Interceptor::stop`]).
    pub fn handle_command(&mut self, command: QueueCommand, now: Instant, now_ms: u64) {
        self.now = now;
        self.now_ms = now_ms;
        if matches!(command, QueueCommand::Stop) {
            self.stop();
            return;
        }
        self.on_command(command);
    }

    /// Time passed (call after each batch of packets and commands): releases what
    /// the acknowledgements cover, lets due closes go, checks probations, tails and
    /// the barrier, paces restores, expires idle sessions once a second.
    pub fn handle_timeout(&mut self, now: Instant, now_ms: u64) {
        self.now = now;
        self.now_ms = now_ms;
        if now.saturating_duration_since(self.last_expiry) >= Duration::from_secs(1) {
            self.last_expiry = now;
            self.expire_lingering();
            for record in self
                .tracker
                .expire(now_ms, HANDSHAKE_IDLE_MS, ESTABLISHED_IDLE_MS)
            {
                tracing::info!(session = %record.key(), "idle session expired");
                self.issue(record);
            }
        }
        self.release();
        self.release_closes();
        self.check_probations();
        self.check_tails();
        self.check_barrier();
        if self.restores.flying() > 0 || self.restores.waiting() > 0 {
            self.pump_restores();
        }
        self.mirror_timeout();
        self.check_input_gate();
    }

    /// Keeps an ended session's translator for [`TRANSLATOR_LINGER`] (bounded by
    /// [`MAX_LINGERING`]: the one due first goes when the set is full).
    fn linger(&mut self, key: SessionKey) {
        if self.lingering.len() >= MAX_LINGERING {
            if let Some(oldest) = self
                .lingering
                .iter()
                .min_by_key(|(_, due)| **due)
                .map(|(k, _)| *k)
            {
                self.lingering.remove(&oldest);
                self.translators.remove(&oldest);
            }
        }
        self.lingering.insert(key, self.now + TRANSLATOR_LINGER);
    }

    /// Drops the translators of ended sessions whose linger is over.
    fn expire_lingering(&mut self) {
        let now = self.now;
        let translators = &mut self.translators;
        self.lingering.retain(|key, due| {
            let keep = *due > now;
            if !keep {
                translators.remove(key);
            }
            keep
        });
    }

    /// How long the thread may sleep before [`Interceptor::handle_timeout`] is due.
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        let mut timeout = if self.restores.waiting() > 0 {
            // Queued for room in the service's accept queue.
            super::restore::ACCEPT_POLL
        } else if self.restores.flying() == 0 {
            Duration::from_millis(1000)
        } else {
            Duration::from_millis(50)
        };
        if self.barrier.is_waiting() {
            timeout = Duration::from_millis(1);
        }
        if !self.tails.is_empty() || !self.feeds.is_empty() {
            timeout = timeout.min(TAIL_POLL);
        }
        if let Some(due) = self.closing.next_due(now) {
            timeout = timeout.min(due + Duration::from_millis(1));
        }
        if self.input_gate.is_some() {
            timeout = timeout.min(Duration::from_millis(5));
        }
        if let Some(due) = self.mirrors.deadline() {
            timeout = timeout.min(due.saturating_duration_since(now) + Duration::from_millis(1));
        }
        timeout
    }

    /// The next verdict or packet to inject, in the order they were decided.
    pub fn poll_output(&mut self) -> Option<Output<M>> {
        self.output.pop_front()
    }

    /// The next numbered record for replication.
    pub fn poll_record(&mut self) -> Option<Sequenced> {
        self.records.pop_front()
    }

    /// Shutdown: held packets are dropped, not released (their state may never reach
    /// the backup; TCP retransmits them).
    pub fn stop(&mut self) {
        self.drop_held();
        self.drop_closes();
        self.drop_barrier();
    }

    pub(super) fn verdict_with(&mut self, message: M, decision: Decision) {
        self.output.push_back(Output::Verdict(message, decision));
    }

    /// Queues a forged or retransmitted packet for the raw socket.
    pub(super) fn inject(&mut self, packet: Vec<u8>) {
        self.output.push_back(Output::Inject(packet));
    }

    pub(super) fn on_packet(&mut self, message: M) {
        // Fail-closed: a packet not seen whole, or not IPv4/TCP as the queue rules
        // promise, is dropped and counted — never passed on untracked.
        if message.truncated() {
            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
            self.verdict_with(message, Decision::Drop);
            return;
        }
        let Some(peek) = Peek::of(message.payload(), self.vip) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            self.verdict_with(message, Decision::Drop);
            return;
        };
        let counter = if peek.outbound {
            &self.stats.packets_out
        } else {
            &self.stats.packets_in
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !peek.outbound
            && peek.payload_len > 0
            && self.master
            && tracing::enabled!(tracing::Level::DEBUG)
            && self
                .tracker
                .session(&peek.key)
                .is_some_and(|s| peek.seq == s.peer_isn.wrapping_add(1))
        {
            tracing::debug!(session = %peek.key, len = peek.payload_len, mark = message.mark(), "first input arrives");
        }
        let Some(message) = self.mirror_packet(message, &peek) else {
            return;
        };
        // Our own forged handshake and fed input into the local stack: deliver
        // untouched, untracked.
        if !peek.outbound && (self.is_forged_inbound(&peek) || self.is_fed(&peek)) {
            self.verdict_with(message, Decision::Accept);
            return;
        }
        // Our own retransmissions to the peer: already in the peer's sequence space.
        if peek.outbound && message.mark() == INJECT_MARK {
            self.track(message.payload());
            self.verdict_with(message, Decision::Accept);
            return;
        }
        // Sealed for a hand-over: the peers' data goes to the new master (the receive
        // queues read must stay final; the peers retransmit).
        if !peek.outbound && self.handed_over && (peek.payload_len > 0 || peek.fin) {
            self.verdict_with(message, Decision::Drop);
            return;
        }
        // Peers' packets of sessions this node does not track, while it is not master
        // or has just become master and not yet parked the replicated sessions (the
        // VIP is added before the promotion reaches this thread): the kernel has no
        // socket for them and would reset them. TCP retransmits.
        if !peek.outbound
            && (!self.master || (self.awaiting_park && !peek.syn))
            && self.tracker.session(&peek.key).is_none()
        {
            self.stats.not_master_drops.fetch_add(1, Ordering::Relaxed);
            self.verdict_with(message, Decision::Drop);
            return;
        }
        if peek.outbound && !self.master {
            self.stats.not_master_drops.fetch_add(1, Ordering::Relaxed);
            self.verdict_with(message, Decision::Drop);
            return;
        }
        if self.restores.pending_for(&peek.key) {
            if peek.outbound && peek.syn && peek.ack {
                self.complete_restore(peek.key, message.payload());
            } else if !peek.outbound {
                // The peer, before the restored socket exists: note it, drop it;
                // the peer retransmits.
                self.track(message.payload());
            }
            self.verdict_with(message, Decision::Drop);
            return;
        }
        if peek.outbound
            && (self.closing.holds(&peek.key)
                || ((peek.fin || peek.rst) && self.tracker.session(&peek.key).is_some()))
        {
            self.closing.hold(peek.key, message, self.now);
            self.stats
                .closes_waiting
                .store(self.closing.len() as u64, Ordering::Relaxed);
            return;
        }
        self.forward(message, peek);
    }

    /// Translates (restored sessions), tracks and passes on or holds a packet.
    pub(super) fn forward(&mut self, mut message: M, peek: Peek) {
        if !peek.outbound && peek.syn && !peek.ack && self.lingering.remove(&peek.key).is_some() {
            // A new connection on the 4-tuple of an ended restored session: its
            // numbers have nothing to do with the old translation.
            self.translators.remove(&peek.key);
        }
        if self.frozen && peek.outbound {
            let mut packet = message.payload().to_vec();
            if zero_window(&mut packet).is_ok() {
                message.set_payload(packet);
            }
        }
        if peek.outbound && self.reset_recently.contains_key(&peek.key) {
            self.verdict_with(message, Decision::Drop);
            return;
        }
        if self.translators.contains_key(&peek.key) {
            let mut packet = message.payload().to_vec();
            if peek.outbound {
                if let Some(probation) = self.probations.get_mut(&peek.key) {
                    if peek.ack {
                        probation.app_acked(peek.ack_no);
                    }
                    if !probation.verified() && (peek.payload_len > 0 || peek.fin) {
                        // Not before the peer has shown where it stands; the app
                        // kernel retransmits.
                        self.verdict_with(message, Decision::Drop);
                        return;
                    }
                    if probation.finished() {
                        self.probations.remove(&peek.key);
                    }
                }
                let Some(translator) = self.translators.get_mut(&peek.key) else {
                    self.verdict_with(message, Decision::Drop);
                    return;
                };
                match translator.outbound(&mut packet) {
                    Ok(Verdict::Accept)
                        if peek.rst && self.reset_outside_window(&peek, &packet) =>
                    {
                        self.verdict_with(message, Decision::Drop);
                    }
                    Ok(Verdict::Accept) => {
                        self.track(&packet);
                        self.feed_input(&peek);
                        message.set_payload(packet);
                        self.hold_or_accept(message);
                    }
                    Ok(Verdict::Drop) | Err(_) => {
                        self.verdict_with(message, Decision::Drop);
                    }
                }
            } else {
                self.forward_inbound_translated(message, peek, packet);
            }
            return;
        }
        if peek.outbound
            && self
                .tracker
                .exceeds_unacked_limit(&peek.key, peek.seq, peek.payload_len)
        {
            // Backpressure: the replica keeps no more of this session's output; it
            // waits in the service's kernel (sent again once the peer acked some).
            self.stats
                .unacked_bound_drops
                .fetch_add(1, Ordering::Relaxed);
            self.verdict_with(message, Decision::Drop);
            return;
        }
        if self.try_track(message.payload()).is_err() {
            // Malformed (counted): dropped, as the core cannot say what it is.
            self.verdict_with(message, Decision::Drop);
            return;
        }
        if peek.outbound {
            self.hold_or_accept(message);
        } else {
            self.verdict_with(message, Decision::Accept);
        }
    }

    /// The service kernel's RST of a restored session, translated: one the peer would
    /// ignore — its sequence number outside what the peer can have received,
    /// `[snd_una, snd_nxt]` — is refused (counted with the out-of-window segments)
    /// instead of ending the session here and on the backup while the peer goes on.
    /// Seen when the first peer segments released after a large restore reached a
    /// connection the service kernel had not finished: it answered with a reset the
    /// peer ignored, and the next crash lost the session.
    pub(super) fn reset_outside_window(&mut self, peek: &Peek, translated: &[u8]) -> bool {
        let Some(session) = self.tracker.session(&peek.key) else {
            return false;
        };
        let Some(seq) = Peek::of(translated, self.vip).map(|p| p.seq) else {
            return false;
        };
        let from_una = seq.wrapping_sub(session.snd_una);
        let window = session.snd_nxt.wrapping_sub(session.snd_una);
        if from_una <= window {
            return false;
        }
        self.stats
            .segments_out_of_window
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            session = %peek.key,
            seq,
            snd_una = session.snd_una,
            snd_nxt = session.snd_nxt,
            "service reset outside the peer's window refused"
        );
        true
    }

    /// A peer's segment of a restored session: checked against the kernel's rules in
    /// the peer's sequence space first (RFC 5961: a segment the kernel would refuse
    /// passes on untouched — never translated, whose clamping could make a forged ACK
    /// acceptable — and changes nothing), then translated into the service's space.
    pub(super) fn forward_inbound_translated(
        &mut self,
        mut message: M,
        peek: Peek,
        mut packet: Vec<u8>,
    ) {
        let batch_open = self.restore_began.is_some() || self.barrier.is_waiting();
        if batch_open
            && (peek.payload_len > 0 || peek.fin)
            && self.tracker.rejection(&packet).is_none()
        {
            // The restore barrier: no peer's input reaches the new service
            // before every session of the batch is connected to it, so a
            // service that relays between clients (chat) misses no one.
            if let Err(message) = self.barrier.hold(message) {
                self.verdict_with(message, Decision::Drop);
            }
            return;
        }
        if let Some(rejection) = self.track(&packet) {
            if rejection == Rejection::UnsentAck && self.unsent_ack_proves_divergence(&peek) {
                self.verdict_with(message, Decision::Drop);
                self.reset_diverged(peek.key, Some(peek.ack_no), Divergence::AckBeyondSent);
            } else {
                self.verdict_with(message, Decision::Accept);
            }
            return;
        }
        self.feed_tail(&peek);
        let translator = self.translators.get_mut(&peek.key);
        let decision = match translator.map(|t| t.inbound(&mut packet)) {
            Some(Ok(Verdict::Accept)) => {
                if let Some(probation) = self.probations.get_mut(&peek.key) {
                    let ack = peek.ack.then_some(peek.ack_no);
                    probation.peer_segment(peek.seq, peek.payload_len, ack, self.now);
                }
                message.set_payload(packet);
                Decision::Accept
            }
            Some(Err(TranslateError::AckBeyondSent { ack, .. })) => {
                // The resets go out before the verdict, as they always did.
                self.reset_diverged(peek.key, Some(ack), Divergence::AckBeyondSent);
                Decision::Drop
            }
            _ => Decision::Drop,
        };
        self.verdict_with(message, decision);
    }

    /// An acceptable peer segment whose ACK covers bytes the replica never saw sent:
    /// in async mode (a session on probation) the proof that the peer saw more than
    /// the replica — when it cannot be a blind forgery: its sequence number is exactly
    /// where the peer stands, or the same ACK came twice ([`Probation::unsent_ack`]).
    pub(super) fn unsent_ack_proves_divergence(&mut self, peek: &Peek) -> bool {
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
    pub(super) fn track(&mut self, packet: &[u8]) -> Option<Rejection> {
        self.try_track(packet).ok().flatten()
    }

    /// [`Interceptor::track`], telling a malformed packet (counted) apart.
    pub(super) fn try_track(&mut self, packet: &[u8]) -> Result<Option<Rejection>, ()> {
        match self.tracker.on_packet(packet, self.now_ms) {
            Ok(mut outcome) => {
                if self.replicates_input() {
                    self.carry_input(packet, &mut outcome);
                    self.note_first_input(packet, &outcome);
                }
                if let Some(rejection) = outcome.rejected {
                    self.stats
                        .segments_out_of_window
                        .fetch_add(1, Ordering::Relaxed);
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        let session = self.tracker.session(&outcome.key);
                        let seg = crate::tcp::segment::Segment::parse(packet).ok();
                        tracing::debug!(
                            session = %outcome.key,
                            ?rejection,
                            seq = seg.as_ref().map(|s| s.seq),
                            len = seg.as_ref().map(|s| s.payload.len()),
                            rcv_nxt = session.map(|s| s.rcv_nxt),
                            our_window = session.map(|s| s.our_window),
                            "peer segment refused"
                        );
                    }
                }
                for record in outcome.records {
                    self.issue(record);
                }
                Ok(outcome.rejected)
            }
            // Not the service's: nothing to track, nothing to hide.
            Err(PacketError::NotOurs) => Ok(None),
            // A new session beyond `session.max_sessions` (counted by the tracker):
            // its SYN is dropped, the peer tries again — a session the backup would
            // not know is never served.
            Err(PacketError::TooManySessions) => Err(()),
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "packet not tracked");
                Err(())
            }
        }
    }

    /// In sync mode an outbound packet waits until the backup has acknowledged the
    /// record current now (and everything held before it).
    pub(super) fn hold_or_accept(&mut self, message: M) {
        let size = message.payload().len();
        match self.holding.offer_sized(message, size) {
            Offer::Pass(message) => self.verdict_with(message, Decision::Accept),
            Offer::Held => {
                self.stats
                    .held
                    .store(self.holding.len() as u64, Ordering::Relaxed);
                self.stats
                    .held_bytes
                    .store(self.holding.bytes() as u64, Ordering::Relaxed);
            }
            Offer::Overflow(message) => {
                self.stats.overflow_drops.fetch_add(1, Ordering::Relaxed);
                self.verdict_with(message, Decision::Drop);
            }
        }
    }

    /// Numbers a record and hands it to replication.
    pub(super) fn issue(&mut self, record: Record) {
        if let Record::Delete(key) = &record {
            if self.translators.contains_key(key) {
                self.linger(*key);
            }
            self.tails.remove(key);
            self.feeds.remove(key);
            self.restores.forget(key);
            self.forged_acks.remove(key);
        }
        let seq = self.holding.number();
        self.records.push_back((seq, record));
        self.stats.last_seq.store(seq, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.tracker.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn on_command(&mut self, command: QueueCommand) {
        match command {
            QueueCommand::Acked(seq) => {
                self.holding.handle_ack(seq);
                self.stats
                    .acked_seq
                    .store(self.holding.acked(), Ordering::Relaxed);
            }
            QueueCommand::SetHolding(on) => {
                if self.holding.set_on(on) {
                    tracing::info!(holding = on, "outbound holding changed");
                }
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
                    self.keep_as_mirrors();
                    self.forget_reign();
                }
                self.awaiting_park = master && (self.awaiting_park || !self.master);
                self.master = master;
                self.publish_pending();
                if !master {
                    // Every outbound packet is dropped from now on: the stopped
                    // service may go on.
                    self.continue_stopped();
                }
            }
            QueueCommand::HandOver {
                chunks,
                stopped,
                reply,
            } => {
                self.stopped.extend(stopped);
                let failed = self.hand_over(chunks);
                let _ = reply.send(failed);
            }
            QueueCommand::Observe(sockets) => self.observe(&sockets),
            QueueCommand::Seal => {
                if self.master {
                    self.handed_over = true;
                }
            }
            QueueCommand::ResetUnsent(keys) => {
                for key in keys {
                    self.reset_unsent(key);
                }
            }
            QueueCommand::Park {
                states,
                promoted_at,
            } => {
                self.restore_origin = Some(promoted_at);
                self.awaiting_park = false;
                self.park(states);
                self.publish_pending();
            }
            QueueCommand::AppDied => self.on_app_died(),
            QueueCommand::DeadSockets(sockets) => self.on_dead_sockets(&sockets),
            QueueCommand::ServiceReady => {
                self.awaiting_park = false;
                self.restore_parked();
                self.publish_pending();
            }
            QueueCommand::Freeze(on) => {
                self.freeze(on);
                if !on {
                    self.handed_over = false;
                    self.continue_stopped();
                }
            }
            QueueCommand::SetEventLog(events) => self.events = Some(events),
            QueueCommand::Hot { backlog } => self.on_mirror_command(MirrorCommand::Enable(backlog)),
            QueueCommand::Mirror(records) => {
                self.on_mirror_command(MirrorCommand::Records(records));
            }
            QueueCommand::MirrorSnapshot(records) => {
                self.on_mirror_command(MirrorCommand::Snapshot(records));
            }
            QueueCommand::ReplicaServiceDied => {
                self.on_mirror_command(MirrorCommand::ServiceDied);
            }
            QueueCommand::ReplicaStates(reply) => {
                self.on_mirror_command(MirrorCommand::States(reply));
            }
            QueueCommand::Snapshot(reply) => {
                let _ = reply.send((self.holding.last_seq(), self.tracker.snapshot()));
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
    pub(super) fn forget_reign(&mut self) {
        // Whatever is held was never acknowledged by the backup; the new
        // master retransmits from its replica.
        self.drop_held();
        self.drop_closes();
        self.drop_barrier();
        self.output.push_back(Output::ForgetInjections);
        self.restore_began = None;
        self.frozen = false;
        self.restores.clear();
        self.forged_acks.clear();
        self.translators.clear();
        self.lingering.clear();
        self.tails.clear();
        self.feeds.clear();
        self.handed_over = false;
        self.probations.clear();
        self.stats.restore_pending.store(0, Ordering::Relaxed);
        // The sessions now live on the other node; if this node becomes
        // master again it restores them afresh from its replica.
        let limits = self.tracker.limits();
        self.tracker = Tracker::new(self.vip, &self.ports, limits);
        self.stats.sessions.store(0, Ordering::Relaxed);
    }

    /// A look at the service's sockets: sessions holding output not sent or input not
    /// read for [`RISK_POLLS`] looks are marked at risk (replicated), clean ones
    /// unmarked. Not after a hand-over: the queues are in the replica then.
    pub(super) fn observe(&mut self, sockets: &[crate::session::risk::Observation]) {
        if !self.master || self.handed_over {
            return;
        }
        let tracker = &self.tracker;
        let changes = self.risk.observe(sockets, |key| {
            tracker.session(key).map(|s| {
                let n = &s.negotiated;
                crate::session::risk::Tracked {
                    in_flight: s.snd_nxt.wrapping_sub(s.snd_una),
                    peer_window: u32::from(s.peer_window) << n.peer_wscale.unwrap_or(0).min(14),
                    mss: u32::from(if n.peer_mss == 0 { 536 } else { n.peer_mss }),
                    marked: s.at_risk,
                }
            })
        });
        for (key, at_risk) in changes {
            tracing::debug!(session = %key, at_risk, "session risk changed");
            if let Some(record) = self.tracker.set_at_risk(&key, at_risk) {
                self.issue(record);
            }
        }
        let marked = self.tracker.sessions().filter(|s| s.at_risk).count();
        self.stats
            .sessions_at_risk
            .store(marked as u64, Ordering::Relaxed);
    }

    /// Lets the service processes a switchover stopped go on.
    pub(super) fn continue_stopped(&mut self) {
        if !self.stopped.is_empty() {
            tracing::info!(pids = ?self.stopped, "service processes continued");
            let pids = std::mem::take(&mut self.stopped);
            self.output.push_back(Output::Continue(pids));
        }
    }

    /// Drops the peers' input held at the restore barrier (they retransmit).
    pub(super) fn drop_barrier(&mut self) {
        for message in self.barrier.take_all().collect::<Vec<_>>() {
            self.verdict_with(message, Decision::Drop);
        }
    }

    /// Releases, in order, every held packet the backup's acknowledgement covers.
    pub(super) fn release(&mut self) {
        while let Some(message) = self.holding.poll_released() {
            self.verdict_with(message, Decision::Accept);
        }
        self.stats
            .held
            .store(self.holding.len() as u64, Ordering::Relaxed);
        self.stats
            .held_bytes
            .store(self.holding.bytes() as u64, Ordering::Relaxed);
    }

    /// Releases every held packet, in order (holding went off).
    pub(super) fn release_all(&mut self) {
        for message in self.holding.take_all() {
            self.verdict_with(message, Decision::Accept);
        }
        self.stats.held.store(0, Ordering::Relaxed);
        self.stats.held_bytes.store(0, Ordering::Relaxed);
    }

    /// Drops every held packet: never acknowledged by the backup, so it must not
    /// leave (TCP retransmits, or the new master from its replica).
    pub(super) fn drop_held(&mut self) {
        for message in self.holding.take_all() {
            self.verdict_with(message, Decision::Drop);
        }
        self.stats.held.store(0, Ordering::Relaxed);
        self.stats.held_bytes.store(0, Ordering::Relaxed);
    }
}
