//! One tracked session: how each segment, inbound or outbound, changes its state.

use super::acceptance::{self, Rejection};
use super::unacked::{self, advance_snd_una, append_unacked};
use super::TrackerStats;
use crate::tcp::options::TcpOptions;
use crate::tcp::segment::Segment;
use nonstop_shared::session::{
    seq_le, seq_lt, Negotiated, Phase, SessionKey, SessionState, SessionSync,
};

/// Largest window scale shift (RFC 7323 §2.3).
const MAX_WSCALE: u8 = 14;

/// What one segment did to a session.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing replicated changed.
    Nothing,
    /// Replicated fields changed: send this update.
    Sync(SessionSync),
    /// The handshake completed: send the full state.
    Established,
    /// The session ended (both FINs acknowledged).
    Closed,
    /// The session was reset.
    Reset,
    /// The peer started a new handshake on the same 4-tuple: replace the entry.
    NewSyn,
    /// The kernel would not accept this peer segment: nothing changed.
    Rejected(Rejection),
}

/// The options of a SYN or SYN-ACK, kept until both are known.
#[derive(Debug, Clone, Copy, Default)]
struct SynOptions {
    mss: Option<u16>,
    wscale: Option<u8>,
    sack_permitted: bool,
    timestamps: bool,
}

impl From<&TcpOptions> for SynOptions {
    fn from(o: &TcpOptions) -> SynOptions {
        SynOptions {
            mss: o.mss,
            wscale: o.wscale,
            sack_permitted: o.sack_permitted,
            timestamps: o.timestamps.is_some(),
        }
    }
}

/// The replicated fields a [`SessionSync`] carries (data aside): a packet that leaves
/// them unchanged and appends no data emits nothing.
#[derive(Debug, PartialEq, Eq)]
struct Replicated {
    phase: Phase,
    rcv_nxt: u32,
    peer_seq_max: u32,
    snd_nxt: u32,
    snd_una: u32,
    peer_window: u16,
    our_window: u16,
    peer_tsval: u32,
    our_tsval: u32,
    our_fin: Option<u32>,
    peer_fin: Option<u32>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Replicated {
    fn of(s: &SessionState) -> Replicated {
        Replicated {
            phase: s.phase,
            rcv_nxt: s.rcv_nxt,
            peer_seq_max: s.peer_seq_max,
            snd_nxt: s.snd_nxt,
            snd_una: s.snd_una,
            peer_window: s.peer_window,
            our_window: s.our_window,
            peer_tsval: s.peer_tsval,
            our_tsval: s.our_tsval,
            our_fin: s.our_fin,
            peer_fin: s.peer_fin,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        }
    }
}

/// A tracked session: the replicated state plus what only the tracker needs.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The recovery data.
    pub state: SessionState,
    /// Whether the backup knows the session (a `Full` was emitted or it was restored):
    /// only then does its end emit a `Delete`.
    pub announced: bool,
    /// Our SYN-ACK was seen: `our_isn` and the negotiated options are valid.
    synack_seen: bool,
    /// The peer's SYN options.
    peer_syn: SynOptions,
    /// (seq, ack) of the segment that last set `peer_window` (RFC 793 SND.WL1/WL2),
    /// so a reordered old segment cannot roll the window back.
    window_mark: Option<(u32, u32)>,
    /// The largest window the peer has offered (scaled): how far below `snd_una` an
    /// ACK may still be acceptable (RFC 5961 §5.2, the kernel's `max_window`).
    max_peer_window: u32,
    /// The furthest right edge of the receive window we have announced (`ack +
    /// window`, scaled). The kernel never shrinks its window, so this is its own
    /// edge; after a restore our segments and the new service's together may have
    /// announced more than the service takes now, and the peer may legitimately use it.
    announced_edge: u32,
}

