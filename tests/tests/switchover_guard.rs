//! A master still restoring its sessions refuses to hand them over, and the
//! console's `switchover` returns only once the new master has restored them: two
//! switchovers in a row (docs/DEPLOY.md §8) once reset sessions when the second came
//! 40 ms after the first, before the restore.

use nonstop_e2e::*;
use nonstop_lab::Node;
use nonstop_shared::control::{Reply, Request};
use nonstop_shared::Mode;
use std::time::Duration;

#[test]
fn a_master_still_restoring_refuses_a_switchover() {
    if !require_root() {
        return;
    }
    // The service starts listening 2 s after it is started: the new master's
    // restore waits for it that long.
    let echo = bin("nonstop-echo");
    let service = format!("sleep 2; exec {} --listen 0.0.0.0:7000", echo.display());
    let lab = managed_service_lab("swgrd", &service, 100, 3);
    std::thread::sleep(Duration::from_millis(2500));
    let mut clients = EchoClients::connect(&lab, 8).expect("sessions");
    clients.round().expect("round before");
    wait_replicated(&lab, &clients).expect("replicated");
    let counters = peer_tcp_counters(&lab);
    let name = lab.name().to_owned();
    let switchover = std::thread::spawn(move || {
        std::process::Command::new(bin("nonstop-console"))
            .args(["--lab", &name, "switchover", "--json"])
            .output()
            .expect("console")
    });
    wait_for(Duration::from_secs(5), || {
        let s = status_of(&lab, Node::Backup)?;
        (s.mode == Mode::Master && s.replication.restore_pending > 0).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "the new master never showed a pending restore: {e}\n{}",
            logs(&lab)
        )
    });
    match control_request(&lab, Node::Backup, &Request::Switchover).expect("request") {
        Reply::Error { message } => {
            assert!(message.contains("still being restored"), "{message}")
        }
        other => panic!("a switchover during the restore was not refused: {other:?}"),
    }
    let out = switchover.join().expect("thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["restored"], true, "{doc}");
    let s = status_of(&lab, Node::Backup).expect("status");
    assert_eq!(s.replication.restore_pending, 0);
    assert!(s.replication.restored >= 8);
    for _ in 0..3 {
        clients.round().expect("round after");
    }
    assert_eq!(peer_tcp_counters(&lab), counters);
}
