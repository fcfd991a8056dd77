//! Authentication on the real lab (docs/SECURITY.md):
//!
//! 1. forged heartbeats claiming a higher epoch, sent from the **peer** namespace with
//!    the backup's sync address as source, do not demote the master (dropped, counted);
//! 2. a replayed replication batch is rejected and counted — within its connection,
//!    in another connection, and as a replayed handshake — and never alters a session;
//! 3. a control connection without the key can neither switch over nor inject;
//! 4. an agent refuses a key file that group or others can read, or that is too short.

use nonstop_e2e::*;
use nonstop_lab::{connect_in_netns, Lab, Node};
use nonstop_shared::auth::{
    self, ClientHandshake, HeartbeatAuth, Key, CLIENT_HELLO_LEN, SERVER_HELLO_LEN,
};
use nonstop_shared::control::{Fault, LinkName, Reply, Request};
use nonstop_shared::heartbeat::Heartbeat;
use nonstop_shared::session::{Record, SessionKey};
use nonstop_shared::Mode;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const SYNC_PORT: u16 = 7701;

fn wrong_key() -> Key {
    Key::from_bytes(b"this is not the lab key, but long enough").expect("key")
}

/// A heartbeat in which the "backup" claims to be master at a much higher epoch.
fn coup(epoch: u64, seq: u64) -> Vec<u8> {
    Heartbeat {
        node_id: "backup".into(),
        epoch,
        mode: Mode::Master,
        priority: 255,
        handover: false,
        unhealthy: false,
        seq,
        sent_us: seq * 100_000,
        echo_us: 0,
        echo_delay_us: 0,
        repl_pos: 0,
    }
    .encode()
}

