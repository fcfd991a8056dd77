//! The translator, field by field: outbound seq/window/TSval, inbound ack/SACK/TSecr,
//! checksums and lengths after every rewrite, errors that leave the packet alone.

use super::*;
use crate::recovery::translate::{TranslateError, Translator, Verdict};
use crate::session::tracker::PacketError;
use crate::test_support::segment::{seg, Seg, PEER, PEER_PORT, PORT, VIP};

fn translator() -> Translator {
    Translator::new(&state(), &synack())
}

/// A state whose tail is `[snd_una, snd_nxt)`, bytes included.
fn state_at(snd_una: u32, snd_nxt: u32) -> SessionState {
    let mut s = state();
    s.snd_una = snd_una;
    s.snd_nxt = snd_nxt;
    s.our_isn = snd_una.wrapping_sub(1_000);
    let mut seq = snd_una;
    s.unacked.clear();
    while seq != snd_nxt {
        s.unacked.push_back(stream_byte(seq));
        seq = seq.wrapping_add(1);
    }
    s
}

/// A segment from the app (VIP → peer).
fn app() -> Seg {
    seg().from_us().ack(RCV_NXT)
}

/// A segment from the peer (peer → VIP).
fn peer() -> Seg {
    seg().from_peer().seq(RCV_NXT)
}

#[track_caller]
fn out(t: &mut Translator, s: Seg) -> View {
    let mut p = s.build();
    assert_eq!(t.outbound(&mut p), Ok(Verdict::Accept));
    view(&p)
}

#[track_caller]
fn inb(t: &mut Translator, s: Seg) -> View {
    let mut p = s.build();
    assert_eq!(t.inbound(&mut p), Ok(Verdict::Accept));
    view(&p)
}

/// The timestamps of a viewed packet.
#[track_caller]
fn ts_of(v: &View) -> (u32, u32) {
    let ts = options_of(v).timestamps.expect("timestamps");
    (ts.tsval, ts.tsecr)
}

#[test]
fn delta_and_offsets() {
    let t = translator();
    assert_eq!(t.delta(), SND_NXT.wrapping_sub(NEW_ISN + 1));
    assert_eq!(t.peer_seq(NEW_ISN + 1), SND_NXT);
    assert_eq!(t.ts_offset(), Some(OUR_TSVAL.wrapping_sub(APP_TSVAL) + 1));
    assert_eq!(t.peer_tsval(APP_TSVAL), OUR_TSVAL + 1);
    assert_eq!(t.peer_acked(), SND_UNA);
    assert_eq!(t.snd_max(), SND_NXT);
    assert_eq!(t.last_tsval(), Some(OUR_TSVAL));
    assert_eq!(t.key(), key());
    assert!(!t.tail_acked());
}

#[test]
fn outbound_first_app_byte_lands_on_snd_nxt() {
    let mut t = translator();
    let v = out(
        &mut t,
        app()
            .seq(NEW_ISN + 1)
            .ack(RCV_NXT + 3)
            .win(800)
            .ts(APP_TSVAL + 5, PEER_TSVAL + 2)
            .payload(b"hello"),
    );
    assert_eq!(v.src, (Ipv4Addr::from(VIP), PORT));
    assert_eq!(v.dst, (Ipv4Addr::from(PEER), PEER_PORT));
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(v.ack, Some(RCV_NXT + 3), "ACK is peer space on both sides");
    assert_eq!(v.window, 800, "same window scale: unchanged");
    assert_eq!(ts_of(&v), (OUR_TSVAL + 6, PEER_TSVAL + 2));
    assert_eq!(v.payload, b"hello");
    assert_eq!(t.snd_max(), SND_NXT + 5);
    assert_eq!(t.last_tsval(), Some(OUR_TSVAL + 6));

    // The next segment follows on; a retransmission maps to the same place.
    let v = out(&mut t, app().seq(NEW_ISN + 6).payload(b"world"));
    assert_eq!(v.seq, SND_NXT + 5);
    let v = out(&mut t, app().seq(NEW_ISN + 1).payload(b"hello"));
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(t.snd_max(), SND_NXT + 10);
}

