//! The sans-IO TCP session tracker: one IPv4 packet of the service in, the records to
//! replicate out. No socket, no clock, no thread: the NFQUEUE driver feeds packets and
//! the wall-clock time, and ships the records (design §3–§4, style.md "quinn-proto").
//!
//! # Layout
//! - this file: [`Tracker`] (the session table, [`Tracker::on_packet`]), its limits,
//!   statistics and errors.
//! - [`crate::tcp`]: reading a packet's TCP fields and options (shared with restore).
//! - [`acceptance`]: whether the kernel accepts a peer's segment (RFC 793, RFC 5961);
//!   a segment it would refuse changes nothing here.
//! - `session`: one session's state machine (handshake, data, ACKs, close).
//! - [`unacked`]: the rules of the `unacked` buffer (which bytes it holds, how ACKs
//!   trim it, whether it is complete); the backup's table applies the same rules.
//!
//! # What is tracked
//! A session starts at the peer's SYN and is announced to the backup with a
//! [`Record::Full`] when the peer acknowledges our SYN-ACK. From then on every packet
//! that changes a replicated field yields one [`Record::Sync`] carrying the new
//! outbound payload bytes, if any; pure duplicates yield nothing. Both FINs
//! acknowledged, or a RST either way, yield [`Record::Delete`] and the session is
//! forgotten. Packets of sessions the tracker never saw open are passed over (no
//! records, no session), so after an agent restart call [`Tracker::restore`] first.
//! All sequence arithmetic is modulo 2^32.

pub mod acceptance;
mod session;
pub mod unacked;

#[cfg(test)]
mod tests;

use crate::tcp::segment::Segment;
pub use crate::tcp::PacketError;
pub use acceptance::Rejection;
use nonstop_shared::record::{MAX_INPUT, MAX_PAYLOAD};
use nonstop_shared::session::seq_lt;
use nonstop_shared::session::{Phase, Record, SessionKey, SessionState, SessionSync};
use serde::Serialize;
use session::{Entry, Step};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Bounds on the tracker's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerLimits {
    /// Most sessions (including half-open ones); new SYNs beyond it are refused with
    /// [`PacketError::TooManySessions`].
    pub max_sessions: usize,
    /// Most unacknowledged outbound bytes kept per session; beyond it bytes are not
    /// stored (counted in [`TrackerStats::unstored_bytes`]) and the session cannot be
    /// fully recovered until the peer has acknowledged everything sent. Values above
    /// what a record can carry ([`MAX_PAYLOAD`]) are lowered to it.
    pub max_unacked_bytes: usize,
}

impl Default for TrackerLimits {
    fn default() -> TrackerLimits {
        TrackerLimits {
            max_sessions: 100_000,
            max_unacked_bytes: 16 << 20,
        }
    }
}

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Peer → VIP:port.
    Inbound,
    /// VIP:port → peer.
    Outbound,
}

/// What one packet did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Which way the packet went.
    pub direction: Direction,
    /// The session it belongs to (tracked or not).
    pub key: SessionKey,
    /// Records to replicate, in order: a Full at handshake completion; a Sync on
    /// data/ack/window/timestamp/FIN progress; a Delete when the session closes or is
    /// reset; nothing for duplicates and untracked packets. (At most one per packet
    /// today; callers should not rely on that.)
    pub records: Vec<Record>,
    /// A peer's segment of a tracked session that the kernel would refuse: it changed
    /// nothing. Callers pass it on untouched (never translated, never acted on).
    pub rejected: Option<Rejection>,
}

