//! The interceptor's restore work (design §4): restoring sessions into the local
//! service (forged handshakes, paced), holding and dropping a dying service's closes,
//! the async-mode probation and resets, and the zero-window freeze of a planned
//! switchover's drain. Methods of the sans-IO [`Interceptor`] (`core.rs`), split out by concern.

use super::machine::{Decision, Interceptor, Packet};
use super::restores;
use super::{percentile, RESET_QUIET, TAIL_POLL};
use crate::recovery::divergence::{reset_to_app, reset_to_peer, Divergence, Probation};
use crate::recovery::feed::Feed;
use crate::recovery::forge::{forged_ack, parse_synack};
use crate::recovery::freeze::freeze_ack;
use crate::recovery::tail::Tail;
use crate::recovery::translate::{duplicate_acks, probe, window_update, Translator};
use crate::tcp::peek::Peek;
use nonstop_shared::session::{Phase, Record, SessionKey, SessionState};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How often restore pacing looks at the service's accept queues (a sock_diag dump
/// of its listeners). Completed connections wait in the queue until the service
/// accepts them; a look this often keeps the pacing close to the queue's room.
pub const ACCEPT_POLL: std::time::Duration = std::time::Duration::from_millis(5);

impl<M: Packet> Interceptor<M> {
    /// Starts (or ends) a freeze: tells every peer at once with a pure ACK announcing
    /// a zero window (or the window reopened).
    pub(super) fn freeze(&mut self, on: bool) {
        let on = on && self.master;
        if self.frozen == on {
            return;
        }
        self.frozen = on;
        let acks: Vec<Vec<u8>> = self
            .tracker
            .sessions()
            .filter(|s| matches!(s.phase, Phase::Established | Phase::PeerClosed))
            .map(|s| if on { freeze_ack(s) } else { window_update(s) })
            .collect();
        tracing::info!(
            frozen = on,
            sessions = acks.len(),
            "peers' windows frozen or reopened"
        );
        for ack in acks {
            self.inject(ack);
        }
    }

    /// A peer's acceptable segment of a restored session: its ACK and window drive the
    /// replicated tail ([`Tail`]).
    pub(super) fn feed_tail(&mut self, peek: &Peek) {
        if !peek.ack {
            return;
        }
        let (Some(tail), Some(state)) = (
            self.tails.get_mut(&peek.key),
            self.tracker.session(&peek.key),
        ) else {
            return;
        };
        let shift = state.negotiated.peer_wscale.unwrap_or(0).min(14);
        let window = u32::from(state.peer_window) << shift;
        let has_data = peek.payload_len > 0 || peek.fin;
        let packets = tail.on_ack(peek.ack_no, window, has_data, state.rcv_nxt, self.now);
        if tail.done() {
            self.tails.remove(&peek.key);
        }
        for packet in packets {
            self.inject(packet);
        }
    }

    /// Whether an inbound packet is input this node feeds a restored service.
    pub(super) fn is_fed(&self, peek: &Peek) -> bool {
        self.feeds
            .get(&peek.key)
            .is_some_and(|f| f.is_ours(peek.seq, peek.ack.then_some(peek.ack_no)))
    }

    /// The restored service's segment (translated and tracked): its ACK and window
    /// drive the feeding of handed-over input; once it has it all, the input is
    /// cleared here and on the backup.
    pub(super) fn feed_input(&mut self, peek: &Peek) {
        if !peek.ack || self.feeds.is_empty() {
            return;
        }
        let (Some(feed), Some(state), Some(t)) = (
            self.feeds.get_mut(&peek.key),
            self.tracker.session(&peek.key),
            self.translators.get(&peek.key),
        ) else {
            return;
        };
        let shift = state.negotiated.our_wscale.unwrap_or(0).min(14);
        let window = u32::from(state.our_window) << shift;
        let app_ack = t.app_ack(t.peer_acked());
        feed.set_peer_tsval(state.peer_tsval);
        let packets = feed.on_app_ack(peek.ack_no, window, app_ack, self.now);
        if feed.done() {
            self.feeds.remove(&peek.key);
            tracing::debug!(session = %peek.key, "handed-over input delivered");
            if let Some(record) = self.tracker.input_delivered(&peek.key) {
                self.issue(record);
            }
        }
        for packet in packets {
            self.inject(packet);
        }
    }

