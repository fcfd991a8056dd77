//! Scenario tests: two machines on a simulated sync link, stepped millisecond by
//! millisecond. Each test states one rule of design §5.

use super::*;
use proptest::prelude::*;

const HB: Duration = Duration::from_millis(100);
const LATENCY: Duration = Duration::from_micros(300);

fn settings(id: &str, priority: u8) -> Settings {
    Settings {
        node_id: id.into(),
        priority,
        heartbeat: HB,
        misses: 3,
        fence: false,
    }
}

/// One simulated node: its machine (None while crashed), VIP, and fence behaviour.
struct SimNode {
    machine: Option<Machine>,
    settings: Settings,
    vip: bool,
    link_up: bool,
    fence_ok: bool,
    fence_runs: u32,
    announcements: u32,
    /// Gratuitous ARP bursts (an added VIP or a re-announcement).
    garps: u32,
    transitions: Vec<(Mode, Mode, Cause, Instant)>,
}

struct Sim {
    now: Instant,
    nodes: Vec<SimNode>,
    sync_up: bool,
    in_flight: Vec<(Instant, usize, Heartbeat)>,
}

impl Sim {
    fn new(a: Settings, b: Settings) -> Sim {
        let t0 = Instant::now();
        let node = |settings| SimNode {
            machine: None,
            settings,
            vip: false,
            link_up: true,
            fence_ok: true,
            fence_runs: 0,
            announcements: 0,
            garps: 0,
            transitions: vec![],
        };
        Sim {
            now: t0,
            nodes: vec![node(a), node(b)],
            sync_up: true,
            in_flight: vec![],
        }
    }

    fn start(&mut self, i: usize, epoch: u64) {
        let machine = Machine::new(self.nodes[i].settings.clone(), epoch, self.now);
        self.nodes[i].machine = Some(machine);
        // A restarted node cleans a stale VIP at startup, as the driver does.
        self.nodes[i].vip = false;
        self.drain(i);
    }

    /// Crash: the machine vanishes; its VIP stays where it was (as after SIGKILL).
    fn crash(&mut self, i: usize) {
        self.nodes[i].machine = None;
    }

    fn m(&self, i: usize) -> &Machine {
        self.nodes[i].machine.as_ref().expect("node running")
    }

    fn mode(&self, i: usize) -> Mode {
        self.m(i).mode()
    }

    fn drain(&mut self, i: usize) {
        loop {
            let now = self.now;
            let node = &mut self.nodes[i];
            let Some(machine) = node.machine.as_mut() else {
                return;
            };
            let Some(action) = machine.poll_action() else {
                return;
            };
            match action {
                Action::SendHeartbeat(hb) => {
                    if self.sync_up {
                        self.in_flight.push((now + LATENCY, 1 - i, hb));
                    }
                }
                Action::AddVip => {
                    node.vip = true;
                    node.garps += 1;
                }
                Action::KeepVip => node.vip = true,
                Action::RemoveVip => node.vip = false,
                Action::Announce => {
                    node.announcements += 1;
                    node.garps += 1;
                }
                Action::RunFence => {
                    node.fence_runs += 1;
                    let ok = node.fence_ok;
                    machine.fence_finished(
                        ok,
                        if ok { "exit 0".into() } else { "exit 1".into() },
                        now,
                    );
                }
                Action::Transitioned {
                    from, to, cause, ..
                } => node.transitions.push((from, to, cause, now)),
            }
        }
    }

