//! Whether the service's kernel accepts a peer's segment (RFC 793 §3.9 acceptability,
//! RFC 5961 §3–5 blind in-session attacks): the tracker lets a segment change a
//! session only when the kernel would, so a forged segment that carries a session's
//! 4-tuple but guessed sequence numbers changes nothing here either.
//!
//! The rules, in the order the kernel applies them (`tcp_validate_incoming`,
//! `tcp_ack`), all modulo 2^32:
//! - **sequence**: acceptable when `end ≥ rcv_nxt` and `seq ≤ rcv_nxt + window`, where
//!   `rcv_nxt` is the ACK number of the service's latest segment (the kernel's
//!   `rcv_wup`) and `window` what that segment advertised (scaled).
//! - **RST**: resets only at exactly the point the kernel expects. That is its
//!   `rcv_nxt`, which is either the last ACK we saw it send or, when it has received
//!   bytes it has not acknowledged yet (delayed ACK), the end of everything the peer
//!   sent (`peer_seq_max`, where a peer's RST lands: it carries its `snd_nxt`); also
//!   `rcv_nxt − 1` once the peer's FIN was received (Linux's `tcp_reset_check`). Any
//!   other RST — in the window (the kernel's challenge-ACK case) or outside — changes
//!   nothing.
//! - **SYN** on a session past its handshake never resets it (the kernel answers with
//!   a challenge ACK).
//! - **no ACK flag**: the kernel drops the segment.
//! - **ACK**: acceptable from `snd_una − max_window` to `snd_nxt`; beyond `snd_nxt`
//!   (data never sent) or older than that, the whole segment is discarded.
//!
//! Sans-IO: plain functions of the session state and the segment.

use nonstop_shared::session::{seq_le, seq_lt, Phase, SessionState};

/// Why a peer's segment was refused (it goes on to the kernel unchanged and changes
/// no session state; the kernel drops it or answers with a challenge ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The segment lies outside the receive window.
    OutOfWindow,
    /// A RST not at the exact expected sequence number.
    RstNotExact,
    /// A SYN on a session past its handshake (or a second SYN after our SYN-ACK).
    Syn,
    /// No ACK flag on a non-SYN, non-RST segment.
    NoAck,
    /// The sequence number is acceptable but the ACK covers bytes never sent.
    UnsentAck,
    /// The ACK is older than the peer's largest window before `snd_una`.
    StaleAck,
}

/// The right edge of the receive window the service last advertised: `rcv_nxt` plus
/// its window, scaled (the SYN-ACK's window is never scaled), plus the rounding the
/// scaling may hide.
pub fn window_right_edge(s: &SessionState) -> u32 {
    let shift = if s.phase == Phase::Handshake {
        0
    } else {
        u32::from(s.negotiated.our_wscale.unwrap_or(0))
    };
    let window = (u32::from(s.our_window) << shift) | ((1u32 << shift) - 1);
    s.rcv_nxt.wrapping_add(window)
}

/// RFC 793 acceptability of the sequence range `[seq, end)` against the window
/// (`end` counts SYN and FIN).
pub fn sequence_acceptable(s: &SessionState, seq: u32, end: u32) -> bool {
    seq_le(s.rcv_nxt, end) && seq_le(seq, window_right_edge(s))
}

/// Whether a RST at `seq` resets the session (see the module doc).
pub fn rst_acceptable(s: &SessionState, seq: u32) -> bool {
    if s.phase == Phase::Handshake {
        // A half-open connection is reset by any RST in its window.
        return sequence_acceptable(s, seq, seq);
    }
    seq == s.rcv_nxt || seq == s.peer_seq_max || s.peer_fin == Some(seq)
}

/// RFC 5961 §5.2: an ACK number is acceptable from `snd_una − max_window` to
/// `snd_nxt`.
pub fn ack_check(s: &SessionState, ack: u32, max_window: u32) -> Result<(), Rejection> {
    if seq_lt(s.snd_nxt, ack) {
        Err(Rejection::UnsentAck)
    } else if seq_lt(ack, s.snd_una.wrapping_sub(max_window)) {
        Err(Rejection::StaleAck)
    } else {
        Ok(())
    }
}
