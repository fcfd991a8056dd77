//! The hot replica (design §9, issue 14) on a real lab: the backup's service mirrors
//! every session, so the service's per-connection state survives a master crash.
//! Each scenario runs in hot mode, and where it matters in cold mode too, so the
//! test cannot pass vacuously.

use nonstop_e2e::*;
use nonstop_lab::{Lab, LabGuard, LabSpec, Node};
use nonstop_shared::config::ReplicaMode;
use nonstop_shared::control::EventKind;
use nonstop_shared::kv::Session;
use nonstop_shared::Mode;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The hot scenarios run one at a time: each runs two services and a mirror per
/// session on a 2-core machine, and two of them side by side starve the timers they
/// measure (known: under that load a slow reader was once answered wrong bytes after
/// a cold fallback on a hot node — see the closing notes; not yet understood).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A lab whose agents run `nonstop-kv` in `replica` mode, settled (master serving,
/// replication connected, the backup's service running when hot).
fn kv_lab(tag: &str, replica: ReplicaMode, start_backup: bool) -> LabGuard {
    let kv = bin("nonstop-kv");
    service_lab(
        tag,
        &format!("{} --listen 0.0.0.0:7000", kv.display()),
        replica,
        start_backup,
    )
}

/// A lab whose agents run `service` in `replica` mode, settled.
fn service_lab(tag: &str, service: &str, replica: ReplicaMode, start_backup: bool) -> LabGuard {
    let spec = LabSpec {
        name: unique_name(tag),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: Some(service.to_owned()),
    };
    let lab = LabGuard::up(&spec).expect("lab up");
    lab.set_replica(replica).expect("replica mode");
    lab.start_agent(Node::Master).expect("master agent");
    std::thread::sleep(Duration::from_millis(500));
    if start_backup {
        start_backup_agent(&lab, replica);
    } else {
        wait_for(Duration::from_secs(10), || {
            let m = status_of(&lab, Node::Master)?;
            (m.mode == Mode::Master && m.app?.pid.is_some()).then_some(())
        })
        .unwrap_or_else(|e| panic!("master never served: {e}\n{}", logs(&lab)));
    }
    lab
}

