//! The hot replica in the interceptor (design §9): methods of the sans-IO
//! [`Interceptor`] that connect it to the mirrors ([`crate::session::mirror`]).
//!
//! - Master: the peer's payload goes into the `Sync` record of its segment
//!   ([`attach_input`]). The record is issued before the kernel's ACK of that payload
//!   passes the queue, so in sync mode that ACK is held until the backup has the
//!   bytes: the peer never hears "received" for input the replica lacks.
//! - Backup: applied records drive the mirrors; the service's segments of mirrored
//!   sessions are handed to them and dropped (they never leave the host); our own
//!   injected segments into the service are let in.
//! - Takeover: open, in-step mirrors are *adopted* — the translator fixed at the
//!   mirror's handshake, the mirror's input backlog fed first, the replicated tail
//!   and duplicate ACKs to kick the peer — instead of restored; the others fall back
//!   to the cold restore (`restore.rs`).

use super::machine::{Decision, Interceptor, Packet};
use super::INJECT_MARK;
use crate::recovery::divergence::Probation;
use crate::recovery::feed::Feed;
use crate::recovery::tail::Tail;
use crate::recovery::translate::{duplicate_acks, probe};
use crate::session::mirror::{Adopted, End, ReplicaState};
use crate::session::tracker::Outcome;
use crate::tcp::peek::Peek;
use crate::tcp::segment::Segment;
use nonstop_shared::control::EventKind;
use nonstop_shared::session::{seq_lt, Phase, Record, SessionKey, SessionState};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

/// Longest the peers' input waits after a planned switchover for the new backup's
/// snapshot ([`Interceptor::gated`]).
pub const INPUT_GATE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Puts the payload of an inbound `packet` (peer → `vip`) into the `Sync` record the
/// tracker issued for it (hot replica, master).
pub(super) fn attach_input(packet: &[u8], vip: Ipv4Addr, records: &mut [Record]) {
    let Ok(seg) = Segment::parse(packet) else {
        return;
    };
    if seg.dst != vip || seg.payload.is_empty() || seg.rst {
        return;
    }
    for record in records.iter_mut() {
        if let Record::Sync(sync) = record {
            if sync.key.peer_ip == seg.src && sync.key.peer_port == seg.src_port {
                sync.input_seq = seg.payload_seq();
                sync.input = seg.payload.to_vec();
                return;
            }
        }
    }
}

impl<M: Packet> Interceptor<M> {
    /// Hot replica, master: the payload of an accepted peer segment goes to the
    /// backup whatever the tracker made of it. The tracker issues a `Sync` only when
    /// a replicated field moved; a segment that moved none (its bytes already counted
    /// in `peer_seq_max`, the same ACK, window and TSval) still carries input the
    /// kernel may take now — without a record of its own the mirror would lack it
    /// while the master acknowledged it (seen: 10 segments lost at offset 24,616 in
    /// ~1 of 200 slow-reader transfers). Such a segment gets a `Sync` of the session
    /// as it stands, carrying the payload (duplicates are harmless to the mirror).
    pub(super) fn carry_input(&mut self, packet: &[u8], outcome: &mut Outcome) {
        attach_input(packet, self.vip, &mut outcome.records);
        if outcome.rejected.is_some()
            || outcome
                .records
                .iter()
                .any(|r| matches!(r, Record::Sync(s) if !s.input.is_empty()))
        {
            return;
        }
        let Ok(seg) = Segment::parse(packet) else {
            return;
        };
        if seg.dst != self.vip || seg.payload.is_empty() || seg.rst {
            return;
        }
        if let Some(sync) = self.tracker.sync_now(&outcome.key) {
            let mut extra = vec![Record::Sync(sync)];
            attach_input(packet, self.vip, &mut extra);
            outcome.records.extend(extra);
        }
    }

