//! `events [--follow]`: the agents' event logs, merged in time order.

use crate::client::{AgentAddr, AgentConnection};
use nonstop_shared::control::{AgentEvent, EventKind, Reply, Request};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// Prints past events of every agent, then (with `follow`) new ones as they come.
pub fn run(
    agents: &[AgentAddr],
    timeout: Duration,
    json: bool,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let (tx, rx) = mpsc::channel::<Result<AgentEvent, String>>();
    for agent in agents {
        let tx = tx.clone();
        let agent = agent.clone();
        std::thread::spawn(move || {
            let result = (|| -> anyhow::Result<()> {
                let mut conn = AgentConnection::connect(&agent, timeout)?;
                conn.request_stream(&Request::Events)?;
                // History arrives at once; after a quiet moment it is complete.
                conn.set_read_timeout(Some(if follow {
                    Duration::from_secs(3600 * 24 * 365)
                } else {
                    Duration::from_millis(300)
                }))?;
                loop {
                    match conn.read_reply() {
                        Ok(Reply::Event(event)) => {
                            if tx.send(Ok(event)).is_err() {
                                return Ok(());
                            }
                        }
                        Ok(Reply::Error { message }) => {
                            let _ = tx.send(Err(format!("{agent}: {message}")));
                        }
                        Ok(_) => {}
                        Err(e) if !follow => {
                            let _ = e;
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
            })();
            if let Err(e) = result {
                let _ = tx.send(Err(format!("{agent}: {e:#}")));
            }
        });
    }
    drop(tx);
    let mut buffered = Vec::new();
    let mut failures = 0;
    for item in rx {
        match item {
            Ok(event) if follow => print_event(&event, json),
            Ok(event) => buffered.push(event),
            Err(e) => {
                failures += 1;
                eprintln!("{e}");
            }
        }
    }
    buffered.sort_by_key(|e| (e.at_unix_ms, e.seq));
    for event in &buffered {
        print_event(event, json);
    }
    Ok(if failures == agents.len() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_event(event: &AgentEvent, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).unwrap_or_default());
        return;
    }
    let what = match &event.kind {
        EventKind::ModeChanged(t) => {
            format!("{} -> {} (epoch {}): {}", t.from, t.to, t.epoch, t.cause)
        }
        EventKind::VipAdded { vip } => format!("VIP {vip} added"),
        EventKind::VipRemoved { vip } => format!("VIP {vip} removed"),
        EventKind::GarpSent { number } => format!("gratuitous ARP #{number} sent"),
        EventKind::FenceRan { ok, detail } => {
            format!("fence {}: {detail}", if *ok { "ok" } else { "FAILED" })
        }
        EventKind::App { detail } => format!("service: {detail}"),
        EventKind::Restored {
            sessions,
            failed,
            elapsed_ms,
            session_p50_us,
            session_p99_us,
            since_promotion_ms,
        } => format!(
            "{sessions} sessions restored in {elapsed_ms} ms ({failed} failed; per session \
             p50 {session_p50_us} µs, p99 {session_p99_us} µs; {since_promotion_ms} ms after \
             the promotion)"
        ),
        EventKind::Protection { detail, .. } => format!("protection: {detail}"),
        EventKind::SessionReset { peer, reason } => {
            format!("session {peer} reset: {reason}")
        }
        EventKind::Injected { fault } => format!("fault injected: {fault}"),
        EventKind::Mirror {
            peer,
            state,
            detail,
        } => format!("replica {state} {peer}: {detail}"),
        EventKind::Check { healthy, detail } => format!(
            "health check {}: {detail}",
            if *healthy { "passes" } else { "FAILS" }
        ),
        EventKind::Error { detail } => format!("error: {detail}"),
    };
    println!(
        "{} {:<8} #{:<4} {what}",
        rfc3339(event.at_unix_ms),
        event.node_id,
        event.seq
    );
}

/// A Unix time in milliseconds as RFC 3339 in UTC, to the millisecond
/// (`2026-11-26T16:13:22.084Z`); the raw number if it is out of range.
pub fn rfc3339(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_709_602_084), "2026-11-26T16:13:22.084Z");
        assert_eq!(rfc3339(u64::MAX), u64::MAX.to_string());
    }
}
