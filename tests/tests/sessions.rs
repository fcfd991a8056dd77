//! Issue 3's acceptance tests: interception, tracking, replication and persistence on
//! a real lab, with the project's echo service on the master.

use nonstop_e2e::*;
use nonstop_lab::{Lab, Node};
use nonstop_shared::config::ReplicationMode;
use nonstop_shared::control::SessionInfo;
use std::collections::HashMap;
use std::time::Duration;

fn by_peer_port(list: &[SessionInfo]) -> HashMap<u16, SessionInfo> {
    list.iter()
        .filter_map(|s| {
            let port = s.peer.rsplit(':').next()?.parse().ok()?;
            Some((port, s.clone()))
        })
        .collect()
}

/// Waits until the backup's replicated table matches the master's tracker for the
/// given client ports (a quiesced moment), and returns both.
fn quiesced_tables(
    lab: &Lab,
    ports: &[u16],
) -> (HashMap<u16, SessionInfo>, HashMap<u16, SessionInfo>) {
    wait_for(Duration::from_secs(10), || {
        let (m, b) = session_lists(lab);
        let (m, b) = (by_peer_port(&m?.sessions), by_peer_port(&b?.sessions));
        let same = ports.iter().all(|p| match (m.get(p), b.get(p)) {
            // Quiesced: the peer has acknowledged everything we sent.
            (Some(x), Some(y)) => {
                x.snd_una == x.snd_nxt
                    && (x.rcv_nxt, x.snd_nxt, x.snd_una) == (y.rcv_nxt, y.snd_nxt, y.snd_una)
            }
            _ => false,
        });
        same.then_some((m, b))
    })
    .unwrap_or_else(|e| panic!("tables never converged: {e}\n{}", logs(lab)))
}

/// Bytes of recovery data in a node's session store: the log plus the snapshot (0 once
/// every session is gone and the store has compacted).
fn stored_bytes(lab: &Lab, node: Node) -> u64 {
    let dir = lab
        .config_path(node)
        .parent()
        .expect("lab dir")
        .join(format!("{node}-data"))
        .join("sessions");
    [
        nonstop_agent::session::store::LOG_FILE,
        nonstop_agent::session::store::SNAPSHOT_FILE,
    ]
    .iter()
    .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
    .sum()
}

#[test]
fn sessions_are_tracked_and_replicated_exactly() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("repl", 100, 3);
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = EchoClients::connect(&lab, 256).expect("256 sessions");
    for _ in 0..20 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&lab)));
    }
    let ports = clients.ports();
    let (master, backup) = quiesced_tables(&lab, &ports);
    for (i, port) in ports.iter().enumerate() {
        let m = &master[port];
        let b = &backup[port];
        // The peer's own sockets: what it wrote is what we received, what it read is
        // what we sent.
        assert_eq!(m.bytes_in, clients.sent[i], "session {port}: bytes in");
        assert_eq!(
            m.bytes_out, clients.received[i],
            "session {port}: bytes out"
        );
        assert_eq!(
            (b.bytes_in, b.bytes_out),
            (m.bytes_in, m.bytes_out),
            "session {port}: backup counters"
        );
        assert_eq!(
            m.unacked_bytes, 0,
            "session {port}: everything acknowledged"
        );
        assert_eq!(b.unacked_bytes, 0);
        // Sequence space: we sent SYN + bytes_out, the peer sent SYN + bytes_in.
        assert_eq!(m.snd_nxt, m.snd_una);
    }
    let status = status_of(&lab, Node::Master).expect("status");
    assert!(status.replication.connected);
    assert_eq!(status.replication.mode, "sync");
    assert!(status.replication.sessions >= 256);
}

#[test]
fn closed_and_reset_sessions_vanish_from_tables_and_disks() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("close", 100, 3);
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = EchoClients::connect(&lab, 20).expect("sessions");
    clients.round().expect("round");
    let ports = clients.ports();
    quiesced_tables(&lab, &ports);
    assert!(
        stored_bytes(&lab, Node::Backup) > 0,
        "backup stores the sessions"
    );
    // Half close normally (FIN both ways), half by RST.
    for (i, stream) in clients.streams.drain(..).enumerate() {
        if i % 2 == 0 {
            stream.shutdown(std::net::Shutdown::Write).expect("FIN");
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut &stream, &mut rest);
        } else {
            let sock = socket2::SockRef::from(&stream);
            sock.set_linger(Some(Duration::ZERO)).expect("linger 0");
        }
    }
    wait_for(Duration::from_secs(10), || {
        let (m, b) = session_lists(&lab);
        let (m, b) = (by_peer_port(&m?.sessions), by_peer_port(&b?.sessions));
        ports
            .iter()
            .all(|p| !m.contains_key(p) && !b.contains_key(p))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("closed sessions still listed: {e}\n{}", logs(&lab)));
    wait_for(Duration::from_secs(15), || {
        (stored_bytes(&lab, Node::Master) == 0 && stored_bytes(&lab, Node::Backup) == 0)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("closed sessions still on disk: {e}\n{}", logs(&lab)));
}

#[test]
fn sync_mode_holds_traffic_while_the_backup_is_away_and_resumes_losslessly() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents_configured("hold", 100, 3, |c| {
        c.session.lone_master = nonstop_shared::config::LoneMaster::Hold
    });
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = EchoClients::connect(&lab, 16).expect("sessions");
    clients.round().expect("round before");
    lab.stop_agent(Node::Backup, libc::SIGKILL)
        .expect("kill backup agent");
    // Replies now wait for a backup that is not there: the round must stall.
    for stream in &clients.streams {
        stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
    }
    let stalled = clients.round();
    assert!(
        stalled.is_err(),
        "traffic flowed without a backup in sync mode"
    );
    let held = status_of(&lab, Node::Master)
        .expect("status")
        .replication
        .held_packets;
    assert!(held > 0, "nothing held");
    lab.start_agent(Node::Backup).expect("restart backup agent");
    // The stalled round's echoes arrive once the backup has the snapshot; finish
    // reading them, then keep going. Nothing may be lost or duplicated.
    for stream in &clients.streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    clients
        .finish_stalled_round()
        .unwrap_or_else(|e| panic!("stalled round did not complete: {e:#}\n{}", logs(&lab)));
    for _ in 0..5 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&lab)));
    }
    let status = status_of(&lab, Node::Master).expect("status");
    assert!(
        status.replication.snapshots >= 2,
        "a snapshot caught the backup up"
    );
    quiesced_tables(&lab, &clients.ports());
}

