//! The two agents of a pair: where they are and what they say.

use crate::client::{fetch_status, AgentAddr};
use anyhow::{bail, Context};
use nonstop_shared::control::NodeStatus;
use nonstop_shared::Mode;
use serde::Serialize;
use std::time::Duration;

/// Resolves the agents from explicit addresses or a lab name.
pub fn resolve(agents: &[AgentAddr], lab: Option<&str>) -> anyhow::Result<Vec<AgentAddr>> {
    match (agents.is_empty(), lab) {
        (false, None) => Ok(agents.to_vec()),
        (true, Some(name)) => {
            let lab = nonstop_lab::Lab::open(name).with_context(|| format!("lab `{name}`"))?;
            Ok([nonstop_lab::Node::Master, nonstop_lab::Node::Backup]
                .into_iter()
                .map(|node| AgentAddr {
                    netns: Some(lab.namespace(&node.to_string())),
                    addr: lab.control_addr(node),
                })
                .collect())
        }
        (false, Some(_)) => bail!("give either --agent or --lab, not both"),
        (true, None) => bail!("no agents: give --agent ADDR (twice for a pair) or --lab NAME"),
    }
}

/// One agent's answer, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// The address asked.
    pub address: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    /// The error, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks every agent for its status (in parallel, each bounded by `timeout`).
pub fn poll(agents: &[AgentAddr], timeout: Duration) -> Vec<AgentReport> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| scope.spawn(move || (agent, fetch_status(agent, timeout))))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok((agent, Ok(status))) => AgentReport {
                    address: agent.to_string(),
                    reachable: true,
                    status: Some(status),
                    error: None,
                },
                Ok((agent, Err(e))) => AgentReport {
                    address: agent.to_string(),
                    reachable: false,
                    status: None,
                    error: Some(format!("{e:#}")),
                },
                Err(_) => AgentReport {
                    address: "?".into(),
                    reachable: false,
                    status: None,
                    error: Some("poll thread panicked".into()),
                },
            })
            .collect()
    })
}

/// Index of the single reachable master, if exactly one.
pub fn the_master(reports: &[AgentReport]) -> Option<usize> {
    let masters: Vec<usize> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status.as_ref().is_some_and(|s| s.mode == Mode::Master))
        .map(|(i, _)| i)
        .collect();
    (masters.len() == 1).then(|| masters[0])
}
