//! The agent's configuration file (TOML).
//!
//! ```toml
//! node_id = "master"
//! priority = 100
//! data_dir = "/var/lib/nonstop"
//! fence_command = "/usr/local/bin/fence-peer"   # optional
//!
//! [service]
//! interface = "eth0"
//! vip = "198.18.1.100/24"
//! ports = [7000]
//! command = "/usr/bin/my-server --port 7000"    # optional
//!
//! [sync]
//! address = "198.19.1.1:7701"    # our heartbeat/replication address on the sync link
//! peer = "198.19.1.2:7701"       # the other agent's
//! heartbeat_ms = 100
//! misses = 3
//!
//! [control]
//! listen = ["127.0.0.1:7700", "198.19.1.1:7700"]
//!
//! [garp]
//! count = 5
//! interval_ms = 500
//!
//! [security]
//! key_file = "/etc/nonstop/key"  # pre-shared key, mode 0600, ≥ 32 bytes (required)
//!
//! [metrics]
//! listen = "127.0.0.1:9477"      # Prometheus /metrics (optional, off by default)
//! ```
//!
//! Unknown keys are rejected (the parser names them); values are range-checked by
//! [`AgentConfig::validate`], whose errors name the offending key.

use crate::heartbeat::MAX_NODE_ID_LEN;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's unique name in the pair (1..=64 bytes).
    pub node_id: String,
    /// Election priority: higher wins when epochs tie.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Directory for persistent state (epoch, recovery data).
    pub data_dir: PathBuf,
    /// Shell command run before taking over from a silent master; non-zero exit
    /// means the takeover is refused and the node enters `fault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_command: Option<String>,
    /// The service the pair keeps available.
    pub service: ServiceConfig,
    /// The master↔backup sync link.
    pub sync: SyncConfig,
    /// The control API.
    #[serde(default)]
    pub control: ControlConfig,
    /// Gratuitous ARP after promotion.
    #[serde(default)]
    pub garp: GarpConfig,
    /// The session manager.
    #[serde(default)]
    pub session: SessionConfig,
    /// Authentication of heartbeats, replication and the control API.
    pub security: SecurityConfig,
    /// Logging (the level is reloaded on SIGHUP).
    #[serde(default)]
    pub log: LogConfig,
    /// Notify hooks run on every mode change (keepalived's `notify_*`).
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Fault injection through the control API (off unless enabled).
    #[serde(default)]
    pub inject: InjectConfig,
    /// The Prometheus metrics endpoint (off unless `listen` is given).
    #[serde(default, skip_serializing_if = "MetricsConfig::is_off")]
    pub metrics: MetricsConfig,
}

/// The Prometheus metrics endpoint: `GET http://<listen>/metrics`, unauthenticated
/// and read-only, so keep it on localhost or a monitoring network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve on, e.g. `127.0.0.1:9477`; none (default) turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Whether the endpoint is off.
    pub fn is_off(&self) -> bool {
        self.listen.is_none()
    }
}

/// The pre-shared key that authenticates every channel (see `nonstop_shared::auth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// File holding the key: a regular file with no access for group and others,
    /// at least 32 bytes. Both agents and the console use the same key.
    pub key_file: PathBuf,
}

/// Largest configuration file accepted, in bytes.
pub const MAX_CONFIG_LEN: u64 = 1024 * 1024;

/// Replication mode (design §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Outbound packets wait until the backup has their state (lossless).
    #[default]
    Sync,
    /// Packets flow at once; replication lag is reported.
    Async,
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        })
    }
}

/// When the local store calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// After every batch of records.
    Always,
    /// Every `fsync_interval_ms`.
    #[default]
    Periodic,
    /// Never (the page cache survives an agent crash, not a host crash).
    Never,
}

