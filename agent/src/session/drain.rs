//! A planned switchover's drain (design §3): peers are frozen with a zero window,
//! then the old master waits — bounded — until its service has read every byte the
//! peers sent, the peers have acknowledged every byte it wrote, and the backup has
//! acknowledged every record. Only then does it hand over, so nothing is lost even
//! for a service that reads slowly: the new master's restore starts from exactly
//! the state the peers and the old service agreed on.

use crate::session::interceptor::{InterceptorHandle, QueueCommand};
use nonstop_shared::session::Phase;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the drain conditions are checked.
const POLL: Duration = Duration::from_millis(5);

/// `unread_bytes` when the service's receive queues could not be read.
pub const UNKNOWN: u64 = u64::MAX;

/// What a drain achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Established sessions frozen.
    pub sessions: usize,
    /// Bytes the service had not read yet when the drain ended ([`UNKNOWN`] when its
    /// sockets could not be read).
    pub unread_bytes: u64,
    /// Sessions with output the peer had not acknowledged when the drain ended.
    pub unacked_sessions: usize,
    /// Records the backup had not acknowledged when the drain ended.
    pub replication_behind: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl DrainReport {
    /// Whether everything was drained (a lossless handover).
    pub fn complete(&self) -> bool {
        self.unread_bytes == 0 && self.unacked_sessions == 0 && self.replication_behind == 0
    }

    /// One line for the operator.
    pub fn describe(&self) -> String {
        if self.complete() {
            format!(
                "drained {} sessions in {} ms",
                self.sessions,
                self.elapsed.as_millis()
            )
        } else {
            format!(
                "drain incomplete after {} ms ({} sessions: {} bytes unread by the service, \
                 {} sessions with unacknowledged output, backup {} records behind)",
                self.elapsed.as_millis(),
                self.sessions,
                if self.unread_bytes == UNKNOWN {
                    "unknown (socket diagnostics failed)".to_owned()
                } else {
                    self.unread_bytes.to_string()
                },
                self.unacked_sessions,
                self.replication_behind
            )
        }
    }
}

/// Freezes the peers and waits at most `limit` for the drain; the peers stay frozen
/// (the new master reopens their windows; call [`thaw`] if the switchover does not
/// happen).
pub async fn drain(
    interceptor: &InterceptorHandle,
    vip: std::net::Ipv4Addr,
    ports: &[u16],
    limit: Duration,
) -> DrainReport {
    let began = Instant::now();
    interceptor.send(QueueCommand::Freeze(true));
    loop {
        let sessions = interceptor.sessions().await;
        let established: Vec<_> = sessions
            .iter()
            .filter(|s| matches!(s.phase, Phase::Established | Phase::PeerClosed))
            .collect();
        let unacked_sessions = established
            .iter()
            .filter(|s| s.snd_una != s.snd_nxt)
            .count();
        let owned = ports.to_vec();
        let unread_bytes = match crate::sockets::query(move |d| d.unread_input(vip, &owned)).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not knowing is not "nothing unread": wait on until the limit.
                tracing::warn!(error = %e, "cannot read the service's receive queues");
                UNKNOWN
            }
        };
        let stats = &interceptor.stats;
        let replication_behind = stats
            .last_seq
            .load(Ordering::Relaxed)
            .saturating_sub(stats.acked_seq.load(Ordering::Relaxed));
        let report = DrainReport {
            sessions: established.len(),
            unread_bytes,
            unacked_sessions,
            replication_behind,
            elapsed: began.elapsed(),
        };
        if report.complete() || began.elapsed() >= limit {
            tracing::info!(
                sessions = report.sessions,
                unread_bytes,
                unacked_sessions,
                replication_behind,
                elapsed_ms = report.elapsed.as_millis() as u64,
                complete = report.complete(),
                "switchover drain finished"
            );
            return report;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reopens the peers' windows (the switchover did not happen).
pub fn thaw(interceptor: &InterceptorHandle) {
    interceptor.send(QueueCommand::Freeze(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_complete_only_when_nothing_is_left() {
        let mut r = DrainReport {
            sessions: 3,
            unread_bytes: 0,
            unacked_sessions: 0,
            replication_behind: 0,
            elapsed: Duration::from_millis(12),
        };
        assert!(r.complete());
        assert_eq!(r.describe(), "drained 3 sessions in 12 ms");
        r.unread_bytes = 5;
        assert!(!r.complete());
        assert!(r.describe().contains("5 bytes unread"), "{}", r.describe());
        r.unread_bytes = UNKNOWN;
        assert!(r.describe().contains("unknown (socket"), "{}", r.describe());
    }
}
