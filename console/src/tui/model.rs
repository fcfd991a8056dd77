//! The console's domain model: plain data about the pair, updated only by
//! [`Model::apply`] from what the network workers report. Drawing reads it and never
//! touches the network; tests build it by hand with fixed timestamps.

use super::action::{NetUpdate, NodeCommand};
use nonstop_shared::control::{AgentEvent, EventKind, NodeStatus, SessionInfo};
use nonstop_shared::Mode;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// How much replication-lag history is kept, seconds.
pub const LAG_HISTORY_SECS: u64 = 300;
/// How many log entries are kept.
pub const EVENT_LOG_CAP: usize = 2000;

/// Whether an agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not heard from yet.
    Connecting,
    /// Answering since this wall-clock time (ms).
    Up {
        /// Since when.
        since_ms: u64,
    },
    /// Not answering since this wall-clock time (ms).
    Down {
        /// Since when.
        since_ms: u64,
        /// The latest error.
        error: String,
    },
}

/// One session row: the agent's view plus what the console derives from polls.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// The agent's report.
    pub info: SessionInfo,
    /// Peer address as a sortable key (IPv4 as a number, port).
    pub peer_key: (u128, u16),
    /// Bytes/s from the peer, from the previous poll.
    pub rate_in: f64,
    /// Bytes/s to the peer, from the previous poll.
    pub rate_out: f64,
    /// The other node's record sequence number for the same session, if it has one.
    pub other_record_seq: Option<u64>,
}

impl SessionRow {
    /// A row without rates (first sight of the session).
    pub fn new(info: SessionInfo) -> SessionRow {
        let peer_key = match info.peer.parse::<SocketAddr>() {
            Ok(SocketAddr::V4(a)) => (u128::from(u32::from(*a.ip())), a.port()),
            Ok(SocketAddr::V6(a)) => (u128::from(*a.ip()), a.port()),
            Err(_) => (u128::MAX, 0),
        };
        SessionRow {
            info,
            peer_key,
            rate_in: 0.0,
            rate_out: 0.0,
            other_record_seq: None,
        }
    }
}

/// Everything known about one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeModel {
    /// Short name (`master`/`backup` for a lab's hosts, else the address).
    pub label: String,
    /// Control address as given.
    pub address: String,
    /// Whether it answers.
    pub link: Link,
    /// The latest status (kept while unreachable, shown as stale).
    pub status: Option<NodeStatus>,
    /// When `status` was fetched.
    pub status_at_ms: u64,
    /// Intercepted packets per second (in + out), from successive statuses.
    pub packet_rate: f64,
    /// Replication records per second (position advance), from successive statuses.
    pub record_rate: f64,
    /// The latest session list, sorted as the agent sent it.
    pub sessions: Vec<SessionRow>,
    /// `tracker` or `replica`, once known.
    pub sessions_source: Option<String>,
    /// When `sessions` was fetched.
    pub sessions_at_ms: u64,
    /// Why the agent gave no session list, if it refused.
    pub sessions_error: Option<String>,
    /// Bumped whenever `sessions` changes.
    pub sessions_generation: u64,
    prev_counts: Option<(u64, u64, u64)>,
}

impl NodeModel {
    /// A node not heard from yet.
    pub fn new(label: &str, address: &str) -> NodeModel {
        NodeModel {
            label: label.to_owned(),
            address: address.to_owned(),
            link: Link::Connecting,
            status: None,
            status_at_ms: 0,
            packet_rate: 0.0,
            record_rate: 0.0,
            sessions: Vec::new(),
            sessions_source: None,
            sessions_at_ms: 0,
            sessions_error: None,
            sessions_generation: 0,
            prev_counts: None,
        }
    }

    /// Whether the agent answers right now.
    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// The mode, if the agent answers.
    pub fn live_mode(&self) -> Option<Mode> {
        if self.is_up() {
            self.status.as_ref().map(|s| s.mode)
        } else {
            None
        }
    }

    fn set_status(&mut self, status: NodeStatus, at_ms: u64) {
        let packets = status.replication.packets.0 + status.replication.packets.1;
        let position = status.replication.position;
        if let Some((prev_at, prev_packets, prev_position)) = self.prev_counts {
            if at_ms > prev_at {
                let dt = (at_ms - prev_at) as f64 / 1000.0;
                self.packet_rate = packets.saturating_sub(prev_packets) as f64 / dt;
                self.record_rate = position.saturating_sub(prev_position) as f64 / dt;
            }
        }
        self.prev_counts = Some((at_ms, packets, position));
        self.status = Some(status);
        self.status_at_ms = at_ms;
    }

