//! Deterministic models for snapshot tests and the frame-time benchmark: fixed
//! timestamps, made-up but plausible figures.

use super::action::NetUpdate;
use super::model::{LogKind, Model};
use nonstop_shared::control::{
    AgentEvent, Cause, Counters, EventKind, Fault, NodeStatus, PeerView, ReplicationView,
    SessionInfo, SessionList, Transition,
};
use nonstop_shared::session::Phase;
use nonstop_shared::Mode;

/// "Now" in every fixture: 2023-11-14 22:13:20 UTC.
pub const NOW: u64 = 1_700_000_000_000;
const VIP: &str = "198.18.7.100/24";

fn names() -> Vec<(String, String)> {
    vec![
        ("master".to_owned(), "127.0.0.1:7700".to_owned()),
        ("backup".to_owned(), "127.0.0.1:7700".to_owned()),
    ]
}

/// A status with sensible defaults.
pub fn status(node: &str, mode: Mode, epoch: u64, peer: &str, peer_mode: Mode) -> NodeStatus {
    let master = mode == Mode::Master;
    NodeStatus {
        node_id: node.to_owned(),
        mode,
        epoch,
        priority: if node == "master" { 200 } else { 100 },
        vip: VIP.to_owned(),
        vip_held: master,
        heartbeat_ms: 100,
        misses: 3,
        missed_heartbeats: 0,
        peer: PeerView {
            node_id: Some(peer.to_owned()),
            mode: Some(peer_mode),
            epoch: Some(epoch),
            last_heard_ms: Some(42),
            rtt_us: Some(183),
            healthy: None,
        },
        uptime_ms: 754_000,
        pid: if node == "master" { 4242 } else { 4243 },
        last_transition: Some(Transition {
            from: Mode::Startup,
            to: mode,
            epoch,
            cause: if master {
                Cause::NoMasterAtStartup
            } else {
                Cause::HeardMaster {
                    master: peer.to_owned(),
                    epoch,
                }
            },
            at_unix_ms: NOW - 754_000,
        }),
        counters: Counters {
            heartbeats_sent: 7540,
            heartbeats_received: 7537,
            garps_sent: if master { 3 } else { 0 },
            promotions: u64::from(master),
            ..Counters::default()
        },
        replication: ReplicationView {
            mode: "sync".to_owned(),
            connected: true,
            position: 0,
            acked: 0,
            lag_records: 0,
            lag_ms: 0,
            sessions: 0,
            held_packets: 0,
            packets: (0, 0),
            snapshots: 1,
            errors: 0,
            ..ReplicationView::default()
        },
        resources: nonstop_shared::control::Resources {
            agent_cpu_percent: if master { 12.5 } else { 3.0 },
            agent_rss_kib: if master { 11_264 } else { 8_704 },
            app_cpu_percent: None,
            app_rss_kib: None,
        },
        app: Some(nonstop_shared::control::AppView {
            command: "nonstop-echo --listen 0.0.0.0:7000".to_owned(),
            pid: if master { Some(5150) } else { None },
            restarts: 0,
            last_exit: None,
        }),
        check: None,
    }
}

fn session(i: usize, seq_shift: u64, t: u64) -> SessionInfo {
    let i64_ = i as u64;
    let phase = match i % 23 {
        0 => Phase::Handshake,
        7 => Phase::PeerClosed,
        _ => Phase::Established,
    };
    SessionInfo {
        peer: format!("198.18.7.{}:{}", 10 + i % 80, 40_000 + i / 80),
        local: "198.18.7.100:7000".to_owned(),
        phase,
        bytes_in: (i64_ * 7_919 % 100_000) + t * (i64_ % 13) * 1_000,
        bytes_out: (i64_ * 104_729 % 3_000_000) + t * (i64_ % 7) * 4_000,
        rcv_nxt: 1_000_000 + i as u32 * 17,
        snd_nxt: 2_000_000 + i as u32 * 31,
        snd_una: 2_000_000 + i as u32 * 31,
        unacked_bytes: (i % 5) * 100,
        record_seq: 10_000 + i64_ * 3 + t - seq_shift,
        last_activity_ms: NOW - (i64_ * 37 % 9_000),
        replica: None,
    }
}

fn sessions(node: &str, mode: Mode, count: usize, t: u64) -> SessionList {
    let shift = u64::from(mode != Mode::Master);
    SessionList {
        node_id: node.to_owned(),
        mode,
        source: if mode == Mode::Master {
            "tracker"
        } else {
            "replica"
        }
        .to_owned(),
        sessions: (0..count).map(|i| session(i, shift, t)).collect(),
    }
}

fn event(node: &str, seq: u64, at: u64, kind: EventKind) -> NetUpdate {
    NetUpdate::Event(AgentEvent {
        seq,
        node_id: node.to_owned(),
        at_unix_ms: at,
        kind,
    })
}

