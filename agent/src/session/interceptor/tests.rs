//! Trace tests of the sans-IO [`Interceptor`], smoltcp style: exact segments in (built
//! with `test_support::segment`), exact verdicts, injected segments and records out.

use super::machine::{CoreConfig, Decision, Interceptor, Output, Packet};
use super::{InterceptorStats, QueueCommand, INJECT_MARK};
use crate::recovery::divergence::HOLE_TIMEOUT;
use crate::session::interceptor::close_quarantine::CLOSE_GRACE;
use crate::session::tracker::TrackerLimits;
use crate::test_support::segment::{seg, Seg, PEER, PEER_PORT, PORT, VIP};
use nonstop_shared::session::{Phase, Record, SessionState};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A queued packet: an id to follow it by, its bytes and its mark.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pkt {
    id: u32,
    bytes: Vec<u8>,
    mark: u32,
}

impl Packet for Pkt {
    fn payload(&self) -> &[u8] {
        &self.bytes
    }

    fn set_payload(&mut self, packet: Vec<u8>) {
        self.bytes = packet;
    }

    fn mark(&self) -> u32 {
        self.mark
    }
}

/// What came out, simplified for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Accept(u32),
    Drop(u32),
    Inject(Vec<u8>),
    ForgetInjections,
    Continue(Vec<i32>),
}

/// An interceptor, its clock and a switch for the service's accept queue.
struct Trace {
    core: Interceptor<Pkt>,
    stats: Arc<InterceptorStats>,
    now: Instant,
    next_id: u32,
    accepted_all: Arc<AtomicBool>,
    /// Payloads of the verdicts seen, by id (translated or rewritten packets).
    last_payload: Vec<(u32, Vec<u8>)>,
}

const ISN_PEER: u32 = 400;
const ISN_US: u32 = 1000;

impl Trace {
    /// A master; `sync`: holding on.
    fn master(sync: bool) -> Trace {
        let mut t = Trace::new(Vec::new());
        t.command(QueueCommand::SetRole(true));
        t.command(QueueCommand::SetHolding(sync));
        t
    }

    fn new(restored: Vec<SessionState>) -> Trace {
        let stats = Arc::new(InterceptorStats::default());
        let accepted_all = Arc::new(AtomicBool::new(false));
        let probe = Arc::clone(&accepted_all);
        let now = Instant::now();
        let core = Interceptor::new(
            CoreConfig {
                vip: Ipv4Addr::from(VIP),
                ports: vec![PORT],
                limits: TrackerLimits::default(),
                restored,
                first_seq: 1,
            },
            Arc::clone(&stats),
            Box::new(move |_ports: &[u16]| super::machine::AcceptQueues {
                queued: u64::from(!probe.load(Ordering::Relaxed)),
                limit: 128,
            }),
            now,
        );
        Trace {
            core,
            stats,
            now,
            next_id: 0,
            accepted_all,
            last_payload: Vec::new(),
        }
    }

    fn ms(&self) -> u64 {
        1_700_000_000_000
    }

    /// Feeds a packet; returns its id.
    fn packet(&mut self, segment: Seg) -> u32 {
        self.packet_marked(segment, 0)
    }

    fn packet_marked(&mut self, segment: Seg, mark: u32) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let pkt = Pkt {
            id,
            bytes: segment.build(),
            mark,
        };
        let ms = self.ms();
        self.core.handle_packet(pkt, self.now, ms);
        id
    }

    fn command(&mut self, command: QueueCommand) {
        let ms = self.ms();
        self.core.handle_command(command, self.now, ms);
    }

    /// Lets `dt` pass and runs the timers.
    fn tick(&mut self, dt: Duration) {
        self.now += dt;
        let ms = self.ms();
        self.core.handle_timeout(self.now, ms);
    }

    fn out(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(o) = self.core.poll_output() {
            out.push(match o {
                Output::Verdict(p, d) => {
                    self.last_payload.push((p.id, p.bytes.clone()));
                    match d {
                        Decision::Accept => Out::Accept(p.id),
                        Decision::Drop => Out::Drop(p.id),
                    }
                }
                Output::Inject(bytes) => Out::Inject(bytes),
                Output::ForgetInjections => Out::ForgetInjections,
                Output::Continue(pids) => Out::Continue(pids),
            });
        }
        out
    }

    fn records(&mut self) -> Vec<(u64, Record)> {
        std::iter::from_fn(|| self.core.poll_record()).collect()
    }

    /// The SYN, SYN-ACK, ACK of a session; every packet accepted at once.
    fn handshake(&mut self) {
        let a = self.packet(seg().syn().seq(ISN_PEER).mss(1460));
        let b = self.packet(
            seg()
                .from_us()
                .syn()
                .seq(ISN_US)
                .ack(ISN_PEER + 1)
                .mss(1460),
        );
        let c = self.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1));
        self.tick(Duration::ZERO);
        assert_eq!(
            self.out(),
            vec![Out::Accept(a), Out::Accept(b), Out::Accept(c)]
        );
    }

    fn state(&mut self) -> SessionState {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.command(QueueCommand::Sessions(tx));
        rx.try_recv()
            .expect("answered at once")
            .into_iter()
            .next()
            .expect("one session")
    }
}

