//! Trace tests of the mirrors: exact records and segments in, exact injections out.

use super::*;
use crate::tcp::segment::Segment;
use crate::test_support::records::{full, sync_of};
use crate::test_support::segment::seg;
use nonstop_shared::session::SessionSync;
use std::time::Duration;

const PORT: u16 = 40_001;
/// The master's ISN.
const OUR_ISN: u32 = 7000;
/// The mirror kernel's ISN.
const MIRROR_ISN: u32 = 90_000;
/// Δ = master ISN − mirror ISN.
const DELTA: u32 = OUR_ISN.wrapping_sub(MIRROR_ISN);

fn state() -> SessionState {
    full(PORT, OUR_ISN)
}

/// A segment of the mirror's kernel (service → peer).
fn out() -> crate::test_support::segment::Seg {
    seg()
        .from_us()
        .peer([198, 18, 1, 10], PORT)
        .local([198, 18, 1, 100], 7)
}

/// What an injected packet says: (seq, ack, flags SYN/FIN/RST, payload).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    payload: Vec<u8>,
    window: u16,
}

fn seen(packet: &[u8]) -> Seen {
    let s = Segment::parse(packet).expect("a valid segment");
    assert_eq!(
        (s.src, s.src_port, s.dst, s.dst_port),
        (
            std::net::Ipv4Addr::new(198, 18, 1, 10),
            PORT,
            std::net::Ipv4Addr::new(198, 18, 1, 100),
            7
        ),
        "injected as the peer, to the service"
    );
    Seen {
        seq: s.seq,
        ack: s.ack,
        syn: s.syn,
        fin: s.fin,
        rst: s.rst,
        payload: s.payload.to_vec(),
        window: s.window,
    }
}

fn drain(m: &mut Mirrors) -> Vec<Seen> {
    std::iter::from_fn(|| m.poll_inject())
        .map(|p| seen(&p))
        .collect()
}

/// A sync carrying the peer's `input` at `seq` (and nothing else new).
fn input(seq: u32, bytes: &[u8]) -> SessionSync {
    let s = state();
    let mut sync = sync_of(&s, s.snd_nxt, b"");
    sync.input_seq = seq;
    sync.input = bytes.to_vec();
    sync
}

/// A sync carrying the master's output `bytes` at `seq` and the peer's ACK `snd_una`.
fn output(seq: u32, bytes: &[u8], snd_una: u32) -> SessionSync {
    let s = state();
    let mut sync = sync_of(&s, seq, bytes);
    sync.snd_una = snd_una;
    sync
}

/// Mirrors with one open mirror (the mirror's SYN-ACK announced `window`).
fn open(window: u16, limit: usize) -> (Mirrors, Instant) {
    let now = Instant::now();
    let mut m = Mirrors::new();
    m.enable(limit);
    m.on_records(&[Record::Full(state())], now);
    let syn = drain(&mut m);
    assert_eq!(
        syn,
        vec![Seen {
            seq: 500,
            ack: None,
            syn: true,
            fin: false,
            rst: false,
            payload: vec![],
            window: 1000,
        }],
        "the peer's SYN with its real ISN"
    );
    let synack = out().syn().seq(MIRROR_ISN).ack(501).win(window).build();
    m.on_output(state().key, &synack, now);
    let ack = drain(&mut m);
    assert_eq!(ack.len(), 1);
    assert_eq!((ack[0].seq, ack[0].ack), (501, Some(MIRROR_ISN + 1)));
    assert!(m.owns(&state().key));
    assert_eq!(m.counts().opened, 1);
    (m, now)
}

#[test]
fn only_fresh_sessions_are_mirrored_and_cold_mode_mirrors_nothing() {
    let now = Instant::now();
    let mut cold = Mirrors::new();
    cold.on_records(&[Record::Full(state())], now);
    assert!(cold.is_empty() && cold.poll_inject().is_none());

    let mut hot = Mirrors::new();
    hot.enable(1 << 20);
    let mut old = state();
    old.bytes_in = 5;
    old.rcv_nxt = 506;
    hot.on_records(&[Record::Full(old)], now);
    assert!(hot.is_empty(), "a session with history cannot be mirrored");
    assert_eq!(hot.state(&state().key), None);
}

