//! The control protocol: JSON lines over TCP between the console and an agent.
//!
//! The client writes one [`Request`] per line; the agent answers each with one
//! [`Reply`] line. After `{"cmd":"events"}` the connection becomes a stream of
//! [`Reply::Event`] lines (the recent history first, then live events).
//!
//! Every connection starts with an authentication handshake (see
//! `nonstop_shared::auth`); nothing else is served before it succeeds:
//!
//! ```text
//! ← {"type":"challenge","version":1,"nonce":"<64 hex>"}
//! → {"cmd":"auth","nonce":"<64 hex>","mac":"<64 hex>"}
//! ← {"type":"authenticated","mac":"<64 hex>"}
//! → {"cmd":"status"}
//! ← {"type":"status","node_id":"master","mode":"master","epoch":1,...}
//! → {"cmd":"switchover"}
//! ← {"type":"ack","message":"handing over to backup"}
//! → nonsense
//! ← {"type":"error","message":"malformed request: ..."}
//! ```

use crate::Mode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest request line the agent accepts, in bytes.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// A command from the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Report [`NodeStatus`].
    Status,
    /// Planned switchover: the master hands the VIP to the backup.
    Switchover,
    /// Turn this connection into an event stream.
    Events,
    /// List the sessions this node knows.
    Sessions,
    /// Inject a fault on this node's host (for drills and demos).
    Inject {
        /// What to break.
        fault: Fault,
    },
    /// Report the agent's effective [`crate::settings::Settings`].
    Settings,
    /// Answer to the agent's [`Reply::Challenge`]: the first line of every connection.
    Auth {
        /// The console's fresh nonce, 32 bytes in hex.
        nonce: String,
        /// `HMAC(control key, "nonstop control client\0" | agent nonce | console nonce)`, hex.
        mac: String,
    },
}

/// A fault an agent injects on its own host, with real mechanisms (design §6).
/// Faults that would cut the agent off from the console heal themselves after
/// `seconds`; the rest last until [`Fault::HealAll`] (or the matching heal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL the managed service (application crash).
    KillApp,
    /// SIGKILL this agent (agent crash; its iptables queue chains stay: fail-closed).
    KillAgent,
    /// SIGSTOP this agent, SIGCONT after `seconds`.
    FreezeAgent {
        /// How long to stay frozen.
        seconds: u64,
    },
    /// Take every interface of the host down, back up after `seconds` (host crash).
    LinksDown {
        /// How long the links stay down.
        seconds: u64,
    },
    /// Drop everything on the sync link (firewall rule on this host).
    CutSync,
    /// Drop `percent`% of packets at random on the sync link or the service link.
    Loss {
        /// `sync` or `service`.
        link: LinkName,
        /// 1..=100.
        percent: u8,
    },
    /// Delay every packet on a link by `ms` (queue-based delayer: no netem here).
    Delay {
        /// `sync` or `service`.
        link: LinkName,
        /// Milliseconds, 1..=10000.
        ms: u64,
    },
    /// Master only: the next replicated record that carries payload bytes is not
    /// sent to the backup (it is still stored locally), so the backup meets a gap in
    /// that session's stream and must ask for a fresh snapshot. One-shot.
    DropRecord,
    /// Remove every fault this agent injected.
    HealAll,
}

/// Which link a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkName {
    /// The master↔backup sync link.
    Sync,
    /// The service LAN.
    Service,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillApp => write!(f, "kill the app"),
            Fault::KillAgent => write!(f, "SIGKILL the agent"),
            Fault::FreezeAgent { seconds } => write!(f, "freeze the agent for {seconds} s"),
            Fault::LinksDown { seconds } => write!(f, "links down for {seconds} s"),
            Fault::CutSync => write!(f, "cut the sync link"),
            Fault::Loss { link, percent } => write!(f, "{percent}% loss on the {link:?} link"),
            Fault::Delay { link, ms } => write!(f, "{ms} ms delay on the {link:?} link"),
            Fault::DropRecord => write!(f, "drop the next replicated record with payload"),
            Fault::HealAll => write!(f, "heal everything"),
        }
    }
}