#[test]
fn a_lone_sync_master_serves_unreplicated_then_protects_again_when_a_backup_returns() {
    if !require_root() {
        return;
    }
    // lone_master = "serve" is the default.
    let lab = lab_with_agents("lone", 100, 3);
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = EchoClients::connect(&lab, 16).expect("sessions");
    clients.round().expect("round before");
    lab.stop_agent(Node::Backup, libc::SIGKILL)
        .expect("kill backup agent");
    // After the detection window (300 ms) the master serves on without a backup.
    let began = std::time::Instant::now();
    for round in 0..5 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("round {round} without a backup: {e:#}\n{}", logs(&lab)));
    }
    eprintln!("5 rounds without a backup in {:?}", began.elapsed());
    let status = status_of(&lab, Node::Master).expect("status");
    assert_eq!(status.replication.held_packets, 0);
    let alone = events(&lab).expect("events").into_iter().any(|e| {
        matches!(
            e.kind,
            nonstop_shared::control::EventKind::Protection {
                replicated: false,
                ..
            }
        )
    });
    assert!(alone, "serving unreplicated is an event");
    // The backup returns: a snapshot catches it up, output is held again, and the
    // tables agree.
    lab.start_agent(Node::Backup).expect("restart backup agent");
    wait_for(Duration::from_secs(10), || {
        status_of(&lab, Node::Master)?
            .replication
            .connected
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("backup never reconnected: {e:#}\n{}", logs(&lab)));
    for _ in 0..5 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&lab)));
    }
    let protected = wait_for(Duration::from_secs(5), || {
        events(&lab).ok()?.into_iter().find(|e| {
            matches!(
                e.kind,
                nonstop_shared::control::EventKind::Protection {
                    replicated: true,
                    ..
                }
            )
        })
    });
    assert!(protected.is_ok(), "protection back is an event");
    quiesced_tables(&lab, &clients.ports());
}

#[test]
fn async_mode_keeps_flowing_without_a_backup_and_reports_lag() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents_configured("async", 100, 3, |c| {
        c.session.replication = ReplicationMode::Async
    });
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = EchoClients::connect(&lab, 16).expect("sessions");
    clients.round().expect("round");
    lab.stop_agent(Node::Backup, libc::SIGKILL)
        .expect("kill backup agent");
    let mut lags = Vec::new();
    for _ in 0..5 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("async mode stalled: {e:#}\n{}", logs(&lab)));
        let status = status_of(&lab, Node::Master).expect("status");
        assert_eq!(status.replication.mode, "async");
        assert_eq!(status.replication.held_packets, 0);
        lags.push(status.replication.lag_records);
    }
    assert!(
        lags.windows(2).all(|w| w[1] > w[0]),
        "lag must grow: {lags:?}"
    );
}

#[test]
fn master_agent_restart_keeps_sessions_and_rebuilds_the_table_from_disk() {
    if !require_root() {
        return;
    }
    // A crash-restart (as a supervisor does it) must be quicker than the detection
    // window, or it becomes a failover: give it one second.
    let lab = lab_with_agents("rstrt", 100, 10);
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = EchoClients::connect(&lab, 32).expect("sessions");
    for _ in 0..3 {
        clients.round().expect("round");
    }
    quiesced_tables(&lab, &clients.ports());
    let epoch = status_of(&lab, Node::Master).expect("status").epoch;
    lab.stop_agent(Node::Master, libc::SIGKILL)
        .expect("kill master agent");
    lab.start_agent(Node::Master).expect("restart master agent");
    let status = wait_for(Duration::from_secs(5), || {
        let s = status_of(&lab, Node::Master)?;
        (s.mode == nonstop_shared::Mode::Master).then_some(s)
    })
    .unwrap_or_else(|e| panic!("master did not come back: {e}\n{}", logs(&lab)));
    assert_eq!(status.epoch, epoch, "a restart is not a failover");
    assert!(
        status.replication.sessions >= 32,
        "table rebuilt from disk: {:?}",
        status.replication
    );
    assert_eq!(
        status_of(&lab, Node::Backup).map(|s| s.mode),
        Some(nonstop_shared::Mode::Backup),
        "the backup never took over"
    );
    for _ in 0..5 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("session broke across the restart: {e:#}\n{}", logs(&lab)));
    }
    let (master, backup) = quiesced_tables(&lab, &clients.ports());
    for (i, port) in clients.ports().iter().enumerate() {
        assert_eq!(
            master[port].bytes_in, clients.sent[i],
            "session {port}: bytes in"
        );
        assert_eq!(
            backup[port].bytes_out, clients.received[i],
            "session {port}: bytes out"
        );
    }
}