/// Starts the backup's agent and waits for a settled pair.
fn start_backup_agent(lab: &Lab, replica: ReplicaMode) {
    lab.start_agent(Node::Backup).expect("backup agent");
    wait_for(Duration::from_secs(10), || {
        let (m, b) = statuses(lab);
        let (m, b) = (m?, b?);
        let backup_service = replica == ReplicaMode::Cold || b.app.as_ref()?.pid.is_some();
        (m.mode == Mode::Master
            && b.mode == Mode::Backup
            && m.app?.pid.is_some()
            && backup_service
            && m.replication.connected)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("pair never settled: {e}\n{}", logs(lab)));
    // The backup's service listens (its mirrors need it).
    std::thread::sleep(Duration::from_millis(300));
}

/// One client of `nonstop-kv` with its own oracle (`Session`): every reply must be
/// what the protocol says for this connection's own input.
struct Kv {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    oracle: Session,
    port: u16,
}

impl Kv {
    fn connect(lab: &Lab) -> Kv {
        let vip = std::net::SocketAddr::from((lab.vip(), 7000));
        let stream =
            nonstop_lab::connect_in_netns(&lab.namespace("peer"), vip, Duration::from_secs(3))
                .expect("connect to the VIP");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let port = stream.local_addr().expect("local addr").port();
        Kv {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
            oracle: Session::new(),
            port,
        }
    }

    /// Sends `line`; returns (reply, what the oracle says it must be).
    fn ask(&mut self, line: &str) -> std::io::Result<(String, String)> {
        self.send(line)?;
        self.answer(line)
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{line}\n").as_bytes())
    }

    /// Reads the reply to `line` (already sent).
    fn answer(&mut self, line: &str) -> std::io::Result<(String, String)> {
        let want = self.oracle.handle(line.as_bytes(), unix_ms()).line;
        let mut got = String::new();
        if self.reader.read_line(&mut got)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok((got.trim_end().to_owned(), want))
    }

    /// Asks and insists the reply is right.
    fn check(&mut self, line: &str, lab: &Lab) {
        let (got, want) = self
            .ask(line)
            .unwrap_or_else(|e| panic!("port {}: {line}: {e}\n{}", self.port, logs(lab)));
        assert_eq!(got, want, "port {}: reply to {line}", self.port);
    }
}

/// Logged-in clients, each with its own namespace and counter.
fn stateful_clients(lab: &Lab, n: usize) -> Vec<Kv> {
    (0..n)
        .map(|i| {
            let mut kv = Kv::connect(lab);
            kv.check(&format!("LOGIN user{i}"), lab);
            kv.check(&format!("USE ns{i}"), lab);
            kv.check("INCR hits", lab);
            kv
        })
        .collect()
}

/// The replica state of every session on the node that is backup now
/// (`sessions --json`).
fn replica_states(lab: &Lab) -> Vec<(String, String)> {
    let (a, b) = session_lists(lab);
    let backup = [a, b]
        .into_iter()
        .flatten()
        .find(|l| l.mode == Mode::Backup);
    backup
        .map(|l| {
            l.sessions
                .into_iter()
                .map(|s| (s.peer, s.replica.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the backup reports `want` for `n` sessions.
fn wait_states(lab: &Lab, n: usize, want: &str) -> Vec<(String, String)> {
    wait_for(Duration::from_secs(10), || {
        let states = replica_states(lab);
        (states.iter().filter(|(_, s)| s == want).count() == n).then_some(states)
    })
    .unwrap_or_else(|e| {
        panic!(
            "not {n} sessions {want}: {e}: {:?}\n{}",
            replica_states(lab),
            logs(lab)
        )
    })
}

/// Crashes the master host (SIGKILL of every process there) and waits until the
/// backup serves.
fn crash_master(lab: &Lab) -> nonstop_shared::control::NodeStatus {
    lab.kill_all("master").expect("crash the master host");
    wait_for(Duration::from_secs(10), || {
        let s = status_of(lab, Node::Backup)?;
        (s.mode == Mode::Master && s.replication.restore_pending == 0).then_some(s)
    })
    .unwrap_or_else(|e| panic!("backup never took over: {e}\n{}", logs(lab)))
}

#[test]
fn hot_stateful_sessions_keep_their_state_through_a_master_crash_and_cold_ones_lose_it() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    const N: usize = 16;
    // Hot: every reply after the crash is what the connection's own state says.
    let lab = kv_lab("hotkv", ReplicaMode::Hot, true);
    let mut clients = stateful_clients(&lab, N);
    wait_states(&lab, N, "hot");
    for kv in &mut clients {
        kv.check("INCR hits", &lab);
    }
    let ports: Vec<u16> = clients.iter().map(|c| c.port).collect();
    let status = crash_master(&lab);
    eprintln!(
        "hot takeover: {} adopted, {} restored cold",
        status.replication.mirrors_adopted, status.replication.mirrors_fallback
    );
    assert_eq!(status.replication.mirrors_adopted, N as u64);
    assert_eq!(status.replication.mirrors_fallback, 0);
    for round in 0..5 {
        for kv in &mut clients {
            kv.check("INCR hits", &lab);
            if round == 0 {
                kv.check("WHO", &lab);
            }
        }
    }
    assert_eq!(clients.iter().map(|c| c.port).collect::<Vec<_>>(), ports);
    drop(lab);

    // Cold: the same scenario loses the state (asserted, so the hot half is real).
    let lab = kv_lab("coldkv", ReplicaMode::Cold, true);
    let mut clients = stateful_clients(&lab, N);
    wait_for(Duration::from_secs(10), || {
        let (m, b) = session_lists(&lab);
        (m?.sessions.len() == N && b?.sessions.len() == N).then_some(())
    })
    .expect("replicated");
    crash_master(&lab);
    let mut wrong = 0;
    for kv in &mut clients {
        let (got, want) = kv.ask("INCR hits").expect("the connection survives cold");
        if got != want {
            wrong += 1;
        }
    }
    eprintln!("cold takeover: {wrong} of {N} replies wrong");
    assert_eq!(wrong, N, "a cold replica forgets every connection's login");
}

/// Acceptance 2: input the crashed master's kernel acknowledged but its slow service
/// had not read yet is processed after the takeover — in hot mode. Cold mode loses
/// it (the session is reset or its replies never come).
#[test]
fn unread_input_survives_a_crash_in_hot_mode_and_is_lost_in_cold_mode() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    const BURST: usize = 60;
    for replica in [ReplicaMode::Hot, ReplicaMode::Cold] {
        let lab = kv_lab(
            if replica == ReplicaMode::Hot {
                "hotslow"
            } else {
                "coldslow"
            },
            replica,
            true,
        );
        let mut kv = Kv::connect(&lab);
        kv.check("LOGIN slow", &lab);
        kv.check("SLOW 50", &lab);
        if replica == ReplicaMode::Hot {
            wait_states(&lab, 1, "hot");
        }
        // A burst the slow service takes ~3 s to read: most of it sits unread in the
        // master's socket when the master dies.
        let burst: Vec<String> = (0..BURST).map(|i| format!("INCR k{}", i % 3)).collect();
        for line in &burst {
            kv.send(line).expect("send");
        }
        std::thread::sleep(Duration::from_millis(400));
        crash_master(&lab);
        let started = Instant::now();
        let mut correct = 0;
        let mut failure = None;
        for line in &burst {
            match kv.answer(line) {
                Ok((got, want)) if got == want => correct += 1,
                Ok((got, want)) => {
                    failure = Some(format!("{line}: got {got:?}, want {want:?}"));
                    break;
                }
                Err(e) => {
                    failure = Some(format!("{line}: {e}"));
                    break;
                }
            }
        }
        eprintln!(
            "{}: {correct} of {BURST} replies correct after the crash ({:?}); {failure:?}",
            replica.as_str(),
            started.elapsed()
        );
        if replica == ReplicaMode::Hot {
            assert_eq!(correct, BURST, "{failure:?}\n{}", logs(&lab));
            kv.check("SLOW 0", &lab);
            kv.check("WHO", &lab);
        } else {
            assert!(
                correct < BURST,
                "cold mode cannot have the unread input: the scenario is not testing anything"
            );
        }
    }
}

/// Acceptance 4: a service whose output is not a function of its input (`TIME`):
/// the sessions are marked diverged with an event, fall back to the cold restore at
/// the takeover, and none breaks.
#[test]
fn nondeterministic_output_diverges_and_falls_back_cold_without_breaking() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    const N: usize = 4;
    let lab = kv_lab("hottime", ReplicaMode::Hot, true);
    let mut clients: Vec<Kv> = (0..N).map(|_| Kv::connect(&lab)).collect();
    for kv in &mut clients {
        kv.check("PING", &lab);
    }
    wait_states(&lab, N, "hot");
    // The replica answers within the same millisecond now and then: ask until every
    // session showed a different time (each at most 50 times).
    for _ in 0..50 {
        for kv in &mut clients {
            let (got, _) = kv.ask("TIME").expect("time");
            assert!(got.parse::<u64>().is_ok(), "TIME answered {got:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
        if replica_states(&lab).iter().all(|(_, s)| s == "diverged") {
            break;
        }
    }
    wait_states(&lab, N, "diverged");
    let events = events(&lab).expect("events");
    let diverged = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Mirror { state, .. } if state == "diverged"))
        .count();
    assert_eq!(diverged, N, "one divergence event per session");
    let status = crash_master(&lab);
    assert_eq!(status.replication.mirrors_adopted, 0);
    assert_eq!(status.replication.mirrors_fallback, N as u64);
    for kv in &mut clients {
        // Restored cold into the same running service: the connection goes on.
        kv.check("PING", &lab);
        let (got, _) = kv.ask("TIME").expect("time after the takeover");
        assert!(got.parse::<u64>().is_ok(), "TIME answered {got:?}");
    }
}

/// Acceptance 5 (partly): a backup that joins late mirrors only the sessions opened
/// after it joined; a crash of the replica's service turns its mirrors cold with an
/// event and no peer notices; a master crash then restores the cold sessions cold
/// and adopts nothing it cannot.
#[test]
fn a_late_backup_is_cold_for_old_sessions_hot_for_new_ones_and_a_replica_crash_turns_them_cold() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = kv_lab("hotlate", ReplicaMode::Hot, false);
    let mut old = stateful_clients(&lab, 2);
    start_backup_agent(&lab, ReplicaMode::Hot);
    let mut new = stateful_clients(&lab, 2);
    let states = wait_states(&lab, 2, "hot");
    assert_eq!(
        states.iter().filter(|(_, s)| s == "cold").count(),
        2,
        "{states:?}"
    );
    for kv in old.iter_mut().chain(new.iter_mut()) {
        kv.check("INCR hits", &lab);
    }
    // The replica's service dies: its mirrors turn cold, the master goes on.
    let pid = status_of(&lab, Node::Backup)
        .and_then(|s| s.app?.pid)
        .expect("the backup runs the service");
    lab.exec("backup", &["kill", "-9", &pid.to_string()])
        .expect("kill the replica's service");
    wait_states(&lab, 4, "cold");
    for kv in old.iter_mut().chain(new.iter_mut()) {
        kv.check("INCR hits", &lab);
    }
    let events = events(&lab).expect("events");
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::Mirror { state, detail, .. } if state == "cold" && detail.contains("died"))
        ),
        "a replica crash is an event"
    );
}

