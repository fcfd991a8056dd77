//! Per-session translation between the peer's view of a restored session and the
//! restored socket's (design §4 step 3), and the segments that kick the peer right
//! after the restore (step 4). Sans-IO: packets in, rewritten packets and verdicts out.
//!
//! # Two sequence spaces for our bytes, one for the peer's
//! The forged SYN started the peer's sequence space at `rcv_nxt - 1`
//! ([`super::forge::syn_seq`]), so the peer's sequence numbers, our ACKs of them and
//! our SACK blocks are the same on both sides. Our bytes are not: the peer has seen
//! them up to `snd_nxt` (the replicated state; `[snd_una, snd_nxt)` is the unacked
//! tail that we retransmit from `unacked`, which the app never wrote), while the app
//! kernel numbers its first byte `new_isn + 1`. With
//! `Δ = snd_nxt − (new_isn + 1)` (mod 2^32):
//!
//! - **outbound** (app → peer): `seq' = seq + Δ`; ACK and SACK unchanged (peer space),
//!   except an ACK below the replicated `rcv_nxt` (the app still taking handed-over
//!   input, `super::feed`), which is raised to it;
//!   window rescaled from the app's window scale to the one the peer knows
//!   ([`Translator::peer_window`]); `TSval' = TSval + ts_off`; TSecr unchanged.
//!   A SYN (a retransmitted SYN-ACK) is dropped.
//! - **inbound** (peer → app): `ack' = ack − Δ`, **clamped** to `new_isn + 1` while the
//!   peer still acks the replicated tail ([`Translator::app_ack`]); SACK blocks
//!   translated the same way, blocks inside the tail removed and blocks straddling its
//!   end clipped ([`Translator::app_sack_block`]); `TSecr' = TSecr − ts_off`
//!   ([`Translator::app_tsecr`]); seq, payload and (normally) window unchanged.
//!
//! `ts_off = our_tsval − synack.tsval + 1` (mod 2^32): the app's first TSval maps one
//! past the last TSval the peer saw from us, and the app's clock is monotonic, so the
//! peer's PAWS check (RFC 7323 §5) passes for every translated segment.
//!
//! # Checksums and lengths
//! Every rewritten packet gets a freshly computed TCP checksum (RFC 1071 over the
//! pseudo-header; not incremental, because outbound packets may carry only a partial
//! checksum). The IPv4 header is never changed, so its checksum stays; link padding
//! past the IPv4 total length is cut so the length fields match the data handed back.
//! An inbound packet whose checksum is neither valid nor a local partial sum was
//! corrupted on the wire: it is refused ([`TranslateError::BadChecksum`]) rather than
//! rewritten, since a fresh checksum would hide the corruption from the app kernel.
//!
//! On any error the packet is left untouched.
//!
//! # Known limits
//! - If our FIN was already sent (`our_fin`), anything the new app writes maps past
//!   that FIN, where the peer ignores it; the app's own FIN is never acknowledged.
//!   Such sessions can be restored for the peer's remaining data and the tail, but the
//!   app's close is not clean.
//! - `unacked` must be complete (see `session::tracker::unacked::unacked_complete`):
//!   otherwise `[data_end, snd_nxt)` can never be retransmitted. The caller checks.

use super::forge::{SynAck, DEFAULT_MSS};
use crate::session::tracker::unacked;
use crate::session::tracker::PacketError;
use crate::tcp::segment::Segment;
use crate::tcp::wire::{self, ChecksumState, Layout, Tcp};
use crate::tcp::{flags, kind};
use nonstop_shared::session::{seq_le, seq_lt, seq_max, SessionKey, SessionState};

/// Largest window scale shift (RFC 7323 §2.3).
const MAX_WSCALE: u8 = 14;

/// Most option bytes a TCP header can hold.
const MAX_OPTIONS: usize = 40;

/// What to do with a packet after translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the (rewritten) packet go on.
    Accept,
    /// Drop it.
    Drop,
}

