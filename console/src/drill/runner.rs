//! The thin driver: runs a checked [`Drill`] against a lab — builds (and removes) its
//! own lab or uses an existing one, carries out each step with the lab library and
//! the agents' control API, and fills in the [`Report`].

use super::progress::Progress;
use super::report::{GroupSummary, Outcome, Report, StepRecord};
use super::spec::{Drill, Expect, Link, MasterIs, Replica, Role, Step};
use super::workload::Group;
use crate::client::{AgentAddr, AgentConnection};
use crate::pair;
use anyhow::{anyhow, bail, Context};
use nonstop_lab::{Lab, LabGuard, LabSpec, Node};
use nonstop_shared::control::{NodeStatus, Reply, Request};
use nonstop_shared::Mode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The service port the workloads connect to.
pub const SERVICE_PORT: u16 = 7000;
/// How long the pair gets to settle before the drill starts.
const SETTLE: Duration = Duration::from_secs(15);
/// Poll interval while waiting for the agents.
const POLL: Duration = Duration::from_millis(50);
/// Timeout of one status request.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the drill runs.
pub enum Target {
    /// An existing lab, by name.
    Existing(String),
    /// A lab built for the drill, named `PREFIX` + a unique suffix.
    Fresh {
        /// Name prefix (`t` for tests, so their sweep finds leftovers).
        prefix: String,
    },
}

/// The result of one step before it becomes a [`StepRecord`].
struct Done {
    outcome: Outcome,
    detail: String,
    failures: Vec<String>,
}

impl Done {
    fn passed(detail: String) -> Done {
        Done {
            outcome: Outcome::Passed,
            detail,
            failures: vec![],
        }
    }
}

/// The running drill.
struct Runner {
    lab: Lab,
    agents: Vec<AgentAddr>,
    groups: Vec<(Group, Vec<u16>)>,
    /// When the last disruptive step began and which node was master then.
    disruption: Option<(Instant, Option<Node>)>,
    /// The master when the drill started.
    first_master: Option<Node>,
    interrupted: Arc<AtomicBool>,
    progress: Progress,
}

