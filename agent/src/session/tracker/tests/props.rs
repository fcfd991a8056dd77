//! Property tests:
//! 1. `unacked` vs. a model of the outbound stream (random ISN near the wrap, chunks,
//!    retransmissions, reordered and duplicated ACKs, keepalives, a byte limit);
//! 2. the records alone rebuild the tracker's state (the backup's view), for random
//!    valid segments of a session;
//! 3. random, truncated and bit-flipped bytes never panic `on_packet`.

use super::*;
use crate::session::tracker::unacked;
use crate::test_support::segment::{seg, Seg};
use nonstop_shared::session::seq_le;
use proptest::prelude::*;

/// Byte `i` of the outbound stream (not periodic at 256, unlike `bytes_at`).
fn stream_byte(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn stream(from: usize, to: usize) -> Vec<u8> {
    (from..to).map(stream_byte).collect()
}

/// ISNs anywhere, but often just below the wrap.
fn isn() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), (u32::MAX - 3000)..=u32::MAX, 0u32..3000]
}

#[derive(Debug, Clone)]
enum Op {
    /// Our next chunk of the stream.
    Send(usize),
    /// A retransmission of a range already sent (start and length picked from these).
    Resend(u32, u16),
    /// The peer's cumulative ACK at a point already sent (any order), with a window.
    Ack(u32, u16),
    /// Our keepalive (seq snd_una - 1, one garbage byte).
    Keepalive,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..600).prop_map(Op::Send),
        2 => (any::<u32>(), any::<u16>()).prop_map(|(a, b)| Op::Resend(a, b)),
        3 => (any::<u32>(), prop_oneof![Just(1024u16), any::<u16>()]).prop_map(|(a, w)| Op::Ack(a, w)),
        1 => Just(Op::Keepalive),
    ]
}

/// Checks the replica (built from records only) against the tracker, and the set of
/// announced sessions against the replica's.
fn assert_replica_matches(h: &Harness) -> Result<(), TestCaseError> {
    let announced: Vec<SessionKey> = h.t.snapshot().iter().map(Record::key).collect();
    let replicated: Vec<SessionKey> = h.replica.sorted().iter().map(|s| s.key).collect();
    prop_assert_eq!(announced, replicated);
    for copy in h.replica.iter() {
        let mut state = h.t.session(&copy.key).cloned().expect("announced");
        state.last_activity_ms = copy.last_activity_ms;
        prop_assert_eq!(copy, &state);
    }
    Ok(())
}

fn run_stream(peer_isn: u32, our_isn: u32, ops: &[Op], cap: usize) -> Result<(), TestCaseError> {
    let mut h = Harness::with(TrackerLimits {
        max_unacked_bytes: cap,
        ..TrackerLimits::default()
    });
    h.establish_with(peer_isn, our_isn);
    let base = our_isn.wrapping_add(1);
    let rcv = peer_isn.wrapping_add(1);
    let at = |offset: usize| base.wrapping_add(offset as u32);
    let (mut sent, mut acked) = (0usize, 0usize);
    for op in ops {
        let packet = match *op {
            Op::Send(n) => {
                sent += n;
                seg()
                    .from_us()
                    .seq(at(sent - n))
                    .ack(rcv)
                    .payload(&stream(sent - n, sent))
            }
            Op::Resend(a, b) => {
                let start = a as usize % (sent + 1);
                let end = (start + usize::from(b) % 1400).min(sent);
                seg()
                    .from_us()
                    .seq(at(start))
                    .ack(rcv)
                    .payload(&stream(start, end))
            }
            Op::Ack(a, win) => {
                let offset = a as usize % (sent + 1);
                acked = acked.max(offset);
                seg().seq(rcv).ack(at(offset)).win(win)
            }
            Op::Keepalive => seg()
                .from_us()
                .seq(at(acked).wrapping_sub(1))
                .ack(rcv)
                .payload(&[0xaa]),
        };
        h.feed(Seg::build(packet));
        let state = h.state();
        prop_assert_eq!(state.snd_nxt, at(sent));
        prop_assert_eq!(state.snd_una, at(acked));
        prop_assert_eq!(state.bytes_out, sent as u64);
        let expected = stream(acked, sent);
        if cap >= sent {
            prop_assert_eq!(&state.unacked, &expected);
        } else {
            prop_assert!(state.unacked.len() <= cap);
            prop_assert_eq!(
                &state.unacked.iter().copied().collect::<Vec<u8>>()[..],
                &expected[..state.unacked.len()]
            );
            prop_assert_eq!(unacked::unacked_complete(state), state.unacked == expected);
        }
        assert_replica_matches(&h)?;
    }
    Ok(())
}

/// A random segment of the default session: numbers near the live ones.
fn random_segment(h: &Harness, r: &RandomSeg) -> Vec<u8> {
    let (snd, rcv) =
        h.t.session(&key())
            .map_or((0, 0), |s| (s.snd_nxt, s.rcv_nxt));
    let near = |base: u32, d: i16| base.wrapping_add(d as i32 as u32);
    let mut s = if r.outbound {
        seg()
            .from_us()
            .seq(near(snd, r.dseq))
            .ack(near(rcv, r.dack))
    } else {
        seg().seq(near(rcv, r.dseq)).ack(near(snd, r.dack))
    };
    s = s.win(r.win).payload(&vec![r.fill; usize::from(r.len)]);
    // FIN 20%, SYN 6%, RST 3% of segments.
    if r.flags % 5 == 3 {
        s = s.fin();
    }
    if r.flags % 17 == 1 {
        s = s.syn();
    }
    if r.flags % 37 == 2 {
        s = s.rst();
    }
    if let Some(tsval) = r.ts {
        s = s.ts(tsval, 0);
    }
    s.build()
}