/// Why a packet could not be translated. The packet is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Not readable as IPv4 + TCP, or its TCP options are malformed.
    #[error("malformed packet: {0}")]
    Malformed(#[from] PacketError),
    /// Not a packet of this session in the direction asked (outbound: VIP:port → peer;
    /// inbound: peer → VIP:port).
    #[error("not a packet of this session in this direction")]
    WrongSession,
    /// An inbound packet whose TCP checksum is neither correct nor a local partial
    /// sum: corrupted on the wire. Not rewritten (a fresh checksum would hide the
    /// corruption); drop it or pass it unchanged, the app kernel drops it either way.
    #[error("corrupt TCP checksum")]
    BadChecksum,
    /// The peer acknowledges sequence space nobody sent (beyond `snd_nxt` and beyond
    /// everything the app has sent since): the peer saw state the backup never got
    /// (async replication lag, design §3). The session should be reset and counted.
    #[error("peer acknowledges {ack}, beyond everything sent ({snd_max})")]
    AckBeyondSent {
        /// The peer's acknowledgment number (peer space).
        ack: u32,
        /// The end of everything sent so far (peer space).
        snd_max: u32,
    },
}

/// Timestamp translation, when both the old session and the restored socket use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TsMap {
    /// `our_tsval − synack.tsval + 1`.
    offset: u32,
    /// The app's first TSval (the SYN-ACK's).
    app_start: u32,
    /// Highest TSval sent to the peer so far (peer space).
    last: u32,
}

/// The translation state of one restored session (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translator {
    key: SessionKey,
    /// `snd_nxt − (new_isn + 1)`.
    delta: u32,
    /// The restored socket's ISN.
    app_isn: u32,
    /// End of the replicated tail (the replicated `snd_nxt`), peer space.
    tail_end: u32,
    /// End of everything sent to the peer so far (tail and app), peer space.
    snd_max: u32,
    /// Highest valid ACK seen from the peer, peer space.
    peer_acked: u32,
    /// The replicated `rcv_nxt`: the peer was told it had arrived. The app's ACKs
    /// stay below it while it is fed handed-over input (`super::feed`); the peer
    /// must never see them (an ACK far below its `snd_una` makes it drop the whole
    /// segment, RFC 5961 §5.2), so they are raised to it.
    ack_floor: u32,
    /// The app kernel's latest `rcv_nxt` and right window edge (peer space, from its
    /// last segment), once it sent one.
    app_receive: Option<(u32, u32)>,
    ts: Option<TsMap>,
    /// Window scale the app kernel applies to its windows (0: scaling off).
    app_wscale: u8,
    /// Window scale the peer applies to our windows (0: scaling off).
    old_wscale: u8,
    /// Window scale the peer applies to its own windows (0: scaling off).
    peer_wscale: u8,
    /// Window scale the app kernel assumes for the peer's windows (0: scaling off).
    app_peer_wscale: u8,
    /// A hot replica's mirror that took over ([`Translator::adopt`]): the end of
    /// what it has written (peer space). The peer's ACK is clamped to it (a mirror
    /// behind the master must not hear of bytes it has not written yet).
    app_sent: Option<u32>,
}

impl Translator {
    /// The translator for a session restored from `state`, whose app kernel answered
    /// the forged SYN with `synack`.
    ///
    /// Window scaling is on for the restored socket only if the forged SYN offered it
    /// (`peer_wscale` negotiated) and the SYN-ACK carries a shift; timestamps are
    /// translated only if they were negotiated and the SYN-ACK carries them (if the app
    /// kernel declined, its segments go without timestamps, which Linux peers accept).
    pub fn new(state: &SessionState, synack: &SynAck) -> Translator {
        let n = &state.negotiated;
        let app_scaling = n.peer_wscale.is_some() && synack.wscale.is_some();
        let ts = synack
            .tsval
            .filter(|_| n.timestamps)
            .map(|app_start| TsMap {
                offset: state.our_tsval.wrapping_sub(app_start).wrapping_add(1),
                app_start,
                last: state.our_tsval,
            });
        let peer_wscale = n.peer_wscale.unwrap_or(0).min(MAX_WSCALE);
        let tail_end = tail_end(state);
        Translator {
            key: state.key,
            delta: tail_end.wrapping_sub(synack.new_isn.wrapping_add(1)),
            app_isn: synack.new_isn,
            tail_end,
            // The tail is ours to send (`super::tail`): the peer may acknowledge it all.
            snd_max: tail_end,
            peer_acked: state.snd_una,
            ack_floor: state.rcv_nxt,
            app_receive: None,
            ts,
            app_wscale: if app_scaling {
                synack.wscale.unwrap_or(0).min(MAX_WSCALE)
            } else {
                0
            },
            old_wscale: n.our_wscale.unwrap_or(0).min(MAX_WSCALE),
            peer_wscale,
            app_peer_wscale: if app_scaling { peer_wscale } else { 0 },
            app_sent: None,
        }
    }

