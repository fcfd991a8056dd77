//! Data traces: both directions, retransmission, reordering, SACK, windows, probes,
//! timestamps and sequence wrap-around.

use super::*;
use crate::session::tracker::session::sync_of;
use crate::session::tracker::unacked;
use crate::test_support::segment::{bytes_at, seg};

/// Our data segment at `seq` with `n` bytes (ACKing `ack`).
fn out(seq: u32, n: usize, ack: u32) -> Vec<u8> {
    seg()
        .from_us()
        .seq(seq)
        .ack(ack)
        .payload(&bytes_at(seq, n))
        .build()
}

/// The peer's pure ACK.
fn peer_ack(seq: u32, ack: u32) -> Vec<u8> {
    seg().seq(seq).ack(ack).build()
}

#[test]
fn data_out_is_kept_until_acked() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(out(1001, 100, 401));
    assert_eq!((sync.data_seq, &sync.data), (1001, &bytes_at(1001, 100)));
    assert_eq!(
        (sync.snd_nxt, sync.snd_una, sync.bytes_out),
        (1101, 1001, 100)
    );
    assert_eq!(sync, sync_of(h.state(), 1001, bytes_at(1001, 100)));
    assert_eq!(h.state().unacked, bytes_at(1001, 100));

    let sync = h.sync(peer_ack(401, 1051));
    assert_eq!((sync.snd_una, sync.data.len()), (1051, 0));
    assert_eq!(h.state().unacked, bytes_at(1051, 50));

    let sync = h.sync(peer_ack(401, 1101));
    assert_eq!(sync.snd_una, 1101);
    assert_eq!(h.state().unacked, Vec::<u8>::new());
    assert_eq!(h.t.stats().incomplete_sessions, 0);
}

#[test]
fn data_in_is_counted_once_and_acked_by_us() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(seg().seq(401).ack(1001).payload(&[7; 10]).build());
    assert_eq!(
        (sync.peer_seq_max, sync.bytes_in, sync.rcv_nxt),
        (411, 10, 401)
    );
    assert_eq!(sync.data, Vec::<u8>::new());
    let sync = h.sync(seg().from_us().seq(1001).ack(411).build());
    assert_eq!(sync.rcv_nxt, 411);
    // Retransmissions, a duplicate ACK of ours, an older partial copy: nothing.
    h.quiet(seg().seq(401).ack(1001).payload(&[7; 10]).build());
    h.quiet(seg().from_us().seq(1001).ack(411).build());
    h.quiet(seg().seq(401).ack(1001).payload(&[7; 5]).build());
    // An older ACK of ours (reordered in the queue) does not move rcv_nxt back.
    h.quiet(seg().from_us().seq(1001).ack(405).build());
    assert_eq!((h.state().bytes_in, h.state().rcv_nxt), (10, 411));
}

#[test]
fn retransmitted_data_out_adds_only_new_bytes() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    h.quiet(out(1001, 50, 401));
    h.quiet(out(1001, 100, 401));
    // Half old, half new.
    let sync = h.sync(out(1051, 100, 401));
    assert_eq!((sync.data_seq, &sync.data), (1101, &bytes_at(1101, 50)));
    assert_eq!((sync.snd_nxt, sync.bytes_out), (1151, 150));
    h.sync(peer_ack(401, 1051));
    // Retransmission reaching back before snd_una.
    h.quiet(out(1001, 150, 401));
    assert_eq!(h.state().unacked, bytes_at(1051, 100));
}

#[test]
fn reordered_data_in() {
    let mut h = Harness::new();
    h.establish();
    // The second segment first: the gap counts, those bytes were sent too.
    let sync = h.sync(seg().seq(411).ack(1001).payload(&[2; 10]).build());
    assert_eq!((sync.peer_seq_max, sync.bytes_in), (421, 20));
    h.quiet(seg().seq(401).ack(1001).payload(&[1; 10]).build());
    let sync = h.sync(seg().from_us().seq(1001).ack(421).build());
    assert_eq!(sync.rcv_nxt, 421);
    assert_eq!(h.state().bytes_in, 20);
}