impl Entry {
    /// A session opened by the peer's SYN.
    pub fn from_syn(
        key: SessionKey,
        seg: &Segment<'_>,
        options: &TcpOptions,
        now_ms: u64,
    ) -> Entry {
        let state = SessionState {
            key,
            phase: Phase::Handshake,
            peer_isn: seg.seq,
            our_isn: 0,
            rcv_nxt: seg.seq,
            peer_seq_max: seg.payload_end(),
            snd_nxt: 0,
            snd_una: 0,
            peer_window: seg.window,
            our_window: 0,
            negotiated: Negotiated {
                peer_mss: options.mss.unwrap_or(0),
                ..Negotiated::default()
            },
            peer_tsval: options.timestamps.map_or(0, |t| t.tsval),
            our_tsval: 0,
            our_fin: None,
            peer_fin: None,
            unacked: Default::default(),
            unread_input: Vec::new(),
            at_risk: false,
            bytes_in: u64::from(seg.len()),
            bytes_out: 0,
            last_activity_ms: now_ms,
        };
        Entry {
            state,
            announced: false,
            synack_seen: false,
            peer_syn: SynOptions::from(options),
            window_mark: Some((seg.seq, 0)),
            max_peer_window: u32::from(seg.window),
            announced_edge: seg.seq,
        }
    }

    /// A session rebuilt from replicated state (already known to the backup).
    pub fn restored(state: SessionState) -> Entry {
        let n = state.negotiated;
        Entry {
            peer_syn: SynOptions {
                mss: (n.peer_mss != 0).then_some(n.peer_mss),
                wscale: n.peer_wscale,
                sack_permitted: n.sack_permitted,
                timestamps: n.timestamps,
            },
            synack_seen: state.phase != Phase::Handshake,
            // Not replicated: assume the largest window the peer could offer.
            max_peer_window: u32::from(u16::MAX) << n.peer_wscale.unwrap_or(0),
            announced_edge: acceptance::window_right_edge(&state),
            state,
            announced: true,
            window_mark: None,
        }
    }

    /// What the kernel does with a peer's segment, judged without changing anything
    /// ([`acceptance`]): `Ok(None)` for a segment to apply, `Ok(Some(step))` for one
    /// that ends in `step` at once, `Err` for one the kernel refuses.
    pub fn judge(&self, seg: &Segment<'_>) -> Result<Option<Step>, Rejection> {
        let s = &self.state;
        if seg.syn {
            // A retransmitted SYN changes nothing; a new attempt before our SYN-ACK
            // (the old one never got an answer) replaces the entry; any other SYN is
            // the kernel's challenge-ACK case.
            return if s.phase == Phase::Handshake && seg.seq == s.peer_isn {
                Ok(Some(Step::Nothing))
            } else if s.phase == Phase::Handshake && !self.synack_seen && seg.ack.is_none() {
                Ok(Some(Step::NewSyn))
            } else {
                Err(Rejection::Syn)
            };
        }
        if seg.rst {
            return if acceptance::rst_acceptable(s, seg.seq) {
                Ok(Some(Step::Reset))
            } else {
                Err(Rejection::RstNotExact)
            };
        }
        // Segments without ACK are dropped by the stack (RFC 793 §3.9, "fifth").
        let ack = seg.ack.ok_or(Rejection::NoAck)?;
        if !acceptance::sequence_acceptable(s, seg.seq, seg.end(), self.announced_edge) {
            return Err(Rejection::OutOfWindow);
        }
        if s.phase == Phase::Handshake {
            if !self.synack_seen || ack != s.our_isn.wrapping_add(1) {
                return Err(Rejection::UnsentAck);
            }
            return Ok(None);
        }
        acceptance::ack_check(s, ack, self.max_peer_window)?;
        Ok(None)
    }

