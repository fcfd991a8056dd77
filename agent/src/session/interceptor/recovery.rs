//! The interceptor's recovery work (design §4): restoring sessions into the local
//! service (forged handshakes, paced), holding and dropping a dying service's closes,
//! the async-mode probation and resets, and the zero-window freeze of a planned
//! switchover's drain. Methods of the same worker as `mod.rs`, split out by concern.

use super::*;
use crate::session::proc_tcp;

/// Longest the restore barrier waits for the service to accept the restored
/// connections after the last handshake.
pub const BARRIER_ACCEPT_WAIT: Duration = Duration::from_secs(2);

/// How often the barrier looks at the service's accept queue.
const BARRIER_POLL: Duration = Duration::from_millis(5);

impl Worker {
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
        let packets = tail.on_ack(peek.ack_no, window, has_data, state.rcv_nxt, Instant::now());
        if tail.done() {
            self.tails.remove(&peek.key);
        }
        for packet in packets {
            self.inject(packet);
        }
    }

    /// The tails' retransmission timers (rate-limited: this runs on the packet thread).
    pub(super) fn check_tails(&mut self) {
        let now = Instant::now();
        if self.tails.is_empty() || self.tails_checked.is_some_and(|at| now < at + TAIL_POLL) {
            return;
        }
        self.tails_checked = Some(now);
        let mut packets = Vec::new();
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
        let now = Instant::now();
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
        self.reset_recently.insert(key, Instant::now());
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
        for message in self.closing.due(Instant::now()) {
            match Peek::of(message.get_payload(), self.vip) {
                Some(peek) => self.forward(message, peek),
                None => self.verdict_with(message, nfq::Verdict::Accept),
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
            self.verdict_with(message, nfq::Verdict::Drop);
        }
        self.stats.closes_waiting.store(0, Ordering::Relaxed);
    }

    /// The service died: its closes never reach the peers, and each of its sessions
    /// waits (inbound packets noted and dropped, outbound ones dropped) until the
    /// restarted service listens.
    pub(super) fn on_app_died(&mut self) {
        self.drop_closes();
        self.restore_origin = Some(Instant::now());
        self.stats.app_deaths.fetch_add(1, Ordering::Relaxed);
        let parked: Vec<SessionState> = self
            .tracker
            .sessions()
            .filter(|s| {
                matches!(
                    s.phase,
                    Phase::Established | Phase::PeerClosed | Phase::LocalClosed
                )
            })
            .cloned()
            .collect();
        tracing::warn!(
            sessions = parked.len(),
            "service died: its sessions wait for the restarted service"
        );
        for state in parked {
            self.translators.remove(&state.key);
            self.tails.remove(&state.key);
            self.restoring.remove(&state.key);
            self.forged_acks.remove(&state.key);
            self.awaiting_app.push(state.key);
            self.queued.insert(state.key, state);
        }
        self.stats.restore_pending.store(
            (self.restoring.len() + self.queued.len()) as u64,
            Ordering::Relaxed,
        );
    }

    /// The restarted service listens: restore the parked sessions into it, from
    /// their latest tracked state.
    pub(super) fn restore_parked(&mut self) {
        let keys = std::mem::take(&mut self.awaiting_app);
        let mut count = 0;
        for key in keys {
            if !self.queued.contains_key(&key) {
                continue; // ended meanwhile (the peer reset it)
            }
            if let Some(state) = self.tracker.session(&key) {
                self.queued.insert(key, state.clone());
            }
            self.restore_queue.push_back(key);
            count += 1;
        }
        if count == 0 {
            return;
        }
        tracing::info!(sessions = count, "restoring sessions into the service");
        self.restore_began = Some(Instant::now());
        self.restored_before = self.stats.restored.load(Ordering::Relaxed);
        self.failed_before = self.stats.restore_failed.load(Ordering::Relaxed);
        self.pump_restores();
    }

    pub(super) fn is_forged_inbound(&mut self, peek: &Peek) -> bool {
        if peek.syn && !peek.ack {
            return self.restoring.contains_key(&peek.key);
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
        let fresh: Vec<SessionState> = states
            .into_iter()
            .filter(|s| self.tracker.session(&s.key).is_none())
            .filter(|s| {
                matches!(
                    s.phase,
                    Phase::Established | Phase::PeerClosed | Phase::LocalClosed
                )
            })
            .collect();
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
            self.awaiting_app.push(state.key);
            self.queued.insert(state.key, state);
        }
        self.stats
            .sessions
            .store(self.tracker.len() as u64, Ordering::Relaxed);
        self.stats.restore_pending.store(
            (self.restoring.len() + self.queued.len()) as u64,
            Ordering::Relaxed,
        );
    }

    /// Starts queued handshakes while fewer than [`MAX_HANDSHAKES`] are in flight, and
    /// re-sends forged SYNs that went unanswered.
    pub(super) fn pump_restores(&mut self) {
        let mut retry = Vec::new();
        for (key, r) in &self.restoring {
            if r.sent_at.elapsed() >= HANDSHAKE_RETRY {
                retry.push(*key);
            }
        }
        for key in retry {
            let Some(r) = self.restoring.get_mut(&key) else {
                continue;
            };
            if r.tries >= HANDSHAKE_TRIES {
                self.restoring.remove(&key);
                self.stats.restore_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(session = %key, "restore given up: no SYN-ACK from the service");
                continue;
            }
            r.tries += 1;
            r.sent_at = Instant::now();
            let syn = forged_syn(&r.state);
            self.inject(syn);
        }
        while self.restoring.len() < MAX_HANDSHAKES {
            let Some(key) = self.restore_queue.pop_front() else {
                break;
            };
            let Some(state) = self.queued.remove(&key) else {
                continue;
            };
            self.stats.restore_started.fetch_add(1, Ordering::Relaxed);
            self.inject(forged_syn(&state));
            self.restoring.insert(
                key,
                Restoring {
                    state,
                    started: Instant::now(),
                    sent_at: Instant::now(),
                    tries: 1,
                },
            );
        }
        let pending = (self.restoring.len() + self.queued.len()) as u64;
        self.stats.restore_pending.store(pending, Ordering::Relaxed);
        if pending == 0 {
            if let Some(began) = self.restore_began.take() {
                self.report_restore(began);
                self.barrier_until = Some(Instant::now() + BARRIER_ACCEPT_WAIT);
                self.check_barrier();
            }
        }
    }

    /// Once the batch is restored, every forged ACK has gone through, and the service
    /// has accepted every connection of it (its listening sockets' accept queues are
    /// empty) — or after
    /// [`BARRIER_ACCEPT_WAIT`] — the peers' input held at the barrier goes on.
    pub(super) fn check_barrier(&mut self) {
        let Some(until) = self.barrier_until else {
            return;
        };
        // Every forged ACK must have reached the kernel (completing its handshake)
        // before an empty accept queue means "all accepted".
        if !self.forged_acks.is_empty() && Instant::now() < until {
            return;
        }
        // Rate-limited: this runs on the packet thread.
        let now = Instant::now();
        if self
            .barrier_checked
            .is_some_and(|at| now.saturating_duration_since(at) < BARRIER_POLL)
            && now < until
        {
            return;
        }
        self.barrier_checked = Some(now);
        let accepted = std::fs::File::open(proc_tcp::PATH)
            .and_then(proc_tcp::read_listeners)
            .map(|listeners| proc_tcp::accept_backlog(&listeners, &self.ports) == 0)
            .unwrap_or(true);
        if !accepted && Instant::now() < until {
            return;
        }
        if !accepted {
            tracing::warn!("the service did not accept every restored connection in time");
        }
        self.barrier_until = None;
        self.barrier_checked = None;
        self.release_barrier();
    }

    /// The peers' input held at the barrier goes on, in order.
    fn release_barrier(&mut self) {
        let held = std::mem::take(&mut self.barrier);
        if !held.is_empty() {
            tracing::debug!(packets = held.len(), "restore barrier released");
        }
        for message in held {
            match Peek::of(message.get_payload(), self.vip) {
                Some(peek) => self.forward(message, peek),
                None => self.verdict_with(message, nfq::Verdict::Accept),
            }
        }
    }

    /// Reports a finished restore in the event log and the counters.
    pub(super) fn report_restore(&mut self, began: Instant) {
        let elapsed = began.elapsed();
        let since_promotion = self.restore_origin.take().unwrap_or(began).elapsed();
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
        let Some(Restoring { state, started, .. }) = self.restoring.remove(&key) else {
            return;
        };
        self.restore_times_us
            .push(started.elapsed().as_micros() as u64);
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
        if let Some(mut tail) = Tail::new(&state, 1460) {
            packets.extend(tail.start(state.rcv_nxt, Instant::now()));
            self.tails.insert(key, tail);
        }
        packets.extend(duplicate_acks(&state, 4));
        if !self.holding {
            packets.push(probe(&state));
        }
        for packet in packets {
            self.inject(packet);
        }
        self.translators
            .insert(key, Translator::new(&state, &synack));
        if !self.holding {
            // Async replication: the replica may be behind what the peer saw.
            self.probations.insert(key, Probation::new(state.rcv_nxt));
        }
        self.stats.restored.fetch_add(1, Ordering::Relaxed);
        if let Some(began) = self.restore_began {
            self.stats
                .restore_last_us
                .store(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        tracing::debug!(session = %key, "session restored");
        self.pump_restores();
    }
}
