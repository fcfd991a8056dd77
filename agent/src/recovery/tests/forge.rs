//! The forged SYN and third ACK, and recognising the app kernel's SYN-ACK.

use super::*;
use crate::recovery::forge::{
    forged_ack, forged_syn, parse_synack, syn_seq, ForgeError, SynAck, DEFAULT_MSS,
};
use crate::session::tracker::PacketError;
use crate::tcp::options::{OptionError, TcpOptions, Timestamps};
use crate::test_support::segment::{seg, PEER, PEER_PORT, PORT, VIP};

fn peer() -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(PEER), PEER_PORT)
}

fn local() -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(VIP), PORT)
}

#[test]
fn syn_has_exact_fields_and_linux_option_layout() {
    let s = state();
    let v = view(&forged_syn(&s));
    assert_eq!(v.src, peer());
    assert_eq!(v.dst, local());
    assert_eq!(v.ttl, 64);
    assert!(v.dont_fragment);
    assert_eq!(v.seq, RCV_NXT - 1);
    assert_eq!(v.ack, None);
    assert!(v.syn && !v.fin && !v.rst && !v.psh);
    // 1000 << 7 does not fit: clamped (a SYN's window is never scaled).
    assert_eq!(v.window, 65_535);
    assert!(v.payload.is_empty());
    #[rustfmt::skip]
    let expected = [
        2, 4, 0x05, 0xb4,                   // MSS 1460
        4, 2, 8, 10,                        // SACK-permitted, timestamps
        0, 0, 0x1b, 0x58,                   // TSval 7000
        0, 0, 0, 0,                         // TSecr 0
        1, 3, 3, 7,                         // NOP, wscale 7
    ];
    assert_eq!(v.options, expected);
}

#[test]
fn syn_without_negotiated_options_has_none() {
    let v = view(&forged_syn(&bare_state()));
    assert!(v.options.is_empty(), "{:?}", v.options);
    // No scaling: the raw window as it is.
    assert_eq!(v.window, 1_000);
    assert_eq!(v.seq, RCV_NXT - 1);
}

#[test]
fn syn_options_for_every_combination() {
    for mss in [0u16, 536, 9_000] {
        for wscale in [None, Some(0), Some(7), Some(14)] {
            for sack_permitted in [false, true] {
                for timestamps in [false, true] {
                    let mut s = state();
                    s.negotiated = Negotiated {
                        peer_mss: mss,
                        our_mss: 1_400,
                        peer_wscale: wscale,
                        our_wscale: wscale.map(|_| 5),
                        sack_permitted,
                        timestamps,
                    };
                    let v = view(&forged_syn(&s));
                    assert_eq!(v.options.len() % 4, 0);
                    assert!(v.options.len() <= 20);
                    assert_eq!(
                        options_of(&v),
                        TcpOptions {
                            mss: (mss != 0).then_some(mss),
                            wscale,
                            sack_permitted,
                            timestamps: timestamps.then_some(Timestamps {
                                tsval: PEER_TSVAL,
                                tsecr: 0
                            }),
                            sack_blocks: 0,
                        },
                        "mss {mss} ws {wscale:?} sack {sack_permitted} ts {timestamps}"
                    );
                    // etherparse reads the same options.
                    let p = forged_syn(&s);
                    let ip = etherparse::Ipv4Slice::from_slice(&p).expect("ip");
                    let tcp = etherparse::TcpSlice::from_slice(ip.payload().payload).expect("tcp");
                    assert!(tcp.options_iterator().all(|o| o.is_ok()));
                }
            }
        }
    }
}

#[test]
fn syn_window_is_peer_window_in_bytes_up_to_65535() {
    let mut s = state();
    s.peer_window = 300;
    s.negotiated.peer_wscale = Some(2);
    assert_eq!(view(&forged_syn(&s)).window, 1_200);
    s.peer_window = 0;
    assert_eq!(view(&forged_syn(&s)).window, 0);
    s.peer_window = u16::MAX;
    s.negotiated.peer_wscale = Some(14);
    assert_eq!(view(&forged_syn(&s)).window, u16::MAX);
}

