//! One mirror (design §9), sans-IO: the backup plays the peer toward its own service
//! for one session the master serves.
//!
//! # Sequence spaces
//! The forged SYN carries the peer's real ISN ([`forge::forged_syn`] of the state at
//! the handshake: `rcv_nxt − 1` is the peer's ISN then), so the peer's space is the
//! mirror's: input needs no translation. Our side differs by Δ = master ISN − mirror
//! ISN, fixed when the mirror's SYN-ACK is caught; the [`Translator`] built then
//! (`tail_end` = the master's first byte) is the one a takeover uses.
//!
//! # What goes in, what comes out
//! - Records about the session (`Sync`: the peer's input in stream order, the peer's
//!   ACK as the master saw it, the master's output; `Delete`);
//! - the mirror kernel's segments (caught in the backup's queue and always dropped:
//!   they never leave the host);
//! - the clock (forged SYN retries, refeeding input the mirror did not take).
//!
//! Out: packets to inject (forged SYN and ACK, input segments within the mirror's
//! window, ACKs replaying the peer's progress with a window that is never zero, RSTs)
//! and, when it happens, the end of the mirror: [`End::Diverged`] (its output differs
//! from the master's at the same stream offset) or [`End::Cold`] (it cannot go on:
//! the service reset it, its backlog overflowed, the handshake failed).

use crate::recovery::divergence::reset_to_app;
use crate::recovery::forge::{self, SynAck};
use crate::recovery::translate::Translator;
use crate::tcp::flags;
use crate::tcp::segment::Segment;
use crate::tcp::wire::{self, Tcp};
use nonstop_shared::session::{seq_le, seq_lt, seq_max, SessionKey, SessionState, SessionSync};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often an unanswered forged SYN goes again.
pub const SYN_RETRY: Duration = Duration::from_millis(300);
/// Forged SYNs before the mirror is given up (6 s: a replica's service that is
/// still starting gets time to listen).
pub const SYN_TRIES: u32 = 20;
/// How long without progress before input the mirror did not acknowledge goes again.
pub const REFEED: Duration = Duration::from_millis(200);
/// Least time between two ACKs answering the mirror's retransmissions and probes.
pub const ACK_ANSWER_GAP: Duration = Duration::from_millis(100);
/// The window every segment we inject announces (raw): large and never zero, so the
/// mirror's kernel neither waits nor probes.
const OPEN_WINDOW: u16 = u16::MAX;
/// Payload bytes per injected segment at most (the local path; lowered to the
/// mirror's MSS).
const SEGMENT: usize = 1460;

/// Why a mirror ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The service's output differs from the master's at this stream offset (bytes
    /// from the start of the master's output): it is not deterministic for this
    /// session.
    Diverged {
        /// Offset of the first differing byte (or of the close that differs).
        offset: u64,
    },
    /// The mirror cannot go on (the reason, for the event).
    Cold(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Forged SYN sent `tries` times, the last at `at`.
    Opening { tries: u32, at: Instant },
    /// Handshake done: mirroring.
    Open,
}

/// A mirror that was open at a takeover: what the new master needs to let it serve.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The translator fixed when the mirror was opened.
    pub translator: Translator,
    /// The mirror kernel's SYN-ACK.
    pub synack: SynAck,
    /// The mirror's receive point (peer space): input before it is in the service's
    /// socket.
    pub mirror_rcv_nxt: u32,
    /// The input from `mirror_rcv_nxt` on that the mirror has not acknowledged.
    pub backlog: Vec<u8>,
    /// End of the mirror's output so far (peer space, its FIN counted).
    pub output_end: u32,
    /// The mirror kernel's latest TSval, if timestamps are on.
    pub mirror_tsval: Option<u32>,
}

/// How a mirror is doing, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Handshake done.
    pub open: bool,
    /// Input received by the master the mirror has not acknowledged, plus the
    /// master's output the mirror has not produced yet (bytes).
    pub behind: u64,
}