#[test]
fn outbound_seq_wraps_with_isns_near_the_top() {
    // The app's ISN just below 2^32, the peer-space tail end just above 0.
    let s = state_at(u32::MAX - 50, 5);
    let sa = SynAck {
        new_isn: u32::MAX - 2,
        ..synack()
    };
    let mut t = Translator::new(&s, &sa);
    assert_eq!(t.delta(), 7);
    for (app_seq, peer_seq) in [(u32::MAX - 1, 5), (u32::MAX, 6), (0, 7), (1000, 1007)] {
        let v = out(&mut t, app().seq(app_seq).payload(b"x"));
        assert_eq!(v.seq, peer_seq, "app seq {app_seq}");
    }

    // The other way round: peer space crosses 0 inside one segment, Δ crosses 0.
    let s = state_at(u32::MAX - 100, u32::MAX - 1);
    let sa = SynAck {
        new_isn: 10,
        ..synack()
    };
    let mut t = Translator::new(&s, &sa);
    assert_eq!(t.delta(), u32::MAX - 12);
    let v = out(&mut t, app().seq(11).payload(b"abcde"));
    assert_eq!(v.seq, u32::MAX - 1);
    assert_eq!(t.snd_max(), 3);
    // Acks across the wrap come back exactly.
    for (peer_ack, app_ack) in [(u32::MAX - 1, 11), (u32::MAX, 12), (0, 13), (3, 16)] {
        let v = inb(&mut t, peer().ack(peer_ack));
        assert_eq!(v.ack, Some(app_ack), "peer ack {peer_ack}");
    }
    // An ack inside the tail, below the wrap.
    let v = inb(&mut t, peer().ack(u32::MAX - 50));
    assert_eq!(v.ack, Some(11));
    assert_eq!(t.peer_acked(), 3);
}

#[test]
fn outbound_tsval_offset_wraps() {
    let mut s = state();
    s.our_tsval = u32::MAX - 1;
    let sa = SynAck {
        tsval: Some(10),
        ..synack()
    };
    let mut t = Translator::new(&s, &sa);
    assert_eq!(t.peer_tsval(10), u32::MAX);
    let v = out(&mut t, app().seq(NEW_ISN + 1).ts(12, 77).payload(b"a"));
    assert_eq!(ts_of(&v), (1, 77));
    assert_eq!(t.last_tsval(), Some(1));
    // The peer echoes it; the app sees its own TSval again.
    let v = inb(&mut t, peer().ack(SND_NXT + 1).ts(PEER_TSVAL, 1));
    assert_eq!(ts_of(&v), (PEER_TSVAL, 12));
}

#[test]
fn outbound_without_timestamps_on_the_segment_is_fine() {
    let mut t = translator();
    let v = out(&mut t, app().seq(NEW_ISN + 1).payload(b"a"));
    assert!(v.options.is_empty());
    assert_eq!(v.seq, SND_NXT);
}

#[test]
fn outbound_syn_is_dropped_untouched() {
    let mut t = translator();
    let mut p = seg()
        .from_us()
        .syn()
        .seq(NEW_ISN)
        .ack(RCV_NXT)
        .ts(APP_TSVAL, PEER_TSVAL)
        .build();
    let before = p.clone();
    assert_eq!(t.outbound(&mut p), Ok(Verdict::Drop));
    assert_eq!(p, before);
    assert_eq!(t.snd_max(), SND_NXT);
}

#[test]
fn outbound_rst_is_translated_and_does_not_move_snd_max() {
    let mut t = translator();
    let v = out(&mut t, app().rst().seq(NEW_ISN + 1));
    assert!(v.rst);
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(t.snd_max(), SND_NXT);
}

