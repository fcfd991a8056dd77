//! Off-path (blind) segments: a segment with a session's 4-tuple changes the session
//! only if the kernel would accept it (RFC 793 acceptability, RFC 5961 §3–5). Every
//! trace checks the exact state before and after, and that nothing was replicated.
//!
//! The default session after `establish()`: peer ISN 400 (rcv_nxt 401), our ISN 1000
//! (snd_nxt 1001), our window 1024 unscaled, so the receive window is [401, 1425].

use super::*;
use crate::session::tracker::Rejection;
use crate::test_support::segment::seg;
use nonstop_shared::session::Phase;

impl Harness {
    /// Feeds a peer segment the kernel would refuse: no record, the given rejection,
    /// the session exactly as before (last activity included), counted.
    fn refused(&mut self, packet: Vec<u8>, why: Rejection) {
        let before = self.t.session(&key()).cloned();
        let counted = self.t.stats().segments_out_of_window;
        assert_eq!(
            self.t.rejection(&packet),
            Some(why),
            "judged without change"
        );
        self.now += 1;
        let outcome = self.t.on_packet(&packet, self.now).expect("a valid packet");
        assert_eq!(outcome.rejected, Some(why));
        assert_eq!(
            outcome.records,
            vec![],
            "a refused segment is never replicated"
        );
        assert_eq!(self.t.session(&key()).cloned(), before, "state changed");
        assert_eq!(self.t.stats().segments_out_of_window, counted + 1);
    }
}

/// Our segment with `n` payload bytes.
fn out(seq: u32, n: usize, ack: u32) -> Vec<u8> {
    seg()
        .from_us()
        .seq(seq)
        .ack(ack)
        .payload(&vec![b'o'; n])
        .build()
}

#[test]
fn rst_below_the_window_changes_nothing() {
    let mut h = Harness::new();
    h.establish();
    h.refused(seg().seq(400).rst().build(), Rejection::RstNotExact);
    h.refused(seg().seq(1).rst().build(), Rejection::RstNotExact);
    assert_eq!(h.state().phase, Phase::Established);
}

#[test]
fn rst_at_rcv_nxt_resets() {
    let mut h = Harness::new();
    h.establish();
    assert_eq!(h.t.rejection(&seg().seq(401).rst().build()), None);
    let records = h.feed(seg().seq(401).rst().build());
    assert_eq!(records, vec![Record::Delete(key())]);
    assert!(h.t.is_empty());
    assert_eq!(h.t.stats().segments_out_of_window, 0);
}

#[test]
fn rst_inside_the_window_is_the_challenge_ack_case() {
    let mut h = Harness::new();
    h.establish();
    for seq in [402, 700, 1424, 1425] {
        h.refused(seg().seq(seq).rst().build(), Rejection::RstNotExact);
    }
    // With an ACK flag and any ACK number: still nothing.
    h.refused(
        seg().seq(900).ack(1001).rst().build(),
        Rejection::RstNotExact,
    );
    assert_eq!(h.t.len(), 1);
}

#[test]
fn rst_beyond_the_window_changes_nothing() {
    let mut h = Harness::new();
    h.establish();
    h.refused(seg().seq(1426).rst().build(), Rejection::RstNotExact);
    h.refused(
        seg().seq(401 + (1 << 31)).rst().build(),
        Rejection::RstNotExact,
    );
}

#[test]
fn rst_at_the_end_of_unacknowledged_peer_data_resets() {
    // The kernel received 10 bytes but has not acknowledged them yet (delayed ACK):
    // its rcv_nxt is 411, where the peer's own RST lands.
    let mut h = Harness::new();
    h.establish();
    h.sync(seg().seq(401).ack(1001).payload(b"0123456789").build());
    assert_eq!((h.state().rcv_nxt, h.state().peer_seq_max), (401, 411));
    h.refused(seg().seq(405).rst().build(), Rejection::RstNotExact);
    assert_eq!(
        h.feed(seg().seq(411).rst().build()),
        vec![Record::Delete(key())]
    );
}