/// Why output could not be handed over ([`Tracker::hand_over`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOverError {
    /// The session is not tracked.
    #[error("session not tracked")]
    Unknown,
    /// The session's `unacked` does not hold every byte (byte limit), it is not
    /// announced yet, our FIN was sent, or the bytes would exceed the limit.
    #[error("session cannot carry the handed-over bytes")]
    Incomplete,
    /// The bytes start beyond what the tracker holds.
    #[error("handed-over bytes start at {seq}, the tracker holds up to {data_end}")]
    Gap {
        /// Where the bytes start.
        seq: u32,
        /// Where the tracker's bytes end.
        data_end: u32,
    },
    /// Bytes the tracker already holds differ from the socket's.
    #[error("handed-over bytes differ from the tracked ones")]
    Mismatch,
    /// The socket's input ends before what we acknowledged to the peer.
    #[error("unread input ends at {end}, before rcv_nxt {rcv_nxt}")]
    InputBehind {
        /// Where the socket's input ends (its `rcv_nxt`).
        end: u32,
        /// Our last ACK to the peer.
        rcv_nxt: u32,
    },
}

/// Counters since the tracker was made (plus the current session counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    /// Sessions in the table (half-open ones included).
    pub sessions: usize,
    /// Sessions whose `unacked` does not hold every unacknowledged byte (see
    /// [`unacked::unacked_complete`]): a backup could not fully recover them now.
    pub incomplete_sessions: usize,
    /// Handshakes completed (Full records emitted).
    pub established: u64,
    /// Sessions ended by FINs.
    pub closed: u64,
    /// Sessions ended by a RST (half-open ones included).
    pub reset: u64,
    /// Sessions forgotten by [`Tracker::expire`].
    pub expired: u64,
    /// SYNs refused because of [`TrackerLimits::max_sessions`].
    pub refused: u64,
    /// Packets of sessions not in the table (not a SYN).
    pub untracked_packets: u64,
    /// Packets that could not be read (every error except `NotOurs` and
    /// `TooManySessions`).
    pub malformed_packets: u64,
    /// New outbound payload bytes not kept in `unacked` (byte limit reached, or after
    /// a gap).
    pub unstored_bytes: u64,
    /// Outbound segments that started beyond the known bytes of a complete session.
    pub outbound_gaps: u64,
    /// Inbound ACKs for data never sent (their segments are refused).
    pub invalid_acks: u64,
    /// Peer segments of a tracked session the kernel would not accept (outside the
    /// window, a RST not at the exact point, a SYN, an unacceptable ACK): passed on
    /// unchanged, they changed nothing and were not replicated ([`acceptance`]).
    pub segments_out_of_window: u64,
}

/// The session table of one VIP and its service ports.
#[derive(Debug)]
pub struct Tracker {
    vip: Ipv4Addr,
    ports: Vec<u16>,
    limits: TrackerLimits,
    sessions: HashMap<SessionKey, Entry>,
    stats: TrackerStats,
}

impl Tracker {
    /// An empty tracker for the service on `vip` at `ports`.
    pub fn new(vip: Ipv4Addr, ports: &[u16], limits: TrackerLimits) -> Tracker {
        let limits = TrackerLimits {
            max_unacked_bytes: limits.max_unacked_bytes.min(MAX_PAYLOAD),
            ..limits
        };
        Tracker {
            vip,
            ports: ports.to_vec(),
            limits,
            sessions: HashMap::new(),
            stats: TrackerStats::default(),
        }
    }

    /// One IPv4 packet (starting at the IP header, as NFQUEUE delivers it) seen at `now_ms` (wall clock ms).
    pub fn on_packet(&mut self, packet: &[u8], now_ms: u64) -> Result<Outcome, PacketError> {
        let result = self.track(packet, now_ms);
        if matches!(&result, Err(e) if !matches!(e, PacketError::NotOurs | PacketError::TooManySessions))
        {
            self.stats.malformed_packets += 1;
        }
        result
    }

