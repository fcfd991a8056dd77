//! Limit traces: session count, per-session unacked bytes, idle expiry.

use super::*;
use crate::session::tracker::{unacked, PacketError};
use crate::test_support::segment::{bytes_at, seg, PEER};

fn out(seq: u32, n: usize) -> Vec<u8> {
    seg()
        .from_us()
        .seq(seq)
        .ack(401)
        .payload(&bytes_at(seq, n))
        .build()
}

#[test]
fn session_limit_refuses_new_syns_only() {
    let mut t = tracker_with(TrackerLimits {
        max_sessions: 2,
        ..TrackerLimits::default()
    });
    let syn = |port: u16| seg().peer(PEER, port).syn().seq(10).build();
    assert!(t.on_packet(&syn(1), NOW).is_ok());
    assert!(t.on_packet(&syn(2), NOW).is_ok());
    assert_eq!(t.on_packet(&syn(3), NOW), Err(PacketError::TooManySessions));
    // Known sessions go on (a SYN retransmission is no new session).
    assert!(t.on_packet(&syn(1), NOW).is_ok());
    let synack = seg().peer(PEER, 2).from_us().syn().seq(50).ack(11).build();
    assert!(t.on_packet(&synack, NOW).is_ok());
    assert_eq!(
        (t.len(), t.stats().refused, t.stats().malformed_packets),
        (2, 1, 0)
    );
    // Room again after a reset.
    let rst = seg().peer(PEER, 1).from_us().rst().seq(0).ack(11).build();
    assert!(t.on_packet(&rst, NOW).is_ok());
    assert!(t.on_packet(&syn(3), NOW).is_ok());
    assert_eq!(t.len(), 2);
}

#[test]
fn unacked_byte_limit_stops_storing_until_everything_is_acked() {
    let mut h = Harness::with(TrackerLimits {
        max_unacked_bytes: 100,
        ..TrackerLimits::default()
    });
    h.establish();
    assert_eq!(h.sync(out(1001, 60)).data.len(), 60);
    let sync = h.sync(out(1061, 60));
    assert_eq!((sync.data_seq, &sync.data), (1061, &bytes_at(1061, 40)));
    assert_eq!((sync.snd_nxt, sync.bytes_out), (1121, 120));
    assert_eq!(h.t.stats().unstored_bytes, 20);
    assert_eq!(h.t.stats().incomplete_sessions, 1);
    // Beyond the stored bytes: nothing stored, no gap reported (already incomplete).
    let sync = h.sync(out(1121, 30));
    assert_eq!((sync.data.len(), sync.snd_nxt), (0, 1151));
    // The stored bytes are acked; the missing ones keep the session incomplete.
    h.sync(seg().seq(401).ack(1101).build());
    assert_eq!(h.state().unacked, Vec::<u8>::new());
    assert!(!unacked::unacked_complete(h.state()));
    h.sync(out(1151, 10));
    // Everything acked: complete again, and new bytes are stored again.
    h.sync(seg().seq(401).ack(1161).build());
    assert!(unacked::unacked_complete(h.state()));
    assert_eq!(h.sync(out(1161, 10)).data, bytes_at(1161, 10));
    let stats = h.t.stats();
    assert_eq!(
        (
            stats.unstored_bytes,
            stats.outbound_gaps,
            stats.incomplete_sessions
        ),
        (60, 0, 0)
    );
    assert_eq!(h.state().bytes_out, 170);
}

#[test]
fn expire_forgets_idle_sessions() {
    let mut t = tracker();
    let open = |t: &mut Tracker, port: u16, at: u64| {
        let peer = seg().peer(PEER, port);
        t.on_packet(&peer.clone().syn().seq(10).build(), at)
            .expect("syn");
        t.on_packet(&peer.clone().from_us().syn().seq(50).ack(11).build(), at)
            .expect("synack");
        t.on_packet(&peer.seq(11).ack(51).build(), at).expect("ack");
    };
    open(&mut t, 1, 0);
    t.on_packet(&seg().peer(PEER, 2).syn().seq(10).build(), 0)
        .expect("half-open");
    open(&mut t, 3, 5_000);
    let deletes = t.expire(10_000, 3_000, 8_000);
    let mut gone = key();
    gone.peer_port = 1;
    assert_eq!(deletes, vec![Record::Delete(gone)]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.sessions().next().map(|s| s.key.peer_port), Some(3));
    assert_eq!(t.stats().expired, 2);
}