#[test]
fn an_unanswered_syn_is_sent_again_then_given_up() {
    let now = Instant::now();
    let mut m = Mirrors::new();
    m.enable(1 << 20);
    m.on_records(&[Record::Full(state())], now);
    assert_eq!(drain(&mut m).len(), 1);
    m.on_timeout(now + Duration::from_millis(100));
    assert!(drain(&mut m).is_empty(), "not before the retry interval");
    // No listener yet: the kernel answers with an RST; the SYN goes again later.
    let refused = out().rst().ack(501).build();
    m.on_output(state().key, &refused, now);
    assert!(m.owns(&state().key) && m.poll_ended().is_none());
    let mut t = now;
    for _ in 1..machine::SYN_TRIES {
        t += machine::SYN_RETRY;
        m.on_timeout(t);
        let again = drain(&mut m);
        assert_eq!(again.len(), 1);
        assert!(again[0].syn && again[0].seq == 500);
    }
    t += machine::SYN_RETRY;
    m.on_timeout(t);
    assert!(!m.owns(&state().key));
    let ended = m.poll_ended().expect("an event");
    assert!(matches!(ended.end, End::Cold(_)));
    assert_eq!(m.state(&state().key), Some(ReplicaState::Cold));
    let rst = drain(&mut m);
    assert!(rst.len() == 1 && rst[0].rst, "{rst:?}");
}

#[test]
fn input_goes_in_within_the_mirror_window_and_the_rest_waits() {
    let (mut m, now) = open(1000, 1 << 20);
    let bytes: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    m.on_records(&[Record::Sync(input(501, &bytes))], now);
    let sent = drain(&mut m);
    let payload: Vec<u8> = sent.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(payload, bytes[..1000], "exactly the window");
    assert_eq!(sent[0].seq, 501);
    assert!(sent
        .iter()
        .all(|s| s.ack == Some(MIRROR_ISN + 1) && s.window == u16::MAX));
    assert_eq!(m.state(&state().key), Some(ReplicaState::Hot));
    // The mirror takes it and opens its window: the rest follows, in order.
    let ack = out().seq(MIRROR_ISN + 1).ack(1501).win(4000).build();
    m.on_output(state().key, &ack, now);
    let sent = drain(&mut m);
    let payload: Vec<u8> = sent.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(sent[0].seq, 1501);
    assert_eq!(payload, bytes[1000..]);
}

#[test]
fn out_of_order_input_waits_for_the_gap() {
    let (mut m, now) = open(60_000, 1 << 20);
    m.on_records(&[Record::Sync(input(506, b"world"))], now);
    assert!(drain(&mut m).is_empty(), "nothing before the gap is filled");
    m.on_records(&[Record::Sync(input(501, b"hello"))], now);
    let sent = drain(&mut m);
    let payload: Vec<u8> = sent.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(payload, b"helloworld");
}

#[test]
fn the_backlog_is_bounded_and_an_overflow_turns_the_session_cold() {
    let (mut m, now) = open(10, 100);
    m.on_records(&[Record::Sync(input(501, &[7u8; 90]))], now);
    assert!(m.owns(&state().key));
    assert_eq!(drain(&mut m).len(), 1, "ten bytes within the window");
    m.on_records(&[Record::Sync(input(591, &[7u8; 20]))], now);
    assert!(!m.owns(&state().key), "110 bytes waiting > 100");
    let ended = m.poll_ended().expect("event");
    assert!(matches!(&ended.end, End::Cold(r) if r.contains("backlog")));
    let rst = drain(&mut m);
    assert!(rst.last().is_some_and(|s| s.rst), "the mirror is removed");
    assert_eq!(m.counts().cold, 1);
}

#[test]
fn unacknowledged_input_is_fed_again_after_a_while() {
    let (mut m, now) = open(60_000, 1 << 20);
    m.on_records(&[Record::Sync(input(501, b"abc"))], now);
    assert_eq!(drain(&mut m).len(), 1);
    m.on_timeout(now + machine::REFEED + Duration::from_millis(1));
    let again = drain(&mut m);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].seq, &again[0].payload[..]), (501, &b"abc"[..]));
}

#[test]
fn the_peers_ack_progress_is_replayed_only_as_far_as_the_mirror_wrote() {
    let (mut m, now) = open(60_000, 1 << 20);
    let first = OUR_ISN + 1;
    // The master wrote "hello" and the peer acknowledged it all.
    m.on_records(&[Record::Sync(output(first, b"hello", first + 5))], now);
    assert!(
        drain(&mut m).is_empty(),
        "the mirror has written nothing yet"
    );
    assert_eq!(m.state(&state().key), Some(ReplicaState::Hot));
    // The mirror writes "hel": acknowledged up to there.
    let part = out().seq(MIRROR_ISN + 1).ack(501).payload(b"hel").build();
    m.on_output(state().key, &part, now);
    let acks = drain(&mut m);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].ack, Some(MIRROR_ISN + 4));
    assert!(acks[0].payload.is_empty() && acks[0].window == u16::MAX);
    // Then "lo": up to the peer's ACK.
    let rest = out().seq(MIRROR_ISN + 4).ack(501).payload(b"lo").build();
    m.on_output(state().key, &rest, now);
    let acks = drain(&mut m);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].ack, Some(MIRROR_ISN + 6));
    // A retransmission of it is answered with where we stand.
    m.on_output(
        state().key,
        &out().seq(MIRROR_ISN + 4).ack(501).payload(b"lo").build(),
        now + Duration::from_millis(150),
    );
    let answer = drain(&mut m);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].ack, Some(MIRROR_ISN + 6));
}

