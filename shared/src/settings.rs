//! An agent's effective settings as the control API reports them (`settings`), and
//! the comparison `nonstop-console check` runs on the two agents of a pair: every
//! setting both must share, and the sync addresses that must point at each other.

use crate::config::AgentConfig;
use serde::{Deserialize, Serialize};

/// The settings of one running agent that matter to its partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Node id.
    pub node_id: String,
    /// Election priority.
    pub priority: u8,
    /// Service interface (may differ between hosts).
    pub interface: String,
    /// `addr/prefix`.
    pub vip: String,
    /// Service ports.
    pub ports: Vec<u16>,
    /// The managed service's command line, if any.
    pub service_command: Option<String>,
    /// `stop` or `park` on a non-master node.
    pub on_backup: String,
    /// Our sync-link address.
    pub sync_address: String,
    /// The partner's sync-link address as we know it.
    pub sync_peer: String,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Misses before failover.
    pub misses: u32,
    /// `sync` or `async`.
    pub replication: String,
    /// `serve` or `hold`.
    pub lone_master: String,
    /// Drain limit of a planned switchover, ms.
    pub drain_ms: u64,
    /// Most sessions tracked.
    pub max_sessions: usize,
    /// Gratuitous ARP count and interval (ms).
    pub garp: (u32, u64),
    /// Whether a fence command is configured.
    pub fence: bool,
    /// Fingerprint of the pre-shared key ([`crate::auth::Key::fingerprint`]).
    pub key_fingerprint: String,
}

impl Settings {
    /// The settings of `config`, with the fingerprint of the key it loaded.
    pub fn from_config(config: &AgentConfig, key_fingerprint: String) -> Settings {
        Settings {
            node_id: config.node_id.clone(),
            priority: config.priority,
            interface: config.service.interface.clone(),
            vip: config.service.vip.to_string(),
            ports: config.service.ports.clone(),
            service_command: config.service.command.clone(),
            on_backup: toml_name(&config.service.on_backup),
            sync_address: config.sync.address.to_string(),
            sync_peer: config.sync.peer.to_string(),
            heartbeat_ms: config.sync.heartbeat_ms,
            misses: config.sync.misses,
            replication: config.session.replication.to_string(),
            lone_master: toml_name(&config.session.lone_master),
            drain_ms: config.session.drain_ms,
            max_sessions: config.session.max_sessions,
            garp: (config.garp.count, config.garp.interval_ms),
            fence: config.fence_command.is_some(),
            key_fingerprint,
        }
    }
}

/// The TOML name of a config enum value (`stop`, `serve`, ...).
fn toml_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("<{e}>"),
    }
}

/// One setting on which the two agents disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The config key, e.g. `sync.heartbeat_ms`.
    pub key: String,
    /// The first agent's value.
    pub first: String,
    /// The second agent's value.
    pub second: String,
    /// What is wrong.
    pub why: String,
}