#[test]
fn outbound_fin_counts_in_snd_max() {
    let mut t = translator();
    let v = out(&mut t, app().fin().seq(NEW_ISN + 1).payload(b"bye"));
    assert!(v.fin);
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(t.snd_max(), SND_NXT + 4);
    let v = inb(&mut t, peer().ack(SND_NXT + 4));
    assert_eq!(v.ack, Some(NEW_ISN + 5));
}

#[test]
fn packets_of_other_sessions_or_directions_are_refused_untouched() {
    let mut t = translator();
    for (outbound, s) in [
        (true, peer().ack(SND_NXT)),
        (true, app().peer(PEER, PEER_PORT + 1)),
        (true, app().local(VIP, PORT + 1)),
        (true, app().peer([192, 0, 2, 8], PEER_PORT)),
        (false, app().seq(NEW_ISN + 1)),
        (false, peer().peer(PEER, PEER_PORT + 1).ack(SND_NXT)),
        (false, peer().local([10, 0, 0, 1], PORT).ack(SND_NXT)),
    ] {
        let mut p = s.build();
        let before = p.clone();
        let r = if outbound {
            t.outbound(&mut p)
        } else {
            t.inbound(&mut p)
        };
        assert_eq!(r, Err(TranslateError::WrongSession));
        assert_eq!(p, before);
    }
}

#[test]
fn malformed_packets_are_errors_untouched() {
    let mut t = translator();
    let good = app().seq(NEW_ISN + 1).ts(1, 2).payload(b"abc").build();
    for n in 0..good.len() {
        let mut p = good[..n].to_vec();
        assert!(
            matches!(t.outbound(&mut p), Err(TranslateError::Malformed(_))),
            "outbound truncated to {n}"
        );
        assert!(
            matches!(t.inbound(&mut p), Err(TranslateError::Malformed(_))),
            "inbound truncated to {n}"
        );
        assert_eq!(p, good[..n]);
    }
    for options in [&[8u8, 9, 0, 0][..], &[5, 6, 0, 0, 0, 0, 0, 0], &[2]] {
        let mut p = app().seq(NEW_ISN + 1).raw_options(options).build();
        let before = p.clone();
        assert!(matches!(
            t.outbound(&mut p),
            Err(TranslateError::Malformed(PacketError::BadOption(_)))
        ));
        let mut q = peer().ack(SND_NXT).raw_options(options).build();
        assert!(matches!(
            t.inbound(&mut q),
            Err(TranslateError::Malformed(PacketError::BadOption(_)))
        ));
        assert_eq!(p, before);
    }
    // Not TCP: an UDP packet between the same addresses.
    let mut udp = Vec::new();
    etherparse::PacketBuilder::ipv4(VIP, PEER, 64)
        .udp(PORT, PEER_PORT)
        .write(&mut udp, b"x")
        .expect("write");
    assert_eq!(
        t.outbound(&mut udp),
        Err(TranslateError::Malformed(PacketError::NotTcp))
    );
}

