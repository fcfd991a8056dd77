//! Async-mode safety (design §3): right after a restore, the peer must prove that it
//! saw nothing the replica lacks; a session whose peer did is reset cleanly on both
//! sides and counted — never continued with a hole in either stream.
//!
//! Two proofs of divergence:
//! - **our bytes**: the peer acknowledges beyond everything we know was sent
//!   ([`TranslateError::AckBeyondSent`](super::translate::TranslateError)); detected
//!   by the translator; the caller resets with [`Divergence::AckBeyondSent`].
//! - **the peer's bytes**: the old master acknowledged peer data the replica never got;
//!   the peer discarded it and will never send it again, so the restored socket waits
//!   forever at its `rcv_nxt` while the peer's segments all start beyond it. Seen as:
//!   peer data beyond the restored `rcv_nxt`, and for [`HOLE_TIMEOUT`] the app kernel
//!   acknowledging nothing past that point.
//!
//! Until the peer has sent one valid acknowledgment ([`Probation::verified`]), the
//! restored app's new data is held back (dropped; its kernel retransmits), so that no
//! byte the app writes can land in a stream the peer has already moved past.
//!
//! Sans-IO: the caller feeds events with its clock and acts on the verdicts.

use super::wire::{self, flags, Tcp};
use nonstop_shared::session::{seq_le, seq_lt, SessionKey};
use std::time::{Duration, Instant};

/// How long peer data may sit beyond a hole the peer never fills before the session
/// is declared diverged. Longer than a peer's fast retransmit and first RTO (≥ 200 ms
/// on Linux) after the duplicate ACKs of the kick, with a margin for a lossy path.
pub const HOLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a restored session was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// The peer acknowledged bytes the replica never knew were sent.
    AckBeyondSent,
    /// The peer's data starts beyond what the replica received, and never fills in.
    InputHole,
}

impl Divergence {
    /// A short explanation for events and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Divergence::AckBeyondSent => "peer acknowledged bytes the replica never saw sent",
            Divergence::InputHole => "peer's data starts beyond what the replica received",
        }
    }
}

/// The watch over one restored session until the peer has proven it is in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probation {
    /// `rcv_nxt` at the restore (peer space).
    restored_rcv_nxt: u32,
    /// A valid acknowledgment has been seen from the peer.
    verified: bool,
    /// Peer data beyond the restored `rcv_nxt` was seen first at this time, starting
    /// at this sequence number.
    beyond: Option<(u32, Instant)>,
    /// The app kernel acknowledged past the restored `rcv_nxt`: the peer's stream is
    /// continuous, nothing left to watch on the input side.
    input_flows: bool,
    /// The peer's latest acknowledgment number (its `rcv_nxt`), for a reset.
    peer_ack: Option<u32>,
    /// An ACK beyond everything sent, seen once on an acceptable segment (waiting for
    /// a second sighting, see [`Probation::unsent_ack`]).
    unsent_ack: Option<u32>,
}

impl Probation {
    /// Watch a session restored with receive-next `rcv_nxt`.
    pub fn new(rcv_nxt: u32) -> Probation {
        Probation {
            restored_rcv_nxt: rcv_nxt,
            verified: false,
            beyond: None,
            input_flows: false,
            peer_ack: None,
            unsent_ack: None,
        }
    }

    /// A peer segment inside the window whose ACK (`ack`) covers bytes the replica
    /// never saw sent. Whether that proves divergence rather than a blind forgery
    /// (RFC 5961: an attacker who guessed the window must not be able to reset the
    /// session): yes if the segment's sequence number is `exact`ly where the peer
    /// stands (its `rcv_nxt` or the end of its data: 1 in 2^31 to guess), or if the
    /// same ACK number came before (a real peer repeats its cumulative ACK).
    pub fn unsent_ack(&mut self, ack: u32, exact: bool) -> bool {
        if exact || self.unsent_ack == Some(ack) {
            self.peer_ack = Some(ack);
            return true;
        }
        self.unsent_ack = Some(ack);
        false
    }

    /// Whether the peer has shown it is in step (the app's new data may flow).
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// Whether nothing is left to watch: verified and input flowing.
    pub fn finished(&self) -> bool {
        self.verified && self.input_flows
    }

    /// The peer's latest acknowledgment number, if it sent one.
    pub fn peer_ack(&self) -> Option<u32> {
        self.peer_ack
    }

    /// A peer segment the translator accepted (its ACK, if any, is within what was
    /// sent), carrying `payload_len` bytes from `seq`.
    pub fn peer_segment(&mut self, seq: u32, payload_len: usize, ack: Option<u32>, now: Instant) {
        if ack.is_some() {
            self.verified = true;
            self.peer_ack = ack;
        }
        if payload_len == 0 || self.input_flows {
            return;
        }
        if seq_le(seq, self.restored_rcv_nxt) {
            // The peer sends from the restored point: no hole on its side.
            self.beyond = None;
            self.input_flows = true;
        } else if self.beyond.is_none() {
            self.beyond = Some((seq, now));
        }
    }

    /// The app kernel acknowledged `ack` (peer space).
    pub fn app_acked(&mut self, ack: u32) {
        if seq_lt(self.restored_rcv_nxt, ack) {
            self.input_flows = true;
            self.beyond = None;
        }
    }

    /// Checked periodically: the input-side proof.
    pub fn check(&self, now: Instant) -> Option<Divergence> {
        match self.beyond {
            Some((_, since))
                if !self.input_flows && now.saturating_duration_since(since) >= HOLE_TIMEOUT =>
            {
                Some(Divergence::InputHole)
            }
            _ => None,
        }
    }
}

