//! The agent configuration files the lab writes (`master.toml`, `backup.toml`), and the
//! lab's pre-shared key (`<dir>/key`, random, mode 0600) that both reference.

use crate::naming::{
    AddressPlan, Node, CONTROL_PORT, METRICS_PORT, PREFIX_LEN, SERVICE_IF, SERVICE_PORT, SYNC_PORT,
};
use anyhow::{Context, Result};
use nonstop_shared::config::{
    AgentConfig, ControlConfig, GarpConfig, MetricsConfig, SecurityConfig, ServiceConfig,
    SyncConfig, Vip,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// File name of a lab's pre-shared key inside its directory.
pub const KEY_FILE: &str = "key";

/// Where the key of the lab whose directory is `dir` lives.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

impl crate::Lab {
    /// This lab's pre-shared key file (the console finds it from `--lab`).
    pub fn key_path(&self) -> PathBuf {
        key_path(self.dir())
    }
}

/// Makes sure `path` holds a key: keeps an existing one (tightening its mode to 0600),
/// otherwise writes 32 random bytes as 64 hex characters, created with mode 0600.
pub fn ensure_key(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
        nonstop_shared::auth::Key::load(path)?;
        return Ok(());
    }
    let bytes: [u8; 32] = nonstop_shared::auth::random_bytes()
        .map_err(|e| anyhow::anyhow!("no randomness for the lab key: {e}"))?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The knobs of the agent configs that come from `up`'s flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKnobs {
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before the peer is declared dead.
    pub misses: u32,
    /// Service command line the agents manage, if any.
    pub service: Option<String>,
    /// `cold` or `hot` replica (design §9), the same on both agents.
    pub replica: nonstop_shared::config::ReplicaMode,
}

/// The validated config of `node` in a lab with address plan `plan` whose lab
/// directory is `dir`.
pub fn agent_config(
    plan: &AddressPlan,
    dir: &Path,
    node: Node,
    knobs: &AgentKnobs,
) -> Result<AgentConfig> {
    let sync = |n: Node| SocketAddr::from((plan.sync_ip(n), SYNC_PORT));
    let config = AgentConfig {
        node_id: node.to_string(),
        priority: node.priority(),
        data_dir: dir.join(format!("{node}-data")),
        fence_command: None,
        service: ServiceConfig {
            interface: SERVICE_IF.to_owned(),
            vip: Vip {
                addr: plan.vip(),
                prefix: PREFIX_LEN,
            },
            ports: vec![SERVICE_PORT],
            command: knobs.service.clone(),
            on_backup: Default::default(),
            check: None,
            replica: knobs.replica,
            mirror_backlog: nonstop_shared::config::DEFAULT_MIRROR_BACKLOG,
        },
        sync: SyncConfig {
            address: sync(node),
            peer: sync(node.other()),
            heartbeat_ms: knobs.heartbeat_ms,
            misses: knobs.misses,
        },
        control: ControlConfig {
            listen: vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, CONTROL_PORT)),
                SocketAddr::from((plan.sync_ip(node), CONTROL_PORT)),
            ],
        },
        garp: GarpConfig::default(),
        session: Default::default(),
        security: SecurityConfig {
            key_file: key_path(dir),
        },
        log: Default::default(),
        notify: Default::default(),
        // The lab is where faults are injected.
        inject: nonstop_shared::config::InjectConfig { enabled: true },
        metrics: MetricsConfig {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT))),
        },
    };
    config.validate().with_context(|| {
        format!(
            "the {node} agent config for lab index {} is invalid",
            plan.index
        )
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> AgentKnobs {
        AgentKnobs {
            heartbeat_ms: 50,
            misses: 4,
            service: Some("nonstop-echo --port 7000".to_owned()),
            replica: Default::default(),
        }
    }

    #[test]
    fn configs_mirror_each_other_and_round_trip() {
        let plan = AddressPlan { index: 42 };
        let dir = Path::new("/run/nonstop-lab/x");
        let master = agent_config(&plan, dir, Node::Master, &knobs()).expect("master");
        let backup = agent_config(&plan, dir, Node::Backup, &knobs()).expect("backup");
        assert_eq!(master.node_id, "master");
        assert_eq!(master.priority, 110);
        assert_eq!(backup.priority, 100);
        assert_eq!(master.data_dir, dir.join("master-data"));
        assert_eq!(master.service.vip.to_string(), "198.18.42.100/24");
        assert_eq!(master.service.interface, "eth0");
        assert_eq!(master.service.ports, [7000]);
        assert_eq!(master.sync.address.to_string(), "198.19.42.1:7701");
        assert_eq!(master.sync.peer, backup.sync.address);
        assert_eq!(backup.sync.peer, master.sync.address);
        assert_eq!(master.sync.heartbeat_ms, 50);
        assert_eq!(master.sync.misses, 4);
        let listen: Vec<String> = backup
            .control
            .listen
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(listen, ["127.0.0.1:7700", "198.19.42.2:7700"]);
        assert_eq!(
            backup.metrics.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9477")
        );
        assert_eq!(master.security.key_file, dir.join("key"));
        assert_eq!(backup.security, master.security);
        for config in [master, backup] {
            let again = AgentConfig::from_toml(&config.to_toml()).expect("parses back");
            assert_eq!(again, config);
        }
    }

    #[test]
    fn lab_key_is_private_random_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("nonstop-labkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = key_path(&dir);
        ensure_key(&path).expect("new key");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(first.trim().len(), 64);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        ensure_key(&path).expect("kept");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let other = dir.join("other");
        ensure_key(&other).expect("second key");
        assert_ne!(std::fs::read_to_string(&other).expect("read"), first);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn no_service_means_no_command() {
        let plan = AddressPlan { index: 1 };
        let knobs = AgentKnobs {
            service: None,
            ..knobs()
        };
        let config = agent_config(&plan, Path::new("/tmp/l"), Node::Master, &knobs).expect("valid");
        assert_eq!(config.service.command, None);
        assert!(!config.to_toml().contains("command"));
    }

    #[test]
    fn bad_knobs_are_rejected_with_the_key() {
        let plan = AddressPlan { index: 1 };
        let knobs = AgentKnobs {
            heartbeat_ms: 0,
            ..knobs()
        };
        let err = agent_config(&plan, Path::new("/tmp/l"), Node::Master, &knobs).expect_err("0 ms");
        assert!(format!("{err:#}").contains("sync.heartbeat_ms"), "{err:#}");
    }
}