/// The mirror of one session.
#[derive(Debug, Clone)]
pub struct Mirror {
    key: SessionKey,
    /// The state at the handshake (for the forged handshake and the translator).
    opened_from: SessionState,
    stage: Stage,
    synack: Option<SynAck>,
    translator: Option<Translator>,
    /// Δ: peer-space output sequence = mirror sequence + Δ.
    delta: u32,
    /// Most bytes of input and of output kept waiting.
    backlog_limit: usize,
    // ---- input (peer space = mirror space) ----
    /// Input from `input_base` on, in order.
    input: VecDeque<u8>,
    /// The mirror's receive point as last seen (its ACK); `input[0]` is this byte.
    input_base: u32,
    /// Input that arrived beyond a gap (the master's kernel took it out of order).
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
    /// The peer's FIN, once the master saw it.
    peer_fin: Option<u32>,
    /// Injected up to here (FIN counted).
    sent: u32,
    /// Highest sequence end ever injected.
    high: u32,
    /// Right edge of the mirror's receive window.
    edge: u32,
    refeed_at: Option<Instant>,
    // ---- the peer's progress ----
    peer_tsval: u32,
    mirror_tsval: Option<u32>,
    /// The peer's cumulative ACK as the master saw it (peer space).
    peer_acked: u32,
    /// The last ACK we gave the mirror (mirror space).
    acked_to_mirror: u32,
    last_answer: Option<Instant>,
    // ---- output comparison (peer space) ----
    /// Stream position both buffers start at.
    cmp: u32,
    /// The master's first output byte (for offsets).
    out_start: u32,
    master_out: VecDeque<u8>,
    mirror_out: VecDeque<u8>,
    master_fin: Option<u32>,
    mirror_fin: Option<u32>,
    /// End of the mirror's output (peer space), its FIN counted.
    mirror_end: u32,
}

impl Mirror {
    /// A mirror for the session the master announced in `state` (a `Full` record at
    /// the handshake: nothing sent either way yet); returns it with the forged SYN to
    /// inject.
    pub fn open(state: &SessionState, backlog_limit: usize, now: Instant) -> (Mirror, Vec<u8>) {
        let first_out = state.our_isn.wrapping_add(1);
        let mirror = Mirror {
            key: state.key,
            opened_from: state.clone(),
            stage: Stage::Opening { tries: 1, at: now },
            synack: None,
            translator: None,
            delta: 0,
            backlog_limit,
            input: VecDeque::new(),
            input_base: state.rcv_nxt,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            peer_fin: state.peer_fin,
            sent: state.rcv_nxt,
            high: state.rcv_nxt,
            edge: state.rcv_nxt,
            refeed_at: None,
            peer_tsval: state.peer_tsval,
            mirror_tsval: None,
            peer_acked: state.snd_una,
            acked_to_mirror: 0,
            last_answer: None,
            cmp: first_out,
            out_start: first_out,
            master_out: VecDeque::new(),
            mirror_out: VecDeque::new(),
            master_fin: state.our_fin,
            mirror_fin: None,
            mirror_end: first_out,
        };
        let syn = forge::forged_syn(state);
        (mirror, syn)
    }