/// The session manager's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// NFQUEUE number used for the service's packets.
    #[serde(default = "default_queue")]
    pub queue: u16,
    /// `sync` (default) or `async`.
    #[serde(default)]
    pub replication: ReplicationMode,
    /// `always`, `periodic` (default) or `never`.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// Interval for `periodic` fsync, ms.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Most sessions tracked at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Longest a planned switchover waits for its drain (peers frozen, service input
    /// read, output acknowledged, backup caught up) before handing over anyway, ms.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// How often the master looks at its service's sockets for output its kernel has
    /// not sent or input the service has not read (a session that holds either for
    /// four looks in a row is marked at risk: after a crash it is reset cleanly, never
    /// continued with a hole), ms; 0 turns the watch off.
    #[serde(default = "default_risk_poll_ms")]
    pub risk_poll_ms: u64,
    /// In `sync` mode, what a master does while no backup is connected: `serve`
    /// (default: release output unreplicated, the service stays available) or `hold`
    /// (hold all output until a backup has the state: no byte unprotected).
    #[serde(default)]
    pub lone_master: LoneMaster,
    /// Bytes of outbound packets a sync-mode master holds at most while they wait for
    /// the backup; beyond, new output is dropped before it leaves (the service's
    /// kernel sends it again later: nothing is lost) and counted.
    #[serde(default = "default_max_held_bytes")]
    pub max_held_bytes: u64,
    /// Bytes of one session's sent-but-unacknowledged output the replica keeps at
    /// most; output beyond is dropped before it leaves (the service's kernel sends it
    /// again once the peer acknowledged some) and counted — never sent unreplicated.
    #[serde(default = "default_max_unacked_bytes")]
    pub max_unacked_bytes: u64,
    /// Bytes of records waiting for the replication task at most (a frozen backup
    /// stalls it); beyond, the service's packets are dropped before they are tracked
    /// (peers and service retransmit: nothing is lost) and counted.
    #[serde(default = "default_max_record_backlog_bytes")]
    pub max_record_backlog_bytes: u64,
}

/// A sync-mode master's policy while no backup is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoneMaster {
    /// Keep serving; replication resumes (by snapshot) when a backup connects.
    #[default]
    Serve,
    /// Hold every outbound packet until a backup has acknowledged its state.
    Hold,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            queue: default_queue(),
            replication: ReplicationMode::default(),
            fsync: FsyncMode::default(),
            fsync_interval_ms: default_fsync_interval_ms(),
            max_sessions: default_max_sessions(),
            drain_ms: default_drain_ms(),
            risk_poll_ms: default_risk_poll_ms(),
            lone_master: LoneMaster::default(),
            max_held_bytes: default_max_held_bytes(),
            max_unacked_bytes: default_max_unacked_bytes(),
            max_record_backlog_bytes: default_max_record_backlog_bytes(),
        }
    }
}

fn default_max_held_bytes() -> u64 {
    64 << 20
}
fn default_max_unacked_bytes() -> u64 {
    16 << 20
}
fn default_max_record_backlog_bytes() -> u64 {
    64 << 20
}

fn default_queue() -> u16 {
    7
}
fn default_fsync_interval_ms() -> u64 {
    1000
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_drain_ms() -> u64 {
    2000
}
fn default_risk_poll_ms() -> u64 {
    50
}

/// The service side: interface, virtual IP, ports, command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Interface on the service LAN that carries the VIP.
    pub interface: String,
    /// Virtual IP with prefix length, e.g. `198.18.1.100/24`.
    pub vip: Vip,
    /// TCP ports of the service on the VIP.
    pub ports: Vec<u16>,
    /// Command line of the service (run with `sh -c`), if the agent manages it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// What the service does while this node is not master: `stop` (default) or
    /// `park` (keep it running, listening, ready for restored sessions).
    #[serde(default)]
    pub on_backup: OnBackup,
    /// Health check of the service (`[service.check]`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckConfig>,
    /// `cold` (default) or `hot` (design §9). A hot replica runs the service on the
    /// backup too and opens every session in it as a *mirror* fed the peer's input, so
    /// the service's per-connection state survives a failover; it implies
    /// `on_backup = "park"`. Cold is the default because a hot replica runs the
    /// service twice: its outside effects (mail sent, rows written elsewhere) happen
    /// twice, and it costs the backup the service's CPU and the sync link the input.
    #[serde(default, skip_serializing_if = "ReplicaMode::is_cold")]
    pub replica: ReplicaMode,
    /// Hot replica: most input bytes a mirror may owe its service (received by the
    /// master, not yet taken by the mirror). Beyond it the mirror is given up and the
    /// session turns cold (counted, an event): a takeover restores it cold.
    #[serde(
        default = "default_mirror_backlog",
        skip_serializing_if = "is_default_mirror_backlog"
    )]
    pub mirror_backlog: usize,
}