/// Our data segment: `n` bytes at offset `at` of our stream.
fn ours(at: u32, n: usize) -> Seg {
    seg()
        .from_us()
        .seq(ISN_US + 1 + at)
        .ack(ISN_PEER + 1)
        .payload(&vec![b'x'; n])
}

fn injected(out: &[Out]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            Out::Inject(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// TCP flags byte of an IPv4 packet without options.
fn flags(packet: &[u8]) -> u8 {
    packet[20 + 13]
}

/// TCP window field of an IPv4 packet (20-byte IP header).
fn window(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[20 + 14], packet[20 + 15]])
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;

#[test]
fn async_mode_passes_every_packet_at_once_and_numbers_the_records() {
    let mut t = Trace::master(false);
    t.handshake();
    let data = t.packet(ours(0, 10));
    t.tick(Duration::ZERO);
    assert_eq!(t.out(), vec![Out::Accept(data)]);
    let records = t.records();
    let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    assert!(matches!(records.first(), Some((1, Record::Full(_)))));
    assert!(matches!(records.last(), Some((_, Record::Sync(s))) if s.data.len() == 10));
}

#[test]
fn sync_mode_holds_output_and_releases_it_in_order_under_out_of_order_acks() {
    let mut t = Trace::master(true);
    t.handshake();
    let first = t.records().last().map(|(s, _)| *s).expect("full record");
    t.command(QueueCommand::Acked(first));
    let a = t.packet(ours(0, 10));
    let b = t.packet(ours(10, 10));
    let c = t.packet(ours(20, 10));
    let seqs: Vec<u64> = t.records().iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), 3);
    t.tick(Duration::ZERO);
    assert_eq!(t.out(), vec![], "nothing leaves before the backup has it");
    assert_eq!(t.stats.held.load(Ordering::Relaxed), 3);
    // The ack of b's record overtakes a's: a and b leave, in order; c waits.
    t.command(QueueCommand::Acked(seqs[1]));
    t.command(QueueCommand::Acked(seqs[0]));
    t.tick(Duration::ZERO);
    assert_eq!(t.out(), vec![Out::Accept(a), Out::Accept(b)]);
    t.command(QueueCommand::Acked(seqs[2]));
    t.tick(Duration::ZERO);
    assert_eq!(t.out(), vec![Out::Accept(c)]);
    assert_eq!(t.stats.held.load(Ordering::Relaxed), 0);
}

#[test]
fn turning_holding_off_releases_everything_held_in_order() {
    let mut t = Trace::master(true);
    t.handshake();
    let a = t.packet(ours(0, 5));
    let b = t.packet(ours(5, 5));
    assert_eq!(t.out(), vec![]);
    t.command(QueueCommand::SetHolding(false));
    assert_eq!(t.out(), vec![Out::Accept(a), Out::Accept(b)]);
}

#[test]
fn a_demoted_node_drops_what_it_held_and_every_later_outbound_packet() {
    let mut t = Trace::master(true);
    t.handshake();
    let held = t.packet(ours(0, 5));
    assert_eq!(t.out(), vec![]);
    t.command(QueueCommand::SetRole(false));
    assert_eq!(t.out(), vec![Out::Drop(held), Out::ForgetInjections]);
    assert_eq!(
        t.core.sessions(),
        0,
        "the sessions belong to the other node now"
    );
    let late = t.packet(ours(5, 5));
    // The peers' packets too: the old service must not take input the new master
    // gets, and a kernel without the socket would reset the session.
    let inbound = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(b"hi"));
    assert_eq!(t.out(), vec![Out::Drop(late), Out::Drop(inbound)]);
    assert_eq!(t.stats.not_master_drops.load(Ordering::Relaxed), 2);
}