#[test]
fn window_is_rescaled_to_the_scale_the_peer_knows() {
    let s = state(); // our_wscale 7
                     // The app scales by 9: its raw values are worth 4x more to a peer reading << 7.
    let mut t = Translator::new(
        &s,
        &SynAck {
            wscale: Some(9),
            ..synack()
        },
    );
    assert_eq!(t.peer_window(100), 400);
    assert_eq!(t.peer_window(0), 0);
    assert_eq!(t.peer_window(20_000), u16::MAX, "clamped");
    assert_eq!(out(&mut t, app().seq(NEW_ISN + 1).win(100)).window, 400);

    // The app scales by 4: 8x less, rounded down, never to 0 from nonzero.
    let mut t = Translator::new(
        &s,
        &SynAck {
            wscale: Some(4),
            ..synack()
        },
    );
    assert_eq!(t.peer_window(800), 100);
    assert_eq!(t.peer_window(17), 2); // 272 bytes -> 2 * 128
    assert_eq!(t.peer_window(15), 1); // 240 bytes -> 1 * 128
    assert_eq!(t.peer_window(7), 1); // 112 bytes -> would be 0
    assert_eq!(t.peer_window(0), 0);
    assert_eq!(t.peer_window(u16::MAX), 8_191);
    assert_eq!(out(&mut t, app().seq(NEW_ISN + 1).win(800)).window, 100);

    // Same scale, and no scaling at all: untouched.
    let t = translator();
    assert_eq!(t.peer_window(12_345), 12_345);
    let t = Translator::new(
        &bare_state(),
        &SynAck {
            wscale: None,
            ..synack()
        },
    );
    assert_eq!(t.peer_window(12_345), 12_345);
    assert_eq!(t.app_window(12_345), 12_345);
    // The old session had no scaling, so the forged SYN offered none: a shift in the
    // SYN-ACK does not turn scaling on.
    let t = Translator::new(
        &bare_state(),
        &SynAck {
            wscale: Some(9),
            ..synack()
        },
    );
    assert_eq!(t.peer_window(12_345), 12_345);

    // Extreme shifts do not overflow.
    let mut s14 = state();
    s14.negotiated.our_wscale = Some(0);
    let t = Translator::new(
        &s14,
        &SynAck {
            wscale: Some(14),
            ..synack()
        },
    );
    assert_eq!(t.peer_window(u16::MAX), u16::MAX);
    assert_eq!(t.peer_window(1), 1 << 14);
    s14.negotiated.our_wscale = Some(14);
    let t = Translator::new(
        &s14,
        &SynAck {
            wscale: Some(0),
            ..synack()
        },
    );
    assert_eq!(t.peer_window(u16::MAX), 3);
}

#[test]
fn app_that_declined_scaling_reads_the_peer_window_in_bytes() {
    // Scaling was on (peer 7, ours 7) but the app kernel's SYN-ACK had no shift: the
    // app reads raw windows unscaled and writes them unscaled.
    let mut t = Translator::new(
        &state(),
        &SynAck {
            wscale: None,
            ..synack()
        },
    );
    assert_eq!(t.peer_window(1_000), 7); // 1000 bytes / 128, rounded down
    assert_eq!(t.app_window(100), 12_800);
    assert_eq!(t.app_window(1_000), u16::MAX);
    let v = inb(&mut t, peer().ack(SND_NXT).win(100));
    assert_eq!(v.window, 12_800);
}

#[test]
fn inbound_ack_inside_the_tail_is_clamped() {
    let mut t = translator();
    for ack in [
        SND_UNA - 10,
        SND_UNA,
        SND_UNA + 1,
        SND_UNA + 50,
        SND_NXT - 1,
        SND_NXT,
    ] {
        let v = inb(&mut t, peer().ack(ack));
        assert_eq!(v.ack, Some(NEW_ISN + 1), "peer ack {ack}");
    }
    assert_eq!(t.peer_acked(), SND_NXT);
    assert!(t.tail_acked());
    // An older ack does not lower it.
    inb(&mut t, peer().ack(SND_UNA + 5));
    assert_eq!(t.peer_acked(), SND_NXT);
}

#[test]
fn inbound_ack_beyond_the_tail_is_exact() {
    let mut t = translator();
    out(&mut t, app().seq(NEW_ISN + 1).payload(&[7; 10]));
    for (ack, app_ack) in [(SND_NXT + 1, NEW_ISN + 2), (SND_NXT + 10, NEW_ISN + 11)] {
        let v = inb(&mut t, peer().ack(ack));
        assert_eq!(v.ack, Some(app_ack));
        assert_eq!(t.peer_acked(), ack);
    }
}

#[test]
fn inbound_ack_beyond_everything_sent_is_an_error() {
    let mut t = translator();
    let mut p = peer().ack(SND_NXT + 1).build();
    let before = p.clone();
    assert_eq!(
        t.inbound(&mut p),
        Err(TranslateError::AckBeyondSent {
            ack: SND_NXT + 1,
            snd_max: SND_NXT
        })
    );
    assert_eq!(p, before);
    assert_eq!(t.peer_acked(), SND_UNA);
    // Once the app has sent that far, it is fine.
    out(&mut t, app().seq(NEW_ISN + 1).payload(b"z"));
    assert_eq!(inb(&mut t, peer().ack(SND_NXT + 1)).ack, Some(NEW_ISN + 2));
    // A RST is not judged by its ack.
    let v = inb(&mut t, peer().rst().ack(SND_NXT + 1_000));
    assert!(v.rst);
}

