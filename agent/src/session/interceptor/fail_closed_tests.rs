//! Trace tests of the core with the queue's own packet type ([`QueuedPacket`]): a
//! packet the core cannot parse or did not see whole is dropped and counted, never
//! accepted; GSO super-packets with a partial checksum (`NFQA_SKB_CSUMNOTREADY`) are
//! tracked whole, passed untouched, and carry a complete checksum when rewritten; the
//! bounds (held bytes, a session's unacknowledged output) drop new output, counted,
//! and never let it leave unreplicated.

use super::machine::{CoreConfig, Decision, Interceptor, Output};
use super::queue::{QueuedPacket, SKB_CSUMNOTREADY, SKB_GSO};
use super::{InterceptorStats, QueueCommand};
use crate::session::tracker::TrackerLimits;
use crate::tcp::wire::{self, ChecksumState, Layout};
use crate::test_support::segment::{seg, Seg, PORT, VIP};
use nonstop_shared::session::{Record, SessionState};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ISN_PEER: u32 = 400;
const ISN_US: u32 = 1000;

struct Core {
    core: Interceptor<QueuedPacket>,
    stats: Arc<InterceptorStats>,
    now: Instant,
    next_id: u32,
}

impl Core {
    fn master(sync: bool) -> Core {
        Core::with_limits(sync, TrackerLimits::default())
    }

    fn with_limits(sync: bool, limits: TrackerLimits) -> Core {
        let stats = Arc::new(InterceptorStats::default());
        let now = Instant::now();
        let core = Interceptor::new(
            CoreConfig {
                vip: Ipv4Addr::from(VIP),
                ports: vec![PORT],
                limits,
                restored: Vec::new(),
                first_seq: 1,
            },
            Arc::clone(&stats),
            Box::new(|_ports: &[u16]| super::machine::AcceptQueues {
                queued: 0,
                limit: 128,
            }),
            now,
        );
        let mut c = Core {
            core,
            stats,
            now,
            next_id: 0,
        };
        c.command(QueueCommand::SetRole(true));
        c.command(QueueCommand::SetHolding(sync));
        c
    }

    fn command(&mut self, command: QueueCommand) {
        self.core
            .handle_command(command, self.now, 1_700_000_000_000);
    }

    /// Feeds a packet as the queue delivers it; returns its id.
    fn feed(&mut self, payload: Vec<u8>, original_len: Option<u32>, skb_info: u32) -> u32 {
        self.next_id += 1;
        let packet = QueuedPacket {
            id: self.next_id,
            mark: 0,
            payload,
            modified: false,
            original_len,
            skb_info,
        };
        self.core.handle_packet(packet, self.now, 1_700_000_000_000);
        self.next_id
    }

    fn packet(&mut self, s: Seg) -> u32 {
        self.feed(s.build(), None, 0)
    }

    /// Verdicts out: (id, decision, packet as verdicted).
    fn out(&mut self) -> Vec<(u32, Decision, QueuedPacket)> {
        self.core
            .handle_timeout(self.now + Duration::ZERO, 1_700_000_000_000);
        std::iter::from_fn(|| self.core.poll_output())
            .filter_map(|o| match o {
                Output::Verdict(p, d) => Some((p.id, d, p)),
                _ => None,
            })
            .collect()
    }

    fn handshake(&mut self) {
        self.packet(seg().syn().seq(ISN_PEER).mss(1460));
        self.packet(
            seg()
                .from_us()
                .syn()
                .seq(ISN_US)
                .ack(ISN_PEER + 1)
                .mss(1460),
        );
        self.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1));
        assert!(self.out().iter().all(|(_, d, _)| *d == Decision::Accept));
    }

    fn state(&mut self) -> SessionState {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.command(QueueCommand::Sessions(tx));
        rx.try_recv().expect("answered").remove(0)
    }
}