/// One line from the agent. (A status is much larger than an ack; replies are
/// short-lived wire values, so boxing it would only add noise.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to `status`.
    Status(NodeStatus),
    /// A command was accepted.
    Ack {
        /// What the agent is doing about it.
        message: String,
    },
    /// A command was refused or could not be parsed.
    Error {
        /// Why.
        message: String,
    },
    /// One event of the stream.
    Event(AgentEvent),
    /// Answer to `sessions`.
    Sessions(SessionList),
    /// Answer to `settings`.
    Settings(crate::settings::Settings),
    /// First line the agent sends on every connection: authenticate before anything.
    Challenge {
        /// Handshake version (1).
        version: u8,
        /// The agent's fresh nonce, 32 bytes in hex.
        nonce: String,
    },
    /// The console's [`Request::Auth`] was valid; the agent proves the key in turn.
    Authenticated {
        /// `HMAC(control key, "nonstop control server\0" | agent nonce | console nonce)`, hex.
        mac: String,
    },
}

/// Answer to `sessions`: the node's view of every session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    /// Node that answered.
    pub node_id: String,
    /// Its mode.
    pub mode: Mode,
    /// `tracker` (live, on the master) or `replica` (applied records, on the backup).
    pub source: String,
    /// The sessions, sorted by 4-tuple.
    pub sessions: Vec<SessionInfo>,
}

/// One session as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// `peer_ip:peer_port`.
    pub peer: String,
    /// `vip:port`.
    pub local: String,
    /// Life phase.
    pub phase: crate::session::Phase,
    /// Payload bytes from the peer.
    pub bytes_in: u64,
    /// Payload bytes to the peer.
    pub bytes_out: u64,
    /// Our receive-next (highest ACK we sent).
    pub rcv_nxt: u32,
    /// Our send-next.
    pub snd_nxt: u32,
    /// The peer's last ACK.
    pub snd_una: u32,
    /// Bytes sent and not yet acknowledged by the peer.
    pub unacked_bytes: usize,
    /// Sequence number of the last record about this session (0 if unknown).
    pub record_seq: u64,
    /// Wall-clock ms of the last packet.
    pub last_activity_ms: u64,
    /// Hot replica, on the backup: `hot`, `cold`, `diverged` or `lagging N B`
    /// (design §9); absent in cold mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl SessionInfo {
    /// Summarises a session's recovery data.
    pub fn from_state(state: &crate::session::SessionState, record_seq: u64) -> SessionInfo {
        SessionInfo {
            peer: format!("{}:{}", state.key.peer_ip, state.key.peer_port),
            local: format!("{}:{}", state.key.local_ip, state.key.local_port),
            phase: state.phase,
            bytes_in: state.bytes_in,
            bytes_out: state.bytes_out,
            rcv_nxt: state.rcv_nxt,
            snd_nxt: state.snd_nxt,
            snd_una: state.snd_una,
            unacked_bytes: state.unacked.len(),
            record_seq,
            last_activity_ms: state.last_activity_ms,
            replica: None,
        }
    }
}

