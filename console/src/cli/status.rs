//! `status`: one row per node.

use super::render;
use crate::client::AgentAddr;
use crate::pair;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// Prints the status of every agent; fails if none answers.
pub fn run(agents: &[AgentAddr], timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let reports = pair::poll(agents, timeout);
    if json {
        println!("{}", json!({ "agents": reports }));
    } else {
        print!("{}", render::status_table(&reports));
    }
    let any = reports.iter().any(|r| r.reachable);
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
