//! Close traces: FIN from each side, simultaneous close, RST each way, afterwards.

use super::*;
use crate::test_support::segment::{bytes_at, seg};
use nonstop_shared::session::Phase;

#[test]
fn peer_closes_first() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(seg().seq(401).ack(1001).fin().build());
    assert_eq!(
        (sync.phase, sync.peer_fin, sync.peer_seq_max, sync.bytes_in),
        (Phase::PeerClosed, Some(401), 402, 0)
    );
    let sync = h.sync(seg().from_us().seq(1001).ack(402).build());
    assert_eq!((sync.phase, sync.rcv_nxt), (Phase::PeerClosed, 402));
    // We may still send.
    let sync = h.sync(seg().from_us().seq(1001).ack(402).payload(b"bye").build());
    assert_eq!((sync.snd_nxt, &sync.data), (1004, &b"bye".to_vec()));
    let sync = h.sync(seg().from_us().seq(1004).ack(402).fin().build());
    assert_eq!(
        (sync.phase, sync.our_fin, sync.snd_nxt, sync.bytes_out),
        (Phase::Closing, Some(1004), 1005, 3)
    );
    // The FIN again: nothing new.
    h.quiet(seg().from_us().seq(1004).ack(402).fin().build());
    // The peer acks the data but not yet our FIN.
    let sync = h.sync(seg().seq(402).ack(1004).build());
    assert_eq!((sync.snd_una, sync.phase), (1004, Phase::Closing));
    assert_eq!(h.state().unacked, Vec::<u8>::new());
    let records = h.feed(seg().seq(402).ack(1005).build());
    assert_eq!(records, vec![Record::Delete(key())]);
    assert!(h.t.is_empty());
    assert!(h.replica.is_empty());
    assert_eq!(h.t.stats().closed, 1);
}

#[test]
fn we_close_first_with_data_in_flight() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(
        seg()
            .from_us()
            .seq(1001)
            .ack(401)
            .payload(&bytes_at(1001, 10))
            .fin()
            .build(),
    );
    assert_eq!(
        (
            sync.phase,
            sync.our_fin,
            sync.snd_nxt,
            sync.bytes_out,
            sync.data.len()
        ),
        (Phase::LocalClosed, Some(1011), 1012, 10, 10)
    );
    // The data is acked, the FIN not yet: nothing of the FIN is in `unacked`.
    let sync = h.sync(seg().seq(401).ack(1011).build());
    assert_eq!(sync.snd_una, 1011);
    assert_eq!(h.state().unacked, Vec::<u8>::new());
    // Retransmitted data+FIN after the ack adds nothing.
    h.quiet(
        seg()
            .from_us()
            .seq(1001)
            .ack(401)
            .payload(&bytes_at(1001, 10))
            .fin()
            .build(),
    );
    // The peer may still send, then closes while acking our FIN.
    let sync = h.sync(seg().seq(401).ack(1011).payload(b"tail").build());
    assert_eq!((sync.phase, sync.bytes_in), (Phase::LocalClosed, 4));
    let sync = h.sync(seg().seq(405).ack(1012).fin().build());
    assert_eq!(
        (sync.phase, sync.snd_una, sync.peer_fin),
        (Phase::Closing, 1012, Some(405))
    );
    let records = h.feed(seg().from_us().seq(1012).ack(406).build());
    assert_eq!(records, vec![Record::Delete(key())]);
    assert!(h.t.is_empty());
}

#[test]
fn fin_acked_with_unacked_bytes_trims_everything() {
    // One ACK covers the data and the FIN at once.
    let mut h = Harness::new();
    h.establish();
    h.sync(
        seg()
            .from_us()
            .seq(1001)
            .ack(401)
            .payload(&bytes_at(1001, 10))
            .fin()
            .build(),
    );
    let sync = h.sync(seg().seq(401).ack(1012).build());
    assert_eq!((sync.snd_una, sync.phase), (1012, Phase::LocalClosed));
    assert_eq!(h.state().unacked, Vec::<u8>::new());
}

#[test]
fn simultaneous_close() {
    let mut h = Harness::new();
    h.establish();
    let sync = h.sync(seg().from_us().seq(1001).ack(401).fin().build());
    assert_eq!((sync.phase, sync.our_fin), (Phase::LocalClosed, Some(1001)));
    // The FINs cross: the peer's does not ack ours.
    let sync = h.sync(seg().seq(401).ack(1001).fin().build());
    assert_eq!((sync.phase, sync.peer_fin), (Phase::Closing, Some(401)));
    let sync = h.sync(seg().from_us().seq(1002).ack(402).build());
    assert_eq!((sync.phase, sync.rcv_nxt), (Phase::Closing, 402));
    let records = h.feed(seg().seq(402).ack(1002).build());
    assert_eq!(records, vec![Record::Delete(key())]);
    assert!(h.t.is_empty());
}

#[test]
fn rst_from_the_peer() {
    let mut h = Harness::new();
    h.establish();
    h.sync(seg().from_us().seq(1001).ack(401).payload(b"data").build());
    let records = h.feed(seg().seq(401).rst().build());
    assert_eq!(records, vec![Record::Delete(key())]);
    assert!(h.t.is_empty());
    assert_eq!(h.t.stats().reset, 1);
}

#[test]
fn rst_from_us() {
    let mut h = Harness::new();
    h.establish();
    h.sync(seg().seq(401).ack(1001).fin().build());
    let records = h.feed(seg().from_us().seq(1001).ack(402).rst().build());
    assert_eq!(records, vec![Record::Delete(key())]);
    assert!(h.t.is_empty());
}

#[test]
fn after_close_late_packets_are_untracked_and_the_tuple_can_be_reused() {
    let mut h = Harness::new();
    h.establish();
    h.sync(seg().seq(401).ack(1001).fin().build());
    h.sync(seg().from_us().seq(1001).ack(402).fin().build());
    assert_eq!(h.feed(seg().seq(402).ack(1002).build()).len(), 1);
    // The peer's FIN again (our last ACK was lost), our ACK again: nothing.
    h.quiet(seg().seq(401).ack(1002).fin().build());
    h.quiet(seg().from_us().seq(1002).ack(402).build());
    assert!(h.t.is_empty());
    // A new connection on the same 4-tuple.
    let full = h.establish_with(9000, 20_000);
    assert_eq!((full.peer_isn, full.our_isn), (9000, 20_000));
}