/// Acceptance 6 (partly): an off-the-shelf server (Debian's socat, one forked `cat`
/// per connection) in hot mode through a switchover and a master crash: byte-exact,
/// same ports, every session taken over by its mirror both times.
#[test]
fn an_off_the_shelf_server_is_hot_through_a_switchover_and_a_crash() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    const N: usize = 16;
    let lab = service_lab(
        "hotsocat",
        "exec socat TCP-LISTEN:7000,reuseaddr,fork EXEC:cat",
        ReplicaMode::Hot,
        true,
    );
    let mut clients = EchoClients::connect(&lab, N).expect("connect");
    for _ in 0..3 {
        clients.round().expect("round");
    }
    wait_states(&lab, N, "hot");
    let ports = clients.ports();
    switchover(&lab, Node::Backup);
    for round in 0..3 {
        clients.round().unwrap_or_else(|e| {
            panic!("round {round} after the switchover: {e:#}\n{}", logs(&lab))
        });
    }
    let taken = status_of(&lab, Node::Backup).expect("status").replication;
    assert_eq!(taken.mirrors_adopted, N as u64, "{}", logs(&lab));
    wait_states(&lab, N, "hot");
    // Crash the host serving now (the backup node).
    lab.kill_all("backup").expect("crash the serving host");
    wait_for(Duration::from_secs(10), || {
        let s = status_of(&lab, Node::Master)?;
        (s.mode == Mode::Master && s.replication.restore_pending == 0).then_some(s)
    })
    .unwrap_or_else(|e| panic!("no takeover: {e}\n{}", logs(&lab)));
    for round in 0..3 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("round {round} after the crash: {e:#}\n{}", logs(&lab)));
    }
    let taken = status_of(&lab, Node::Master).expect("status").replication;
    assert_eq!(taken.mirrors_adopted, N as u64, "{}", logs(&lab));
    assert_eq!(clients.ports(), ports);
}

