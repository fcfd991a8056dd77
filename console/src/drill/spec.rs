//! Drill files: the TOML format, parsing and validation. Pure: text in, a checked
//! [`Drill`] or a list of [`SpecError`]s (each with line, column and field) out.
//!
//! ```toml
//! name = "planned switchover"
//! rounds = 2                      # the [[step]] list runs this many times
//! [lab]                           # only when the drill builds its own lab
//! service = "echo"                # echo | chat | kv
//! replica = "cold"                # cold | hot (the agents' service.replica)
//! [[setup]]                       # runs once, before the rounds
//! do = "open"
//! group = "web"
//! workload = "echo"               # echo | chat | bulk | slow (echo) | stateful (kv)
//! sessions = 32
//! [[step]]
//! do = "switchover"
//! [[step]]
//! do = "expect"
//! master = "switched"             # switched | unchanged | any | master | backup
//! resumed_within_ms = 3000
//! broken = 0
//! lost_bytes = 0
//! wrong_replies = 0               # stateful groups: replies the protocol forbids
//! resets = 0                      # slow groups: clean resets since the last fault
//! ```

use serde::Deserialize;
use std::fmt;
use toml::Spanned;

/// Most sessions a group may open.
pub const MAX_SESSIONS: i64 = 4096;
/// Most rounds a drill may run.
pub const MAX_ROUNDS: i64 = 100_000;
/// Longest wait or timeout a step may ask for, milliseconds.
pub const MAX_MS: i64 = 600_000;

/// A problem in a drill file, located at the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Where in the drill: `step 3 (do = "open"), field sessions`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}: {}",
            self.line, self.column, self.field, self.message
        )
    }
}

/// The service the drill's own lab runs under both agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// `nonstop-echo`.
    Echo,
    /// `nonstop-chat`.
    Chat,
    /// `nonstop-kv` (stateful line protocol).
    Kv,
}

impl Service {
    /// The service's binary.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Echo => "nonstop-echo",
            Service::Chat => "nonstop-chat",
            Service::Kv => "nonstop-kv",
        }
    }
}

/// Whether the backup runs the service too (design §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Replica {
    /// Sessions are restored into a fresh service at takeover (the default).
    Cold,
    /// The backup mirrors every session in its own running service.
    Hot,
}

/// What a session group does on each of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Small numbered messages, echoed back and checked byte for byte.
    Echo,
    /// Numbered lines broadcast by the chat service; every member must hear every
    /// other member's lines, in order.
    Chat,
    /// Large patterned chunks, echoed back and checked byte for byte.
    Bulk,
    /// Slow readers: a small receive buffer, 1 KiB read every `interval_ms`, a
    /// stream echoed back and checked byte for byte — the service's output waits in
    /// its kernel. A session reset cleanly connects again (counted in `resets`).
    Slow,
    /// `nonstop-kv` sessions: each logs in, selects its own namespace, then sends
    /// `INCR` and `WHO` every round; every reply must be what the protocol says.
    Stateful,
}

impl Workload {
    /// The service this workload needs.
    pub fn service(self) -> Service {
        match self {
            Workload::Echo | Workload::Bulk | Workload::Slow => Service::Echo,
            Workload::Chat => Service::Chat,
            Workload::Stateful => Service::Kv,
        }
    }

    /// Default message size in bytes (slow: bytes per checked round).
    pub fn default_bytes(self) -> usize {
        match self {
            Workload::Echo => 64,
            Workload::Chat => 48,
            Workload::Bulk => 16 * 1024,
            Workload::Slow => 64 * 1024,
            Workload::Stateful => 0,
        }
    }

    /// Default `interval_ms` (slow: the pause between reads).
    pub fn default_interval_ms(self) -> i64 {
        match self {
            Workload::Slow => 5,
            Workload::Stateful => 20,
            _ => 100,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Echo => "echo",
            Workload::Chat => "chat",
            Workload::Bulk => "bulk",
            Workload::Slow => "slow",
            Workload::Stateful => "stateful",
        })
    }
}

/// Which node an `expect` step wants as the single master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterIs {
    /// The node that was not master before the last disruptive step.
    Switched,
    /// The node that was master before the last disruptive step.
    Unchanged,
    /// Either node, as long as exactly one is master and the other backup.
    Any,
    /// The lab's `master` host.
    Master,
    /// The lab's `backup` host.
    Backup,
}

/// Which links a `flap` step takes down and up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// The node's service-LAN port.
    Service,
    /// The node's sync-link port.
    Sync,
    /// Both.
    Both,
}

