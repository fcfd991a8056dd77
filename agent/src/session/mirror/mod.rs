//! The hot replica's mirrors on the backup (design §9), sans-IO.
//!
//! With `service.replica = "hot"` the backup runs the service too. For every session
//! the master announces at its handshake (a `Full` record with nothing sent yet) the
//! backup opens a *mirror*: a connection into its own service from the peer's address
//! and port, by a forged handshake with the peer's real ISN and options
//! ([`machine::Mirror`]). From then on it plays the peer toward that connection: the
//! peer's input (replicated in stream order, `Sync` records' input part) within the
//! mirror's window with a bounded backlog, the peer's ACK progress as the master saw
//! it, the peer's FIN. The mirror's segments are caught in the backup's queue and
//! dropped — they never leave the host — and every byte it writes is compared with
//! the master's output at the same stream offset.
//!
//! A mirror whose output differs is **diverged**; one that cannot go on (the service
//! reset it or died, its backlog overflowed, a resync snapshot) is **cold**. Either
//! way it is removed from the service with an RST and the session falls back to the
//! cold restore at a takeover. A takeover [`Mirrors::adopt`]s the open ones: the
//! translator was fixed at the handshake, so the work per session is small and does
//! not grow with the number of sessions.
//!
//! # Layout
//! - `machine.rs`: one mirror (handshake, input, ACK replay, comparison).
//! - this file: the set of mirrors, their ends (events, counters) and status.

pub mod machine;
#[cfg(test)]
mod tests;

pub use machine::{Adopted, End, Mirror};
use nonstop_shared::session::{Record, SessionKey, SessionState};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// A mirror's input and output are "lagging" beyond this many bytes behind the
/// master (status only).
pub const LAGGING_BYTES: u64 = 16 * 1024;

/// What a session's replica is, for status (`sessions --json`, the console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Mirrored and in step.
    Hot,
    /// Not mirrored: a takeover restores it into a fresh connection.
    Cold,
    /// The mirror's output differed from the master's: cold at a takeover.
    Diverged,
    /// Mirrored, this many bytes behind the master.
    Lagging(u64),
}

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The session.
    pub key: SessionKey,
    /// Why.
    pub end: End,
}

/// Counters of the mirrors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorCounts {
    /// Mirrors opened (handshake done).
    pub opened: u64,
    /// Mirrors whose output differed.
    pub diverged: u64,
    /// Mirrors given up (cold).
    pub cold: u64,
    /// Mirrors that took over at a promotion.
    pub adopted: u64,
}

/// Every mirror of this backup.
#[derive(Debug)]
pub struct Mirrors {
    enabled: bool,
    backlog_limit: usize,
    live: HashMap<SessionKey, Mirror>,
    /// Sessions whose mirror ended, and how (until the session ends).
    ended: HashMap<SessionKey, ReplicaState>,
    inject: VecDeque<Vec<u8>>,
    events: VecDeque<Ended>,
    counts: MirrorCounts,
}

impl Mirrors {
    /// No mirrors (cold replica) until [`Mirrors::enable`].
    pub fn new() -> Mirrors {
        Mirrors {
            enabled: false,
            backlog_limit: nonstop_shared::config::DEFAULT_MIRROR_BACKLOG,
            live: HashMap::new(),
            ended: HashMap::new(),
            inject: VecDeque::new(),
            events: VecDeque::new(),
            counts: MirrorCounts::default(),
        }
    }

    /// Hot replica on, with at most `backlog_limit` bytes waiting per mirror.
    pub fn enable(&mut self, backlog_limit: usize) {
        self.enabled = true;
        self.backlog_limit = backlog_limit;
    }

    /// Whether this node mirrors (hot replica).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a live mirror serves this session.
    pub fn owns(&self, key: &SessionKey) -> bool {
        self.live.contains_key(key)
    }

    /// Live mirrors.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// No live mirror.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The counters.
    pub fn counts(&self) -> MirrorCounts {
        self.counts
    }

    /// Records the backup applied (in order).
    pub fn on_records(&mut self, records: &[Record], now: Instant) {
        if !self.enabled {
            return;
        }
        for record in records {
            match record {
                Record::Full(state) => self.on_full(state, now),
                Record::Sync(sync) => {
                    if let Some(mirror) = self.live.get_mut(&sync.key) {
                        let result = mirror.on_sync(sync, now);
                        self.carry(sync.key, result);
                    }
                }
                Record::Delete(key) => {
                    if let Some(mirror) = self.live.remove(key) {
                        self.inject.push_back(mirror.reset());
                    }
                    self.ended.remove(key);
                }
            }
        }
    }

    /// A snapshot replaced the backup's table (a new replication connection or a
    /// resync): records may have been missed. A mirror goes on if the snapshot holds
    /// its session and it lacks no input the master acknowledged
    /// ([`Mirror::on_snapshot`]); the others turn cold.
    pub fn on_snapshot(&mut self, records: &[Record]) {
        let states: HashMap<SessionKey, &SessionState> = records
            .iter()
            .filter_map(|r| match r {
                Record::Full(s) => Some((s.key, s)),
                _ => None,
            })
            .collect();
        let keys: Vec<SessionKey> = self.live.keys().copied().collect();
        for key in keys {
            // A session the snapshot lacks may still come in a `Full` record (a new
            // master announces what it took over right after its snapshot); one
            // that never does is reset at the next takeover ([`Mirrors::clear`]).
            let result = match (self.live.get_mut(&key), states.get(&key)) {
                (Some(mirror), Some(state)) => mirror.on_snapshot(state),
                _ => Ok(()),
            };
            if let Err(end) = result {
                self.end(key, end);
            }
        }
    }