/// Replication and interception figures in `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationView {
    /// `sync` or `async`.
    pub mode: String,
    /// Whether the replication connection is up.
    pub connected: bool,
    /// Last record sequence number issued (master) or applied (backup).
    pub position: u64,
    /// Last sequence number the backup acknowledged (master).
    pub acked: u64,
    /// Records sent but not acknowledged.
    pub lag_records: u64,
    /// Age of the oldest unacknowledged record, ms.
    pub lag_ms: u64,
    /// Sessions in this node's table.
    pub sessions: u64,
    /// Outbound packets held waiting for the backup (sync mode).
    pub held_packets: u64,
    /// Packets intercepted (in, out).
    pub packets: (u64, u64),
    /// Snapshots sent or received.
    pub snapshots: u64,
    /// Records that could not be applied or stored.
    pub errors: u64,
    /// Sessions restored into the local service since the agent started.
    #[serde(default)]
    pub restored: u64,
    /// Sessions whose restore is queued or waiting for the service's SYN-ACK.
    #[serde(default)]
    pub restore_pending: u64,
    /// Restores given up (no SYN-ACK, unexpected answer).
    #[serde(default)]
    pub restore_failed: u64,
    /// Milliseconds from the restore command to the last session of it restored.
    #[serde(default)]
    pub restore_ms: u64,
    /// Per-session restore time of the last restore, median, µs.
    #[serde(default)]
    pub restore_session_p50_us: u64,
    /// Per-session restore time of the last restore, 99th percentile, µs.
    #[serde(default)]
    pub restore_session_p99_us: u64,
    /// Milliseconds from the last promotion (or service crash) to its last session
    /// restored.
    #[serde(default)]
    pub restore_since_promotion_ms: u64,
    /// Restored sessions reset because their peer had seen state the replica lacked.
    #[serde(default)]
    pub sessions_reset: u64,
    /// Times the service died on this master and its sessions were restored locally.
    #[serde(default)]
    pub app_crashes: u64,
    /// Peer segments of tracked sessions the kernel would refuse (RFC 5961: outside
    /// the window, a RST not at the exact point, a SYN, an unacceptable ACK — blind
    /// forgeries among them): passed on untouched, they changed no session and were
    /// not replicated.
    #[serde(default)]
    pub segments_out_of_window: u64,
    /// Sessions whose socket queues (output not sent yet, input not read yet) planned
    /// switchovers handed over to the other node.
    #[serde(default)]
    pub handed_over_sessions: u64,
    /// Bytes of those queues.
    #[serde(default)]
    pub handed_over_bytes: u64,
    /// Sessions marked at risk now: their service holds output not sent or input not
    /// read, so a crash now would reset them (never continue them with a hole).
    #[serde(default)]
    pub sessions_at_risk: u64,
    /// Sessions reset at a takeover because the crashed master had them at risk.
    #[serde(default)]
    pub reset_at_risk: u64,
    /// Backup: fresh snapshots asked for because a replicated record did not apply
    /// (nothing after it was acknowledged until the snapshot came). Master: snapshots
    /// sent at the backup's request.
    #[serde(default)]
    pub resyncs: u64,
    /// `service.replica`: `cold` or `hot` (design §9; empty from older agents).
    #[serde(default)]
    pub replica: String,
    /// Hot replica, backup: sessions mirrored now (open or opening).
    #[serde(default)]
    pub mirrors: u64,
    /// Hot replica, backup: mirrors whose output differed from the master's.
    #[serde(default)]
    pub mirrors_diverged: u64,
    /// Hot replica, backup: mirrors given up (their sessions turned cold).
    #[serde(default)]
    pub mirrors_cold: u64,
    /// Hot replica: sessions taken over by their mirror at a promotion (no restore).
    #[serde(default)]
    pub mirrors_adopted: u64,
    /// Hot replica: sessions a promotion restored cold (no usable mirror).
    #[serde(default)]
    pub mirrors_fallback: u64,
    /// Packets dropped because they could not be parsed (fail-closed).
    #[serde(default)]
    pub dropped_malformed: u64,
    /// Packets dropped because the queue captured only part of them (fail-closed).
    #[serde(default)]
    pub dropped_truncated: u64,
    /// Bytes of outbound packets held now (bound: `session.max_held_bytes`).
    #[serde(default)]
    pub held_bytes: u64,
    /// Backpressure: output dropped at the held-packets bound, at a session's
    /// unacknowledged-output bound, and packets dropped at the record-backlog bound
    /// (each is sent again later; nothing is lost).
    #[serde(default)]
    pub bound_drops: BoundDrops,
    /// Record bytes waiting for the replication task now.
    #[serde(default)]
    pub record_backlog_bytes: u64,
    /// Times a writer waited for the persistence thread's queue (the disk set the pace).
    #[serde(default)]
    pub persist_waits: u64,
    /// The master's risk watch interval now, ms: `session.risk_poll_ms`, or longer
    /// when a look at the service's sockets is slow (many sessions): looks take at
    /// most 1 % of a core. Sessions are marked at risk after four looks.
    #[serde(default)]
    pub risk_poll_ms: u64,
    /// Master, sync loop: medians of the last sampled records' hops, µs — the packet
    /// thread issuing a record → written to the backup, → the backup's ack arrived, →
    /// the packet thread acted on it.
    #[serde(default)]
    pub sync_hops_us: [u64; 3],
}

/// Packets dropped at each memory bound (backpressure; all of them sent again later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundDrops {
    /// At `session.max_held_bytes` (or the held-packets count).
    pub held: u64,
    /// At `session.max_unacked_bytes` (one session's replicated output).
    pub unacked: u64,
    /// At `session.max_record_backlog_bytes` (records waiting for replication).
    pub backlog: u64,
}