/// Every disagreement between the two agents of a pair: settings that must be equal,
/// sync addresses that must point at each other, node ids that must differ. The
/// interface name and priority may differ and are not reported.
pub fn compare(a: &Settings, b: &Settings) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut must_equal = |key: &str, x: String, y: String| {
        if x != y {
            out.push(Mismatch {
                key: key.to_owned(),
                first: x,
                second: y,
                why: "must be the same on both nodes".to_owned(),
            });
        }
    };
    must_equal("service.vip", a.vip.clone(), b.vip.clone());
    must_equal(
        "service.ports",
        format!("{:?}", a.ports),
        format!("{:?}", b.ports),
    );
    must_equal(
        "service.command",
        a.service_command.clone().unwrap_or_else(|| "none".into()),
        b.service_command.clone().unwrap_or_else(|| "none".into()),
    );
    must_equal(
        "service.on_backup",
        a.on_backup.clone(),
        b.on_backup.clone(),
    );
    must_equal(
        "sync.heartbeat_ms",
        a.heartbeat_ms.to_string(),
        b.heartbeat_ms.to_string(),
    );
    must_equal("sync.misses", a.misses.to_string(), b.misses.to_string());
    must_equal(
        "session.replication",
        a.replication.clone(),
        b.replication.clone(),
    );
    must_equal(
        "session.lone_master",
        a.lone_master.clone(),
        b.lone_master.clone(),
    );
    must_equal(
        "session.drain_ms",
        a.drain_ms.to_string(),
        b.drain_ms.to_string(),
    );
    must_equal(
        "session.max_sessions",
        a.max_sessions.to_string(),
        b.max_sessions.to_string(),
    );
    must_equal(
        "garp",
        format!("{} x {} ms", a.garp.0, a.garp.1),
        format!("{} x {} ms", b.garp.0, b.garp.1),
    );
    must_equal(
        "security.key_file (fingerprint)",
        a.key_fingerprint.clone(),
        b.key_fingerprint.clone(),
    );
    if a.fence != b.fence {
        out.push(Mismatch {
            key: "fence_command".into(),
            first: if a.fence { "set" } else { "none" }.into(),
            second: if b.fence { "set" } else { "none" }.into(),
            why: "either both nodes fence or neither does".into(),
        });
    }
    if a.node_id == b.node_id {
        out.push(Mismatch {
            key: "node_id".into(),
            first: a.node_id.clone(),
            second: b.node_id.clone(),
            why: "must differ".into(),
        });
    }
    for (key, from, to, why) in [
        (
            "sync.peer",
            &a.sync_peer,
            &b.sync_address,
            "the first node's sync.peer must be the second's sync.address",
        ),
        (
            "sync.peer",
            &b.sync_peer,
            &a.sync_address,
            "the second node's sync.peer must be the first's sync.address",
        ),
    ] {
        if from != to {
            out.push(Mismatch {
                key: key.into(),
                first: from.clone(),
                second: to.clone(),
                why: why.into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = r#"
node_id = "master"
priority = 110
data_dir = "/var/lib/nonstop"
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

    fn pair() -> (Settings, Settings) {
        let master = AgentConfig::from_toml(MASTER).expect("master");
        let backup_text = MASTER
            .replace("\"master\"", "\"backup\"")
            .replace("priority = 110", "priority = 100")
            .replace("eth0", "ens3")
            .replace("198.19.1.1:7701", "X")
            .replace("198.19.1.2:7701", "198.19.1.1:7701")
            .replace("X", "198.19.1.2:7701");
        let backup = AgentConfig::from_toml(&backup_text).expect("backup");
        (
            Settings::from_config(&master, "ab".into()),
            Settings::from_config(&backup, "ab".into()),
        )
    }

    #[test]
    fn a_matching_pair_has_no_mismatch_even_with_other_interfaces_and_priorities() {
        let (a, b) = pair();
        assert_eq!(a.on_backup, "stop");
        assert_eq!(a.lone_master, "serve");
        assert_eq!(a.replication, "sync");
        assert_eq!(compare(&a, &b), []);
    }

    #[test]
    fn every_mismatch_is_named() {
        let (a, mut b) = pair();
        b.heartbeat_ms = 50;
        b.ports = vec![7000, 7001];
        b.key_fingerprint = "cd".into();
        b.replication = "async".into();
        b.sync_peer = "198.19.1.9:7701".into();
        let keys: Vec<String> = compare(&a, &b).into_iter().map(|m| m.key).collect();
        assert_eq!(
            keys,
            [
                "service.ports",
                "sync.heartbeat_ms",
                "session.replication",
                "security.key_file (fingerprint)",
                "sync.peer",
            ]
        );
        let (a, mut b) = pair();
        b.node_id = a.node_id.clone();
        b.fence = true;
        let found = compare(&a, &b);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].key, "fence_command");
        assert_eq!(found[1].key, "node_id");
    }

    #[test]
    fn settings_round_trip_as_json() {
        let (a, _) = pair();
        let text = serde_json::to_string(&a).expect("encode");
        assert_eq!(serde_json::from_str::<Settings>(&text).expect("decode"), a);
    }
}