#[test]
fn forged_heartbeats_from_the_peer_namespace_do_not_demote_the_master() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("forge", 100, 3);
    let before = status_of(&lab, Node::Master).expect("master status");
    assert_eq!(before.mode, Mode::Master);
    // The peer reaches the sync network through the master's service address, and
    // spoofs the backup's sync address as source (IP_FREEBIND).
    let sync_net = format!("{}/32", lab.sync_ip(Node::Master));
    let via = lab.service_ip(Node::Master).to_string();
    lab.exec_ok("peer", &["ip", "route", "replace", &sync_net, "via", &via])
        .expect("route to the sync net from the peer");
    let target = SocketAddr::from((lab.sync_ip(Node::Master), SYNC_PORT));
    let spoofed = SocketAddr::from((lab.sync_ip(Node::Backup), SYNC_PORT));
    let lab_key = Key::load(&lab.key_path()).expect("lab key");
    let epoch = before.epoch + 100;
    nonstop_lab::run_in_netns(&lab.namespace("peer"), move || -> std::io::Result<()> {
        // A raw socket writes its own IPv4 header: any source address.
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )?;
        let send = |payload: &[u8]| -> std::io::Result<()> {
            let packet = spoofed_udp(spoofed, target, payload);
            socket.send_to(&packet, &target.into()).map(|_| ())
        };
        // (a) the old, unauthenticated heartbeat format;
        // (b) envelopes tagged with the wrong key;
        // (c) authentic envelopes (an attacker who recorded them) from a boot the
        //     master never confirmed: counted, never delivered.
        let mut forger = HeartbeatAuth::new(&wrong_key(), 42);
        let mut recorder = HeartbeatAuth::new(&lab_key, 43);
        for seq in 1..=20 {
            send(&coup(epoch, seq))?;
            send(&forger.seal(&coup(epoch, seq)))?;
            send(&recorder.seal(&coup(epoch, seq)))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .expect("send from the peer namespace");
    let after = wait_for(Duration::from_secs(3), || {
        let s = status_of(&lab, Node::Master)?;
        (s.counters.malformed_heartbeats >= 20
            && s.counters.heartbeats_rejected >= 20
            && s.counters.heartbeats_unconfirmed >= 20)
            .then_some(s)
    })
    .unwrap_or_else(|e| {
        panic!(
            "forged heartbeats did not arrive or were not counted: {e}\n{:?}\n{}",
            status_of(&lab, Node::Master).map(|s| s.counters),
            logs(&lab)
        )
    });
    eprintln!("master counters after the forgery: {:?}", after.counters);
    assert_eq!(after.mode, Mode::Master, "the master was demoted");
    assert_eq!(after.epoch, before.epoch, "the epoch moved");
    assert!(holds_vip(&lab, Node::Master), "the master lost the VIP");
    assert_eq!(
        status_of(&lab, Node::Backup).map(|s| (s.mode, s.epoch)),
        Some((Mode::Backup, before.epoch))
    );
    // The real backup is still heard (its heartbeats still pass).
    let fresh = status_of(&lab, Node::Master)
        .and_then(|s| s.peer.last_heard_ms)
        .expect("peer heard");
    assert!(
        fresh <= 300,
        "the real backup is no longer heard: {fresh} ms"
    );
}

/// An IPv4 + UDP datagram from `from` to `to` (UDP checksum 0: none, valid in IPv4).
fn spoofed_udp(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only");
    };
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    let mut sum: u32 = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// One authenticated replication connection opened by the test from the master's
/// namespace (so its source is the master's sync address).
struct Replicator {
    stream: TcpStream,
    hello: [u8; CLIENT_HELLO_LEN],
    finish: [u8; auth::CLIENT_FINISH_LEN],
    channel: auth::Channel,
}

fn open_replication(lab: &Lab, key: &Key) -> anyhow::Result<Replicator> {
    let backup = SocketAddr::from((lab.sync_ip(Node::Backup), SYNC_PORT));
    let mut stream = connect_in_netns(&lab.namespace("master"), backup, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let nonce = auth::random_bytes().map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let (handshake, hello) = ClientHandshake::start(key, nonce);
    stream.write_all(&hello)?;
    let mut server_hello = [0u8; SERVER_HELLO_LEN];
    stream.read_exact(&mut server_hello)?;
    let (finish, channel) = handshake.finish(&server_hello)?;
    stream.write_all(&finish)?;
    Ok(Replicator {
        stream,
        hello,
        finish,
        channel,
    })
}

/// Whether the backup closed `stream` (EOF or reset) within a few seconds.
fn closed_by_backup(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // acks
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

fn replication_counters(lab: &Lab) -> (u64, u64) {
    let s = status_of(lab, Node::Backup).expect("backup status");
    (
        s.counters.replication_rejected,
        s.counters.replication_replayed,
    )
}

#[test]
fn replayed_replication_batches_are_rejected_and_counted() {
    if !require_root() {
        return;
    }
    // Long failure detection: the master's agent is frozen during the attack so that
    // its own reconnects cannot supersede the test's connections.
    let lab = managed_echo_lab("replay", 100, 50);
    let mut clients = EchoClients::connect(&lab, 4).expect("sessions");
    for _ in 0..3 {
        clients.round().expect("round");
    }
    wait_replicated(&lab, &clients).expect("replicated");
    let key = Key::load(&lab.key_path()).expect("lab key");
    let victim = SessionKey {
        peer_ip: lab.peer_ip(1),
        peer_port: clients.ports()[0],
        local_ip: lab.vip(),
        local_port: 7000,
    };
    let (rejected0, replayed0) = replication_counters(&lab);
    lab.stop_agent(Node::Master, libc::SIGSTOP)
        .expect("freeze master agent");

    // 1. Within one connection: a harmless batch, then the same bytes again.
    let mut a = open_replication(&lab, &key).expect("connection A");
    let mut batch = Vec::new();
    nonstop_agent::replication::wire::Message::Hello {
        epoch: 0,
        node_id: "recorder".into(),
    }
    .encode(&mut batch);
    let mut recorded = Vec::new();
    a.channel.seal(&batch, &mut recorded);
    let mut twice = recorded.clone();
    twice.extend_from_slice(&recorded);
    a.stream.write_all(&twice).expect("send batch and replay");
    assert!(
        closed_by_backup(&mut a.stream),
        "the backup kept a connection that replayed a batch"
    );
    let (_, replayed1) = wait_for(Duration::from_secs(3), || {
        let c = replication_counters(&lab);
        (c.1 > replayed0).then_some(c)
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(lab.log_path(Node::Backup)).unwrap_or_default();
        let relevant: Vec<&str> = log.lines().filter(|l| l.contains("replication")).collect();
        panic!(
            "replay within a connection not counted: {e}\n{}",
            relevant.join("\n")
        )
    });
    assert_eq!(replayed1, replayed0 + 1);

    // 2. Into another connection: a batch that would delete a live session, sealed
    //    for connection A (the attacker recorded it there), replayed on connection B.
    let mut deletion = Vec::new();
    nonstop_agent::replication::wire::Message::Record(u64::MAX / 2, Record::Delete(victim))
        .encode(&mut deletion);
    let mut recorded_delete = Vec::new();
    a.channel.seal(&deletion, &mut recorded_delete);
    let mut b = open_replication(&lab, &key).expect("connection B");
    b.stream.write_all(&recorded_delete).expect("replay into B");
    assert!(closed_by_backup(&mut b.stream), "B stayed open");
    // 3. A whole recorded handshake replayed: the backup's fresh nonce defeats it.
    let mut c = connect_in_netns(
        &lab.namespace("master"),
        SocketAddr::from((lab.sync_ip(Node::Backup), SYNC_PORT)),
        Duration::from_secs(2),
    )
    .expect("connection C");
    c.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    c.write_all(&b.hello).expect("replayed hello");
    let mut server_hello = [0u8; SERVER_HELLO_LEN];
    c.read_exact(&mut server_hello).expect("server hello");
    c.write_all(&b.finish).expect("replayed finish");
    c.write_all(&recorded_delete).expect("replayed batch");
    assert!(closed_by_backup(&mut c), "C stayed open");
    lab.stop_agent(Node::Master, libc::SIGCONT)
        .expect("thaw master agent");
    wait_for(Duration::from_secs(3), || {
        let (rejected, _) = replication_counters(&lab);
        (rejected >= rejected0 + 2).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "cross-connection replays not counted: {e} {:?}\n{}",
            replication_counters(&lab),
            logs(&lab)
        )
    });

    // Nothing changed: the victim session is still on the backup, the real master's
    // replication is back, and the session survives a failover byte for byte.
    wait_replicated(&lab, &clients).expect("replication resumed");
    let (_, backup) = session_lists(&lab);
    let backup = backup.expect("backup sessions");
    assert!(
        backup
            .sessions
            .iter()
            .any(|s| s.peer == format!("{}:{}", victim.peer_ip, victim.peer_port)),
        "the replayed deletion removed a session"
    );
    assert_eq!(
        status_of(&lab, Node::Backup).map(|s| s.mode),
        Some(Mode::Backup)
    );
    lab.stop_agent(Node::Master, libc::SIGKILL)
        .expect("kill master agent");
    wait_for(Duration::from_secs(10), || {
        let s = status_of(&lab, Node::Backup)?;
        (s.mode == Mode::Master
            && s.replication.sessions >= 4
            && s.replication.restore_pending == 0)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("no takeover: {e}\n{}", logs(&lab)));
    lab.start_agent(Node::Master).expect("restart old master");
    for round in 0..3 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("round {round} after failover: {e:#}\n{}", logs(&lab)));
    }
}

/// Reads reply lines until the agent closes the connection.
fn replies_until_closed(stream: TcpStream) -> Vec<String> {
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return lines,
            Ok(_) => lines.push(line),
        }
    }
}

