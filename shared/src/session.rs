//! Per-session recovery data: what the backup needs to resume one TCP session of the
//! service, and the records that carry it master → backup and onto disk.
//!
//! The types live here (shared by the agent's tracker, replication, store and the
//! console); the binary layout of [`Record`] is in [`crate::record`].
//!
//! Naming: "we"/"our" is the service side (the VIP); "peer" is the client.
//! Sequence numbers are raw 32-bit TCP values; compare them modulo 2^32.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;

/// The 4-tuple of a session, seen from the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    /// The client's address.
    pub peer_ip: Ipv4Addr,
    /// The client's port.
    pub peer_port: u16,
    /// The service address (the VIP).
    pub local_ip: Ipv4Addr,
    /// The service port.
    pub local_port: u16,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}:{}",
            self.peer_ip, self.peer_port, self.local_ip, self.local_port
        )
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Peer's SYN seen, handshake not complete.
    Handshake,
    /// Both directions open.
    Established,
    /// We sent FIN; the peer may still send.
    LocalClosed,
    /// The peer sent FIN; we may still send.
    PeerClosed,
    /// FIN both ways; waiting for the last ACK.
    Closing,
    /// Closed (both FINs acked, or reset).
    Closed,
}

impl Phase {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            Phase::Handshake => 0,
            Phase::Established => 1,
            Phase::LocalClosed => 2,
            Phase::PeerClosed => 3,
            Phase::Closing => 4,
            Phase::Closed => 5,
        }
    }

    /// Inverse of [`Phase::code`].
    pub fn from_code(code: u8) -> Option<Phase> {
        Some(match code {
            0 => Phase::Handshake,
            1 => Phase::Established,
            2 => Phase::LocalClosed,
            3 => Phase::PeerClosed,
            4 => Phase::Closing,
            5 => Phase::Closed,
            _ => return None,
        })
    }
}

/// TCP options negotiated in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Negotiated {
    /// MSS the peer announced (0 if none).
    pub peer_mss: u16,
    /// MSS we announced (0 if none).
    pub our_mss: u16,
    /// Peer's window scale shift, if window scaling is on (both sides sent it).
    pub peer_wscale: Option<u8>,
    /// Our window scale shift, if window scaling is on.
    pub our_wscale: Option<u8>,
    /// SACK permitted by both sides.
    pub sack_permitted: bool,
    /// Timestamps on (both sides sent them).
    pub timestamps: bool,
}

/// Everything known about one session: the content of a `full` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The 4-tuple.
    pub key: SessionKey,
    /// Life phase.
    pub phase: Phase,
    /// Peer's initial sequence number.
    pub peer_isn: u32,
    /// Our initial sequence number.
    pub our_isn: u32,
    /// Our receive-next: the highest ACK number we sent (bytes of the peer we have
    /// acknowledged; the peer may discard them).
    pub rcv_nxt: u32,
    /// Highest sequence end (seq + len, FIN counted) the peer has sent.
    pub peer_seq_max: u32,
    /// Our send-next: highest sequence end (seq + len, SYN/FIN counted) we have sent.
    pub snd_nxt: u32,
    /// Peer's last ACK: our bytes before this are acknowledged.
    pub snd_una: u32,
    /// Raw (unscaled) window field of the peer's last segment.
    pub peer_window: u16,
    /// Raw (unscaled) window field of our last segment.
    pub our_window: u16,
    /// Handshake options.
    pub negotiated: Negotiated,
    /// Last TSval the peer sent (0 if timestamps are off).
    pub peer_tsval: u32,
    /// Last TSval we sent.
    pub our_tsval: u32,
    /// Sequence number of our FIN, once sent.
    pub our_fin: Option<u32>,
    /// Sequence number of the peer's FIN, once seen.
    pub peer_fin: Option<u32>,
    /// Payload bytes the peer has not acknowledged: `unacked[0]` is the byte at
    /// sequence `snd_una` (SYN/FIN take no bytes here). A ring buffer: the front is
    /// trimmed on every ACK, which must not move the rest.
    pub unacked: VecDeque<u8>,
    /// Input the old master's service had not read when a planned switchover handed
    /// the session over: the peer's bytes `[rcv_nxt − len, rcv_nxt)`, already
    /// acknowledged to the peer, which the new master feeds to its service before
    /// anything else. Empty otherwise (and cleared once delivered).
    #[serde(default)]
    pub unread_input: Vec<u8>,
    /// The master saw the service's socket hold output its kernel had not sent or
    /// input the service had not read, for longer than a moment: after a crash the
    /// replica cannot continue this session exactly, so the new master resets it
    /// cleanly instead (issue: no silent hole).
    #[serde(default)]
    pub at_risk: bool,
    /// Payload bytes received from the peer (count, not data).
    pub bytes_in: u64,
    /// Payload bytes sent to the peer.
    pub bytes_out: u64,
    /// Wall-clock time of the last packet, milliseconds since the Unix epoch.
    pub last_activity_ms: u64,
}

