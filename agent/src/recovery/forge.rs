//! The forged handshake (design §4 steps 1–2): the peer's SYN and third ACK, written
//! from the replicated [`SessionState`], and the app kernel's SYN-ACK recognised in
//! between. After it, the unmodified server `accept()`s an ordinary connection from the
//! peer's address and port whose receive side already stands at our `rcv_nxt`.
//!
//! # Sequence spaces
//! The peer's sequence space is shared: the forged SYN carries ISN `rcv_nxt - 1`, so
//! the restored socket expects exactly the byte the peer will send next, and the
//! peer's sequence numbers, ACKs of them and SACK blocks over them need no translation.
//! Our side is not: the app kernel picks a fresh ISN ([`SynAck::new_isn`]), which
//! [`super::translate::Translator`] maps onto the peer's view.
//!
//! # A FIN the peer already sent
//! If the peer's FIN is already acknowledged (`peer_fin` set and before `rcv_nxt`),
//! the peer will never send it again, yet the app must still read end-of-file. The
//! forged SYN then carries ISN `peer_fin - 1` (= `rcv_nxt - 2`) and the forged ACK
//! carries the FIN at `peer_fin`: after the handshake the restored socket is in
//! CLOSE_WAIT with its `rcv_nxt` equal to ours again. See [`syn_seq`].
//!
//! The packets are whole IPv4 packets (ID 0, DF, TTL 64) with correct checksums, to
//! be injected with a raw socket. Nothing here checks that the session is worth
//! restoring (phase, complete `unacked`): that is the caller's decision.

use crate::session::tracker::PacketError;
use crate::tcp::segment::Segment;
use crate::tcp::wire::{self, Tcp};
use crate::tcp::{flags, kind};
use nonstop_shared::session::{seq_lt, SessionState};

/// Largest window scale shift (RFC 7323 §2.3); larger values are taken as 14.
const MAX_WSCALE: u8 = 14;

/// MSS assumed when a SYN carries none (RFC 9293 §3.7.1).
pub const DEFAULT_MSS: u16 = 536;

/// The app kernel's SYN-ACK to the forged SYN: what the translator needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynAck {
    /// The restored socket's initial sequence number (its first data byte is
    /// `new_isn + 1`).
    pub new_isn: u32,
    /// The window scale shift the app kernel announced (clamped to 14), if any.
    /// Scaling is on for the restored socket only if the forged SYN offered it too.
    pub wscale: Option<u8>,
    /// The MSS the app kernel announced ([`DEFAULT_MSS`] if none).
    pub mss: u16,
    /// The app kernel's TSval, if it sent timestamps.
    pub tsval: Option<u32>,
    /// The raw window field of the SYN-ACK (never scaled).
    pub window: u16,
}

/// Why a packet is not the SYN-ACK the forged SYN asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The packet cannot be read as IPv4 + TCP (or its options are malformed).
    #[error("malformed packet: {0}")]
    Malformed(#[from] PacketError),
    /// Not from VIP:port to the session's peer address and port.
    #[error("not an outbound packet of this session")]
    WrongSession,
    /// Of the session, but not a SYN-ACK (SYN and ACK set, RST clear).
    #[error("not a SYN-ACK")]
    NotSynAck,
    /// A SYN-ACK that does not acknowledge the forged SYN.
    #[error("SYN-ACK acknowledges {got}, the forged SYN needs {expected}")]
    WrongAck {
        /// `syn_seq(state) + 1`.
        expected: u32,
        /// The SYN-ACK's acknowledgment number.
        got: u32,
    },
}

/// The peer's FIN, if we have acknowledged it (it is before `rcv_nxt`).
fn acked_peer_fin(state: &SessionState) -> Option<u32> {
    state.peer_fin.filter(|&fin| seq_lt(fin, state.rcv_nxt))
}

/// The ISN of the forged SYN: `rcv_nxt - 1`, or `peer_fin - 1` when the peer's FIN is
/// already acknowledged (the forged ACK then delivers that FIN; see the module docs),
/// moved back by the length of any handed-over `unread_input` ([`super::feed`]).
pub fn syn_seq(state: &SessionState) -> u32 {
    // Input handed over unread (`unread_input`) comes first: the socket starts at it.
    acked_peer_fin(state)
        .unwrap_or(state.rcv_nxt)
        .wrapping_sub(state.unread_input.len() as u32)
        .wrapping_sub(1)
}

