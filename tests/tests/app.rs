//! The application manager on a real lab: the service follows the master role and is
//! restarted when it crashes.

use nonstop_e2e::*;
use nonstop_lab::{LabGuard, LabSpec, Node};
use nonstop_shared::Mode;
use std::io::{Read, Write};
use std::time::Duration;

fn echo_once(lab: &nonstop_lab::Lab) -> Option<String> {
    let vip = std::net::SocketAddr::from((lab.vip(), 7000));
    let mut s =
        nonstop_lab::connect_in_netns(&lab.namespace("peer"), vip, Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"ping\n").ok()?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn the_service_follows_the_master_and_is_restarted_after_a_crash() {
    if !require_root() {
        return;
    }
    let echo = bin("nonstop-echo");
    let spec = LabSpec {
        name: unique_name("app"),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: Some(format!("{} --listen 0.0.0.0:7000", echo.display())),
    };
    let lab = LabGuard::up(&spec).expect("lab up");
    lab.start_agent(Node::Master).expect("master agent");
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(Node::Backup).expect("backup agent");
    let pid = wait_for(Duration::from_secs(5), || {
        status_of(&lab, Node::Master)?.app?.pid
    })
    .unwrap_or_else(|e| panic!("service not started on the master: {e}\n{}", logs(&lab)));
    assert_eq!(
        status_of(&lab, Node::Backup)
            .and_then(|s| s.app)
            .and_then(|a| a.pid),
        None
    );
    wait_for(Duration::from_secs(3), || {
        (echo_once(&lab)? == "ping\n").then_some(())
    })
    .unwrap_or_else(|e| panic!("service unreachable through the VIP: {e}\n{}", logs(&lab)));

    // A crash of the service on a healthy master: restarted.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let restarted = wait_for(Duration::from_secs(5), || {
        let app = status_of(&lab, Node::Master)?.app?;
        (app.restarts == 1 && app.pid.is_some_and(|p| p != pid)).then_some(app)
    })
    .unwrap_or_else(|e| panic!("service not restarted: {e}\n{}", logs(&lab)));
    assert!(restarted.last_exit.is_some_and(|x| x.contains("signal")));
    wait_for(Duration::from_secs(3), || {
        (echo_once(&lab)? == "ping\n").then_some(())
    })
    .expect("service back");
    // The crash's restores finish first (a switchover is refused while any is
    // pending: the session would be handed over half restored).
    wait_for(Duration::from_secs(5), || {
        (status_of(&lab, Node::Master)?.replication.restore_pending == 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("restores never finished: {e}\n{}", logs(&lab)));

    // Switchover: the service moves with the master role.
    let (ok, out) = console(&lab, &["switchover", "--json"]);
    assert!(ok, "switchover failed: {out}");
    wait_for(Duration::from_secs(5), || {
        let (m, b) = statuses(&lab);
        let (m, b) = (m?, b?);
        (m.mode == Mode::Backup
            && m.app?.pid.is_none()
            && b.mode == Mode::Master
            && b.app?.pid.is_some())
        .then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "service did not follow the master role: {e}\n{}",
            logs(&lab)
        )
    });
    wait_for(Duration::from_secs(3), || {
        (echo_once(&lab)? == "ping\n").then_some(())
    })
    .unwrap_or_else(|e| panic!("service unreachable on the new master: {e}\n{}", logs(&lab)));
}