fn startup_events(model: &mut Model) {
    let start = NOW - 754_000;
    let updates = [
        (
            0,
            event(
                "master",
                1,
                start,
                EventKind::ModeChanged(Transition {
                    from: Mode::Startup,
                    to: Mode::Master,
                    epoch: 1,
                    cause: Cause::NoMasterAtStartup,
                    at_unix_ms: start,
                }),
            ),
        ),
        (
            0,
            event(
                "master",
                2,
                start + 2,
                EventKind::VipAdded { vip: VIP.into() },
            ),
        ),
        (
            0,
            event("master", 3, start + 3, EventKind::GarpSent { number: 1 }),
        ),
        (
            1,
            event(
                "backup",
                1,
                start + 510,
                EventKind::ModeChanged(Transition {
                    from: Mode::Startup,
                    to: Mode::Backup,
                    epoch: 1,
                    cause: Cause::HeardMaster {
                        master: "master".into(),
                        epoch: 1,
                    },
                    at_unix_ms: start + 510,
                }),
            ),
        ),
    ];
    for (node, update) in updates {
        model.apply(node, update);
    }
}

/// Feeds 120 seconds of statuses (4 a second) so rates and lag history exist.
fn feed_statuses(model: &mut Model, make: impl Fn(u64) -> [Option<NodeStatus>; 2]) {
    for tick in 0..480u64 {
        let at = NOW - 120_000 + tick * 250;
        for (node, status) in make(tick).into_iter().enumerate() {
            if let Some(status) = status {
                model.apply(
                    node,
                    NetUpdate::Status {
                        status: Box::new(status),
                        at_ms: at,
                    },
                );
            }
        }
    }
}

fn wave(tick: u64) -> (u64, u64) {
    // A lag wave with a spike around the middle; records advance unevenly.
    let lag = (tick * 7 % 13) + if (220..236).contains(&tick) { 40 } else { 0 };
    let position = 10_000 + tick * 25 + (tick % 9) * 3;
    (lag, position)
}

fn healthy_status(node: usize, tick: u64, count: usize) -> NodeStatus {
    let (lag, position) = wave(tick);
    let mut s = if node == 0 {
        status("master", Mode::Master, 1, "backup", Mode::Backup)
    } else {
        status("backup", Mode::Backup, 1, "master", Mode::Master)
    };
    s.replication.sessions = count as u64;
    s.replication.position = if node == 0 { position } else { position - 2 };
    s.replication.acked = position - 2;
    s.replication.lag_records = if node == 0 { 2 } else { 0 };
    s.replication.lag_ms = if node == 0 { lag } else { 0 };
    s.replication.held_packets = if node == 0 { tick % 4 } else { 0 };
    s.replication.packets = (tick * 310, tick * 290);
    s.uptime_ms = 754_000 - 120_000 + tick * 250;
    s
}

/// Both nodes healthy, `count` sessions on each (master: tracker, backup: replica).
pub fn healthy(count: usize) -> Model {
    let mut model = Model::new(&names(), NOW);
    startup_events(&mut model);
    feed_statuses(&mut model, |tick| {
        [
            Some(healthy_status(0, tick, count)),
            Some(healthy_status(1, tick, count)),
        ]
    });
    for (t, at) in [(0, NOW - 1_000), (1, NOW)] {
        model.apply(
            0,
            NetUpdate::Sessions {
                list: sessions("master", Mode::Master, count, t),
                at_ms: at,
            },
        );
        model.apply(
            1,
            NetUpdate::Sessions {
                list: sessions("backup", Mode::Backup, count, t),
                at_ms: at,
            },
        );
    }
    model
}

/// A healthy pair whose master refused 1,234 peer segments outside the window (a
/// blind injection attempt).
pub fn under_blind_attack() -> Model {
    let mut model = Model::new(&names(), NOW);
    startup_events(&mut model);
    feed_statuses(&mut model, |tick| {
        let mut master = healthy_status(0, tick, 16);
        master.replication.segments_out_of_window = 1_234;
        [Some(master), Some(healthy_status(1, tick, 16))]
    });
    model
}

/// The master's service fails its health check; the backup's passes.
pub fn failing_check() -> Model {
    let mut model = Model::new(&names(), NOW);
    startup_events(&mut model);
    feed_statuses(&mut model, |tick| {
        let check = |healthy| nonstop_shared::control::CheckView {
            probe: "tcp 127.0.0.1:7000".into(),
            healthy: Some(healthy),
            streak: if healthy { 12 } else { -3 },
            last: "ok".into(),
            handovers: 0,
        };
        let mut master = healthy_status(0, tick, 16);
        master.check = Some(check(false));
        let mut backup = healthy_status(1, tick, 16);
        backup.check = Some(check(true));
        [Some(master), Some(backup)]
    });
    model
}