#[test]
fn rst_one_below_rcv_nxt_after_the_peers_fin_resets() {
    let mut h = Harness::new();
    h.establish();
    h.sync(seg().seq(401).ack(1001).fin().build());
    h.sync(seg().from_us().seq(1001).ack(402).build());
    // Linux's tcp_reset_check: rcv_nxt − 1 once the FIN is in.
    assert_eq!(
        h.feed(seg().seq(401).rst().build()),
        vec![Record::Delete(key())]
    );
}

#[test]
fn syn_on_an_established_session_never_resets_it() {
    let mut h = Harness::new();
    h.establish();
    h.refused(seg().syn().seq(77).build(), Rejection::Syn);
    h.refused(seg().syn().seq(401).build(), Rejection::Syn);
    h.refused(seg().syn().seq(400).ack(1001).build(), Rejection::Syn);
    assert_eq!(h.state().peer_isn, 400);
}

#[test]
fn second_syn_after_our_syn_ack_is_refused() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    h.refused(seg().syn().seq(9999).build(), Rejection::Syn);
    // The retransmitted SYN is fine, and the handshake still completes.
    h.quiet(seg().syn().seq(400).build());
    let records = h.feed(seg().seq(401).ack(1001).build());
    assert!(matches!(records.as_slice(), [Record::Full(_)]));
}

#[test]
fn rst_in_the_handshake_resets_only_inside_the_window() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    h.refused(seg().seq(5000).rst().build(), Rejection::RstNotExact);
    h.quiet(seg().seq(402).rst().build());
    assert!(h.t.is_empty());
}

#[test]
fn fin_outside_the_window_changes_nothing() {
    let mut h = Harness::new();
    h.establish();
    h.refused(
        seg().seq(3000).ack(1001).fin().build(),
        Rejection::OutOfWindow,
    );
    h.refused(
        seg().seq(300).ack(1001).fin().build(),
        Rejection::OutOfWindow,
    );
    assert_eq!(
        (h.state().peer_fin, h.state().phase),
        (None, Phase::Established)
    );
    // In the window and with an acceptable ACK, the FIN counts.
    let sync = h.sync(seg().seq(401).ack(1001).fin().build());
    assert_eq!(sync.peer_fin, Some(401));
}

#[test]
fn data_outside_the_window_changes_nothing() {
    let mut h = Harness::new();
    h.establish();
    // Entirely below rcv_nxt (a stale duplicate), beyond the right edge, far away.
    h.refused(
        seg().seq(300).ack(1001).payload(b"old").build(),
        Rejection::OutOfWindow,
    );
    h.refused(
        seg().seq(1426).ack(1001).payload(b"far").build(),
        Rejection::OutOfWindow,
    );
    h.refused(
        seg().seq(401 + (1 << 30)).ack(1001).payload(b"far").build(),
        Rejection::OutOfWindow,
    );
    assert_eq!((h.state().peer_seq_max, h.state().bytes_in), (401, 0));
    // Overlapping the left edge or starting at the right edge: acceptable.
    let sync = h.sync(seg().seq(399).ack(1001).payload(b"xyzw").build());
    assert_eq!(sync.peer_seq_max, 403);
}

#[test]
fn data_without_the_ack_flag_changes_nothing() {
    let mut h = Harness::new();
    h.establish();
    h.refused(seg().seq(401).payload(b"no ack").build(), Rejection::NoAck);
}

#[test]
fn ack_outside_what_was_sent_discards_the_whole_segment() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    // In-window data, ACK beyond snd_nxt (1101): the kernel discards it all.
    h.refused(
        seg().seq(401).ack(1102).win(9).payload(b"forged").build(),
        Rejection::UnsentAck,
    );
    // Older than snd_una − max_window (the peer offered at most 64,240 in its SYN).
    h.refused(
        seg()
            .seq(401)
            .ack(1001u32.wrapping_sub(64_241))
            .payload(b"old")
            .build(),
        Rejection::StaleAck,
    );
    assert_eq!(
        (
            h.state().snd_una,
            h.state().peer_seq_max,
            h.state().peer_window
        ),
        (1001, 401, 1024)
    );
    assert_eq!(h.state().unacked.len(), 100);
    // An old ACK within the window is the kernel's "old ack": data accepted.
    let sync = h.sync(seg().seq(401).ack(990).payload(b"ok").build());
    assert_eq!((sync.peer_seq_max, sync.snd_una), (403, 1001));
    // And the exact edges are fine.
    let sync = h.sync(seg().seq(403).ack(1101).build());
    assert_eq!(sync.snd_una, 1101);
}

