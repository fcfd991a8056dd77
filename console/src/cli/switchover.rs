//! `switchover`: ask the master to hand over, then wait until the backup reports
//! master (with the old master's sessions restored) and the old master reports backup.

use crate::client::{AgentAddr, AgentConnection};
use crate::pair;
use anyhow::bail;
use nonstop_shared::control::{Reply, Request};
use nonstop_shared::Mode;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long a switchover's reply may take: the master drains before it hands over
/// (bounded by its `session.drain_ms`, at most 60 s).
pub(crate) const DRAIN_REPLY_TIMEOUT: Duration = Duration::from_secs(65);

/// Runs a planned switchover and reports how long it took.
pub fn run(
    agents: &[AgentAddr],
    timeout: Duration,
    wait: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reports = pair::poll(agents, timeout);
    let Some(old) = pair::the_master(&reports) else {
        bail!("switchover needs exactly one reachable master; run `status` to see why not");
    };
    let Some(new) = (0..reports.len()).find(|&i| i != old && reports[i].reachable) else {
        bail!("no reachable backup to switch over to");
    };
    let old_status = reports[old].status.clone().expect("master is reachable");
    // Sessions the new master must restore, and its restore counter before.
    let expected_sessions = old_status.replication.sessions;
    let restored_before = reports[new]
        .status
        .as_ref()
        .map_or(0, |s| s.replication.restored);
    let started = Instant::now();
    let mut conn = AgentConnection::connect(&agents[old], timeout)?;
    // The master drains first (at most `session.drain_ms`, 60 s by validation).
    conn.set_read_timeout(Some(timeout.max(DRAIN_REPLY_TIMEOUT)))?;
    let message = match conn.request(&Request::Switchover)? {
        Reply::Ack { message } => message,
        Reply::Error { message } => {
            if json {
                println!("{}", json!({ "ok": false, "error": message }));
            } else {
                eprintln!("switchover refused: {message}");
            }
            return Ok(ExitCode::FAILURE);
        }
        other => bail!("unexpected reply to switchover: {other:?}"),
    };
    if !json {
        println!("{}: {message}", old_status.node_id);
    }
    let deadline = started + wait;
    loop {
        let now = pair::poll(&[agents[old].clone(), agents[new].clone()], timeout);
        let modes: Vec<Option<Mode>> = now
            .iter()
            .map(|r| r.status.as_ref().map(|s| s.mode))
            .collect();
        let flipped = modes == [Some(Mode::Backup), Some(Mode::Master)];
        // Done once the new master has restored what the old one served (a restore
        // counted, nothing pending): a second switchover started earlier would
        // hand over sessions still being restored. Past the deadline a completed
        // handover still succeeds, saying the restore was not confirmed.
        let restored = now[1].status.as_ref().is_some_and(|s| {
            s.replication.restore_pending == 0
                && (expected_sessions == 0 || s.replication.restored > restored_before)
        });
        if flipped && (restored || Instant::now() >= deadline) {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let new_status = now[1].status.clone().expect("reachable");
            if json {
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "from": old_status.node_id,
                        "to": new_status.node_id,
                        "epoch": new_status.epoch,
                        "elapsed_ms": elapsed_ms,
                        "restored": restored,
                        "agents": now,
                    })
                );
            } else {
                println!(
                    "switched over: {} is master at epoch {} ({elapsed_ms} ms){}",
                    new_status.node_id,
                    new_status.epoch,
                    if restored {
                        ""
                    } else {
                        "; its session restore is not finished yet"
                    }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            if json {
                println!(
                    "{}",
                    json!({ "ok": false, "error": "timed out waiting for the new master", "agents": now })
                );
            } else {
                eprintln!("switchover did not complete within {wait:?}: modes {modes:?}");
            }
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