/// A node named by its current role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Whichever node is master when the step starts.
    Master,
    /// Whichever node is backup when the step starts.
    Backup,
}

/// One checked step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Step {
    /// Open a group of sessions from the peer namespace to VIP:7000; they stay open
    /// and are checked continuously until the drill ends.
    Open {
        /// Group name.
        group: String,
        /// What the sessions do.
        workload: Workload,
        /// How many sessions.
        sessions: usize,
        /// Bytes per message.
        message_bytes: usize,
        /// Pause between rounds of messages, milliseconds.
        interval_ms: u64,
    },
    /// Do nothing for a while (the workloads keep running).
    Wait {
        /// Milliseconds.
        ms: u64,
    },
    /// Planned switchover through the master's control API.
    Switchover {
        /// How long to wait for the roles to swap, milliseconds.
        within_ms: u64,
        /// Pause the workloads at a round boundary (and wait until both agents'
        /// tables agree) before acting; they resume right after.
        quiesce: bool,
    },
    /// SIGKILL every process on the master host (agent and service).
    CrashMaster {
        /// Pause the workloads at a round boundary (and wait until both agents'
        /// tables agree) before acting; they resume right after.
        quiesce: bool,
    },
    /// SIGKILL only the master's agent.
    KillAgent {
        /// Pause the workloads at a round boundary (and wait until both agents'
        /// tables agree) before acting; they resume right after.
        quiesce: bool,
    },
    /// SIGKILL only the service (its process group) on the master.
    KillApp {
        /// Pause the workloads at a round boundary (and wait until both agents'
        /// tables agree) before acting; they resume right after.
        quiesce: bool,
    },
    /// Drop every frame on the sync link.
    CutSync {
        /// Pause the workloads at a round boundary (and wait until both agents'
        /// tables agree) before acting; they resume right after.
        quiesce: bool,
    },
    /// Take a node's link(s) down and up again, `times` times.
    Flap {
        /// Whose links.
        node: Role,
        /// Which links.
        link: Link,
        /// How many down/up cycles.
        times: u32,
        /// Down time per cycle, milliseconds.
        down_ms: u64,
        /// Up time per cycle, milliseconds.
        up_ms: u64,
        /// Pause the workloads at a round boundary (and wait until both agents'
        /// tables agree) before acting; they resume right after.
        quiesce: bool,
    },
    /// Remove every fault: sync link healed, ports up, missing agents restarted; then
    /// wait (≤ `within_ms`) for one master and one connected backup.
    Heal {
        /// How long to wait for the pair to settle, milliseconds.
        within_ms: u64,
    },
    /// Pause every session group at a round boundary and wait until both agents'
    /// tables agree; traffic stays paused until `resume`.
    Pause,
    /// Let paused session groups go on.
    Resume,
    /// Check expectations; the drill fails if any does not hold.
    Expect(Expect),
}

impl Step {
    /// The step's `do` keyword.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Open { .. } => "open",
            Step::Wait { .. } => "wait",
            Step::Switchover { .. } => "switchover",
            Step::CrashMaster { .. } => "crash_master",
            Step::KillAgent { .. } => "kill_agent",
            Step::KillApp { .. } => "kill_app",
            Step::CutSync { .. } => "cut_sync",
            Step::Flap { .. } => "flap",
            Step::Heal { .. } => "heal",
            Step::Pause => "pause",
            Step::Resume => "resume",
            Step::Expect(_) => "expect",
        }
    }

    /// Whether the step pauses the workloads before it acts.
    pub fn quiesce(&self) -> bool {
        match self {
            Step::Switchover { quiesce, .. }
            | Step::CrashMaster { quiesce }
            | Step::KillAgent { quiesce }
            | Step::KillApp { quiesce }
            | Step::CutSync { quiesce }
            | Step::Flap { quiesce, .. } => *quiesce,
            _ => false,
        }
    }

    /// One line for people (`open 32 echo sessions as "web"`).
    pub fn describe(&self) -> String {
        match self {
            Step::Open {
                group,
                workload,
                sessions,
                ..
            } => format!("open {sessions} {workload} sessions as \"{group}\""),
            Step::Wait { ms } => format!("wait {ms} ms"),
            Step::Switchover { .. } => "planned switchover".to_owned(),
            Step::CrashMaster { .. } => {
                "crash the master host (SIGKILL agent and service)".to_owned()
            }
            Step::KillAgent { .. } => "SIGKILL the master's agent".to_owned(),
            Step::KillApp { .. } => "SIGKILL the master's service".to_owned(),
            Step::CutSync { .. } => "cut the sync link".to_owned(),
            Step::Flap {
                node,
                link,
                times,
                down_ms,
                up_ms,
                ..
            } => format!(
                "flap the {} node's {} link{} {times}× ({down_ms} ms down, {up_ms} ms up)",
                serde_plain(node),
                serde_plain(link),
                if *link == Link::Both { "s" } else { "" }
            ),
            Step::Heal { .. } => "heal every fault and wait for the pair".to_owned(),
            Step::Pause => "pause traffic at a round boundary".to_owned(),
            Step::Resume => "resume traffic".to_owned(),
            Step::Expect(e) => format!("expect {}", e.describe()),
        }
        .to_owned()
            + if self.quiesce() {
                " (traffic paused)"
            } else {
                ""
            }
    }
}

fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What an `expect` step checks (at least one of these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Expect {
    /// Which node must be the single master (waits up to `within_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterIs>,
    /// How long to wait for `master`, milliseconds.
    pub within_ms: u64,
    /// Every session of the groups has completed a checked round that began after
    /// the last disruptive step, at most this long after that step began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_within_ms: Option<u64>,
    /// Most broken sessions allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<u64>,
    /// Most lost bytes allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<u64>,
    /// Most wrong replies allowed (stateful groups). Given as 0 when absent and the
    /// step checks `broken` or `lost_bytes` of a stateful group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong_replies: Option<u64>,
    /// Clean resets allowed since the last disruptive step (slow groups connect
    /// again after one); a reset beyond it counts as broken. 0 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets: Option<u64>,
    /// Groups the session checks apply to (empty: every group).
    pub groups: Vec<String>,
}

impl Expect {
    /// The expectations in words.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.master {
            parts.push(format!("master {}", serde_plain(&m)));
        }
        if let Some(ms) = self.resumed_within_ms {
            parts.push(format!("resumed within {ms} ms"));
        }
        if let Some(n) = self.broken {
            parts.push(format!("≤ {n} broken"));
        }
        if let Some(n) = self.resets {
            parts.push(format!("≤ {n} clean resets"));
        }
        if let Some(n) = self.lost_bytes {
            parts.push(format!("≤ {n} lost bytes"));
        }
        if let Some(n) = self.wrong_replies {
            parts.push(format!("≤ {n} wrong replies"));
        }
        let groups = if self.groups.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.groups.join(", "))
        };
        format!("{}{groups}", parts.join(", "))
    }
}

/// The lab a drill builds when no `--lab` is given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabPlan {
    /// The service both agents manage.
    pub service: Service,
    /// Cold or hot replica.
    pub replica: Replica,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before failover.
    pub misses: u32,
}

/// A checked drill.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Drill {
    /// Name.
    pub name: String,
    /// What it rehearses.
    pub description: String,
    /// How many times `steps` run.
    pub rounds: u32,
    /// The lab to build.
    pub lab: LabPlan,
    /// Steps run once, before the rounds.
    pub setup: Vec<Step>,
    /// Steps run every round.
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    rounds: Option<Spanned<i64>>,
    #[serde(default)]
    lab: Option<RawLab>,
    #[serde(default)]
    setup: Vec<RawStep>,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    service: Option<Spanned<String>>,
    replica: Option<Spanned<String>>,
    heartbeat_ms: Option<Spanned<i64>>,
    misses: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(rename = "do")]
    action: Spanned<String>,
    group: Option<Spanned<String>>,
    groups: Option<Spanned<Vec<String>>>,
    workload: Option<Spanned<String>>,
    sessions: Option<Spanned<i64>>,
    message_bytes: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    ms: Option<Spanned<i64>>,
    within_ms: Option<Spanned<i64>>,
    node: Option<Spanned<String>>,
    link: Option<Spanned<String>>,
    times: Option<Spanned<i64>>,
    down_ms: Option<Spanned<i64>>,
    up_ms: Option<Spanned<i64>>,
    master: Option<Spanned<String>>,
    resumed_within_ms: Option<Spanned<i64>>,
    broken: Option<Spanned<i64>>,
    lost_bytes: Option<Spanned<i64>>,
    wrong_replies: Option<Spanned<i64>>,
    resets: Option<Spanned<i64>>,
    quiesce: Option<Spanned<bool>>,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

