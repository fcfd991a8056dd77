//! The agent configuration files the lab writes (`master.toml`, `backup.toml`): pure.

use crate::naming::{
    AddressPlan, Node, CONTROL_PORT, PREFIX_LEN, SERVICE_IF, SERVICE_PORT, SYNC_PORT,
};
use anyhow::{Context, Result};
use nonstop_shared::config::{
    AgentConfig, ControlConfig, GarpConfig, ServiceConfig, SyncConfig, Vip,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// The knobs of the agent configs that come from `up`'s flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKnobs {
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before the peer is declared dead.
    pub misses: u32,
    /// Service command line the agents manage, if any.
    pub service: Option<String>,
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
        for config in [master, backup] {
            let again = AgentConfig::from_toml(&config.to_toml()).expect("parses back");
            assert_eq!(again, config);
        }
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