/// Default [`ServiceConfig::mirror_backlog`]: 4 MiB.
pub const DEFAULT_MIRROR_BACKLOG: usize = 4 << 20;

fn default_mirror_backlog() -> usize {
    DEFAULT_MIRROR_BACKLOG
}

fn is_default_mirror_backlog(n: &usize) -> bool {
    *n == DEFAULT_MIRROR_BACKLOG
}

/// How the backup keeps the service (design §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaMode {
    /// Sessions are restored into a fresh service at takeover: the sockets survive,
    /// the service's per-connection state does not.
    #[default]
    Cold,
    /// The backup's service mirrors every session: its state survives a takeover.
    Hot,
}

impl ReplicaMode {
    /// Whether this is [`ReplicaMode::Cold`].
    pub fn is_cold(&self) -> bool {
        *self == ReplicaMode::Cold
    }

    /// The config word (`cold`, `hot`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaMode::Cold => "cold",
            ReplicaMode::Hot => "hot",
        }
    }
}

impl std::str::FromStr for ReplicaMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ReplicaMode, String> {
        match s {
            "cold" => Ok(ReplicaMode::Cold),
            "hot" => Ok(ReplicaMode::Hot),
            other => Err(format!(
                "replica mode must be `cold` or `hot`, not `{other}`"
            )),
        }
    }
}

/// What the application manager does with the service on a node that is not master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackup {
    /// Stop it (SIGTERM, then SIGKILL after a grace period).
    #[default]
    Stop,
    /// Keep it running.
    Park,
}

/// The sync link: heartbeats (and replication) between the two agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Our UDP heartbeat address on the sync link.
    pub address: SocketAddr,
    /// The other agent's heartbeat address.
    pub peer: SocketAddr,
    /// Heartbeat interval in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Missed heartbeats before the peer is declared dead.
    #[serde(default = "default_misses")]
    pub misses: u32,
}

/// The control API's listening addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Addresses to listen on (JSON lines over TCP). Default: `127.0.0.1:7700`.
    #[serde(default = "default_control_listen")]
    pub listen: Vec<SocketAddr>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: default_control_listen(),
        }
    }
}

/// Gratuitous ARP burst sent after taking the VIP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GarpConfig {
    /// How many announcements in total (the first goes out at once).
    #[serde(default = "default_garp_count")]
    pub count: u32,
    /// Milliseconds between announcements.
    #[serde(default = "default_garp_interval_ms")]
    pub interval_ms: u64,
}

impl Default for GarpConfig {
    fn default() -> Self {
        GarpConfig {
            count: default_garp_count(),
            interval_ms: default_garp_interval_ms(),
        }
    }
}

fn default_priority() -> u8 {
    100
}
fn default_heartbeat_ms() -> u64 {
    100
}
fn default_misses() -> u32 {
    3
}
fn default_control_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 7700))]
}
fn default_garp_count() -> u32 {
    5
}
fn default_garp_interval_ms() -> u64 {
    500
}

/// An IPv4 virtual address with its prefix length (`198.18.1.100/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 1..=32.
    pub prefix: u8,
}