#[test]
fn reordered_acks_never_move_snd_una_back() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    h.sync(out(1101, 100, 401));
    h.sync(peer_ack(401, 1201));
    h.quiet(peer_ack(401, 1101));
    h.quiet(peer_ack(401, 1001));
    assert_eq!((h.state().snd_una, h.state().unacked.len()), (1201, 0));
}

#[test]
fn reordered_old_segment_does_not_roll_the_window_back() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(
        seg()
            .seq(401)
            .ack(1001)
            .win(2000)
            .payload(b"0123456789")
            .build(),
    );
    assert_eq!(sync.peer_window, 2000);
    let sync = h.sync(seg().seq(411).ack(1001).win(3000).build());
    assert_eq!(sync.peer_window, 3000);
    // The first segment again, late: older sequence number, older window.
    h.quiet(
        seg()
            .seq(401)
            .ack(1001)
            .win(2000)
            .payload(b"0123456789")
            .build(),
    );
    assert_eq!(h.state().peer_window, 3000);
    // A pure window update (same seq and ack) is taken.
    let sync = h.sync(seg().seq(411).ack(1001).win(100).build());
    assert_eq!(sync.peer_window, 100);
}

#[test]
fn sack_blocks_do_not_trim() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    h.sync(out(1101, 100, 401));
    h.sync(out(1201, 100, 401));
    h.quiet(seg().seq(401).ack(1001).sack(&[(1101, 1301)]).build());
    assert_eq!(h.state().unacked, bytes_at(1001, 300));
    let sync = h.sync(seg().seq(401).ack(1101).sack(&[(1201, 1301)]).build());
    assert_eq!(sync.snd_una, 1101);
    assert_eq!(h.state().unacked, bytes_at(1101, 200));
}

#[test]
fn peer_zero_window_and_our_probes() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    let sync = h.sync(seg().seq(401).ack(1101).win(0).build());
    assert_eq!((sync.snd_una, sync.peer_window), (1101, 0));
    // Linux probe: seq snd_una - 1, no data.
    h.quiet(seg().from_us().seq(1100).ack(401).build());
    // BSD-style probe: one new byte at snd_nxt; it was sent, so it is kept.
    let sync = h.sync(out(1101, 1, 401));
    assert_eq!(
        (sync.data_seq, &sync.data, sync.snd_nxt),
        (1101, &bytes_at(1101, 1), 1102)
    );
    h.quiet(seg().seq(401).ack(1101).win(0).build());
    h.quiet(out(1101, 1, 401));
    // The window opens, then the probe byte is acked.
    let sync = h.sync(seg().seq(401).ack(1101).win(512).build());
    assert_eq!(sync.peer_window, 512);
    h.sync(peer_ack(401, 1102));
    assert_eq!((h.state().snd_una, h.state().unacked.len()), (1102, 0));
}

#[test]
fn our_zero_window_and_the_peers_probes() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(seg().from_us().seq(1001).ack(401).win(0).build());
    assert_eq!(sync.our_window, 0);
    // A probe with one new byte: the peer sent it (we drop it, it comes again).
    let sync = h.sync(seg().seq(401).ack(1001).payload(b"x").build());
    assert_eq!((sync.peer_seq_max, sync.bytes_in), (402, 1));
    h.quiet(seg().from_us().seq(1001).ack(401).win(0).build());
    h.quiet(seg().seq(401).ack(1001).payload(b"x").build());
    // Linux-style probe: rcv_nxt - 1, no data.
    h.quiet(seg().seq(400).ack(1001).build());
    let sync = h.sync(seg().from_us().seq(1001).ack(401).win(1024).build());
    assert_eq!((sync.our_window, sync.rcv_nxt), (1024, 401));
    let sync = h.sync(seg().seq(401).ack(1001).payload(b"xyz").build());
    assert_eq!((sync.peer_seq_max, sync.bytes_in), (404, 3));
}