    /// A hot replica's mirror takes over the session (design §9): this translator
    /// was built when the mirror opened (`tail_end` = the master's first byte); now
    /// the peer's position is the replicated `state`'s, the mirror has written up to
    /// `app_sent` (peer space), and its TSvals (latest `app_tsval`) are moved
    /// forward if needed so the peer never sees one older than the master's last.
    pub fn adopt(&mut self, state: &SessionState, app_sent: u32, app_tsval: Option<u32>) {
        self.peer_acked = seq_max(self.peer_acked, state.snd_una);
        self.snd_max = seq_max(self.snd_max, tail_end(state));
        self.ack_floor = state.rcv_nxt;
        self.app_sent = Some(app_sent);
        if let (Some(ts), Some(app_tsval)) = (&mut self.ts, app_tsval) {
            if seq_lt(app_tsval.wrapping_add(ts.offset), state.our_tsval) {
                ts.offset = state.our_tsval.wrapping_sub(app_tsval).wrapping_add(1);
            }
            ts.last = seq_max(ts.last, state.our_tsval);
        }
    }

    /// The session this translator serves.
    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// Δ: `peer_seq = app_seq + Δ` (mod 2^32).
    pub fn delta(&self) -> u32 {
        self.delta
    }

    /// The timestamp offset (`peer_tsval = app_tsval + offset`), if timestamps are
    /// translated.
    pub fn ts_offset(&self) -> Option<u32> {
        self.ts.map(|t| t.offset)
    }

    /// The highest acknowledgment number seen from the peer (peer space; starts at
    /// the replicated `snd_una`). Bytes of the tail before it need no retransmission.
    pub fn peer_acked(&self) -> u32 {
        self.peer_acked
    }

    /// The end of everything sent to the peer so far (peer space; starts at the
    /// replicated `snd_nxt`).
    pub fn snd_max(&self) -> u32 {
        self.snd_max
    }

    /// Whether the peer has acknowledged the whole replicated tail.
    pub fn tail_acked(&self) -> bool {
        seq_le(self.tail_end, self.peer_acked)
    }

    /// The highest TSval sent to the peer so far (peer space), if timestamps are
    /// translated: pass it as `now_tsval` to [`retransmit_segments`] so later
    /// retransmissions never go back in time for the peer's PAWS check.
    pub fn last_tsval(&self) -> Option<u32> {
        self.ts.map(|t| t.last)
    }

    /// An app sequence number in peer space: `app_seq + Δ`.
    pub fn peer_seq(&self, app_seq: u32) -> u32 {
        app_seq.wrapping_add(self.delta)
    }

    /// A peer acknowledgment number in app space: `ack − Δ`, except that an ACK before
    /// the end of the replicated tail (the peer is still acking bytes the app never
    /// wrote) becomes `new_isn + 1`, which acknowledges nothing the app sent.
    pub fn app_ack(&self, ack: u32) -> u32 {
        let ack = match self.app_sent {
            Some(sent) if seq_lt(sent, ack) => sent,
            _ => ack,
        };
        if seq_lt(ack, self.tail_end) {
            self.app_isn.wrapping_add(1)
        } else {
            ack.wrapping_sub(self.delta)
        }
    }

    /// A SACK block `[left, right)` from the peer in app space: `None` if it lies
    /// entirely inside the replicated tail (`right <= snd_nxt`), otherwise both edges
    /// `− Δ` with the left edge first raised to the tail's end.
    pub fn app_sack_block(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        if seq_le(right, self.tail_end) {
            return None;
        }
        let left = if seq_lt(left, self.tail_end) {
            self.tail_end
        } else {
            left
        };
        Some((
            left.wrapping_sub(self.delta),
            right.wrapping_sub(self.delta),
        ))
    }