    /// This node stops serving after a planned switchover (design §9): its service's
    /// connections become mirrors of the new master's sessions. `live` gives each
    /// session with its translation (Δ and TSval offset; 0 and none unless it was
    /// itself restored).
    pub fn adopt_live(&mut self, live: Vec<(SessionState, u32, Option<u32>)>) {
        if !self.enabled {
            return;
        }
        for (state, delta, ts_offset) in live {
            let mirror = Mirror::from_live(&state, delta, ts_offset, self.backlog_limit);
            self.counts.opened += 1;
            self.ended.remove(&state.key);
            self.live.insert(state.key, mirror);
        }
    }

    /// The replica's service died: its mirror connections are gone.
    pub fn on_service_died(&mut self) {
        self.all_cold("the replica's service died");
    }

    /// A segment from the service of a mirrored session (the caller drops it).
    pub fn on_output(&mut self, key: SessionKey, packet: &[u8], now: Instant) {
        if let Some(mirror) = self.live.get_mut(&key) {
            let was_open = mirror.delta().is_some();
            let result = mirror.on_output(packet, now);
            if !was_open && mirror.delta().is_some() {
                self.counts.opened += 1;
                tracing::debug!(session = %key, "mirror open");
            }
            self.carry(key, result);
        }
    }

    /// Timers of every mirror.
    pub fn on_timeout(&mut self, now: Instant) {
        let due: Vec<SessionKey> = self
            .live
            .iter()
            .filter(|(_, m)| m.deadline().is_some_and(|at| at <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(mirror) = self.live.get_mut(&key) {
                let result = mirror.on_timeout(now);
                self.carry(key, result);
            }
        }
    }

    /// The earliest timer.
    pub fn deadline(&self) -> Option<Instant> {
        self.live.values().filter_map(Mirror::deadline).min()
    }

    /// The next packet to inject.
    pub fn poll_inject(&mut self) -> Option<Vec<u8>> {
        self.inject.pop_front()
    }

    /// The next mirror that ended.
    pub fn poll_ended(&mut self) -> Option<Ended> {
        self.events.pop_front()
    }

    /// At a takeover: the open mirror of `key`, which serves the session from now on;
    /// `None` (the mirror, if any, removed from the service with an RST) when the
    /// session must be restored cold.
    pub fn adopt(&mut self, key: &SessionKey) -> Option<Adopted> {
        self.ended.remove(key);
        let mirror = self.live.remove(key)?;
        let reset = mirror.reset();
        match mirror.adopt() {
            Some(adopted) => {
                self.counts.adopted += 1;
                Some(adopted)
            }
            None => {
                self.inject.push_back(reset);
                None
            }
        }
    }

    /// After a takeover: mirrors of sessions the replica did not hand over are
    /// removed from the service; nothing is mirrored while this node is master.
    pub fn clear(&mut self) {
        for (_, mirror) in self.live.drain() {
            self.inject.push_back(mirror.reset());
        }
        self.ended.clear();
    }

    /// Every session with a mirror, live or ended.
    pub fn keys(&self) -> Vec<SessionKey> {
        self.live.keys().chain(self.ended.keys()).copied().collect()
    }

    /// How a session's replica stands (`None`: no mirror was ever opened for it).
    pub fn state(&self, key: &SessionKey) -> Option<ReplicaState> {
        if let Some(mirror) = self.live.get(key) {
            let health = mirror.health();
            return Some(if health.open && health.behind < LAGGING_BYTES {
                ReplicaState::Hot
            } else {
                ReplicaState::Lagging(health.behind)
            });
        }
        self.ended.get(key).copied()
    }

    fn on_full(&mut self, state: &SessionState, now: Instant) {
        if let Some(mirror) = self.live.get_mut(&state.key) {
            // The master announces a session again (a new master's takeover, a risk
            // mark, a hand-over): the mirror goes on if it lacks nothing.
            if let Err(end) = mirror.on_snapshot(state) {
                self.end(state.key, end);
            }
            return;
        }
        if !Mirror::can_open(state) {
            return;
        }
        let (mirror, syn) = Mirror::open(state, self.backlog_limit, now);
        tracing::debug!(session = %state.key, "opening a mirror");
        self.live.insert(state.key, mirror);
        self.ended.remove(&state.key);
        self.inject.push_back(syn);
    }

    fn carry(&mut self, key: SessionKey, result: Result<Vec<Vec<u8>>, End>) {
        match result {
            Ok(packets) => self.inject.extend(packets),
            Err(end) => self.end(key, end),
        }
    }

    fn end(&mut self, key: SessionKey, end: End) {
        let Some(mirror) = self.live.remove(&key) else {
            return;
        };
        self.inject.push_back(mirror.reset());
        let state = match &end {
            End::Diverged { offset } => {
                self.counts.diverged += 1;
                tracing::warn!(session = %key, offset, "mirror diverged: the service's output differs from the master's");
                ReplicaState::Diverged
            }
            End::Cold(reason) => {
                self.counts.cold += 1;
                tracing::info!(session = %key, reason = %reason, "mirror given up: the session is cold");
                ReplicaState::Cold
            }
        };
        self.ended.insert(key, state);
        self.events.push_back(Ended { key, end });
    }

    fn all_cold(&mut self, reason: &str) {
        let keys: Vec<SessionKey> = self.live.keys().copied().collect();
        for key in keys {
            self.end(key, End::Cold(reason.to_owned()));
        }
    }
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors::new()
    }
}