#[test]
fn control_connections_without_the_key_cannot_switch_over_or_inject() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("nokey", 100, 3);
    let addr = lab.control_addr(Node::Master);
    let connect = || {
        let s = connect_in_netns(&lab.namespace("master"), addr, Duration::from_secs(2))
            .expect("control connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };
    let rejected_before = status_of(&lab, Node::Master)
        .expect("status")
        .counters
        .control_rejected;
    // (a) Straight to the point, no handshake.
    let cut = Request::Inject {
        fault: Fault::Loss {
            link: LinkName::Sync,
            percent: 100,
        },
    };
    for request in [Request::Switchover, cut.clone()] {
        let mut s = connect();
        let lines = format!("{}{}", request.to_line(), Request::Switchover.to_line());
        s.write_all(lines.as_bytes()).expect("send");
        let lines = replies_until_closed(s);
        assert!(lines[0].contains("\"challenge\""), "{lines:?}");
        assert_eq!(lines.len(), 2, "served after refusing: {lines:?}");
        assert!(lines[1].contains("authentication required"), "{lines:?}");
    }
    // (b) A handshake with the wrong key, then the commands.
    let mut s = connect();
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("challenge");
    let Ok(Reply::Challenge { nonce, .. }) = Reply::parse_line(&line) else {
        panic!("no challenge: {line}");
    };
    let server = auth::parse_nonce(&nonce).expect("nonce");
    let client = [9u8; auth::NONCE_LEN];
    let forged = Request::Auth {
        nonce: client.iter().map(|b| format!("{b:02x}")).collect(),
        mac: auth::control_client_mac(&wrong_key(), &server, &client),
    };
    let lines = format!(
        "{}{}{}",
        forged.to_line(),
        Request::Switchover.to_line(),
        cut.to_line()
    );
    // The agent may close before reading everything: a failed write is fine.
    let _ = s.write_all(lines.as_bytes());
    drop(reader);
    let lines = replies_until_closed(s);
    assert_eq!(lines.len(), 1, "served after a bad auth: {lines:?}");
    assert!(lines[0].contains("wrong key"), "{lines:?}");
    // (c) The console with a wrong key file fails too.
    let dir = lab.dir().join("wrong-key");
    std::fs::create_dir_all(&dir).expect("dir");
    let wrong = dir.join("key");
    std::fs::write(&wrong, "this is not the lab key, but long enough\n").expect("key");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = std::process::Command::new(bin("nonstop-console"))
        .args(["--lab", lab.name(), "--key-file"])
        .arg(&wrong)
        .args(["switchover", "--json"])
        .output()
        .expect("console");
    assert!(
        !out.status.success(),
        "console switched over with a wrong key"
    );
    let out = std::process::Command::new(bin("nonstop-console"))
        .args(["--lab", lab.name(), "--key-file"])
        .arg(&wrong)
        .args(["status", "--json"])
        .output()
        .expect("console");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("wrong key"), "{said}");

    // Nothing happened: same modes, the sync link intact, no injection event, and
    // every refusal counted.
    std::thread::sleep(Duration::from_millis(500));
    let (m, b) = statuses(&lab);
    let (m, b) = (m.expect("master"), b.expect("backup"));
    assert_eq!((m.mode, b.mode), (Mode::Master, Mode::Backup));
    assert!(m.peer.last_heard_ms.is_some_and(|ms| ms <= 300));
    assert!(
        m.counters.control_rejected >= rejected_before + 4,
        "refusals not counted: {} -> {}",
        rejected_before,
        m.counters.control_rejected
    );
    let injected = events(&lab)
        .expect("events")
        .into_iter()
        .any(|e| matches!(e.kind, nonstop_shared::control::EventKind::Injected { .. }));
    assert!(!injected, "a fault was injected without the key");
    // The right key still works.
    let (ok, _) = console(&lab, &["status"]);
    assert!(ok);
}

