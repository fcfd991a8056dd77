//! Root-only end-to-end test of `nonstop_agent::inject` on a real three-host lab.
//!
//! Brings up a lab (`nonstop_lab::LabGuard`, removed even when the test fails),
//! starts both agents and injects faults into the **master's** agent over its control
//! API, then measures their effect from the other hosts:
//!
//! - 40 ms delay on the service link: an echo round trip through the VIP takes
//!   ≥ 80 ms and the session manager's NFQUEUE still sees every delayed packet;
//! - cut sync: the backup's ping of the master's sync address fails; heal restores it;
//! - 30% loss on sync: 200 pings lose 1 − (1 − p)² of round trips; the per-packet
//!   loss p derived from that lies in 15..45%;
//! - 50 ms delay on sync: ping RTT (two delayed packets) ≥ 100 ms and < 150 ms;
//! - cut + loss + delay at once, then heal_all: no `inet nonstop_fault` table and
//!   no `NONSTOP_DELAY_*` chain remain;
//! - links down 2 s: the master is unreachable, then comes back by itself;
//! - freeze 2 s: the agent is stopped and the backup hears no heartbeat, then resumes;
//! - kill agent: the process is gone.
//!
//! Needs root; without it fails with an explanation unless `NONSTOP_SKIP_ROOT_TESTS=1`.