/// The master's agent died 4.2 s ago; the backup took over.
pub fn unreachable() -> Model {
    let mut model = healthy(12);
    let died = NOW - 4_200;
    model.apply(0, NetUpdate::Unreachable {
        error: "cannot connect to agent nonstop-lab7-master@127.0.0.1:7700: Connection refused (os error 111)".into(),
        at_ms: died,
    });
    model.apply(
        1,
        event(
            "backup",
            2,
            died + 310,
            EventKind::ModeChanged(Transition {
                from: Mode::Backup,
                to: Mode::Master,
                epoch: 2,
                cause: Cause::PeerSilent { missed: 3 },
                at_unix_ms: died + 310,
            }),
        ),
    );
    model.apply(
        1,
        event(
            "backup",
            3,
            died + 312,
            EventKind::VipAdded { vip: VIP.into() },
        ),
    );
    for n in 1..=3 {
        model.apply(
            1,
            event(
                "backup",
                3 + u64::from(n),
                died + 312 + u64::from(n),
                EventKind::GarpSent { number: n },
            ),
        );
    }
    let mut s = status("backup", Mode::Master, 2, "master", Mode::Master);
    s.peer.last_heard_ms = Some(4_210);
    s.peer.rtt_us = None;
    s.missed_heartbeats = 42;
    s.replication.connected = false;
    s.replication.sessions = 12;
    s.replication.position = 22_035;
    s.replication.acked = 22_035;
    s.counters.promotions = 1;
    s.counters.garps_sent = 3;
    s.last_transition = Some(Transition {
        from: Mode::Backup,
        to: Mode::Master,
        epoch: 2,
        cause: Cause::PeerSilent { missed: 3 },
        at_unix_ms: died + 310,
    });
    model.apply(
        1,
        NetUpdate::Status {
            status: Box::new(s),
            at_ms: NOW,
        },
    );
    model.apply(
        1,
        NetUpdate::Sessions {
            list: sessions("backup", Mode::Master, 12, 2),
            at_ms: NOW,
        },
    );
    model
}

/// Mid-switchover: the master has stepped down, the backup has not yet promoted.
pub fn handover() -> Model {
    let mut model = healthy(12);
    let at = NOW - 40;
    model.apply(
        0,
        NetUpdate::CommandDone {
            command: super::action::NodeCommand::Switchover,
            result: Ok("handing over to backup".into()),
            at_ms: at - 5,
        },
    );
    model.apply(
        0,
        event(
            "master",
            4,
            at,
            EventKind::ModeChanged(Transition {
                from: Mode::Master,
                to: Mode::Backup,
                epoch: 1,
                cause: Cause::Switchover,
                at_unix_ms: at,
            }),
        ),
    );
    model.apply(
        0,
        event(
            "master",
            5,
            at + 1,
            EventKind::VipRemoved { vip: VIP.into() },
        ),
    );
    let mut old = status("master", Mode::Backup, 1, "backup", Mode::Backup);
    old.last_transition = Some(Transition {
        from: Mode::Master,
        to: Mode::Backup,
        epoch: 1,
        cause: Cause::Switchover,
        at_unix_ms: at,
    });
    old.replication.sessions = 12;
    model.apply(
        0,
        NetUpdate::Status {
            status: Box::new(old),
            at_ms: NOW,
        },
    );
    let mut new = status("backup", Mode::Backup, 1, "master", Mode::Backup);
    new.replication.sessions = 12;
    model.apply(
        1,
        NetUpdate::Status {
            status: Box::new(new),
            at_ms: NOW,
        },
    );
    model.log(
        NOW,
        "console",
        LogKind::Command,
        "waiting for backup to promote".into(),
    );
    model
}

/// The healthy pair after an injection the agent refused.
pub fn with_refused_injection(mut model: Model) -> Model {
    model.apply(
        0,
        NetUpdate::CommandDone {
            command: super::action::NodeCommand::Inject(Fault::KillAgent),
            result: Err("fault injection is not available yet: SIGKILL the agent".into()),
            at_ms: NOW - 10,
        },
    );
    model
}

/// A healthy hot-replica pair (design §9): the backup's sessions are hot, lagging,
/// diverged or cold, and its node panel counts the mirrors.
pub fn hot_replica(count: usize) -> Model {
    let mut model = Model::new(&names(), NOW);
    startup_events(&mut model);
    feed_statuses(&mut model, |tick| {
        let mut master = healthy_status(0, tick, count);
        let mut backup = healthy_status(1, tick, count);
        for s in [&mut master, &mut backup] {
            s.replication.replica = "hot".into();
        }
        backup.replication.mirrors = count as u64 - 1;
        backup.replication.mirrors_diverged = 1;
        backup.replication.mirrors_cold = 2;
        [Some(master), Some(backup)]
    });
    let states = ["hot", "hot", "lagging 20480 B", "diverged", "cold"];
    for (t, at) in [(0, NOW - 1_000), (1, NOW)] {
        model.apply(
            0,
            NetUpdate::Sessions {
                list: sessions("master", Mode::Master, count, t),
                at_ms: at,
            },
        );
        let mut list = sessions("backup", Mode::Backup, count, t);
        for (i, s) in list.sessions.iter_mut().enumerate() {
            s.replica = Some(states[i % states.len()].to_owned());
        }
        model.apply(1, NetUpdate::Sessions { list, at_ms: at });
    }
    model
}
