//! Which sessions a crash could not continue exactly (issue: no silent hole, cold
//! mode). The replica knows every byte that crossed the wire; it cannot know output
//! the service wrote that its kernel has not sent, nor input its kernel acknowledged
//! that the service has not read. After a crash such a session would go on with a
//! hole — so the master watches its service's sockets and marks a session `at_risk`
//! (replicated) while it holds either, and the new master resets those cleanly
//! instead of continuing them.
//!
//! A socket holds some of both for a moment all the time (a write not sent yet, a
//! segment not read yet); a session is marked only after [`RiskMonitor`] saw it owe
//! for `polls` polls in a row, and unmarked at the first poll that sees it clean. The
//! residual window — a session that starts owing less than `polls` intervals before
//! the crash — is the price of not resetting healthy sessions; its size is the poll
//! interval times `polls` (`session.risk_poll_ms`, docs/OPERATIONS.md).
//!
//! Sans-IO: observations of the sockets in, changes of the flag out. The driver
//! ([`watch`]) reads the service's sockets through sock_diag on the master.

use crate::session::handover;
use crate::session::interceptor::{InterceptorHandle, QueueCommand};
use nonstop_shared::session::SessionKey;
use nonstop_shared::Mode;
use std::collections::HashMap;
use std::time::Duration;

/// One service socket, as the kernel's table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Its session.
    pub key: SessionKey,
    /// Bytes in its send queue (sent and unacknowledged, plus not sent).
    pub send_queue: u32,
    /// Of those, bytes its kernel has not sent yet (`tcpi_notsent_bytes`), when the
    /// kernel reports it.
    pub not_sent: Option<u32>,
    /// Bytes in its receive queue (not read by the service).
    pub recv_queue: u32,
}

/// What the replica knows of a session, for [`RiskMonitor::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// Bytes sent and not acknowledged (the replica holds them).
    pub in_flight: u32,
    /// The peer's receive window, bytes.
    pub peer_window: u32,
    /// The peer's MSS (a window with less room than that is full).
    pub mss: u32,
    /// Whether the session is marked now.
    pub marked: bool,
}

/// Counts how long each session has owed output or input.
#[derive(Debug, Default)]
pub struct RiskMonitor {
    streaks: HashMap<SessionKey, u32>,
    polls: u32,
}

impl RiskMonitor {
    /// A monitor that marks a session after `polls` owing polls in a row (at least 1).
    pub fn new(polls: u32) -> RiskMonitor {
        RiskMonitor {
            streaks: HashMap::new(),
            polls: polls.max(1),
        }
    }

    /// One poll. `tracked` gives a session's bytes in flight (sent, not acknowledged:
    /// the replica has them), the peer's window in bytes and its current flag;
    /// sessions it does not know are ignored. Returns the sessions whose flag must
    /// change.
    ///
    /// Output owed means output the kernel holds back *because the peer's window is
    /// full* (a slow reader: it stays unsent however long one waits); bytes held for a
    /// moment by Nagle's algorithm or the congestion window while the peer has room
    /// leave within a round trip and do not count. Input owed is unread input.
    pub fn observe(
        &mut self,
        sockets: &[Observation],
        tracked: impl Fn(&SessionKey) -> Option<Tracked>,
    ) -> Vec<(SessionKey, bool)> {
        let mut streaks = HashMap::with_capacity(self.streaks.len());
        let mut changes = Vec::new();
        for o in sockets {
            let Some(t) = tracked(&o.key) else {
                continue;
            };
            let unsent = o
                .not_sent
                .unwrap_or_else(|| o.send_queue.saturating_sub(t.in_flight));
            let window_full = t.in_flight.saturating_add(t.mss) >= t.peer_window;
            let owes = (unsent > 0 && window_full) || o.recv_queue > 0;
            let marked = t.marked;
            let streak = if owes {
                self.streaks.get(&o.key).copied().unwrap_or(0) + 1
            } else {
                0
            };
            if streak > 0 {
                streaks.insert(o.key, streak);
            }
            let at_risk = streak >= self.polls;
            if at_risk != marked {
                changes.push((o.key, at_risk));
            }
        }
        self.streaks = streaks;
        changes
    }
}

/// With [`RISK_BUDGET_FROM`] sessions or more, the risk watch's looks take at most
/// 1/`RISK_CPU_SHARE` of a core (1 %): a look that took `d` is followed by one after
/// at least `RISK_CPU_SHARE × d`.
pub const RISK_CPU_SHARE: u32 = 100;

/// Sessions from which the risk watch keeps to its CPU budget (below, a look is cheap
/// and the interval is `session.risk_poll_ms` as configured).
pub const RISK_BUDGET_FROM: usize = 1000;

