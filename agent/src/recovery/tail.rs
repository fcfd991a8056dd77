//! The replicated tail of a restored session, delivered reliably (design §4 step 4).
//!
//! After a restore, the bytes in `[snd_una, data_end)` — output the old master's
//! service wrote and the peer has not acknowledged (and, after a planned switchover,
//! output its kernel had not even sent yet) — exist only in the replica: the new
//! service never wrote them. The agent sends them itself, as a small TCP sender:
//! - within the peer's window (the replicated one at first, then each ACK's);
//! - retransmitting from the peer's cumulative ACK after three duplicate ACKs or when
//!   nothing moved for the retransmission timeout (200 ms, doubling to 3 s), which
//!   doubles as a zero-window probe;
//! - our FIN, if it was pending, after the last byte.
//!
//! A tail segment lost on the way (a lossy link) is therefore sent again, instead of
//! leaving the peer waiting forever at a hole the app kernel cannot fill.
//! Sans-IO: ACKs and the clock in, segments (IPv4 bytes) out.

use super::translate::tail_segment;
use crate::session::tracker::unacked;
use nonstop_shared::session::{seq_le, seq_lt, SessionState};
use std::time::{Duration, Instant};

/// First retransmission timeout (Linux's `TCP_RTO_MIN`).
pub const RTO_INITIAL: Duration = Duration::from_millis(200);
/// Longest retransmission timeout (the tail is short-lived; keep probing briskly).
pub const RTO_MAX: Duration = Duration::from_secs(3);
/// Duplicate ACKs that trigger a fast retransmission (RFC 5681).
const DUPACK_THRESHOLD: u8 = 3;

/// The sender of one restored session's replicated tail.
#[derive(Debug, Clone)]
pub struct Tail {
    /// The restored state: its `unacked` bytes start at `start`.
    state: SessionState,
    /// First byte of `unacked` (peer space).
    start: u32,
    /// Just past the last byte of `unacked`.
    data_end: u32,
    /// Just past everything the tail covers: `data_end`, plus one if our FIN is
    /// pending there.
    end: u32,
    /// The peer's cumulative ACK (at least `start`, at most `end`).
    acked: u32,
    /// The peer's window in bytes, from its latest ACK.
    window: u32,
    /// Sent up to here (never beyond `end`).
    sent: u32,
    dupacks: u8,
    rto: Duration,
    retransmit_at: Option<Instant>,
    /// Payload bytes per segment.
    mss: usize,
}

impl Tail {
    /// The tail of `state` (a restored session), segments of at most `mss` payload
    /// bytes; `None` if there is nothing to deliver.
    pub fn new(state: &SessionState, mss: usize) -> Option<Tail> {
        let start = unacked::data_start(state);
        let data_end = unacked::data_end(state);
        let end = match state.our_fin {
            Some(fin) if fin == data_end && seq_le(state.snd_una, fin) => fin.wrapping_add(1),
            _ => data_end,
        };
        if !seq_lt(start, end) {
            return None;
        }
        let shift = state.negotiated.peer_wscale.unwrap_or(0).min(14);
        Some(Tail {
            state: state.clone(),
            start,
            data_end,
            end,
            acked: start,
            window: u32::from(state.peer_window) << shift,
            sent: start,
            dupacks: 0,
            rto: RTO_INITIAL,
            retransmit_at: None,
            mss: mss.max(1),
        })
    }

    /// Where the tail ends (peer space): the app's first byte maps here.
    pub fn end(&self) -> u32 {
        self.end
    }

    /// Whether the peer has acknowledged the whole tail.
    pub fn done(&self) -> bool {
        self.acked == self.end
    }

    /// When [`Tail::poll`] wants to run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.retransmit_at
    }

    /// The first segments, right after the restore: as much as the window allows.
    pub fn start(&mut self, rcv_nxt: u32, now: Instant) -> Vec<Vec<u8>> {
        self.send_new(rcv_nxt, now)
    }

    /// An acceptable ACK from the peer (`ack`, window in bytes, scaled), with our
    /// current `rcv_nxt` for the segments it releases.
    pub fn on_ack(
        &mut self,
        ack: u32,
        window: u32,
        has_data: bool,
        rcv_nxt: u32,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        if self.done() {
            return Vec::new();
        }
        let ack = if seq_lt(self.end, ack) { self.end } else { ack };
        let mut out = Vec::new();
        if seq_lt(self.acked, ack) {
            self.acked = ack;
            if seq_lt(self.sent, ack) {
                self.sent = ack;
            }
            self.dupacks = 0;
            self.rto = RTO_INITIAL;
            self.retransmit_at = (!self.done()).then(|| now + self.rto);
        } else if ack == self.acked && !has_data && window == self.window {
            self.dupacks = self.dupacks.saturating_add(1);
            if self.dupacks == DUPACK_THRESHOLD {
                out.extend(self.segment_at(self.acked, rcv_nxt));
            }
        }
        self.window = window;
        out.extend(self.send_new(rcv_nxt, now));
        out
    }

    /// The retransmission timer: nothing acknowledged for the timeout, so the first
    /// unacknowledged segment goes again (also a probe of a zero window).
    pub fn poll(&mut self, rcv_nxt: u32, now: Instant) -> Vec<Vec<u8>> {
        match self.retransmit_at {
            Some(at) if at <= now && !self.done() => {
                self.rto = (self.rto * 2).min(RTO_MAX);
                self.retransmit_at = Some(now + self.rto);
                self.segment_at(self.acked, rcv_nxt).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// New segments from `sent` up to the window's right edge.
    fn send_new(&mut self, rcv_nxt: u32, now: Instant) -> Vec<Vec<u8>> {
        let right = self.acked.wrapping_add(self.window);
        let limit = if seq_lt(right, self.end) {
            right
        } else {
            self.end
        };
        let mut out = Vec::new();
        while seq_lt(self.sent, limit) {
            let Some((segment, next)) = self.segment(self.sent, limit, rcv_nxt) else {
                break;
            };
            out.push(segment);
            self.sent = next;
        }
        if self.retransmit_at.is_none() && !self.done() {
            // Also when the window is closed: the timer probes it.
            self.retransmit_at = Some(now + self.rto);
        }
        out
    }

    /// The one segment starting at `seq` (up to the tail's end).
    fn segment_at(&self, seq: u32, rcv_nxt: u32) -> Option<Vec<u8>> {
        self.segment(seq, self.end, rcv_nxt).map(|(s, _)| s)
    }

    /// A segment starting at `seq` ending at most at `limit`, and where it ends.
    fn segment(&self, seq: u32, limit: u32, rcv_nxt: u32) -> Option<(Vec<u8>, u32)> {
        if !seq_lt(seq, self.end) {
            return None;
        }
        if seq == self.data_end {
            // Only our FIN is left.
            let fin = tail_segment(&self.state, seq, &[], true, rcv_nxt);
            return Some((fin, self.end));
        }
        let from = seq.wrapping_sub(self.start) as usize;
        let room = limit.wrapping_sub(seq) as usize;
        let to = (from + self.mss.min(room.max(1))).min(self.state.unacked.len());
        let payload: Vec<u8> = self.state.unacked.range(from..to).copied().collect();
        let next = seq.wrapping_add(payload.len() as u32);
        let fin = next == self.data_end && self.end != self.data_end;
        let segment = tail_segment(&self.state, seq, &payload, fin, rcv_nxt);
        Some((segment, if fin { self.end } else { next }))
    }
}
