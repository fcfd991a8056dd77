//! Issue 2's acceptance tests: the failover manager on a real lab.
//!
//! Each test owns a lab (unique name) and tears it down even when it fails.

use nonstop_e2e::*;
use nonstop_lab::{connect_in_netns, listen_in_netns, Lab, Node};
use nonstop_shared::Mode;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

const SERVICE_PORT: u16 = 7000;

/// A listener on the service port inside `node`'s namespace that answers every
/// connection with the node's name.
fn serve_name(lab: &Lab, node: Node) {
    let addr: SocketAddr = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, SERVICE_PORT).into();
    let listener =
        listen_in_netns(&lab.namespace(node.as_str()), addr).expect("listen in node namespace");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(node.as_str().as_bytes());
        }
    });
}

/// Connects from the peer namespace to VIP:port and returns what the server said.
fn ask_vip(lab: &Lab) -> Option<String> {
    let vip = SocketAddr::from((lab.vip(), SERVICE_PORT));
    let mut conn =
        connect_in_netns(&lab.namespace("peer"), vip, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn lab_up_master_holds_vip_and_peer_reaches_the_service() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("up", 100, 3);
    assert!(holds_vip(&lab, Node::Master), "master must hold the VIP");
    assert!(
        !holds_vip(&lab, Node::Backup),
        "backup must not hold the VIP"
    );
    serve_name(&lab, Node::Master);
    serve_name(&lab, Node::Backup);
    assert_eq!(ask_vip(&lab).as_deref(), Some("master"));
    let (ok, out) = console(&lab, &["status", "--json"]);
    assert!(ok, "status failed: {out}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let modes: Vec<&str> = (0..2)
        .map(|i| doc["agents"][i]["status"]["mode"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(modes, ["master", "backup"]);
    assert_eq!(
        doc["agents"][0]["status"]["epoch"],
        doc["agents"][1]["status"]["epoch"]
    );
    assert_eq!(doc["agents"][0]["status"]["vip_held"], true);
}

#[test]
fn switchover_moves_the_vip_and_gratuitous_arp_repoints_the_peer() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("swo", 100, 3);
    serve_name(&lab, Node::Master);
    serve_name(&lab, Node::Backup);
    // The peer talks to the VIP first, so its neighbour entry holds the master's MAC.
    assert_eq!(ask_vip(&lab).as_deref(), Some("master"));
    let master_mac = lab.mac_of("master", "eth0").expect("master MAC");
    let backup_mac = lab.mac_of("backup", "eth0").expect("backup MAC");
    assert_eq!(
        lab.neighbour_mac("peer", lab.vip())
            .expect("neigh")
            .as_deref(),
        Some(master_mac.as_str())
    );
    let epoch_before = status_of(&lab, Node::Master).expect("status").epoch;

    let (ok, out) = console(&lab, &["switchover", "--json"]);
    assert!(ok, "switchover failed: {out}\n{}", logs(&lab));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("switchover JSON");
    assert_eq!(doc["to"], "backup");

    assert!(holds_vip(&lab, Node::Backup));
    assert!(!holds_vip(&lab, Node::Master));
    // Only the gratuitous ARP can repoint the peer: it has not asked for the VIP since.
    wait_for(Duration::from_secs(4), || {
        (lab.neighbour_mac("peer", lab.vip()).ok()?? == backup_mac).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "peer's neighbour entry never moved to the backup: {e}\n{}",
            logs(&lab)
        )
    });
    let (m, b) = statuses(&lab);
    let (m, b) = (
        m.expect("master node status"),
        b.expect("backup node status"),
    );
    assert_eq!((m.mode, b.mode), (Mode::Backup, Mode::Master));
    assert_eq!((m.epoch, b.epoch), (epoch_before + 1, epoch_before + 1));
    assert!(b.counters.garps_sent >= 1);
    assert_eq!(ask_vip(&lab).as_deref(), Some("backup"));
}

fn report(what: &str, times: &[u64]) {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    eprintln!(
        "{what}: detection ms {:?} (p50 {} max {})",
        times,
        percentile(&sorted, 50.0),
        sorted.last().copied().unwrap_or(0)
    );
}

#[test]
fn sigkill_of_the_master_agent_is_detected_under_400ms_and_the_restarted_node_stays_backup() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("kill", 100, 3);
    let times = detection_trials(
        &lab,
        10,
        |lab, node| lab.stop_agent(node, libc::SIGKILL).expect("kill agent"),
        |lab, node| {
            lab.start_agent(node).expect("restart agent");
        },
    );
    report("SIGKILL", &times);
    assert!(
        times.iter().all(|&t| t < 400),
        "detection times {times:?} (limit 400 ms)"
    );
}

#[test]
fn link_down_of_the_master_host_is_detected_under_400ms() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("link", 100, 3);
    let times = detection_trials(
        &lab,
        10,
        |lab, node| lab.set_host_links(node, false).expect("links down"),
        |lab, node| lab.set_host_links(node, true).expect("links up"),
    );
    report("link down", &times);
    assert!(
        times.iter().all(|&t| t < 400),
        "detection times {times:?} (limit 400 ms)"
    );
}