#[test]
fn agent_refuses_a_readable_or_short_key_file() {
    let dir = std::env::temp_dir().join(format!("nonstop-keytest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("key");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"m\"\ndata_dir = \"{}\"\n[service]\ninterface = \"eth0\"\n\
             vip = \"198.18.1.100/24\"\nports = [7000]\n[sync]\naddress = \"198.19.1.1:7701\"\n\
             peer = \"198.19.1.2:7701\"\n[security]\nkey_file = \"{}\"\n",
            dir.join("data").display(),
            key.display()
        ),
    )
    .expect("config");
    let check = |mode: u32, text: &str| {
        std::fs::write(&key, text).expect("key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
        let out = std::process::Command::new(bin("nonstop-agent"))
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .output()
            .expect("agent");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let long = "0123456789abcdef0123456789abcdef\n";
    let (code, err) = check(0o644, long);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    let (code, err) = check(0o640, long);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = check(0o600, "too short\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("at least 32"), "{err}");
    // A good key passes the file checks; the host checks run next (this host has
    // no 198.19.1.1, so they fail with 1, not 2) and list the key as good.
    let (code, out) = check(0o600, long);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    assert!(out.contains("✔ key file:"), "{out}");
    assert!(out.contains("✘ sync address is local"), "{out}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn control_connections_are_bounded_and_idle_ones_time_out() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("cap", 100, 3);
    let addr = lab.control_addr(Node::Backup);
    let ns = lab.namespace("backup");
    // 64 connections that never authenticate fill every slot.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| connect_in_netns(&ns, addr, Duration::from_secs(2)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let extra = connect_in_netns(&ns, addr, Duration::from_secs(2)).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let lines = replies_until_closed(extra);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("too many control connections"),
        "{lines:?}"
    );
    // The agent drops them after the 5 s authentication timeout; the console works
    // again without anyone closing them.
    let started = std::time::Instant::now();
    wait_for(Duration::from_secs(10), || status_of(&lab, Node::Backup))
        .unwrap_or_else(|e| panic!("the control API never recovered: {e}\n{}", logs(&lab)));
    eprintln!(
        "backup's control API answered again after {:?}",
        started.elapsed()
    );
    // Every idle connection and the refused one are counted.
    wait_for(Duration::from_secs(5), || {
        (status_of(&lab, Node::Backup)?.counters.control_rejected >= 65).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "refusals not counted: {e}: {:?}",
            status_of(&lab, Node::Backup).map(|s| s.counters)
        )
    });
    drop(idle);
}
