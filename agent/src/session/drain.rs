//! A planned switchover's drain (design §3): peers are frozen with a zero window,
//! then the old master waits — bounded — until its service has read every byte the
//! peers sent and the backup has acknowledged every record. Then the output the
//! service wrote but its kernel has not sent (a slow-reading peer's) is handed over
//! ([`crate::session::handover`]) and replicated, and the drain waits for the backup
//! to acknowledge that too. Nothing is lost even for a service that reads slowly or a
//! peer that reads slowly: the new master's restore starts from exactly the state
//! the peers and the old service agreed on, plus the old service's unsent output
//! (sent by the new master before anything its own service writes). A session whose
//! output cannot be handed over is reset cleanly and counted, never continued with a
//! hole.

use crate::session::handover::{self, Taken};
use crate::session::interceptor::{InterceptorHandle, QueueCommand};
use nonstop_shared::session::{Phase, SessionKey, SessionState};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the drain conditions are checked.
const POLL: Duration = Duration::from_millis(5);

/// Looks for the processes holding the service's sockets (20 ms apart).
const OWNER_TRIES: usize = 25;

/// How long the drain lets the service read its input before handing over what is
/// left (a service blocked writing to a slow peer never reads it).
const SETTLE: Duration = Duration::from_millis(200);

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
    /// Sessions whose socket queues were handed over, with the bytes of output the
    /// kernel had not sent and of input the service had not read.
    pub handed_over: (usize, u64, u64),
    /// Sessions reset because their unsent output could not be handed over.
    pub reset_sessions: usize,
    /// How long it took.
    pub elapsed: Duration,
}

impl DrainReport {
    /// Whether everything was drained (a lossless handover). Output the peers have
    /// not acknowledged is in the replica (the new master sends it), so it does not
    /// make a drain incomplete.
    pub fn complete(&self) -> bool {
        self.unread_bytes == 0 && self.replication_behind == 0
    }