    /// An app TSval in peer space: `tsval + ts_off` (unchanged without translation).
    pub fn peer_tsval(&self, app_tsval: u32) -> u32 {
        self.ts
            .map_or(app_tsval, |t| app_tsval.wrapping_add(t.offset))
    }

    /// A peer TSecr in app space: `tsecr − ts_off`. A TSecr of 0 (no echo) stays 0; an
    /// echo of a TSval from before the restore (before `our_tsval + 1`: the old
    /// master's, or our retransmissions') becomes the SYN-ACK's TSval, the app's
    /// oldest, so the app never sees an echo from before its own first segment.
    pub fn app_tsecr(&self, tsecr: u32) -> u32 {
        match self.ts {
            None => tsecr,
            Some(_) if tsecr == 0 => 0,
            Some(t) if seq_lt(tsecr, t.app_start.wrapping_add(t.offset)) => t.app_start,
            Some(t) => tsecr.wrapping_sub(t.offset),
        }
    }

    /// The peer's window as the app kernel must read it, for a segment acknowledging
    /// `ack` (peer space): while the peer still acknowledges the replicated tail, the
    /// app's first byte is at the tail's end, so its window is what remains of the
    /// peer's right edge (`ack + window`) past the tail — 0 while the tail fills it,
    /// so the app kernel waits (probing) instead of sending beyond the peer's window
    /// and backing off. Otherwise [`Translator::app_window`].
    pub fn app_window_at(&self, ack: Option<u32>, peer_raw: u16) -> u16 {
        match ack {
            Some(ack) if seq_lt(ack, self.tail_end) => {
                let right = ack.wrapping_add(u32::from(peer_raw) << self.peer_wscale);
                let room = if seq_lt(self.tail_end, right) {
                    right.wrapping_sub(self.tail_end)
                } else {
                    0
                };
                let raw = room >> self.app_peer_wscale;
                if raw == 0 && room != 0 {
                    1
                } else {
                    u16::try_from(raw).unwrap_or(u16::MAX)
                }
            }
            _ => self.app_window(peer_raw),
        }
    }

    /// The app's raw window field as the peer must read it: the app's bytes
    /// `raw << app_wscale` expressed with the shift the peer knows (`our_wscale`):
    /// `min(65535, (raw << app_ws) >> old_ws)`. Rounding is down (never offer the peer
    /// more than the app did), except that a nonzero window never becomes 0 (that would
    /// freeze the peer while the app thinks it offered room; it over-offers by less
    /// than `2^old_ws` bytes, as Linux's own rounding does). Computed in 64 bits.
    pub fn peer_window(&self, app_raw: u16) -> u16 {
        rescale(app_raw, self.app_wscale, self.old_wscale)
    }

    /// The peer's raw window field as the app kernel must read it: unchanged when the
    /// app kernel uses the peer's shift (the normal case), rescaled as in
    /// [`Translator::peer_window`] when the app kernel declined window scaling.
    pub fn app_window(&self, peer_raw: u16) -> u16 {
        rescale(peer_raw, self.peer_wscale, self.app_peer_wscale)
    }

    /// Translates one packet from the app (VIP:port → peer) in place (see the module
    /// docs). A SYN is dropped (the app kernel retransmitting its SYN-ACK); a RST is
    /// translated and accepted.
    pub fn outbound(&mut self, packet: &mut Vec<u8>) -> Result<Verdict, TranslateError> {
        let seg = Segment::parse(packet)?;
        let k = &self.key;
        if seg.src != k.local_ip
            || seg.src_port != k.local_port
            || seg.dst != k.peer_ip
            || seg.dst_port != k.peer_port
        {
            return Err(TranslateError::WrongSession);
        }
        seg.options().map_err(PacketError::from)?;
        if seg.syn {
            return Ok(Verdict::Drop);
        }
        let l = Layout::of(packet).ok_or(PacketError::Truncated)?;
        let (seq, end, rst, window) = (seg.seq, seg.end(), seg.rst, seg.window);
        let below_floor = seg.ack.is_some_and(|a| seq_lt(a, self.ack_floor));
        if let Some(ack) = seg.ack {
            let edge = ack.wrapping_add(u32::from(window) << self.app_wscale);
            self.app_receive = Some((ack, edge));
        }

        let t = l.ip_len;
        wire::put_u32(packet, t + 4, self.peer_seq(seq));
        if below_floor {
            wire::put_u32(packet, t + 8, self.ack_floor);
        }
        wire::put_u16(packet, t + 14, self.peer_window(window));
        if let Some(mut ts) = self.ts {
            let range = l.options();
            let mut opts = [0u8; MAX_OPTIONS];
            let raw = &packet[range.clone()];
            opts[..raw.len()].copy_from_slice(raw);
            wire::walk_options(raw, |k, at, len| {
                if k == kind::TIMESTAMPS && len == wire::TS_OPTION_LEN {
                    let tsval = self.peer_tsval(wire::get_u32(raw, at + 2));
                    wire::put_u32(&mut opts, at + 2, tsval);
                    ts.last = seq_max(ts.last, tsval);
                }
            });
            let n = range.len();
            packet[range].copy_from_slice(&opts[..n]);
            self.ts = Some(ts);
        }
        if !rst {
            self.snd_max = seq_max(self.snd_max, self.peer_seq(end));
            let end = self.peer_seq(end);
            if let Some(sent) = &mut self.app_sent {
                *sent = seq_max(*sent, end);
            }
        }
        finish(packet, &l);
        Ok(Verdict::Accept)
    }