    fn run(&mut self, dur: Duration) {
        let end = self.now + dur;
        while self.now < end {
            self.now += Duration::from_millis(1);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(at, _, _)| *at <= now);
            self.in_flight = later;
            for (_, to, hb) in due {
                if let Some(m) = self.nodes[to].machine.as_mut() {
                    m.handle_heartbeat(hb, now);
                }
                self.drain(to);
            }
            for i in 0..self.nodes.len() {
                if let Some(m) = self.nodes[i].machine.as_mut() {
                    if m.poll_timeout() <= now {
                        m.handle_timeout(now);
                    }
                }
                self.drain(i);
            }
        }
    }

    fn set_link(&mut self, i: usize, up: bool) {
        self.nodes[i].link_up = up;
        let now = self.now;
        if let Some(m) = self.nodes[i].machine.as_mut() {
            m.service_link_changed(up, now);
        }
        self.drain(i);
    }

    fn switchover(&mut self, i: usize) -> Result<(), CommandError> {
        let now = self.now;
        let result = self.nodes[i]
            .machine
            .as_mut()
            .expect("running")
            .request_switchover(now);
        self.drain(i);
        result
    }

    fn masters(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.machine.as_ref().is_some_and(|m| m.mode() == Mode::Master))
            .count()
    }

    fn last_transition(&self, i: usize) -> &(Mode, Mode, Cause, Instant) {
        self.nodes[i].transitions.last().expect("a transition")
    }
}

fn healthy_pair() -> Sim {
    let mut sim = Sim::new(settings("alpha", 110), settings("beta", 100));
    sim.start(0, 0);
    sim.run(Duration::from_millis(50));
    sim.start(1, 0);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Master);
    assert_eq!(sim.mode(1), Mode::Backup);
    sim
}

#[test]
fn first_node_up_becomes_master_and_second_becomes_backup_with_equal_epoch() {
    let sim = healthy_pair();
    assert_eq!(sim.m(0).epoch(), 1);
    assert_eq!(sim.m(1).epoch(), 1);
    assert!(sim.nodes[0].vip && !sim.nodes[1].vip);
    // Beta was already starting when alpha's window ended: alpha won the election.
    assert_eq!(sim.nodes[0].transitions[0].2, Cause::WonStartupElection);
    assert!(matches!(
        sim.nodes[1].transitions[0].2,
        Cause::HeardMaster { .. }
    ));
}

#[test]
fn lone_node_becomes_master_after_listening_one_window() {
    let mut sim = Sim::new(settings("alpha", 110), settings("beta", 100));
    sim.start(0, 4);
    sim.run(Duration::from_millis(350));
    assert_eq!(sim.mode(0), Mode::Startup, "still listening");
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.mode(0), Mode::Master);
    assert_eq!(sim.m(0).epoch(), 5, "persisted epoch + 1");
    assert_eq!(sim.nodes[0].transitions[0].2, Cause::NoMasterAtStartup);
}

#[test]
fn simultaneous_start_elects_higher_priority_once() {
    let mut sim = Sim::new(settings("low", 50), settings("high", 200));
    sim.start(0, 0);
    sim.start(1, 0);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.mode(1), Mode::Master);
    assert_eq!(sim.mode(0), Mode::Backup);
    assert_eq!(sim.nodes[1].transitions.len(), 1, "no flapping");
    assert_eq!(sim.m(0).epoch(), sim.m(1).epoch());
}

#[test]
fn equal_priority_start_is_broken_by_node_id() {
    let mut sim = Sim::new(settings("a", 100), settings("b", 100));
    sim.start(0, 0);
    sim.start(1, 0);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.mode(1), Mode::Master);
    assert_eq!(sim.masters(), 1);
}

#[test]
fn silent_master_is_replaced_within_the_detection_window() {
    let mut sim = healthy_pair();
    let crash_at = sim.now;
    sim.crash(0);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(1), Mode::Master);
    let (_, _, cause, at) = sim.last_transition(1).clone();
    assert!(
        matches!(cause, Cause::PeerSilent { missed } if missed >= 3),
        "{cause:?}"
    );
    let detection = at - crash_at;
    assert!(
        detection <= HB * 3 + Duration::from_millis(2),
        "detected after {detection:?}"
    );
    assert!(detection >= HB * 2, "too eager: {detection:?}");
    assert_eq!(sim.m(1).epoch(), 2);
    assert!(sim.nodes[1].vip);
}