#[test]
fn a_new_master_drops_peers_packets_until_the_sessions_are_parked() {
    let mut t = Trace::master(true);
    t.command(QueueCommand::SetRole(false));
    t.out();
    // Promoted: the VIP is up before the replicated sessions are parked here.
    t.command(QueueCommand::SetRole(true));
    let early = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(b"hi"));
    assert_eq!(
        t.out(),
        vec![Out::Drop(early)],
        "no kernel RST for a session about to be restored"
    );
    // A new connection's SYN is not held back.
    let syn = t.packet(seg().syn().seq(7).peer([198, 18, 0, 11], 40_001));
    assert_eq!(t.out(), vec![Out::Accept(syn)]);
    t.command(QueueCommand::ServiceReady);
    let later = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(b"hi"));
    assert_eq!(t.out(), vec![Out::Accept(later)]);
}

#[test]
fn forget_sessions_empties_only_a_node_that_is_not_master() {
    let mut t = Trace::master(false);
    t.handshake();
    t.command(QueueCommand::ForgetSessions);
    assert_eq!(t.core.sessions(), 1, "a master keeps its sessions");
    let mut backup = Trace::new(vec![t.state()]);
    assert_eq!(backup.core.sessions(), 1, "seeded from disk");
    backup.command(QueueCommand::ForgetSessions);
    assert_eq!(backup.core.sessions(), 0);
}

#[test]
fn a_close_waits_out_the_grace_then_leaves_with_what_queued_behind_it() {
    let mut t = Trace::master(false);
    t.handshake();
    let fin = t.packet(seg().from_us().fin().seq(ISN_US + 1).ack(ISN_PEER + 1));
    let after = t.packet(seg().from_us().seq(ISN_US + 2).ack(ISN_PEER + 1));
    t.tick(CLOSE_GRACE / 2);
    assert_eq!(t.out(), vec![]);
    assert!(t.core.poll_timeout(t.now) <= CLOSE_GRACE / 2 + Duration::from_millis(1));
    t.tick(CLOSE_GRACE / 2);
    assert_eq!(t.out(), vec![Out::Accept(fin), Out::Accept(after)]);
}

/// A session tracked on a master, then taken over by a fresh node (Park): its state.
fn taken_over(sync: bool) -> (Trace, SessionState) {
    let mut old = Trace::master(false);
    old.handshake();
    let state = old.state();
    let mut t = Trace::master(sync);
    t.command(QueueCommand::Park {
        states: vec![state.clone()],
        promoted_at: t.now,
    });
    (t, state)
}

/// The service kernel's SYN-ACK to a forged SYN of `state`.
fn synack(state: &SessionState, isn: u32) -> Seg {
    seg().from_us().syn().seq(isn).ack(state.rcv_nxt).mss(1460)
}

#[test]
fn parked_sessions_drop_the_peers_packets_until_the_service_listens_then_restore() {
    let (mut t, state) = taken_over(false);
    // Announced to the backup in full.
    assert!(matches!(t.records().as_slice(), [(1, Record::Full(s))] if s.key == state.key));
    let early = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(b"early"));
    assert_eq!(t.out(), vec![Out::Drop(early)]);
    t.command(QueueCommand::ServiceReady);
    let out = t.out();
    let syns = injected(&out);
    assert_eq!(syns.len(), 1, "{out:?}");
    assert_eq!(
        flags(&syns[0]) & (SYN | 0x10),
        SYN,
        "a bare SYN from the peer"
    );
    assert_eq!(t.stats.restore_pending.load(Ordering::Relaxed), 1);
    // Our own forged SYN comes through the queue: delivered untouched.
    let forged = t.packet(seg().syn().seq(state.rcv_nxt - 1).mss(1460));
    assert_eq!(t.out(), vec![Out::Accept(forged)]);
    // The service answers: its SYN-ACK is dropped, the handshake completed for it.
    let answer = t.packet(synack(&state, 7000));
    let out = t.out();
    assert_eq!(out.last(), Some(&Out::Drop(answer)));
    let forged_ack = injected(&out);
    assert!(!forged_ack.is_empty());
    assert_eq!(t.stats.restored.load(Ordering::Relaxed), 1);
    // Restored, but not accepted by the service yet: still pending (a switchover now
    // would meet a socket no process holds).
    assert_eq!(t.stats.restore_pending.load(Ordering::Relaxed), 1);
    t.packet_bytes(forged_ack[0].clone());
    t.accepted_all.store(true, Ordering::Relaxed);
    t.tick(Duration::from_millis(10));
    assert_eq!(t.stats.restore_pending.load(Ordering::Relaxed), 0);
}