/// Echo sessions in hot mode through a master crash: byte-exact, same ports, every
/// session taken over by its mirror.
#[test]
fn hot_echo_sessions_survive_a_master_crash_byte_exact() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    const N: usize = 8;
    let echo = bin("nonstop-echo");
    let spec = LabSpec {
        name: unique_name("hotecho"),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: Some(format!("{} --listen 0.0.0.0:7000", echo.display())),
    };
    let lab = LabGuard::up(&spec).expect("lab up");
    lab.set_replica(ReplicaMode::Hot).expect("hot");
    lab.start_agent(Node::Master).expect("master");
    std::thread::sleep(Duration::from_millis(500));
    start_backup_agent(&lab, ReplicaMode::Hot);
    let mut clients = EchoClients::connect(&lab, N).expect("connect");
    for _ in 0..3 {
        clients.round().expect("round");
    }
    wait_states(&lab, N, "hot");
    let ports = clients.ports();
    let status = crash_master(&lab);
    assert_eq!(
        status.replication.mirrors_adopted,
        N as u64,
        "{}",
        logs(&lab)
    );
    for round in 0..5 {
        clients
            .round()
            .unwrap_or_else(|e| panic!("round {round} after the crash: {e:#}\n{}", logs(&lab)));
    }
    assert_eq!(clients.ports(), ports);
}

/// Clients driven by a thread of their own: each asks `INCR hits` every 20 ms and
/// checks the reply against its oracle; failures are collected, not fatal.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Kv>, Vec<String>, u64, Duration)>,
}