/// Why a node changed mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// Started and heard no master within the listening window.
    NoMasterAtStartup,
    /// Started (or recovered) and heard a master.
    HeardMaster {
        /// The master's node id.
        master: String,
        /// The master's epoch.
        epoch: u64,
    },
    /// Both nodes starting at once; election by priority then node id.
    WonStartupElection,
    /// Both nodes starting at once and the other one ranks higher.
    LostStartupElection {
        /// The node that will become master.
        winner: String,
    },
    /// The master went silent.
    PeerSilent {
        /// Consecutive heartbeat intervals without a heartbeat.
        missed: u32,
    },
    /// No master in the pair while both nodes are alive; the better one promotes.
    NoMasterInPair,
    /// An operator asked for a switchover.
    Switchover,
    /// The master handed mastership to us.
    HandoverReceived,
    /// Two masters met; the other one wins (higher epoch, priority, node id).
    LostToMaster {
        /// The winner's node id.
        master: String,
        /// The winner's epoch.
        epoch: u64,
    },
    /// The service interface lost its carrier or vanished.
    ServiceLinkDown,
    /// The service interface came back.
    ServiceLinkUp,
    /// A fence or VIP failure is retried: the node listens again before deciding.
    FaultRetry,
    /// The fence command failed, so taking over was refused.
    FenceFailed {
        /// Exit status or error text.
        detail: String,
    },
    /// Adding or removing the VIP failed.
    VipFailed {
        /// The netlink error.
        detail: String,
    },
    /// The agent is shutting down.
    Shutdown,
    /// The agent restarted while master and still held the VIP: it carries on as
    /// master at the same epoch (a quick restart is not a failover).
    Resumed,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::NoMasterAtStartup => write!(f, "no master heard at startup"),
            Cause::HeardMaster { master, epoch } => {
                write!(f, "heard master {master} (epoch {epoch})")
            }
            Cause::WonStartupElection => write!(f, "won startup election"),
            Cause::LostStartupElection { winner } => write!(f, "lost startup election to {winner}"),
            Cause::PeerSilent { missed } => write!(f, "master silent for {missed} heartbeats"),
            Cause::NoMasterInPair => write!(f, "no master in the pair"),
            Cause::Switchover => write!(f, "operator switchover"),
            Cause::HandoverReceived => write!(f, "handover from master"),
            Cause::LostToMaster { master, epoch } => {
                write!(f, "yielded to master {master} (epoch {epoch})")
            }
            Cause::ServiceLinkDown => write!(f, "service link down"),
            Cause::ServiceLinkUp => write!(f, "service link up"),
            Cause::FaultRetry => write!(f, "retrying after fault"),
            Cause::FenceFailed { detail } => write!(f, "fence command failed: {detail}"),
            Cause::VipFailed { detail } => write!(f, "VIP operation failed: {detail}"),
            Cause::Shutdown => write!(f, "agent shutdown"),
            Cause::Resumed => write!(f, "resumed as master after an agent restart"),
        }
    }
}