use nonstop_lab::{LabGuard, Node};
use nonstop_shared::control::{Fault, LinkName, NodeStatus, Reply, Request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to a node's agent and returns its reply.
fn ask(lab: &LabGuard, node: Node, request: &Request) -> Reply {
    let stream = lab
        .connect(
            node.as_str(),
            lab.control_addr(node),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("cannot reach the {node} agent's control API: {e:#}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    let mut read_reply = || -> Reply {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read reply");
        serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    };
    // The control handshake (nonstop_shared::auth) with the lab's key.
    let key = nonstop_shared::auth::Key::load(&lab.key_path()).expect("lab key");
    let Reply::Challenge { nonce, .. } = read_reply() else {
        panic!("the agent did not open with a challenge")
    };
    let server = nonstop_shared::auth::parse_nonce(&nonce).expect("challenge nonce");
    let client = [7u8; nonstop_shared::auth::NONCE_LEN];
    let auth = Request::Auth {
        nonce: client.iter().map(|b| format!("{b:02x}")).collect(),
        mac: nonstop_shared::auth::control_client_mac(&key, &server, &client),
    };
    writer
        .write_all(auth.to_line().as_bytes())
        .expect("send auth");
    assert!(matches!(read_reply(), Reply::Authenticated { .. }));
    writer
        .write_all(request.to_line().as_bytes())
        .expect("send request");
    read_reply()
}

/// Injects `fault` into the master's agent; panics unless it is acknowledged.
fn inject(lab: &LabGuard, fault: Fault) -> String {
    match ask(
        lab,
        Node::Master,
        &Request::Inject {
            fault: fault.clone(),
        },
    ) {
        Reply::Ack { message } => {
            eprintln!("inject {fault}: {message}");
            message
        }
        other => panic!("inject {fault} was not acknowledged: {other:?}"),
    }
}

fn status(lab: &LabGuard, node: Node) -> NodeStatus {
    match ask(lab, node, &Request::Status) {
        Reply::Status(status) => status,
        other => panic!("status of {node}: {other:?}"),
    }
}

/// Ping statistics: (sent, received, rtt min, rtt avg) in ms.
struct Pings {
    sent: u32,
    received: u32,
    min_ms: f64,
    avg_ms: f64,
}

fn ping(lab: &LabGuard, from: &str, to: std::net::Ipv4Addr, count: u32, interval: &str) -> Pings {
    let count_text = count.to_string();
    let to_text = to.to_string();
    let out = lab
        .exec(
            from,
            &[
                "ping",
                "-q",
                "-n",
                "-c",
                &count_text,
                "-i",
                interval,
                "-W",
                "1",
                &to_text,
            ],
        )
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number_before = |marker: &str| -> u32 {
        text.split(marker)
            .next()
            .and_then(|head| head.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{marker}` in ping output:\n{text}"))
    };
    let sent = number_before(" packets transmitted");
    let received = number_before(" received");
    let rtts: Vec<f64> = text
        .split_once(" = ")
        .map(|(_, rest)| {
            rest.split(['/', ' '])
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Pings {
        sent,
        received,
        min_ms: rtts.first().copied().unwrap_or(f64::NAN),
        avg_ms: rtts.get(1).copied().unwrap_or(f64::NAN),
    }
}

/// What of the injector is left on the master: (nft tables, iptables-save).
fn leftovers(lab: &LabGuard) -> Vec<String> {
    let mut found = Vec::new();
    let tables = lab
        .exec_ok("master", &["nft", "list", "tables"])
        .expect("nft list tables");
    if tables.contains("nonstop_fault") {
        found.push(format!("nft tables:\n{tables}"));
    }
    let rules = lab
        .exec_ok("master", &["iptables-save"])
        .expect("iptables-save");
    if rules.contains("NONSTOP_DELAY") {
        found.push(format!("iptables:\n{rules}"));
    }
    found
}

fn heal(lab: &LabGuard) {
    inject(lab, Fault::HealAll);
    let left = leftovers(lab);
    assert!(left.is_empty(), "heal_all left rules behind: {left:?}");
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Echo round trip through the VIP with a service-link delay on the master; the
/// session manager must have seen every packet (its counters grow).
fn delayed_service_is_still_intercepted(lab: &LabGuard) {
    let echo = env!("CARGO_BIN_EXE_nonstop-echo");
    let mut server = lab
        .spawn("master", &[echo, "--listen", "0.0.0.0:7000"])
        .expect("start the echo service");
    let vip = SocketAddr::from((lab.vip(), 7000));
    wait_for(
        "the echo service and the VIP on the master",
        TIMEOUT,
        || {
            lab.holds_vip(Node::Master)
                && lab.connect("peer", vip, Duration::from_millis(300)).is_ok()
        },
    );
    let before = status(lab, Node::Master).replication.packets;
    inject(
        lab,
        Fault::Delay {
            link: LinkName::Service,
            ms: 40,
        },
    );
    let mut stream = lab
        .connect("peer", vip, Duration::from_secs(2))
        .expect("connect to the VIP");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut rtts = Vec::new();
    for i in 0..3 {
        let message = format!("hello {i}\n");
        let start = Instant::now();
        stream.write_all(message.as_bytes()).expect("send");
        let mut back = vec![0; message.len()];
        stream.read_exact(&mut back).expect("echo");
        rtts.push(start.elapsed());
        assert_eq!(back, message.as_bytes());
    }
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let after = status(lab, Node::Master).replication.packets;
    eprintln!(
        "service delay 40 ms: echo RTTs {rtts:?}; intercepted (in, out) {before:?} -> {after:?}"
    );
    for rtt in &rtts {
        assert!(
            *rtt >= Duration::from_millis(80),
            "echo RTT {rtt:?} < 2 × 40 ms: the delay did not apply"
        );
    }
    // Handshake + 3 data segments + their ACKs at least, both ways.
    assert!(
        after.0 >= before.0 + 4 && after.1 >= before.1 + 4,
        "the session manager did not see the delayed packets: {before:?} -> {after:?}"
    );
    heal(lab);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn injected_faults_take_effect_and_heal_all_removes_them() {
    if !nonstop_lab::require_root("inject_lab") {
        return;
    }
    let name = format!("ij{}", std::process::id() % 100_000);
    let lab = LabGuard::new(&name).expect("bring the lab up");
    lab.start_agents().expect("start the agents");
    let master_sync = lab.sync_ip(Node::Master);

    // Arguments are checked before anything happens.
    match ask(
        &lab,
        Node::Master,
        &Request::Inject {
            fault: Fault::Loss {
                link: LinkName::Sync,
                percent: 0,
            },
        },
    ) {
        Reply::Error { message } => assert!(message.contains("1..=100"), "{message}"),
        other => panic!("percent 0 accepted: {other:?}"),
    }

    delayed_service_is_still_intercepted(&lab);

    // Cut sync.
    let base = ping(&lab, "backup", master_sync, 3, "0.2");
    assert_eq!(
        base.received, 3,
        "the sync link does not work before the test"
    );
    let message = inject(&lab, Fault::CutSync);
    assert!(message.contains("sync0"), "{message}");
    let cut = ping(&lab, "backup", master_sync, 3, "0.2");
    assert_eq!(cut.received, 0, "ping crossed a cut sync link");
    heal(&lab);
    let healed = ping(&lab, "backup", master_sync, 3, "0.2");
    assert_eq!(healed.received, 3, "heal_all did not restore the sync link");

    // 30% loss per packet and direction.
    inject(
        &lab,
        Fault::Loss {
            link: LinkName::Sync,
            percent: 30,
        },
    );
    let lossy = ping(&lab, "backup", master_sync, 200, "0.01");
    let round_trip_ok = f64::from(lossy.received) / f64::from(lossy.sent);
    let per_packet = 1.0 - round_trip_ok.sqrt();
    eprintln!(
        "30% loss: {}/{} pings answered, round-trip loss {:.1}%, per-packet loss {:.1}%",
        lossy.received,
        lossy.sent,
        100.0 * (1.0 - round_trip_ok),
        100.0 * per_packet
    );
    assert_eq!(lossy.sent, 200);
    assert!(
        (0.15..=0.45).contains(&per_packet),
        "per-packet loss {:.1}% is not near 30% ({}/{} pings answered)",
        100.0 * per_packet,
        lossy.received,
        lossy.sent
    );
    heal(&lab);

    // 50 ms delay: both the request and the reply cross the delayed interface.
    inject(
        &lab,
        Fault::Delay {
            link: LinkName::Sync,
            ms: 50,
        },
    );
    let slow = ping(&lab, "backup", master_sync, 10, "0.1");
    eprintln!(
        "50 ms delay: ping RTT min {:.2} ms avg {:.2} ms ({}/{})",
        slow.min_ms, slow.avg_ms, slow.received, slow.sent
    );
    assert_eq!(slow.received, slow.sent, "delay lost packets");
    assert!(slow.min_ms >= 100.0, "RTT {} ms < 2 × 50 ms", slow.min_ms);
    assert!(slow.avg_ms < 150.0, "RTT {} ms ≥ 150 ms", slow.avg_ms);

    // Several faults at once, then one heal_all removes all of them.
    inject(&lab, Fault::CutSync);
    inject(
        &lab,
        Fault::Loss {
            link: LinkName::Service,
            percent: 10,
        },
    );
    inject(
        &lab,
        Fault::Delay {
            link: LinkName::Service,
            ms: 20,
        },
    );
    let tables = lab.exec_ok("master", &["nft", "list", "table", "inet", "nonstop_fault"]);
    let table = tables.expect("the fault table exists");
    assert!(
        table.contains("\"sync0\"") && table.contains("\"eth0\""),
        "{table}"
    );
    heal(&lab);
    let after = ping(&lab, "backup", master_sync, 5, "0.05");
    assert_eq!(
        after.received, 5,
        "the sync link is not healthy after heal_all"
    );
    assert!(
        after.avg_ms < 20.0,
        "still delayed after heal_all: {} ms",
        after.avg_ms
    );

    // Links down for 2 s: unreachable, then back by itself.
    inject(&lab, Fault::LinksDown { seconds: 2 });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!lab.link_is_up("master", "eth0").expect("link state"));
    assert!(!lab.link_is_up("master", "sync0").expect("link state"));
    let down = ping(&lab, "backup", master_sync, 2, "0.2");
    assert_eq!(down.received, 0, "the master answered with its links down");
    let svc = lab.service_ip(Node::Master);
    assert!(!lab
        .reachable("peer", svc, Duration::from_millis(300))
        .expect("probe"));
    wait_for(
        "the master's links to come back",
        Duration::from_secs(5),
        || {
            lab.reachable("peer", svc, Duration::from_millis(300))
                .unwrap_or(false)
                && lab
                    .reachable("backup", master_sync, Duration::from_millis(300))
                    .unwrap_or(false)
        },
    );

    // Freeze for 2 s: stopped, silent, then running again.
    let pid = lab.agent_pid(Node::Master).expect("master agent runs");
    inject(&lab, Fault::FreezeAgent { seconds: 2 });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(process_state(pid), Some('T'), "the agent is not stopped");
    let heard = status(&lab, Node::Backup).counters.heartbeats_received;
    std::thread::sleep(Duration::from_millis(500));
    let heard_frozen = status(&lab, Node::Backup).counters.heartbeats_received;
    assert_eq!(heard, heard_frozen, "a frozen agent sent heartbeats");
    wait_for("the agent to thaw", Duration::from_secs(5), || {
        process_state(pid).is_some_and(|s| s != 'T')
    });
    wait_for("heartbeats again", Duration::from_secs(5), || {
        status(&lab, Node::Backup).counters.heartbeats_received > heard_frozen
    });
    let _ = status(&lab, Node::Master);

    // Kill the agent: gone shortly after the reply.
    let message = inject(&lab, Fault::KillAgent);
    assert!(message.contains(&pid.to_string()), "{message}");
    wait_for(
        "the killed agent to be gone",
        Duration::from_secs(3),
        || lab.agent_pid(Node::Master).is_none(),
    );
}