impl FromStr for Vip {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not ADDRESS/PREFIX (e.g. 198.18.1.100/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("prefix `{prefix}` is not a number in 1..=32"))?;
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(format!("`{addr}` cannot be a virtual IP"));
        }
        Ok(Vip { addr, prefix })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Vip {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Vip {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_LEN`].
    #[error("config {path} is {len} bytes; the limit is {MAX_CONFIG_LEN}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value out of range; the first field names the key.
    #[error("invalid config: `{key}`: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `sync.heartbeat_ms`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl SyncConfig {
    /// How long a silent peer takes to be declared dead: `heartbeat_ms × misses`.
    pub fn detection_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_ms.saturating_mul(u64::from(self.misses)))
    }

    /// How long the fence command may run: 50 heartbeats, at least 5 s.
    pub fn fence_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_ms.saturating_mul(50))
            .max(std::time::Duration::from_secs(5))
    }
}

impl SessionConfig {
    /// The longest a planned switchover waits for sessions to drain (`drain_ms`).
    pub fn drain_limit(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_ms)
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let len = std::fs::metadata(path)
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?
            .len();
        if len > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentConfig::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Renders as TOML (used by the lab to write ready-to-use files).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every value's range and the relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() || self.node_id.len() > MAX_NODE_ID_LEN {
            return Err(invalid(
                "node_id",
                format!("must be 1..={MAX_NODE_ID_LEN} bytes"),
            ));
        }
        if self
            .node_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(
                "node_id",
                "must not contain spaces or control characters",
            ));
        }
        if self.service.interface.is_empty() || self.service.interface.len() > 15 {
            return Err(invalid(
                "service.interface",
                "must be an interface name of 1..=15 bytes",
            ));
        }
        if self.service.mirror_backlog < 64 * 1024 || self.service.mirror_backlog > 1 << 30 {
            return Err(invalid(
                "service.mirror_backlog",
                "must be 64 KiB ..= 1 GiB (bytes)",
            ));
        }
        if self.service.ports.is_empty() {
            return Err(invalid("service.ports", "must list at least one port"));
        }
        if self.service.ports.contains(&0) {
            return Err(invalid("service.ports", "port 0 is not a service port"));
        }
        if self
            .service
            .command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(invalid("service.command", "must not be empty when given"));
        }
        if !(1..=60_000).contains(&self.sync.heartbeat_ms) {
            return Err(invalid(
                "sync.heartbeat_ms",
                format!("must be in 1..=60000, got {}", self.sync.heartbeat_ms),
            ));
        }
        if !(1..=100).contains(&self.sync.misses) {
            return Err(invalid(
                "sync.misses",
                format!("must be in 1..=100, got {}", self.sync.misses),
            ));
        }
        if self.sync.address == self.sync.peer {
            return Err(invalid("sync.peer", "must differ from sync.address"));
        }
        if self.sync.address.port() == 0 || self.sync.peer.port() == 0 {
            return Err(invalid("sync.address", "heartbeat ports must not be 0"));
        }
        if self.control.listen.is_empty() {
            return Err(invalid("control.listen", "must list at least one address"));
        }
        if self.garp.count == 0 || self.garp.count > 100 {
            return Err(invalid(
                "garp.count",
                format!("must be in 1..=100, got {}", self.garp.count),
            ));
        }
        if !(1..=60_000).contains(&self.garp.interval_ms) {
            return Err(invalid(
                "garp.interval_ms",
                format!("must be in 1..=60000, got {}", self.garp.interval_ms),
            ));
        }
        if self
            .fence_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(invalid("fence_command", "must not be empty when given"));
        }
        if !(1..=60_000).contains(&self.session.fsync_interval_ms) {
            return Err(invalid(
                "session.fsync_interval_ms",
                format!(
                    "must be in 1..=60000, got {}",
                    self.session.fsync_interval_ms
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.session.max_sessions) {
            return Err(invalid(
                "session.max_sessions",
                format!("must be in 1..=1000000, got {}", self.session.max_sessions),
            ));
        }
        for (field, value, min, max) in [
            (
                "session.max_held_bytes",
                self.session.max_held_bytes,
                1 << 20,
                16 << 30,
            ),
            (
                "session.max_unacked_bytes",
                self.session.max_unacked_bytes,
                64 << 10,
                16 << 20,
            ),
            (
                "session.max_record_backlog_bytes",
                self.session.max_record_backlog_bytes,
                1 << 20,
                16 << 30,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    field,
                    format!("must be in {min}..={max}, got {value}"),
                ));
            }
        }
        if self.session.risk_poll_ms > 10_000 {
            return Err(invalid(
                "session.risk_poll_ms",
                format!("must be in 0..=10000, got {}", self.session.risk_poll_ms),
            ));
        }
        if self.session.drain_ms > 60_000 {
            return Err(invalid(
                "session.drain_ms",
                format!("must be in 0..=60000, got {}", self.session.drain_ms),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.security.key_file.as_os_str().is_empty() {
            return Err(invalid(
                "security.key_file",
                "must name the pre-shared key file",
            ));
        }
        if self.metrics.listen.is_some_and(|a| a.port() == 0) {
            return Err(invalid("metrics.listen", "port must not be 0"));
        }
        if self.control.listen.iter().any(|a| a.ip().is_unspecified()) {
            return Err(invalid(
                "control.listen",
                "must not be a wildcard address (0.0.0.0): list localhost and the sync-link address",
            ));
        }
        self.validate_host()
    }

    /// Checks the `[log]`, `[notify]`, `[inject]` and `[service.check]` sections.
    fn validate_host(&self) -> Result<(), ConfigError> {
        if self.log.level.trim().is_empty() || self.log.level.len() > 1024 {
            return Err(invalid(
                "log.level",
                "must be a level or filter (e.g. `info`)",
            ));
        }
        let hooks = [
            ("notify.master", &self.notify.master),
            ("notify.backup", &self.notify.backup),
            ("notify.fault", &self.notify.fault),
            ("notify.stop", &self.notify.stop),
            ("notify.notify", &self.notify.notify),
        ];
        for (key, hook) in hooks {
            if hook.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(invalid(key, "must not be empty when given"));
            }
        }
        if !(1..=600_000).contains(&self.notify.timeout_ms) {
            return Err(invalid(
                "notify.timeout_ms",
                format!("must be in 1..=600000, got {}", self.notify.timeout_ms),
            ));
        }
        if let Some(check) = &self.service.check {
            match (&check.command, check.tcp) {
                (Some(c), false) if !c.trim().is_empty() => {}
                (None, true) => {}
                _ => {
                    return Err(invalid(
                        "service.check",
                        "needs exactly one of `command = \"...\"` or `tcp = true`",
                    ))
                }
            }
            if check.tcp_port.is_some_and(|p| p == 0) {
                return Err(invalid(
                    "service.check.tcp_port",
                    "port 0 is not a service port",
                ));
            }
            if !(10..=600_000).contains(&check.interval_ms) {
                return Err(invalid(
                    "service.check.interval_ms",
                    format!("must be in 10..=600000, got {}", check.interval_ms),
                ));
            }
            if check.timeout_ms == 0 || check.timeout_ms > check.interval_ms {
                return Err(invalid(
                    "service.check.timeout_ms",
                    format!(
                        "must be in 1..=interval_ms ({}), got {}",
                        check.interval_ms, check.timeout_ms
                    ),
                ));
            }
            if !(1..=100).contains(&check.rise) || !(1..=100).contains(&check.fall) {
                return Err(invalid(
                    "service.check.rise",
                    "rise and fall must be in 1..=100",
                ));
            }
        }
        Ok(())
    }
}