#[test]
fn timestamps_of_refused_segments_are_ignored() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).ts(100, 0).build());
    h.quiet(
        seg()
            .from_us()
            .syn()
            .seq(1000)
            .ack(401)
            .ts(5000, 100)
            .build(),
    );
    h.feed(seg().seq(401).ack(1001).ts(101, 5000).build());
    h.refused(
        seg().seq(90_000).ack(1001).ts(0x7fff_0000, 5000).build(),
        Rejection::OutOfWindow,
    );
    assert_eq!(h.state().peer_tsval, 101);
}

#[test]
fn the_window_wraps_around_2_pow_32() {
    // rcv_nxt = 2^32 − 100: the window [2^32 − 100, 924] straddles the wrap.
    let peer_isn = u32::MAX - 100;
    let mut h = Harness::new();
    h.establish_with(peer_isn, OUR_ISN);
    let rcv_nxt = peer_isn.wrapping_add(1);
    assert_eq!(rcv_nxt, u32::MAX - 99);
    // Beyond the right edge (after the wrap) and below the left edge.
    h.refused(
        seg().seq(925).ack(1001).payload(b"x").build(),
        Rejection::OutOfWindow,
    );
    h.refused(
        seg().seq(rcv_nxt - 5).ack(1001).payload(b"x").build(),
        Rejection::OutOfWindow,
    );
    h.refused(seg().seq(500).rst().build(), Rejection::RstNotExact);
    assert_eq!(h.t.rejection(&seg().seq(924).ack(1001).build()), None);
    // Data crossing the wrap is accepted, and the RST at the new rcv_nxt resets.
    let sync = h.sync(seg().seq(rcv_nxt).ack(1001).payload(&[7; 150]).build());
    assert_eq!(sync.peer_seq_max, 50);
    let sync = h.sync(seg().from_us().seq(1001).ack(50).build());
    assert_eq!(sync.rcv_nxt, 50);
    h.refused(seg().seq(rcv_nxt).rst().build(), Rejection::RstNotExact);
    assert_eq!(
        h.feed(seg().seq(50).rst().build()),
        vec![Record::Delete(key())]
    );
}

#[test]
fn our_window_scale_widens_the_acceptable_range() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).wscale(7).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).wscale(7).build());
    h.feed(seg().seq(401).ack(1001).build());
    // Our segment announces 100 << 7 = 12,800 bytes: [401, 13,201 + 127].
    h.sync(seg().from_us().seq(1001).ack(401).win(100).build());
    h.sync(seg().seq(13_000).ack(1001).payload(b"in").build());
    h.refused(
        seg().seq(13_329).ack(1001).payload(b"out").build(),
        Rejection::OutOfWindow,
    );
}

mod blind {
    //! Property: a blind attacker's segments (the session's 4-tuple, guessed numbers)
    //! never remove or change a session unless the rules accept them. The rules are
    //! restated here as offsets from the window's edges, independently of
    //! `acceptance.rs`.

    use super::*;
    use proptest::prelude::*;

    /// One forged segment: flags, and where its numbers fall.
    #[derive(Debug, Clone)]
    struct Forged {
        rst: bool,
        syn: bool,
        fin: bool,
        ack_flag: bool,
        seq: Guess,
        ack: Guess,
        payload: usize,
    }

    /// A guessed number: anywhere, or close to an edge the attacker aims at.
    #[derive(Debug, Clone)]
    enum Guess {
        Any(u32),
        Near(u8, i32),
    }

    fn guess() -> impl Strategy<Value = Guess> {
        prop_oneof![
            3 => any::<u32>().prop_map(Guess::Any),
            2 => (0u8..4, -3000i32..3000).prop_map(|(edge, d)| Guess::Near(edge, d)),
        ]
    }

    fn forged() -> impl Strategy<Value = Forged> {
        (
            any::<(bool, bool, bool, bool)>(),
            guess(),
            guess(),
            prop_oneof![Just(0usize), 1usize..100],
        )
            .prop_map(|((rst, syn, fin, ack_flag), seq, ack, payload)| Forged {
                rst,
                syn,
                fin,
                ack_flag,
                seq,
                ack,
                payload,
            })
    }

