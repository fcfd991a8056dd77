//! Kicking the peer after a restore: the replicated tail retransmitted from `unacked`,
//! the window update, duplicate ACKs.

use super::*;
use crate::recovery::translate::{
    duplicate_acks, kick_window, probe, retransmit_segments, window_update,
};
use crate::test_support::segment::{PEER, PEER_PORT, PORT, VIP};

/// `n` tail bytes from `snd_una`.
fn with_tail(mut s: SessionState, snd_una: u32, n: usize) -> SessionState {
    s.snd_una = snd_una;
    s.our_isn = snd_una.wrapping_sub(77);
    s.snd_nxt = snd_una.wrapping_add(n as u32);
    s.unacked = (0..n as u32)
        .map(|i| stream_byte(snd_una.wrapping_add(i)))
        .collect();
    s
}

/// Views of the segments, checked to be contiguous from `from` and to carry `unacked`.
#[track_caller]
fn check_cover(segments: &[Vec<u8>], s: &SessionState, from: u32) -> Vec<View> {
    let views: Vec<View> = segments.iter().map(|p| view(p)).collect();
    let mut seq = from;
    let mut bytes = Vec::new();
    for v in &views {
        assert_eq!(v.seq, seq);
        seq = seq.wrapping_add(v.payload.len() as u32);
        bytes.extend_from_slice(&v.payload);
    }
    assert_eq!(bytes, s.unacked.iter().copied().collect::<Vec<u8>>());
    views
}

#[test]
fn a_short_tail_is_one_segment_with_exact_fields() {
    let s = state();
    let segments = retransmit_segments(&s, 1_460, None);
    assert_eq!(segments.len(), 1);
    let v = &check_cover(&segments, &s, SND_UNA)[0];
    assert_eq!(v.src, (Ipv4Addr::from(VIP), PORT));
    assert_eq!(v.dst, (Ipv4Addr::from(PEER), PEER_PORT));
    assert!(v.dont_fragment);
    assert_eq!(v.ack, Some(RCV_NXT));
    assert!(v.psh && !v.fin && !v.syn && !v.rst);
    assert_eq!(v.window, 500);
    #[rustfmt::skip]
    let expected = [
        1, 1, 8, 10,
        0, 0, 0x23, 0x28,                   // TSval = our_tsval 9000
        0, 0, 0x1b, 0x58,                   // TSecr = peer_tsval 7000
    ];
    assert_eq!(v.options, expected);
}

#[test]
fn a_long_tail_is_cut_at_the_peer_mss_minus_timestamps() {
    let s = with_tail(state(), SND_UNA, 5_000);
    let segments = retransmit_segments(&s, 9_000, None);
    let views = check_cover(&segments, &s, SND_UNA);
    let sizes: Vec<usize> = views.iter().map(|v| v.payload.len()).collect();
    assert_eq!(sizes, [1_448, 1_448, 1_448, 656]);
    assert!(views.iter().all(|v| v.psh && !v.fin));

    // A smaller caller MSS wins.
    let segments = retransmit_segments(&s, 500, None);
    let views = check_cover(&segments, &s, SND_UNA);
    assert!(views.iter().all(|v| v.payload.len() <= 488));
    assert_eq!(views.len(), 5_000usize.div_ceil(488));

    // No timestamps: the whole MSS; no MSS from the peer: 536.
    let mut bare = with_tail(bare_state(), SND_UNA, 5_000);
    bare.negotiated.peer_mss = 1_460;
    let views = check_cover(&retransmit_segments(&bare, 9_000, None), &bare, SND_UNA);
    assert_eq!(views[0].payload.len(), 1_460);
    assert!(views[0].options.is_empty());
    bare.negotiated.peer_mss = 0;
    let views = check_cover(&retransmit_segments(&bare, 9_000, None), &bare, SND_UNA);
    assert_eq!(views[0].payload.len(), 536);

    // A silly MSS still makes progress.
    let views = check_cover(&retransmit_segments(&s, 0, None), &s, SND_UNA);
    assert_eq!(views.len(), 5_000);
}

#[test]
fn the_tail_wraps_at_2_32() {
    let s = with_tail(state(), u32::MAX - 10, 100);
    let views = check_cover(&retransmit_segments(&s, 42, None), &s, u32::MAX - 10);
    assert_eq!(views.len(), 4);
    assert_eq!(views[1].seq, 19);
}

#[test]
fn our_fin_rides_on_the_last_segment() {
    let mut s = with_tail(state(), SND_UNA, 3_000);
    s.our_fin = Some(s.snd_nxt);
    s.snd_nxt = s.snd_nxt.wrapping_add(1);
    s.phase = Phase::LocalClosed;
    let views = check_cover(&retransmit_segments(&s, 1_460, None), &s, SND_UNA);
    assert_eq!(views.len(), 3);
    assert!(views[..2].iter().all(|v| !v.fin));
    assert!(views[2].fin && views[2].psh);
}