impl Load {
    fn start(mut clients: Vec<Kv>) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut rounds = 0u64;
            let mut worst = Duration::ZERO;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                for kv in clients.iter_mut() {
                    if let Err(e) = kv.send("INCR hits") {
                        failures.push(format!("port {}: send: {e}", kv.port));
                    }
                }
                for kv in clients.iter_mut() {
                    match kv.answer("INCR hits") {
                        Ok((got, want)) if got == want => {}
                        Ok((got, want)) => {
                            failures.push(format!("port {}: got {got:?}, want {want:?}", kv.port))
                        }
                        Err(e) => failures.push(format!("port {}: {e}", kv.port)),
                    }
                }
                worst = worst.max(started.elapsed());
                rounds += 1;
                if failures.len() > 20 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (clients, failures, rounds, worst)
        });
        Load { stop, thread }
    }

    fn finish(self) -> (Vec<Kv>, Vec<String>, u64, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// Runs `console switchover` and waits until `to` serves with no restore pending.
fn switchover(lab: &Lab, to: Node) {
    let (ok, out) = console(lab, &["switchover", "--json"]);
    assert!(ok, "switchover failed: {out}\n{}", logs(lab));
    wait_for(Duration::from_secs(10), || {
        let s = status_of(lab, to)?;
        (s.mode == Mode::Master && s.replication.restore_pending == 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{to} never served: {e}\n{}", logs(lab)));
}

/// Acceptance 1 (hot half) and 5: stateful sessions under load (`INCR` every 20 ms
/// each) through a switchover (the pair stays hot: the old master's connections
/// become mirrors), the way back, and a crash of the master host — every reply
/// correct, same ports. Then the crashed host rejoins: cold for the old sessions,
/// hot for new ones. `NONSTOP_HOT_SESSIONS` sets the number of sessions (default 32).
#[test]
fn hot_stateful_sessions_stay_correct_through_switchover_way_back_and_crash() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    let n: usize = std::env::var("NONSTOP_HOT_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let lab = kv_lab("hotall", ReplicaMode::Hot, true);
    let clients = stateful_clients(&lab, n);
    let ports: Vec<u16> = clients.iter().map(|c| c.port).collect();
    wait_states(&lab, n, "hot");
    let load = Load::start(clients);
    std::thread::sleep(Duration::from_millis(500));
    switchover(&lab, Node::Backup);
    let states = wait_states(&lab, n, "hot");
    eprintln!(
        "after the switchover: {} sessions hot on the old master",
        states.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    switchover(&lab, Node::Master);
    wait_states(&lab, n, "hot");
    std::thread::sleep(Duration::from_millis(500));
    let status = crash_master(&lab);
    eprintln!(
        "crash: {} adopted, {} cold",
        status.replication.mirrors_adopted, status.replication.mirrors_fallback
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (mut clients, failures, rounds, worst) = load.finish();
    eprintln!("{rounds} rounds of {n} requests, worst round {worst:?}");
    assert!(failures.is_empty(), "{failures:#?}\n{}", logs(&lab));
    assert_eq!(clients.iter().map(|c| c.port).collect::<Vec<_>>(), ports);
    for kv in &mut clients {
        kv.check("WHO", &lab);
    }
    // The crashed host rejoins: cold for the old sessions, hot for new ones.
    lab.start_agent(Node::Master)
        .expect("restart the master host's agent");
    wait_for(Duration::from_secs(10), || {
        let s = status_of(&lab, Node::Master)?;
        (s.mode == Mode::Backup && s.app?.pid.is_some()).then_some(())
    })
    .unwrap_or_else(|e| panic!("the old master never rejoined: {e}\n{}", logs(&lab)));
    std::thread::sleep(Duration::from_millis(300));
    let mut new = stateful_clients(&lab, 2);
    let states = wait_for(Duration::from_secs(10), || {
        let (rejoined, _) = session_lists(&lab);
        let list = rejoined?;
        let hot = list
            .sessions
            .iter()
            .filter(|s| s.replica.as_deref() == Some("hot"))
            .count();
        let cold = list
            .sessions
            .iter()
            .filter(|s| s.replica.as_deref() == Some("cold"))
            .count();
        (hot == 2 && cold == n).then_some((hot, cold))
    })
    .unwrap_or_else(|e| panic!("rejoined node: {e}\n{}", logs(&lab)));
    eprintln!("rejoined node: {} hot, {} cold", states.0, states.1);
    for kv in new.iter_mut().chain(clients.iter_mut()) {
        kv.check("INCR hits", &lab);
    }
}

/// Issue 13, acceptance 3 (hot half): slow-reading clients (1 MiB echoed, read 1 KiB
/// every 5 ms through an 8 KiB receive buffer) while the master host crashes. Cold
/// mode can only reset such a session cleanly (the output its service had not sent
/// died with it, `recovery.rs`); in hot mode the mirror's kernel holds exactly the
/// output the peer has not acknowledged, so every transfer must end complete and
/// exact. The crashed host rejoins as the new backup each trial and mirrors the next
/// trial's sessions. 25 crashes × 2 transfers: the 50 trials of the cold test.
#[test]
fn a_crash_continues_every_slow_reader_exactly_in_hot_mode() {
    if !require_root() {
        return;
    }
    let _one_at_a_time = serial();
    use nonstop_e2e::slow::{self, Ending, Slowness};
    const TRIALS: usize = 25;
    const CLIENTS: usize = 2;
    let echo = bin("nonstop-echo");
    let lab = service_lab(
        "hotslow",
        &format!("{} --listen 0.0.0.0:7000", echo.display()),
        ReplicaMode::Hot,
        true,
    );
    let slowness = Slowness {
        stall: Duration::from_secs(10),
        ..Slowness::default()
    };
    let other = |n: Node| {
        if n == Node::Master {
            Node::Backup
        } else {
            Node::Master
        }
    };
    let host = |n: Node| {
        if n == Node::Master {
            "master"
        } else {
            "backup"
        }
    };
    let mut master = Node::Master;
    let mut complete = 0;
    for trial in 0..TRIALS {
        let clients = slow::spawn_group(&lab, CLIENTS, slowness).expect("slow clients");
        let ports: Vec<String> = clients.iter().map(|c| format!(":{}", c.port)).collect();
        // Mirrored on the backup before the crash.
        wait_for(Duration::from_secs(10), || {
            let hot = replica_states(&lab)
                .into_iter()
                .filter(|(peer, state)| {
                    state == "hot" && ports.iter().any(|p| peer.ends_with(p.as_str()))
                })
                .count();
            (hot == CLIENTS).then_some(())
        })
        .unwrap_or_else(|e| panic!("trial {trial}: sessions never hot: {e}\n{}", logs(&lab)));
        std::thread::sleep(Duration::from_millis(800));
        lab.kill_all(host(master)).expect("crash the master host");
        let survivor = other(master);
        wait_for(Duration::from_secs(10), || {
            let s = status_of(&lab, survivor)?;
            (s.mode == Mode::Master && s.replication.restore_pending == 0).then_some(())
        })
        .unwrap_or_else(|e| panic!("trial {trial}: no takeover: {e}\n{}", logs(&lab)));
        for (i, client) in clients.into_iter().enumerate() {
            let port = client.port;
            match client.finish() {
                Ending::Complete => complete += 1,
                other => panic!(
                    "trial {trial} client {i} (port {port}): {other:?} in hot mode\n{}",
                    logs(&lab)
                ),
            }
        }
        // The crashed host rejoins as the hot backup.
        lab.start_agent(master).expect("restart the crashed agent");
        let rejoined = master;
        // Settled: the rejoined agent first resumes as master for a moment (its host
        // still holds the VIP) and yields; a session opened before its replication
        // is in step would be in its snapshot, not mirrored from the handshake (cold).
        let settled = || {
            let s = status_of(&lab, rejoined)?;
            let m = status_of(&lab, survivor)?;
            (s.mode == Mode::Backup
                && s.app.as_ref()?.pid.is_some()
                && s.replication.connected
                && m.mode == Mode::Master
                && m.replication.connected)
                .then_some(())
        };
        wait_for(Duration::from_secs(15), || {
            settled()?;
            std::thread::sleep(Duration::from_millis(300));
            settled()
        })
        .unwrap_or_else(|e| panic!("trial {trial}: no hot rejoin: {e}\n{}", logs(&lab)));
        master = survivor;
    }
    eprintln!(
        "{complete} of {} slow transfers through a master crash in hot mode: complete and exact",
        TRIALS * CLIENTS
    );
    assert_eq!(complete, TRIALS * CLIENTS);
}
