//! Stateful sessions on a lab: `nonstop-kv` under both agents (cold or hot replica)
//! and a load of sessions that each log in, select their own namespace and send
//! `INCR` + `WHO` every few milliseconds from the peer namespace, every reply judged
//! by the protocol's own oracle (`nonstop_shared::kv::check`). Wrong replies are
//! counted per *phase* (the test moves the phase before each fault), so a test can
//! say which failover lost the sessions' state.

use crate::{logs, statuses, unique_name, wait_for};
use anyhow::{bail, Context};
use nonstop_lab::{Lab, LabGuard, LabSpec, Node};
use nonstop_shared::kv::check::{encode, KvCheck, Request};
use nonstop_shared::Mode;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether the backup runs the service too (`service.replica`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replica {
    /// Sessions are restored into a fresh service at takeover (the default).
    Cold,
    /// The backup mirrors every session in its own running service (design §9).
    Hot,
}

impl Replica {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Replica::Cold => "cold",
            Replica::Hot => "hot",
        }
    }
}

/// A reply that does not come for this long breaks the session.
pub const STALL_LIMIT: Duration = Duration::from_secs(20);
const IO_TICK: Duration = Duration::from_millis(100);

/// Sets `service.replica` in an agent config file (written only for `hot`: `cold`
/// is the default, and an agent that predates the key still starts).
pub fn set_replica(path: &std::path::Path, replica: Replica) -> anyhow::Result<()> {
    if replica == Replica::Cold {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .with_context(|| format!("parse {}", path.display()))?;
    let service = doc
        .entry("service")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(service) = service.as_table_mut() else {
        bail!("{}: [service] is not a table", path.display());
    };
    service.insert("replica".into(), replica.as_str().into());
    std::fs::write(path, toml::to_string(&doc)?).with_context(|| format!("{}", path.display()))
}

/// A lab whose agents manage `nonstop-kv` on port 7000 with `replica`, settled with
/// one master (service running, replication connected) and one backup.
pub fn kv_lab(tag: &str, replica: Replica) -> LabGuard {
    let kv = crate::bin("nonstop-kv");
    let spec = LabSpec {
        name: unique_name(tag),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: Some(format!("exec {} --listen 0.0.0.0:7000", kv.display())),
    };
    let lab = LabGuard::up(&spec).expect("lab up");
    for node in [Node::Master, Node::Backup] {
        set_replica(&lab.config_path(node), replica).expect("replica in the agent config");
    }
    lab.start_agent(Node::Master).expect("master agent");
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(Node::Backup).expect("backup agent");
    wait_for(Duration::from_secs(15), || {
        let (m, b) = statuses(&lab);
        let (m, b) = (m?, b?);
        (m.mode == Mode::Master
            && b.mode == Mode::Backup
            && m.app?.pid.is_some()
            && m.replication.connected)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("pair never settled: {e}\n{}", logs(&lab)));
    lab
}

/// What the load saw, per phase and in all.
#[derive(Debug, Clone, Default)]
pub struct KvFigures {
    /// Sessions.
    pub sessions: usize,
    /// Wrong replies, per phase.
    pub wrong: Vec<u64>,
    /// Sessions with at least one wrong reply, per phase.
    pub wrong_sessions: Vec<BTreeSet<usize>>,
    /// Rounds completed, per phase.
    pub rounds: Vec<u64>,
    /// Replies judged right, in all.
    pub right: u64,
    /// Broken sessions: (session, phase, why).
    pub broken: Vec<(usize, usize, String)>,
    /// The first few wrong replies: (phase, session, what came and what was due).
    pub examples: Vec<(usize, usize, String)>,
    /// Local ports at the start and at the end (0: could not be read).
    pub ports_before: Vec<u16>,
    /// Local ports at the end.
    pub ports_after: Vec<u16>,
    /// Longest time between two completed rounds.
    pub longest_gap: Duration,
}

/// A running load of stateful sessions.
pub struct KvLoad {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    rounds: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<KvFigures>,
}

struct Conn {
    stream: TcpStream,
    inbox: Vec<u8>,
    check: KvCheck,
    broken: bool,
}

impl Conn {
    /// The next reply line (without its newline).
    fn line(&mut self) -> Result<String, String> {
        let mut buf = [0u8; 4096];
        let mut last = Instant::now();
        loop {
            if let Some(pos) = self.inbox.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.inbox.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            if self.inbox.len() > 64 * 1024 {
                return Err("a reply line longer than 64 KiB".into());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("connection closed (EOF)".into()),
                Ok(n) => {
                    self.inbox.extend_from_slice(&buf[..n]);
                    last = Instant::now();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if last.elapsed() >= STALL_LIMIT {
                        return Err(format!("no reply for {} s", STALL_LIMIT.as_secs()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

impl KvLoad {
    /// Connects `sessions` sessions from the lab's peer namespace to VIP:7000, logs
    /// each in and selects its namespace (every reply checked), then sends a round
    /// every `interval` on a thread of its own.
    pub fn start(lab: &Lab, sessions: usize, interval: Duration) -> anyhow::Result<KvLoad> {
        let vip = SocketAddr::from((lab.vip(), 7000));
        let ns = lab.namespace("peer");
        let mut conns = Vec::with_capacity(sessions);
        for i in 0..sessions {
            let stream = nonstop_lab::connect_in_netns(&ns, vip, Duration::from_secs(3))
                .with_context(|| format!("session {i} connect"))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TICK))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            conns.push(Conn {
                stream,
                inbox: Vec::new(),
                check: KvCheck::new("kv", i),
                broken: false,
            });
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let opening = c.check.opening();
            c.stream
                .write_all(&encode(&opening))
                .with_context(|| format!("session {i} login"))?;
        }
        for (i, c) in conns.iter_mut().enumerate() {
            for r in c.check.opening() {
                let reply = c.line().map_err(anyhow::Error::msg)?;
                if let Err(expected) = c.check.judge(&r, &reply) {
                    bail!(
                        "session {i}: {:?} answered {reply:?}, not {expected:?}",
                        r.line
                    );
                }
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, p, r) = (Arc::clone(&stop), Arc::clone(&phase), Arc::clone(&rounds));
        let thread = std::thread::Builder::new()
            .name("kv-load".into())
            .spawn(move || run(conns, interval, &s, &p, &r))
            .context("start the load thread")?;
        Ok(KvLoad {
            stop,
            phase,
            rounds,
            thread,
        })
    }

    /// From now on, wrong replies count in phase `n`.
    pub fn set_phase(&self, n: usize) {
        self.phase.store(n, Ordering::SeqCst);
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `n` more rounds have completed (fails after `within`).
    pub fn wait_rounds(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let target = self.rounds() + n;
        wait_for(within, || (self.rounds() >= target).then_some(()))
    }

    /// Stops after the running round; the figures.
    pub fn stop(self) -> KvFigures {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

fn ports(conns: &[Conn]) -> Vec<u16> {
    conns
        .iter()
        .map(|c| c.stream.local_addr().map_or(0, |a| a.port()))
        .collect()
}

fn run(
    mut conns: Vec<Conn>,
    interval: Duration,
    stop: &AtomicBool,
    phase: &AtomicUsize,
    rounds: &AtomicU64,
) -> KvFigures {
    let mut f = KvFigures {
        sessions: conns.len(),
        ports_before: ports(&conns),
        ..KvFigures::default()
    };
    let mut last_round = Instant::now();
    let grow = |f: &mut KvFigures, p: usize| {
        while f.wrong.len() <= p {
            f.wrong.push(0);
            f.wrong_sessions.push(BTreeSet::new());
            f.rounds.push(0);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut sent: Vec<(usize, Vec<Request>)> = Vec::with_capacity(conns.len());
        for (i, c) in conns.iter_mut().enumerate().filter(|(_, c)| !c.broken) {
            let requests = c.check.round();
            match c.stream.write_all(&encode(&requests)) {
                Ok(()) => sent.push((i, requests)),
                Err(e) => {
                    c.broken = true;
                    let p = phase.load(Ordering::SeqCst);
                    f.broken.push((i, p, format!("write: {e}")));
                }
            }
        }
        if sent.is_empty() {
            break;
        }
        for (i, requests) in sent {
            let c = &mut conns[i];
            for r in &requests {
                let p = phase.load(Ordering::SeqCst);
                grow(&mut f, p);
                match c.line() {
                    Ok(reply) => match c.check.judge(r, &reply) {
                        Ok(()) => f.right += 1,
                        Err(expected) => {
                            f.wrong[p] += 1;
                            f.wrong_sessions[p].insert(i);
                            if f.examples.len() < 8 {
                                f.examples.push((
                                    p,
                                    i,
                                    format!(
                                        "{:?} answered {reply:?}, expected {expected:?}",
                                        r.line
                                    ),
                                ));
                            }
                        }
                    },
                    Err(why) => {
                        c.broken = true;
                        let _ = c.stream.shutdown(std::net::Shutdown::Both);
                        f.broken.push((i, p, why));
                        break;
                    }
                }
            }
        }
        let p = phase.load(Ordering::SeqCst);
        grow(&mut f, p);
        f.rounds[p] += 1;
        rounds.fetch_add(1, Ordering::SeqCst);
        f.longest_gap = f.longest_gap.max(last_round.elapsed());
        last_round = Instant::now();
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    f.ports_after = ports(&conns);
    f
}

/// The phases of [`failover_scenario`], in order (index = phase number).
pub const PHASES: [&str; 6] = [
    "before any fault",
    "switchover",
    "the way back",
    "crash of the master host",
    "rejoin of the crashed host",
    "failover after the rejoin",
];

/// What [`failover_scenario`] saw.
#[derive(Debug)]
pub struct Scenario {
    /// The replica mode it ran in.
    pub replica: Replica,
    /// The load's figures.
    pub figures: KvFigures,
    /// The peer's (established resets, active opens, aborts on data) before and after.
    pub peer_counters: ((u64, u64, u64), (u64, u64, u64)),
    /// The agents' logs at the end, for failure messages.
    pub logs: String,
}

fn settled_master(lab: &Lab, master: Node, what: &str) {
    wait_for(Duration::from_secs(15), || {
        let s = crate::status_of(lab, master)?;
        (s.mode == Mode::Master && s.replication.restore_pending == 0).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{what}: {master} is not a settled master: {e}\n{}",
            logs(lab)
        )
    });
}

fn backup_connected(lab: &Lab, backup: Node, what: &str) {
    let master = if backup == Node::Master {
        Node::Backup
    } else {
        Node::Master
    };
    wait_for(Duration::from_secs(15), || {
        (crate::status_of(lab, backup)?.mode == Mode::Backup
            && crate::status_of(lab, master)?.replication.connected)
            .then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{what}: {backup} did not join as backup: {e}\n{}",
            logs(lab)
        )
    });
}

/// Issue 14, acceptance 1, in `replica` mode: `nonstop-kv` under both agents,
/// `sessions` sessions (each its own login, namespace and counter, a request every
/// 20 ms); a switchover, the way back, SIGKILL of every process on the master host,
/// its rejoin, another failover — with the load running throughout and every reply
/// judged. Returns what it saw; the caller asserts (hot: every reply right; cold: the
/// loss is seen).
pub fn failover_scenario(tag: &str, replica: Replica, sessions: usize) -> Scenario {
    let lab = kv_lab(tag, replica);
    let load = KvLoad::start(&lab, sessions, Duration::from_millis(20))
        .unwrap_or_else(|e| panic!("sessions: {e:#}\n{}", logs(&lab)));
    // After the sessions' own connects: from here on the peer opens nothing.
    let counters_before = crate::peer_tcp_counters(&lab);
    let settle = |what: &str| {
        load.wait_rounds(25, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: the load did not go on: {e}\n{}", logs(&lab)));
    };
    settle(PHASES[0]);
    let switchover = |what: &str, new_master: Node| {
        let (ok, out) = crate::console(&lab, &["switchover", "--json"]);
        assert!(ok, "{what}: switchover failed: {out}\n{}", logs(&lab));
        settled_master(&lab, new_master, what);
    };
    load.set_phase(1);
    switchover(PHASES[1], Node::Backup);
    settle(PHASES[1]);
    load.set_phase(2);
    switchover(PHASES[2], Node::Master);
    settle(PHASES[2]);
    load.set_phase(3);
    lab.kill_all("master").expect("crash the master host");
    settled_master(&lab, Node::Backup, PHASES[3]);
    settle(PHASES[3]);
    load.set_phase(4);
    lab.start_agent(Node::Master)
        .expect("restart the crashed host's agent");
    backup_connected(&lab, Node::Master, PHASES[4]);
    settle(PHASES[4]);
    load.set_phase(5);
    switchover(PHASES[5], Node::Master);
    settle(PHASES[5]);
    let figures = load.stop();
    Scenario {
        replica,
        figures,
        peer_counters: (counters_before, crate::peer_tcp_counters(&lab)),
        logs: logs(&lab),
    }
}

impl Scenario {
    /// One line per phase: rounds, wrong replies, sessions with a wrong reply.
    pub fn describe(&self) -> String {
        let f = &self.figures;
        let mut out = format!(
            "{} replica, {} sessions, {} replies right, {} broken, longest round gap {} ms, \
             peer counters (resets, opens, aborts) {:?} -> {:?}\n",
            self.replica.as_str(),
            f.sessions,
            f.right,
            f.broken.len(),
            f.longest_gap.as_millis(),
            self.peer_counters.0,
            self.peer_counters.1
        );
        for (p, name) in PHASES.iter().enumerate() {
            out.push_str(&format!(
                "  {p} {name}: {} rounds, {} wrong replies in {} sessions\n",
                f.rounds.get(p).copied().unwrap_or(0),
                f.wrong.get(p).copied().unwrap_or(0),
                f.wrong_sessions.get(p).map_or(0, BTreeSet::len)
            ));
        }
        for (p, s, what) in &f.examples {
            out.push_str(&format!("  wrong in phase {p}, session {s}: {what}\n"));
        }
        for (s, p, why) in f.broken.iter().take(8) {
            out.push_str(&format!("  broken in phase {p}: session {s}: {why}\n"));
        }
        out
    }

    /// No session broke or connected again: same sockets, same local ports, and the
    /// peer's kernel counted no reset, no new connection, no abort.
    pub fn assert_sessions_unbroken(&self) {
        let f = &self.figures;
        assert!(f.broken.is_empty(), "sessions broke:\n{}", self.describe());
        assert_eq!(f.ports_before, f.ports_after, "local ports changed");
        assert!(f.ports_before.iter().all(|&p| p != 0));
        assert_eq!(
            self.peer_counters.0,
            self.peer_counters.1,
            "the peer reset, opened or aborted connections:\n{}",
            self.describe()
        );
    }

    /// Hot mode: every reply in every phase was right (counters went on +1, login
    /// and namespace kept), and no session broke or reconnected.
    pub fn assert_state_survived(&self) {
        self.assert_sessions_unbroken();
        let wrong: u64 = self.figures.wrong.iter().sum();
        assert_eq!(
            wrong,
            0,
            "wrong replies:\n{}\n{}",
            self.describe(),
            self.logs
        );
        for (p, rounds) in self.figures.rounds.iter().enumerate() {
            assert!(
                *rounds >= 25,
                "phase {p}: only {rounds} rounds\n{}",
                self.describe()
            );
        }
    }
}