    /// Hot replica, master: a peer segment carrying a session's first 64 KiB of input,
    /// and what replicated it (debug log: a mirror lacking its session's first bytes
    /// was seen once in ~200 crash transfers; this tells whether they left here).
    pub(super) fn note_first_input(
        &self,
        packet: &[u8],
        outcome: &crate::session::tracker::Outcome,
    ) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let Ok(seg) = Segment::parse(packet) else {
            return;
        };
        if seg.dst != self.vip || seg.payload.is_empty() {
            return;
        }
        let Some(state) = self.tracker.session(&outcome.key) else {
            return;
        };
        let offset = seg.seq.wrapping_sub(state.peer_isn.wrapping_add(1));
        if offset >= 64 * 1024 {
            return;
        }
        let carried: usize = outcome
            .records
            .iter()
            .map(|r| match r {
                Record::Sync(s) => s.input.len(),
                _ => 0,
            })
            .sum();
        let kinds: Vec<&str> = outcome
            .records
            .iter()
            .map(|r| match r {
                Record::Full(_) => "full",
                Record::Sync(_) => "sync",
                Record::Delete(_) => "delete",
            })
            .collect();
        tracing::debug!(
            session = %outcome.key,
            offset,
            len = seg.payload.len(),
            carried,
            records = ?kinds,
            rejected = ?outcome.rejected,
            "early input of a session"
        );
    }

    /// Whether the peers' input is replicated (hot replica, master).
    pub(super) fn replicates_input(&self) -> bool {
        self.master && self.mirrors.enabled()
    }

    /// The hot replica's commands.
    pub(super) fn on_mirror_command(&mut self, command: MirrorCommand) {
        match command {
            MirrorCommand::Enable(backlog) => {
                self.mirrors.enable(backlog);
                tracing::info!(backlog, "hot replica: mirroring sessions while backup");
            }
            MirrorCommand::Records(records) => {
                if !self.master {
                    self.mirrors.on_records(&records, self.now);
                }
            }
            MirrorCommand::Snapshot(records) => {
                if !self.master {
                    self.mirrors.on_snapshot(&records);
                }
            }
            MirrorCommand::ServiceDied => {
                if !self.master {
                    self.mirrors.on_service_died();
                }
            }
            MirrorCommand::States(reply) => {
                let states = self.replica_states();
                let _ = reply.send(states);
            }
        }
        self.flush_mirrors();
    }

    /// A packet of a mirrored session: the service's segments go to the mirror and
    /// are dropped (never leaving the host); segments into the service are ours
    /// (injected) and pass; a peer's segment before the takeover adopted the mirror
    /// is dropped (it retransmits). `Some(message)` if the session is not mirrored.
    pub(super) fn mirror_packet(&mut self, message: M, peek: &Peek) -> Option<M> {
        if self.input_gate.is_some() && self.gated(&message, peek) {
            if self.gated_input.len() < super::MAX_HELD {
                self.gated_input.push_back(message);
            } else {
                // Full: this one is dropped (the peer retransmits it).
                self.stats.overflow_drops.fetch_add(1, Ordering::Relaxed);
                self.verdict_with(message, Decision::Drop);
            }
            return None;
        }
        if self.mirrors.enabled() && !peek.outbound && peek.rst && message.mark() == INJECT_MARK {
            // Our RST removing a mirror from the service (its entry is gone already).
            self.verdict_with(message, Decision::Accept);
            return None;
        }
        if self.mirrors.is_empty() || !self.mirrors.owns(&peek.key) {
            return Some(message);
        }
        if peek.outbound {
            self.mirrors
                .on_output(peek.key, message.payload(), self.now);
            self.verdict_with(message, Decision::Drop);
        } else if message.mark() == INJECT_MARK {
            self.verdict_with(message, Decision::Accept);
        } else {
            self.stats.not_master_drops.fetch_add(1, Ordering::Relaxed);
            self.verdict_with(message, Decision::Drop);
        }
        self.flush_mirrors();
        None
    }

    /// This node stops serving (hot replica): after a planned switchover its
    /// service's connections become mirrors of the new master's sessions, so the
    /// pair stays hot. Sessions closing, reset or still being restored are left to
    /// the usual clean-up.
    pub(super) fn keep_as_mirrors(&mut self) {
        if !self.mirrors.enabled() {
            return;
        }
        // The agent does not destroy the service's sockets in hot mode (they may be
        // mirrors now): those that do not become mirrors are reset here.
        let restores = &self.restores;
        let handed_over = self.handed_over;
        let (kept, dropped): (Vec<&SessionState>, Vec<&SessionState>) =
            self.tracker.sessions().partition(|s| {
                handed_over
                    && matches!(s.phase, Phase::Established | Phase::PeerClosed)
                    && !restores.pending_for(&s.key)
            });
        let resets: Vec<Vec<u8>> = dropped
            .iter()
            .map(|s| crate::recovery::divergence::reset_to_app(&s.key, s.rcv_nxt))
            .collect();
        let live: Vec<(SessionState, u32, Option<u32>)> = kept
            .into_iter()
            .map(|s| {
                let t = self.translators.get(&s.key);
                (
                    s.clone(),
                    t.map_or(0, |t| t.delta()),
                    t.and_then(|t| t.ts_offset()),
                )
            })
            .collect();
        for packet in resets {
            self.inject(packet);
        }
        if live.is_empty() {
            return;
        }
        tracing::info!(
            sessions = live.len(),
            "hot replica: the service's connections become the new master's mirrors"
        );
        self.mirrors.adopt_live(live);
        self.flush_mirrors();
    }

    /// Whether a peer's input must wait: after a planned switchover in hot mode the
    /// old master's connections are the new backup's mirrors, whose input goes on
    /// from where the old master stood. Its replication starts with a snapshot,
    /// which carries no input: input this node took before the snapshot would be
    /// missing there. So the peers' data is held in the queue (in order, bounded)
    /// until the backup has acknowledged a record from the promotion on, or holding
    /// is off (a lone master), or [`INPUT_GATE_LIMIT`] passed.
    fn gated(&mut self, message: &M, peek: &Peek) -> bool {
        if self.gate_open() {
            return false;
        }
        !peek.outbound
            && (peek.payload_len > 0 || peek.fin)
            && message.mark() != INJECT_MARK
            && self.tracker.session(&peek.key).is_some()
    }

    /// Whether the input gate is open (lifting it when its time has come).
    fn gate_open(&mut self) -> bool {
        let Some((seq, since)) = self.input_gate else {
            return true;
        };
        if !self.master
            || !self.holding.is_on()
            || self.holding.acked() >= seq
            || self.now.saturating_duration_since(since) >= INPUT_GATE_LIMIT
        {
            tracing::debug!(
                held = self.gated_input.len(),
                "hot replica: the peers' input flows again"
            );
            self.input_gate = None;
            return true;
        }
        false
    }

    /// Lets the input held at the gate go on, in order, once it opens (a node that
    /// stopped serving drops it: the peers retransmit to the new master).
    pub(super) fn check_input_gate(&mut self) {
        if self.gated_input.is_empty() || !self.gate_open() {
            return;
        }
        let held: Vec<M> = self.gated_input.drain(..).collect();
        for message in held {
            if self.master {
                self.on_packet(message);
            } else {
                self.verdict_with(message, Decision::Drop);
            }
        }
    }

    /// At a promotion after a planned switchover (the event log's last transition
    /// of this node): gate the peers' input ([`Interceptor::gated`]).
    fn gate_input_after_handover(&mut self) {
        let Some(events) = &self.events else {
            return;
        };
        let (history, _) = events.subscribe();
        let handover = history.iter().rev().find_map(|e| match &e.kind {
            EventKind::ModeChanged(t) if t.to == nonstop_shared::Mode::Master => {
                Some(t.cause == nonstop_shared::control::Cause::HandoverReceived)
            }
            _ => None,
        });
        if handover == Some(true) {
            self.input_gate = Some((self.holding.last_seq(), self.now));
        }
    }

    /// The mirrors' timers.
    pub(super) fn mirror_timeout(&mut self) {
        if self.mirrors.is_empty() {
            return;
        }
        if self.mirrors.deadline().is_some_and(|at| at <= self.now) {
            self.mirrors.on_timeout(self.now);
            self.flush_mirrors();
        }
    }

    /// Carries out what the mirrors decided: injections, ends (counters, events).
    pub(super) fn flush_mirrors(&mut self) {
        while let Some(packet) = self.mirrors.poll_inject() {
            self.inject(packet);
        }
        while let Some(ended) = self.mirrors.poll_ended() {
            let (state, detail) = match &ended.end {
                End::Diverged { offset } => (
                    "diverged",
                    format!(
                        "the replica's output differs from the master's at byte {offset}: \
                         a takeover restores this session cold"
                    ),
                ),
                End::Cold(reason) => ("cold", reason.clone()),
            };
            if let Some(events) = &self.events {
                events.emit(EventKind::Mirror {
                    peer: format!("{}:{}", ended.key.peer_ip, ended.key.peer_port),
                    state: state.to_owned(),
                    detail,
                });
            }
        }
        let counts = self.mirrors.counts();
        let s = &self.stats;
        s.mirrors
            .store(self.mirrors.len() as u64, Ordering::Relaxed);
        s.mirrors_opened.store(counts.opened, Ordering::Relaxed);
        s.mirrors_diverged.store(counts.diverged, Ordering::Relaxed);
        s.mirrors_cold.store(counts.cold, Ordering::Relaxed);
        s.mirrors_adopted.store(counts.adopted, Ordering::Relaxed);
    }

    /// Each mirrored session's state as words for `sessions`.
    fn replica_states(&self) -> HashMap<SessionKey, String> {
        self.mirrors
            .keys()
            .into_iter()
            .filter_map(|key| Some((key, describe(self.mirrors.state(&key)?))))
            .collect()
    }

    /// At a takeover: adopts the open mirrors of `states` (they serve on, nothing is
    /// restored) and returns the sessions to restore cold. Mirrors of sessions the
    /// replica does not hold are removed from the service.
    pub(super) fn adopt_mirrors(&mut self, states: Vec<SessionState>) -> Vec<SessionState> {
        if !self.mirrors.enabled() {
            return states;
        }
        let mut cold = Vec::new();
        let (mut hot, mut fallback) = (0u64, 0u64);
        for state in states {
            let live = matches!(
                state.phase,
                Phase::Established | Phase::PeerClosed | Phase::LocalClosed
            );
            if !live || self.tracker.session(&state.key).is_some() {
                cold.push(state);
                continue;
            }
            match self.mirrors.adopt(&state.key) {
                Some(adopted) => match self.adopt_one(&state, adopted) {
                    Ok(()) => hot += 1,
                    Err(reason) => {
                        tracing::warn!(session = %state.key, reason, "mirror not adopted: restoring cold");
                        fallback += 1;
                        cold.push(state);
                    }
                },
                None => {
                    fallback += 1;
                    cold.push(state);
                }
            }
        }
        self.mirrors.clear();
        self.flush_mirrors();
        self.gate_input_after_handover();
        self.stats
            .mirrors_fallback
            .fetch_add(fallback, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.tracker.len() as u64, Ordering::Relaxed);
        if hot + fallback == 0 {
            return cold;
        }
        tracing::info!(hot, cold = fallback, "hot takeover: mirrors adopted");
        if let Some(events) = &self.events {
            events.emit(EventKind::Mirror {
                peer: String::new(),
                state: "takeover".to_owned(),
                detail: format!(
                    "{hot} hot sessions taken over by their mirrors, {fallback} restored cold"
                ),
            });
        }
        cold
    }

    /// One mirror serves its session from now on: tracked (announced in full to the
    /// new backup), translated with the Δ fixed at its handshake, fed the input it
    /// has not taken of what the peer was told had arrived, the replicated tail sent
    /// and the peer kicked.
    fn adopt_one(&mut self, state: &SessionState, adopted: Adopted) -> Result<(), &'static str> {
        let key = state.key;
        let Adopted {
            mut translator,
            synack,
            mirror_rcv_nxt,
            backlog,
            output_end,
            mirror_tsval,
        } = adopted;
        // Input the peer was told had arrived but the mirror has not taken: it must
        // be in the backlog (the master held its ACK until the backup had it).
        let owed = if seq_lt(mirror_rcv_nxt, state.rcv_nxt) {
            state.rcv_nxt.wrapping_sub(mirror_rcv_nxt) as usize
        } else {
            0
        };
        if owed > backlog.len() {
            self.inject(crate::recovery::divergence::reset_to_app(
                &key,
                mirror_rcv_nxt,
            ));
            return Err("the mirror lacks input the peer was told had arrived");
        }
        translator.adopt(state, output_end, mirror_tsval);
        self.tracker.restore(vec![state.clone()]);
        self.issue(Record::Full(state.clone()));
        let mut packets = Vec::new();
        if owed > 0 {
            let mut fed = state.clone();
            fed.unread_input = backlog[..owed].to_vec();
            if let Some(mut feed) = Feed::new(&fed, &synack, 1460) {
                let app_ack = translator.app_ack(translator.peer_acked());
                packets.extend(feed.start(app_ack, self.now));
                self.feeds.insert(key, feed);
            }
        }
        if let Some(mut tail) = Tail::new(state, 1460) {
            packets.extend(tail.start(state.rcv_nxt, self.now));
            self.tails.insert(key, tail);
        }
        packets.extend(duplicate_acks(state, 4));
        if !self.holding.is_on() {
            packets.push(probe(state));
            self.probations.insert(key, Probation::new(state.rcv_nxt));
        }
        for packet in packets {
            self.inject(packet);
        }
        self.translators.insert(key, translator);
        tracing::debug!(session = %key, owed, "mirror adopted");
        Ok(())
    }
}