    fn set_sessions(&mut self, sessions: Vec<SessionInfo>, source: String, at_ms: u64) {
        let previous: HashMap<&str, (u64, u64)> = self
            .sessions
            .iter()
            .map(|r| (r.info.peer.as_str(), (r.info.bytes_in, r.info.bytes_out)))
            .collect();
        let dt = at_ms.saturating_sub(self.sessions_at_ms) as f64 / 1000.0;
        let rows: Vec<SessionRow> = sessions
            .into_iter()
            .map(|info| {
                let mut row = SessionRow::new(info);
                if let Some(&(bin, bout)) = previous.get(row.info.peer.as_str()) {
                    if dt > 0.0 {
                        row.rate_in = row.info.bytes_in.saturating_sub(bin) as f64 / dt;
                        row.rate_out = row.info.bytes_out.saturating_sub(bout) as f64 / dt;
                    }
                }
                row
            })
            .collect();
        self.sessions = rows;
        self.sessions_source = Some(source);
        self.sessions_at_ms = at_ms;
        self.sessions_error = None;
        self.sessions_generation += 1;
    }
}

/// One second of replication-lag history (the worst seen in that second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagSample {
    /// Wall-clock second (Unix).
    pub second: u64,
    /// Age of the oldest unacknowledged record, ms.
    pub lag_ms: u64,
    /// Records sent and not acknowledged.
    pub lag_records: u64,
    /// Replication records per second.
    pub record_rate: f64,
}

/// The master's replication lag over the last [`LAG_HISTORY_SECS`] seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagHistory {
    samples: VecDeque<LagSample>,
}

impl LagHistory {
    /// Adds a measurement taken at `at_ms`.
    pub fn record(&mut self, at_ms: u64, lag_ms: u64, lag_records: u64, record_rate: f64) {
        let second = at_ms / 1000;
        match self.samples.back_mut() {
            Some(last) if last.second == second => {
                last.lag_ms = last.lag_ms.max(lag_ms);
                last.lag_records = last.lag_records.max(lag_records);
                last.record_rate = last.record_rate.max(record_rate);
            }
            Some(last) if last.second > second => {}
            _ => self.samples.push_back(LagSample {
                second,
                lag_ms,
                lag_records,
                record_rate,
            }),
        }
        while self
            .samples
            .front()
            .is_some_and(|s| s.second + LAG_HISTORY_SECS <= second)
        {
            self.samples.pop_front();
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &VecDeque<LagSample> {
        &self.samples
    }
}

/// What kind of thing a log entry reports (decides its colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A node changed mode.
    Mode,
    /// VIP added or removed.
    Vip,
    /// Gratuitous ARP.
    Garp,
    /// The fence command ran.
    Fence,
    /// A fault was injected or healed.
    Injected,
    /// The agent reported an error.
    AgentError,
    /// The console lost or regained an agent.
    Link,
    /// The operator sent a command, or it was acknowledged.
    Command,
    /// A command failed or was refused.
    CommandError,
}

/// One line of the merged event log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Wall-clock time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Node id (agent events) or node label (console's own entries).
    pub source: String,
    /// Kind.
    pub kind: LogKind,
    /// What happened.
    pub text: String,
    /// Agent event sequence number (for de-duplicating replayed history).
    pub seq: Option<u64>,
}

/// Both agents' events and the console's own, in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventLog {
    entries: VecDeque<LogEntry>,
}

