//! Handshake traces: options, duplicates, odd orders, untracked packets, restore.

use super::*;
use crate::session::tracker::PacketError;
use crate::test_support::segment::{seg, PEER, PEER_PORT, PORT, VIP};
use nonstop_shared::session::{Negotiated, Phase};

#[test]
fn handshake_without_options() {
    let mut h = Harness::new();
    h.quiet(seg().from_peer().syn().seq(400).win(64240).build());
    assert_eq!(h.state().phase, Phase::Handshake);
    assert_eq!(h.state().peer_isn, 400);
    assert_eq!(h.state().peer_seq_max, 401);
    h.quiet(seg().from_us().syn().seq(1000).ack(401).win(65160).build());
    let records = h.feed(seg().seq(401).ack(1001).win(502).build());
    let expected = SessionState {
        key: key(),
        phase: Phase::Established,
        peer_isn: 400,
        our_isn: 1000,
        rcv_nxt: 401,
        peer_seq_max: 401,
        snd_nxt: 1001,
        snd_una: 1001,
        peer_window: 502,
        our_window: 65160,
        negotiated: Negotiated::default(),
        peer_tsval: 0,
        our_tsval: 0,
        our_fin: None,
        peer_fin: None,
        unacked: Default::default(),
        unread_input: Vec::new(),
        at_risk: false,
        bytes_in: 0,
        bytes_out: 0,
        last_activity_ms: NOW + 3,
    };
    assert_eq!(records, vec![Record::Full(expected.clone())]);
    assert_eq!(h.state(), &expected);
    assert_eq!(h.t.stats().established, 1);
}

#[test]
fn handshake_with_all_options() {
    let mut h = Harness::new();
    h.quiet(
        seg()
            .syn()
            .seq(400)
            .mss(1460)
            .sack_perm()
            .ts(100, 0)
            .wscale(7)
            .build(),
    );
    h.quiet(
        seg()
            .from_us()
            .syn()
            .seq(1000)
            .ack(401)
            .mss(1400)
            .sack_perm()
            .ts(5000, 100)
            .wscale(9)
            .build(),
    );
    let records = h.feed(seg().seq(401).ack(1001).ts(101, 5000).build());
    let [Record::Full(state)] = records.as_slice() else {
        panic!("expected one Full, got {records:?}");
    };
    assert_eq!(
        state.negotiated,
        Negotiated {
            peer_mss: 1460,
            our_mss: 1400,
            peer_wscale: Some(7),
            our_wscale: Some(9),
            sack_permitted: true,
            timestamps: true,
        }
    );
    assert_eq!((state.peer_tsval, state.our_tsval), (101, 5000));
}

#[test]
fn options_only_when_both_sides_send_them() {
    // The peer offers wscale and timestamps, we offer SACK-permitted only.
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).mss(1460).ts(100, 0).wscale(7).build());
    h.quiet(
        seg()
            .from_us()
            .syn()
            .seq(1000)
            .ack(401)
            .mss(1400)
            .sack_perm()
            .build(),
    );
    let state = match h.feed(seg().seq(401).ack(1001).build()).as_slice() {
        [Record::Full(state)] => state.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        state.negotiated,
        Negotiated {
            peer_mss: 1460,
            our_mss: 1400,
            peer_wscale: None,
            our_wscale: None,
            sack_permitted: false,
            timestamps: false,
        }
    );
    assert_eq!((state.peer_tsval, state.our_tsval), (0, 0));
    // Later timestamps (the peer keeps sending them) are not recorded.
    h.quiet(seg().seq(401).ack(1001).ts(150, 0).build());
    assert_eq!(h.state().peer_tsval, 0);
}

#[test]
fn only_we_scale_the_window() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).wscale(7).build());
    let full = h.feed(seg().seq(401).ack(1001).build());
    let [Record::Full(state)] = full.as_slice() else {
        panic!("{full:?}");
    };
    assert_eq!(state.negotiated.peer_wscale, None);
    assert_eq!(state.negotiated.our_wscale, None);
}

#[test]
fn window_scale_is_clamped_to_14() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).wscale(15).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).wscale(14).build());
    let full = h.feed(seg().seq(401).ack(1001).build());
    let [Record::Full(state)] = full.as_slice() else {
        panic!("{full:?}");
    };
    assert_eq!(state.negotiated.peer_wscale, Some(14));
    assert_eq!(state.negotiated.our_wscale, Some(14));
}