/// A change of mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Mode before.
    pub from: Mode,
    /// Mode after.
    pub to: Mode,
    /// Epoch after.
    pub epoch: u64,
    /// Why.
    pub cause: Cause,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// What the agent knows of the other node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// Its node id, once heard.
    pub node_id: Option<String>,
    /// Its mode as last heard.
    pub mode: Option<Mode>,
    /// Its epoch as last heard.
    pub epoch: Option<u64>,
    /// Milliseconds since its last heartbeat.
    pub last_heard_ms: Option<u64>,
    /// Last measured heartbeat round-trip time, microseconds.
    pub rtt_us: Option<u64>,
    /// Whether its service passed its health check, as its heartbeats say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// Counters of things worth alarming on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Valid heartbeats received from the peer.
    pub heartbeats_received: u64,
    /// Datagrams on the heartbeat port that were not valid heartbeats.
    pub malformed_heartbeats: u64,
    /// Valid heartbeats from an unexpected source or node id.
    pub foreign_heartbeats: u64,
    /// Control lines that could not be parsed.
    pub malformed_control_lines: u64,
    /// Promotions to master since start.
    pub promotions: u64,
    /// Gratuitous ARP frames sent.
    pub garps_sent: u64,
    /// Heartbeat datagrams dropped as unauthenticated, forged or damaged.
    #[serde(default)]
    pub heartbeats_rejected: u64,
    /// Authentic heartbeats dropped as replays (counter not above the last one).
    #[serde(default)]
    pub heartbeats_replayed: u64,
    /// Authentic heartbeats from a peer boot not yet confirmed (one per peer restart
    /// is normal; many mean recordings are being replayed).
    #[serde(default)]
    pub heartbeats_unconfirmed: u64,
    /// Replication connections refused: failed handshake or a forged frame.
    #[serde(default)]
    pub replication_rejected: u64,
    /// Replication frames rejected as replays within a connection.
    #[serde(default)]
    pub replication_replayed: u64,
    /// Control connections or requests refused for lack of authentication.
    #[serde(default)]
    pub control_rejected: u64,
    /// `inject` requests refused because fault injection is off (`[inject]`).
    #[serde(default)]
    pub inject_refused: u64,
    /// Notify hooks that failed (non-zero exit, could not start, killed at the
    /// timeout).
    #[serde(default)]
    pub hooks_failed: u64,
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub node_id: String,
    /// Current mode.
    pub mode: Mode,
    /// Current epoch.
    pub epoch: u64,
    /// Election priority.
    pub priority: u8,
    /// The configured VIP (`addr/prefix`).
    pub vip: String,
    /// Whether the VIP is on our service interface right now.
    pub vip_held: bool,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Misses before failover.
    pub misses: u32,
    /// Heartbeat intervals since the peer was last heard (0 while healthy).
    pub missed_heartbeats: u32,
    /// The other node as we see it.
    pub peer: PeerView,
    /// Agent uptime, milliseconds.
    pub uptime_ms: u64,
    /// Agent process id.
    pub pid: u32,
    /// The last mode change, if any.
    pub last_transition: Option<Transition>,
    /// Counters.
    pub counters: Counters,
    /// Session manager: replication and interception.
    #[serde(default)]
    pub replication: ReplicationView,
    /// CPU and memory of the agent (and of its service, once it manages one).
    #[serde(default)]
    pub resources: Resources,
    /// The managed service, if the agent manages one.
    #[serde(default)]
    pub app: Option<AppView>,
    /// The service's health check (`[service.check]`), if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckView>,
}

/// The service's health check as the agent runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    /// What is checked: `command: …` or `tcp 127.0.0.1:7000`.
    pub probe: String,
    /// `None` until `rise` or `fall` results in a row decided it.
    pub healthy: Option<bool>,
    /// Successes (positive) or failures (negative) in a row.
    pub streak: i64,
    /// The last result in words.
    pub last: String,
    /// Handovers this node started because its check failed.
    pub handovers: u64,
}

/// The managed service as the application manager sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    /// Its command line.
    pub command: String,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Times it was restarted after exiting on its own.
    pub restarts: u64,
    /// How it last ended, if it did.
    pub last_exit: Option<String>,
}

/// CPU and memory use, sampled about once a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Agent CPU use over the last sample, percent of one core.
    pub agent_cpu_percent: f32,
    /// Agent resident memory, KiB.
    pub agent_rss_kib: u64,
    /// Service CPU use, percent of one core, when the agent manages a service.
    pub app_cpu_percent: Option<f32>,
    /// Service resident memory, KiB.
    pub app_rss_kib: Option<u64>,
}