#[test]
fn keepalive_probes_change_nothing() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 10, 401));
    h.sync(peer_ack(401, 1011));
    let before = h.state().clone();
    h.quiet(seg().seq(400).ack(1011).build());
    h.quiet(seg().seq(400).ack(1011).payload(&[0]).build());
    h.quiet(seg().from_us().seq(1010).ack(401).build());
    h.quiet(seg().from_us().seq(1010).ack(401).payload(&[0xaa]).build());
    let after = h.state();
    assert_eq!(after.unacked, before.unacked);
    assert_eq!(
        (
            after.snd_una,
            after.snd_nxt,
            after.rcv_nxt,
            after.peer_seq_max
        ),
        (1011, 1011, 401, 401)
    );
    assert_eq!((after.bytes_in, after.bytes_out), (0, 10));
    // With data outstanding, a keepalive byte before snd_una is not stored.
    h.sync(out(1011, 10, 401));
    h.quiet(seg().from_us().seq(1010).ack(401).payload(&[0xaa]).build());
    assert_eq!(h.state().unacked, bytes_at(1011, 10));
}

#[test]
fn timestamps_move_forward_only() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).ts(0xffff_fff0, 0).build());
    h.quiet(
        seg()
            .from_us()
            .syn()
            .seq(1000)
            .ack(401)
            .ts(5000, 0xffff_fff0)
            .build(),
    );
    h.feed(seg().seq(401).ack(1001).ts(0xffff_fff1, 5000).build());
    assert_eq!(
        (h.state().peer_tsval, h.state().our_tsval),
        (0xffff_fff1, 5000)
    );
    // A duplicate ACK with a newer TSval is news (PAWS after restore needs it),
    // including across the 2^32 wrap.
    let sync = h.sync(seg().seq(401).ack(1001).ts(3, 5000).build());
    assert_eq!(sync.peer_tsval, 3);
    h.quiet(seg().seq(401).ack(1001).ts(0xffff_fff2, 5000).build());
    let sync = h.sync(seg().from_us().seq(1001).ack(401).ts(5001, 3).build());
    assert_eq!(sync.our_tsval, 5001);
    h.quiet(seg().from_us().seq(1001).ack(401).ts(4999, 3).build());
    assert_eq!((h.state().peer_tsval, h.state().our_tsval), (3, 5001));
}

#[test]
fn ack_for_data_never_sent_is_ignored() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    h.quiet(seg().seq(401).ack(5000).win(7).build());
    assert_eq!((h.state().snd_una, h.state().peer_window), (1001, 1024));
    assert_eq!(h.state().unacked.len(), 100);
    assert_eq!(h.t.stats().invalid_acks, 1);
}

#[test]
fn inbound_segment_beyond_any_window_is_ignored() {
    let mut h = Harness::new();
    h.establish();
    h.quiet(
        seg()
            .seq(401 + (1 << 30) + 5)
            .ack(1001)
            .payload(b"far")
            .build(),
    );
    assert_eq!((h.state().peer_seq_max, h.state().bytes_in), (401, 0));
    assert_eq!(h.t.stats().segments_out_of_window, 1);
}

#[test]
fn our_window_update() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(seg().from_us().seq(1001).ack(401).win(2048).build());
    assert_eq!(sync, sync_of(h.state(), 1001, vec![]));
    assert_eq!(sync.our_window, 2048);
}

