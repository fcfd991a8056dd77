//! How replicated state is read and updated: the rules the tracker uses on the master
//! and that the backup's table must use too, so both sides hold the same bytes.
//!
//! `unacked[0]` is the byte at `snd_una`, except that our SYN takes sequence space but
//! no byte: while the SYN is unacknowledged (`snd_una == our_isn`) the first payload
//! byte is at `our_isn + 1`. Our FIN likewise takes no byte.

use nonstop_shared::session::{seq_lt, Phase, SessionState, SessionSync};

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
pub fn advance_snd_una(state: &mut SessionState, ack: u32) {
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
pub fn append_unacked(state: &mut SessionState, seq: u32, data: &[u8], limit: usize) -> usize {
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
    state.unacked.extend_from_slice(&new[..take]);
    take
}

/// Applies a [`SessionSync`] to a state, as the backup does: append the carried
/// payload where it extends `unacked`, trim to the new `snd_una`, copy every other
/// field. Replaying the tracker's records this way yields the tracker's own state.
pub fn apply_sync(state: &mut SessionState, sync: &SessionSync) {
    append_unacked(state, sync.data_seq, &sync.data, usize::MAX);
    state.our_fin = sync.our_fin;
    advance_snd_una(state, sync.snd_una);
    state.phase = sync.phase;
    state.rcv_nxt = sync.rcv_nxt;
    state.peer_seq_max = sync.peer_seq_max;
    state.snd_nxt = sync.snd_nxt;
    state.snd_una = sync.snd_una;
    state.peer_window = sync.peer_window;
    state.our_window = sync.our_window;
    state.peer_tsval = sync.peer_tsval;
    state.our_tsval = sync.our_tsval;
    state.peer_fin = sync.peer_fin;
    state.bytes_in = sync.bytes_in;
    state.bytes_out = sync.bytes_out;
    state.last_activity_ms = sync.last_activity_ms;
}

/// The [`SessionSync`] describing `state` now, carrying `data` at `data_seq`.
pub fn sync_of(state: &SessionState, data_seq: u32, data: Vec<u8>) -> SessionSync {
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
        bytes_in: state.bytes_in,
        bytes_out: state.bytes_out,
        last_activity_ms: state.last_activity_ms,
    }
}