    /// Translates one packet from the peer (peer → VIP:port) in place (see the module
    /// docs). Never drops: every verdict is [`Verdict::Accept`]; refusals are errors.
    pub fn inbound(&mut self, packet: &mut Vec<u8>) -> Result<Verdict, TranslateError> {
        let seg = Segment::parse(packet)?;
        let k = &self.key;
        if seg.src != k.peer_ip
            || seg.src_port != k.peer_port
            || seg.dst != k.local_ip
            || seg.dst_port != k.local_port
        {
            return Err(TranslateError::WrongSession);
        }
        seg.options().map_err(PacketError::from)?;
        let l = Layout::of(packet).ok_or(PacketError::Truncated)?;
        if wire::checksum_state(packet, &l) == ChecksumState::Invalid {
            return Err(TranslateError::BadChecksum);
        }
        let (ack, rst, window) = (seg.ack, seg.rst, seg.window);
        // A pure ACK beyond the app's window: after a restore our own segments may
        // have announced more room than the app kernel has now, and the peer used it.
        // The kernel would drop the ACK with its window update (RFC 793: only
        // `RCV.NXT` is acceptable in a zero window) and both sides would wait forever;
        // at the app's `rcv_nxt` it counts.
        let pure = seg.payload.is_empty() && !seg.fin && !seg.syn && !rst;
        let moved_seq = self
            .app_receive
            .filter(|&(_, edge)| pure && seq_lt(edge, seg.seq))
            .map(|(rcv_nxt, _)| rcv_nxt);
        if let Some(ack) = ack.filter(|_| !rst) {
            if seq_lt(self.snd_max, ack) {
                return Err(TranslateError::AckBeyondSent {
                    ack,
                    snd_max: self.snd_max,
                });
            }
            self.peer_acked = seq_max(self.peer_acked, ack);
        }

        let t = l.ip_len;
        if let Some(seq) = moved_seq {
            wire::put_u32(packet, t + 4, seq);
        }
        if let Some(ack) = ack {
            wire::put_u32(packet, t + 8, self.app_ack(ack));
        }
        wire::put_u16(packet, t + 14, self.app_window_at(ack, window));
        let range = l.options();
        let mut opts = [0u8; MAX_OPTIONS];
        let raw = &packet[range.clone()];
        opts[..raw.len()].copy_from_slice(raw);
        wire::walk_options(raw, |k, at, len| match k {
            kind::TIMESTAMPS if len == wire::TS_OPTION_LEN => {
                let tsecr = self.app_tsecr(wire::get_u32(raw, at + 6));
                wire::put_u32(&mut opts, at + 6, tsecr);
            }
            kind::SACK => self.rewrite_sack(raw, &mut opts, at, len),
            _ => {}
        });
        let n = range.len();
        packet[range].copy_from_slice(&opts[..n]);
        finish(packet, &l);
        Ok(Verdict::Accept)
    }