#[derive(Debug, Clone)]
struct RandomSeg {
    outbound: bool,
    dseq: i16,
    dack: i16,
    len: u16,
    flags: u8,
    win: u16,
    fill: u8,
    ts: Option<u32>,
}

fn random_seg() -> impl Strategy<Value = RandomSeg> {
    (
        any::<bool>(),
        prop_oneof![-300i16..300, -20i16..5],
        prop_oneof![-300i16..300, -20i16..5],
        0u16..200,
        any::<u8>(),
        prop_oneof![Just(1024u16), any::<u16>()],
        any::<u8>(),
        proptest::option::of(0u32..1000),
    )
        .prop_map(
            |(outbound, dseq, dack, len, flags, win, fill, ts)| RandomSeg {
                outbound,
                dseq,
                dack,
                len,
                flags,
                win,
                fill,
                ts,
            },
        )
}

/// Valid packets of every kind, for mutation.
fn corpus() -> Vec<Vec<u8>> {
    vec![
        seg()
            .syn()
            .seq(400)
            .mss(1460)
            .sack_perm()
            .ts(100, 0)
            .wscale(7)
            .build(),
        seg()
            .from_us()
            .syn()
            .seq(1000)
            .ack(401)
            .mss(1400)
            .ts(5000, 100)
            .build(),
        seg().seq(401).ack(1001).build(),
        seg()
            .from_us()
            .seq(1001)
            .ack(401)
            .payload(&[9; 100])
            .build(),
        seg()
            .seq(401)
            .ack(1051)
            .sack(&[(1061, 1101)])
            .ts(120, 5000)
            .build(),
        seg().seq(401).ack(1101).fin().payload(b"bye").build(),
        seg().from_us().seq(1101).ack(405).rst().build(),
    ]
}

proptest! {
    #[test]
    fn unacked_is_exactly_the_unacknowledged_stream(
        peer_isn in isn(),
        our_isn in isn(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run_stream(peer_isn, our_isn, &ops, usize::MAX)?;
    }

    #[test]
    fn unacked_under_a_byte_limit_is_a_prefix(
        our_isn in isn(),
        ops in proptest::collection::vec(op(), 1..60),
        cap in 0usize..1500,
    ) {
        run_stream(400, our_isn, &ops, cap)?;
    }

    #[test]
    fn records_rebuild_the_tracker_state(
        peer_isn in isn(),
        our_isn in isn(),
        ts in any::<bool>(),
        segments in proptest::collection::vec(random_seg(), 1..80),
    ) {
        let mut h = Harness::new();
        for (i, r) in segments.iter().enumerate() {
            if h.t.session(&key()).is_none() {
                // (Re)open the session: new ISNs each time.
                let (peer_isn, our_isn) = (peer_isn ^ i as u32, our_isn.wrapping_add(i as u32));
                let syn = seg().syn().seq(peer_isn);
                let synack = seg().from_us().syn().seq(our_isn).ack(peer_isn.wrapping_add(1));
                let (syn, synack) = if ts { (syn.ts(1, 0), synack.ts(2, 1)) } else { (syn, synack) };
                h.feed(syn.build());
                h.feed(synack.build());
                h.feed(seg().seq(peer_isn.wrapping_add(1)).ack(our_isn.wrapping_add(1)).build());
            }
            let packet = random_segment(&h, r);
            h.now += 1;
            let outcome = h.t.on_packet(&packet, h.now).expect("valid packet");
            for record in &outcome.records {
                h.apply(record);
            }
            assert_replica_matches(&h)?;
            if let Some(state) = h.t.session(&key()) {
                prop_assert!(seq_le(state.snd_una, state.snd_nxt));
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut h = Harness::new();
        h.establish();
        let _ = h.t.on_packet(&bytes, NOW);
        // The same bytes behind a valid-looking IPv4 + TCP prefix of our session.
        let mut packet = seg().seq(401).ack(1001).build();
        packet.extend_from_slice(&bytes);
        let _ = h.t.on_packet(&packet, NOW);
    }

    #[test]
    fn truncated_and_bit_flipped_packets_never_panic(
        which in 0usize..7,
        cut in any::<u16>(),
        flips in proptest::collection::vec((any::<u16>(), 0u8..8), 0..6),
        options in proptest::collection::vec(any::<u8>(), 0..=40),
    ) {
        let mut h = Harness::new();
        h.establish();
        h.feed(seg().from_us().seq(1001).ack(401).payload(&[1; 200]).build());
        let mut packet = corpus()[which].clone();
        for (at, bit) in &flips {
            let i = usize::from(*at) % packet.len();
            packet[i] ^= 1 << bit;
        }
        let _ = h.t.on_packet(&packet, NOW);
        let cut = usize::from(cut) % (packet.len() + 1);
        let _ = h.t.on_packet(&packet[..cut], NOW);
        // Arbitrary option bytes on a packet of the live session.
        let mut raw = options;
        raw.truncate(raw.len() / 4 * 4);
        let with_options = seg().seq(401).ack(1101).raw_options(&raw).build();
        let _ = h.t.on_packet(&with_options, NOW);
        if let Some(state) = h.t.session(&key()) {
            prop_assert!(state.unacked.len() <= 200);
        }
    }
}