    fn track(&mut self, packet: &[u8], now_ms: u64) -> Result<Outcome, PacketError> {
        let seg = Segment::parse(packet)?;
        let (direction, key) = self.classify(&seg)?;
        let options = seg.options()?;
        let mut outcome = Outcome {
            direction,
            key,
            records: Vec::new(),
            rejected: None,
        };
        let Some(entry) = self.sessions.get_mut(&key) else {
            if direction == Direction::Inbound && seg.syn && seg.ack.is_none() && !seg.rst {
                if self.sessions.len() >= self.limits.max_sessions {
                    self.stats.refused += 1;
                    return Err(PacketError::TooManySessions);
                }
                self.sessions
                    .insert(key, Entry::from_syn(key, &seg, &options, now_ms));
            } else {
                self.stats.untracked_packets += 1;
            }
            return Ok(outcome);
        };
        let last_activity_ms = std::mem::replace(&mut entry.state.last_activity_ms, now_ms);
        let step = match direction {
            Direction::Inbound => entry.inbound(&seg, &options, &mut self.stats),
            Direction::Outbound => entry.outbound(
                &seg,
                &options,
                self.limits.max_unacked_bytes,
                &mut self.stats,
            ),
        };
        match step {
            Step::Nothing => {}
            Step::Rejected(rejection) => {
                entry.state.last_activity_ms = last_activity_ms;
                self.stats.segments_out_of_window += 1;
                outcome.rejected = Some(rejection);
            }
            Step::Sync(sync) => outcome.records.push(Record::Sync(sync)),
            Step::Established => {
                entry.announced = true;
                self.stats.established += 1;
                outcome.records.push(Record::Full(entry.state.clone()));
            }
            Step::NewSyn => {
                *entry = Entry::from_syn(key, &seg, &options, now_ms);
            }
            Step::Closed | Step::Reset => {
                if matches!(step, Step::Closed) {
                    self.stats.closed += 1;
                } else {
                    self.stats.reset += 1;
                }
                if self.forget(&key) {
                    outcome.records.push(Record::Delete(key));
                }
            }
        }
        Ok(outcome)
    }

    /// What [`Tracker::on_packet`] would say of a peer's packet, without changing
    /// anything: `Some` if the kernel would refuse it (a tracked session's segment
    /// outside the rules of [`acceptance`]). Unreadable packets, outbound packets and
    /// packets of untracked sessions give `None`.
    pub fn rejection(&self, packet: &[u8]) -> Option<Rejection> {
        let seg = Segment::parse(packet).ok()?;
        let (direction, key) = self.classify(&seg).ok()?;
        if direction != Direction::Inbound {
            return None;
        }
        self.sessions.get(&key)?.judge(&seg).err()
    }

    /// Direction and session key, or `NotOurs`.
    fn classify(&self, seg: &Segment<'_>) -> Result<(Direction, SessionKey), PacketError> {
        let ours = |ip: Ipv4Addr, port: u16| ip == self.vip && self.ports.contains(&port);
        let (direction, peer_ip, peer_port, local_port) = if ours(seg.dst, seg.dst_port) {
            (Direction::Inbound, seg.src, seg.src_port, seg.dst_port)
        } else if ours(seg.src, seg.src_port) {
            (Direction::Outbound, seg.dst, seg.dst_port, seg.src_port)
        } else {
            return Err(PacketError::NotOurs);
        };
        let key = SessionKey {
            peer_ip,
            peer_port,
            local_ip: self.vip,
            local_port,
        };
        Ok((direction, key))
    }

    /// Removes a session; whether the backup knew it (so a `Delete` is due).
    fn forget(&mut self, key: &SessionKey) -> bool {
        self.sessions.remove(key).is_some_and(|e| e.announced)
    }