#[test]
fn restarted_old_master_comes_back_as_backup_without_the_vip() {
    let mut sim = healthy_pair();
    sim.crash(0);
    sim.run(Duration::from_secs(1));
    sim.start(0, 1);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Backup);
    assert_eq!(sim.mode(1), Mode::Master);
    assert!(!sim.nodes[0].vip);
    assert_eq!(sim.m(0).epoch(), 2);
}

#[test]
fn quick_restart_of_the_master_agent_resumes_without_failover() {
    let mut sim = healthy_pair();
    sim.crash(0);
    sim.run(Duration::from_millis(150));
    let now = sim.now;
    let garps_before = sim.nodes[0].garps;
    sim.nodes[0].machine = Some(Machine::resume_as_master(settings("alpha", 110), 1, now));
    sim.drain(0);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Master);
    assert_eq!(sim.mode(1), Mode::Backup);
    assert_eq!(sim.m(0).epoch(), 1, "no new epoch for a resume");
    assert_eq!(sim.nodes[1].transitions.len(), 1, "the backup never moved");
    assert!(sim.nodes[0].vip);
    assert_eq!(
        sim.nodes[0].garps, garps_before,
        "a resumed master keeps the VIP quietly"
    );
}

#[test]
fn the_master_that_stays_reannounces_after_meeting_another() {
    let mut sim = healthy_pair();
    sim.sync_up = false;
    sim.in_flight.clear();
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.masters(), 2);
    sim.sync_up = true;
    sim.run(Duration::from_millis(300));
    assert_eq!(sim.mode(1), Mode::Master);
    assert!(
        sim.nodes[1].announcements >= 1,
        "winner must re-announce the VIP"
    );
}

#[test]
fn slow_restart_resumes_then_yields_to_the_promoted_backup() {
    let mut sim = healthy_pair();
    sim.crash(0);
    sim.run(Duration::from_millis(600));
    assert_eq!(sim.mode(1), Mode::Master);
    let now = sim.now;
    let garps_before = sim.nodes[0].garps;
    sim.nodes[0].machine = Some(Machine::resume_as_master(settings("alpha", 110), 1, now));
    sim.drain(0);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Backup);
    assert_eq!(sim.mode(1), Mode::Master);
    assert!(!sim.nodes[0].vip);
    assert_eq!(
        sim.nodes[0].garps, garps_before,
        "the restarted node never pointed the peers at itself"
    );
}

#[test]
fn switchover_moves_mastership_and_bumps_both_epochs() {
    let mut sim = healthy_pair();
    sim.switchover(0).expect("accepted");
    assert!(
        !sim.nodes[0].vip,
        "old master drops the VIP before the handover"
    );
    sim.run(Duration::from_millis(5));
    assert_eq!(sim.mode(1), Mode::Master);
    assert_eq!(sim.last_transition(1).2, Cause::HandoverReceived);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Backup);
    assert_eq!((sim.m(0).epoch(), sim.m(1).epoch()), (2, 2));
    assert!(sim.nodes[1].vip && !sim.nodes[0].vip);
    // and back again
    sim.switchover(1).expect("accepted");
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Master);
    assert_eq!((sim.m(0).epoch(), sim.m(1).epoch()), (3, 3));
}

#[test]
fn switchover_is_refused_when_it_cannot_be_safe() {
    let mut sim = healthy_pair();
    assert_eq!(
        sim.switchover(1),
        Err(CommandError::NotMaster(Mode::Backup))
    );
    sim.crash(1);
    sim.run(Duration::from_secs(1));
    assert!(matches!(
        sim.switchover(0),
        Err(CommandError::PeerNotReady(_))
    ));
    assert_eq!(sim.mode(0), Mode::Master);
}