#[test]
fn the_restore_barrier_holds_peer_input_until_the_batch_is_accepted() {
    let (mut t, state) = taken_over(false);
    t.command(QueueCommand::ServiceReady);
    t.out();
    t.packet(synack(&state, 7000));
    let out = t.out();
    let ack = injected(&out).into_iter().next().expect("forged ACK");
    // Peer data while the forged ACK has not come back through the queue.
    let data = t.packet(
        seg()
            .seq(state.rcv_nxt)
            .ack(state.snd_nxt)
            .payload(b"after takeover"),
    );
    t.tick(Duration::from_millis(10));
    assert_eq!(t.out(), vec![], "held at the barrier");
    // The forged ACK passes the queue (untouched, once).
    let back = t.packet_bytes(ack);
    assert_eq!(t.out(), vec![Out::Accept(back)]);
    // The service has not accepted yet: still held.
    t.tick(Duration::from_millis(10));
    assert_eq!(t.out(), vec![]);
    t.accepted_all.store(true, Ordering::Relaxed);
    t.tick(Duration::from_millis(10));
    assert_eq!(t.out(), vec![Out::Accept(data)]);
}

#[test]
fn a_restored_session_whose_peer_never_fills_its_hole_is_reset_on_both_sides() {
    let (mut t, state) = taken_over(false);
    t.command(QueueCommand::ServiceReady);
    t.out();
    t.packet(synack(&state, 7000));
    let ack = injected(&t.out()).into_iter().next().expect("forged ACK");
    t.packet_bytes(ack);
    t.accepted_all.store(true, Ordering::Relaxed);
    t.tick(Duration::from_millis(10));
    t.out();
    t.records();
    // Async mode: the peer's data starts 100 bytes beyond what the replica received.
    let beyond = t.packet(
        seg()
            .seq(state.rcv_nxt + 100)
            .ack(state.snd_nxt)
            .payload(b"after a hole"),
    );
    assert_eq!(t.out(), vec![Out::Accept(beyond)]);
    t.tick(HOLE_TIMEOUT);
    let out = t.out();
    let resets: Vec<_> = injected(&out)
        .into_iter()
        .filter(|p| flags(p) & RST != 0)
        .collect();
    assert_eq!(
        resets.len(),
        2,
        "one RST to the peer, one to the service: {out:?}"
    );
    assert!(
        matches!(t.records().last(), Some((_, Record::Delete(k))) if *k == state.key),
        "deleted here and on the backup"
    );
    assert_eq!(t.stats.sessions_reset.load(Ordering::Relaxed), 1);
    // The service's late packets of that session are dropped quietly.
    let late = t.packet(synack(&state, 7000).payload(b""));
    assert_eq!(t.out(), vec![Out::Drop(late)]);
}

#[test]
fn closes_are_dropped_when_the_service_dies_and_its_sessions_wait_for_it() {
    let mut t = Trace::master(false);
    t.handshake();
    let fin = t.packet(seg().from_us().fin().seq(ISN_US + 1).ack(ISN_PEER + 1));
    assert_eq!(t.out(), vec![]);
    t.command(QueueCommand::AppDied);
    assert_eq!(t.out(), vec![Out::Drop(fin)]);
    assert_eq!(t.stats.app_deaths.load(Ordering::Relaxed), 1);
    assert_eq!(t.stats.closes_dropped.load(Ordering::Relaxed), 1);
    // Parked: the peer's packets are noted and dropped until the service listens.
    let peer = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(b"x"));
    assert_eq!(t.out(), vec![Out::Drop(peer)]);
    t.command(QueueCommand::ServiceReady);
    assert_eq!(
        injected(&t.out()).len(),
        1,
        "a forged SYN into the new service"
    );
}

#[test]
fn freeze_announces_a_zero_window_to_every_peer_and_thaw_reopens_it() {
    let mut t = Trace::master(false);
    t.handshake();
    t.command(QueueCommand::Freeze(true));
    let frozen = injected(&t.out());
    assert_eq!(frozen.len(), 1);
    assert_eq!(window(&frozen[0]), 0);
    // The service's own segments announce a zero window too while frozen.
    let data = t.packet(ours(0, 4));
    assert_eq!(t.out(), vec![Out::Accept(data)]);
    let sent = &t.last_payload.last().expect("verdict").1;
    assert_eq!(window(sent), 0);
    t.command(QueueCommand::Freeze(false));
    let thawed = injected(&t.out());
    assert_eq!(thawed.len(), 1);
    assert_ne!(window(&thawed[0]), 0);
}

#[test]
fn our_own_injected_segments_are_tracked_and_accepted_untouched() {
    let mut t = Trace::master(true);
    t.handshake();
    t.records();
    // Marked as ours: never held, even in sync mode.
    let id = t.packet_marked(ours(0, 3), INJECT_MARK);
    assert_eq!(t.out(), vec![Out::Accept(id)]);
    assert_eq!(t.records().len(), 1, "tracked");
}

