//! `sessions`: every session each agent knows, side by side.

use crate::client::{AgentAddr, AgentConnection};
use nonstop_shared::control::{Reply, Request, SessionList};
use serde_json::json;
use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Asks every agent for its sessions and prints them.
pub fn run(agents: &[AgentAddr], timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let answers: Vec<(String, Result<SessionList, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| scope.spawn(move || (agent.to_string(), fetch(agent, timeout))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| ("?".into(), Err("thread panicked".into())))
            })
            .collect()
    });
    if json {
        let agents: Vec<_> = answers
            .iter()
            .map(|(address, answer)| match answer {
                Ok(list) => json!({ "address": address, "reachable": true, "list": list }),
                Err(e) => json!({ "address": address, "reachable": false, "error": e }),
            })
            .collect();
        println!("{}", json!({ "agents": agents }));
    } else {
        print!("{}", render(&answers));
    }
    let any = answers.iter().any(|(_, a)| a.is_ok());
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn fetch(agent: &AgentAddr, timeout: Duration) -> Result<SessionList, String> {
    let mut conn = AgentConnection::connect(agent, timeout).map_err(|e| format!("{e:#}"))?;
    match conn
        .request(&Request::Sessions)
        .map_err(|e| format!("{e:#}"))?
    {
        Reply::Sessions(list) => Ok(list),
        Reply::Error { message } => Err(message),
        other => Err(format!("unexpected reply: {other:?}")),
    }
}

fn render(answers: &[(String, Result<SessionList, String>)]) -> String {
    let mut out = String::new();
    for (address, answer) in answers {
        match answer {
            Err(e) => {
                let _ = writeln!(out, "{address}: unreachable: {e}\n");
            }
            Ok(list) => {
                let _ = writeln!(
                    out,
                    "{} ({}, {} sessions from its {})",
                    list.node_id,
                    list.mode,
                    list.sessions.len(),
                    list.source
                );
                let _ = writeln!(
                    out,
                    "  {:<22} {:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8}",
                    "PEER",
                    "PHASE",
                    "BYTES IN",
                    "BYTES OUT",
                    "RCV_NXT",
                    "SND_NXT",
                    "SND_UNA",
                    "UNACKED",
                    "RECORD"
                );
                for s in &list.sessions {
                    let _ = writeln!(
                        out,
                        "  {:<22} {:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8}",
                        s.peer,
                        format!("{:?}", s.phase).to_lowercase(),
                        s.bytes_in,
                        s.bytes_out,
                        s.rcv_nxt,
                        s.snd_nxt,
                        s.snd_una,
                        s.unacked_bytes,
                        s.record_seq
                    );
                }
                out.push('\n');
            }
        }
    }
    out
}
