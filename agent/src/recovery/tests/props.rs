//! Property tests:
//! 1. random, truncated and bit-flipped bytes never panic the translator or the
//!    SYN-ACK parser; whatever is accepted comes out with a valid TCP checksum and
//!    consistent lengths;
//! 2. for random Δ (ISNs anywhere, often near the wrap) app sequence ranges map 1:1
//!    onto peer space from `snd_nxt`, and the peer's ACKs of them map back exactly,
//!    while ACKs inside the tail clamp to `new_isn + 1`;
//! 3. SACK blocks: dropped exactly when inside the tail, clipped at its end, lengths
//!    kept, the option still well formed;
//! 4. timestamps round-trip for any offsets;
//! 5. window rescaling is the documented rounding, never 0 from nonzero, never above
//!    65535;
//! 6. the retransmitted tail covers `unacked` exactly, contiguously, within the MSS,
//!    with the FIN where it belongs.

use super::*;
use crate::recovery::forge::{parse_synack, SynAck};
use crate::recovery::translate::{retransmit_segments, TranslateError, Translator, Verdict};
use crate::tcp::segment::Segment;
use crate::test_support::segment::{seg, Seg};
use nonstop_shared::session::{seq_le, seq_lt};
use proptest::prelude::*;

/// Sequence numbers anywhere, but often just around the wrap.
fn isn() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), (u32::MAX - 3000)..=u32::MAX, 0u32..3000]
}

/// A state whose tail `[snd_nxt - tail, snd_nxt)` is replicated.
fn state_with(snd_nxt: u32, tail: usize) -> SessionState {
    let mut s = state();
    s.snd_nxt = snd_nxt;
    s.snd_una = snd_nxt.wrapping_sub(tail as u32);
    s.our_isn = s.snd_una.wrapping_sub(1);
    s.unacked = (0..tail as u32)
        .map(|i| stream_byte(s.snd_una.wrapping_add(i)))
        .collect();
    s
}

fn translator_with(snd_nxt: u32, tail: usize, new_isn: u32) -> Translator {
    Translator::new(
        &state_with(snd_nxt, tail),
        &SynAck {
            new_isn,
            ..synack()
        },
    )
}

/// Whether a packet's TCP checksum verifies and its IPv4 total length is its length.
fn tcp_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[ihl..total]);
    total == p.len() && naive_sum(&pseudo) == 0xffff
}

/// A few kinds of valid packets of the session, both directions.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..64),
        0u8..8,
        prop::collection::vec((any::<u32>(), any::<u32>()), 1..4),
    )
        .prop_map(|(outbound, seq, ack, win, payload, shape, mut blocks)| {
            if shape & 5 == 5 {
                blocks.truncate(2); // 12 + 20 + 4 option bytes at most
            }
            let mut s: Seg = seg().seq(seq).ack(ack).win(win).payload(&payload);
            if outbound {
                s = s.from_us();
            }
            if shape & 1 != 0 {
                s = s.ts(seq ^ 0x5555, ack ^ 0xaaaa);
            }
            if shape & 2 != 0 {
                s = s.sack(&blocks);
            }
            if shape & 4 != 0 {
                s = s.raw_options(&[30, 4, 1, 2]);
            }
            s.build()
        })
}