#[test]
fn snapshot_and_sessions_answer_from_the_live_table() {
    let mut t = Trace::master(false);
    t.handshake();
    let last = t.records().last().map(|(s, _)| *s).expect("records");
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    t.command(QueueCommand::Snapshot(tx));
    let (upto, records) = rx.try_recv().expect("answered");
    assert_eq!(upto, last);
    assert!(matches!(records.as_slice(), [Record::Full(s)] if s.phase == Phase::Established));
    let state = t.state();
    assert_eq!(
        (state.key.peer_ip, state.key.peer_port),
        (Ipv4Addr::from(PEER), PEER_PORT)
    );
}

#[test]
fn the_event_log_hears_of_finished_restores() {
    let (mut t, state) = taken_over(false);
    let events = crate::events::EventLog::new("test");
    t.command(QueueCommand::SetEventLog(Arc::clone(&events)));
    t.command(QueueCommand::ServiceReady);
    t.packet(synack(&state, 7000));
    t.out();
    let (history, _) = events.subscribe();
    assert!(
        history.iter().any(|e| matches!(
            e.kind,
            nonstop_shared::control::EventKind::Restored {
                sessions: 1,
                failed: 0,
                ..
            }
        )),
        "{history:?}"
    );
}

#[test]
fn stop_drops_everything_held() {
    let mut t = Trace::master(true);
    t.handshake();
    let held = t.packet(ours(0, 5));
    t.command(QueueCommand::Stop);
    assert_eq!(t.out(), vec![Out::Drop(held)]);
}

impl Trace {
    /// Feeds raw bytes (an injected packet coming back through the queue).
    fn packet_bytes(&mut self, bytes: Vec<u8>) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let ms = self.ms();
        self.core
            .handle_packet(Pkt { id, bytes, mark: 0 }, self.now, ms);
        id
    }
}

#[test]
fn a_session_at_risk_is_reset_at_takeover_not_restored() {
    let mut old = Trace::master(false);
    old.handshake();
    let mut state = old.state();
    state.at_risk = true;
    let mut t = Trace::master(true);
    t.command(QueueCommand::Park {
        states: vec![state.clone()],
        promoted_at: t.now,
    });
    // An RST to the peer at exactly its next expected byte, the session deleted
    // everywhere, nothing parked or restored.
    let out = t.out();
    let rsts = injected(&out);
    assert_eq!(rsts.len(), 1, "{out:?}");
    assert_eq!(flags(&rsts[0]) & 0x04, 0x04, "an RST");
    assert!(matches!(t.records().as_slice(), [(_, Record::Delete(k))] if *k == state.key));
    assert_eq!(t.core.sessions(), 0);
    assert_eq!(t.stats.reset_at_risk.load(Ordering::Relaxed), 1);
    t.command(QueueCommand::ServiceReady);
    assert!(injected(&t.out()).is_empty(), "no forged SYN");
}

#[test]
fn sessions_holding_output_or_input_are_marked_at_risk_after_a_few_looks() {
    use crate::session::risk::Observation;
    let mut t = Trace::master(false);
    t.handshake();
    let key = t.state().key;
    t.records();
    let owing = Observation {
        key,
        send_queue: 0,
        not_sent: None,
        recv_queue: 10,
    };
    for _ in 1..crate::session::interceptor::machine::RISK_POLLS {
        t.command(QueueCommand::Observe(vec![owing]));
        assert_eq!(t.records(), vec![], "a few looks are a moment");
    }
    t.command(QueueCommand::Observe(vec![owing]));
    assert!(matches!(t.records().as_slice(), [(_, Record::Full(s))] if s.at_risk));
    assert_eq!(t.stats.sessions_at_risk.load(Ordering::Relaxed), 1);
    let clean = Observation {
        recv_queue: 0,
        ..owing
    };
    t.command(QueueCommand::Observe(vec![clean]));
    assert!(matches!(t.records().as_slice(), [(_, Record::Full(s))] if !s.at_risk));
    // Sealed for a hand-over: the peers' data is dropped from now on.
    t.command(QueueCommand::Seal);
    let late = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(b"late"));
    assert_eq!(t.out(), vec![Out::Drop(late)]);
    assert_eq!(t.stats.sessions_at_risk.load(Ordering::Relaxed), 0);
}

/// A restored session, its batch finished (the service accepted it): the peer's input
/// goes straight through, translated.
fn restored(service_isn: u32) -> (Trace, SessionState) {
    let (mut t, state) = taken_over(false);
    t.command(QueueCommand::ServiceReady);
    t.out();
    t.packet(synack(&state, service_isn));
    let out = t.out();
    let ack = injected(&out).into_iter().next().expect("forged ACK");
    t.packet_bytes(ack);
    t.accepted_all.store(true, Ordering::Relaxed);
    t.tick(Duration::from_millis(10));
    t.out();
    t.records();
    (t, state)
}