    /// The tails' retransmission and the feeds' refeed timers (rate-limited: this
    /// runs on the packet thread).
    pub(super) fn check_tails(&mut self) {
        let now = self.now;
        if (self.tails.is_empty() && self.feeds.is_empty())
            || self.tails_checked.is_some_and(|at| now < at + TAIL_POLL)
        {
            return;
        }
        self.tails_checked = Some(now);
        let mut packets = Vec::new();
        for (key, feed) in &mut self.feeds {
            if feed.deadline().is_some_and(|at| at <= now) {
                if let (Some(t), Some(state)) =
                    (self.translators.get(key), self.tracker.session(key))
                {
                    feed.set_peer_tsval(state.peer_tsval);
                    packets.extend(feed.poll(t.app_ack(t.peer_acked()), now));
                }
            }
        }
        for (key, tail) in &mut self.tails {
            if tail.deadline().is_some_and(|at| at <= now) {
                let rcv_nxt = self.tracker.session(key).map(|s| s.rcv_nxt);
                if let Some(rcv_nxt) = rcv_nxt {
                    packets.extend(tail.poll(rcv_nxt, now));
                }
            }
        }
        for packet in packets {
            self.inject(packet);
        }
    }

    /// Resets sessions whose peer never filled the hole before its data.
    pub(super) fn check_probations(&mut self) {
        if self.probations.is_empty() && self.reset_recently.is_empty() {
            return;
        }
        let now = self.now;
        self.reset_recently
            .retain(|_, at| now.saturating_duration_since(*at) < RESET_QUIET);
        let diverged: Vec<(SessionKey, Option<u32>, Divergence)> = self
            .probations
            .iter()
            .filter_map(|(key, p)| Some((*key, p.peer_ack(), p.check(now)?)))
            .collect();
        for (key, peer_ack, why) in diverged {
            self.reset_diverged(key, peer_ack, why);
        }
    }

    /// Ends a restored session whose peer saw state the replica lacked (design §3):
    /// an RST to the peer (matching its `rcv_nxt`) and one to the restored socket,
    /// the session deleted here and on the backup, counted and reported.
    pub(super) fn reset_diverged(
        &mut self,
        key: SessionKey,
        peer_ack: Option<u32>,
        why: Divergence,
    ) {
        self.translators.remove(&key);
        self.tails.remove(&key);
        self.feeds.remove(&key);
        self.probations.remove(&key);
        let app_rcv_nxt = self.tracker.session(&key).map(|s| s.rcv_nxt);
        let mut packets = Vec::new();
        if let Some(seq) = peer_ack {
            packets.push(reset_to_peer(&key, seq));
        }
        if let Some(seq) = app_rcv_nxt {
            packets.push(reset_to_app(&key, seq));
        }
        if let Some(record) = self.tracker.remove(&key) {
            self.issue(record);
        }
        self.reset_recently.insert(key, self.now);
        for packet in packets {
            self.inject(packet);
        }
        self.stats.sessions_reset.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(session = %key, reason = why.describe(), "restored session reset");
        if let Some(events) = &self.events {
            events.emit(nonstop_shared::control::EventKind::SessionReset {
                peer: format!("{}:{}", key.peer_ip, key.peer_port),
                reason: why.describe().to_owned(),
            });
        }
    }

    /// Lets the closes whose grace has passed go on their way.
    pub(super) fn release_closes(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        for message in self.closing.due(self.now) {
            match Peek::of(message.payload(), self.vip) {
                Some(peek) => self.forward(message, peek),
                None => self.verdict_with(message, Decision::Accept),
            }
        }
        self.stats
            .closes_waiting
            .store(self.closing.len() as u64, Ordering::Relaxed);
    }

