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

/// What a drain achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Established sessions frozen.
    pub sessions: usize,
    /// Bytes the service had not read yet when the drain ended.
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
                self.unread_bytes,
                self.unacked_sessions,
                self.replication_behind
            )
        }
    }
}

/// Freezes the peers and waits at most `limit` for the drain; the peers stay frozen
/// (the new master reopens their windows; call [`thaw`] if the switchover does not
/// happen).
pub async fn drain(interceptor: &InterceptorHandle, ports: &[u16], limit: Duration) -> DrainReport {
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
        let unread_bytes = match tokio::fs::read_to_string("/proc/net/tcp").await {
            Ok(table) => unread_input(&table, ports),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/net/tcp");
                0
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

/// Bytes waiting in the receive queues of established (or close-wait) sockets on
/// `ports`, from the text of `/proc/net/tcp` (`rx_queue`, hex).
pub fn unread_input(table: &str, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let queues = fields.next()?;
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let established_or_close_wait = state == "01" || state == "08";
            if !established_or_close_wait || !ports.contains(&port) {
                return None;
            }
            u64::from_str_radix(queues.split_once(':')?.1, 16).ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 641212C6:1B58 0A1212C6:A2D4 01 00000000:00000010 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 641212C6:1B58 0A1212C6:A2D6 08 00000005:00000100 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 641212C6:1B59 0A1212C6:A2D8 01 00000000:00001000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
   4: 641212C6:1B58 0A1212C6:A2DA 06 00000000:00000007 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
garbage line
";

    #[test]
    fn unread_input_sums_the_service_sockets_only() {
        // 0x10 (established) + 0x100 (close-wait) on port 7000; the listener, the
        // other port and the time-wait entry do not count; garbage is skipped.
        assert_eq!(unread_input(TABLE, &[7000]), 0x10 + 0x100);
        assert_eq!(unread_input(TABLE, &[7001]), 0x1000);
        assert_eq!(unread_input(TABLE, &[7000, 7001]), 0x1110);
        assert_eq!(unread_input("", &[7000]), 0);
    }

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
    }
}