/// The RST that ends a diverged session for the peer: from VIP:port, with `seq` = the
/// peer's latest acknowledgment number (its `rcv_nxt`, which RFC 5961 requires an RST
/// to match exactly).
pub fn reset_to_peer(key: &SessionKey, peer_ack: u32) -> Vec<u8> {
    wire::build(&Tcp {
        src: (key.local_ip, key.local_port),
        dst: (key.peer_ip, key.peer_port),
        seq: peer_ack,
        ack: None,
        flags: flags::RST,
        window: 0,
        options: &[],
        payload: &[],
    })
}

/// The RST that ends a diverged session for the restored socket: from the peer, with
/// `seq` = the app kernel's `rcv_nxt` (the highest ACK it sent, peer space).
pub fn reset_to_app(key: &SessionKey, app_rcv_nxt: u32) -> Vec<u8> {
    wire::build(&Tcp {
        src: (key.peer_ip, key.peer_port),
        dst: (key.local_ip, key.local_port),
        seq: app_rcv_nxt,
        ack: None,
        flags: flags::RST,
        window: 0,
        options: &[],
        payload: &[],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tracker::segment::Segment;
    use std::net::Ipv4Addr;

    fn key() -> SessionKey {
        SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 0, 10),
            peer_port: 40000,
            local_ip: Ipv4Addr::new(198, 18, 0, 100),
            local_port: 7000,
        }
    }

    #[test]
    fn a_peer_in_step_is_verified_and_released_from_watch() {
        let t0 = Instant::now();
        let mut p = Probation::new(1000);
        assert!(!p.verified());
        p.peer_segment(1000, 0, Some(1), t0);
        assert!(p.verified());
        assert!(!p.finished());
        p.peer_segment(1000, 100, Some(1), t0);
        assert!(p.finished());
        assert_eq!(p.check(t0 + HOLE_TIMEOUT * 2), None);
    }

    #[test]
    fn reordered_data_beyond_the_restore_point_is_not_a_hole_once_acked_past() {
        let t0 = Instant::now();
        let mut p = Probation::new(1000);
        p.peer_segment(1100, 100, Some(1), t0);
        assert_eq!(p.check(t0 + Duration::from_millis(10)), None);
        // The missing segment arrives; the app kernel acks everything.
        p.app_acked(1200);
        assert_eq!(p.check(t0 + HOLE_TIMEOUT * 2), None);
        assert!(p.finished());
    }

    #[test]
    fn data_that_never_fills_the_hole_is_a_divergence() {
        let t0 = Instant::now();
        let mut p = Probation::new(1000);
        p.peer_segment(1500, 100, Some(1), t0);
        p.peer_segment(1600, 100, Some(1), t0 + Duration::from_millis(50));
        // The app kernel keeps acking the restore point (duplicate ACKs).
        p.app_acked(1000);
        assert_eq!(p.check(t0 + HOLE_TIMEOUT - Duration::from_millis(1)), None);
        assert_eq!(p.check(t0 + HOLE_TIMEOUT), Some(Divergence::InputHole));
    }

    #[test]
    fn an_unsent_ack_proves_divergence_only_when_a_forgery_could_not_have_made_it() {
        let mut p = Probation::new(1000);
        // Random in-window guesses with random ACKs: never enough.
        assert!(!p.unsent_ack(0x1234_5678, false));
        assert!(!p.unsent_ack(0x0bad_cafe, false));
        assert_eq!(p.peer_ack(), None);
        // The same ACK again (a real peer repeats its cumulative ACK): proven.
        assert!(p.unsent_ack(0x0bad_cafe, false));
        assert_eq!(p.peer_ack(), Some(0x0bad_cafe));
        // At the exact point the peer stands: proven at once.
        let mut q = Probation::new(1000);
        assert!(q.unsent_ack(77, true));
        assert_eq!(q.peer_ack(), Some(77));
    }

    #[test]
    fn wraparound_is_handled() {
        let t0 = Instant::now();
        let mut p = Probation::new(u32::MAX - 10);
        p.peer_segment(5, 10, Some(1), t0);
        assert_eq!(p.check(t0 + HOLE_TIMEOUT), Some(Divergence::InputHole));
        let mut q = Probation::new(u32::MAX - 10);
        q.peer_segment(5, 10, Some(1), t0);
        q.app_acked(20);
        assert_eq!(q.check(t0 + HOLE_TIMEOUT), None);
    }

    #[test]
    fn resets_carry_the_exact_sequence_numbers_and_valid_checksums() {
        let to_peer = reset_to_peer(&key(), 0xdead_beef);
        let seg = Segment::parse(&to_peer).expect("parse");
        assert!(seg.rst);
        assert_eq!(seg.seq, 0xdead_beef);
        assert_eq!((seg.src, seg.src_port), (key().local_ip, 7000));
        assert_eq!((seg.dst, seg.dst_port), (key().peer_ip, 40000));
        let l = wire::Layout::of(&to_peer).expect("layout");
        assert_eq!(
            wire::checksum_state(&to_peer, &l),
            wire::ChecksumState::Valid
        );
        let to_app = reset_to_app(&key(), 77);
        let seg = Segment::parse(&to_app).expect("parse");
        assert!(seg.rst);
        assert_eq!(seg.seq, 77);
        assert_eq!((seg.src, seg.dst_port), (key().peer_ip, 7000));
    }
}