#[test]
fn duplicate_syn_and_synack_change_nothing() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    let full = h.establish_tail();
    assert_eq!(full.len(), 1);
    let before = h.state().clone();
    // After the handshake: the SYN and SYN-ACK again (unscaled windows!) change nothing.
    h.quiet(seg().syn().seq(400).win(7).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).win(7).build());
    let mut after = h.state().clone();
    after.last_activity_ms = before.last_activity_ms;
    assert_eq!(after, before);
    assert_eq!(h.t.stats().established, 1);
}

impl Harness {
    /// The peer's ACK of the default handshake; returns its records.
    fn establish_tail(&mut self) -> Vec<Record> {
        self.feed(seg().seq(401).ack(1001).build())
    }
}

#[test]
fn synack_with_a_new_isn_replaces_the_old_one() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    h.quiet(seg().from_us().syn().seq(2000).ack(401).build());
    h.quiet(seg().seq(401).ack(1001).build());
    assert_eq!(h.state().phase, Phase::Handshake);
    let records = h.feed(seg().seq(401).ack(2001).build());
    assert!(matches!(records.as_slice(), [Record::Full(s)] if s.our_isn == 2000));
}

#[test]
fn synack_to_another_syn_is_ignored() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(77).build());
    h.quiet(seg().seq(401).ack(1001).build());
    assert_eq!(h.state().phase, Phase::Handshake);
}

#[test]
fn new_syn_with_another_isn_restarts_the_handshake() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).mss(1460).build());
    h.quiet(seg().syn().seq(7000).mss(536).build());
    assert_eq!(h.state().peer_isn, 7000);
    assert_eq!(h.state().negotiated.peer_mss, 536);
    // The stack still answers the old SYN: not ours to record.
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    h.quiet(seg().from_us().syn().seq(3000).ack(7001).build());
    let records = h.feed(seg().seq(7001).ack(3001).build());
    assert!(
        matches!(records.as_slice(), [Record::Full(s)] if s.peer_isn == 7000 && s.our_isn == 3000)
    );
}

#[test]
fn wrong_ack_does_not_complete_the_handshake() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    // The peer's ACK before our SYN-ACK was seen: nothing to check it against.
    h.quiet(seg().seq(401).ack(1001).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    h.quiet(seg().seq(401).ack(1000).build());
    h.quiet(seg().seq(401).ack(1002).build());
    h.quiet(seg().seq(401).build()); // no ACK flag
                                     // Our own segments before the handshake completes change nothing either.
    h.quiet(seg().from_us().seq(1001).ack(401).payload(b"early").build());
    assert_eq!(h.state().phase, Phase::Handshake);
    assert_eq!(h.state().snd_nxt, 1001);
    assert_eq!(h.establish_tail().len(), 1);
}

#[test]
fn third_ack_with_data_is_in_the_full_record() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    let records = h.feed(seg().seq(401).ack(1001).payload(b"GET /").build());
    let [Record::Full(state)] = records.as_slice() else {
        panic!("{records:?}");
    };
    assert_eq!(state.peer_seq_max, 406);
    assert_eq!(state.bytes_in, 5);
    assert_eq!(state.rcv_nxt, 401);
}

#[test]
fn third_ack_with_fin_announces_a_peer_closed_session() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().syn().seq(1000).ack(401).build());
    let records = h.feed(seg().seq(401).ack(1001).fin().build());
    let [Record::Full(state)] = records.as_slice() else {
        panic!("{records:?}");
    };
    assert_eq!(state.phase, Phase::PeerClosed);
    assert_eq!(state.peer_fin, Some(401));
    assert_eq!(state.peer_seq_max, 402);
}

#[test]
fn rst_during_the_handshake_forgets_quietly() {
    let mut h = Harness::new();
    h.quiet(seg().syn().seq(400).build());
    h.quiet(seg().from_us().rst().seq(0).ack(401).build());
    assert!(h.t.is_empty());
    assert_eq!(h.t.stats().reset, 1);
}

#[test]
fn unknown_sessions_are_not_tracked() {
    let mut t = tracker();
    for packet in [
        seg().seq(5000).ack(9000).payload(b"mid-stream").build(),
        seg()
            .from_us()
            .seq(9000)
            .ack(5010)
            .payload(b"reply")
            .build(),
        seg().from_us().syn().seq(9000).ack(5000).build(),
        seg().seq(5000).ack(9000).fin().build(),
        seg().seq(5000).rst().build(),
        seg().syn().seq(5000).ack(1).build(),
    ] {
        let outcome = t.on_packet(&packet, NOW).expect("valid");
        assert_eq!(outcome.records, vec![]);
    }
    assert!(t.is_empty());
    assert_eq!(t.stats().untracked_packets, 6);
}