/// One event of the agent's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// Per-agent sequence number, +1 per event.
    pub seq: u64,
    /// Node that produced it.
    pub node_id: String,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The node changed mode.
    ModeChanged(Transition),
    /// The VIP was added to the service interface.
    VipAdded {
        /// `addr/prefix`.
        vip: String,
    },
    /// The VIP was removed from the service interface.
    VipRemoved {
        /// `addr/prefix`.
        vip: String,
    },
    /// A gratuitous ARP announcement went out.
    GarpSent {
        /// 1-based number within the burst.
        number: u32,
    },
    /// The fence command ran.
    FenceRan {
        /// Whether it succeeded.
        ok: bool,
        /// Exit status or error.
        detail: String,
    },
    /// The application manager started, stopped or lost the service.
    App {
        /// What happened, e.g. `started pid 123` or `exited with status 1; restarting in 1 s`.
        detail: String,
    },
    /// Replicated sessions were restored into the local service after a promotion.
    Restored {
        /// Sessions restored.
        sessions: u64,
        /// Restores given up.
        failed: u64,
        /// Milliseconds from the restore command to the last session restored.
        elapsed_ms: u64,
        /// Per-session restore time (forged SYN to handshake done), median, µs.
        #[serde(default)]
        session_p50_us: u64,
        /// Per-session restore time, 99th percentile, µs.
        #[serde(default)]
        session_p99_us: u64,
        /// Milliseconds from the promotion (or the service's crash) to the last
        /// session restored: what the peers waited, detection aside.
        #[serde(default)]
        since_promotion_ms: u64,
    },
    /// Sync-mode protection changed: output is (again) held until the backup has its
    /// state, or released unreplicated because no backup is connected.
    Protection {
        /// Whether outbound packets wait for the backup now.
        replicated: bool,
        /// What happened.
        detail: String,
    },
    /// A restored session was reset on both sides: its peer proved it had seen state
    /// the replica lacked (async replication lag, design §3).
    SessionReset {
        /// The peer, `IP:PORT`.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A fault was injected or healed on this host.
    Injected {
        /// What.
        fault: Fault,
    },
    /// The service's health check changed its verdict.
    Check {
        /// Whether the service is healthy now.
        healthy: bool,
        /// The last result and what the agent does about it.
        detail: String,
    },
    /// Hot replica (design §9): a mirror diverged or turned cold, or a takeover
    /// adopted the mirrors (`state` = `takeover`, `peer` empty).
    Mirror {
        /// The peer, `IP:PORT` (empty for a takeover's summary).
        peer: String,
        /// `diverged`, `cold` or `takeover`.
        state: String,
        /// What happened.
        detail: String,
    },
    /// Something failed that the operator should know about.
    Error {
        /// What.
        detail: String,
    },
}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse_line(line: &str) -> Result<Request, String> {
        if line.len() > MAX_LINE_LEN {
            return Err(format!("request line longer than {MAX_LINE_LEN} bytes"));
        }
        serde_json::from_str(line.trim()).map_err(|e| format!("malformed request: {e}"))
    }

    /// Serialises as one line including the newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

impl Reply {
    /// Serialises as one line including the newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"message\":\"encode: {e}\"}}"));
        line.push('\n');
        line
    }

    /// Parses one reply line.
    pub fn parse_line(line: &str) -> Result<Reply, String> {
        serde_json::from_str(line.trim()).map_err(|e| format!("malformed reply: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(Request::Status.to_line(), "{\"cmd\":\"status\"}\n");
        assert_eq!(
            Request::parse_line("{\"cmd\":\"switchover\"}"),
            Ok(Request::Switchover)
        );
        assert_eq!(
            Request::parse_line(" {\"cmd\":\"events\"} \r"),
            Ok(Request::Events)
        );
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for line in [
            "",
            "nonsense",
            "{}",
            "{\"cmd\":\"reboot\"}",
            "[1,2]",
            "\u{0}",
        ] {
            assert!(Request::parse_line(line).is_err(), "{line:?}");
        }
        let huge = "x".repeat(MAX_LINE_LEN + 1);
        assert!(Request::parse_line(&huge).unwrap_err().contains("longer"));
    }

    #[test]
    fn replies_round_trip() {
        let event = Reply::Event(AgentEvent {
            seq: 3,
            node_id: "backup".into(),
            at_unix_ms: 1_700_000_000_000,
            kind: EventKind::ModeChanged(Transition {
                from: Mode::Backup,
                to: Mode::Master,
                epoch: 2,
                cause: Cause::PeerSilent { missed: 3 },
                at_unix_ms: 1_700_000_000_000,
            }),
        });
        let line = event.to_line();
        assert!(line.contains("\"type\":\"event\""));
        assert!(line.contains("\"event\":\"mode_changed\""));
        assert_eq!(Reply::parse_line(&line), Ok(event));
        let err = Reply::Error {
            message: "no".into(),
        };
        assert_eq!(Reply::parse_line(&err.to_line()), Ok(err));
    }

    #[test]
    fn causes_read_well() {
        assert_eq!(
            Cause::PeerSilent { missed: 3 }.to_string(),
            "master silent for 3 heartbeats"
        );
    }
}