    /// One line for the operator.
    pub fn describe(&self) -> String {
        let handed = match self.handed_over {
            (0, _, _) => String::new(),
            (n, output, input) => {
                format!(
                    "; {n} sessions handed over with {output} unacknowledged and {input} \
                     unread bytes"
                )
            }
        };
        let reset = match self.reset_sessions {
            0 => String::new(),
            n => format!("; {n} sessions reset (their socket queues could not be read)"),
        };
        if self.complete() {
            format!(
                "drained {} sessions in {} ms{handed}{reset}",
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
    // A moment for the service to read its input and the backup to catch up: what is
    // left is handed over.
    wait(interceptor, vip, ports, began, limit.min(SETTLE), true).await;
    let outcome = hand_over(interceptor, ports).await;
    if !outcome.failed.is_empty() {
        interceptor.send(QueueCommand::ResetUnsent(outcome.failed.clone()));
    }
    // The service is stopped: its unread input is handed over, not read.
    let mut report = wait(interceptor, vip, ports, began, limit, false).await;
    report.handed_over = outcome.handed_over;
    report.reset_sessions = outcome.failed.len();
    report.unread_bytes = outcome.unread_left;
    tracing::info!(
        sessions = report.sessions,
        unread_bytes = report.unread_bytes,
        unacked_sessions = report.unacked_sessions,
        replication_behind = report.replication_behind,
        handed_over_sessions = report.handed_over.0,
        handed_over_output = report.handed_over.1,
        handed_over_input = report.handed_over.2,
        reset_sessions = report.reset_sessions,
        elapsed_ms = report.elapsed.as_millis() as u64,
        complete = report.complete(),
        "switchover drain finished"
    );
    report
}

/// Polls until the backup acknowledged every record and (if `read`) the service has
/// read everything, or `limit` since `began`.
async fn wait(
    interceptor: &InterceptorHandle,
    vip: std::net::Ipv4Addr,
    ports: &[u16],
    began: Instant,
    limit: Duration,
    read: bool,
) -> DrainReport {
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
            handed_over: (0, 0, 0),
            reset_sessions: 0,
            elapsed: began.elapsed(),
        };
        let done = report.replication_behind == 0 && (!read || report.unread_bytes == 0);
        if done || began.elapsed() >= limit {
            return report;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the hand-over of the sockets' queues did.
#[derive(Debug, Default)]
struct HandOverOutcome {
    /// Sessions, bytes of output and bytes of input handed over.
    handed_over: (usize, u64, u64),
    /// Sessions whose queues could not be handed over (to reset).
    failed: Vec<SessionKey>,
    /// Unread input of sockets that were not handed over.
    unread_left: u64,
}

/// What the blocking read of the sockets found.
#[derive(Debug, Default)]
struct Read {
    taken: Vec<Taken>,
    failed: Vec<SessionKey>,
    stopped: Vec<i32>,
    unread_left: u64,
}

/// Stops the service's processes, reads the queues of its sockets and hands them to
/// the interceptor (see [`crate::session::handover`]).
async fn hand_over(interceptor: &InterceptorHandle, ports: &[u16]) -> HandOverOutcome {
    let tracked: HashMap<SessionKey, SessionState> = interceptor
        .sessions()
        .await
        .into_iter()
        .filter(|s| matches!(s.phase, Phase::Established | Phase::PeerClosed))
        .map(|s| (s.key, s))
        .collect();
    let Some(vip) = tracked.keys().next().map(|k| k.local_ip) else {
        return HandOverOutcome::default();
    };
    let ports = ports.to_vec();
    interceptor.send(QueueCommand::Seal);
    let read = match tokio::task::spawn_blocking(move || read_queues(&tracked, vip, &ports)).await {
        Ok(read) => read,
        Err(e) => {
            tracing::error!(error = %e, "reading the service's socket queues failed");
            return HandOverOutcome::default();
        }
    };
    let output: u64 = read
        .taken
        .iter()
        .filter_map(|t| t.output.as_ref())
        .map(|(_, b)| b.len() as u64)
        .sum();
    let input: u64 = read
        .taken
        .iter()
        .filter_map(|t| t.input.as_ref())
        .map(|(_, b)| b.len() as u64)
        .sum();
    let count = read.taken.len();
    let (tx, rx) = tokio::sync::oneshot::channel();
    interceptor.send(QueueCommand::HandOver {
        chunks: read.taken,
        stopped: read.stopped,
        reply: tx,
    });
    let refused = rx.await.unwrap_or_default();
    let mut failed = read.failed;
    let handed = count.saturating_sub(refused.len());
    failed.extend(refused);
    HandOverOutcome {
        handed_over: (handed, output, input),
        failed,
        unread_left: read.unread_left,
    }
}

/// The blocking part: stop the owners of the service's sockets, then read each
/// socket that holds output its kernel has not sent or input its service has not
/// read.
fn read_queues(
    tracked: &HashMap<SessionKey, SessionState>,
    vip: std::net::Ipv4Addr,
    ports: &[u16],
) -> Read {
    let table = |what: &str| {
        handover::service_connections(vip, ports).unwrap_or_else(|e| {
            tracing::warn!(error = %e, what, "cannot read the service's sockets");
            Vec::new()
        })
    };
    // A restored connection may still wait in the service's accept queue (held by no
    // process yet): look again for a moment before giving up on it.
    let mut owners = HashMap::new();
    for attempt in 0..OWNER_TRIES {
        let conns = table("sockets");
        let inodes: HashSet<u64> = conns
            .iter()
            .filter(|c| tracked.contains_key(&c.key))
            .map(|c| c.inode)
            .collect();
        owners = handover::owners(&inodes);
        if owners.len() == inodes.len() || attempt + 1 == OWNER_TRIES {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut read = Read {
        stopped: owners.values().map(|(pid, _)| *pid).collect(),
        ..Read::default()
    };
    read.stopped.sort_unstable();
    read.stopped.dedup();
    handover::signal_all(&read.stopped, libc::SIGSTOP);
    tracing::info!(pids = ?read.stopped, "service processes stopped to read their sockets' queues");
    // Now nothing more is written or read: the queues are final.
    for conn in table("queues") {
        if !tracked.contains_key(&conn.key) {
            continue;
        }
        if conn.send_queue == 0 && conn.recv_queue == 0 {
            continue; // nothing to hand over
        }
        let peeked = match owners.get(&conn.inode) {
            Some(&(pid, fd)) if conn.open => handover::peek_queues(pid, fd)
                .map_err(|e| format!("reading the queues of pid {pid} fd {fd}: {e}")),
            Some(_) => Err("the socket is closing".to_owned()),
            None => Err("no process of this host holds the socket".to_owned()),
        };
        // The live tracker takes what it does not hold yet (its view is newer than
        // any snapshot of ours: the peer keeps acknowledging).
        let taken = peeked.map(|(send, recv)| Taken {
            key: conn.key,
            output: Some((send.start(), send.bytes)),
            input: Some((recv.rcv_nxt, recv.bytes)),
        });
        match taken {
            Ok(taken) => read.taken.push(taken),
            Err(e) => {
                tracing::warn!(session = %conn.key, error = %e, "socket queues cannot be handed over");
                read.unread_left += u64::from(conn.recv_queue);
                read.failed.push(conn.key);
            }
        }
    }
    read
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
            handed_over: (0, 0, 0),
            reset_sessions: 0,
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