#[test]
fn inbound_without_ack_keeps_the_ack_field() {
    let mut t = translator();
    // No ACK flag, but a stale value in the field: left alone.
    let mut p = peer().build();
    p[28..32].copy_from_slice(&SND_UNA.to_be_bytes());
    refresh_checksum(&mut p);
    assert_eq!(t.inbound(&mut p), Ok(Verdict::Accept));
    assert_eq!(view(&p).ack, None);
    assert_eq!(&p[28..32], &SND_UNA.to_be_bytes());
}

#[test]
fn inbound_seq_payload_window_and_tsval_are_untouched() {
    let mut t = translator();
    let v = inb(
        &mut t,
        peer()
            .seq(RCV_NXT + 3)
            .ack(SND_NXT)
            .win(321)
            .ts(PEER_TSVAL + 9, OUR_TSVAL)
            .payload(b"request"),
    );
    assert_eq!(v.src, (Ipv4Addr::from(PEER), PEER_PORT));
    assert_eq!(v.dst, (Ipv4Addr::from(VIP), PORT));
    assert_eq!(v.seq, RCV_NXT + 3);
    assert_eq!(v.window, 321);
    assert_eq!(v.payload, b"request");
    assert_eq!(ts_of(&v).0, PEER_TSVAL + 9);
}

#[test]
fn inbound_tsecr_is_translated() {
    let mut t = translator();
    // Echo of an app TSval sent through the translator.
    let v = out(
        &mut t,
        app()
            .seq(NEW_ISN + 1)
            .ts(APP_TSVAL + 40, PEER_TSVAL)
            .payload(b"a"),
    );
    let (peer_space, _) = ts_of(&v);
    let v = inb(&mut t, peer().ack(SND_NXT + 1).ts(PEER_TSVAL, peer_space));
    assert_eq!(ts_of(&v), (PEER_TSVAL, APP_TSVAL + 40));
    // Echoes from before the restore become the app's first TSval.
    for old in [OUR_TSVAL, OUR_TSVAL - 1, OUR_TSVAL.wrapping_sub(100_000)] {
        let v = inb(&mut t, peer().ack(SND_NXT).ts(PEER_TSVAL, old));
        assert_eq!(ts_of(&v).1, APP_TSVAL, "echo of {old}");
    }
    // The first app TSval maps to our_tsval + 1 and back.
    assert_eq!(t.app_tsecr(OUR_TSVAL + 1), APP_TSVAL);
    // No echo stays no echo.
    let v = inb(&mut t, peer().ack(SND_NXT).ts(PEER_TSVAL, 0));
    assert_eq!(ts_of(&v).1, 0);
}

#[test]
fn without_timestamp_translation_options_pass_through() {
    // The app kernel declined timestamps: nothing to translate either way.
    let mut t = Translator::new(
        &state(),
        &SynAck {
            tsval: None,
            ..synack()
        },
    );
    assert_eq!(t.ts_offset(), None);
    assert_eq!(t.last_tsval(), None);
    let v = out(&mut t, app().seq(NEW_ISN + 1).ts(5, 6).payload(b"a"));
    assert_eq!(ts_of(&v), (5, 6));
    let v = inb(&mut t, peer().ack(SND_NXT).ts(7, 8));
    assert_eq!(ts_of(&v), (7, 8));
}