/// `[log]`: what the agent logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level or `tracing` filter (`info`, `debug`, `info,nonstop_agent=debug`);
    /// `RUST_LOG` overrides it. Reloaded on SIGHUP.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// `[notify]`: commands run (with `sh -c`) when this node changes mode, as
/// keepalived's `notify_master`/`notify_backup`/`notify_fault`/`notify_stop` and
/// `notify`. Each gets the environment `NONSTOP_NODE`, `NONSTOP_STATE`,
/// `NONSTOP_EPOCH`, `NONSTOP_VIP`, `NONSTOP_REASON` (and `notify` also the state as
/// its first argument). They run in the background, killed after `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Run on becoming master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Run on becoming backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Run on entering `fault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Run when the agent stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// Run on every change, with the new state as its first argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// Longest a hook may run before it is killed.
    #[serde(default = "default_notify_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            master: None,
            backup: None,
            fault: None,
            stop: None,
            notify: None,
            timeout_ms: default_notify_timeout_ms(),
        }
    }
}

fn default_notify_timeout_ms() -> u64 {
    10_000
}

/// `[inject]`: fault injection through the control API (`inject`, `heal`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Whether `inject` commands are carried out; refused (and counted) otherwise.
    #[serde(default)]
    pub enabled: bool,
}

