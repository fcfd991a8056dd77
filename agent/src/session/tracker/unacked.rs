//! The `unacked` buffer: which sequence numbers its bytes have, how ACKs trim it and
//! how outbound payload extends it. The backup's table (`session::table`) applies the
//! same rules to the records; the tests replay every trace through it.
//!
//! `unacked[0]` is the byte at `snd_una`, except that our SYN takes sequence space but
//! no byte: while the SYN is unacknowledged (`snd_una == our_isn`) the first payload
//! byte is at `our_isn + 1`. (The tracker announces a session only once the SYN is
//! acknowledged, so records never show that case.) Our FIN likewise takes no byte.

use nonstop_shared::session::{seq_lt, Phase, SessionState};

/// Sequence number of `unacked[0]` (the first unacknowledged payload byte).
pub fn data_start(state: &SessionState) -> u32 {
    if state.snd_una == state.our_isn {
        state.our_isn.wrapping_add(1)
    } else {
        state.snd_una
    }
}

/// Sequence number just past the last byte held in `unacked`.
pub fn data_end(state: &SessionState) -> u32 {
    // `unacked` is capped far below 4 GiB (`TrackerLimits::max_unacked_bytes`).
    data_start(state).wrapping_add(state.unacked.len() as u32)
}

/// Whether `unacked` holds every byte in `[snd_una, snd_nxt)` (FIN excluded), i.e. a
/// backup could retransmit everything the peer may still need. It is not complete when
/// the per-session byte limit was reached or a segment skipped ahead of the known bytes.
pub fn unacked_complete(state: &SessionState) -> bool {
    if state.phase == Phase::Handshake {
        return true;
    }
    let payload_end = state.our_fin.unwrap_or(state.snd_nxt);
    !seq_lt(data_end(state), payload_end)
}

/// Moves `snd_una` forward to `ack` and drops the acknowledged bytes from the front of
/// `unacked` (SYN and FIN take no bytes). Acks at or before `snd_una` change nothing;
/// callers validate `ack <= snd_nxt`.
pub(super) fn advance_snd_una(state: &mut SessionState, ack: u32) {
    if !seq_lt(state.snd_una, ack) {
        return;
    }
    // An ACK of our FIN covers one sequence number past the bytes: the `min` below
    // (all of `unacked`) takes care of it, as it does for a session whose byte limit
    // was reached.
    let start = data_start(state);
    if seq_lt(start, ack) {
        let acked = ack.wrapping_sub(start) as usize;
        let trimmed = acked.min(state.unacked.len());
        state.unacked.drain(..trimmed);
    }
    state.snd_una = ack;
}

/// Appends the part of `data` (payload starting at sequence `seq`) that extends
/// `unacked` contiguously; bytes already held are ignored, and a chunk that starts
/// beyond the held bytes is not appended (it would leave a hole). Returns the number of
/// bytes appended.
pub(super) fn append_unacked(
    state: &mut SessionState,
    seq: u32,
    data: &[u8],
    limit: usize,
) -> usize {
    let end = data_end(state);
    let data_end = seq.wrapping_add(data.len() as u32);
    if seq_lt(end, seq) || !seq_lt(end, data_end) {
        return 0;
    }
    let skip = end.wrapping_sub(seq) as usize;
    let Some(new) = data.get(skip..) else {
        return 0;
    };
    let take = new.len().min(limit.saturating_sub(state.unacked.len()));
    state.unacked.extend(&new[..take]);
    take
}