#[test]
fn syn_seq_wraps_below_zero() {
    let mut s = state();
    s.rcv_nxt = 0;
    assert_eq!(syn_seq(&s), u32::MAX);
    assert_eq!(view(&forged_syn(&s)).seq, u32::MAX);
    s.rcv_nxt = 1;
    assert_eq!(view(&forged_syn(&s)).seq, 0);
}

#[test]
fn an_acked_peer_fin_is_replayed_on_the_third_ack() {
    let mut s = state();
    s.phase = Phase::PeerClosed;
    s.peer_fin = Some(RCV_NXT - 1);
    assert_eq!(syn_seq(&s), RCV_NXT - 2);
    let syn = view(&forged_syn(&s));
    assert_eq!(syn.seq, RCV_NXT - 2);
    let synack_pkt = seg().from_us().syn().seq(NEW_ISN).ack(RCV_NXT - 1).build();
    let sa = parse_synack(&synack_pkt, &s).expect("SYN-ACK");
    let ack = view(&forged_ack(&s, &sa));
    assert_eq!(ack.seq, RCV_NXT - 1);
    assert!(ack.fin);
    assert_eq!(ack.ack, Some(NEW_ISN + 1));
    // The app's receive side ends where ours did: FIN counted.
    assert_eq!(ack.seq.wrapping_add(1), s.rcv_nxt);

    // A FIN seen but not acknowledged yet: the peer will retransmit it itself.
    s.peer_fin = Some(RCV_NXT);
    s.phase = Phase::PeerClosed;
    assert_eq!(syn_seq(&s), RCV_NXT - 1);
    assert!(!view(&forged_ack(&s, &synack())).fin);
}

#[test]
fn synack_is_read() {
    let s = state();
    let p = seg()
        .from_us()
        .syn()
        .seq(NEW_ISN)
        .ack(RCV_NXT)
        .win(64_240)
        .mss(1_400)
        .sack_perm()
        .ts(APP_TSVAL, PEER_TSVAL)
        .wscale(9)
        .build();
    assert_eq!(
        parse_synack(&p, &s),
        Ok(SynAck {
            new_isn: NEW_ISN,
            wscale: Some(9),
            mss: 1_400,
            tsval: Some(APP_TSVAL),
            window: 64_240,
        })
    );
}

#[test]
fn synack_defaults_and_clamps() {
    let s = state();
    let p = seg().from_us().syn().seq(u32::MAX).ack(RCV_NXT).build();
    assert_eq!(
        parse_synack(&p, &s),
        Ok(SynAck {
            new_isn: u32::MAX,
            wscale: None,
            mss: DEFAULT_MSS,
            tsval: None,
            window: 1_024,
        })
    );
    let p = seg().from_us().syn().seq(1).ack(RCV_NXT).wscale(15).build();
    assert_eq!(parse_synack(&p, &s).map(|sa| sa.wscale), Ok(Some(14)));
}

#[test]
fn synack_of_another_session_or_direction_is_refused() {
    let s = state();
    let ok = || seg().from_us().syn().seq(NEW_ISN).ack(RCV_NXT);
    for p in [
        ok().peer(PEER, PEER_PORT + 1).build(),
        ok().peer([192, 0, 2, 8], PEER_PORT).build(),
        ok().local(VIP, PORT + 1).build(),
        ok().local([10, 0, 0, 101], PORT).build(),
        ok().from_peer().build(),
    ] {
        assert_eq!(parse_synack(&p, &s), Err(ForgeError::WrongSession));
    }
}