#[test]
fn our_fin_alone_and_acked() {
    let mut s = with_tail(state(), SND_UNA, 0);
    s.our_fin = Some(SND_UNA);
    s.snd_nxt = SND_UNA + 1;
    s.phase = Phase::LocalClosed;
    let segments = retransmit_segments(&s, 1_460, None);
    assert_eq!(segments.len(), 1);
    let v = view(&segments[0]);
    assert_eq!(v.seq, SND_UNA);
    assert!(v.fin && !v.psh);
    assert!(v.payload.is_empty());
    assert_eq!(v.ack, Some(RCV_NXT));

    // Acknowledged: nothing left.
    s.snd_una = SND_UNA + 1;
    assert!(retransmit_segments(&s, 1_460, None).is_empty());
}

#[test]
fn an_incomplete_tail_sends_its_bytes_and_the_fin_where_it_is() {
    // 100 bytes known, the FIN 50 bytes further (the byte limit was hit).
    let mut s = with_tail(state(), SND_UNA, 100);
    s.our_fin = Some(SND_UNA + 150);
    s.snd_nxt = SND_UNA + 151;
    let segments = retransmit_segments(&s, 1_460, None);
    assert_eq!(segments.len(), 2);
    let first = view(&segments[0]);
    assert_eq!(
        (first.seq, first.payload.len(), first.fin),
        (SND_UNA, 100, false)
    );
    let fin = view(&segments[1]);
    assert_eq!((fin.seq, fin.fin), (SND_UNA + 150, true));
}

#[test]
fn bytes_past_our_fin_are_not_sent() {
    let mut s = with_tail(state(), SND_UNA, 100);
    s.our_fin = Some(SND_UNA + 60);
    s.snd_nxt = SND_UNA + 61;
    let segments = retransmit_segments(&s, 1_460, None);
    assert_eq!(segments.len(), 1);
    let v = view(&segments[0]);
    assert_eq!((v.payload.len(), v.fin), (60, true));
}

#[test]
fn nothing_unacked_nothing_to_send() {
    let s = with_tail(state(), SND_UNA, 0);
    assert!(retransmit_segments(&s, 1_460, None).is_empty());
}

#[test]
fn while_our_syn_is_unacked_the_bytes_start_after_it() {
    let mut s = with_tail(state(), SND_UNA, 10);
    s.our_isn = SND_UNA;
    s.snd_nxt = SND_UNA + 11;
    let views = check_cover(&retransmit_segments(&s, 1_460, None), &s, SND_UNA + 1);
    assert_eq!(views.len(), 1);
}

#[test]
fn tsval_never_goes_back() {
    let s = state();
    let tsval = |now| {
        let v = view(&retransmit_segments(&s, 1_460, now)[0]);
        options_of(&v).timestamps.expect("ts").tsval
    };
    assert_eq!(tsval(None), OUR_TSVAL);
    assert_eq!(tsval(Some(OUR_TSVAL + 50)), OUR_TSVAL + 50);
    assert_eq!(tsval(Some(OUR_TSVAL - 50)), OUR_TSVAL);
    let mut w = state();
    w.our_tsval = u32::MAX - 1;
    let v = view(&retransmit_segments(&w, 1_460, Some(3))[0]);
    assert_eq!(options_of(&v).timestamps.map(|t| t.tsval), Some(3));
}

#[test]
fn window_update_is_a_pure_ack_at_snd_nxt() {
    let s = state();
    let v = view(&window_update(&s));
    assert_eq!(v.src, (Ipv4Addr::from(VIP), PORT));
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(v.ack, Some(RCV_NXT));
    assert!(!v.psh && !v.fin && !v.syn && !v.rst);
    assert_eq!(v.window, 500);
    assert!(v.payload.is_empty());
    let ts = options_of(&v).timestamps.expect("ts");
    assert_eq!((ts.tsval, ts.tsecr), (OUR_TSVAL, PEER_TSVAL));

    let v = view(&window_update(&bare_state()));
    assert!(v.options.is_empty());
}

#[test]
fn a_zero_window_is_opened_by_one_mss() {
    let mut s = state();
    s.our_window = 0;
    assert_eq!(kick_window(&s), 11); // 1400 bytes in units of 128, rounded up
    assert_eq!(view(&window_update(&s)).window, 11);
    assert_eq!(view(&retransmit_segments(&s, 1_460, None)[0]).window, 11);
    s.negotiated.our_wscale = None;
    assert_eq!(kick_window(&s), 1_400);
    s.negotiated.our_mss = 0;
    assert_eq!(kick_window(&s), 536);
    s.negotiated.our_wscale = Some(14);
    assert_eq!(kick_window(&s), 1);
    s.our_window = 3;
    assert_eq!(kick_window(&s), 3);
}

#[test]
fn duplicate_acks_are_identical_window_updates() {
    let s = state();
    let dups = duplicate_acks(&s, 4);
    assert_eq!(dups.len(), 4);
    assert!(dups.iter().all(|d| *d == window_update(&s)));
    assert!(duplicate_acks(&s, 0).is_empty());
}

#[test]
fn the_probe_sits_one_below_snd_nxt_so_the_peer_must_answer() {
    let s = state();
    let v = view(&probe(&s));
    assert_eq!(v.seq, SND_NXT.wrapping_sub(1));
    assert_eq!(v.ack, Some(RCV_NXT));
    assert!(v.payload.is_empty() && !v.fin && !v.rst && !v.syn);
    let mut wrapped = state();
    wrapped.snd_nxt = 0;
    assert_eq!(view(&probe(&wrapped)).seq, u32::MAX);
}