    /// Drops every close waiting: they come from a service that is gone (or from a
    /// node that is no longer master).
    pub(super) fn drop_closes(&mut self) {
        let dropped = self.closing.take_all();
        self.stats
            .closes_dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        for message in dropped {
            self.verdict_with(message, Decision::Drop);
        }
        self.stats.closes_waiting.store(0, Ordering::Relaxed);
    }

    /// The service died: its closes never reach the peers, and each of its sessions
    /// waits (inbound packets noted and dropped, outbound ones dropped) until the
    /// restarted service listens.
    pub(super) fn on_app_died(&mut self) {
        self.drop_closes();
        self.restore_origin = Some(self.now);
        self.stats.app_deaths.fetch_add(1, Ordering::Relaxed);
        let (at_risk, parked): (Vec<SessionState>, Vec<SessionState>) = self
            .tracker
            .sessions()
            .filter(|s| {
                matches!(
                    s.phase,
                    Phase::Established | Phase::PeerClosed | Phase::LocalClosed
                )
            })
            .cloned()
            .partition(|s| s.at_risk);
        // The dead process's sockets took their unsent output and unread input with
        // them: a session that held some cannot be continued exactly — reset it
        // cleanly, as a takeover does, rather than restore it with a hole.
        for state in at_risk {
            if let Some(record) = self.tracker.remove(&state.key) {
                self.issue(record);
            }
            self.reset_at_risk_peer(&state);
        }
        tracing::warn!(
            sessions = parked.len(),
            "service died: its sessions wait for the restarted service"
        );
        for state in parked {
            self.translators.remove(&state.key);
            self.tails.remove(&state.key);
            self.feeds.remove(&state.key);
            self.forged_acks.remove(&state.key);
            self.restores.park(state);
        }
        self.publish_pending();
    }

    /// A look at the dead service's sockets, right after [`Interceptor::on_app_died`]
    /// parked its sessions: an orphaned socket still holding output its kernel never
    /// sent means output the restarted service will not write again — that session
    /// cannot be continued exactly and is reset cleanly instead of restored.
    pub(super) fn on_dead_sockets(&mut self, sockets: &[crate::session::risk::Observation]) {
        for o in sockets {
            if o.not_sent.is_some_and(|n| n > 0) {
                self.reset_parked(&o.key);
            }
        }
    }

    /// A parked session the dead service cannot have continued exactly: taken out of
    /// the restore, deleted everywhere, reset cleanly at the peer.
    pub(super) fn reset_parked(&mut self, key: &SessionKey) {
        if !self.restores.pending_for(key) {
            return;
        }
        let Some(state) = self.tracker.session(key).cloned() else {
            return;
        };
        self.restores.forget(key);
        if let Some(record) = self.tracker.remove(key) {
            self.issue(record);
        }
        self.reset_at_risk_peer(&state);
        self.publish_pending();
    }

    /// The restarted service listens: restore the parked sessions into it, from
    /// their latest tracked state.
    pub(super) fn restore_parked(&mut self) {
        let tracker = &self.tracker;
        let count = self.restores.unpark(|key| tracker.session(key).cloned());
        if count == 0 {
            return;
        }
        tracing::info!(sessions = count, "restoring sessions into the service");
        self.restore_began = Some(self.now);
        self.restored_before = self.stats.restored.load(Ordering::Relaxed);
        self.failed_before = self.stats.restore_failed.load(Ordering::Relaxed);
        self.pump_restores();
    }

    pub(super) fn is_forged_inbound(&mut self, peek: &Peek) -> bool {
        if peek.syn && !peek.ack {
            return self.restores.in_flight(&peek.key);
        }
        match self.forged_acks.get(&peek.key) {
            Some(&ack) if peek.ack && !peek.syn && peek.payload_len == 0 && peek.ack_no == ack => {
                self.forged_acks.remove(&peek.key);
                true
            }
            _ => false,
        }
    }