/// Runs `drill` (from `file`) on `target`; the report is complete even when the lab
/// could not be built or the run was interrupted (SIGINT/SIGTERM tear the lab down).
pub fn run(drill: &Drill, file: &str, target: Target) -> Report {
    let started = Instant::now();
    let mut report = Report {
        drill: drill.name.clone(),
        description: drill.description.clone(),
        file: file.to_owned(),
        lab: String::new(),
        lab_created: matches!(target, Target::Fresh { .. }),
        rounds: drill.rounds,
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        duration_ms: 0,
        steps: Vec::new(),
        groups: Vec::new(),
        error: None,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&interrupted)) {
            tracing_warn(&format!("cannot catch signal {signal}: {e}"));
        }
    }
    let mut progress = Progress::new();
    // The guard removes a lab built here when this function returns, however it does.
    let (lab, _guard) = match open_lab(drill, &target, &mut progress) {
        Ok(pair) => pair,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            report.duration_ms = started.elapsed().as_millis() as u64;
            return report;
        }
    };
    report.lab = lab.name().to_owned();
    let agents: Vec<AgentAddr> = Node::ALL
        .into_iter()
        .map(|node| AgentAddr {
            netns: Some(lab.namespace(node.as_str())),
            addr: lab.control_addr(node),
        })
        .collect();
    let mut runner = Runner {
        lab,
        agents,
        groups: Vec::new(),
        disruption: None,
        first_master: None,
        interrupted,
        progress,
    };
    match runner.settle(SETTLE) {
        Ok((master, _)) => runner.first_master = Some(master),
        Err(e) => {
            report.error = Some(format!("the pair is not ready: {e:#}"));
        }
    }
    let mut stopped = report.error.is_some();
    let plan: Vec<(u32, usize, &Step)> = drill
        .setup
        .iter()
        .enumerate()
        .map(|(i, s)| (0, i + 1, s))
        .chain((1..=drill.rounds).flat_map(|round| {
            drill
                .steps
                .iter()
                .enumerate()
                .map(move |(i, s)| (round, i + 1, s))
        }))
        .collect();
    let total = plan.len();
    for (n, (round, index, step)) in plan.into_iter().enumerate() {
        let mut record = StepRecord {
            round,
            index,
            kind: step.kind().to_owned(),
            description: step.describe(),
            duration_ms: 0,
            outcome: Outcome::Skipped,
            detail: String::new(),
            failures: vec![],
        };
        if !stopped {
            let label = format!(
                "[{}/{total}] {} {}",
                n + 1,
                record.place(),
                record.description
            );
            runner.progress.begin(label);
            let step_started = Instant::now();
            let done = runner.step(step).unwrap_or_else(|e| Done {
                outcome: Outcome::Error,
                detail: String::new(),
                failures: vec![format!("{e:#}")],
            });
            record.duration_ms = step_started.elapsed().as_millis() as u64;
            record.outcome = done.outcome;
            record.detail = done.detail;
            record.failures = done.failures;
            if record.outcome == Outcome::Error {
                stopped = true;
            }
            if runner.interrupted.load(Ordering::SeqCst) {
                stopped = true;
                report.error = Some("interrupted by a signal; the rest was skipped".into());
            }
            runner.progress.end(&record);
        }
        report.steps.push(record);
    }
    for (mut group, _) in runner.groups.drain(..) {
        let s = group.stop();
        report.groups.push(GroupSummary {
            name: s.name.clone(),
            workload: s.workload.to_string(),
            sessions: s.sessions.len(),
            rounds: s.rounds.len(),
            bytes_sent: s.sessions.iter().map(|x| x.sent).sum(),
            bytes_verified: s.sessions.iter().map(|x| x.verified).sum(),
            broken: s.broken(),
            lost_bytes: s.lost(),
            wrong_replies: s.wrong_replies(),
            resets: s.resets.len() as u64,
            longest_gap_ms: s.max_gap().as_millis() as u64,
            broken_reasons: s
                .sessions
                .iter()
                .enumerate()
                .filter_map(|(i, x)| {
                    x.broken
                        .as_ref()
                        .map(|why| format!("session {i} (port {}): {why}", x.local_port))
                })
                .take(5)
                .collect(),
            wrong_examples: s
                .sessions
                .iter()
                .enumerate()
                .filter_map(|(i, x)| {
                    x.first_wrong
                        .as_ref()
                        .map(|w| format!("session {i} (port {}): {w}", x.local_port))
                })
                .take(5)
                .collect(),
        });
    }
    if report.error.is_none() && runner.interrupted.load(Ordering::SeqCst) {
        report.error = Some("interrupted by a signal".into());
    }
    if report.lab_created {
        runner
            .progress
            .say(&format!("removing lab {}", runner.lab.name()));
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

fn tracing_warn(text: &str) {
    eprintln!("nonstop-console drill: {text}");
}

/// The binary `name` next to this executable (or one directory up).
fn sibling_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "cannot find {name} next to {}; build it with `cargo build -p nonstop-agent --bins`",
        exe.display()
    )
}

fn open_lab(
    drill: &Drill,
    target: &Target,
    progress: &mut Progress,
) -> anyhow::Result<(Lab, Option<LabGuard>)> {
    match target {
        Target::Existing(name) => {
            let lab = Lab::open(name).with_context(|| format!("lab `{name}`"))?;
            Ok((lab, None))
        }
        Target::Fresh { prefix } => {
            let service = drill.lab.service.binary();
            let bin = sibling_binary(service)?;
            let spec = LabSpec {
                name: nonstop_lab::unique_name(prefix),
                peers: 1,
                heartbeat_ms: drill.lab.heartbeat_ms,
                misses: drill.lab.misses,
                service: Some(format!(
                    "exec {} --listen 0.0.0.0:{SERVICE_PORT}",
                    bin.display()
                )),
            };
            progress.say(&format!(
                "building lab {} ({service} under both agents, {} replica)",
                spec.name,
                match drill.lab.replica {
                    Replica::Cold => "cold",
                    Replica::Hot => "hot",
                }
            ));
            let guard = LabGuard::up(&spec).context("cannot build the drill's lab")?;
            if drill.lab.replica == Replica::Hot {
                for node in Node::ALL {
                    set_replica_hot(&guard.config_path(node))?;
                }
            }
            guard
                .start_agents()
                .context("cannot start the drill lab's agents")?;
            Ok((guard.0.clone(), Some(guard)))
        }
    }
}