#[test]
fn lost_handover_heartbeat_is_repeated() {
    let mut sim = healthy_pair();
    sim.sync_up = false;
    sim.switchover(0).expect("accepted");
    sim.run(Duration::from_millis(150));
    sim.sync_up = true;
    sim.run(Duration::from_millis(300));
    assert_eq!(sim.mode(1), Mode::Master);
    assert_eq!(sim.last_transition(1).2, Cause::HandoverReceived);
    assert_eq!(sim.masters(), 1);
}

#[test]
fn partition_makes_two_masters_and_healing_keeps_the_higher_epoch() {
    let mut sim = healthy_pair();
    sim.sync_up = false;
    sim.in_flight.clear();
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.masters(), 2);
    sim.sync_up = true;
    let healed = sim.now;
    sim.run(Duration::from_millis(300));
    assert_eq!(sim.masters(), 1);
    assert_eq!(sim.mode(1), Mode::Master, "beta promoted with epoch 2");
    assert!(!sim.nodes[0].vip && sim.nodes[1].vip);
    let (_, _, cause, at) = sim.last_transition(0).clone();
    assert!(matches!(cause, Cause::LostToMaster { epoch: 2, .. }));
    assert!(at - healed < HB * 2);
    assert_eq!(sim.m(0).epoch(), 2);
}

#[test]
fn equal_epoch_masters_converge_on_priority() {
    let mut sim = Sim::new(settings("alpha", 110), settings("beta", 100));
    sim.sync_up = false;
    sim.start(0, 0);
    sim.start(1, 0);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.masters(), 2);
    assert_eq!(sim.m(0).epoch(), sim.m(1).epoch());
    sim.sync_up = true;
    sim.run(Duration::from_millis(300));
    assert_eq!(sim.mode(0), Mode::Master);
    assert_eq!(sim.mode(1), Mode::Backup);
}

#[test]
fn service_link_down_on_master_releases_the_vip_and_the_backup_takes_over() {
    let mut sim = healthy_pair();
    sim.set_link(0, false);
    assert_eq!(sim.mode(0), Mode::Fault);
    assert!(!sim.nodes[0].vip);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(1), Mode::Master);
    assert_eq!(sim.last_transition(1).2, Cause::NoMasterInPair);
    sim.set_link(0, true);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(0), Mode::Backup);
    assert_eq!(sim.masters(), 1);
}

#[test]
fn a_node_back_from_fault_waits_out_slow_arp_before_promoting() {
    let mut sim = healthy_pair();
    sim.set_link(0, false);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(1), Mode::Master);
    // The link returns but the sync link stays deaf for 900 ms (a failed neighbour
    // entry waiting for the kernel's 1 s ARP retry).
    sim.sync_up = false;
    sim.set_link(0, true);
    assert_eq!(sim.mode(0), Mode::Startup);
    sim.run(Duration::from_millis(900));
    assert_eq!(
        sim.mode(0),
        Mode::Startup,
        "must not promote while merely deaf"
    );
    sim.sync_up = true;
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.mode(0), Mode::Backup);
    assert_eq!(
        sim.mode(1),
        Mode::Master,
        "the healthy master was not deposed"
    );
    assert_eq!(
        sim.nodes[1].transitions.len(),
        2,
        "no extra transitions on beta"
    );
}

#[test]
fn a_faulty_node_never_promotes() {
    let mut sim = healthy_pair();
    sim.set_link(1, false);
    sim.crash(0);
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.mode(1), Mode::Fault);
    assert!(!sim.nodes[1].vip);
}