    /// What the old master's service socket still holds at a planned switchover
    /// (`session::handover`), made part of the session's replicated state:
    /// - `output`: the service's output from sequence number `seq` on, sent or not
    ///   (the socket's send queue). What extends `unacked` contiguously is appended —
    ///   beyond `snd_nxt` it is output the kernel never sent, which the new master
    ///   sends (`recovery::tail`); bytes overlapping `unacked` must match it.
    /// - `input`: the bytes the service has not read, ending at the kernel's
    ///   `rcv_nxt` (the socket's receive queue). They become `unread_input`, and
    ///   `rcv_nxt` moves to their end: the new master feeds them to its service first.
    ///
    /// Returns the `Full` record that replicates it all.
    pub fn hand_over(
        &mut self,
        key: &SessionKey,
        output: Option<(u32, &[u8])>,
        input: Option<(u32, &[u8])>,
    ) -> Result<Record, HandOverError> {
        let entry = self.sessions.get_mut(key).ok_or(HandOverError::Unknown)?;
        let s = &mut entry.state;
        if !entry.announced || !unacked::unacked_complete(s) || s.our_fin.is_some() {
            return Err(HandOverError::Incomplete);
        }
        if let Some((end, bytes)) = input {
            if !bytes.is_empty() && s.peer_fin.is_some() {
                // The peer's FIN would have to follow the input (not supported).
                return Err(HandOverError::Incomplete);
            }
            if seq_lt(end, s.rcv_nxt) {
                return Err(HandOverError::InputBehind {
                    end,
                    rcv_nxt: s.rcv_nxt,
                });
            }
        }
        if let Some((seq, bytes)) = output {
            // The socket's queue starts at its kernel's snd_una, which is never past
            // ours (we see the peer's ACKs first): skip what is already acknowledged.
            let start = unacked::data_start(s);
            let data_end = unacked::data_end(s);
            let (seq, bytes) = if seq_lt(seq, start) {
                let skip = start.wrapping_sub(seq) as usize;
                (start, bytes.get(skip..).unwrap_or_default())
            } else {
                (seq, bytes)
            };
            if seq_lt(data_end, seq) {
                return Err(HandOverError::Gap { seq, data_end });
            }
            // The overlap with what we hold must be the same bytes.
            let overlap = (data_end.wrapping_sub(seq) as usize).min(bytes.len());
            let held_from = seq.wrapping_sub(start) as usize;
            if !s
                .unacked
                .range(held_from..held_from + overlap)
                .eq(bytes[..overlap].iter())
            {
                return Err(HandOverError::Mismatch);
            }
            let appended = unacked::append_unacked(s, seq, bytes, self.limits.max_unacked_bytes);
            if appended < bytes.len() - overlap {
                return Err(HandOverError::Incomplete);
            }
        }
        if let Some((end, bytes)) = input {
            if bytes.len() > MAX_INPUT {
                return Err(HandOverError::Incomplete);
            }
            s.unread_input = bytes.to_vec();
            // Everything the socket held is in the replica now.
            s.at_risk = false;
            s.rcv_nxt = end;
            if seq_lt(s.peer_seq_max, end) {
                s.peer_seq_max = end;
            }
        }
        Ok(Record::Full(s.clone()))
    }

    /// A `Sync` record of a session as it stands, carrying nothing: for input the
    /// hot replica must receive although the segment changed no replicated field
    /// (see `Interceptor::try_track`).
    pub fn sync_now(&self, key: &SessionKey) -> Option<SessionSync> {
        let s = &self.sessions.get(key)?.state;
        (s.phase != Phase::Handshake).then(|| session::sync_of(s, unacked::data_end(s), Vec::new()))
    }

    /// Marks or unmarks a session `at_risk` (see `session::risk`); the `Full` record
    /// that replicates a change.
    pub fn set_at_risk(&mut self, key: &SessionKey, at_risk: bool) -> Option<Record> {
        let entry = self.sessions.get_mut(key)?;
        if entry.state.at_risk == at_risk || !entry.announced {
            return None;
        }
        entry.state.at_risk = at_risk;
        Some(Record::Full(entry.state.clone()))
    }

    /// The new service has read (acknowledged) the handed-over input of a session:
    /// it is cleared, and the `Full` record that says so is returned.
    pub fn input_delivered(&mut self, key: &SessionKey) -> Option<Record> {
        let s = &mut self.sessions.get_mut(key)?.state;
        if s.unread_input.is_empty() {
            return None;
        }
        s.unread_input.clear();
        Some(Record::Full(s.clone()))
    }