fn seq_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[24], packet[25], packet[26], packet[27]])
}

fn ack_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[28], packet[29], packet[30], packet[31]])
}

impl Trace {
    /// A handshake from the peer's `port` (every packet accepted); its session key.
    fn session_on(&mut self, port: u16) -> nonstop_shared::session::SessionKey {
        let a = self.packet(seg().syn().seq(ISN_PEER).mss(1460).peer(PEER, port));
        let b = self.packet(
            seg()
                .from_us()
                .syn()
                .seq(ISN_US)
                .ack(ISN_PEER + 1)
                .mss(1460)
                .peer(PEER, port),
        );
        let c = self.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).peer(PEER, port));
        self.tick(Duration::ZERO);
        assert_eq!(
            self.out(),
            vec![Out::Accept(a), Out::Accept(b), Out::Accept(c)]
        );
        self.records();
        self.core
            .tracker
            .sessions()
            .map(|s| s.key)
            .find(|k| k.peer_port == port)
            .expect("the session")
    }

    /// The bytes of the verdict on packet `id`.
    fn verdict_bytes(&self, id: u32) -> Vec<u8> {
        self.last_payload
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| b.clone())
            .expect("a verdict on the packet")
    }
}

#[test]
fn a_restored_sessions_close_is_translated_to_its_last_ack_and_fin_retransmission() {
    let (mut t, state) = restored(7000);
    // The service's space: its ISN 7000, so its next byte is 7001; the peer's is
    // `state.snd_nxt`.
    let delta = state.snd_nxt.wrapping_sub(7001);
    let peer_fin = t.packet(seg().seq(state.rcv_nxt).ack(state.snd_nxt).fin());
    assert_eq!(t.out(), vec![Out::Accept(peer_fin)]);
    assert_eq!(
        ack_of(&t.verdict_bytes(peer_fin)),
        7001,
        "ACK into the service's space"
    );
    let our_fin = t.packet(seg().from_us().seq(7001).ack(state.rcv_nxt + 1).fin());
    t.tick(CLOSE_GRACE + Duration::from_millis(1));
    assert_eq!(t.out(), vec![Out::Accept(our_fin)]);
    assert_eq!(
        seq_of(&t.verdict_bytes(our_fin)),
        7001u32.wrapping_add(delta)
    );
    // The peer's last ACK ends the session in the tracker (a Delete record) …
    let last_ack = t.packet(seg().seq(state.rcv_nxt + 1).ack(state.snd_nxt + 1));
    assert_eq!(
        t.out(),
        vec![Out::Accept(last_ack)],
        "the last ACK is not dropped"
    );
    assert!(t
        .records()
        .iter()
        .any(|(_, r)| matches!(r, Record::Delete(k) if *k == state.key)));
    // … and still reaches the service in its space, so its socket leaves LAST-ACK.
    assert_eq!(ack_of(&t.verdict_bytes(last_ack)), 7002);
    // A retransmission of the service's FIN still leaves translated.
    let again = t.packet(seg().from_us().seq(7001).ack(state.rcv_nxt + 1).fin());
    assert_eq!(t.out(), vec![Out::Accept(again)]);
    assert_eq!(seq_of(&t.verdict_bytes(again)), 7001u32.wrapping_add(delta));
    // After the linger the translation is gone.
    t.tick(super::machine::TRANSLATOR_LINGER + Duration::from_secs(2));
    t.out();
    let late = t.packet(seg().from_us().seq(7001).ack(state.rcv_nxt + 1).fin());
    assert_eq!(t.out(), vec![Out::Accept(late)]);
    assert_eq!(
        seq_of(&t.verdict_bytes(late)),
        7001,
        "untranslated once forgotten"
    );
}

#[test]
fn a_new_syn_on_an_ended_restored_sessions_tuple_is_not_translated() {
    let (mut t, state) = restored(7000);
    t.packet(seg().seq(state.rcv_nxt).ack(state.snd_nxt).fin());
    t.packet(seg().from_us().seq(7001).ack(state.rcv_nxt + 1).fin());
    t.tick(CLOSE_GRACE + Duration::from_millis(1));
    t.packet(seg().seq(state.rcv_nxt + 1).ack(state.snd_nxt + 1));
    t.out();
    // The peer opens a new connection from the same port.
    let syn = t.packet(seg().syn().seq(90_000).mss(1460));
    let synack = t.packet(seg().from_us().syn().seq(50_000).ack(90_001).mss(1460));
    let ack = t.packet(seg().seq(90_001).ack(50_001));
    assert_eq!(
        t.out(),
        vec![Out::Accept(syn), Out::Accept(synack), Out::Accept(ack)]
    );
    assert_eq!(
        seq_of(&t.verdict_bytes(synack)),
        50_000,
        "the new session's own numbers"
    );
    assert_eq!(ack_of(&t.verdict_bytes(ack)), 50_001);
}