#[test]
fn packets_not_of_the_service_are_refused() {
    let mut t = tracker();
    let other_port = seg().syn().local(VIP, 81).build();
    let other_ip = seg().syn().local([10, 0, 0, 5], PORT).build();
    assert_eq!(t.on_packet(&other_port, NOW), Err(PacketError::NotOurs));
    assert_eq!(t.on_packet(&other_ip, NOW), Err(PacketError::NotOurs));
    // The second service port is ours.
    let second = seg().syn().local(VIP, 8443).build();
    assert!(t.on_packet(&second, NOW).is_ok());
    assert_eq!(t.len(), 1);
    // A stranger's malformed options are still just not ours.
    let odd = seg().syn().local(VIP, 81).raw_options(&[2, 9]).build();
    assert_eq!(t.on_packet(&odd, NOW), Err(PacketError::NotOurs));
}

#[test]
fn malformed_packets_are_errors() {
    let mut t = tracker();
    let good = seg().syn().seq(400).build();
    let mut v6 = good.clone();
    v6[0] = 0x60;
    let mut udp_packet = Vec::new();
    etherparse::PacketBuilder::ipv4(PEER, VIP, 64)
        .udp(PEER_PORT, PORT)
        .write(&mut udp_packet, &[1, 2, 3])
        .expect("write");
    let mut fragment = good.clone();
    fragment[6] |= 0x20; // more fragments
    let mut long_total = good.clone();
    long_total[3] = long_total[3].wrapping_add(4);
    let mut small_offset = good.clone();
    small_offset[20 + 12] = 0x40; // data offset 4
    let bad_options = seg().syn().seq(400).raw_options(&[2, 3, 0]).build();
    let cases = [
        (vec![], PacketError::Truncated),
        (v6, PacketError::NotIpv4),
        (vec![0x60], PacketError::NotIpv4),
        (good[..30].to_vec(), PacketError::Truncated),
        (udp_packet, PacketError::NotTcp),
        (fragment, PacketError::Fragmented),
        (long_total, PacketError::Truncated),
    ];
    for (packet, error) in cases {
        assert_eq!(t.on_packet(&packet, NOW), Err(error), "{packet:?}");
    }
    assert!(matches!(
        t.on_packet(&small_offset, NOW),
        Err(PacketError::BadHeader(_))
    ));
    assert!(matches!(
        t.on_packet(&bad_options, NOW),
        Err(PacketError::BadOption(_))
    ));
    assert!(t.is_empty());
    assert_eq!(t.stats().malformed_packets, 9);
}

#[test]
fn restore_then_continue_mid_stream() {
    let mut h = Harness::new();
    let full = h.establish();
    h.sync(seg().from_us().seq(1001).ack(401).payload(b"hello").build());
    let saved: Vec<SessionState> = h.t.sessions().cloned().collect();

    let mut t = tracker();
    // Half-open and closed states are not restored.
    let mut half_open = full.clone();
    half_open.key.peer_port = 1;
    half_open.phase = Phase::Handshake;
    let mut closed = full.clone();
    closed.key.peer_port = 2;
    closed.phase = Phase::Closed;
    t.restore(saved.clone().into_iter().chain([half_open, closed]));
    assert_eq!(t.len(), 1);
    assert_eq!(t.snapshot(), vec![Record::Full(saved[0].clone())]);
    // The peer acks 3 bytes: the first packet after the restart is a normal Sync.
    let out = t
        .on_packet(&seg().seq(401).ack(1004).win(900).build(), NOW + 50)
        .expect("valid");
    let [Record::Sync(sync)] = out.records.as_slice() else {
        panic!("{:?}", out.records);
    };
    assert_eq!((sync.snd_una, sync.peer_window), (1004, 900));
    assert_eq!(
        t.session(&key()).map(|s| s.unacked.clone()),
        Some(b"lo".to_vec().into())
    );
}

#[test]
fn snapshot_is_sorted_and_leaves_out_half_open_sessions() {
    let mut t = tracker();
    for port in [3000u16, 1000, 2000] {
        let peer = seg().peer(PEER, port);
        t.on_packet(&peer.clone().syn().seq(10).build(), NOW)
            .expect("syn");
        t.on_packet(&peer.clone().from_us().syn().seq(50).ack(11).build(), NOW)
            .expect("synack");
        if port != 2000 {
            t.on_packet(&peer.seq(11).ack(51).build(), NOW)
                .expect("ack");
        }
    }
    let ports: Vec<u16> = t.snapshot().iter().map(|r| r.key().peer_port).collect();
    assert_eq!(ports, vec![1000, 3000]);
    assert_eq!(t.len(), 3);
}