    /// Drops a session the agent itself ended (a diverged restore it reset); the
    /// `Delete` record to replicate, if the backup knew it.
    pub fn remove(&mut self, key: &SessionKey) -> Option<Record> {
        self.stats.reset += u64::from(self.sessions.contains_key(key));
        self.forget(key).then_some(Record::Delete(*key))
    }

    /// The state of one session (half-open ones included).
    pub fn session(&self, key: &SessionKey) -> Option<&SessionState> {
        self.sessions.get(key).map(|e| &e.state)
    }

    /// Whether our segment `[seq, seq + len)` of session `key` carries bytes the
    /// replica could not keep: past what `unacked` holds, beyond the per-session
    /// limit (`max_unacked_bytes`). Such output must not leave unreplicated.
    pub fn exceeds_unacked_limit(&self, key: &SessionKey, seq: u32, len: usize) -> bool {
        let Some(s) = self.session(key) else {
            return false;
        };
        if s.phase == nonstop_shared::session::Phase::Handshake || len == 0 {
            return false;
        }
        let end = seq.wrapping_add(len as u32);
        let held_end = unacked::data_end(s);
        if !nonstop_shared::session::seq_lt(held_end, end) {
            return false;
        }
        let new = end.wrapping_sub(held_end) as usize;
        s.unacked.len().saturating_add(new) > self.limits.max_unacked_bytes
    }

    /// Every session, in no particular order (half-open ones included).
    pub fn sessions(&self) -> impl Iterator<Item = &SessionState> {
        self.sessions.values().map(|e| &e.state)
    }

    /// Number of sessions (half-open ones included).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Rebuild from a snapshot (full states), e.g. after an agent restart.
    ///
    /// States replace sessions with the same key. Half-open (`Handshake`) and `Closed`
    /// states are skipped: the backup never knows the former and the latter are over.
    /// The session limit is not applied (no known session is dropped).
    pub fn restore(&mut self, states: impl IntoIterator<Item = SessionState>) {
        for state in states {
            if matches!(state.phase, Phase::Handshake | Phase::Closed) {
                continue;
            }
            self.sessions.insert(state.key, Entry::restored(state));
        }
    }

    /// Full records of every session (for a backup that reconnects), sorted by key.
    /// Half-open sessions are left out: they are announced when established.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut states: Vec<&SessionState> = self
            .sessions
            .values()
            .filter(|e| e.announced)
            .map(|e| &e.state)
            .collect();
        states.sort_by_key(|s| s.key);
        states.into_iter().cloned().map(Record::Full).collect()
    }

    /// Forgets sessions idle for longer than `handshake_idle_ms` (half-open) or
    /// `established_idle_ms` (all others) at `now_ms`, returning a `Delete` for each
    /// one the backup knew. The tracker never expires anything by itself: a peer that
    /// vanished without FIN or RST would otherwise stay forever.
    pub fn expire(
        &mut self,
        now_ms: u64,
        handshake_idle_ms: u64,
        established_idle_ms: u64,
    ) -> Vec<Record> {
        let mut deletes = Vec::new();
        let mut expired = 0;
        self.sessions.retain(|key, entry| {
            let idle = now_ms.saturating_sub(entry.state.last_activity_ms);
            let limit = if entry.state.phase == Phase::Handshake {
                handshake_idle_ms
            } else {
                established_idle_ms
            };
            if idle <= limit {
                return true;
            }
            expired += 1;
            if entry.announced {
                deletes.push(Record::Delete(*key));
            }
            false
        });
        deletes.sort_by_key(Record::key);
        self.stats.expired += expired;
        deletes
    }

    /// Counters, with the current session counts.
    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            sessions: self.sessions.len(),
            incomplete_sessions: self
                .sessions
                .values()
                .filter(|e| !unacked::unacked_complete(&e.state))
                .count(),
            ..self.stats
        }
    }

    /// The limits in force (after lowering `max_unacked_bytes` to [`MAX_PAYLOAD`]).
    pub fn limits(&self) -> TrackerLimits {
        self.limits
    }
}
