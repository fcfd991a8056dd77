//! `check`: compares both agents' effective settings (`settings` request) and names
//! every mismatch; exit status 0 only if both answered and agree.

use crate::client::{AgentAddr, AgentConnection};
use anyhow::{bail, Context};
use nonstop_shared::control::{Reply, Request};
use nonstop_shared::settings::{compare, Mismatch, Settings};
use serde_json::json;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// One agent's effective settings.
fn fetch(agent: &AgentAddr, timeout: Duration) -> anyhow::Result<Settings> {
    let mut conn = AgentConnection::connect(agent, timeout)?;
    match conn.request(&Request::Settings)? {
        Reply::Settings(settings) => Ok(settings),
        Reply::Error { message } => bail!("agent {agent} refused `settings`: {message}"),
        other => bail!("agent {agent}: unexpected reply to `settings`: {other:?}"),
    }
}

/// The human report: one ✘ line per mismatch, or one ✔ line with the shared values.
pub fn render(a: &Settings, b: &Settings, mismatches: &[Mismatch]) -> String {
    let mut out = String::new();
    if mismatches.is_empty() {
        let _ = writeln!(
            out,
            "✔ {} and {} agree: VIP {} ports {:?}, heartbeat {} ms × {}, {} replication, \
             key {}, sync {} ⇄ {}",
            a.node_id,
            b.node_id,
            a.vip,
            a.ports,
            a.heartbeat_ms,
            a.misses,
            a.replication,
            a.key_fingerprint,
            a.sync_address,
            b.sync_address
        );
        return out;
    }
    for m in mismatches {
        let _ = writeln!(
            out,
            "✘ {}: {} has {}, {} has {} ({})",
            m.key, a.node_id, m.first, b.node_id, m.second, m.why
        );
    }
    let _ = writeln!(out, "{} mismatch(es)", mismatches.len());
    out
}

/// Runs the comparison on exactly two agents.
pub fn run(agents: &[AgentAddr], timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    if agents.len() != 2 {
        bail!(
            "check compares the two agents of a pair: give --agent twice or --lab (got {})",
            agents.len()
        );
    }
    let a = fetch(&agents[0], timeout).context("first agent")?;
    let b = fetch(&agents[1], timeout).context("second agent")?;
    let mismatches = compare(&a, &b);
    if json {
        println!(
            "{}",
            json!({ "ok": mismatches.is_empty(), "agents": [a, b], "mismatches": mismatches })
        );
    } else {
        print!("{}", render(&a, &b, &mismatches));
    }
    Ok(if mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(node: &str, own: &str, peer: &str, heartbeat_ms: u64) -> Settings {
        Settings {
            node_id: node.into(),
            priority: 100,
            interface: "eth0".into(),
            vip: "198.18.1.100/24".into(),
            ports: vec![7000],
            service_command: None,
            on_backup: "stop".into(),
            sync_address: own.into(),
            sync_peer: peer.into(),
            heartbeat_ms,
            misses: 3,
            replication: "sync".into(),
            lone_master: "serve".into(),
            drain_ms: 2000,
            max_sessions: 100_000,
            garp: (5, 500),
            fence: false,
            key_fingerprint: "0011223344556677".into(),
        }
    }

    #[test]
    fn report_names_the_mismatched_key_and_both_values() {
        let a = settings("master", "198.19.1.1:7701", "198.19.1.2:7701", 100);
        let b = settings("backup", "198.19.1.2:7701", "198.19.1.1:7701", 50);
        let text = render(&a, &b, &compare(&a, &b));
        assert_eq!(
            text,
            "✘ sync.heartbeat_ms: master has 100, backup has 50 (must be the same on both nodes)\n\
             1 mismatch(es)\n"
        );
        let b = settings("backup", "198.19.1.2:7701", "198.19.1.1:7701", 100);
        let text = render(&a, &b, &compare(&a, &b));
        assert!(
            text.starts_with("✔ master and backup agree: VIP 198.18.1.100/24"),
            "{text}"
        );
    }
}