    /// A segment from the peer. It changes the session only if the kernel accepts it
    /// ([`Entry::judge`]); otherwise the step is [`Step::Rejected`] and nothing
    /// changed.
    pub fn inbound(
        &mut self,
        seg: &Segment<'_>,
        options: &TcpOptions,
        stats: &mut TrackerStats,
    ) -> Step {
        match self.judge(seg) {
            Ok(None) => {}
            Ok(Some(step)) => return step,
            Err(rejection) => {
                if rejection == Rejection::UnsentAck {
                    stats.invalid_acks += 1;
                }
                return Step::Rejected(rejection);
            }
        }
        let s = &mut self.state;
        let Some(ack) = seg.ack else {
            return Step::Nothing;
        };
        let end = seg.end();
        let established = s.phase == Phase::Handshake;
        if established {
            s.phase = Phase::Established;
        }
        let before = Replicated::of(s);

        // Sequence space: what the peer has sent.
        if seq_lt(s.peer_seq_max, end) {
            s.bytes_in += payload_between(s.peer_seq_max, end, seg.fin.then(|| seg.payload_end()));
            s.peer_seq_max = end;
        }
        if seg.fin && s.peer_fin.is_none() {
            s.peer_fin = Some(seg.payload_end());
        }

        // The cumulative ACK (SACK blocks never trim) and the window it comes with.
        if seq_le(s.snd_una, ack) {
            advance_snd_una(s, ack);
            let newer = match self.window_mark {
                None => true,
                Some((wl1, wl2)) => seq_lt(wl1, seg.seq) || (wl1 == seg.seq && seq_le(wl2, ack)),
            };
            if newer {
                s.peer_window = seg.window;
                self.window_mark = Some((seg.seq, ack));
                let shift = s.negotiated.peer_wscale.unwrap_or(0);
                self.max_peer_window = self.max_peer_window.max(u32::from(seg.window) << shift);
            }
        }
        if let Some(ts) = options.timestamps.filter(|_| s.negotiated.timestamps) {
            if seq_lt(s.peer_tsval, ts.tsval) {
                s.peer_tsval = ts.tsval;
            }
        }
        let data_seq = unacked::data_end(s);
        self.finish(before, established, data_seq, Vec::new())
    }

    /// A segment from the service.
    pub fn outbound(
        &mut self,
        seg: &Segment<'_>,
        options: &TcpOptions,
        max_unacked: usize,
        stats: &mut TrackerStats,
    ) -> Step {
        if seg.syn {
            if seg.ack.is_some() && self.state.phase == Phase::Handshake {
                self.on_synack(seg, options);
            }
            return Step::Nothing;
        }
        if seg.rst {
            return Step::Reset;
        }
        if self.state.phase == Phase::Handshake {
            return Step::Nothing;
        }
        let s = &mut self.state;
        let before = Replicated::of(s);
        let complete = unacked::unacked_complete(s);
        let data_seq = unacked::data_end(s);

        // Payload: store what extends `unacked` (never past our FIN).
        let mut payload = seg.payload;
        if let Some(fin) = s.our_fin {
            let room = if seq_lt(seg.seq, fin) {
                fin.wrapping_sub(seg.seq) as usize
            } else {
                0
            };
            payload = &payload[..payload.len().min(room)];
        }
        if seq_lt(data_seq, seg.seq) && complete && !payload.is_empty() {
            tracing::debug!(key = %s.key, seq = seg.seq, known_end = data_seq, "outbound segment beyond the known bytes");
            stats.outbound_gaps += 1;
        }
        let appended = append_unacked(s, seg.seq, payload, max_unacked);

        // Sequence space: what we have sent.
        let end = seg.end();
        if seq_lt(s.snd_nxt, end) {
            let new = payload_between(s.snd_nxt, end, seg.fin.then(|| seg.payload_end()));
            // New bytes are stored if `unacked` reaches past them now (appended just
            // now, or handed over earlier: see `Tracker::hand_over`).
            let held_to = unacked::data_end(s);
            let stored_from = if seq_lt(s.snd_nxt, held_to) {
                held_to
            } else {
                s.snd_nxt
            };
            let payload_end = seg.payload_end();
            if seq_lt(stored_from, payload_end) {
                stats.unstored_bytes += u64::from(payload_end.wrapping_sub(stored_from));
            }
            s.bytes_out += new;
            s.snd_nxt = end;
        }
        if seg.fin && s.our_fin.is_none() {
            s.our_fin = Some(seg.payload_end());
        }
        if let Some(ack) = seg.ack {
            if seq_lt(s.rcv_nxt, ack) {
                s.rcv_nxt = ack;
            }
        }
        s.our_window = seg.window;
        let edge = acceptance::window_right_edge(s);
        if seq_lt(self.announced_edge, edge) {
            self.announced_edge = edge;
        }
        if let Some(ts) = options.timestamps.filter(|_| s.negotiated.timestamps) {
            if seq_lt(s.our_tsval, ts.tsval) {
                s.our_tsval = ts.tsval;
            }
        }
        // The bytes just appended, copied slice-wise (not byte by byte: a GSO
        // super-packet brings up to 64 KiB).
        let (front, back) = s.unacked.as_slices();
        let from = s.unacked.len() - appended;
        let mut data = Vec::with_capacity(appended);
        if from < front.len() {
            data.extend_from_slice(&front[from..]);
            data.extend_from_slice(back);
        } else {
            data.extend_from_slice(&back[from - front.len()..]);
        }
        self.finish(before, false, data_seq, data)
    }