/// `packet` with its TCP checksum replaced by the pseudo-header sum, as Linux leaves
/// it on a `CHECKSUM_PARTIAL` skb (the NIC or the GSO code completes it).
fn partial(mut packet: Vec<u8>) -> Vec<u8> {
    let l = Layout::of(&packet).expect("layout");
    let mut sum: u32 = 0;
    for pair in packet[12..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum += 6 + (l.total - l.ip_len) as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let at = l.ip_len + 16;
    packet[at..at + 2].copy_from_slice(&(sum as u16).to_be_bytes());
    assert_eq!(wire::checksum_state(&packet, &l), ChecksumState::Partial);
    packet
}

fn window(packet: &[u8]) -> u16 {
    let l = Layout::of(packet).expect("layout");
    u16::from_be_bytes([packet[l.ip_len + 14], packet[l.ip_len + 15]])
}

#[test]
fn a_truncated_packet_is_dropped_and_counted_never_accepted() {
    let mut c = Core::master(false);
    c.handshake();
    let whole = ours_gso(0, 1000);
    let mut cut = whole.clone();
    cut.truncate(600);
    let id = c.feed(cut, Some(whole.len() as u32), SKB_GSO);
    assert_eq!(
        c.out().iter().map(|(i, d, _)| (*i, *d)).collect::<Vec<_>>(),
        vec![(id, Decision::Drop)]
    );
    assert_eq!(c.stats.truncated.load(Ordering::Relaxed), 1);
    // Nothing of it reached the replica.
    assert_eq!(c.state().snd_nxt, ISN_US + 1);
}

#[test]
fn unparsable_packets_are_dropped_and_counted() {
    let mut c = Core::master(false);
    c.handshake();
    let good = seg()
        .seq(ISN_PEER + 1)
        .ack(ISN_US + 1)
        .payload(b"hi")
        .build();
    // Not IPv4; IPv4 but cut inside the TCP header; TCP options running past the
    // header; a total length beyond the bytes captured.
    let mut v6 = good.clone();
    v6[0] = 0x65;
    let short = good[..30].to_vec();
    let bad_options = seg()
        .seq(ISN_PEER + 1)
        .ack(ISN_US + 1)
        .raw_options(&[2, 40, 0, 0])
        .build();
    let mut long = good.clone();
    long[2..4].copy_from_slice(&2000u16.to_be_bytes());
    let ids: Vec<u32> = [v6, short, bad_options, long]
        .into_iter()
        .map(|p| c.feed(p, None, 0))
        .collect();
    let out = c.out();
    assert_eq!(
        out.iter().map(|(i, d, _)| (*i, *d)).collect::<Vec<_>>(),
        ids.iter().map(|i| (*i, Decision::Drop)).collect::<Vec<_>>()
    );
    assert_eq!(c.stats.malformed.load(Ordering::Relaxed), 4);
    assert_eq!(c.state().rcv_nxt, ISN_PEER + 1, "none of it was tracked");
}

/// Our GSO super-packet: `n` bytes at offset `at` of our stream, partial checksum.
fn ours_gso(at: u32, n: usize) -> Vec<u8> {
    partial(
        seg()
            .from_us()
            .seq(ISN_US + 1 + at)
            .ack(ISN_PEER + 1)
            .payload(&vec![b'g'; n])
            .build(),
    )
}

#[test]
fn a_gso_super_packet_is_tracked_whole_and_passed_untouched() {
    let mut c = Core::master(true);
    c.handshake();
    c.core.poll_record();
    while c.core.poll_record().is_some() {}
    let big = ours_gso(0, 60_000);
    let id = c.feed(big.clone(), None, SKB_GSO | SKB_CSUMNOTREADY);
    // Held (sync) until the backup has the 60 000 bytes.
    assert!(c.out().is_empty());
    let records: Vec<_> = std::iter::from_fn(|| c.core.poll_record()).collect();
    let (seq, Record::Sync(sync)) = records.last().expect("a record").clone() else {
        panic!("{records:?}");
    };
    assert_eq!(sync.data.len(), 60_000);
    c.command(QueueCommand::Acked(seq));
    let out = c.out();
    assert_eq!(out.len(), 1);
    let (oid, decision, packet) = &out[0];
    assert_eq!((*oid, *decision), (id, Decision::Accept));
    // Not rewritten: its partial checksum is left for the kernel to complete.
    assert!(!packet.modified);
    assert_eq!(packet.payload, big);
    assert_eq!(c.state().snd_nxt, ISN_US + 1 + 60_000);
}

#[test]
fn a_rewritten_gso_packet_with_a_partial_checksum_leaves_with_a_complete_one() {
    let mut c = Core::master(false);
    c.handshake();
    c.command(QueueCommand::Freeze(true));
    c.out();
    let id = c.feed(ours_gso(0, 30_000), None, SKB_GSO | SKB_CSUMNOTREADY);
    let out = c.out();
    let (oid, decision, packet) = out.last().expect("a verdict").clone();
    assert_eq!((oid, decision), (id, Decision::Accept));
    assert!(packet.modified, "the zero window is written into it");
    assert_eq!(window(&packet.payload), 0);
    let l = Layout::of(&packet.payload).expect("layout");
    assert_eq!(
        wire::checksum_state(&packet.payload, &l),
        ChecksumState::Valid
    );
}

#[test]
fn output_beyond_the_sessions_unacked_bound_waits_in_the_service_never_leaves_unreplicated() {
    let mut c = Core::with_limits(
        false,
        TrackerLimits {
            max_unacked_bytes: 10_000,
            ..TrackerLimits::default()
        },
    );
    c.handshake();
    let first = c.feed(ours_gso(0, 8_000), None, SKB_GSO | SKB_CSUMNOTREADY);
    let over = c.feed(ours_gso(8_000, 4_000), None, SKB_GSO | SKB_CSUMNOTREADY);
    let decisions: Vec<_> = c.out().iter().map(|(i, d, _)| (*i, *d)).collect();
    assert_eq!(
        decisions,
        vec![(first, Decision::Accept), (over, Decision::Drop)]
    );
    assert_eq!(c.stats.unacked_bound_drops.load(Ordering::Relaxed), 1);
    assert_eq!(
        c.state().snd_nxt,
        ISN_US + 1 + 8_000,
        "the dropped bytes were not sent"
    );
    // The peer acknowledges; the service sends the rest again: room now.
    c.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1 + 8_000));
    let again = c.feed(ours_gso(8_000, 4_000), None, SKB_GSO | SKB_CSUMNOTREADY);
    assert!(c
        .out()
        .iter()
        .any(|(i, d, _)| *i == again && *d == Decision::Accept));
    assert_eq!(c.state().unacked.len(), 4_000);
}

#[test]
fn held_bytes_are_bounded_and_output_beyond_is_dropped_until_acks_free_room() {
    let mut c = Core::master(true);
    c.core.set_max_held_bytes(50_000);
    c.handshake();
    let a = c.feed(ours_gso(0, 30_000), None, SKB_GSO);
    let b = c.feed(ours_gso(30_000, 30_000), None, SKB_GSO);
    let decisions: Vec<_> = c.out().iter().map(|(i, d, _)| (*i, *d)).collect();
    assert_eq!(
        decisions,
        vec![(b, Decision::Drop)],
        "a is held, b overflows"
    );
    assert_eq!(c.stats.overflow_drops.load(Ordering::Relaxed), 1);
    assert!(c.stats.held_bytes.load(Ordering::Relaxed) >= 30_000);
    let last = std::iter::from_fn(|| c.core.poll_record())
        .last()
        .expect("records")
        .0;
    c.command(QueueCommand::Acked(last));
    let decisions: Vec<_> = c.out().iter().map(|(i, d, _)| (*i, *d)).collect();
    assert_eq!(decisions, vec![(a, Decision::Accept)]);
    assert_eq!(c.stats.held_bytes.load(Ordering::Relaxed), 0);
}