#[test]
fn sack_blocks_above_the_tail_are_translated() {
    let mut t = translator();
    out(&mut t, app().seq(NEW_ISN + 1).payload(&[1; 100]));
    let v = inb(
        &mut t,
        peer()
            .ack(SND_NXT)
            .ts(PEER_TSVAL, OUR_TSVAL + 2)
            .sack(&[(SND_NXT + 20, SND_NXT + 30), (SND_NXT + 2, SND_NXT + 6)]),
    );
    let o = options_of(&v);
    assert_eq!(o.sack_blocks, 2);
    #[rustfmt::skip]
    let expected_sack = [
        1, 1, 5, 18,
        0, 1, 0x11, 0x85, 0, 1, 0x11, 0x8f, // [70021, 70031)
        0, 1, 0x11, 0x73, 0, 1, 0x11, 0x77, // [70003, 70007)
    ];
    assert_eq!(&v.options[12..], &expected_sack);
    assert_eq!(ts_of(&v).1, APP_TSVAL + 1);
}

#[test]
fn sack_blocks_inside_the_tail_are_removed_and_straddling_ones_clipped() {
    let mut t = translator();
    out(&mut t, app().seq(NEW_ISN + 1).payload(&[1; 100]));
    let blocks = [
        (SND_UNA + 10, SND_UNA + 20), // inside the tail: removed
        (SND_UNA + 90, SND_NXT + 5),  // straddles the tail end: clipped
        (SND_NXT + 40, SND_NXT + 50), // above: translated
    ];
    let v = inb(&mut t, peer().ack(SND_UNA).sack(&blocks));
    assert_eq!(v.ack, Some(NEW_ISN + 1));
    #[rustfmt::skip]
    let expected = [
        1, 1, 5, 18,
        0, 1, 0x11, 0x71, 0, 1, 0x11, 0x76, // [70001, 70006)
        0, 1, 0x11, 0x99, 0, 1, 0x11, 0xa3, // [70041, 70051)
        1, 1, 1, 1, 1, 1, 1, 1,             // the removed block's room
    ];
    assert_eq!(v.options, expected);
    assert_eq!(options_of(&v).sack_blocks, 2);
    assert_eq!(t.app_sack_block(SND_UNA, SND_NXT), None);
    assert_eq!(
        t.app_sack_block(SND_NXT, SND_NXT + 1),
        Some((NEW_ISN + 1, NEW_ISN + 2))
    );
}

#[test]
fn sack_edges_at_the_tail_end() {
    let t = translator();
    assert_eq!(t.app_sack_block(SND_NXT - 5, SND_NXT), None);
    assert_eq!(t.app_sack_block(SND_NXT - 1, SND_NXT), None);
    assert_eq!(
        t.app_sack_block(SND_NXT - 1, SND_NXT + 3),
        Some((NEW_ISN + 1, NEW_ISN + 4))
    );
    assert_eq!(
        t.app_sack_block(SND_NXT, SND_NXT + 3),
        Some((NEW_ISN + 1, NEW_ISN + 4))
    );
    assert_eq!(
        t.app_sack_block(SND_NXT + 1, SND_NXT + 3),
        Some((NEW_ISN + 2, NEW_ISN + 4))
    );
    // A block far below (older than the tail, e.g. a D-SACK) vanishes too.
    assert_eq!(t.app_sack_block(SND_UNA - 500, SND_UNA - 400), None);
}

#[test]
fn a_sack_option_with_every_block_in_the_tail_becomes_nops() {
    let mut t = translator();
    let v = inb(
        &mut t,
        peer()
            .ack(SND_UNA)
            .ts(PEER_TSVAL, OUR_TSVAL)
            .sack(&[(SND_UNA + 10, SND_UNA + 20), (SND_UNA + 30, SND_NXT)]),
    );
    assert_eq!(&v.options[12..], &[1; 20]);
    let o = options_of(&v);
    assert_eq!(o.sack_blocks, 0);
    assert_eq!(o.timestamps.map(|t| t.tsecr), Some(APP_TSVAL));
}