    /// Our SYN-ACK: our ISN and options; the negotiated options follow. A SYN-ACK that
    /// answers another SYN (ack != peer_isn + 1) is not ours to record.
    fn on_synack(&mut self, seg: &Segment<'_>, options: &TcpOptions) {
        let s = &mut self.state;
        if seg.ack != Some(s.peer_isn.wrapping_add(1)) {
            return;
        }
        if self.synack_seen && seg.seq == s.our_isn {
            return; // retransmission
        }
        let ours = SynOptions::from(options);
        let peer = self.peer_syn;
        let scaling = peer.wscale.is_some() && ours.wscale.is_some();
        s.our_isn = seg.seq;
        s.snd_una = seg.seq;
        s.snd_nxt = seg.seq.wrapping_add(1);
        s.rcv_nxt = s.peer_isn.wrapping_add(1);
        s.our_window = seg.window;
        self.announced_edge = s.rcv_nxt.wrapping_add(u32::from(seg.window));
        s.negotiated = Negotiated {
            peer_mss: peer.mss.unwrap_or(0),
            our_mss: ours.mss.unwrap_or(0),
            peer_wscale: peer.wscale.filter(|_| scaling).map(|w| w.min(MAX_WSCALE)),
            our_wscale: ours.wscale.filter(|_| scaling).map(|w| w.min(MAX_WSCALE)),
            sack_permitted: peer.sack_permitted && ours.sack_permitted,
            timestamps: peer.timestamps && ours.timestamps,
        };
        if s.negotiated.timestamps {
            s.our_tsval = options.timestamps.map_or(0, |t| t.tsval);
        } else {
            s.peer_tsval = 0;
            s.our_tsval = 0;
        }
        self.synack_seen = true;
    }

    /// Phase from the FINs, then the step to report.
    fn finish(
        &mut self,
        before: Replicated,
        established: bool,
        data_seq: u32,
        data: Vec<u8>,
    ) -> Step {
        let s = &mut self.state;
        s.phase = match (s.our_fin, s.peer_fin) {
            (None, None) => Phase::Established,
            (Some(_), None) => Phase::LocalClosed,
            (None, Some(_)) => Phase::PeerClosed,
            (Some(ours), Some(theirs)) => {
                if seq_lt(ours, s.snd_una) && seq_lt(theirs, s.rcv_nxt) {
                    s.phase = Phase::Closed;
                    return Step::Closed;
                }
                Phase::Closing
            }
        };
        if established {
            Step::Established
        } else if data.is_empty() && Replicated::of(s) == before {
            Step::Nothing
        } else {
            Step::Sync(sync_of(s, data_seq, data))
        }
    }
}

/// Payload bytes in the sequence range `[from, to)`, not counting a FIN at `fin`.
fn payload_between(from: u32, to: u32, fin: Option<u32>) -> u64 {
    let span = u64::from(to.wrapping_sub(from));
    match fin {
        Some(f) if seq_le(from, f) && seq_lt(f, to) => span - 1,
        _ => span,
    }
}

/// The [`SessionSync`] describing `state` now, carrying `data` at `data_seq`.
pub(super) fn sync_of(state: &SessionState, data_seq: u32, data: Vec<u8>) -> SessionSync {
    SessionSync {
        key: state.key,
        phase: state.phase,
        rcv_nxt: state.rcv_nxt,
        peer_seq_max: state.peer_seq_max,
        snd_nxt: state.snd_nxt,
        snd_una: state.snd_una,
        peer_window: state.peer_window,
        our_window: state.our_window,
        peer_tsval: state.peer_tsval,
        our_tsval: state.our_tsval,
        our_fin: state.our_fin,
        peer_fin: state.peer_fin,
        data_seq,
        data,
        input_seq: 0,
        input: Vec::new(),
        bytes_in: state.bytes_in,
        bytes_out: state.bytes_out,
        last_activity_ms: state.last_activity_ms,
    }
}