/// Collects errors while checking one file.
struct Checker<'a> {
    text: &'a str,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, field: String, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(SpecError {
            line,
            column,
            field,
            message,
        });
    }

    /// An integer field within `min..=max` (or `default` when absent).
    fn int(
        &mut self,
        value: &Option<Spanned<i64>>,
        field: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        match value {
            None => default,
            Some(v) => {
                let n = *v.get_ref();
                if n < min || n > max {
                    self.error(
                        v.span(),
                        field.to_owned(),
                        format!("must be between {min} and {max}, got {n}"),
                    );
                    default
                } else {
                    n
                }
            }
        }
    }

    /// A keyword field: one of `choices`.
    fn keyword<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let got = value.get_ref().as_str();
        match choices.iter().find(|(name, _)| *name == got) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.error(
                    value.span(),
                    field.to_owned(),
                    format!(
                        "unknown value \"{got}\"; expected one of {}",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }
}

const STEP_KINDS: &[&str] = &[
    "open",
    "wait",
    "switchover",
    "crash_master",
    "kill_agent",
    "kill_app",
    "cut_sync",
    "flap",
    "heal",
    "pause",
    "resume",
    "expect",
];

/// Which optional fields each step kind accepts.
fn allowed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "open" => &[
            "group",
            "workload",
            "sessions",
            "message_bytes",
            "interval_ms",
        ],
        "wait" => &["ms"],
        "switchover" => &["within_ms", "quiesce"],
        "heal" => &["within_ms"],
        "crash_master" | "kill_agent" | "kill_app" | "cut_sync" => &["quiesce"],
        "flap" => &["node", "link", "times", "down_ms", "up_ms", "quiesce"],
        "expect" => &[
            "master",
            "within_ms",
            "resumed_within_ms",
            "broken",
            "lost_bytes",
            "wrong_replies",
            "resets",
            "group",
            "groups",
        ],
        _ => &[],
    }
}

