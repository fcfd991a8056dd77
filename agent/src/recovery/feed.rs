//! Feeding a restored service the input its predecessor had not read (a planned
//! switchover's hand-over, see `session::handover`).
//!
//! The peer's bytes `[rcv_nxt − len, rcv_nxt)` were acknowledged to the peer by the
//! old master, so the peer will never send them again: the new master plays the peer
//! for them. The forged SYN starts the restored socket at their first byte
//! ([`super::forge::syn_seq`]); right after the handshake the feeder injects them as
//! the peer's segments, within the window the service's kernel announces, and again
//! if its ACK does not move for a while. The peer's own next bytes start at
//! `rcv_nxt` and simply queue behind them. Done when the service's kernel has
//! acknowledged `rcv_nxt`.
//!
//! Sans-IO: the service kernel's ACKs and the clock in, IPv4 segments out.

use super::forge::SynAck;
use crate::tcp::wire::{self, Tcp};
use nonstop_shared::session::{seq_lt, SessionState};
use std::time::{Duration, Instant};

/// How long without progress before the unacknowledged input goes again.
pub const REFEED: Duration = Duration::from_millis(200);

/// The feeder of one restored session's handed-over input.
#[derive(Debug, Clone)]
pub struct Feed {
    key: nonstop_shared::session::SessionKey,
    bytes: Vec<u8>,
    /// Sequence number of `bytes[0]`.
    start: u32,
    /// The service kernel's ACK (how far it has the input).
    acked: u32,
    /// Its receive window, bytes.
    window: u32,
    /// Sent up to here.
    sent: u32,
    /// The peer's TSval and the service's first TSval, if timestamps are on.
    ts: Option<(u32, u32)>,
    /// The peer's raw window, for the segments.
    peer_window: u16,
    mss: usize,
    refeed_at: Option<Instant>,
    /// The ACK numbers our segments carried (a few: the service's ACK point moves
    /// only when the peer acknowledges the tail).
    used_acks: Vec<u32>,
}

/// Most distinct ACK numbers remembered for [`Feed::is_ours`].
const USED_ACKS: usize = 16;

impl Feed {
    /// The feeder for a session restored from `state` (with `unread_input`), whose
    /// service kernel answered with `synack`; segments of at most `mss` bytes (lowered
    /// to the MSS the service's kernel announced, less the timestamp option). `None`
    /// if there is no input to feed.
    pub fn new(state: &SessionState, synack: &SynAck, mss: usize) -> Option<Feed> {
        if state.unread_input.is_empty() {
            return None;
        }
        let ts = synack.tsval.filter(|_| state.negotiated.timestamps);
        let options = if ts.is_some() { 12 } else { 0 };
        let mss = mss.min(usize::from(synack.mss)).saturating_sub(options);
        let start = state.rcv_nxt.wrapping_sub(state.unread_input.len() as u32);
        Some(Feed {
            key: state.key,
            bytes: state.unread_input.clone(),
            start,
            acked: start,
            window: u32::from(synack.window),
            sent: start,
            ts: ts.map(|app| (state.peer_tsval, app)),
            peer_window: state.peer_window,
            mss: mss.max(1),
            refeed_at: None,
            used_acks: Vec::new(),
        })
    }

    /// Sequence number just past the input (the restored session's `rcv_nxt`).
    pub fn end(&self) -> u32 {
        self.start.wrapping_add(self.bytes.len() as u32)
    }

    /// Whether the service's kernel has every byte.
    pub fn done(&self) -> bool {
        !seq_lt(self.acked, self.end())
    }

    /// When [`Feed::poll`] wants to run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.refeed_at
    }

    /// Whether an inbound segment is one of ours (the peer never sends this input
    /// again, and its ACKs are in its own space, not the service's).
    pub fn is_ours(&self, seq: u32, ack: Option<u32>) -> bool {
        ack.is_some_and(|a| self.used_acks.contains(&a))
            && !seq_lt(seq, self.start)
            && seq_lt(seq, self.end())
    }

    /// The first segments, right after the forged handshake; `app_ack` is the ACK
    /// number the service's kernel expects from the peer (app space).
    pub fn start(&mut self, app_ack: u32, now: Instant) -> Vec<Vec<u8>> {
        self.send_new(app_ack, now)
    }

    /// The service's kernel acknowledged `ack` (peer sequence space) with `window`
    /// bytes of room.
    pub fn on_app_ack(
        &mut self,
        ack: u32,
        window: u32,
        app_ack: u32,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        if self.done() {
            return Vec::new();
        }
        if seq_lt(self.acked, ack) {
            self.acked = if seq_lt(self.end(), ack) {
                self.end()
            } else {
                ack
            };
            if seq_lt(self.sent, self.acked) {
                self.sent = self.acked;
            }
            self.refeed_at = (!self.done()).then(|| now + REFEED);
        }
        self.window = window;
        self.send_new(app_ack, now)
    }

    /// Nothing acknowledged for a while: the first unacknowledged segment again
    /// (the rest follows the service's ACKs).
    pub fn poll(&mut self, app_ack: u32, now: Instant) -> Vec<Vec<u8>> {
        match self.refeed_at {
            Some(at) if at <= now && !self.done() => {
                let resume = self.sent;
                self.sent = self.acked;
                self.refeed_at = None;
                let window = self.window;
                self.window = self.window.clamp(1, self.mss as u32);
                let out = self.send_new(app_ack, now);
                self.window = window;
                if seq_lt(self.sent, resume) {
                    self.sent = resume;
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// The peer's latest TSval (the service's kernel checks PAWS against what the
    /// peer's own segments carry since the restore).
    pub fn set_peer_tsval(&mut self, tsval: u32) {
        if let Some((ours, _)) = &mut self.ts {
            if seq_lt(*ours, tsval) {
                *ours = tsval;
            }
        }
    }

    fn send_new(&mut self, app_ack: u32, now: Instant) -> Vec<Vec<u8>> {
        let right = self.acked.wrapping_add(self.window.max(1));
        let limit = if seq_lt(right, self.end()) {
            right
        } else {
            self.end()
        };
        let mut out = Vec::new();
        while seq_lt(self.sent, limit) {
            let from = self.sent.wrapping_sub(self.start) as usize;
            let room = limit.wrapping_sub(self.sent) as usize;
            let to = (from + self.mss.min(room)).min(self.bytes.len());
            let payload = self.bytes[from..to].to_vec();
            out.push(self.segment(self.sent, &payload, app_ack));
            self.sent = self.sent.wrapping_add((to - from) as u32);
        }
        if self.refeed_at.is_none() && !self.done() {
            self.refeed_at = Some(now + REFEED);
        }
        out
    }

    fn segment(&mut self, seq: u32, payload: &[u8], app_ack: u32) -> Vec<u8> {
        if !self.used_acks.contains(&app_ack) {
            if self.used_acks.len() == USED_ACKS {
                self.used_acks.remove(0);
            }
            self.used_acks.push(app_ack);
        }
        let ts = self.ts.map(|(tsval, tsecr)| wire::ts_option(tsval, tsecr));
        wire::build(&Tcp {
            src: (self.key.peer_ip, self.key.peer_port),
            dst: (self.key.local_ip, self.key.local_port),
            seq,
            ack: Some(app_ack),
            flags: crate::tcp::flags::PSH,
            window: self.peer_window,
            options: ts.as_ref().map_or(&[][..], |o| &o[..]),
            payload,
        })
    }
}