#[test]
fn synack_needs_syn_ack_without_rst_and_the_right_ack() {
    let s = state();
    for p in [
        seg().from_us().seq(NEW_ISN).ack(RCV_NXT).build(),
        seg().from_us().syn().seq(NEW_ISN).build(),
        seg()
            .from_us()
            .syn()
            .rst()
            .seq(NEW_ISN)
            .ack(RCV_NXT)
            .build(),
    ] {
        assert_eq!(parse_synack(&p, &s), Err(ForgeError::NotSynAck));
    }
    let p = seg().from_us().syn().seq(NEW_ISN).ack(RCV_NXT + 1).build();
    assert_eq!(
        parse_synack(&p, &s),
        Err(ForgeError::WrongAck {
            expected: RCV_NXT,
            got: RCV_NXT + 1
        })
    );
}

#[test]
fn malformed_synack_is_an_error() {
    let s = state();
    let good = seg()
        .from_us()
        .syn()
        .seq(NEW_ISN)
        .ack(RCV_NXT)
        .mss(1460)
        .build();
    for n in 0..good.len() {
        assert!(
            matches!(parse_synack(&good[..n], &s), Err(ForgeError::Malformed(_))),
            "truncated to {n}"
        );
    }
    let bad_options = seg()
        .from_us()
        .syn()
        .seq(NEW_ISN)
        .ack(RCV_NXT)
        .raw_options(&[2, 3, 0, 0])
        .build();
    assert_eq!(
        parse_synack(&bad_options, &s),
        Err(ForgeError::Malformed(PacketError::BadOption(
            OptionError::BadLength {
                kind: 2,
                offset: 0,
                len: 3
            }
        )))
    );
}

#[test]
fn ack_has_exact_fields() {
    let s = state();
    let v = view(&forged_ack(&s, &synack()));
    assert_eq!(v.src, peer());
    assert_eq!(v.dst, local());
    assert!(v.dont_fragment);
    assert_eq!(v.seq, RCV_NXT);
    assert_eq!(v.ack, Some(NEW_ISN + 1));
    assert!(!v.syn && !v.fin && !v.rst);
    assert_eq!(v.window, s.peer_window);
    assert!(v.payload.is_empty());
    #[rustfmt::skip]
    let expected = [
        1, 1, 8, 10,
        0, 0, 0x1b, 0x58,                   // TSval = peer_tsval 7000
        0, 0x01, 0xe2, 0x40,                // TSecr = SYN-ACK's TSval 123456
    ];
    assert_eq!(v.options, expected);
}

#[test]
fn ack_without_timestamps_and_at_the_wrap() {
    let mut s = bare_state();
    s.rcv_nxt = 0;
    let sa = SynAck {
        new_isn: u32::MAX,
        tsval: None,
        wscale: None,
        ..synack()
    };
    let v = view(&forged_ack(&s, &sa));
    assert_eq!(v.seq, 0);
    assert_eq!(v.ack, Some(0));
    assert!(v.options.is_empty());
    // Timestamps negotiated, but the app kernel declined them: none on the ACK.
    let v = view(&forged_ack(&state(), &sa));
    assert!(v.options.is_empty());
    // The app kernel sent them, but the old session had none: none either.
    let v = view(&forged_ack(&bare_state(), &synack()));
    assert!(v.options.is_empty());
}

#[test]
fn forged_packets_feed_the_tracker_as_a_handshake() {
    // The forged SYN, the app's SYN-ACK and the forged ACK make a handshake the
    // session tracker accepts, with the same negotiated options as the original.
    use crate::session::tracker::{Tracker, TrackerLimits};
    let s = state();
    let mut t = Tracker::new(Ipv4Addr::from(VIP), &[PORT], TrackerLimits::default());
    t.on_packet(&forged_syn(&s), 0).expect("SYN");
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
    t.on_packet(&sa_pkt, 0).expect("SYN-ACK");
    let sa = parse_synack(&sa_pkt, &s).expect("parse");
    t.on_packet(&forged_ack(&s, &sa), 0).expect("ACK");
    let restored = t.session(&key()).expect("tracked");
    assert_eq!(restored.phase, Phase::Established);
    assert_eq!(restored.rcv_nxt, s.rcv_nxt);
    assert_eq!(restored.negotiated, s.negotiated);
    assert_eq!(restored.peer_tsval, s.peer_tsval);
}
