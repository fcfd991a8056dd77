//! `inject KIND --node N` and `heal --node N|--all`: the TUI's fault injection for
//! scripts. The node is found by its id (`master`/`backup` in a lab) among the agents
//! that answer; the output is one line for people or one JSON document
//! (`{"ok":…,"node":…,"message"|"error":…}`); the exit status says whether it worked.

use crate::client::{AgentAddr, AgentConnection};
use crate::pair;
use clap::{Args, ValueEnum};
use nonstop_shared::control::{Fault, LinkName, Reply, Request};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// Which fault `inject` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// SIGKILL the managed service.
    KillApp,
    /// SIGKILL the agent.
    KillAgent,
    /// SIGSTOP the agent for `--seconds`.
    FreezeAgent,
    /// Every link of the host down for `--seconds`.
    LinksDown,
    /// Drop everything on the sync link.
    CutSync,
    /// Drop `--percent`% of packets on `--link`.
    Loss,
    /// Delay every packet on `--link` by `--ms`.
    Delay,
    /// Master: do not replicate the next record that carries payload (a gap).
    DropRecord,
    /// Remove every fault on the node (same as `heal --node`).
    HealAll,
}

/// Which link `loss` and `delay` apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LinkArg {
    /// The master↔backup sync link.
    Sync,
    /// The service LAN.
    Service,
}

/// Arguments of `inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// What to break.
    #[arg(value_enum)]
    pub kind: FaultKind,
    /// Node id of the host to break (`master` or `backup` in a lab).
    #[arg(long)]
    pub node: String,
    /// Duration for freeze-agent and links-down.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Loss percentage for `loss`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub percent: u8,
    /// Delay in ms for `delay`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub ms: u64,
    /// Link for `loss` and `delay`.
    #[arg(long, value_enum, default_value_t = LinkArg::Sync)]
    pub link: LinkArg,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `heal`.
#[derive(Debug, Args)]
pub struct HealArgs {
    /// Node id to heal.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub node: Option<String>,
    /// Heal every node that answers.
    #[arg(long)]
    pub all: bool,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

impl InjectArgs {
    /// The fault these arguments describe.
    pub fn fault(&self) -> Fault {
        let link = match self.link {
            LinkArg::Sync => LinkName::Sync,
            LinkArg::Service => LinkName::Service,
        };
        match self.kind {
            FaultKind::KillApp => Fault::KillApp,
            FaultKind::KillAgent => Fault::KillAgent,
            FaultKind::FreezeAgent => Fault::FreezeAgent {
                seconds: self.seconds,
            },
            FaultKind::LinksDown => Fault::LinksDown {
                seconds: self.seconds,
            },
            FaultKind::CutSync => Fault::CutSync,
            FaultKind::Loss => Fault::Loss {
                link,
                percent: self.percent,
            },
            FaultKind::Delay => Fault::Delay { link, ms: self.ms },
            FaultKind::DropRecord => Fault::DropRecord,
            FaultKind::HealAll => Fault::HealAll,
        }
    }
}

/// Sends `fault` to one agent; the agent's acknowledgement or why it failed.
pub fn send_fault(agent: &AgentAddr, timeout: Duration, fault: &Fault) -> Result<String, String> {
    let mut conn = AgentConnection::connect(agent, timeout).map_err(|e| format!("{e:#}"))?;
    let request = Request::Inject {
        fault: fault.clone(),
    };
    match conn.request(&request) {
        Ok(Reply::Ack { message }) => Ok(message),
        Ok(Reply::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected reply: {other:?}")),
        // A killed agent may die before it answers.
        Err(e) if *fault == Fault::KillAgent => Err(format!(
            "no answer ({e:#}); the agent may have died before replying"
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Index of the agent whose node id is `node`, among those that answer.
fn find_node(agents: &[AgentAddr], timeout: Duration, node: &str) -> Result<usize, String> {
    let reports = pair::poll(agents, timeout);
    if let Some(i) = reports
        .iter()
        .position(|r| r.status.as_ref().is_some_and(|s| s.node_id == node))
    {
        return Ok(i);
    }
    let known: Vec<String> = reports
        .iter()
        .map(|r| match (&r.status, &r.error) {
            (Some(s), _) => format!("{} at {}", s.node_id, r.address),
            (None, Some(e)) => format!("{} unreachable: {e}", r.address),
            (None, None) => format!("{} unreachable", r.address),
        })
        .collect();
    Err(format!(
        "no reachable agent has node id `{node}` ({})",
        known.join("; ")
    ))
}

fn print_outcome(json: bool, node: &str, fault: &Fault, result: &Result<String, String>) {
    match (json, result) {
        (true, Ok(message)) => println!(
            "{}",
            json!({ "ok": true, "node": node, "fault": fault, "message": message })
        ),
        (true, Err(error)) => println!(
            "{}",
            json!({ "ok": false, "node": node, "fault": fault, "error": error })
        ),
        (false, Ok(message)) => println!("{node}: {fault}: {message}"),
        (false, Err(error)) => eprintln!("{node}: {fault} failed: {error}"),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `inject`.
pub fn run_inject(
    agents: &[AgentAddr],
    timeout: Duration,
    args: &InjectArgs,
) -> anyhow::Result<ExitCode> {
    let fault = args.fault();
    let result = find_node(agents, timeout, &args.node)
        .and_then(|i| send_fault(&agents[i], timeout, &fault));
    print_outcome(args.json, &args.node, &fault, &result);
    Ok(exit(result.is_ok()))
}

/// `heal`.
pub fn run_heal(
    agents: &[AgentAddr],
    timeout: Duration,
    args: &HealArgs,
) -> anyhow::Result<ExitCode> {
    let fault = Fault::HealAll;
    if let Some(node) = &args.node {
        let result =
            find_node(agents, timeout, node).and_then(|i| send_fault(&agents[i], timeout, &fault));
        print_outcome(args.json, node, &fault, &result);
        return Ok(exit(result.is_ok()));
    }
    let reports = pair::poll(agents, timeout);
    let results: Vec<(String, Result<String, String>)> = reports
        .iter()
        .zip(agents)
        .map(|(report, agent)| match &report.status {
            Some(s) => (s.node_id.clone(), send_fault(agent, timeout, &fault)),
            None => (
                report.address.clone(),
                Err(report
                    .error
                    .clone()
                    .unwrap_or_else(|| "unreachable".to_owned())),
            ),
        })
        .collect();
    let ok = results.iter().all(|(_, r)| r.is_ok());
    if args.json {
        let nodes: Vec<_> = results
            .iter()
            .map(|(node, r)| match r {
                Ok(message) => json!({ "ok": true, "node": node, "message": message }),
                Err(error) => json!({ "ok": false, "node": node, "error": error }),
            })
            .collect();
        println!("{}", json!({ "ok": ok, "node": "all", "results": nodes }));
    } else {
        for (node, result) in &results {
            match result {
                Ok(message) => println!("{node}: healed: {message}"),
                Err(error) => eprintln!("{node}: heal failed: {error}"),
            }
        }
    }
    Ok(exit(ok))
}