    /// Rewrites the SACK option at `at` (length `len`, already validated) from `raw`
    /// into `out`: kept blocks translated and moved to the front, the option length
    /// lowered to match and the freed bytes turned into NOPs; no block left → the whole
    /// option becomes NOPs (a SACK option cannot be empty).
    fn rewrite_sack(&self, raw: &[u8], out: &mut [u8], at: usize, len: usize) {
        let blocks = (len - 2) / 8;
        let mut kept = 0;
        for i in 0..blocks {
            let from = at + 2 + 8 * i;
            let left = wire::get_u32(raw, from);
            let right = wire::get_u32(raw, from + 4);
            if let Some((l, r)) = self.app_sack_block(left, right) {
                let to = at + 2 + 8 * kept;
                wire::put_u32(out, to, l);
                wire::put_u32(out, to + 4, r);
                kept += 1;
            }
        }
        if kept == 0 {
            out[at..at + len].fill(kind::NOP);
        } else {
            // At most 4 blocks fit into 40 option bytes: 2 + 8 * 4 = 34.
            out[at + 1] = (2 + 8 * kept) as u8;
            out[at + 2 + 8 * kept..at + len].fill(kind::NOP);
        }
    }
}

/// Where the replicated tail ends (peer space): our `snd_nxt`, or further when the
/// replica holds output the old master's kernel had not sent yet (handed over at a
/// planned switchover, see `session::handover`). The app's first byte maps here.
pub fn tail_end(state: &SessionState) -> u32 {
    seq_max(state.snd_nxt, unacked::data_end(state))
}

/// Cuts link padding past the IPv4 total length and writes a fresh TCP checksum.
fn finish(packet: &mut Vec<u8>, l: &Layout) {
    packet.truncate(l.total);
    wire::set_tcp_checksum(packet, l.ip_len, l.total);
}

/// `raw << from >> to`, rounded down but never from nonzero to 0, at most 65535.
fn rescale(raw: u16, from: u8, to: u8) -> u16 {
    if from == to {
        return raw;
    }
    let bytes = u64::from(raw) << from;
    let scaled = bytes >> to;
    if scaled == 0 && raw != 0 {
        1
    } else {
        u16::try_from(scaled).unwrap_or(u16::MAX)
    }
}

/// The raw window our kick segments announce: the replicated `our_window`, or, if that
/// is 0 (the old master froze the peer, e.g. a planned switchover's drain), one MSS
/// (`our_mss`, else 536) in units of `our_wscale`, rounded up — announcing the takeover
/// with a positive window (T2CP-AR) that the new, empty socket can always take.
pub fn kick_window(state: &SessionState) -> u16 {
    if state.our_window != 0 {
        return state.our_window;
    }
    let n = &state.negotiated;
    let mss = if n.our_mss == 0 {
        DEFAULT_MSS
    } else {
        n.our_mss
    };
    let unit = 1u32 << n.our_wscale.unwrap_or(0).min(MAX_WSCALE);
    // At most 65535, as `mss` is a u16 and `unit >= 1`.
    u32::from(mss).div_ceil(unit) as u16
}

/// The TSval of our own segments: the later (mod 2^32) of `our_tsval` and `now_tsval`,
/// so the peer's PAWS check never sees time go backwards.
fn our_tsval(state: &SessionState, now_tsval: Option<u32>) -> u32 {
    match now_tsval {
        Some(now) => seq_max(state.our_tsval, now),
        None => state.our_tsval,
    }
}

/// One of our segments (VIP:port → peer) with ack `ack`, the kick window and, if
/// negotiated, timestamps (`tsval`, TSecr = `peer_tsval`).
fn our_segment(
    state: &SessionState,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    tsval: u32,
) -> Vec<u8> {
    let ts = wire::ts_option(tsval, state.peer_tsval);
    let k = &state.key;
    wire::build(&Tcp {
        src: (k.local_ip, k.local_port),
        dst: (k.peer_ip, k.peer_port),
        seq,
        ack: Some(ack),
        flags,
        window: kick_window(state),
        options: if state.negotiated.timestamps {
            &ts
        } else {
            &[]
        },
        payload,
    })
}

/// One segment of the replicated tail ([`super::tail`]): `payload` at `seq`, ACK|PSH
/// (and FIN if `fin`), ack `rcv_nxt` (ours now), the kick window and timestamps as in
/// [`retransmit_segments`].
pub fn tail_segment(
    state: &SessionState,
    seq: u32,
    payload: &[u8],
    fin: bool,
    rcv_nxt: u32,
) -> Vec<u8> {
    let flags = if payload.is_empty() { 0 } else { flags::PSH } | if fin { flags::FIN } else { 0 };
    our_segment(state, seq, rcv_nxt, flags, payload, our_tsval(state, None))
}