#[test]
fn output_that_differs_from_the_masters_marks_the_session_diverged() {
    let (mut m, now) = open(60_000, 1 << 20);
    let first = OUR_ISN + 1;
    let mirror = out()
        .seq(MIRROR_ISN + 1)
        .ack(501)
        .payload(b"12:00:01")
        .build();
    m.on_output(state().key, &mirror, now);
    assert!(m.owns(&state().key), "nothing to compare with yet");
    m.on_records(&[Record::Sync(output(first, b"12:00:07", first))], now);
    assert!(!m.owns(&state().key));
    let ended = m.poll_ended().expect("event");
    assert_eq!(ended.end, End::Diverged { offset: 7 });
    assert_eq!(m.state(&state().key), Some(ReplicaState::Diverged));
    assert_eq!(m.counts().diverged, 1);
    assert!(drain(&mut m).last().is_some_and(|s| s.rst));
    // A takeover restores it cold.
    assert!(m.adopt(&state().key).is_none());
}

#[test]
fn a_close_the_master_did_not_make_is_a_divergence() {
    let (mut m, now) = open(60_000, 1 << 20);
    let first = OUR_ISN + 1;
    let fin = out().seq(MIRROR_ISN + 1).ack(501).fin().build();
    m.on_output(state().key, &fin, now);
    assert!(m.owns(&state().key), "the master may close too");
    m.on_records(&[Record::Sync(output(first, b"more", first))], now);
    assert_eq!(
        m.poll_ended().map(|e| e.end),
        Some(End::Diverged { offset: 0 })
    );
}

#[test]
fn the_peers_fin_follows_its_input_and_the_same_close_is_in_step() {
    let (mut m, now) = open(60_000, 1 << 20);
    let mut sync = input(501, b"bye");
    sync.peer_fin = Some(504);
    m.on_records(&[Record::Sync(sync)], now);
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].seq, &sent[0].payload[..]), (501, &b"bye"[..]));
    assert!(sent[1].fin && sent[1].seq == 504);
    // Both close after the same output.
    let first = OUR_ISN + 1;
    let mut close = output(first, b"ok", first);
    close.our_fin = Some(first + 2);
    m.on_records(&[Record::Sync(close)], now);
    let fin = out()
        .seq(MIRROR_ISN + 1)
        .ack(505)
        .payload(b"ok")
        .fin()
        .build();
    m.on_output(state().key, &fin, now);
    assert!(m.poll_ended().is_none());
    assert!(m.owns(&state().key));
    // The session ends on the master: the mirror goes.
    m.on_records(&[Record::Delete(state().key)], now);
    assert!(!m.owns(&state().key));
    assert!(drain(&mut m).last().is_some_and(|s| s.rst));
}

#[test]
fn a_reset_from_the_replicas_service_turns_the_session_cold() {
    let (mut m, now) = open(60_000, 1 << 20);
    m.on_output(
        state().key,
        &out().seq(MIRROR_ISN + 1).ack(501).rst().build(),
        now,
    );
    assert!(matches!(m.poll_ended().map(|e| e.end), Some(End::Cold(_))));
    assert_eq!(m.state(&state().key), Some(ReplicaState::Cold));
}

#[test]
fn a_snapshot_keeps_a_mirror_that_lacks_nothing_and_a_dead_service_ends_all() {
    let (mut m, now) = open(60_000, 1 << 20);
    m.on_records(&[Record::Sync(input(501, b"abc"))], now);
    let mut same = state();
    same.rcv_nxt = 504;
    m.on_snapshot(&[Record::Full(same.clone())]);
    assert!(
        m.owns(&state().key),
        "the snapshot says nothing the mirror lacks"
    );
    m.on_snapshot(&[]);
    assert!(
        m.owns(&state().key),
        "its Full record may follow the snapshot"
    );
    let mut ahead = same;
    ahead.rcv_nxt = 510;
    m.on_snapshot(&[Record::Full(ahead)]);
    assert!(!m.owns(&state().key), "input records were missed");
    assert_eq!(m.counts().cold, 1);
    let (mut m, _) = open(60_000, 1 << 20);
    m.on_service_died();
    assert!(m.is_empty());
    assert!(matches!(m.poll_ended().map(|e| e.end), Some(End::Cold(r)) if r.contains("died")));
}