impl RawStep {
    /// Every optional field that is present, with its span.
    fn present(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        fn s<T>(
            name: &'static str,
            v: &Option<Spanned<T>>,
        ) -> Option<(&'static str, std::ops::Range<usize>)> {
            v.as_ref().map(|v| (name, v.span()))
        }
        [
            s("group", &self.group),
            s("groups", &self.groups),
            s("workload", &self.workload),
            s("sessions", &self.sessions),
            s("message_bytes", &self.message_bytes),
            s("interval_ms", &self.interval_ms),
            s("ms", &self.ms),
            s("within_ms", &self.within_ms),
            s("node", &self.node),
            s("link", &self.link),
            s("times", &self.times),
            s("down_ms", &self.down_ms),
            s("up_ms", &self.up_ms),
            s("master", &self.master),
            s("resumed_within_ms", &self.resumed_within_ms),
            s("broken", &self.broken),
            s("lost_bytes", &self.lost_bytes),
            s("wrong_replies", &self.wrong_replies),
            s("resets", &self.resets),
            s("quiesce", &self.quiesce),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Parses and checks a drill. Syntax errors, unknown fields and wrong types come
/// from the TOML parser (with line and column); the semantic checks (ranges, known
/// keywords, fields that do not apply, groups that are not opened) are all reported
/// at once.
pub fn parse(text: &str) -> Result<Drill, Vec<SpecError>> {
    let raw: RawDrill = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
        vec![SpecError {
            line,
            column,
            field: "syntax".to_owned(),
            message: e.message().trim().to_owned(),
        }]
    })?;
    let mut c = Checker {
        text,
        errors: Vec::new(),
    };
    if raw.name.get_ref().trim().is_empty() {
        c.error(raw.name.span(), "name".into(), "must not be empty".into());
    }
    let rounds = match &raw.rounds {
        Some(_) => c.int(&raw.rounds, "rounds", 1, MAX_ROUNDS, 1),
        None => 1,
    } as u32;
    let lab = match &raw.lab {
        None => LabPlan {
            service: Service::Echo,
            replica: Replica::Cold,
            heartbeat_ms: 100,
            misses: 3,
        },
        Some(l) => LabPlan {
            service: match &l.service {
                None => Service::Echo,
                Some(s) => c
                    .keyword(
                        s,
                        "lab.service",
                        &[
                            ("echo", Service::Echo),
                            ("chat", Service::Chat),
                            ("kv", Service::Kv),
                        ],
                    )
                    .unwrap_or(Service::Echo),
            },
            replica: match &l.replica {
                None => Replica::Cold,
                Some(r) => c
                    .keyword(
                        r,
                        "lab.replica",
                        &[("cold", Replica::Cold), ("hot", Replica::Hot)],
                    )
                    .unwrap_or(Replica::Cold),
            },
            heartbeat_ms: c.int(&l.heartbeat_ms, "lab.heartbeat_ms", 10, 10_000, 100) as u64,
            misses: c.int(&l.misses, "lab.misses", 1, 100, 3) as u32,
        },
    };
    let mut groups: Vec<(String, Workload)> = Vec::new();
    let setup = check_steps(&mut c, &raw.setup, "setup", &mut groups, &lab, true);
    let steps = check_steps(&mut c, &raw.step, "step", &mut groups, &lab, false);
    if raw.step.is_empty() && raw.setup.is_empty() {
        c.error(
            raw.name.span(),
            "step".into(),
            "a drill needs at least one [[setup]] or [[step]]".into(),
        );
    }
    if c.errors.is_empty() {
        Ok(Drill {
            name: raw.name.into_inner(),
            description: raw.description.unwrap_or_default(),
            rounds,
            lab,
            setup,
            steps,
        })
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(c.errors)
    }
}

fn check_steps(
    c: &mut Checker<'_>,
    raw: &[RawStep],
    list: &str,
    groups: &mut Vec<(String, Workload)>,
    lab: &LabPlan,
    is_setup: bool,
) -> Vec<Step> {
    let mut out = Vec::new();
    for (i, step) in raw.iter().enumerate() {
        let kind = step.action.get_ref().as_str();
        let at = format!("{list} {} (do = \"{kind}\")", i + 1);
        let field = |name: &str| format!("{at}, field {name}");
        if !STEP_KINDS.contains(&kind) {
            c.error(
                step.action.span(),
                format!("{list} {}, field do", i + 1),
                format!(
                    "unknown step \"{kind}\"; expected one of {}",
                    STEP_KINDS.join(", ")
                ),
            );
            continue;
        }
        let allowed = allowed_fields(kind);
        for (name, span) in step.present() {
            if !allowed.contains(&name) {
                c.error(
                    span,
                    field(name),
                    format!("does not apply to do = \"{kind}\""),
                );
            }
        }
        let ms = |c: &mut Checker<'_>, v: &Option<Spanned<i64>>, name: &str, min: i64, d: i64| {
            c.int(v, &field(name), min, MAX_MS, d) as u64
        };
        let quiesce = step.quiesce.as_ref().is_some_and(|q| *q.get_ref());
        let checked = match kind {
            "open" => {
                if !is_setup {
                    c.error(
                        step.action.span(),
                        field("do"),
                        "sessions are opened once: put \"open\" steps in [[setup]]".into(),
                    );
                }
                let Some(group) = step.group.as_ref() else {
                    c.error(
                        step.action.span(),
                        field("group"),
                        "missing: name the session group".into(),
                    );
                    continue;
                };
                let name = group.get_ref().clone();
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                {
                    c.error(
                        group.span(),
                        field("group"),
                        "must be letters, digits, - or _".into(),
                    );
                }
                if groups.iter().any(|(g, _)| *g == name) {
                    c.error(
                        group.span(),
                        field("group"),
                        format!("group \"{name}\" is already opened"),
                    );
                }
                let workload = match &step.workload {
                    None => {
                        c.error(
                            step.action.span(),
                            field("workload"),
                            "missing: echo, chat, bulk, slow or stateful".into(),
                        );
                        None
                    }
                    Some(w) => c.keyword(
                        w,
                        &field("workload"),
                        &[
                            ("echo", Workload::Echo),
                            ("chat", Workload::Chat),
                            ("bulk", Workload::Bulk),
                            ("slow", Workload::Slow),
                            ("stateful", Workload::Stateful),
                        ],
                    ),
                };
                let Some(workload) = workload else { continue };
                if workload.service() != lab.service {
                    let span = step.workload.as_ref().map_or(0..0, |w| w.span());
                    c.error(
                        span,
                        field("workload"),
                        format!(
                            "a {workload} workload needs the {} service, but [lab] service is \"{}\"",
                            serde_plain(&workload.service()),
                            serde_plain(&lab.service)
                        ),
                    );
                }
                if step.sessions.is_none() {
                    c.error(
                        step.action.span(),
                        field("sessions"),
                        "missing: how many sessions".into(),
                    );
                }
                let sessions = c.int(&step.sessions, &field("sessions"), 1, MAX_SESSIONS, 1);
                let max_bytes = match workload {
                    Workload::Bulk | Workload::Slow => 1 << 20,
                    _ => 4000,
                };
                if workload == Workload::Stateful {
                    if let Some(b) = &step.message_bytes {
                        c.error(
                            b.span(),
                            field("message_bytes"),
                            "does not apply to the stateful workload (its requests are fixed)"
                                .into(),
                        );
                    }
                }
                let message_bytes = match workload {
                    Workload::Stateful => 0,
                    _ => c.int(
                        &step.message_bytes,
                        &field("message_bytes"),
                        32,
                        max_bytes,
                        workload.default_bytes() as i64,
                    ),
                };
                let interval_ms = ms(
                    c,
                    &step.interval_ms,
                    "interval_ms",
                    0,
                    workload.default_interval_ms(),
                );
                groups.push((name.clone(), workload));
                Step::Open {
                    group: name,
                    workload,
                    sessions: sessions as usize,
                    message_bytes: message_bytes as usize,
                    interval_ms,
                }
            }
            "wait" => {
                if step.ms.is_none() {
                    c.error(step.action.span(), field("ms"), "missing: how long".into());
                }
                Step::Wait {
                    ms: ms(c, &step.ms, "ms", 0, 0),
                }
            }
            "switchover" => Step::Switchover {
                within_ms: ms(c, &step.within_ms, "within_ms", 1, 10_000),
                quiesce,
            },
            "crash_master" => Step::CrashMaster { quiesce },
            "kill_agent" => Step::KillAgent { quiesce },
            "kill_app" => Step::KillApp { quiesce },
            "cut_sync" => Step::CutSync { quiesce },
            "pause" => Step::Pause,
            "resume" => Step::Resume,
            "heal" => Step::Heal {
                within_ms: ms(c, &step.within_ms, "within_ms", 1, 20_000),
            },
            "flap" => Step::Flap {
                node: step
                    .node
                    .as_ref()
                    .and_then(|n| {
                        c.keyword(
                            n,
                            &field("node"),
                            &[("master", Role::Master), ("backup", Role::Backup)],
                        )
                    })
                    .unwrap_or(Role::Master),
                link: step
                    .link
                    .as_ref()
                    .and_then(|l| {
                        c.keyword(
                            l,
                            &field("link"),
                            &[
                                ("service", Link::Service),
                                ("sync", Link::Sync),
                                ("both", Link::Both),
                            ],
                        )
                    })
                    .unwrap_or(Link::Service),
                times: c.int(&step.times, &field("times"), 1, 1000, 3) as u32,
                down_ms: ms(c, &step.down_ms, "down_ms", 1, 200),
                up_ms: ms(c, &step.up_ms, "up_ms", 1, 1000),
                quiesce,
            },
            "expect" => {
                let mut names: Vec<Spanned<String>> = Vec::new();
                if let Some(g) = &step.group {
                    names.push(g.clone());
                }
                if let Some(gs) = &step.groups {
                    for g in gs.get_ref() {
                        names.push(Spanned::new(gs.span(), g.clone()));
                    }
                }
                for g in &names {
                    if !groups.iter().any(|(known, _)| known == g.get_ref()) {
                        let known: Vec<&str> = groups.iter().map(|(k, _)| k.as_str()).collect();
                        c.error(
                            g.span(),
                            field("group"),
                            format!(
                                "no session group \"{}\" is opened before this step (known: {})",
                                g.get_ref(),
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
                let master = step.master.as_ref().and_then(|m| {
                    c.keyword(
                        m,
                        &field("master"),
                        &[
                            ("switched", MasterIs::Switched),
                            ("unchanged", MasterIs::Unchanged),
                            ("any", MasterIs::Any),
                            ("master", MasterIs::Master),
                            ("backup", MasterIs::Backup),
                        ],
                    )
                });
                let opt = |c: &mut Checker<'_>, v: &Option<Spanned<i64>>, name: &str, max: i64| {
                    v.as_ref().map(|_| c.int(v, &field(name), 0, max, 0) as u64)
                };
                let mut expect = Expect {
                    master,
                    within_ms: ms(c, &step.within_ms, "within_ms", 1, 10_000),
                    resumed_within_ms: opt(c, &step.resumed_within_ms, "resumed_within_ms", MAX_MS),
                    broken: opt(c, &step.broken, "broken", i64::from(u32::MAX)),
                    lost_bytes: opt(c, &step.lost_bytes, "lost_bytes", i64::MAX),
                    wrong_replies: opt(c, &step.wrong_replies, "wrong_replies", i64::MAX),
                    resets: opt(c, &step.resets, "resets", i64::from(u32::MAX)),
                    groups: names.into_iter().map(Spanned::into_inner).collect(),
                };
                if step.master.is_none()
                    && step.resumed_within_ms.is_none()
                    && step.broken.is_none()
                    && step.lost_bytes.is_none()
                    && step.wrong_replies.is_none()
                {
                    c.error(
                        step.action.span(),
                        field("do"),
                        "expects nothing: give master, resumed_within_ms, broken, lost_bytes \
                         or wrong_replies"
                            .into(),
                    );
                }
                if let (Some(r), None) = (&step.resets, &step.broken) {
                    c.error(
                        r.span(),
                        field("resets"),
                        "allows resets that `broken` would count: give broken too".into(),
                    );
                }
                let checked: Vec<Workload> = groups
                    .iter()
                    .filter(|(g, _)| expect.groups.is_empty() || expect.groups.contains(g))
                    .map(|(_, w)| *w)
                    .collect();
                if let Some(w) = &step.wrong_replies {
                    if !checked.contains(&Workload::Stateful) {
                        c.error(
                            w.span(),
                            field("wrong_replies"),
                            "no stateful group is checked by this step".into(),
                        );
                    }
                }
                // A stateful group's replies are checked whenever its sessions are.
                if expect.wrong_replies.is_none()
                    && (expect.broken.is_some() || expect.lost_bytes.is_some())
                    && checked.contains(&Workload::Stateful)
                {
                    expect.wrong_replies = Some(0);
                }
                let needs_sessions = expect.resumed_within_ms.is_some()
                    || expect.broken.is_some()
                    || expect.lost_bytes.is_some()
                    || expect.wrong_replies.is_some();
                if needs_sessions && groups.is_empty() {
                    c.error(
                        step.action.span(),
                        field("do"),
                        "checks sessions, but no session group is opened before this step".into(),
                    );
                }
                Step::Expect(expect)
            }
            _ => continue,
        };
        out.push(checked);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "switchover"
description = "a planned switchover"
rounds = 2

[lab]
service = "chat"

[[setup]]
do = "open"
group = "room"
workload = "chat"
sessions = 8

[[step]]
do = "switchover"

[[step]]
do = "expect"
master = "switched"
resumed_within_ms = 2000
broken = 0
lost_bytes = 0
group = "room"
"#;

    #[test]
    fn a_good_drill_parses() {
        let drill = parse(GOOD).expect("valid drill");
        assert_eq!(drill.rounds, 2);
        assert_eq!(drill.lab.service, Service::Chat);
        assert_eq!(
            drill.setup,
            vec![Step::Open {
                group: "room".into(),
                workload: Workload::Chat,
                sessions: 8,
                message_bytes: 48,
                interval_ms: 100,
            }]
        );
        assert_eq!(
            drill.steps[0],
            Step::Switchover {
                within_ms: 10_000,
                quiesce: false
            }
        );
        let Step::Expect(e) = &drill.steps[1] else {
            panic!("expect step")
        };
        assert_eq!(e.master, Some(MasterIs::Switched));
        assert_eq!(e.resumed_within_ms, Some(2000));
        assert_eq!(e.groups, vec!["room".to_owned()]);
        assert_eq!(
            drill.steps[1].describe(),
            "expect master switched, resumed within 2000 ms, ≤ 0 broken, ≤ 0 lost bytes [room]"
        );
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("must be rejected")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn syntax_errors_and_unknown_fields_have_a_line() {
        let e = errors("name = \"x\"\n[[step]]\ndo = \"wait\"\nms = 5\nsessons = 3\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("line 5, column 1: syntax:"), "{e:?}");
        assert!(e[0].contains("sessons"), "{e:?}");
        let e = errors("name = \"x\"\n[[step]\n");
        assert!(e[0].starts_with("line 2"), "{e:?}");
        let e = errors("name = \"x\"\n[[step]]\ndo = \"wait\"\nms = \"long\"\n");
        assert!(e[0].starts_with("line 4, column 6: syntax:"), "{e:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_line_and_field() {
        let text = r#"name = "bad"
[[setup]]
do = "open"
group = "a"
workload = "telnet"
sessions = 3

[[setup]]
do = "open"
group = "b"
workload = "echo"
sessions = -4

[[step]]
do = "expect"
broken = 0
group = "nosuch"

[[step]]
do = "wait"
ms = 10
times = 2

[[step]]
do = "explode"
"#;
        let e = errors(text);
        assert_eq!(
            e,
            vec![
                "line 5, column 12: setup 1 (do = \"open\"), field workload: unknown value \"telnet\"; expected one of echo, chat, bulk, slow, stateful",
                "line 12, column 12: setup 2 (do = \"open\"), field sessions: must be between 1 and 4096, got -4",
                "line 17, column 9: step 1 (do = \"expect\"), field group: no session group \"nosuch\" is opened before this step (known: b)",
                "line 22, column 9: step 2 (do = \"wait\"), field times: does not apply to do = \"wait\"",
                "line 25, column 6: step 3, field do: unknown step \"explode\"; expected one of open, wait, switchover, crash_master, kill_agent, kill_app, cut_sync, flap, heal, pause, resume, expect",
            ]
        );
    }

    #[test]
    fn workload_must_match_the_lab_service_and_open_only_in_setup() {
        let e = errors(
            "name = \"x\"\n[[step]]\ndo = \"open\"\ngroup = \"g\"\nworkload = \"chat\"\nsessions = 2\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("put \"open\" steps in [[setup]]"), "{e:?}");
        assert!(e[1].contains("needs the chat service"), "{e:?}");
    }

    #[test]
    fn an_empty_expect_is_rejected() {
        let e = errors("name = \"x\"\n[[step]]\ndo = \"expect\"\n");
        assert_eq!(
            e,
            vec!["line 3, column 6: step 1 (do = \"expect\"), field do: expects nothing: give master, resumed_within_ms, broken, lost_bytes or wrong_replies"]
        );
    }

    #[test]
    fn stateful_and_slow_groups_and_their_expectations() {
        let drill = parse(
            r#"name = "hot kv"
[lab]
service = "kv"
replica = "hot"
[[setup]]
do = "open"
group = "kv"
workload = "stateful"
sessions = 256
[[step]]
do = "switchover"
[[step]]
do = "expect"
broken = 0
"#,
        )
        .expect("valid");
        assert_eq!(drill.lab.service, Service::Kv);
        assert_eq!(drill.lab.replica, Replica::Hot);
        assert_eq!(
            drill.setup[0],
            Step::Open {
                group: "kv".into(),
                workload: Workload::Stateful,
                sessions: 256,
                message_bytes: 0,
                interval_ms: 20,
            }
        );
        let Step::Expect(e) = &drill.steps[1] else {
            panic!("expect step")
        };
        assert_eq!(e.wrong_replies, Some(0), "checked whenever sessions are");
        assert_eq!(
            drill.steps[1].describe(),
            "expect ≤ 0 broken, ≤ 0 wrong replies"
        );

        let drill = parse(
            r#"name = "slow"
[[setup]]
do = "open"
group = "slow"
workload = "slow"
sessions = 2
[[step]]
do = "crash_master"
[[step]]
do = "expect"
broken = 0
resets = 2
lost_bytes = 0
group = "slow"
"#,
        )
        .expect("valid");
        assert_eq!(drill.lab.replica, Replica::Cold);
        assert_eq!(
            drill.setup[0],
            Step::Open {
                group: "slow".into(),
                workload: Workload::Slow,
                sessions: 2,
                message_bytes: 64 * 1024,
                interval_ms: 5,
            }
        );
        let Step::Expect(e) = &drill.steps[1] else {
            panic!("expect step")
        };
        assert_eq!((e.resets, e.wrong_replies), (Some(2), None));
        assert_eq!(
            drill.steps[1].describe(),
            "expect ≤ 0 broken, ≤ 2 clean resets, ≤ 0 lost bytes [slow]"
        );
    }

    #[test]
    fn stateful_and_slow_mistakes_are_reported() {
        let e = errors(
            r#"name = "x"
[lab]
replica = "warm"
[[setup]]
do = "open"
group = "kv"
workload = "stateful"
sessions = 2
message_bytes = 64
[[step]]
do = "expect"
resets = 1
wrong_replies = 0
group = "kv"
[[setup]]
do = "open"
group = "e"
workload = "echo"
sessions = 1
[[step]]
do = "expect"
wrong_replies = 0
group = "e"
"#,
        );
        assert_eq!(
            e,
            vec![
                "line 3, column 11: lab.replica: unknown value \"warm\"; expected one of cold, hot",
                "line 7, column 12: setup 1 (do = \"open\"), field workload: a stateful workload needs the kv service, but [lab] service is \"echo\"",
                "line 9, column 17: setup 1 (do = \"open\"), field message_bytes: does not apply to the stateful workload (its requests are fixed)",
                "line 12, column 10: step 1 (do = \"expect\"), field resets: allows resets that `broken` would count: give broken too",
                "line 22, column 17: step 2 (do = \"expect\"), field wrong_replies: no stateful group is checked by this step",
            ]
        );
    }

    /// Every drill shipped in scripts/drills/ parses (the hot ones too, which only
    /// pass once hot mode exists).
    #[test]
    fn every_shipped_drill_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/drills");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("scripts/drills") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            if let Err(errors) = parse(&text) {
                panic!("{}: {errors:?}", path.display());
            }
            seen += 1;
        }
        assert!(seen >= 8, "only {seen} drills found in {}", dir.display());
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