/// The hot replica's commands, as the interceptor sees them.
pub(super) enum MirrorCommand {
    Enable(usize),
    Records(Vec<Record>),
    Snapshot(Vec<Record>),
    ServiceDied,
    States(tokio::sync::oneshot::Sender<HashMap<SessionKey, String>>),
}

/// `hot`, `cold`, `diverged`, `lagging N B`.
pub fn describe(state: ReplicaState) -> String {
    match state {
        ReplicaState::Hot => "hot".to_owned(),
        ReplicaState::Cold => "cold".to_owned(),
        ReplicaState::Diverged => "diverged".to_owned(),
        ReplicaState::Lagging(bytes) => format!("lagging {bytes} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::records::{full, sync_of};
    use crate::test_support::segment::seg;

    #[test]
    fn the_peers_payload_goes_into_its_sync_record_and_nothing_else_does() {
        let state = full(40_001, 7000);
        let vip = state.key.local_ip;
        let peer = seg()
            .peer([198, 18, 1, 10], 40_001)
            .local([198, 18, 1, 100], 7)
            .seq(501)
            .ack(7001)
            .payload(b"GET /")
            .build();
        let mut records = vec![Record::Sync(sync_of(&state, state.snd_nxt, b""))];
        attach_input(&peer, vip, &mut records);
        let Record::Sync(sync) = &records[0] else {
            unreachable!("a sync");
        };
        assert_eq!((sync.input_seq, &sync.input[..]), (501, &b"GET /"[..]));
        // Our own output is never input.
        let ours = seg()
            .from_us()
            .peer([198, 18, 1, 10], 40_001)
            .local([198, 18, 1, 100], 7)
            .seq(7001)
            .ack(506)
            .payload(b"200")
            .build();
        let mut records = vec![Record::Sync(sync_of(&state, 7001, b"200"))];
        attach_input(&ours, vip, &mut records);
        let Record::Sync(sync) = &records[0] else {
            unreachable!("a sync");
        };
        assert!(sync.input.is_empty());
    }
}