/// The replicated unacked tail as segments from VIP:port to the peer: contiguous from
/// the first unacknowledged byte (`snd_una`, or `our_isn + 1` while our SYN is
/// unacked), ACK|PSH, ack `rcv_nxt`, window [`kick_window`], timestamps (TSval =
/// later of `our_tsval` and `now_tsval`, TSecr = `peer_tsval`) if negotiated. Each
/// payload is at most `min(mss, peer_mss or 536)` minus 12 bytes when timestamps are
/// on (at least 1). Our FIN, if sent and not yet acknowledged, rides on the last data
/// segment when the bytes end exactly at it, else goes alone at its sequence number.
/// Bytes past our FIN (there should be none) are not sent.
pub fn retransmit_segments(
    state: &SessionState,
    mss: usize,
    now_tsval: Option<u32>,
) -> Vec<Vec<u8>> {
    let n = &state.negotiated;
    let peer_mss = if n.peer_mss == 0 {
        DEFAULT_MSS
    } else {
        n.peer_mss
    };
    let ts_len = if n.timestamps { 12 } else { 0 };
    let max = mss.min(usize::from(peer_mss)).saturating_sub(ts_len).max(1);
    let tsval = our_tsval(state, now_tsval);
    let start = unacked::data_start(state);
    let fin = state.our_fin.filter(|&f| seq_le(state.snd_una, f));
    let len = match fin {
        Some(f) if seq_le(start, f) => state.unacked.len().min(f.wrapping_sub(start) as usize),
        Some(_) => 0,
        None => state.unacked.len(),
    };
    // `unacked` is far below 4 GiB, so offsets fit a sequence distance.
    let data_end = start.wrapping_add(len as u32);
    let fin_on_data = len > 0 && fin == Some(data_end);
    let mut out = Vec::with_capacity(len.div_ceil(max) + 1);
    let mut at = 0;
    while at < len {
        let to = (at + max).min(len);
        let payload: Vec<u8> = state.unacked.range(at..to).copied().collect();
        let last = to == len;
        let flags = flags::PSH | if last && fin_on_data { flags::FIN } else { 0 };
        let seq = start.wrapping_add(at as u32);
        out.push(our_segment(
            state,
            seq,
            state.rcv_nxt,
            flags,
            &payload,
            tsval,
        ));
        at = to;
    }
    if let Some(f) = fin.filter(|_| !fin_on_data) {
        out.push(our_segment(state, f, state.rcv_nxt, flags::FIN, &[], tsval));
    }
    out
}

/// A pure ACK from VIP:port to the peer: seq `snd_nxt`, ack `rcv_nxt`, window
/// [`kick_window`], timestamps (`our_tsval`, `peer_tsval`) if negotiated. Tells the
/// peer the window is open and where our receive side stands.
pub fn window_update(state: &SessionState) -> Vec<u8> {
    our_segment(
        state,
        state.snd_nxt,
        state.rcv_nxt,
        0,
        &[],
        our_tsval(state, None),
    )
}

/// A keepalive-style probe (seq `snd_nxt − 1`, no payload): below the peer's window,
/// so the peer must answer with an ACK of its `rcv_nxt` (RFC 793 §3.9) — proof, right
/// after an async-mode restore, of whether it saw bytes the replica lacks
/// ([`super::divergence`]), even if the session is idle.
pub fn probe(state: &SessionState) -> Vec<u8> {
    let seq = state.snd_nxt.wrapping_sub(1);
    our_segment(state, seq, state.rcv_nxt, 0, &[], our_tsval(state, None))
}

/// `n` identical [`window_update`]s: duplicate ACKs of `rcv_nxt` so the peer
/// retransmits its unacknowledged data at once instead of waiting for its RTO (TCPR
/// sent four: the first may count as a window update, the next three as duplicates).
pub fn duplicate_acks(state: &SessionState, n: usize) -> Vec<Vec<u8>> {
    let ack = window_update(state);
    vec![ack; n]
}
