//! Issue 17: the agent as a systemd `Type=notify` service. The test plays systemd: it
//! listens on a datagram socket, starts the agent with `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` pointing at it, and reads READY, STATUS, WATCHDOG and STOPPING.

use nonstop_e2e::*;
use nonstop_lab::{LabGuard, LabSpec, Node};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every notification line received until `until` returns true or `timeout` passes.
fn read_until(
    socket: &UnixDatagram,
    lines: &mut Vec<(Instant, String)>,
    timeout: Duration,
    until: impl Fn(&[(Instant, String)]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    while !until(lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let now = Instant::now();
                lines.extend(text.lines().map(|l| (now, l.to_owned())));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    true
}

fn has(lines: &[(Instant, String)], f: impl Fn(&str) -> bool) -> bool {
    lines.iter().any(|(_, l)| f(l))
}

#[test]
fn agent_notifies_ready_status_watchdog_and_stopping() {
    if !require_root() {
        return;
    }
    let lab = LabGuard::up(&LabSpec {
        name: unique_name("sdnot"),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: None,
    })
    .expect("lab up");
    let dir = std::env::temp_dir().join(format!("nonstop-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    // 200 ms watchdog: the agent must ping about every 100 ms.
    // As systemd does, WATCHDOG_PID names the agent: the shell's pid, which `exec`
    // and `ip netns exec` keep.
    let mut agent = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec ip netns exec \"$0\" \"$1\" --config \"$2\"")
        .arg(lab.namespace("master"))
        .arg(bin("nonstop-agent"))
        .arg(lab.config_path(Node::Master))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the agent");
    let agent_log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let mut lines = Vec::new();

    // READY once it has a role (alone: master after the startup window), with a STATUS.
    assert!(
        read_until(&socket, &mut lines, Duration::from_secs(10), |l| has(
            l,
            |x| x == "READY=1"
        )),
        "no READY=1: {lines:?}\n{}",
        agent_log()
    );
    assert!(
        has(&lines, |l| l.starts_with("STATUS=startup, epoch")),
        "first STATUS is the startup: {lines:?}"
    );
    assert!(
        read_until(&socket, &mut lines, Duration::from_secs(5), |l| has(
            l,
            |x| {
                x.starts_with("STATUS=master, epoch ")
                    && x.contains("no backup")
                    && x.contains("holds VIP")
            }
        )),
        "no master STATUS: {lines:?}"
    );

    // Watchdog pings at about half of WATCHDOG_USEC.
    let start = lines.len();
    read_until(&socket, &mut lines, Duration::from_millis(1000), |_| false);
    let pings: Vec<Instant> = lines[start..]
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 6,
        "{} watchdog pings in about 1 s with WATCHDOG_USEC=200000",
        pings.len()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest < Duration::from_millis(200),
        "a gap of {widest:?} would trip the watchdog"
    );

    // A backup joins: the STATUS says so.
    lab.start_agent(Node::Backup).expect("backup agent");
    assert!(
        read_until(&socket, &mut lines, Duration::from_secs(10), |l| has(
            l,
            |x| { x.starts_with("STATUS=master, epoch ") && x.contains("backup connected") }
        )),
        "STATUS never showed the backup: {lines:?}\n{}",
        agent_log()
    );
    assert_eq!(
        lines.iter().filter(|(_, l)| l == "READY=1").count(),
        1,
        "READY is sent once"
    );

    // SIGTERM: STOPPING, then a clean exit.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert!(
        read_until(&socket, &mut lines, Duration::from_secs(10), |l| has(
            l,
            |x| x == "STOPPING=1"
        )),
        "no STOPPING=1: {lines:?}\n{}",
        agent_log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "agent exit {status}\n{}", agent_log());
    eprintln!(
        "{} notify lines; {} watchdog pings in 1 s (widest gap {widest:?}); last STATUS {:?}",
        lines.len(),
        pings.len(),
        lines
            .iter()
            .rev()
            .find(|(_, l)| l.starts_with("STATUS="))
            .map(|(_, l)| l.as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