/// Sets `service.replica = "hot"` in an agent's config file (an agent that does not
/// know the key refuses to start, so the drill fails plainly).
fn set_replica_hot(path: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .with_context(|| format!("cannot parse {}", path.display()))?;
    let service = doc
        .entry("service")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(service) = service.as_table_mut() else {
        bail!("{}: [service] is not a table", path.display());
    };
    service.insert("replica".into(), toml::Value::String("hot".into()));
    let text = toml::to_string(&doc).context("cannot write the agent config")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

impl Runner {
    /// Sleeps `d` in small slices, failing if a signal arrived.
    fn sleep(
        &mut self,
        d: Duration,
        fraction_of: Option<(Instant, Duration)>,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + d;
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let fraction = fraction_of
                .map(|(t0, total)| t0.elapsed().as_secs_f64() / total.as_secs_f64().max(1e-9));
            self.progress.tick(fraction, "");
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    /// Both agents' status, in (master host, backup host) order.
    fn statuses(&self) -> [Option<NodeStatus>; 2] {
        let reports = pair::poll(&self.agents, STATUS_TIMEOUT);
        let mut out = [None, None];
        for (slot, r) in out.iter_mut().zip(reports) {
            *slot = r.status;
        }
        out
    }

    /// (master, backup) when exactly one node is master and the other backup.
    fn roles_of(statuses: &[Option<NodeStatus>; 2]) -> Option<(Node, Node)> {
        let mode = |i: usize| statuses[i].as_ref().map(|s| s.mode);
        match (mode(0), mode(1)) {
            (Some(Mode::Master), Some(Mode::Backup)) => Some((Node::Master, Node::Backup)),
            (Some(Mode::Backup), Some(Mode::Master)) => Some((Node::Backup, Node::Master)),
            _ => None,
        }
    }

    fn describe(statuses: &[Option<NodeStatus>; 2]) -> String {
        Node::ALL
            .iter()
            .zip(statuses)
            .map(|(n, s)| match s {
                Some(s) => format!("{n}: {} (epoch {})", s.mode, s.epoch),
                None => format!("{n}: unreachable"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The single master right now (fails when there is not exactly one).
    fn current_master(&self) -> anyhow::Result<Node> {
        let statuses = self.statuses();
        let masters: Vec<Node> = Node::ALL
            .into_iter()
            .zip(&statuses)
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.mode == Mode::Master))
            .map(|(n, _)| n)
            .collect();
        match masters.as_slice() {
            [one] => Ok(*one),
            _ => bail!(
                "needs exactly one master, but {}",
                Self::describe(&statuses)
            ),
        }
    }

    /// Waits until one node is master with its service running and replication to a
    /// backup connected; returns (master, backup).
    fn settle(&mut self, within: Duration) -> anyhow::Result<(Node, Node)> {
        let t0 = Instant::now();
        loop {
            let statuses = self.statuses();
            if let Some((m, b)) = Self::roles_of(&statuses) {
                let ms = statuses[index(m)].as_ref();
                let ready = ms.is_some_and(|s| {
                    s.replication.connected
                        && s.app.as_ref().is_none_or(|a| a.pid.is_some())
                        && s.replication.restore_pending == 0
                });
                if ready {
                    return Ok((m, b));
                }
            }
            if t0.elapsed() >= within {
                bail!(
                    "no settled pair (one master with its service and a connected backup) \
                     within {} ms: {}",
                    within.as_millis(),
                    Self::describe(&statuses)
                );
            }
            self.sleep(POLL, Some((t0, within)))?;
        }
    }

    fn disrupt(&mut self) -> anyhow::Result<Node> {
        let master = self.current_master()?;
        self.disruption = Some((Instant::now(), Some(master)));
        Ok(master)
    }

    /// Carries out `step`, pausing the workloads around it if it asks for that.
    fn step(&mut self, step: &Step) -> anyhow::Result<Done> {
        if !step.quiesce() {
            return self.act(step);
        }
        let note = match self.quiesce() {
            Ok(note) => note,
            Err(e) => {
                self.resume_all();
                return Err(e);
            }
        };
        let result = self.act(step);
        self.resume_all();
        result.map(|mut done| {
            done.detail = format!("{note}; {}", done.detail);
            done
        })
    }

    fn resume_all(&self) {
        for (g, _) in &self.groups {
            g.resume();
        }
    }

    /// Pauses every group at a round boundary, then waits until both agents' tables
    /// agree on every session with nothing unacknowledged.
    fn quiesce(&mut self) -> anyhow::Result<String> {
        let t0 = Instant::now();
        for (g, _) in &self.groups {
            g.request_pause();
        }
        let limit = Duration::from_secs(30);
        while !self.groups.iter().all(|(g, _)| g.is_paused()) {
            if t0.elapsed() >= limit {
                bail!("the workloads did not reach a round boundary within 30 s");
            }
            self.sleep(Duration::from_millis(5), None)?;
        }
        let ports: Vec<u16> = self
            .groups
            .iter()
            .flat_map(|(g, ports)| {
                let snap = g.snapshot();
                ports
                    .iter()
                    .zip(snap.sessions)
                    .filter(|(_, s)| s.broken.is_none())
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
            })
            .collect();
        let limit = Duration::from_secs(10);
        let t1 = Instant::now();
        loop {
            if self.tables_agree(&ports) {
                return Ok(format!(
                    "traffic paused, tables in sync after {} ms",
                    t0.elapsed().as_millis()
                ));
            }
            if t1.elapsed() >= limit {
                bail!("the agents' session tables did not agree within 10 s of pausing traffic");
            }
            self.sleep(Duration::from_millis(20), None)?;
        }
    }

    /// Whether master and backup report the same sequence state for every port, with
    /// nothing unacknowledged.
    fn tables_agree(&self, ports: &[u16]) -> bool {
        let Ok(m) = self.current_master() else {
            return false;
        };
        let list = |node: Node| -> Option<nonstop_shared::control::SessionList> {
            let mut conn =
                AgentConnection::connect(&self.agents[index(node)], STATUS_TIMEOUT * 4).ok()?;
            match conn.request(&Request::Sessions).ok()? {
                Reply::Sessions(list) => Some(list),
                _ => None,
            }
        };
        let (Some(ml), Some(bl)) = (list(m), list(m.other())) else {
            return false;
        };
        let find = |l: &nonstop_shared::control::SessionList, port: u16| {
            let suffix = format!(":{port}");
            l.sessions
                .iter()
                .find(|s| s.peer.ends_with(&suffix))
                .cloned()
        };
        ports.iter().all(|&p| match (find(&ml, p), find(&bl, p)) {
            (Some(x), Some(y)) => {
                x.snd_una == x.snd_nxt && (x.rcv_nxt, x.snd_nxt) == (y.rcv_nxt, y.snd_nxt)
            }
            _ => false,
        })
    }

    fn act(&mut self, step: &Step) -> anyhow::Result<Done> {
        match step {
            Step::Open {
                group,
                workload,
                sessions,
                message_bytes,
                interval_ms,
            } => {
                let ns = self.lab.namespace("peer");
                let addr = SocketAddr::from((self.lab.vip(), SERVICE_PORT));
                let g = Group::open(
                    &ns,
                    addr,
                    group,
                    *workload,
                    *sessions,
                    *message_bytes,
                    Duration::from_millis(*interval_ms),
                )?;
                let ports: Vec<u16> = g.snapshot().sessions.iter().map(|s| s.local_port).collect();
                let detail = format!(
                    "{} sessions to {addr} from peer ports {}–{}",
                    ports.len(),
                    ports.iter().min().unwrap_or(&0),
                    ports.iter().max().unwrap_or(&0)
                );
                self.groups.push((g, ports));
                Ok(Done::passed(detail))
            }
            Step::Wait { ms } => {
                let d = Duration::from_millis(*ms);
                self.sleep(d, Some((Instant::now(), d)))?;
                Ok(Done::passed(String::new()))
            }
            Step::Switchover { within_ms, .. } => {
                self.switchover(Duration::from_millis(*within_ms))
            }
            Step::CrashMaster { .. } => {
                let m = self.disrupt()?;
                self.lab
                    .kill_all(m.as_str())
                    .with_context(|| format!("cannot crash the {m} host"))?;
                Ok(Done::passed(format!(
                    "SIGKILLed every process on the {m} host"
                )))
            }
            Step::KillAgent { .. } => {
                let m = self.disrupt()?;
                let pid = self.lab.agent_pid(m);
                self.lab.stop_agent(m, libc::SIGKILL)?;
                Ok(Done::passed(format!(
                    "SIGKILLed the {m} agent (pid {})",
                    pid.unwrap_or(0)
                )))
            }
            Step::KillApp { .. } => {
                let m = self.current_master()?;
                let status = self.statuses()[index(m)]
                    .clone()
                    .ok_or_else(|| anyhow!("the {m} agent does not answer"))?;
                let pid = status
                    .app
                    .and_then(|a| a.pid)
                    .ok_or_else(|| anyhow!("the {m} agent reports no running service"))?;
                self.disruption = Some((Instant::now(), Some(m)));
                let pgid = libc::pid_t::try_from(pid).context("service pid out of range")?;
                if pgid <= 1 {
                    bail!("refusing to signal process group {pgid}");
                }
                // SAFETY: plain syscall; the service runs in its own process group.
                if unsafe { libc::kill(-pgid, libc::SIGKILL) } != 0 {
                    bail!(
                        "cannot SIGKILL the service's process group {pgid}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(Done::passed(format!(
                    "SIGKILLed the service on {m} (process group {pgid})"
                )))
            }
            Step::CutSync { .. } => {
                self.disrupt()?;
                self.lab.cut_sync()?;
                Ok(Done::passed("every frame on the sync link dropped".into()))
            }
            Step::Flap {
                node,
                link,
                times,
                down_ms,
                up_ms,
                ..
            } => {
                let m = self.disrupt()?;
                let target = match node {
                    Role::Master => m,
                    Role::Backup => m.other(),
                };
                let [svc, sync] = nonstop_lab::naming::node_ports(target);
                let ports: Vec<String> = match link {
                    Link::Service => vec![svc],
                    Link::Sync => vec![sync],
                    Link::Both => vec![svc, sync],
                };
                let total = Duration::from_millis((down_ms + up_ms) * u64::from(*times));
                let t0 = Instant::now();
                let mut result = Ok(());
                for _ in 0..*times {
                    for p in &ports {
                        self.lab.set_port(p, false)?;
                    }
                    let slept = self.sleep(Duration::from_millis(*down_ms), Some((t0, total)));
                    for p in &ports {
                        self.lab.set_port(p, true)?;
                    }
                    result = slept.and_then(|()| {
                        self.sleep(Duration::from_millis(*up_ms), Some((t0, total)))
                    });
                    if result.is_err() {
                        break;
                    }
                }
                result?;
                Ok(Done::passed(format!(
                    "{} of the {target} host flapped {times}×",
                    ports.join(" and ")
                )))
            }
            Step::Heal { within_ms } => {
                let t0 = Instant::now();
                self.lab.heal_sync()?;
                for node in Node::ALL {
                    self.lab.set_host_links(node, true)?;
                }
                let mut restarted = Vec::new();
                for node in Node::ALL {
                    if self.lab.agent_pid(node).is_none() {
                        // As a supervisor would (systemd's KillMode=control-group):
                        // whatever the dead agent left running on its host (its
                        // service) goes before the agent starts again.
                        self.lab.kill_all(node.as_str()).with_context(|| {
                            format!("cannot clear the {node} host before restarting its agent")
                        })?;
                        self.lab.start_agent(node)?;
                        restarted.push(node.as_str());
                    }
                }
                let (m, b) = self.settle(Duration::from_millis(*within_ms))?;
                Ok(Done::passed(format!(
                    "{}pair settled after {} ms: {m} is master, {b} backup",
                    if restarted.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "cleared the host and restarted the {} agent; ",
                            restarted.join(" and ")
                        )
                    },
                    t0.elapsed().as_millis()
                )))
            }
            Step::Pause => Ok(Done::passed(self.quiesce()?)),
            Step::Resume => {
                self.resume_all();
                Ok(Done::passed(String::new()))
            }
            Step::Expect(e) => self.expect(e),
        }
    }

    fn switchover(&mut self, within: Duration) -> anyhow::Result<Done> {
        let old = self.disrupt()?;
        let t0 = Instant::now();
        let mut conn = AgentConnection::connect(&self.agents[index(old)], Duration::from_secs(2))?;
        // The reply comes once the master has drained (`session.drain_ms`, at most 60 s),
        // as for `nonstop-console switchover`: a loaded host drains 1,000 sessions in
        // more than the 2 s an ordinary request may take.
        conn.set_read_timeout(Some(crate::cli::switchover::DRAIN_REPLY_TIMEOUT))?;
        match conn.request(&Request::Switchover)? {
            Reply::Ack { .. } => {}
            Reply::Error { message } => {
                return Ok(Done {
                    outcome: Outcome::Error,
                    detail: String::new(),
                    failures: vec![format!("the {old} agent refused the switchover: {message}")],
                })
            }
            other => bail!("unexpected reply to switchover: {other:?}"),
        }
        loop {
            let statuses = self.statuses();
            if Self::roles_of(&statuses).map(|(m, _)| m) == Some(old.other()) {
                let epoch = statuses[index(old.other())].as_ref().map_or(0, |s| s.epoch);
                return Ok(Done::passed(format!(
                    "{} is master at epoch {epoch} after {} ms",
                    old.other(),
                    t0.elapsed().as_millis()
                )));
            }
            if t0.elapsed() >= within {
                return Ok(Done {
                    outcome: Outcome::Failed,
                    detail: String::new(),
                    failures: vec![format!(
                        "roles did not swap within {} ms: {}",
                        within.as_millis(),
                        Self::describe(&statuses)
                    )],
                });
            }
            self.sleep(POLL, Some((t0, within)))?;
        }
    }

    fn expect(&mut self, e: &Expect) -> anyhow::Result<Done> {
        let mut detail = Vec::new();
        let mut failures = Vec::new();
        if let Some(want) = e.master {
            let within = Duration::from_millis(e.within_ms);
            let before = self.disruption.and_then(|(_, m)| m).or(self.first_master);
            let wanted = match want {
                MasterIs::Switched => before.map(Node::other),
                MasterIs::Unchanged => before,
                MasterIs::Any => None,
                MasterIs::Master => Some(Node::Master),
                MasterIs::Backup => Some(Node::Backup),
            };
            let t0 = Instant::now();
            loop {
                let statuses = self.statuses();
                let masters: Vec<Node> = Node::ALL
                    .into_iter()
                    .filter(|n| {
                        statuses[index(*n)]
                            .as_ref()
                            .is_some_and(|s| s.mode == Mode::Master)
                    })
                    .collect();
                // The wanted node is the only master (the other may be down).
                let found = match (masters.as_slice(), wanted) {
                    ([m], Some(w)) if *m == w => Some(*m),
                    ([m], None) => Some(*m),
                    _ => None,
                };
                if let Some(m) = found {
                    detail.push(format!("{m} is master"));
                    break;
                }
                if t0.elapsed() >= within {
                    failures.push(format!(
                        "expected {} as the single master within {} ms, but {}",
                        wanted.map_or("either node".to_owned(), |n| n.to_string()),
                        within.as_millis(),
                        Self::describe(&statuses)
                    ));
                    break;
                }
                self.sleep(POLL, Some((t0, within)))?;
            }
        }
        let selected: Vec<usize> = (0..self.groups.len())
            .filter(|&i| {
                e.groups.is_empty() || e.groups.contains(&self.groups[i].0.snapshot().name)
            })
            .collect();
        if let Some(limit_ms) = e.resumed_within_ms {
            let limit = Duration::from_millis(limit_ms);
            match self.disruption {
                None => failures.push("resumed_within_ms: no disruptive step ran before".into()),
                Some((t, _)) => {
                    for &i in &selected {
                        let resumed = loop {
                            let s = self.groups[i].0.snapshot();
                            if let Some(d) = s.resumed_after(t) {
                                break Ok((s.name, d));
                            }
                            if t.elapsed() >= limit || s.sessions.iter().all(|x| x.broken.is_some())
                            {
                                break Err(s.name);
                            }
                            self.sleep(Duration::from_millis(10), Some((t, limit)))?;
                        };
                        match resumed {
                            Ok((name, d)) if d <= limit => {
                                detail.push(format!("{name} resumed in {} ms", d.as_millis()));
                            }
                            Ok((name, d)) => failures.push(format!(
                                "{name} resumed in {} ms, more than the {limit_ms} ms expected",
                                d.as_millis()
                            )),
                            Err(name) => failures.push(format!(
                                "{name} did not resume within {limit_ms} ms of the last disruptive \
                                 step (no checked round completed)"
                            )),
                        }
                    }
                }
            }
        }
        let snaps: Vec<_> = selected
            .iter()
            .map(|&i| self.groups[i].0.snapshot())
            .collect();
        let (mut d, mut f) = judge_groups(e, &snaps, self.disruption.map(|(t, _)| t));
        detail.append(&mut d);
        failures.append(&mut f);
        Ok(Done {
            outcome: if failures.is_empty() {
                Outcome::Passed
            } else {
                Outcome::Failed
            },
            detail: detail.join("; "),
            failures,
        })
    }
}

/// The session expectations of `e` (broken, resets, lost bytes, wrong replies) over
/// the selected groups' figures; `since` is when the last disruptive step began
/// (resets are counted from there). Pure: (details, failures).
pub fn judge_groups(
    e: &Expect,
    snaps: &[super::workload::GroupStats],
    since: Option<Instant>,
) -> (Vec<String>, Vec<String>) {
    let mut detail = Vec::new();
    let mut failures = Vec::new();
    if let Some(max) = e.broken {
        let resets: u64 = snaps
            .iter()
            .map(|s| since.map_or(s.resets.len() as u64, |t| s.resets_since(t)))
            .sum();
        let allowed = e.resets.unwrap_or(0);
        let broken: u64 = snaps.iter().map(|s| s.broken()).sum();
        detail.push(format!("{broken} broken"));
        if resets > 0 || e.resets.is_some() {
            detail.push(format!("{resets} clean resets ({allowed} allowed)"));
        }
        // A clean reset beyond the allowance is a broken session like any other.
        if resets > allowed {
            failures.push(format!(
                "{resets} sessions reset (cleanly, then connected again) since the last \
                 disruptive step, at most {allowed} allowed"
            ));
        }
        if broken > max {
            let reasons: Vec<String> = snaps
                .iter()
                .flat_map(|s| {
                    s.sessions.iter().enumerate().filter_map(move |(i, x)| {
                        x.broken
                            .as_ref()
                            .map(|w| format!("{} session {i}: {w}", s.name))
                    })
                })
                .take(3)
                .collect();
            failures.push(format!(
                "{broken} broken sessions, at most {max} expected (first: {})",
                reasons.join("; ")
            ));
        }
    }
    if let Some(max) = e.lost_bytes {
        let lost: u64 = snaps.iter().map(|s| s.lost()).sum();
        detail.push(format!("{lost} lost bytes"));
        if lost > max {
            failures.push(format!("{lost} bytes lost, at most {max} expected"));
        }
    }
    if let Some(max) = e.wrong_replies {
        let wrong: u64 = snaps.iter().map(|s| s.wrong_replies()).sum();
        detail.push(format!("{wrong} wrong replies"));
        if wrong > max {
            let examples: Vec<String> = snaps
                .iter()
                .flat_map(|s| {
                    s.sessions.iter().enumerate().filter_map(move |(i, x)| {
                        x.first_wrong
                            .as_ref()
                            .map(|w| format!("{} session {i}: {w}", s.name))
                    })
                })
                .take(3)
                .collect();
            failures.push(format!(
                "{wrong} wrong replies, at most {max} expected (first: {})",
                examples.join("; ")
            ));
        }
    }
    (detail, failures)
}

fn index(node: Node) -> usize {
    match node {
        Node::Master => 0,
        Node::Backup => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::spec::Workload;
    use crate::drill::workload::{GroupStats, SessionStats};

    fn expect() -> Expect {
        Expect {
            master: None,
            within_ms: 0,
            resumed_within_ms: None,
            broken: Some(0),
            lost_bytes: Some(0),
            wrong_replies: None,
            resets: None,
            groups: vec![],
        }
    }

    fn group(workload: Workload, sessions: Vec<SessionStats>, resets: Vec<Instant>) -> GroupStats {
        GroupStats {
            name: workload.to_string(),
            workload,
            sessions,
            rounds: vec![],
            resets,
        }
    }

    #[test]
    fn clean_resets_are_allowed_per_fault_and_holes_are_lost_bytes() {
        let t0 = Instant::now();
        let fault = t0 + Duration::from_secs(10);
        let slow = group(
            Workload::Slow,
            vec![SessionStats::default(), SessionStats::default()],
            // One reset in an earlier round, two after this fault.
            vec![
                t0 + Duration::from_secs(1),
                fault,
                fault + Duration::from_millis(5),
            ],
        );
        let mut e = expect();
        e.resets = Some(2);
        let (detail, failures) = judge_groups(&e, std::slice::from_ref(&slow), Some(fault));
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!(
            detail,
            vec!["0 broken", "2 clean resets (2 allowed)", "0 lost bytes"]
        );
        // Without the allowance, resets fail the step.
        e.resets = None;
        let (_, failures) = judge_groups(&e, std::slice::from_ref(&slow), Some(fault));
        assert_eq!(
            failures,
            vec!["2 sessions reset (cleanly, then connected again) since the last disruptive step, at most 0 allowed"]
        );
        // A hole: the session is broken and its bytes count as lost.
        let holed = group(
            Workload::Slow,
            vec![SessionStats {
                sent: 5000,
                verified: 3000,
                lost: 2000,
                broken: Some("a hole or a wrong byte at byte 3000 of the slow stream".into()),
                ..SessionStats::default()
            }],
            vec![],
        );
        let (_, failures) = judge_groups(&expect(), &[holed], Some(fault));
        assert_eq!(
            failures,
            vec![
                "1 broken sessions, at most 0 expected (first: slow session 0: a hole or a wrong byte at byte 3000 of the slow stream)",
                "2000 bytes lost, at most 0 expected",
            ]
        );
    }

    #[test]
    fn wrong_replies_fail_the_step_with_an_example() {
        let kv = group(
            Workload::Stateful,
            vec![
                SessionStats::default(),
                SessionStats {
                    wrong_replies: 2,
                    first_wrong: Some(
                        "\"INCR hits\" answered \"ERR login first\", expected \"8\"".into(),
                    ),
                    ..SessionStats::default()
                },
            ],
            vec![],
        );
        let mut e = expect();
        e.wrong_replies = Some(0);
        let (detail, failures) = judge_groups(&e, &[kv], None);
        assert_eq!(detail, vec!["0 broken", "0 lost bytes", "2 wrong replies"]);
        assert_eq!(
            failures,
            vec!["2 wrong replies, at most 0 expected (first: stateful session 1: \"INCR hits\" answered \"ERR login first\", expected \"8\")"]
        );
    }
}