/// A compact update to a known session (a `sync` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSync {
    /// The session.
    pub key: SessionKey,
    /// New phase.
    pub phase: Phase,
    /// New [`SessionState::rcv_nxt`].
    pub rcv_nxt: u32,
    /// New [`SessionState::peer_seq_max`].
    pub peer_seq_max: u32,
    /// New [`SessionState::snd_nxt`].
    pub snd_nxt: u32,
    /// New [`SessionState::snd_una`].
    pub snd_una: u32,
    /// New [`SessionState::peer_window`].
    pub peer_window: u16,
    /// New [`SessionState::our_window`].
    pub our_window: u16,
    /// New [`SessionState::peer_tsval`].
    pub peer_tsval: u32,
    /// New [`SessionState::our_tsval`].
    pub our_tsval: u32,
    /// New [`SessionState::our_fin`].
    pub our_fin: Option<u32>,
    /// New [`SessionState::peer_fin`].
    pub peer_fin: Option<u32>,
    /// Outbound payload carried by this update: bytes starting at sequence
    /// `data_seq` (appended to `unacked` where they extend it; retransmitted bytes
    /// already known are ignored).
    pub data_seq: u32,
    /// The payload bytes (may be empty).
    pub data: Vec<u8>,
    /// Hot replica only (design §9): sequence number of `input[0]` in the peer's
    /// space (0 when `input` is empty).
    #[serde(default)]
    pub input_seq: u32,
    /// Hot replica only: the peer's payload of the segment this update describes, for
    /// the backup's mirror (empty in cold mode; never applied to the table).
    #[serde(default)]
    pub input: Vec<u8>,
    /// New [`SessionState::bytes_in`].
    pub bytes_in: u64,
    /// New [`SessionState::bytes_out`].
    pub bytes_out: u64,
    /// New [`SessionState::last_activity_ms`].
    pub last_activity_ms: u64,
}

/// One unit of replication and persistence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The whole state of a session (at handshake completion and in snapshots).
    Full(SessionState),
    /// A change to a session the receiver already knows.
    Sync(SessionSync),
    /// The session ended normally or by reset: forget it.
    Delete(SessionKey),
}

impl Record {
    /// The session the record is about.
    pub fn key(&self) -> SessionKey {
        match self {
            Record::Full(s) => s.key,
            Record::Sync(s) => s.key,
            Record::Delete(k) => *k,
        }
    }
}

/// `a` is before `b` in sequence space (modulo 2^32).
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a` is before or equal to `b` in sequence space.
pub fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

/// The later of two sequence numbers.
pub fn seq_max(a: u32, b: u32) -> u32 {
    if seq_lt(a, b) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_lt(1, 2));
        assert!(seq_lt(u32::MAX, 0));
        assert!(seq_lt(u32::MAX - 10, 5));
        assert!(!seq_lt(5, u32::MAX - 10));
        assert!(seq_le(7, 7));
        assert_eq!(seq_max(u32::MAX, 3), 3);
        assert_eq!(seq_max(3, u32::MAX), 3);
    }

    #[test]
    fn phase_codes_round_trip() {
        for code in 0..=5 {
            let phase = Phase::from_code(code).expect("known");
            assert_eq!(phase.code(), code);
        }
        assert_eq!(Phase::from_code(6), None);
    }
}