#[test]
fn after_a_switchover_the_old_masters_connection_is_a_mirror_with_its_delta() {
    let now = Instant::now();
    let mut m = Mirrors::new();
    m.enable(1 << 20);
    // The old master served 5 bytes each way; its socket was restored once (Δ 100).
    let mut s = state();
    s.rcv_nxt = 506;
    s.snd_nxt = OUR_ISN + 6;
    s.snd_una = OUR_ISN + 6;
    s.bytes_in = 5;
    s.bytes_out = 5;
    m.adopt_live(vec![(s.clone(), 100, None)]);
    assert!(m.owns(&s.key));
    assert_eq!(m.state(&s.key), Some(ReplicaState::Hot));
    // The new master's records: input, then its output and the peer's ACK of it.
    let mut sync = input(506, b"next");
    sync.data_seq = OUR_ISN + 6;
    sync.data = b"reply".to_vec();
    sync.snd_una = OUR_ISN + 11;
    m.on_records(&[Record::Sync(sync)], now);
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].seq, &sent[0].payload[..]), (506, &b"next"[..]));
    assert_eq!(
        sent[0].ack,
        Some(OUR_ISN + 6 - 100),
        "in the socket's own space"
    );
    // The socket answers the same at its own sequence numbers: in step, acknowledged.
    let answer = out()
        .seq(OUR_ISN + 6 - 100)
        .ack(510)
        .payload(b"reply")
        .build();
    m.on_output(s.key, &answer, now);
    assert!(m.poll_ended().is_none());
    let acks = drain(&mut m);
    assert_eq!(acks.last().and_then(|a| a.ack), Some(OUR_ISN + 11 - 100));
    let adopted = m.adopt(&s.key).expect("hot");
    assert_eq!(adopted.translator.delta(), 100);
    assert_eq!(adopted.output_end, OUR_ISN + 11);
}

#[test]
fn a_takeover_adopts_the_mirror_with_its_delta_and_backlog() {
    let (mut m, now) = open(3, 1 << 20);
    m.on_records(&[Record::Sync(input(501, b"abcdef"))], now);
    let sent = drain(&mut m);
    assert_eq!(sent.iter().map(|s| s.payload.len()).sum::<usize>(), 3);
    m.on_output(
        state().key,
        &out().seq(MIRROR_ISN + 1).ack(503).win(0).build(),
        now,
    );
    let adopted = m.adopt(&state().key).expect("open and in step");
    assert_eq!(adopted.translator.delta(), DELTA);
    assert_eq!(adopted.mirror_rcv_nxt, 503);
    assert_eq!(adopted.backlog, b"cdef");
    assert_eq!(adopted.synack.new_isn, MIRROR_ISN);
    assert_eq!(adopted.output_end, OUR_ISN + 1);
    assert_eq!(adopted.translator.peer_seq(MIRROR_ISN + 1), OUR_ISN + 1);
    assert!(drain(&mut m).is_empty(), "an adopted mirror is not reset");
    assert_eq!(m.counts().adopted, 1);
}

#[test]
fn a_mirror_behind_the_master_shows_lagging() {
    let (mut m, now) = open(1, 1 << 20);
    m.on_records(&[Record::Sync(input(501, &[1u8; 20_000]))], now);
    assert_eq!(m.state(&state().key), Some(ReplicaState::Lagging(20_000)),);
}

#[test]
fn an_adopted_translator_never_acks_what_the_mirror_has_not_written_nor_goes_back_in_time() {
    let mut s = state();
    s.negotiated.timestamps = true;
    s.our_tsval = 1_000;
    s.peer_tsval = 50;
    let now = Instant::now();
    let mut m = Mirrors::new();
    m.enable(1 << 20);
    m.on_records(&[Record::Full(s.clone())], now);
    drain(&mut m);
    // The mirror's clock is 200 ms behind the master's once translated.
    let synack = out()
        .syn()
        .seq(MIRROR_ISN)
        .ack(501)
        .win(60_000)
        .ts(5_000, 50)
        .build();
    m.on_output(s.key, &synack, now);
    drain(&mut m);
    let mut adopted = m.adopt(&s.key).expect("open");
    // At the takeover the master had written 10 bytes, all acknowledged, and its
    // last TSval was 1,300; the mirror has written nothing yet.
    let mut at = s.clone();
    at.snd_nxt = OUR_ISN + 11;
    at.snd_una = OUR_ISN + 11;
    at.our_tsval = 1_300;
    adopted
        .translator
        .adopt(&at, adopted.output_end, Some(5_100));
    let t = &adopted.translator;
    assert_eq!(
        t.app_ack(OUR_ISN + 11),
        MIRROR_ISN + 1,
        "the peer's ACK is clamped to what the mirror wrote"
    );
    assert!(
        !nonstop_shared::session::seq_lt(t.peer_tsval(5_100), 1_300),
        "the peer never sees a TSval older than the master's last"
    );
}