#[test]
fn a_restored_sessions_reset_the_peer_would_ignore_is_refused_and_ends_nothing() {
    let (mut t, state) = restored(7000);
    // The service's kernel resets at a number far from the session's (its answer to
    // a segment that reached a connection it had not finished).
    let stray = t.packet(seg().from_us().seq(7001u32.wrapping_sub(5_000_000)).rst());
    t.tick(CLOSE_GRACE + Duration::from_millis(1));
    assert_eq!(t.out(), vec![Out::Drop(stray)]);
    assert!(
        !t.records()
            .iter()
            .any(|(_, r)| matches!(r, Record::Delete(_))),
        "the session goes on"
    );
    assert_eq!(t.stats.segments_out_of_window.load(Ordering::Relaxed), 1);
    // A reset at the session's own number still ends it.
    let real = t.packet(seg().from_us().seq(7001).rst());
    t.tick(CLOSE_GRACE + Duration::from_millis(1));
    assert_eq!(t.out(), vec![Out::Accept(real)]);
    assert!(t
        .records()
        .iter()
        .any(|(_, r)| matches!(r, Record::Delete(k) if *k == state.key)));
}

#[test]
fn a_session_at_risk_when_the_service_dies_is_reset_not_restored_and_the_rest_wait() {
    use crate::session::risk::Observation;
    let mut t = Trace::master(false);
    let key = t.session_on(PEER_PORT);
    // A second session, clean.
    t.session_on(PEER_PORT + 1);
    let owing = Observation {
        key,
        send_queue: 0,
        not_sent: None,
        recv_queue: 10,
    };
    for _ in 0..crate::session::interceptor::machine::RISK_POLLS {
        t.command(QueueCommand::Observe(vec![owing]));
    }
    t.records();
    t.command(QueueCommand::AppDied);
    let out = t.out();
    let resets = injected(&out);
    assert!(!resets.is_empty(), "{out:?}");
    assert!(resets.iter().all(|p| flags(p) & RST != 0));
    assert!(t
        .records()
        .iter()
        .any(|(_, r)| matches!(r, Record::Delete(k) if *k == key)));
    assert_eq!(t.stats.reset_at_risk.load(Ordering::Relaxed), 1);
    // Only the clean session waits for the restarted service.
    assert_eq!((t.core.tracker.len(), t.core.restores.pending()), (1, 1));
}

#[test]
fn a_dead_services_orphaned_socket_holding_unsent_output_loses_its_session_cleanly() {
    use crate::session::risk::Observation;
    // Two sessions: one whose orphaned socket still holds output never sent, one
    // clean.
    let mut t = Trace::master(false);
    let (unsent, clean) = (t.session_on(PEER_PORT), t.session_on(PEER_PORT + 1));
    // The death parks both at once (a peer's segment must not reach an orphan).
    t.command(QueueCommand::AppDied);
    assert_eq!(t.core.restores.pending(), 2);
    let orphan = Observation {
        key: unsent,
        send_queue: 500,
        not_sent: Some(500),
        recv_queue: 0,
    };
    let drained = Observation {
        key: clean,
        send_queue: 1,
        not_sent: Some(0),
        recv_queue: 0,
    };
    t.command(QueueCommand::DeadSockets(vec![orphan, drained]));
    let out = t.out();
    let resets = injected(&out);
    assert!(!resets.is_empty() && resets.iter().all(|p| flags(p) & RST != 0));
    assert!(t
        .records()
        .iter()
        .any(|(_, r)| matches!(r, Record::Delete(k) if *k == unsent)));
    assert_eq!(t.stats.reset_at_risk.load(Ordering::Relaxed), 1);
    assert_eq!((t.core.tracker.len(), t.core.restores.pending()), (1, 1));
    assert!(t.core.restores.pending_for(&clean), "the clean one waits");
}

/// A hot master (sync mode) and a handshake as Linux makes one (window scale 7,
/// timestamps, the SYN-ACK's unscaled window); the handshake packets' ids.
fn hot_master_after_linux_handshake() -> (Trace, [u32; 3]) {
    let mut t = Trace::master(true);
    t.command(QueueCommand::Hot { backlog: 1 << 22 });
    let a = t.packet(seg().syn().seq(ISN_PEER).mss(1460).wscale(7).ts(10, 0));
    let b = t.packet(
        seg()
            .from_us()
            .syn()
            .seq(ISN_US)
            .ack(ISN_PEER + 1)
            .win(65160)
            .mss(1460)
            .wscale(7)
            .ts(20, 10),
    );
    let c = t.packet(seg().seq(ISN_PEER + 1).ack(ISN_US + 1).win(502).ts(11, 20));
    (t, [a, b, c])
}