#[test]
fn restarted_old_master_comes_back_as_backup_and_leaves_the_vip_alone() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("back", 100, 3);
    // The peer knows the VIP (its neighbour entry holds the master's MAC).
    serve_name(&lab, Node::Master);
    serve_name(&lab, Node::Backup);
    assert_eq!(ask_vip(&lab).as_deref(), Some("master"));
    lab.stop_agent(Node::Master, libc::SIGKILL)
        .expect("kill master agent");
    wait_for(Duration::from_secs(3), || {
        (status_of(&lab, Node::Backup)?.mode == Mode::Master).then_some(())
    })
    .expect("backup promoted");
    // SIGKILL left the VIP on the old master's interface; the restart must clean it.
    assert!(
        holds_vip(&lab, Node::Master),
        "SIGKILL cannot remove the VIP"
    );
    // Let the new master's gratuitous ARP burst end, so only a re-announcement can
    // repair what the restarted node's brief resume announces.
    std::thread::sleep(Duration::from_millis(3000));
    lab.start_agent(Node::Master).expect("restart");
    wait_for(Duration::from_secs(3), || {
        (status_of(&lab, Node::Master)?.mode == Mode::Backup).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&lab)));
    // The restarted agent resumed as master for a moment (it still held the VIP) and
    // announced it; the winner must have pointed the peer back at itself.
    let backup_mac = lab.mac_of("backup", "eth0").expect("backup MAC");
    wait_for(Duration::from_secs(3), || {
        (lab.neighbour_mac("peer", lab.vip()).ok()?? == backup_mac).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "peer's ARP entry left pointing at the old master: {e}\n{}",
            logs(&lab)
        )
    });
    assert_eq!(ask_vip(&lab).as_deref(), Some("backup"));
    for _ in 0..10 {
        assert!(
            !holds_vip(&lab, Node::Master),
            "restarted node took the VIP"
        );
        let (m, b) = statuses(&lab);
        assert_eq!(m.map(|s| s.mode), Some(Mode::Backup));
        assert_eq!(b.map(|s| s.mode), Some(Mode::Master));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sync_link_cut_makes_two_masters_and_healing_leaves_exactly_one_within_a_second() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("split", 100, 3);
    lab.cut_sync().expect("cut sync link");
    wait_for(Duration::from_secs(3), || {
        let (m, b) = statuses(&lab);
        (m?.mode == Mode::Master && b?.mode == Mode::Master).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "no split brain after cutting the sync link: {e}\n{}",
            logs(&lab)
        )
    });
    assert!(holds_vip(&lab, Node::Master) && holds_vip(&lab, Node::Backup));
    lab.heal_sync().expect("heal");
    let healed = std::time::Instant::now();
    let winner = wait_for(Duration::from_millis(1000), || {
        let (m, b) = statuses(&lab);
        match (m?.mode, b?.mode) {
            (Mode::Master, Mode::Backup) => Some(Node::Master),
            (Mode::Backup, Mode::Master) => Some(Node::Backup),
            _ => None,
        }
    })
    .unwrap_or_else(|e| panic!("two masters after healing: {e}\n{}", logs(&lab)));
    eprintln!("converged {:?} after healing", healed.elapsed());
    // The backup promoted with a higher epoch, so it wins.
    assert_eq!(winner, Node::Backup);
    wait_for(Duration::from_millis(500), || {
        (!holds_vip(&lab, Node::Master)).then_some(())
    })
    .expect("loser removed the VIP");
    assert!(holds_vip(&lab, Node::Backup));
    let (m, b) = statuses(&lab);
    assert_eq!(m.map(|s| s.epoch), b.map(|s| s.epoch));
}