/// `[service.check]`: the service's health check — a command (exit 0 = healthy) or a
/// TCP connect to the service port — every `interval_ms`; `fall` failures in a row
/// make the service unhealthy, `rise` successes in a row healthy again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Command run with `sh -c`; healthy when it exits 0 within `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Check by connecting to the service port on the local host instead.
    #[serde(default)]
    pub tcp: bool,
    /// Port for `tcp` (default: the first service port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// Milliseconds between checks.
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    /// Longest one check may take.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Successes in a row that make the service healthy.
    #[serde(default = "default_check_count")]
    pub rise: u32,
    /// Failures in a row that make it unhealthy.
    #[serde(default = "default_check_count")]
    pub fall: u32,
}

fn default_check_interval_ms() -> u64 {
    1000
}
fn default_check_timeout_ms() -> u64 {
    1000
}
fn default_check_count() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = "master"
data_dir = "/tmp/nonstop-test"
[service]
interface = "eth0"
vip = "198.18.1.100/24"
ports = [7000]
[sync]
address = "198.19.1.1:7701"
peer = "198.19.1.2:7701"
[security]
key_file = "/etc/nonstop/key"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = AgentConfig::from_toml(GOOD).expect("valid");
        assert_eq!(config.priority, 100);
        assert_eq!(config.sync.heartbeat_ms, 100);
        assert_eq!(config.sync.misses, 3);
        assert_eq!(config.control.listen, default_control_listen());
        assert_eq!(config.garp, GarpConfig::default());
        assert_eq!(config.service.vip.to_string(), "198.18.1.100/24");
        assert_eq!(config.metrics.listen, None);
        assert!(!config.to_toml().contains("metrics"));
    }

    #[test]
    fn metrics_listen_is_parsed_and_checked() {
        let text = format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9477\"\n");
        let config = AgentConfig::from_toml(&text).expect("valid");
        assert_eq!(
            config.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9477)))
        );
        assert_eq!(
            AgentConfig::from_toml(&config.to_toml()).expect("again"),
            config
        );
        let text = format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:0\"\n");
        let err = AgentConfig::from_toml(&text)
            .expect_err("port 0")
            .to_string();
        assert!(err.contains("metrics.listen"), "{err}");
        let text = format!("{GOOD}[metrics]\nlisten = \"nowhere\"\n");
        assert!(AgentConfig::from_toml(&text).is_err());
    }

    #[test]
    fn round_trips_through_toml() {
        let config = AgentConfig::from_toml(GOOD).expect("valid");
        let again = AgentConfig::from_toml(&config.to_toml()).expect("still valid");
        assert_eq!(config, again);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("ports = [7000]", "ports = [7000]\nportz = 1");
        let err = AgentConfig::from_toml(&text)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("portz"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("ports = [7000]", "ports = []", "service.ports"),
            (
                "peer = \"198.19.1.2:7701\"",
                "peer = \"198.19.1.2:7701\"\nheartbeat_ms = 0",
                "sync.heartbeat_ms",
            ),
            (
                "peer = \"198.19.1.2:7701\"",
                "peer = \"198.19.1.2:7701\"\nmisses = 0",
                "sync.misses",
            ),
            ("node_id = \"master\"", "node_id = \"\"", "node_id"),
            (
                "peer = \"198.19.1.2:7701\"",
                "peer = \"198.19.1.1:7701\"",
                "sync.peer",
            ),
        ];
        for (from, to, key) in cases {
            let err = AgentConfig::from_toml(&GOOD.replace(from, to))
                .expect_err(key)
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn bad_vip_is_explained_with_its_key() {
        for vip in [
            "198.18.1.100",
            "198.18.1.300/24",
            "198.18.1.100/40",
            "0.0.0.0/8",
        ] {
            let text = GOOD.replace("198.18.1.100/24", vip);
            let err = AgentConfig::from_toml(&text).expect_err(vip).to_string();
            assert!(err.contains("vip"), "{vip}: {err}");
        }
    }

    #[test]
    fn security_section_is_required_and_control_not_wildcard() {
        let text = GOOD.replace("[security]\nkey_file = \"/etc/nonstop/key\"\n", "");
        let err = AgentConfig::from_toml(&text)
            .expect_err("no key")
            .to_string();
        assert!(err.contains("security"), "{err}");
        let text = GOOD.replace("key_file = \"/etc/nonstop/key\"", "key_file = \"\"");
        let err = AgentConfig::from_toml(&text)
            .expect_err("empty")
            .to_string();
        assert!(err.contains("security.key_file"), "{err}");
        let text = format!("{GOOD}[control]\nlisten = [\"0.0.0.0:7700\"]\n");
        let err = AgentConfig::from_toml(&text)
            .expect_err("wildcard")
            .to_string();
        assert!(err.contains("control.listen"), "{err}");
        let config = AgentConfig::from_toml(GOOD).expect("valid");
        assert!(config.control.listen.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn oversized_config_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("nonstop-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("big.toml");
        let mut text = GOOD.to_owned();
        text.push_str(&"# padding\n".repeat(MAX_CONFIG_LEN as usize / 10 + 1));
        std::fs::write(&path, text).expect("write");
        let err = AgentConfig::load(&path).expect_err("too big").to_string();
        assert!(err.contains("limit"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn host_sections_default_off_and_are_checked() {
        let config = AgentConfig::from_toml(GOOD).expect("valid");
        assert!(!config.inject.enabled);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.notify, NotifyConfig::default());
        assert!(config.service.check.is_none());
        let text = GOOD.replace(
            "ports = [7000]",
            "ports = [7000]\n[service.check]\ntcp = true\nrise = 2\nfall = 2\ninterval_ms = 200\ntimeout_ms = 100",
        ) + "[inject]\nenabled = true\n[notify]\nmaster = \"touch /tmp/m\"\ntimeout_ms = 500\n[log]\nlevel = \"debug\"\n";
        let config = AgentConfig::from_toml(&text).expect("valid");
        assert!(config.inject.enabled);
        assert_eq!(config.notify.master.as_deref(), Some("touch /tmp/m"));
        assert_eq!(
            config.service.check.as_ref().map(|c| (c.rise, c.tcp)),
            Some((2, true))
        );
        assert_eq!(
            AgentConfig::from_toml(&config.to_toml()).expect("round trip"),
            config
        );
        for (from, to, key) in [
            ("tcp = true", "tcp = false", "service.check"),
            (
                "timeout_ms = 100",
                "timeout_ms = 300",
                "service.check.timeout_ms",
            ),
            ("rise = 2", "rise = 0", "service.check.rise"),
            ("timeout_ms = 500", "timeout_ms = 0", "notify.timeout_ms"),
            ("\"touch /tmp/m\"", "\" \"", "notify.master"),
            ("\"debug\"", "\"\"", "log.level"),
        ] {
            let err = AgentConfig::from_toml(&text.replace(from, to))
                .expect_err(key)
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn wrong_types_are_rejected() {
        let text = GOOD.replace("ports = [7000]", "ports = \"7000\"");
        assert!(AgentConfig::from_toml(&text).is_err());
        let text = GOOD.replace("ports = [7000]", "ports = [70000]");
        assert!(AgentConfig::from_toml(&text).is_err());
    }
}