    /// A mirror made of a connection the service already has: this node served the
    /// session until a planned switchover (design §9: the pair stays hot). Its socket
    /// numbers output `delta` below the peer's space (0 unless it was itself
    /// restored) and its TSvals `ts_offset` below; it has written up to the end of
    /// the replicated tail and received up to `rcv_nxt`.
    pub fn from_live(
        state: &SessionState,
        delta: u32,
        ts_offset: Option<u32>,
        backlog_limit: usize,
    ) -> Mirror {
        let n = &state.negotiated;
        let app_isn = state.our_isn.wrapping_sub(delta);
        let mut opened = state.clone();
        opened.snd_nxt = state.our_isn.wrapping_add(1);
        opened.snd_una = opened.snd_nxt;
        opened.unacked.clear();
        opened.unread_input.clear();
        let synack = SynAck {
            new_isn: app_isn,
            wscale: n.our_wscale,
            mss: if n.our_mss == 0 {
                forge::DEFAULT_MSS
            } else {
                n.our_mss
            },
            tsval: n.timestamps.then(|| {
                state
                    .our_tsval
                    .wrapping_sub(ts_offset.unwrap_or(0))
                    .wrapping_add(1)
            }),
            window: state.our_window,
        };
        let translator = Translator::new(&opened, &synack);
        let written = crate::recovery::translate::tail_end(state);
        let end = state
            .our_fin
            .map_or(written, |fin| seq_max(written, fin.wrapping_add(1)));
        let wscale = n.our_wscale.unwrap_or(0).min(14);
        Mirror {
            key: state.key,
            opened_from: opened,
            stage: Stage::Open,
            synack: Some(synack),
            translator: Some(translator),
            delta,
            backlog_limit,
            input: VecDeque::new(),
            input_base: state.rcv_nxt,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            peer_fin: state.peer_fin,
            sent: state.rcv_nxt,
            high: state.rcv_nxt,
            edge: state
                .rcv_nxt
                .wrapping_add((u32::from(state.our_window) << wscale).max(1)),
            refeed_at: None,
            peer_tsval: state.peer_tsval,
            mirror_tsval: None,
            peer_acked: state.snd_una,
            acked_to_mirror: state.snd_una.wrapping_sub(delta),
            last_answer: None,
            cmp: written,
            out_start: state.our_isn.wrapping_add(1),
            master_out: VecDeque::new(),
            mirror_out: VecDeque::new(),
            master_fin: state.our_fin,
            mirror_fin: state.our_fin,
            mirror_end: end,
        }
    }

    /// A snapshot from the master holds this session in `state` (records before it
    /// may have been missed): the mirror goes on if it lacks no input the master
    /// acknowledged; output it cannot compare any more is skipped.
    pub fn on_snapshot(&mut self, state: &SessionState) -> Result<(), End> {
        if seq_lt(self.input_end(), state.rcv_nxt) {
            let first_pending = self.pending.keys().next().copied();
            return Err(End::Cold(format!(
                "a replication snapshot: input records were missed (input to {}, \
                 the master acknowledged to {}; {} bytes waiting beyond a gap{})",
                self.input_end(),
                state.rcv_nxt,
                self.pending_bytes,
                first_pending.map_or(String::new(), |p| format!(" from {p}")),
            )));
        }
        let master_end = self.cmp.wrapping_add(self.master_out.len() as u32);
        if seq_lt(master_end, state.snd_una) {
            let skip = state.snd_una.wrapping_sub(self.cmp) as usize;
            self.master_out.clear();
            let n = skip.min(self.mirror_out.len());
            self.mirror_out.drain(..n);
            self.cmp = state.snd_una;
        }
        let unacked: Vec<u8> = state.unacked.iter().copied().collect();
        self.add_master_output(state.snd_una, &unacked);
        if seq_lt(self.peer_acked, state.snd_una) {
            self.peer_acked = state.snd_una;
        }
        if state.peer_fin.is_some() {
            self.peer_fin = state.peer_fin;
        }
        if state.our_fin.is_some() {
            self.master_fin = state.our_fin;
        }
        self.compare()
    }

    /// Whether a state is one a mirror can start from: established, nothing sent
    /// either way, no FIN, nothing handed over.
    pub fn can_open(state: &SessionState) -> bool {
        state.phase == nonstop_shared::session::Phase::Established
            && state.bytes_in == 0
            && state.bytes_out == 0
            && state.rcv_nxt == state.peer_isn.wrapping_add(1)
            && state.snd_nxt == state.our_isn.wrapping_add(1)
            && state.unacked.is_empty()
            && state.unread_input.is_empty()
            && state.our_fin.is_none()
            && state.peer_fin.is_none()
    }