impl EventLog {
    /// Inserts in time order; an agent event already present (same node, sequence
    /// number and time: history replayed after a reconnect) is dropped.
    pub fn push(&mut self, entry: LogEntry) -> bool {
        let at = entry.at_ms;
        let start = self.entries.partition_point(|e| e.at_ms < at);
        let end = self.entries.partition_point(|e| e.at_ms <= at);
        if entry.seq.is_some()
            && (start..end).any(|i| {
                let e = &self.entries[i];
                e.seq == entry.seq && e.source == entry.source
            })
        {
            return false;
        }
        self.entries.insert(end, entry);
        while self.entries.len() > EVENT_LOG_CAP {
            self.entries.pop_front();
        }
        true
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &VecDeque<LogEntry> {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How the pair looks as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairState {
    /// Exactly one reachable master.
    OneMaster(usize),
    /// More than one node claims to be master.
    TwoMasters,
    /// Agents answer but none is master (handover or failover in progress).
    NoMaster,
    /// No agent answers.
    AllDown,
}

/// The whole model; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The agents, in the order given on the command line.
    pub nodes: Vec<NodeModel>,
    /// The master's replication lag.
    pub lag: LagHistory,
    /// The merged event log.
    pub events: EventLog,
    /// "Now" for relative times, wall clock ms (fixed in tests).
    pub now_ms: u64,
}

impl Model {
    /// A model of agents `(label, address)` not heard from yet.
    pub fn new(agents: &[(String, String)], now_ms: u64) -> Model {
        Model {
            nodes: agents
                .iter()
                .map(|(label, address)| NodeModel::new(label, address))
                .collect(),
            lag: LagHistory::default(),
            events: EventLog::default(),
            now_ms,
        }
    }

    /// The pair's overall state.
    pub fn pair_state(&self) -> PairState {
        let masters: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].live_mode() == Some(Mode::Master))
            .collect();
        match masters.as_slice() {
            [one] => PairState::OneMaster(*one),
            [] if self.nodes.iter().any(NodeModel::is_up) => PairState::NoMaster,
            [] => PairState::AllDown,
            _ => PairState::TwoMasters,
        }
    }

    /// The single reachable master, if there is exactly one.
    pub fn master(&self) -> Option<usize> {
        match self.pair_state() {
            PairState::OneMaster(i) => Some(i),
            _ => None,
        }
    }

    /// Adds a line from the console itself.
    pub fn log(&mut self, at_ms: u64, source: &str, kind: LogKind, text: String) {
        self.events.push(LogEntry {
            at_ms,
            source: source.to_owned(),
            kind,
            text,
            seq: None,
        });
    }

    /// Applies what a network worker learned about agent `node`.
    pub fn apply(&mut self, node: usize, update: NetUpdate) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let label = n.label.clone();
        match update {
            NetUpdate::Status { status, at_ms } => {
                let was = std::mem::replace(&mut n.link, Link::Up { since_ms: at_ms });
                match was {
                    Link::Up { since_ms } => n.link = Link::Up { since_ms },
                    Link::Down { since_ms, .. } => {
                        let text = format!(
                            "agent answers again after {}",
                            super::format::duration_ms(at_ms.saturating_sub(since_ms))
                        );
                        self.log(at_ms, &label, LogKind::Link, text);
                    }
                    Link::Connecting => {}
                }
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                n.set_status(*status, at_ms);
                let record_rate = n.record_rate;
                if let Some(s) = n.status.as_ref().filter(|s| s.mode == Mode::Master) {
                    let (lag_ms, lag_records) = (s.replication.lag_ms, s.replication.lag_records);
                    self.lag.record(at_ms, lag_ms, lag_records, record_rate);
                }
            }
            NetUpdate::Sessions { list, at_ms } => {
                n.set_sessions(list.sessions, list.source, at_ms);
                self.join_replicas();
            }
            NetUpdate::SessionsUnavailable { message } => {
                n.sessions_error = Some(message);
            }
            NetUpdate::Unreachable { error, at_ms } => match &mut n.link {
                Link::Down { error: e, .. } => *e = error,
                link => {
                    *link = Link::Down {
                        since_ms: at_ms,
                        error: error.clone(),
                    };
                    self.log(
                        at_ms,
                        &label,
                        LogKind::Link,
                        format!("unreachable: {error}"),
                    );
                }
            },
            NetUpdate::Event(event) => self.push_agent_event(event),
            NetUpdate::CommandDone {
                command,
                result,
                at_ms,
            } => {
                let (kind, text) = match result {
                    Ok(message) => (LogKind::Command, format!("{command}: {message}")),
                    Err(error) => (LogKind::CommandError, format!("{command} failed: {error}")),
                };
                self.log(at_ms, &label, kind, text);
            }
        }
    }

    /// Notes that the operator sent `command` to `node`.
    pub fn log_sent(&mut self, node: usize, command: &NodeCommand) {
        let label = self
            .nodes
            .get(node)
            .map_or_else(|| format!("agent {node}"), |n| n.label.clone());
        self.log(
            self.now_ms,
            &label,
            LogKind::Command,
            format!("sent {command}"),
        );
    }

    fn push_agent_event(&mut self, event: AgentEvent) {
        let (kind, text) = describe(&event.kind);
        self.events.push(LogEntry {
            at_ms: event.at_unix_ms,
            source: event.node_id,
            kind,
            text,
            seq: Some(event.seq),
        });
    }

    /// Fills each row's `other_record_seq` from the other node's list.
    fn join_replicas(&mut self) {
        if self.nodes.len() != 2 {
            return;
        }
        let seqs: Vec<HashMap<String, u64>> = self
            .nodes
            .iter()
            .map(|n| {
                n.sessions
                    .iter()
                    .map(|r| (r.info.peer.clone(), r.info.record_seq))
                    .collect()
            })
            .collect();
        for (i, this) in self.nodes.iter_mut().enumerate() {
            let other = &seqs[1 - i];
            for row in &mut this.sessions {
                row.other_record_seq = other.get(row.info.peer.as_str()).copied();
            }
            this.sessions_generation += 1;
        }
    }
}