/// Runs a packet through everything; checks what is accepted.
fn feed(t: &mut Translator, p: &[u8]) -> Result<(), TestCaseError> {
    let s = state();
    let _ = parse_synack(p, &s);
    for outbound in [true, false] {
        let mut q = p.to_vec();
        let r = if outbound {
            t.outbound(&mut q)
        } else {
            t.inbound(&mut q)
        };
        match r {
            Ok(Verdict::Accept) => {
                prop_assert!(tcp_ok(&q), "accepted packet with a bad checksum");
                prop_assert!(Segment::parse(&q).is_ok());
                prop_assert!(Segment::parse(&q)
                    .map(|s| s.options().is_ok())
                    .unwrap_or(false));
            }
            Ok(Verdict::Drop) | Err(_) => {}
        }
        if !matches!(r, Ok(Verdict::Accept)) {
            prop_assert_eq!(&q[..], p, "a refused packet must be left alone");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        let mut t = Translator::new(&state(), &synack());
        feed(&mut t, &bytes)?;
    }

    #[test]
    fn random_headers_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..100),
        ihl in 5u8..16,
        doff in 0u8..16,
        total in any::<u16>(),
    ) {
        // A plausible IPv4/TCP start of the session with random lengths.
        let mut p = seg().from_us().seq(NEW_ISN + 1).build();
        p[0] = 0x40 | ihl;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[32] = doff << 4;
        p.extend_from_slice(&tail);
        let mut t = Translator::new(&state(), &synack());
        feed(&mut t, &p)?;
    }

    #[test]
    fn bit_flips_and_truncation_never_panic(
        p in packet(),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut p = p;
        for f in &flips {
            let bit = f.index(p.len() * 8);
            p[bit / 8] ^= 1 << (bit % 8);
        }
        if truncate {
            let n = cut.index(p.len() + 1);
            p.truncate(n);
        }
        let mut t = Translator::new(&state(), &synack());
        feed(&mut t, &p)?;
    }

    #[test]
    fn valid_packets_come_out_valid(p in packet()) {
        // Unflipped packets: translated (or refused as another direction / an ack
        // beyond what was sent), never malformed.
        let mut t = Translator::new(&state(), &synack());
        t.outbound(&mut seg().from_us().seq(NEW_ISN + 1).payload(&[0; 2000]).build())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for outbound in [true, false] {
            let mut q = p.clone();
            let r = if outbound { t.outbound(&mut q) } else { t.inbound(&mut q) };
            match r {
                Ok(Verdict::Accept) => { view(&q); }
                Ok(Verdict::Drop) => prop_assert!(false, "nothing here should be dropped"),
                Err(TranslateError::WrongSession | TranslateError::AckBeyondSent { .. }) => {}
                Err(TranslateError::BadChecksum) => prop_assert!(false, "checksums are valid"),
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
    }

    #[test]
    fn app_ranges_map_one_to_one_and_acks_map_back(
        snd_nxt in isn(),
        new_isn in isn(),
        tail in 0usize..3000,
        chunks in prop::collection::vec(1usize..1500, 1..12),
        back in 1u32..3000,
    ) {
        let mut t = translator_with(snd_nxt, tail, new_isn);
        prop_assert_eq!(t.delta(), snd_nxt.wrapping_sub(new_isn.wrapping_add(1)));
        let mut app_seq = new_isn.wrapping_add(1);
        let mut peer_seq = snd_nxt;
        for n in chunks {
            let payload: Vec<u8> = (0..n).map(|i| stream_byte(app_seq.wrapping_add(i as u32))).collect();
            let mut p = seg().from_us().ack(RCV_NXT).seq(app_seq).payload(&payload).build();
            prop_assert_eq!(t.outbound(&mut p), Ok(Verdict::Accept));
            let v = view(&p);
            // 1:1: same length, same bytes, contiguous in peer space from snd_nxt.
            prop_assert_eq!(v.seq, peer_seq);
            prop_assert_eq!(&v.payload, &payload);
            app_seq = app_seq.wrapping_add(n as u32);
            peer_seq = peer_seq.wrapping_add(n as u32);
            prop_assert_eq!(t.snd_max(), peer_seq);

            // The peer acks the end of it: the app sees exactly its own end.
            let mut a = seg().seq(RCV_NXT).ack(peer_seq).build();
            prop_assert_eq!(t.inbound(&mut a), Ok(Verdict::Accept));
            prop_assert_eq!(view(&a).ack, Some(app_seq));
            prop_assert_eq!(t.app_ack(peer_seq), app_seq);
        }
        // Anything before snd_nxt (inside the tail or older) clamps to new_isn + 1.
        let inside = snd_nxt.wrapping_sub(back);
        prop_assert_eq!(t.app_ack(inside), new_isn.wrapping_add(1));
        let mut a = seg().seq(RCV_NXT).ack(inside).build();
        prop_assert_eq!(t.inbound(&mut a), Ok(Verdict::Accept));
        prop_assert_eq!(view(&a).ack, Some(new_isn.wrapping_add(1)));
        // Beyond everything sent: refused.
        let mut a = seg().seq(RCV_NXT).ack(peer_seq.wrapping_add(back)).build();
        let refused = matches!(t.inbound(&mut a), Err(TranslateError::AckBeyondSent { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn sack_blocks_translate_clip_or_vanish(
        snd_nxt in isn(),
        new_isn in isn(),
        blocks in prop::collection::vec((prop_oneof![-3000i32..3000, -4i32..4], 1u32..2000), 1..=4),
    ) {
        let mut t = translator_with(snd_nxt, 3000, new_isn);
        t.outbound(&mut seg().from_us().seq(new_isn.wrapping_add(1)).payload(&[0; 5000]).build())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let edges: Vec<(u32, u32)> = blocks
            .iter()
            .map(|&(off, len)| {
                let left = snd_nxt.wrapping_add_signed(off);
                (left, left.wrapping_add(len))
            })
            .collect();
        let mut p = seg().seq(RCV_NXT).ack(snd_nxt.wrapping_sub(3000)).sack(&edges).build();
        prop_assert_eq!(t.inbound(&mut p), Ok(Verdict::Accept));
        let v = view(&p);
        let expected: Vec<(u32, u32)> = edges
            .iter()
            .filter(|&&(_, r)| !seq_le(r, snd_nxt))
            .map(|&(l, r)| {
                let l = if seq_lt(l, snd_nxt) { snd_nxt } else { l };
                (l.wrapping_sub(t.delta()), r.wrapping_sub(t.delta()))
            })
            .collect();
        let o = options_of(&v);
        prop_assert_eq!(usize::from(o.sack_blocks), expected.len());
        prop_assert_eq!(v.options.len(), 4 + 8 * edges.len());
        let mut got = Vec::new();
        if !expected.is_empty() {
            prop_assert_eq!(&v.options[..4], &[1, 1, 5, 2 + 8 * expected.len() as u8]);
            for i in 0..expected.len() {
                let at = 4 + 8 * i;
                let word = |k: usize| u32::from_be_bytes([v.options[k], v.options[k + 1], v.options[k + 2], v.options[k + 3]]);
                got.push((word(at), word(at + 4)));
            }
        }
        prop_assert_eq!(&got, &expected);
        for &(l, r) in &got {
            // Never below the app's first byte, never reversed.
            prop_assert!(seq_le(new_isn.wrapping_add(1), l));
            prop_assert!(seq_lt(l, r));
        }
    }

    #[test]
    fn timestamps_round_trip(
        our_tsval in any::<u32>(),
        app_start in any::<u32>(),
        ahead in 0u32..(1 << 30),
    ) {
        let mut s = state();
        s.our_tsval = our_tsval;
        let mut t = Translator::new(&s, &SynAck { tsval: Some(app_start), ..synack() });
        let app_ts = app_start.wrapping_add(ahead);
        let mut p = seg().from_us().ack(RCV_NXT).seq(NEW_ISN + 1).ts(app_ts, 5).payload(b"x").build();
        prop_assert_eq!(t.outbound(&mut p), Ok(Verdict::Accept));
        let tsval = options_of(&view(&p)).timestamps.map(|t| t.tsval).unwrap_or_default();
        // Strictly after everything the peer saw from us: PAWS passes.
        prop_assert_eq!(tsval, our_tsval.wrapping_add(1).wrapping_add(ahead));
        prop_assert!(seq_lt(our_tsval, tsval));
        if tsval != 0 {
            let mut a = seg().seq(RCV_NXT).ack(SND_NXT + 1).ts(9, tsval).build();
            prop_assert_eq!(t.inbound(&mut a), Ok(Verdict::Accept));
            prop_assert_eq!(options_of(&view(&a)).timestamps.map(|t| t.tsecr), Some(app_ts));
        }
    }

    #[test]
    fn window_rescaling_rounds_as_documented(
        raw in any::<u16>(),
        app_ws in 0u8..=14,
        old_ws in 0u8..=14,
    ) {
        let mut s = state();
        s.negotiated.our_wscale = Some(old_ws);
        let t = Translator::new(&s, &SynAck { wscale: Some(app_ws), ..synack() });
        let got = t.peer_window(raw);
        let bytes = u64::from(raw) << app_ws;
        let floor = bytes >> old_ws;
        if raw == 0 {
            prop_assert_eq!(got, 0);
        } else if floor >= 65_535 {
            prop_assert_eq!(got, u16::MAX);
        } else if floor == 0 {
            prop_assert_eq!(got, 1);
        } else {
            prop_assert_eq!(u64::from(got), floor);
            // Offers at most what the app did, and less than one unit below it.
            prop_assert!(u64::from(got) << old_ws <= bytes);
            prop_assert!((u64::from(got) + 1) << old_ws > bytes);
        }
    }

    #[test]
    fn retransmission_covers_the_tail_exactly(
        snd_una in isn(),
        n in 0usize..6000,
        mss in 1usize..3000,
        peer_mss in prop_oneof![Just(0u16), 100u16..9000],
        timestamps in any::<bool>(),
        fin in any::<bool>(),
    ) {
        let mut s = state_with(snd_una.wrapping_add(n as u32), n);
        s.negotiated.peer_mss = peer_mss;
        s.negotiated.timestamps = timestamps;
        if fin {
            s.our_fin = Some(s.snd_nxt);
            s.snd_nxt = s.snd_nxt.wrapping_add(1);
        }
        let limit = mss
            .min(usize::from(if peer_mss == 0 { 536 } else { peer_mss }))
            .saturating_sub(if timestamps { 12 } else { 0 })
            .max(1);
        let segments = retransmit_segments(&s, mss, None);
        let mut seq = snd_una;
        let mut bytes = Vec::new();
        let mut fins = 0;
        for (i, p) in segments.iter().enumerate() {
            let v = view(p);
            prop_assert_eq!(v.seq, seq);
            prop_assert!(v.payload.len() <= limit);
            prop_assert_eq!(v.ack, Some(RCV_NXT));
            prop_assert_eq!(options_of(&v).timestamps.is_some(), timestamps);
            if v.fin {
                fins += 1;
                prop_assert_eq!(i, segments.len() - 1, "FIN last");
                prop_assert_eq!(s.our_fin, Some(seq.wrapping_add(v.payload.len() as u32)));
            }
            seq = seq.wrapping_add(v.payload.len() as u32);
            bytes.extend_from_slice(&v.payload);
        }
        prop_assert_eq!(bytes, s.unacked.iter().copied().collect::<Vec<u8>>());
        prop_assert_eq!(fins, usize::from(fin));
        let expected_count = n.div_ceil(limit) + usize::from(fin && n == 0);
        prop_assert_eq!(segments.len(), expected_count);
    }
}