/// The peer's SYN, as it first sent it but starting at [`syn_seq`]: from
/// peer_ip:peer_port to local_ip:local_port, SYN only, the window as the peer last
/// announced it in bytes (`peer_window << peer_wscale`, at most 65535: a SYN's window
/// is never scaled), and the options negotiated in the original handshake, laid out as
/// Linux does: MSS (`peer_mss`; omitted if the peer sent none, so the app kernel
/// assumes 536 exactly as the old one did), SACK-permitted if SACK was negotiated,
/// timestamps (TSval = `peer_tsval`, TSecr = 0) if they were, window scale
/// (`peer_wscale`) if scaling was on.
pub fn forged_syn(state: &SessionState) -> Vec<u8> {
    let n = &state.negotiated;
    let mut options = Vec::with_capacity(20);
    if n.peer_mss != 0 {
        options.extend_from_slice(&[kind::MSS, 4]);
        options.extend_from_slice(&n.peer_mss.to_be_bytes());
    }
    match (n.sack_permitted, n.timestamps) {
        (true, true) => {
            options.extend_from_slice(&[kind::SACK_PERMITTED, 2, kind::TIMESTAMPS, 10]);
            options.extend_from_slice(&state.peer_tsval.to_be_bytes());
            options.extend_from_slice(&0u32.to_be_bytes());
        }
        (false, true) => options.extend_from_slice(&wire::ts_option(state.peer_tsval, 0)),
        (true, false) => {
            options.extend_from_slice(&[kind::NOP, kind::NOP, kind::SACK_PERMITTED, 2]);
        }
        (false, false) => {}
    }
    if let Some(shift) = n.peer_wscale {
        options.extend_from_slice(&[kind::NOP, kind::WSCALE, 3, shift.min(MAX_WSCALE)]);
    }
    let shift = n.peer_wscale.unwrap_or(0).min(MAX_WSCALE);
    let bytes = u64::from(state.peer_window) << shift;
    let window = u16::try_from(bytes).unwrap_or(u16::MAX);
    let k = &state.key;
    wire::build(&Tcp {
        src: (k.peer_ip, k.peer_port),
        dst: (k.local_ip, k.local_port),
        seq: syn_seq(state),
        ack: None,
        flags: flags::SYN,
        window,
        options: &options,
        payload: &[],
    })
}

/// Reads the app kernel's answer to [`forged_syn`]: an outbound packet from
/// local_ip:local_port to peer_ip:peer_port with SYN and ACK set, RST clear, and
/// acknowledgment number `syn_seq(state) + 1` (i.e. `rcv_nxt`, or `rcv_nxt - 1` when
/// the peer's FIN is being replayed).
///
/// (The design brief named a `key` parameter; the expected acknowledgment number needs
/// the whole state.)
pub fn parse_synack(packet: &[u8], state: &SessionState) -> Result<SynAck, ForgeError> {
    let seg = Segment::parse(packet)?;
    let k = &state.key;
    if seg.src != k.local_ip
        || seg.src_port != k.local_port
        || seg.dst != k.peer_ip
        || seg.dst_port != k.peer_port
    {
        return Err(ForgeError::WrongSession);
    }
    let Some(ack) = seg.ack.filter(|_| seg.syn && !seg.rst) else {
        return Err(ForgeError::NotSynAck);
    };
    let expected = syn_seq(state).wrapping_add(1);
    if ack != expected {
        return Err(ForgeError::WrongAck { expected, got: ack });
    }
    let options = seg.options().map_err(PacketError::from)?;
    Ok(SynAck {
        new_isn: seg.seq,
        wscale: options.wscale.map(|w| w.min(MAX_WSCALE)),
        mss: options.mss.unwrap_or(DEFAULT_MSS),
        tsval: options.timestamps.map(|t| t.tsval),
        window: seg.window,
    })
}

/// The peer's third ACK: seq `syn_seq + 1` (= `rcv_nxt` unless the peer's FIN is
/// replayed, in which case the FIN flag is set too and seq = `peer_fin`), ack
/// `new_isn + 1`, the peer's raw window (the app kernel scales it by the
/// `peer_wscale` the forged SYN offered), and timestamps (TSval = `peer_tsval`,
/// TSecr = the SYN-ACK's TSval) if they were negotiated and the SYN-ACK carries them.
pub fn forged_ack(state: &SessionState, synack: &SynAck) -> Vec<u8> {
    let ts = synack
        .tsval
        .filter(|_| state.negotiated.timestamps)
        .map(|tsecr| wire::ts_option(state.peer_tsval, tsecr));
    let fin = if acked_peer_fin(state).is_some() {
        flags::FIN
    } else {
        0
    };
    let k = &state.key;
    wire::build(&Tcp {
        src: (k.peer_ip, k.peer_port),
        dst: (k.local_ip, k.local_port),
        seq: syn_seq(state).wrapping_add(1),
        ack: Some(synack.new_isn.wrapping_add(1)),
        flags: fin,
        window: state.peer_window,
        options: ts.as_ref().map_or(&[][..], |o| &o[..]),
        payload: &[],
    })
}