#[test]
fn outbound_gap_is_not_stored_until_filled() {
    let mut h = Harness::new();
    h.establish();
    h.sync(out(1001, 100, 401));
    // 1101..1201 never seen (e.g. reordered between queues).
    let sync = h.sync(out(1201, 100, 401));
    assert_eq!(
        (sync.data.len(), sync.snd_nxt, sync.bytes_out),
        (0, 1301, 300)
    );
    let stats = h.t.stats();
    assert_eq!(
        (
            stats.outbound_gaps,
            stats.unstored_bytes,
            stats.incomplete_sessions
        ),
        (1, 200, 1)
    );
    assert!(!unacked::unacked_complete(h.state()));
    // The missing segment arrives late, then the tail is retransmitted.
    let sync = h.sync(out(1101, 100, 401));
    assert_eq!((sync.data_seq, &sync.data), (1101, &bytes_at(1101, 100)));
    let sync = h.sync(out(1201, 100, 401));
    assert_eq!((sync.data_seq, sync.data.len()), (1201, 100));
    assert_eq!(h.state().unacked, bytes_at(1001, 300));
    assert_eq!(h.t.stats().incomplete_sessions, 0);
    assert_eq!(h.state().bytes_out, 300);
}

#[test]
fn sequence_numbers_wrap_around() {
    let peer_isn = 0xffff_fff0;
    let our_isn = 0xffff_ff80;
    let mut h = Harness::new();
    h.establish_with(peer_isn, our_isn);
    // 200 bytes from 0xffffff81 cross zero, then 100 more.
    let sync = h.sync(out(0xffff_ff81, 200, 0xffff_fff1));
    assert_eq!((sync.data_seq, sync.snd_nxt), (0xffff_ff81, 0x49));
    let sync = h.sync(out(0x49, 100, 0xffff_fff1));
    assert_eq!(
        (sync.data_seq, sync.snd_nxt, sync.bytes_out),
        (0x49, 0xad, 300)
    );
    // The peer acks up to 10 (137 bytes, across zero).
    let sync = h.sync(peer_ack(0xffff_fff1, 10));
    assert_eq!(sync.snd_una, 10);
    assert_eq!(h.state().unacked, bytes_at(10, 163));
    // Peer data across zero, acked by us.
    let sync = h.sync(seg().seq(0xffff_fff1).ack(10).payload(&[5; 40]).build());
    assert_eq!((sync.peer_seq_max, sync.bytes_in), (0x19, 40));
    let sync = h.sync(seg().from_us().seq(0xad).ack(0x19).build());
    assert_eq!(sync.rcv_nxt, 0x19);
    // An ack from before the wrap changes nothing; the final ack empties the buffer.
    h.quiet(peer_ack(0x19, 0xffff_ff90));
    h.sync(peer_ack(0x19, 0xad));
    assert_eq!(h.state().unacked, Vec::<u8>::new());
    // Close across the wrapped numbers.
    let sync = h.sync(seg().from_us().seq(0xad).ack(0x19).fin().build());
    assert_eq!((sync.our_fin, sync.snd_nxt), (Some(0xad), 0xae));
    h.sync(seg().seq(0x19).ack(0xae).fin().build());
    let records = h.feed(seg().from_us().seq(0xae).ack(0x1a).build());
    assert_eq!(records, vec![Record::Delete(key())]);
}

#[test]
fn unacked_starts_after_our_syn() {
    // Only reachable through restored state: our SYN still unacknowledged. (Never
    // announced, so the backup's table does not need this rule.)
    let mut h = Harness::new();
    let mut state = h.establish();
    state.snd_una = state.our_isn;
    let mut t = tracker();
    t.restore([state]);
    let session = |t: &Tracker| t.session(&key()).cloned().expect("restored");
    assert_eq!(unacked::data_start(&session(&t)), 1001);
    let records = t.on_packet(&out(1001, 5, 401), NOW).expect("valid").records;
    assert!(matches!(records.as_slice(), [Record::Sync(s)] if s.data_seq == 1001));
    // The peer acks SYN and 2 bytes: the SYN takes no byte.
    t.on_packet(&peer_ack(401, 1003), NOW).expect("valid");
    assert_eq!(session(&t).unacked, bytes_at(1003, 3));
}