/// On the master, every `interval` (longer when a look is slow, see
/// [`RISK_CPU_SHARE`]): the service's sockets, read from the kernel's table, sent to
/// the interceptor (which holds the sessions and the monitor).
pub async fn watch(
    interceptor: InterceptorHandle,
    mut mode: tokio::sync::watch::Receiver<(Mode, u64)>,
    vip: std::net::Ipv4Addr,
    ports: Vec<u16>,
    interval: Duration,
) {
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        wait = interval;
        if mode.borrow_and_update().0 != Mode::Master
            || interceptor
                .stats
                .sessions
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        {
            continue;
        }
        let ports = ports.clone();
        let started = std::time::Instant::now();
        let read =
            tokio::task::spawn_blocking(move || handover::service_connections(vip, &ports)).await;
        let took = started.elapsed();
        let conns = match read {
            Ok(Ok(conns)) => conns,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the service's sockets");
                continue;
            }
            Err(_) => continue,
        };
        // A look walks the kernel's whole TCP table and reports every session: with
        // thousands of them it costs milliseconds. Then looks take at most
        // 1/RISK_CPU_SHARE of a core: the next one waits longer when this one was slow.
        if conns.len() >= RISK_BUDGET_FROM {
            wait = interval.max(took * RISK_CPU_SHARE);
        }
        interceptor.stats.risk_poll_ms.store(
            wait.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let sockets: Vec<Observation> = conns
            .into_iter()
            .filter(|c| c.open)
            .map(|c| Observation {
                key: c.key,
                send_queue: c.send_queue,
                not_sent: c.not_sent,
                recv_queue: c.recv_queue,
            })
            .collect();
        interceptor.send(QueueCommand::Observe(sockets));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(port: u16) -> SessionKey {
        SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 0, 10),
            peer_port: port,
            local_ip: Ipv4Addr::new(198, 18, 0, 100),
            local_port: 7000,
        }
    }

    fn obs(port: u16, send_queue: u32, recv_queue: u32) -> Observation {
        Observation {
            key: key(port),
            send_queue,
            not_sent: None,
            recv_queue,
        }
    }

    /// 100 bytes in flight, a full window (100 bytes), MSS 1000.
    fn full(marked: bool) -> Option<Tracked> {
        Some(Tracked {
            in_flight: 100,
            peer_window: 100,
            mss: 1000,
            marked,
        })
    }

    #[test]
    fn a_session_is_marked_after_owing_for_the_polls_and_unmarked_at_once() {
        let mut m = RiskMonitor::new(2);
        let mut marked = false;
        let tracked = |marked: bool| move |_: &SessionKey| full(marked);
        // Output sent and in flight only: the replica has it.
        assert_eq!(m.observe(&[obs(1, 100, 0)], tracked(marked)), vec![]);
        // Unsent output: once is a moment, twice is a risk.
        assert_eq!(m.observe(&[obs(1, 150, 0)], tracked(marked)), vec![]);
        assert_eq!(
            m.observe(&[obs(1, 150, 0)], tracked(marked)),
            vec![(key(1), true)]
        );
        marked = true;
        assert_eq!(m.observe(&[obs(1, 150, 0)], tracked(marked)), vec![]);
        // Clean again: unmarked at the first clean poll.
        assert_eq!(
            m.observe(&[obs(1, 100, 0)], tracked(marked)),
            vec![(key(1), false)]
        );
    }

    #[test]
    fn unread_input_is_a_risk_and_a_gap_in_the_streak_restarts_it() {
        let mut m = RiskMonitor::new(3);
        let t = |_: &SessionKey| full(false);
        assert_eq!(m.observe(&[obs(2, 0, 5)], t), vec![]);
        assert_eq!(m.observe(&[obs(2, 0, 5)], t), vec![]);
        assert_eq!(m.observe(&[obs(2, 0, 0)], t), vec![]);
        assert_eq!(m.observe(&[obs(2, 0, 5)], t), vec![]);
        assert_eq!(m.observe(&[obs(2, 0, 5)], t), vec![]);
        assert_eq!(m.observe(&[obs(2, 0, 5)], t), vec![(key(2), true)]);
    }

    #[test]
    fn output_held_while_the_peer_has_room_is_a_moment_not_a_risk() {
        // Nagle or the congestion window: the peer's window is wide open.
        let mut m = RiskMonitor::new(1);
        let open = |_: &SessionKey| {
            Some(Tracked {
                in_flight: 15,
                peer_window: 64_000,
                mss: 1448,
                marked: false,
            })
        };
        let nagle = Observation {
            not_sent: Some(30),
            ..obs(4, 45, 0)
        };
        assert_eq!(m.observe(&[nagle], open), vec![]);
        // The same bytes behind a full window: a slow reader.
        let full_window = |_: &SessionKey| {
            Some(Tracked {
                in_flight: 63_000,
                peer_window: 64_000,
                mss: 1448,
                marked: false,
            })
        };
        assert_eq!(m.observe(&[nagle], full_window), vec![(key(4), true)]);
    }

    #[test]
    fn sockets_of_untracked_sessions_are_ignored() {
        let mut m = RiskMonitor::new(1);
        assert_eq!(m.observe(&[obs(3, 10, 10)], |_| None), vec![]);
    }
}