/// An agent event as one line of text.
pub fn describe(kind: &EventKind) -> (LogKind, String) {
    match kind {
        EventKind::ModeChanged(t) => (
            LogKind::Mode,
            format!("{} → {} (epoch {}): {}", t.from, t.to, t.epoch, t.cause),
        ),
        EventKind::VipAdded { vip } => (LogKind::Vip, format!("VIP {vip} added")),
        EventKind::VipRemoved { vip } => (LogKind::Vip, format!("VIP {vip} removed")),
        EventKind::GarpSent { number } => (LogKind::Garp, format!("gratuitous ARP #{number}")),
        EventKind::FenceRan { ok, detail } => (
            LogKind::Fence,
            format!("fence {}: {detail}", if *ok { "ok" } else { "FAILED" }),
        ),
        EventKind::App { detail } => (LogKind::Vip, format!("service: {detail}")),
        EventKind::Restored {
            sessions,
            failed,
            elapsed_ms,
            session_p50_us,
            session_p99_us,
            since_promotion_ms,
        } => (
            LogKind::Mode,
            format!(
                "{sessions} restored in {elapsed_ms} ms ({failed} failed, p50 \
                 {session_p50_us}µs p99 {session_p99_us}µs, {since_promotion_ms} ms since \
                 promotion)"
            ),
        ),
        EventKind::Protection { detail, .. } => {
            (LogKind::AgentError, format!("protection: {detail}"))
        }
        EventKind::SessionReset { peer, reason } => (
            LogKind::AgentError,
            format!("session {peer} reset: {reason}"),
        ),
        EventKind::Injected { fault } => (LogKind::Injected, format!("fault injected: {fault}")),
        EventKind::Mirror {
            peer,
            state,
            detail,
        } => (
            if state == "diverged" {
                LogKind::AgentError
            } else {
                LogKind::Mode
            },
            format!("replica {state} {peer}: {detail}"),
        ),
        EventKind::Check { healthy, detail } => (
            if *healthy {
                LogKind::Mode
            } else {
                LogKind::AgentError
            },
            format!(
                "health check {}: {detail}",
                if *healthy { "passes" } else { "FAILS" }
            ),
        ),
        EventKind::Error { detail } => (LogKind::AgentError, format!("error: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_history_keeps_one_sample_per_second_for_five_minutes() {
        let mut lag = LagHistory::default();
        for i in 0..(LAG_HISTORY_SECS * 4 + 10) {
            lag.record(1_000_000 + i * 250, i, 0, 0.0);
        }
        assert_eq!(lag.samples().len() as u64, LAG_HISTORY_SECS);
        let last = lag.samples().back().expect("a sample");
        assert_eq!(last.lag_ms, LAG_HISTORY_SECS * 4 + 9, "worst in the second");
    }

    #[test]
    fn replayed_events_are_not_logged_twice() {
        let mut log = EventLog::default();
        let entry = |seq, at| LogEntry {
            at_ms: at,
            source: "master".into(),
            kind: LogKind::Vip,
            text: "x".into(),
            seq: Some(seq),
        };
        assert!(log.push(entry(1, 10)));
        assert!(log.push(entry(3, 30)));
        assert!(log.push(entry(2, 20)));
        assert!(!log.push(entry(2, 20)));
        let order: Vec<u64> = log.entries().iter().map(|e| e.at_ms).collect();
        assert_eq!(order, [10, 20, 30]);
    }
}