#[test]
fn malformed_heartbeats_and_control_lines_are_rejected_and_counted() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("junk", 100, 3);
    // Garbage to the backup's heartbeat port, from the master's sync address (so it is
    // judged as a malformed heartbeat, not a stranger's datagram).
    let backup_hb = SocketAddr::from((lab.sync_ip(Node::Backup), 7701));
    let master_ip = lab.sync_ip(Node::Master);
    nonstop_lab::run_in_netns(&lab.namespace("master"), move || -> std::io::Result<()> {
        let sock = std::net::UdpSocket::bind((master_ip, 0))?;
        let junk: [&[u8]; 5] = [
            b"",
            b"NSHB",
            b"hello world",
            &[0xff; 1400],
            b"NSHB\x01\x02\x00\x64",
        ];
        for payload in junk {
            sock.send_to(payload, backup_hb)?;
        }
        Ok(())
    })
    .expect("send junk from the master namespace");
    // Garbage on an (authenticated) control connection.
    let (mut reader, mut conn) =
        nonstop_e2e::control_session(&lab, Node::Backup, None).expect("control");
    let mut lines = String::new();
    lines.push_str("nonsense\n{\"cmd\":\"reboot\"}\n");
    lines.push_str(&"x".repeat(70_000));
    lines.push_str("\n{\"cmd\":\"status\"}\n");
    conn.write_all(lines.as_bytes()).expect("write");
    let mut replies = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("reply");
        replies.push(line);
    }
    assert!(
        replies[..3]
            .iter()
            .all(|r| r.contains("\"type\":\"error\"")),
        "{replies:?}"
    );
    assert!(replies[3].contains("\"type\":\"status\""), "{replies:?}");

    let status = wait_for(Duration::from_secs(2), || {
        let s = status_of(&lab, Node::Backup)?;
        (s.counters.malformed_heartbeats >= 5).then_some(s)
    })
    .unwrap_or_else(|e| panic!("malformed heartbeats not counted: {e}\n{}", logs(&lab)));
    assert_eq!(status.counters.malformed_control_lines, 3);
    assert_eq!(status.mode, Mode::Backup);
    assert_eq!(
        status_of(&lab, Node::Master).map(|s| s.mode),
        Some(Mode::Master)
    );
}

#[test]
fn lab_down_removes_everything_even_after_a_failed_test() {
    if !require_root() {
        return;
    }
    // A test failing midway: the panic unwinds through the guard, whose Drop must
    // still tear everything down.
    let (tx, rx) = std::sync::mpsc::channel();
    let failing_test = std::thread::spawn(move || {
        let lab = lab_with_agents("down", 100, 3);
        let pids = [Node::Master, Node::Backup].map(|n| lab.agent_pid(n).expect("agent running"));
        tx.send((lab.name().to_owned(), pids)).expect("send");
        panic!("simulated test failure");
    });
    assert!(failing_test.join().is_err(), "the simulated test must fail");
    let (name, pids) = rx.recv().expect("lab was up");
    let prefix = format!("nonstop-{name}-");
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !listed.contains(&prefix),
        "namespaces left behind:\n{listed}"
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "agent {pid} still running"
        );
    }
    assert!(
        !nonstop_lab::lab_dir(&name).exists(),
        "lab directory left behind"
    );
}
