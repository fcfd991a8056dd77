//! Trace tests for the recovery core (style.md, smoltcp): exact segments in, exact
//! segments out.
//!
//! - `crate::test_support::segment`: `seg().from_us().seq(400).ts(1, 2).build()` → IPv4 bytes.
//! - `forge`: the forged SYN and ACK, SYN-ACK recognition.
//! - `translate`: outbound and inbound rewriting, field by field.
//! - `kick`: retransmission of the tail, window update, duplicate ACKs.
//! - `props`: property tests (round trips, 1:1 sequence mapping, tail coverage, no
//!   panics on random and bit-flipped bytes).
//!
//! Every packet the code under test writes is read back with [`view`], which checks
//! both checksums twice: with a naive RFC 1071 sum written here and with etherparse.

mod forge;
mod freeze;
mod kick;
mod props;
mod tail;
mod translate;

use super::forge::SynAck;
use crate::test_support::segment::{PEER, PEER_PORT, PORT, VIP};
use nonstop_shared::session::{Negotiated, Phase, SessionKey, SessionState};
use std::collections::VecDeque;
use std::net::Ipv4Addr;

/// The session key of the default peer.
fn key() -> SessionKey {
    SessionKey {
        peer_ip: Ipv4Addr::from(PEER),
        peer_port: PEER_PORT,
        local_ip: Ipv4Addr::from(VIP),
        local_port: PORT,
    }
}

/// Peer's next sequence number in most traces (our `rcv_nxt`).
const RCV_NXT: u32 = 5_000;
/// First unacknowledged byte of ours.
const SND_UNA: u32 = 2_000;
/// Length of the replicated tail.
const TAIL: usize = 100;
/// Our send-next: the end of the tail.
const SND_NXT: u32 = SND_UNA + TAIL as u32;
/// Last TSval the peer sent.
const PEER_TSVAL: u32 = 7_000;
/// Last TSval we sent.
const OUR_TSVAL: u32 = 9_000;
/// The app kernel's ISN in most traces.
const NEW_ISN: u32 = 70_000;
/// The app kernel's first TSval in most traces.
const APP_TSVAL: u32 = 123_456;

/// Byte `i` of our outbound stream.
fn stream_byte(seq: u32) -> u8 {
    (u64::from(seq).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// An established session with a 100-byte unacked tail, everything negotiated,
/// both window scales 7.
fn state() -> SessionState {
    SessionState {
        key: key(),
        phase: Phase::Established,
        peer_isn: 400,
        our_isn: 1_000,
        rcv_nxt: RCV_NXT,
        peer_seq_max: RCV_NXT,
        snd_nxt: SND_NXT,
        snd_una: SND_UNA,
        peer_window: 1_000,
        our_window: 500,
        negotiated: Negotiated {
            peer_mss: 1_460,
            our_mss: 1_400,
            peer_wscale: Some(7),
            our_wscale: Some(7),
            sack_permitted: true,
            timestamps: true,
        },
        peer_tsval: PEER_TSVAL,
        our_tsval: OUR_TSVAL,
        our_fin: None,
        peer_fin: None,
        unacked: (SND_UNA..SND_NXT)
            .map(stream_byte)
            .collect::<VecDeque<u8>>(),
        unread_input: Vec::new(),
        at_risk: false,
        bytes_in: 4_599,
        bytes_out: 1_099,
        last_activity_ms: 1_700_000_000_000,
    }
}

/// The same session with nothing negotiated (no MSS, no scaling, SACK or timestamps).
fn bare_state() -> SessionState {
    SessionState {
        negotiated: Negotiated::default(),
        peer_tsval: 0,
        our_tsval: 0,
        ..state()
    }
}

/// The app kernel's SYN-ACK in most traces.
fn synack() -> SynAck {
    SynAck {
        new_isn: NEW_ISN,
        wscale: Some(7),
        mss: 1_460,
        tsval: Some(APP_TSVAL),
        window: 65_535,
    }
}

/// A packet read back field by field, checksums verified.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    dont_fragment: bool,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    psh: bool,
    window: u16,
    options: Vec<u8>,
    payload: Vec<u8>,
}

/// Ones' complement sum, the textbook way (RFC 1071 §4.1), for cross-checking.
fn naive_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(bytes[i]) << 8 | u32::from(bytes[i + 1]);
        i += 2;
    }
    if i < bytes.len() {
        sum += u32::from(bytes[i]) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether the IPv4 header checksum and the TCP checksum verify (naive sum).
fn checksums_verify(packet: &[u8]) -> bool {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&packet[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    pseudo.extend_from_slice(&packet[ihl..total]);
    naive_sum(&packet[..ihl]) == 0xffff && naive_sum(&pseudo) == 0xffff
}

/// Reads a packet written by the code under test: IPv4 + TCP, the IPv4 total length
/// equal to the packet length, both checksums correct (naive sum and etherparse).
#[track_caller]
fn view(packet: &[u8]) -> View {
    assert!(checksums_verify(packet), "checksums (naive): {packet:02x?}");
    let ip = etherparse::Ipv4Slice::from_slice(packet).expect("IPv4");
    let h = ip.header();
    assert_eq!(usize::from(h.total_len()), packet.len(), "total length");
    let header = h.to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    let tcp = etherparse::TcpSlice::from_slice(ip.payload().payload).expect("TCP");
    let sum = tcp
        .calc_checksum_ipv4(h.source(), h.destination())
        .expect("size");
    assert_eq!(tcp.checksum(), sum, "TCP checksum (etherparse)");
    View {
        src: (h.source_addr(), tcp.source_port()),
        dst: (h.destination_addr(), tcp.destination_port()),
        ttl: h.ttl(),
        dont_fragment: h.dont_fragment(),
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        psh: tcp.psh(),
        window: tcp.window_size(),
        options: tcp.options().to_vec(),
        payload: tcp.payload().to_vec(),
    }
}

/// The options of a viewed packet, read by the tracker's own parser.
#[track_caller]
fn options_of(v: &View) -> crate::tcp::options::TcpOptions {
    crate::tcp::options::parse(&v.options).expect("valid options")
}

/// Replaces the TCP checksum with the pseudo-header sum only, as Linux leaves it for
/// checksum offload (`CHECKSUM_PARTIAL`).
fn make_partial(packet: &mut [u8]) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&packet[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    let partial = naive_sum(&pseudo);
    packet[ihl + 16..ihl + 18].copy_from_slice(&partial.to_be_bytes());
}

/// Writes a correct TCP checksum after a test edited the packet.
fn refresh_checksum(packet: &mut [u8]) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    packet[ihl + 16..ihl + 18].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&packet[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    pseudo.extend_from_slice(&packet[ihl..total]);
    let sum = !naive_sum(&pseudo);
    packet[ihl + 16..ihl + 18].copy_from_slice(&sum.to_be_bytes());
}