    /// Takes over replicated sessions (those not tracked yet) the moment this node
    /// becomes master: tracked and announced to the new backup in full, but *parked*
    /// — the peers' packets noted and dropped, the local kernel never sees them (it
    /// would answer with an RST) — until [`Worker::restore_parked`] once the service
    /// listens.
    pub(super) fn park(&mut self, states: Vec<SessionState>) {
        // Hot replica: sessions whose mirror is open and in step serve on from it.
        let states = self.adopt_mirrors(states);
        let (at_risk, fresh): (Vec<SessionState>, Vec<SessionState>) = states
            .into_iter()
            .filter(|s| self.tracker.session(&s.key).is_none())
            .filter(|s| {
                matches!(
                    s.phase,
                    Phase::Established | Phase::PeerClosed | Phase::LocalClosed
                )
            })
            .partition(|s| s.at_risk);
        for state in at_risk {
            self.reset_at_risk(&state);
        }
        if fresh.is_empty() {
            return;
        }
        tracing::info!(
            sessions = fresh.len(),
            "sessions taken over, waiting for the service"
        );
        self.tracker.restore(fresh.clone());
        // The new backup may have been sent a snapshot before these sessions were
        // tracked here: announce each in full.
        for state in &fresh {
            self.issue(Record::Full(state.clone()));
        }
        for state in fresh {
            self.restores.park(state);
        }
        self.stats
            .sessions
            .store(self.tracker.len() as u64, Ordering::Relaxed);
        self.publish_pending();
    }

