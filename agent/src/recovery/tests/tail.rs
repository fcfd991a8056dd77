//! The replicated tail's sender: within the peer's window, retransmitted on duplicate
//! ACKs and on its timer, FIN last, handed-over unsent bytes included.

use super::*;
use crate::recovery::tail::{Tail, RTO_INITIAL, RTO_MAX};
use crate::recovery::translate::{tail_end, Translator};
use std::time::{Duration, Instant};

/// A session with `n` tail bytes at `SND_UNA`, peer window `window` bytes (scale 7 →
/// raw window `window >> 7`), segments of 100 bytes.
fn tail_of(n: usize, window: u32) -> (SessionState, Tail) {
    let mut s = state();
    s.snd_nxt = SND_UNA + n as u32;
    s.unacked = (0..n as u32).map(|i| stream_byte(SND_UNA + i)).collect();
    s.peer_window = (window >> 7) as u16;
    let tail = Tail::new(&s, 100).expect("a tail");
    (s, tail)
}

/// (seq, payload length, fin) of each segment.
fn shape(segments: &[Vec<u8>]) -> Vec<(u32, usize, bool)> {
    segments
        .iter()
        .map(|p| {
            let v = view(p);
            assert_eq!(
                v.payload,
                (0..v.payload.len() as u32)
                    .map(|i| stream_byte(v.seq + i))
                    .collect::<Vec<u8>>()
            );
            (v.seq, v.payload.len(), v.fin)
        })
        .collect()
}

#[test]
fn the_first_burst_stays_inside_the_peer_window() {
    let t0 = Instant::now();
    let (_, mut tail) = tail_of(1_000, 256);
    let out = tail.start(RCV_NXT, t0);
    assert_eq!(
        shape(&out),
        vec![(2_000, 100, false), (2_100, 100, false), (2_200, 56, false)]
    );
    assert_eq!(tail.deadline(), Some(t0 + RTO_INITIAL));
    // Each ACK opens room for more.
    let out = tail.on_ack(2_100, 256, false, RCV_NXT, t0);
    assert_eq!(shape(&out), vec![(2_256, 100, false)]);
    let v = view(&out[0]);
    assert_eq!(v.ack, Some(RCV_NXT));
    assert!(v.psh);
}

#[test]
fn a_lost_segment_is_sent_again_on_three_duplicate_acks() {
    let t0 = Instant::now();
    let (_, mut tail) = tail_of(400, 100_000);
    assert_eq!(tail.start(RCV_NXT, t0).len(), 4);
    // The segment at 2_100 was lost: the peer acks 2_100 four times.
    assert_eq!(
        shape(&tail.on_ack(2_100, 100_000, false, RCV_NXT, t0)),
        vec![]
    );
    assert_eq!(
        shape(&tail.on_ack(2_100, 100_000, false, RCV_NXT, t0)),
        vec![]
    );
    assert_eq!(
        shape(&tail.on_ack(2_100, 100_000, false, RCV_NXT, t0)),
        vec![]
    );
    assert_eq!(
        shape(&tail.on_ack(2_100, 100_000, false, RCV_NXT, t0)),
        vec![(2_100, 100, false)]
    );
    // Its ACK covers everything: done, no timer.
    assert_eq!(
        tail.on_ack(2_400, 100_000, false, RCV_NXT + 10, t0),
        Vec::<Vec<u8>>::new()
    );
    assert!(tail.done());
    assert_eq!(tail.deadline(), None);
}

#[test]
fn the_timer_retransmits_with_backoff_and_probes_a_closed_window() {
    let t0 = Instant::now();
    let (_, mut tail) = tail_of(300, 0);
    assert_eq!(tail.start(RCV_NXT, t0), Vec::<Vec<u8>>::new());
    assert_eq!(
        tail.poll(RCV_NXT, t0 + RTO_INITIAL / 2),
        Vec::<Vec<u8>>::new()
    );
    let probe = tail.poll(RCV_NXT, t0 + RTO_INITIAL);
    assert_eq!(shape(&probe), vec![(2_000, 100, false)]);
    assert_eq!(tail.deadline(), Some(t0 + RTO_INITIAL * 3));
    let mut at = t0 + RTO_INITIAL * 3;
    for _ in 0..10 {
        assert_eq!(tail.poll(RCV_NXT, at).len(), 1);
        at = tail.deadline().expect("armed");
    }
    assert!(tail.deadline().expect("armed") - at <= RTO_MAX + Duration::from_millis(1));
    // The window opens: everything goes, the timer restarts at its initial value.
    let out = tail.on_ack(2_000, 1_000, false, RCV_NXT, at);
    assert_eq!(
        shape(&out),
        vec![
            (2_000, 100, false),
            (2_100, 100, false),
            (2_200, 100, false)
        ]
    );
}

#[test]
fn a_pending_fin_goes_after_the_last_byte() {
    let t0 = Instant::now();
    let mut s = state();
    s.our_fin = Some(SND_NXT);
    s.snd_nxt = SND_NXT + 1;
    s.phase = Phase::LocalClosed;
    let mut tail = Tail::new(&s, 60).expect("tail");
    assert_eq!(tail.end(), SND_NXT + 1);
    let out = tail.start(RCV_NXT, t0);
    assert_eq!(shape(&out), vec![(2_000, 60, false), (2_060, 40, true)]);
    tail.on_ack(SND_NXT, 100_000, false, RCV_NXT, t0);
    assert!(!tail.done());
    // The FIN alone on the timer.
    let fin = tail.poll(RCV_NXT, t0 + RTO_INITIAL);
    assert_eq!(shape(&fin), vec![(SND_NXT, 0, true)]);
    tail.on_ack(SND_NXT + 1, 100_000, false, RCV_NXT, t0);
    assert!(tail.done());
}

#[test]
fn handed_over_unsent_bytes_extend_the_tail_and_the_translation() {
    // 100 bytes sent and unacked, then 300 the old kernel never sent.
    let t0 = Instant::now();
    let mut s = state();
    s.unacked = (0..400u32).map(|i| stream_byte(SND_UNA + i)).collect();
    assert_eq!(tail_end(&s), SND_UNA + 400);
    let mut tail = Tail::new(&s, 1_000).expect("tail");
    assert_eq!(tail.end(), SND_UNA + 400);
    assert_eq!(shape(&tail.start(RCV_NXT, t0)), vec![(2_000, 400, false)]);
    // The app's first byte maps past the handed-over bytes.
    let t = Translator::new(&s, &synack());
    assert_eq!(t.peer_seq(NEW_ISN + 1), SND_UNA + 400);
    assert_eq!(t.snd_max(), SND_UNA + 400);
    // While the peer acks inside the tail, the app sees only the room past it: the
    // peer's right edge 2_000 + (1_000 << 7) minus the tail's end, in units of 2^7.
    assert_eq!(
        t.app_window_at(Some(2_000), 1_000),
        ((2_000 + 128_000 - 2_400) >> 7) as u16
    );
    assert_eq!(t.app_window_at(Some(2_000), 3), 0);
    assert_eq!(t.app_window_at(Some(2_400), 3), 3);
}