    /// The session.
    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// Δ (peer-space output sequence = mirror sequence + Δ), once open.
    pub fn delta(&self) -> Option<u32> {
        self.synack.map(|_| self.delta)
    }

    /// For status.
    pub fn health(&self) -> Health {
        Health {
            open: self.stage == Stage::Open,
            behind: (self.input.len() + self.pending_bytes + self.master_out.len()) as u64,
        }
    }

    /// When [`Mirror::on_timeout`] wants to run.
    pub fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Opening { at, .. } => Some(at + SYN_RETRY),
            Stage::Open => self.refeed_at,
        }
    }

    /// A replicated update of the session: input, the peer's ACK and TSval, the
    /// master's output and FINs. Returns packets to inject.
    pub fn on_sync(&mut self, sync: &SessionSync, now: Instant) -> Result<Vec<Vec<u8>>, End> {
        if seq_lt(self.peer_tsval, sync.peer_tsval) {
            self.peer_tsval = sync.peer_tsval;
        }
        if !sync.input.is_empty() {
            self.add_input(sync.input_seq, &sync.input)?;
        }
        if sync.peer_fin.is_some() {
            self.peer_fin = sync.peer_fin;
        }
        if seq_lt(self.peer_acked, sync.snd_una) {
            self.peer_acked = sync.snd_una;
        }
        if !sync.data.is_empty() {
            self.add_master_output(sync.data_seq, &sync.data);
        }
        if sync.our_fin.is_some() {
            self.master_fin = sync.our_fin;
        }
        self.compare()?;
        let mut out = Vec::new();
        if self.stage == Stage::Open {
            out.extend(self.pump(now));
            out.extend(self.replay_ack());
        }
        Ok(out)
    }

    /// A segment of the mirror's kernel (always dropped by the caller). Returns
    /// packets to inject.
    pub fn on_output(&mut self, packet: &[u8], now: Instant) -> Result<Vec<Vec<u8>>, End> {
        let Ok(seg) = Segment::parse(packet) else {
            return Ok(Vec::new());
        };
        if seg.rst {
            if let Stage::Opening { .. } = self.stage {
                // No listener yet (the replica's service is starting): the forged
                // SYN goes again at the retry.
                return Ok(Vec::new());
            }
            return Err(End::Cold(
                "the replica's service reset the connection".into(),
            ));
        }
        if seg.syn {
            return self.on_synack(packet, now);
        }
        if self.stage != Stage::Open {
            return Ok(Vec::new());
        }
        if let Some(tsval) = seg
            .options()
            .ok()
            .and_then(|o| o.timestamps)
            .map(|t| t.tsval)
        {
            self.mirror_tsval = Some(tsval);
        }
        let mut progress = false;
        if let Some(ack) = seg.ack {
            progress |= self.on_mirror_ack(ack, seg.window, now);
        }
        let start = seg.seq.wrapping_add(self.delta);
        let end_before = self.mirror_end;
        if !seg.payload.is_empty() {
            self.add_mirror_output(start, seg.payload);
        }
        if seg.fin {
            let fin = start.wrapping_add(seg.payload.len() as u32);
            self.mirror_fin = Some(fin);
            if seq_le(self.mirror_end, fin) {
                self.mirror_end = fin.wrapping_add(1);
            }
        }
        progress |= self.mirror_end != end_before;
        self.compare()?;
        let mut out = self.pump(now);
        out.extend(self.replay_ack());
        if out.is_empty() && !progress {
            // A retransmission, a window or keepalive probe: answer with where we
            // stand (rate-limited), so the mirror's kernel never times out.
            if self
                .last_answer
                .is_none_or(|at| now.saturating_duration_since(at) >= ACK_ANSWER_GAP)
            {
                self.last_answer = Some(now);
                out.push(self.ack_segment());
            }
        }
        Ok(out)
    }

    /// Timers: the forged SYN again, or input the mirror did not take yet again.
    pub fn on_timeout(&mut self, now: Instant) -> Result<Vec<Vec<u8>>, End> {
        match self.stage {
            Stage::Opening { tries, at } => {
                if now < at + SYN_RETRY {
                    return Ok(Vec::new());
                }
                if tries >= SYN_TRIES {
                    return Err(End::Cold("the replica's service never answered".into()));
                }
                self.stage = Stage::Opening {
                    tries: tries + 1,
                    at: now,
                };
                Ok(vec![forge::forged_syn(&self.opened_from)])
            }
            Stage::Open => {
                if self.refeed_at.is_some_and(|at| at <= now) {
                    self.refeed_at = None;
                    if seq_lt(self.input_base, self.sent) {
                        self.sent = self.input_base;
                    }
                    let mut out = self.pump(now);
                    if out.is_empty() {
                        out.push(self.ack_segment());
                    }
                    return Ok(out);
                }
                Ok(Vec::new())
            }
        }
    }

    /// The RST that removes the mirror's connection from the service (the mirror is
    /// given up: a takeover restores the session cold, into a fresh connection).
    pub fn reset(&self) -> Vec<u8> {
        reset_to_app(&self.key, self.high)
    }

    /// At a takeover: the mirror serves from now on if it is open.
    pub fn adopt(self) -> Option<Adopted> {
        if self.stage != Stage::Open {
            return None;
        }
        Some(Adopted {
            translator: self.translator?,
            synack: self.synack?,
            mirror_rcv_nxt: self.input_base,
            backlog: self.input.iter().copied().collect(),
            output_end: self.mirror_end,
            mirror_tsval: self.mirror_tsval,
        })
    }

    fn on_synack(&mut self, packet: &[u8], now: Instant) -> Result<Vec<Vec<u8>>, End> {
        let synack = match forge::parse_synack(packet, &self.opened_from) {
            Ok(s) => s,
            Err(e) => return Err(End::Cold(format!("unexpected SYN-ACK: {e}"))),
        };
        let ack = forge::forged_ack(&self.opened_from, &synack);
        if self.stage == Stage::Open {
            // Our ACK went missing: the kernel answers again.
            return Ok(vec![ack]);
        }
        let translator = Translator::new(&self.opened_from, &synack);
        self.delta = translator.delta();
        self.acked_to_mirror = synack.new_isn.wrapping_add(1);
        self.edge = self
            .input_base
            .wrapping_add(u32::from(synack.window).max(1));
        self.mirror_tsval = synack.tsval;
        self.synack = Some(synack);
        self.translator = Some(translator);
        self.stage = Stage::Open;
        let mut out = vec![ack];
        out.extend(self.pump(now));
        out.extend(self.replay_ack());
        Ok(out)
    }

    fn add_input(&mut self, seq: u32, bytes: &[u8]) -> Result<(), End> {
        let end = self.input_end();
        let seg_end = seq.wrapping_add(bytes.len() as u32);
        if seq_le(seg_end, end) {
            return Ok(());
        }
        if seq_le(seq, end) {
            let skip = end.wrapping_sub(seq) as usize;
            self.input.extend(&bytes[skip..]);
            self.drain_pending();
        } else {
            if self.pending.is_empty() {
                tracing::debug!(
                    session = %self.key,
                    seq,
                    len = bytes.len(),
                    input_end = end,
                    "mirror input beyond a gap"
                );
            }
            self.pending_bytes += bytes.len();
            if let Some(old) = self.pending.insert(seq, bytes.to_vec()) {
                self.pending_bytes -= old.len();
            }
        }
        if self.input.len() + self.pending_bytes > self.backlog_limit {
            return Err(End::Cold(format!(
                "input backlog beyond {} bytes (the replica's service reads too slowly)",
                self.backlog_limit
            )));
        }
        Ok(())
    }

    fn drain_pending(&mut self) {
        loop {
            let end = self.input_end();
            let Some((&seq, _)) = self.pending.iter().find(|(&s, _)| seq_le(s, end)) else {
                return;
            };
            let Some(bytes) = self.pending.remove(&seq) else {
                return;
            };
            self.pending_bytes -= bytes.len();
            let seg_end = seq.wrapping_add(bytes.len() as u32);
            if seq_lt(end, seg_end) {
                let skip = end.wrapping_sub(seq) as usize;
                self.input.extend(&bytes[skip..]);
            }
        }
    }

    fn input_end(&self) -> u32 {
        self.input_base.wrapping_add(self.input.len() as u32)
    }

    fn add_master_output(&mut self, seq: u32, bytes: &[u8]) {
        append(&mut self.master_out, self.cmp, seq, bytes);
    }

    fn add_mirror_output(&mut self, seq: u32, bytes: &[u8]) {
        append(&mut self.mirror_out, self.cmp, seq, bytes);
        let end = seq.wrapping_add(bytes.len() as u32);
        if seq_lt(self.mirror_end, end) {
            self.mirror_end = end;
        }
    }

    /// Compares what both sides wrote at the same offsets; trims what matched.
    fn compare(&mut self) -> Result<(), End> {
        let n = self.master_out.len().min(self.mirror_out.len());
        let offset = |at: u32| u64::from(at.wrapping_sub(self.out_start));
        if let Some(i) = (0..n).find(|&i| self.master_out[i] != self.mirror_out[i]) {
            return Err(End::Diverged {
                offset: offset(self.cmp.wrapping_add(i as u32)),
            });
        }
        self.master_out.drain(..n);
        self.mirror_out.drain(..n);
        self.cmp = self.cmp.wrapping_add(n as u32);
        let master_end = self.cmp.wrapping_add(self.master_out.len() as u32);
        let mirror_data_end = self.cmp.wrapping_add(self.mirror_out.len() as u32);
        if let Some(fin) = self.mirror_fin {
            if self.master_fin.is_some_and(|m| m != fin) || seq_lt(fin, master_end) {
                return Err(End::Diverged {
                    offset: offset(fin),
                });
            }
        }
        if let Some(fin) = self.master_fin {
            if seq_lt(fin, mirror_data_end) {
                return Err(End::Diverged {
                    offset: offset(fin),
                });
            }
        }
        if self.master_out.len() > self.backlog_limit || self.mirror_out.len() > self.backlog_limit
        {
            return Err(End::Cold(format!(
                "output comparison more than {} bytes behind",
                self.backlog_limit
            )));
        }
        Ok(())
    }

    /// The mirror acknowledged `ack` with `window` (raw): input before it is taken.
    fn on_mirror_ack(&mut self, ack: u32, window: u16, now: Instant) -> bool {
        let wscale = self
            .synack
            .and_then(|s| s.wscale)
            .filter(|_| self.opened_from.negotiated.peer_wscale.is_some())
            .unwrap_or(0);
        let mut progress = false;
        if seq_lt(self.input_base, ack) && seq_le(ack, self.high) {
            let data_end = self.input_end();
            let taken = if seq_lt(data_end, ack) {
                data_end.wrapping_sub(self.input_base)
            } else {
                ack.wrapping_sub(self.input_base)
            };
            self.input.drain(..taken as usize);
            self.input_base = ack;
            if seq_lt(self.sent, ack) {
                self.sent = ack;
            }
            self.refeed_at = seq_lt(ack, self.sent).then(|| now + REFEED);
            progress = true;
        }
        if ack == self.input_base {
            let edge = ack.wrapping_add(u32::from(window) << wscale);
            if seq_lt(self.edge, edge) {
                self.edge = edge;
                progress = true;
            }
        }
        progress
    }

    /// Input segments (and the peer's FIN) within the mirror's window.
    fn pump(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let end = self.input_end();
        let limit = if seq_lt(self.edge, end) {
            self.edge
        } else {
            end
        };
        let mss = self
            .synack
            .map_or(SEGMENT, |s| SEGMENT.min(usize::from(s.mss)))
            .saturating_sub(if self.timestamps() { 12 } else { 0 })
            .max(1);
        while seq_lt(self.sent, limit) {
            let from = self.sent.wrapping_sub(self.input_base) as usize;
            let room = limit.wrapping_sub(self.sent) as usize;
            let to = (from + mss.min(room)).min(self.input.len());
            if to <= from {
                break;
            }
            let payload: Vec<u8> = self.input.range(from..to).copied().collect();
            out.push(self.segment(self.sent, flags::PSH, &payload));
            self.sent = self.sent.wrapping_add((to - from) as u32);
        }
        if let Some(fin) = self.peer_fin {
            if self.sent == fin && fin == end {
                out.push(self.segment(fin, flags::FIN, &[]));
                self.sent = fin.wrapping_add(1);
            }
        }
        if seq_lt(self.high, self.sent) {
            self.high = self.sent;
        }
        if !out.is_empty() && self.refeed_at.is_none() {
            self.refeed_at = Some(now + REFEED);
        }
        out
    }

    /// The peer's ACK progress, as far as the mirror has written (mirror space).
    fn mirror_ack(&self) -> u32 {
        let ack = if seq_lt(self.mirror_end, self.peer_acked) {
            self.mirror_end
        } else {
            self.peer_acked
        };
        ack.wrapping_sub(self.delta)
    }

    /// An ACK to the mirror when the peer's progress moved it.
    fn replay_ack(&mut self) -> Option<Vec<u8>> {
        if self.stage != Stage::Open {
            return None;
        }
        let ack = self.mirror_ack();
        if !seq_lt(self.acked_to_mirror, ack) {
            return None;
        }
        Some(self.ack_segment())
    }

    fn ack_segment(&mut self) -> Vec<u8> {
        let seq = self.high;
        self.segment(seq, 0, &[])
    }

    fn timestamps(&self) -> bool {
        self.opened_from.negotiated.timestamps && self.synack.is_some_and(|s| s.tsval.is_some())
    }

    /// A segment from the peer to the mirror: the current ACK, an open window, the
    /// peer's TSval.
    fn segment(&mut self, seq: u32, extra: u8, payload: &[u8]) -> Vec<u8> {
        let ack = self.mirror_ack();
        if seq_lt(self.acked_to_mirror, ack) {
            self.acked_to_mirror = ack;
        }
        let ts = self
            .timestamps()
            .then(|| wire::ts_option(self.peer_tsval, self.mirror_tsval.unwrap_or(0)));
        wire::build(&Tcp {
            src: (self.key.peer_ip, self.key.peer_port),
            dst: (self.key.local_ip, self.key.local_port),
            seq,
            ack: Some(self.acked_to_mirror),
            flags: extra,
            window: OPEN_WINDOW,
            options: ts.as_ref().map_or(&[][..], |o| &o[..]),
            payload,
        })
    }
}

/// Appends the part of `bytes` (at `seq`) that extends `buf` (which starts at
/// `start`); a part before `start` is already compared, a gap is ignored (the
/// stream is replayed in order).
fn append(buf: &mut VecDeque<u8>, start: u32, seq: u32, bytes: &[u8]) {
    let end = start.wrapping_add(buf.len() as u32);
    let seg_end = seq.wrapping_add(bytes.len() as u32);
    if seq_lt(end, seq) || seq_le(seg_end, end) {
        return;
    }
    let skip = end.wrapping_sub(seq) as usize;
    buf.extend(&bytes[skip..]);
}