#[test]
fn failed_fence_refuses_takeover_and_retries() {
    let mut a = settings("alpha", 110);
    let mut b = settings("beta", 100);
    a.fence = true;
    b.fence = true;
    let mut sim = Sim::new(a, b);
    sim.start(0, 0);
    sim.run(Duration::from_millis(50));
    sim.start(1, 0);
    sim.run(Duration::from_secs(1));
    sim.nodes[1].fence_ok = false;
    sim.crash(0);
    sim.run(Duration::from_millis(500));
    assert_eq!(sim.mode(1), Mode::Fault);
    assert!(!sim.nodes[1].vip);
    assert!(matches!(
        sim.last_transition(1).2,
        Cause::FenceFailed { .. }
    ));
    sim.nodes[1].fence_ok = true;
    // retry after 1 s, then listen a rejoin window (1.3 s), then fence and promote
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.mode(1), Mode::Master);
    assert!(sim.nodes[1].fence_runs >= 2);
}

#[test]
fn handover_needs_no_fence() {
    let mut a = settings("alpha", 110);
    let mut b = settings("beta", 100);
    a.fence = true;
    b.fence = true;
    let mut sim = Sim::new(a, b);
    sim.start(0, 0);
    sim.run(Duration::from_millis(50));
    sim.start(1, 0);
    sim.run(Duration::from_secs(1));
    let before = sim.nodes[1].fence_runs;
    sim.switchover(0).expect("accepted");
    sim.run(Duration::from_millis(10));
    assert_eq!(sim.mode(1), Mode::Master);
    assert_eq!(sim.nodes[1].fence_runs, before);
}

#[test]
fn shutdown_of_master_hands_over_immediately() {
    let mut sim = healthy_pair();
    let now = sim.now;
    sim.nodes[0]
        .machine
        .as_mut()
        .expect("running")
        .shutdown(now);
    sim.drain(0);
    assert!(!sim.nodes[0].vip);
    sim.run(Duration::from_millis(5));
    assert_eq!(sim.mode(1), Mode::Master);
}

#[test]
fn vip_failure_puts_master_in_fault() {
    let mut sim = healthy_pair();
    let now = sim.now;
    sim.nodes[0]
        .machine
        .as_mut()
        .expect("running")
        .vip_failed("EPERM".into(), now);
    sim.drain(0);
    assert_eq!(sim.mode(0), Mode::Fault);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(1), Mode::Master);
}

#[test]
fn heartbeats_with_our_own_id_are_ignored_and_counted() {
    let mut sim = healthy_pair();
    let now = sim.now;
    let m = sim.nodes[1].machine.as_mut().expect("running");
    let forged = Heartbeat {
        node_id: "beta".into(),
        epoch: 99,
        mode: Mode::Master,
        priority: 255,
        handover: false,
        unhealthy: false,
        seq: 1,
        sent_us: 1,
        echo_us: 0,
        echo_delay_us: 0,
        repl_pos: 0,
    };
    m.handle_heartbeat(forged, now);
    assert_eq!(m.counters().foreign_heartbeats, 1);
    assert_eq!(m.epoch(), 1);
}

#[test]
fn rtt_is_measured_from_echoes() {
    let sim = healthy_pair();
    let rtt = sim.m(0).peer_view(sim.now).rtt_us.expect("measured");
    // Two one-way latencies of 0.3 ms, stepped at 1 ms granularity.
    assert!((500..=3000).contains(&rtt), "{rtt}");
}

#[test]
fn heartbeats_go_out_every_interval() {
    let mut sim = healthy_pair();
    let before = sim.m(0).counters().heartbeats_sent;
    sim.run(Duration::from_secs(1));
    let sent = sim.m(0).counters().heartbeats_sent - before;
    assert!((9..=11).contains(&sent), "{sent}");
}