#[test]
fn four_sack_blocks_without_timestamps() {
    let mut t = translator();
    out(&mut t, app().seq(NEW_ISN + 1).payload(&[1; 200]));
    let v = inb(
        &mut t,
        peer().ack(SND_UNA).sack(&[
            (SND_NXT + 100, SND_NXT + 110),
            (SND_UNA + 1, SND_UNA + 2),
            (SND_NXT + 50, SND_NXT + 60),
            (SND_UNA + 5, SND_UNA + 6),
        ]),
    );
    assert_eq!(v.options.len(), 36);
    assert_eq!(&v.options[..4], &[1, 1, 5, 18]);
    assert_eq!(&v.options[20..], &[1; 16]);
    assert_eq!(options_of(&v).sack_blocks, 2);
}

#[test]
fn corrupt_inbound_is_refused_partial_checksums_are_completed() {
    let mut t = translator();
    let mut p = peer().ack(SND_NXT).payload(b"data").build();
    let last = p.len() - 1;
    p[last] ^= 0x40;
    let before = p.clone();
    assert_eq!(t.inbound(&mut p), Err(TranslateError::BadChecksum));
    assert_eq!(p, before);

    let mut p = peer().ack(SND_NXT).payload(b"data").build();
    make_partial(&mut p);
    assert!(!checksums_verify(&p));
    assert_eq!(t.inbound(&mut p), Ok(Verdict::Accept));
    assert_eq!(view(&p).ack, Some(NEW_ISN + 1));

    let mut p = app().seq(NEW_ISN + 1).payload(b"data").build();
    make_partial(&mut p);
    assert_eq!(t.outbound(&mut p), Ok(Verdict::Accept));
    assert_eq!(view(&p).seq, SND_NXT);
}

#[test]
fn link_padding_is_cut_so_lengths_match() {
    let mut t = translator();
    let mut p = app().seq(NEW_ISN + 1).payload(b"ab").build();
    let len = p.len();
    p.extend_from_slice(&[0; 6]);
    assert_eq!(t.outbound(&mut p), Ok(Verdict::Accept));
    assert_eq!(p.len(), len);
    assert_eq!(view(&p).payload, b"ab");

    let mut p = peer().ack(SND_NXT).build();
    let len = p.len();
    p.extend_from_slice(&[0xee; 6]);
    assert_eq!(t.inbound(&mut p), Ok(Verdict::Accept));
    assert_eq!(p.len(), len);
    view(&p);
}