    /// Starts queued handshakes while fewer than [`MAX_HANDSHAKES`] are in flight, and
    /// re-sends forged SYNs that went unanswered ([`Restores::pump`]).
    pub(super) fn pump_restores(&mut self) {
        let room = self.accept_room();
        let pumped = self.restores.pump(self.now, room);
        for key in &pumped.given_up {
            self.stats.restore_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = %key, "restore given up: no SYN-ACK from the service");
        }
        self.stats
            .restore_started
            .fetch_add(pumped.started, Ordering::Relaxed);
        for syn in pumped.syns {
            self.inject(syn);
        }
        if self.restores.pending() == 0 {
            if let Some(began) = self.restore_began.take() {
                self.report_restore(began);
                self.barrier.batch_restored(self.now);
                self.check_barrier();
            }
        }
        self.publish_pending();
    }

    /// Opens the restore barrier when it is time ([`Barrier::check`]): the peers'
    /// input held there goes on, in order.
    /// New handshakes the service's accept queues can take now: their room at the
    /// last look (at most every [`ACCEPT_POLL`]), less the connections on their way
    /// into them (forged SYNs unanswered, forged ACKs not through the queue yet).
    /// Without it a batch larger than the service's `listen()` backlog overflowed
    /// the queue: the kernel dropped our forged ACKs and answered the peers'
    /// segments with resets.
    pub(super) fn accept_room(&mut self) -> usize {
        let fresh = self
            .accept_seen
            .is_some_and(|(at, _)| self.now.saturating_duration_since(at) < ACCEPT_POLL);
        if !fresh {
            let seen = (self.accept_probe)(&self.ports);
            self.accept_seen = Some((self.now, seen));
        }
        let room = self.accept_seen.map_or(u64::MAX, |(_, seen)| seen.room());
        let coming = (self.restores.flying() + self.forged_acks.len()) as u64;
        usize::try_from(room.saturating_sub(coming)).unwrap_or(usize::MAX)
    }

    pub(super) fn check_barrier(&mut self) {
        let acks_in_flight = !self.forged_acks.is_empty();
        let (probe, ports) = (&mut self.accept_probe, &self.ports);
        let Some(opened) = self
            .barrier
            .check(self.now, acks_in_flight, || probe(ports).queued == 0)
        else {
            return;
        };
        self.publish_pending();
        if !opened.accepted {
            tracing::warn!("the service did not accept every restored connection in time");
        }
        if !opened.held.is_empty() {
            tracing::debug!(packets = opened.held.len(), "restore barrier released");
        }
        for message in opened.held {
            match Peek::of(message.payload(), self.vip) {
                Some(peek) => self.forward(message, peek),
                None => self.verdict_with(message, Decision::Accept),
            }
        }
    }

    /// `restore_pending`: restores queued, parked or in flight, plus one while the
    /// batch waits at the barrier for the service to accept it (a restored socket
    /// still in the accept queue belongs to no process yet: a switchover must wait),
    /// plus one from a promotion until the replicated sessions are parked.
    pub(super) fn publish_pending(&self) {
        let pending = self.restores.pending() as u64
            + u64::from(self.barrier.is_waiting())
            + u64::from(self.awaiting_park);
        self.stats.restore_pending.store(pending, Ordering::Relaxed);
    }

    /// Reports a finished restore in the event log and the counters.
    pub(super) fn report_restore(&mut self, began: Instant) {
        let elapsed = self.now.saturating_duration_since(began);
        let since_promotion = self
            .now
            .saturating_duration_since(self.restore_origin.take().unwrap_or(began));
        let mut times = std::mem::take(&mut self.restore_times_us);
        times.sort_unstable();
        let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
        let s = &self.stats;
        s.restore_last_us
            .store(elapsed.as_micros() as u64, Ordering::Relaxed);
        s.restore_session_p50_us.store(p50, Ordering::Relaxed);
        s.restore_session_p99_us.store(p99, Ordering::Relaxed);
        s.restore_since_promotion_ms
            .store(since_promotion.as_millis() as u64, Ordering::Relaxed);
        let sessions = s.restored.load(Ordering::Relaxed) - self.restored_before;
        let failed = s.restore_failed.load(Ordering::Relaxed) - self.failed_before;
        tracing::info!(
            sessions,
            failed,
            elapsed_ms = elapsed.as_millis() as u64,
            session_p50_us = p50,
            session_p99_us = p99,
            since_promotion_ms = since_promotion.as_millis() as u64,
            "restore finished"
        );
        if let Some(events) = &self.events {
            events.emit(nonstop_shared::control::EventKind::Restored {
                sessions,
                failed,
                elapsed_ms: elapsed.as_millis() as u64,
                session_p50_us: p50,
                session_p99_us: p99,
                since_promotion_ms: since_promotion.as_millis() as u64,
            });
        }
    }

    /// The app kernel answered a forged SYN: drop its SYN-ACK, complete the handshake
    /// with a forged ACK, then kick the peer (retransmit the replicated tail, duplicate
    /// ACKs) and translate from now on.
    pub(super) fn complete_restore(&mut self, key: SessionKey, synack_packet: &[u8]) {
        let Some(restores::InFlight { state, started, .. }) = self.restores.answered(&key) else {
            return;
        };
        self.restore_times_us
            .push(self.now.saturating_duration_since(started).as_micros() as u64);
        let synack = match parse_synack(synack_packet, &state) {
            Ok(synack) => synack,
            Err(e) => {
                self.stats.restore_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(session = %key, error = %e, "unexpected SYN-ACK while restoring");
                return;
            }
        };
        let ack = forged_ack(&state, &synack);
        self.forged_acks.insert(key, synack.new_isn.wrapping_add(1));
        let mut packets = vec![ack];
        let translator = Translator::new(&state, &synack);
        // Handed-over input first, right behind the handshake (into the local stack).
        if let Some(mut feed) = Feed::new(&state, &synack, 1460) {
            let app_ack = translator.app_ack(translator.peer_acked());
            packets.extend(feed.start(app_ack, self.now));
            self.feeds.insert(key, feed);
        }
        if let Some(mut tail) = Tail::new(&state, 1460) {
            packets.extend(tail.start(state.rcv_nxt, self.now));
            self.tails.insert(key, tail);
        }
        packets.extend(duplicate_acks(&state, 4));
        if !self.holding.is_on() {
            packets.push(probe(&state));
        }
        for packet in packets {
            self.inject(packet);
        }
        self.translators.insert(key, translator);
        if !self.holding.is_on() {
            // Async replication: the replica may be behind what the peer saw.
            self.probations.insert(key, Probation::new(state.rcv_nxt));
        }
        self.stats.restored.fetch_add(1, Ordering::Relaxed);
        if let Some(began) = self.restore_began {
            self.stats.restore_last_us.store(
                self.now.saturating_duration_since(began).as_micros() as u64,
                Ordering::Relaxed,
            );
        }
        tracing::debug!(session = %key, "session restored");
        self.pump_restores();
    }

    /// Appends what the service's sockets held (a planned switchover's hand-over) to
    /// the tracked sessions and issues their records; the sessions that could not
    /// take it.
    pub(super) fn hand_over(
        &mut self,
        chunks: Vec<crate::session::handover::Taken>,
    ) -> Vec<SessionKey> {
        let mut failed = Vec::new();
        for taken in chunks {
            // A restored session's socket numbers its output in its own space: the
            // tracker's is the peer's (`+ Δ`). Its input is in the peer's space already.
            let translator = self.translators.get(&taken.key);
            let output = taken
                .output
                .as_ref()
                .map(|(seq, b)| (translator.map_or(*seq, |t| t.peer_seq(*seq)), &b[..]));
            let input = taken.input.as_ref().map(|(end, b)| (*end, &b[..]));
            match self.tracker.hand_over(&taken.key, output, input) {
                Ok(record) => {
                    let (out_len, in_len) = (
                        output.map_or(0, |(_, b)| b.len()),
                        input.map_or(0, |(_, b)| b.len()),
                    );
                    self.stats.handed_over.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .handed_over_bytes
                        .fetch_add((out_len + in_len) as u64, Ordering::Relaxed);
                    tracing::debug!(session = %taken.key, output = out_len, input = in_len, "socket queues handed over");
                    self.issue(record);
                }
                Err(e) => {
                    tracing::warn!(session = %taken.key, error = %e, "socket queues not handed over");
                    failed.push(taken.key);
                }
            }
        }
        // Every queue is in the replica now (or its session is reset): nothing is at
        // risk any more.
        let marked: Vec<SessionKey> = self
            .tracker
            .sessions()
            .filter(|s| s.at_risk)
            .map(|s| s.key)
            .collect();
        for key in marked {
            if let Some(record) = self.tracker.set_at_risk(&key, false) {
                self.issue(record);
            }
        }
        self.stats.sessions_at_risk.store(0, Ordering::Relaxed);
        self.handed_over = true;
        failed
    }

    /// A replicated session the old master marked at risk (its service held output
    /// not sent or input not read, see `session::risk`): after a crash it cannot be
    /// continued exactly, so it is reset cleanly instead of restored — RSTs to the
    /// peer at both ends of what it may have received (the kernel answers its next
    /// segment with an exact one too, having no socket for it), deleted here and on
    /// the backup, counted, reported.
    pub(super) fn reset_at_risk(&mut self, state: &SessionState) {
        self.issue(Record::Delete(state.key));
        self.reset_at_risk_peer(state);
    }

    /// The peer's side of [`Interceptor::reset_at_risk`]: RSTs at both ends of what it
    /// may have received, counted, logged and told as an event.
    pub(super) fn reset_at_risk_peer(&mut self, state: &SessionState) {
        let key = state.key;
        self.inject(reset_to_peer(&key, state.snd_una));
        if state.snd_nxt != state.snd_una {
            self.inject(reset_to_peer(&key, state.snd_nxt));
        }
        self.stats.sessions_reset.fetch_add(1, Ordering::Relaxed);
        self.stats.reset_at_risk.fetch_add(1, Ordering::Relaxed);
        let reason = "the dead service held output not sent or input not read";
        tracing::warn!(session = %key, reason, "session reset instead of restored");
        if let Some(events) = &self.events {
            events.emit(nonstop_shared::control::EventKind::SessionReset {
                peer: format!("{}:{}", key.peer_ip, key.peer_port),
                reason: reason.to_owned(),
            });
        }
    }

    /// Resets a session whose socket queues could not be handed over: RSTs to the
    /// peer at both ends of what it may have received, deleted everywhere, counted.
    pub(super) fn reset_unsent(&mut self, key: SessionKey) {
        let Some((snd_una, snd_nxt)) = self.tracker.session(&key).map(|s| (s.snd_una, s.snd_nxt))
        else {
            return;
        };
        if snd_una != snd_nxt {
            self.inject(reset_to_peer(&key, snd_una));
        }
        self.reset_diverged(key, Some(snd_nxt), Divergence::UnsentOutput);
    }
}