    fn resolve(g: &Guess, s: &SessionState) -> u32 {
        match *g {
            Guess::Any(v) => v,
            Guess::Near(edge, d) => {
                let base = [s.rcv_nxt, s.peer_seq_max, s.snd_una, s.snd_nxt][usize::from(edge)];
                base.wrapping_add_signed(d)
            }
        }
    }

    /// The rules, restated: does the kernel accept this segment?
    fn acceptable(
        s: &SessionState,
        seq: u32,
        ack: Option<u32>,
        f: &Forged,
        max_window: u32,
    ) -> bool {
        if f.syn {
            return false;
        }
        if f.rst {
            return seq == s.rcv_nxt || seq == s.peer_seq_max || Some(seq) == s.peer_fin;
        }
        let Some(ack) = ack else { return false };
        let shift = u32::from(s.negotiated.our_wscale.unwrap_or(0));
        let window = (u64::from(s.our_window) << shift) + (1u64 << shift) - 1;
        let len = f.payload as u32 + u32::from(f.fin);
        // Signed distances from the left edge (rcv_nxt), wrap-safe.
        let start = i64::from(seq.wrapping_sub(s.rcv_nxt) as i32);
        let end = i64::from(seq.wrapping_add(len).wrapping_sub(s.rcv_nxt) as i32);
        let in_window = end >= 0 && start <= window as i64;
        let ack_off = i64::from(ack.wrapping_sub(s.snd_una) as i32);
        let ack_ok = ack_off <= i64::from(s.snd_nxt.wrapping_sub(s.snd_una))
            && ack_off >= -i64::from(max_window);
        in_window && ack_ok
    }

    proptest! {
        #[test]
        fn blind_segments_never_touch_a_session(
            peer_isn in any::<u32>(),
            our_isn in any::<u32>(),
            wscale in prop_oneof![Just(None), (0u8..=14).prop_map(Some)],
            window in any::<u16>(),
            sent in 0usize..3000,
            spray in proptest::collection::vec(forged(), 1..80),
        ) {
            let mut h = Harness::new();
            let mut syn = seg().syn().seq(peer_isn).win(65_535);
            let mut synack = seg().from_us().syn().seq(our_isn).ack(peer_isn.wrapping_add(1));
            if let Some(w) = wscale {
                syn = syn.wscale(w);
                synack = synack.wscale(w);
            }
            h.quiet(syn.build());
            h.quiet(synack.build());
            h.feed(seg().seq(peer_isn.wrapping_add(1)).ack(our_isn.wrapping_add(1)).build());
            let (rcv, snd) = (peer_isn.wrapping_add(1), our_isn.wrapping_add(1));
            h.feed(seg().from_us().seq(snd).ack(rcv).win(window).payload(&vec![1; sent]).build());
            // The peer's max window: 65,535 from its SYN, or a restored session's bound.
            let max_window = 65_535u32;
            for f in &spray {
                let Some(before) = h.t.session(&key()).cloned() else { break };
                let seq = resolve(&f.seq, &before);
                let ack = f.ack_flag.then(|| resolve(&f.ack, &before));
                // Window 0: accepted forgeries never raise the peer's max window.
                let mut b = seg().seq(seq).win(0).payload(&vec![9; f.payload]);
                if let Some(a) = ack { b = b.ack(a); }
                if f.rst { b = b.rst(); }
                if f.syn { b = b.syn(); }
                if f.fin { b = b.fin(); }
                let ok = acceptable(&before, seq, ack, f, max_window);
                let packet = b.build();
                let judged = h.t.rejection(&packet);
                let outcome = h.t.on_packet(&packet, NOW).expect("valid");
                prop_assert_eq!(judged.is_none(), ok, "{:?} seq {} ack {:?} on {:?}", f, seq, ack, before);
                if !ok {
                    prop_assert!(outcome.rejected.is_some());
                    prop_assert_eq!(outcome.records, vec![]);
                    prop_assert_eq!(h.t.session(&key()), Some(&before));
                }
            }
        }
    }
}