/// Hot replica, master: the peer's first flight right after the handshake (one GRO
/// packet of ten segments, as Linux sends and receives it) goes whole into the Sync
/// record of its segment, so a mirror opened at the handshake lacks nothing.
#[test]
fn a_hot_master_replicates_the_first_flight_whole() {
    let (mut t, [a, b, c]) = hot_master_after_linux_handshake();
    let flight: Vec<u8> = (0..14_480u32).map(|i| (i % 251) as u8).collect();
    let d = t.packet(
        seg()
            .seq(ISN_PEER + 1)
            .ack(ISN_US + 1)
            .win(502)
            .ts(12, 20)
            .payload(&flight),
    );
    t.tick(Duration::ZERO);
    let out = t.out();
    for id in [a, b, c, d] {
        assert!(out.contains(&Out::Accept(id)), "{id} accepted: {out:?}");
    }
    let records = t.records();
    let input: Vec<(u32, usize)> = records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Sync(s) if !s.input.is_empty() => Some((s.input_seq, s.input.len())),
            _ => None,
        })
        .collect();
    assert!(
        matches!(records.first(), Some((_, Record::Full(_)))),
        "the handshake announces the session first: {records:?}"
    );
    assert_eq!(input, vec![(ISN_PEER + 1, 14_480)]);
}

/// The segments of a session's first 40 KB as a hot master's tracker saw them in a
/// lab run (GRO packets of 5, 5, 7 and 10 segments): each one's input is replicated.
#[test]
fn a_hot_master_replicates_every_early_gro_packet() {
    let (mut t, _) = hot_master_after_linux_handshake();
    let mut offset = 0u32;
    let mut carried = Vec::new();
    for (i, len) in [7240usize, 7240, 10136, 14480, 4344]
        .into_iter()
        .enumerate()
    {
        let data = vec![b'a' + i as u8; len];
        t.packet(
            seg()
                .seq(ISN_PEER + 1 + offset)
                .ack(ISN_US + 1)
                .win(502)
                .ts(12 + i as u32, 20)
                .payload(&data),
        );
        offset += len as u32;
        if i == 1 {
            // The service's kernel acknowledges what it has so far.
            t.packet(
                seg()
                    .from_us()
                    .seq(ISN_US + 1)
                    .ack(ISN_PEER + 1 + offset)
                    .win(400)
                    .ts(21, 13),
            );
        }
        for (_, r) in t.records() {
            if let Record::Sync(s) = r {
                if !s.input.is_empty() {
                    carried.push((s.input_seq - ISN_PEER - 1, s.input.len()));
                }
            }
        }
    }
    assert_eq!(
        carried,
        vec![
            (0, 7240),
            (7240, 7240),
            (14480, 10136),
            (24616, 14480),
            (39096, 4344)
        ]
    );
}

/// Hot replica, master: a peer segment that moves no replicated field (its bytes
/// already counted, the same ACK, window and TSval) still carries its payload to the
/// backup — the kernel may take those bytes now, and a mirror must not lack input the
/// master acknowledges.
#[test]
fn a_hot_master_carries_input_even_when_the_segment_moves_nothing() {
    let mut t = Trace::master(true);
    t.command(QueueCommand::Hot { backlog: 1 << 22 });
    t.handshake();
    let _ = t.records();
    let data = b"0123456789".repeat(10);
    let segment = || seg().seq(ISN_PEER + 1).ack(ISN_US + 1).payload(&data);
    t.packet(segment());
    let first: Vec<(u32, usize)> = inputs(&t.records());
    assert_eq!(first, vec![(ISN_PEER + 1, 100)]);
    // The same segment again (the first never reached the kernel's queue, say):
    // nothing moves in the tracker, the input goes along all the same.
    let id = t.packet(segment());
    let again = t.records();
    assert_eq!(inputs(&again), vec![(ISN_PEER + 1, 100)]);
    t.tick(Duration::ZERO);
    assert!(t.out().contains(&Out::Accept(id)));
    // Without the hot replica nothing is added.
    let mut cold = Trace::master(true);
    cold.handshake();
    let _ = cold.records();
    cold.packet(segment());
    let _ = cold.records();
    cold.packet(segment());
    assert!(cold.records().is_empty());
}

fn inputs(records: &[(u64, Record)]) -> Vec<(u32, usize)> {
    records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Sync(s) if !s.input.is_empty() => Some((s.input_seq, s.input.len())),
            _ => None,
        })
        .collect()
}