#[derive(Debug, Clone)]
enum Fault {
    Crash(usize),
    Restart(usize),
    Partition,
    Heal,
    LinkDown(usize),
    LinkUp(usize),
    Switchover(usize),
    Wait(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0usize..2).prop_map(Fault::Crash),
        (0usize..2).prop_map(Fault::Restart),
        Just(Fault::Partition),
        Just(Fault::Heal),
        (0usize..2).prop_map(Fault::LinkDown),
        (0usize..2).prop_map(Fault::LinkUp),
        (0usize..2).prop_map(Fault::Switchover),
        (1u64..800).prop_map(Fault::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happened, once everything is healthy again the pair converges to
    /// exactly one master holding the VIP, with equal epochs.
    #[test]
    fn any_fault_sequence_converges_after_healing(faults in proptest::collection::vec(fault(), 1..12)) {
        let mut sim = healthy_pair();
        for f in faults {
            match f {
                Fault::Crash(i) => sim.crash(i),
                Fault::Restart(i) => {
                    let epoch = sim.nodes[i].machine.as_ref().map_or(1, |m| m.epoch());
                    sim.crash(i);
                    sim.start(i, epoch);
                    let up = sim.nodes[i].link_up;
                    if !up { sim.set_link(i, false); }
                }
                Fault::Partition => { sim.sync_up = false; sim.in_flight.clear(); }
                Fault::Heal => sim.sync_up = true,
                Fault::LinkDown(i) => sim.set_link(i, false),
                Fault::LinkUp(i) => sim.set_link(i, true),
                Fault::Switchover(i) => {
                    if sim.nodes[i].machine.is_some() { let _ = sim.switchover(i); }
                }
                Fault::Wait(ms) => sim.run(Duration::from_millis(ms)),
            }
        }
        sim.sync_up = true;
        for i in 0..2 {
            if sim.nodes[i].machine.is_none() {
                let epoch = 0;
                sim.start(i, epoch);
            }
            sim.set_link(i, true);
        }
        sim.run(Duration::from_secs(3));
        prop_assert_eq!(sim.masters(), 1);
        let master = (0..2).find(|&i| sim.mode(i) == Mode::Master).expect("one master");
        prop_assert!(sim.nodes[master].vip);
        prop_assert!(!sim.nodes[1 - master].vip);
        prop_assert_eq!(sim.m(0).epoch(), sim.m(1).epoch());
        prop_assert_eq!(sim.mode(1 - master), Mode::Backup);
    }
}

impl Sim {
    fn set_healthy(&mut self, i: usize, healthy: bool) {
        let now = self.now;
        self.nodes[i]
            .machine
            .as_mut()
            .expect("running")
            .set_healthy(healthy, now);
        self.drain(i);
    }
}

#[test]
fn nothing_is_handed_over_to_a_backup_whose_health_check_fails() {
    let mut sim = healthy_pair();
    sim.set_healthy(1, false);
    sim.run(Duration::from_millis(5));
    assert_eq!(
        sim.m(0).peer_healthy(),
        Some(false),
        "carried in heartbeats"
    );
    assert_eq!(
        sim.switchover(0),
        Err(CommandError::PeerNotReady(
            "its service fails its health check".into()
        ))
    );
    sim.run(Duration::from_secs(2));
    assert_eq!((sim.mode(0), sim.mode(1)), (Mode::Master, Mode::Backup));
    sim.set_healthy(1, true);
    sim.run(Duration::from_millis(5));
    assert_eq!(sim.m(0).peer_healthy(), Some(true));
    sim.switchover(0).expect("healthy again");
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(1), Mode::Master);
}

#[test]
fn an_unhealthy_node_loses_the_startup_election_to_a_healthy_one() {
    let mut sim = Sim::new(settings("low", 50), settings("high", 200));
    sim.start(0, 0);
    sim.start(1, 0);
    sim.set_healthy(1, false);
    sim.run(Duration::from_secs(2));
    assert_eq!((sim.mode(0), sim.mode(1)), (Mode::Master, Mode::Backup));
    assert_eq!(sim.masters(), 1);
}

#[test]
fn an_unhealthy_backup_still_takes_over_when_it_is_the_only_one_left() {
    let mut sim = healthy_pair();
    sim.set_healthy(1, false);
    sim.run(Duration::from_millis(200));
    sim.crash(0);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.mode(1), Mode::Master);
    assert!(matches!(sim.last_transition(1).2, Cause::PeerSilent { .. }));
}