/// Inserts 4 bytes of IPv4 options (NOP, NOP, NOP, END) after the fixed header.
fn with_ip_options(mut p: Vec<u8>) -> Vec<u8> {
    p.splice(20..20, [1, 1, 1, 0]);
    p[0] = 0x46;
    let total = u16::from_be_bytes([p[2], p[3]]) + 4;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = !naive_sum(&p[..24]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    assert!(checksums_verify(&p));
    p
}

#[test]
fn ipv4_options_are_kept_and_skipped() {
    let mut t = translator();
    let mut p = with_ip_options(
        app()
            .seq(NEW_ISN + 1)
            .ts(APP_TSVAL, PEER_TSVAL)
            .payload(b"opt")
            .build(),
    );
    assert_eq!(t.outbound(&mut p), Ok(Verdict::Accept));
    assert_eq!(&p[20..24], &[1, 1, 1, 0]);
    let v = view(&p);
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(ts_of(&v).0, OUR_TSVAL + 1);

    let mut p = with_ip_options(peer().ack(SND_NXT + 3).ts(1, OUR_TSVAL + 1).build());
    assert_eq!(t.inbound(&mut p), Ok(Verdict::Accept));
    let v = view(&p);
    assert_eq!(v.ack, Some(NEW_ISN + 4));
    assert_eq!(ts_of(&v).1, APP_TSVAL);
}

#[test]
fn unknown_options_are_preserved() {
    let mut t = translator();
    // MPTCP-like (kind 30, len 4) before the timestamps.
    let v = out(
        &mut t,
        app()
            .seq(NEW_ISN + 1)
            .raw_options(&[30, 4, 0xab, 0xcd])
            .ts(APP_TSVAL + 1, 5)
            .payload(b"m"),
    );
    assert_eq!(&v.options[..4], &[30, 4, 0xab, 0xcd]);
    assert_eq!(ts_of(&v), (OUR_TSVAL + 2, 5));
    let v = inb(
        &mut t,
        peer()
            .ack(SND_NXT + 1)
            .raw_options(&[34, 6, 1, 2, 3, 4])
            .ts(9, OUR_TSVAL + 2),
    );
    assert_eq!(&v.options[..6], &[34, 6, 1, 2, 3, 4]);
    assert_eq!(ts_of(&v), (9, APP_TSVAL + 1));
}

/// A whole restore, smoltcp style: the handshake, the tail, then both directions.
#[test]
fn trace_restore_then_talk() {
    use crate::recovery::forge::{forged_ack, forged_syn, parse_synack};
    use crate::recovery::translate::retransmit_segments;
    let s = state();

    // 1. Forged SYN in; the app kernel answers; forged ACK in.
    let syn = view(&forged_syn(&s));
    assert_eq!(syn.seq, RCV_NXT - 1);
    let sa_pkt = seg()
        .from_us()
        .syn()
        .seq(NEW_ISN)
        .ack(RCV_NXT)
        .mss(1_400)
        .sack_perm()
        .ts(APP_TSVAL, PEER_TSVAL)
        .wscale(7)
        .build();
    let sa = parse_synack(&sa_pkt, &s).expect("SYN-ACK");
    let ack = view(&forged_ack(&s, &sa));
    assert_eq!((ack.seq, ack.ack), (RCV_NXT, Some(NEW_ISN + 1)));
    let mut t = Translator::new(&s, &sa);

    // 2. The tail goes out from the replicated bytes.
    let tail = retransmit_segments(&s, 1_460, t.last_tsval());
    assert_eq!(tail.len(), 1);
    let v = view(&tail[0]);
    assert_eq!((v.seq, v.payload.len()), (SND_UNA, TAIL));

    // 3. The peer acks half the tail, with new data: the app sees its ISN acked only.
    let v = inb(
        &mut t,
        peer()
            .seq(RCV_NXT)
            .ack(SND_UNA + 50)
            .ts(PEER_TSVAL + 1, OUR_TSVAL)
            .payload(b"GET /"),
    );
    assert_eq!((v.seq, v.ack), (RCV_NXT, Some(NEW_ISN + 1)));
    assert_eq!(ts_of(&v), (PEER_TSVAL + 1, APP_TSVAL));

    // 4. The app answers (acking the peer's data) after the tail.
    let v = out(
        &mut t,
        app()
            .seq(NEW_ISN + 1)
            .ack(RCV_NXT + 5)
            .ts(APP_TSVAL + 3, PEER_TSVAL + 1)
            .payload(b"200 OK"),
    );
    assert_eq!((v.seq, v.ack), (SND_NXT, Some(RCV_NXT + 5)));
    assert_eq!(ts_of(&v), (OUR_TSVAL + 4, PEER_TSVAL + 1));

    // 5. The peer acks everything: the app sees exactly its bytes acked.
    let v = inb(
        &mut t,
        peer()
            .seq(RCV_NXT + 5)
            .ack(SND_NXT + 6)
            .ts(PEER_TSVAL + 2, OUR_TSVAL + 4),
    );
    assert_eq!(v.ack, Some(NEW_ISN + 7));
    assert_eq!(ts_of(&v), (PEER_TSVAL + 2, APP_TSVAL + 3));
    assert!(t.tail_acked());
    assert_eq!(t.peer_acked(), SND_NXT + 6);

    // 6. The app closes; its FIN is acked through the translation.
    let v = out(&mut t, app().fin().seq(NEW_ISN + 7).ack(RCV_NXT + 5));
    assert_eq!(v.seq, SND_NXT + 6);
    let v = inb(&mut t, peer().fin().seq(RCV_NXT + 5).ack(SND_NXT + 7));
    assert_eq!(v.ack, Some(NEW_ISN + 8));
}
