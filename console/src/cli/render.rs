//! Plain-text rendering for people.

use crate::pair::AgentReport;
use std::fmt::Write;

/// The status table, one row per agent, plus each node's last transition.
pub fn status_table(reports: &[AgentReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>5} {:>4}  {:<20} {:>9} {:>6}  {:<16} {:>9}",
        "NODE", "MODE", "EPOCH", "PRIO", "VIP", "HB RTT", "MISSED", "PEER", "UPTIME"
    );
    for report in reports {
        match &report.status {
            Some(s) => {
                let vip = if s.vip_held {
                    format!("{} (held)", s.vip)
                } else {
                    "-".into()
                };
                let rtt = s
                    .peer
                    .rtt_us
                    .map_or("-".into(), |us| format!("{:.2}ms", us as f64 / 1000.0));
                let peer = match (&s.peer.node_id, s.peer.mode) {
                    (Some(id), Some(mode)) => format!("{id}/{mode}"),
                    _ => "never heard".into(),
                };
                let _ = writeln!(
                    out,
                    "{:<10} {:<8} {:>5} {:>4}  {:<20} {:>9} {:>6}  {:<16} {:>8.1}s",
                    s.node_id,
                    s.mode.as_str(),
                    s.epoch,
                    s.priority,
                    vip,
                    rtt,
                    s.missed_heartbeats,
                    peer,
                    s.uptime_ms as f64 / 1000.0
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<10} {:<8} {}",
                    "?",
                    "DOWN",
                    report.error.as_deref().unwrap_or("unreachable")
                );
            }
        }
    }
    for report in reports {
        if let Some(s) = &report.status {
            let r = &s.replication;
            let _ = writeln!(
                out,
                "{}: replication {} {} position {} acked {} lag {} records / {} ms; {} sessions; {} packets held; agent cpu {:.1}% rss {} KiB",
                s.node_id,
                r.mode,
                if r.connected { "connected" } else { "disconnected" },
                r.position,
                r.acked,
                r.lag_records,
                r.lag_ms,
                r.sessions,
                r.held_packets,
                s.resources.agent_cpu_percent,
                s.resources.agent_rss_kib
            );
            if let Some(line) = recovery_line(r) {
                let _ = writeln!(out, "{}: {line}", s.node_id);
            }
            if r.segments_out_of_window > 0 {
                let _ = writeln!(
                    out,
                    "{}: {} peer segments refused outside the window (RFC 5961; no session changed)",
                    s.node_id, r.segments_out_of_window
                );
            }
        }
    }
    for report in reports {
        if let Some(t) = report
            .status
            .as_ref()
            .and_then(|s| s.last_transition.as_ref().map(|t| (s, t)))
        {
            let (s, t) = t;
            let _ = writeln!(
                out,
                "{}: {} -> {} at epoch {}: {}",
                s.node_id, t.from, t.to, t.epoch, t.cause
            );
        }
    }
    out
}

/// The recovery figures, once there are any: sessions restored, pending, failed and
/// reset, the last restore's timings, service crashes recovered.
pub fn recovery_line(r: &nonstop_shared::control::ReplicationView) -> Option<String> {
    if r.restored + r.restore_pending + r.restore_failed + r.sessions_reset + r.app_crashes == 0 {
        return None;
    }
    Some(format!(
        "recovery: {} sessions restored ({} pending, {} failed, {} reset); last restore {} ms, \
         per session p50 {} µs p99 {} µs, {} ms after the promotion; {} service crashes",
        r.restored,
        r.restore_pending,
        r.restore_failed,
        r.sessions_reset,
        r.restore_ms,
        r.restore_session_p50_us,
        r.restore_session_p99_us,
        r.restore_since_promotion_ms,
        r.app_crashes
    ))
}

#[cfg(test)]
mod recovery_line_tests {
    use super::recovery_line;
    use nonstop_shared::control::ReplicationView;

    #[test]
    fn shown_only_once_something_was_restored() {
        let mut r = ReplicationView::default();
        assert_eq!(recovery_line(&r), None);
        r.restored = 256;
        r.restore_ms = 40;
        r.restore_session_p50_us = 5100;
        r.restore_session_p99_us = 7000;
        r.restore_since_promotion_ms = 92;
        assert_eq!(
            recovery_line(&r).as_deref(),
            Some(
                "recovery: 256 sessions restored (0 pending, 0 failed, 0 reset); last restore 40 ms, \
                 per session p50 5100 µs p99 7000 µs, 92 ms after the promotion; 0 service crashes"
            )
        );
    }
}
