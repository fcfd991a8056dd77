//! What the control API shows of the session manager: the session list and the
//! replication figures, taken from the live tracker on a master and from the
//! replicated table on a backup.

use crate::replication::stats::ReplicationStats;
use crate::session::interceptor::InterceptorHandle;
use crate::session::replica::Replica;
use nonstop_shared::config::ReplicationMode;
use nonstop_shared::control::{ReplicationView, SessionInfo, SessionList};
use nonstop_shared::Mode;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Read-only access to the session manager's state.
#[derive(Clone)]
pub struct SessionView {
    /// This node's id.
    pub node_id: String,
    /// Configured replication mode.
    pub replication: ReplicationMode,
    /// The interceptor (live tracker).
    pub interceptor: InterceptorHandle,
    /// The persisted copy.
    pub replica: Arc<Mutex<Replica>>,
    /// Replication counters.
    pub stats: Arc<ReplicationStats>,
    /// Mode and epoch.
    pub mode: watch::Receiver<(Mode, u64)>,
    /// The service's ports.
    pub ports: Vec<u16>,
    /// The VIP (whose sockets the drain watches).
    pub vip: std::net::Ipv4Addr,
    /// Longest a switchover's drain may take.
    pub drain_limit: std::time::Duration,
    /// `service.replica` (design §9).
    pub replica_mode: nonstop_shared::config::ReplicaMode,
}

impl SessionView {
    /// Before a planned switchover: freezes the peers and drains (see
    /// [`crate::session::drain`]); `None` unless this node is master.
    pub async fn drain_for_switchover(&self) -> Option<crate::session::drain::DrainReport> {
        if self.mode.borrow().0 != Mode::Master {
            return None;
        }
        Some(
            crate::session::drain::drain(
                &self.interceptor,
                self.vip,
                &self.ports,
                self.drain_limit,
            )
            .await,
        )
    }

    /// The switchover did not happen: reopen the peers' windows.
    pub fn thaw(&self) {
        crate::session::drain::thaw(&self.interceptor);
    }

    /// The sessions as this node knows them.
    pub async fn list(&self) -> SessionList {
        let mode = self.mode.borrow().0;
        let replicated: Vec<_> = self
            .replica
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sessions();
        let (source, mut sessions) = if mode == Mode::Master {
            let seqs: HashMap<_, _> = replicated.iter().map(|(s, seq)| (s.key, *seq)).collect();
            let live = self.interceptor.sessions().await;
            let list = live
                .iter()
                .map(|s| SessionInfo::from_state(s, seqs.get(&s.key).copied().unwrap_or(0)))
                .collect::<Vec<_>>();
            ("tracker", list)
        } else {
            let hot = self.replica_mode == nonstop_shared::config::ReplicaMode::Hot;
            let states = if hot {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.interceptor
                    .send(crate::session::interceptor::QueueCommand::ReplicaStates(tx));
                rx.await.unwrap_or_default()
            } else {
                HashMap::new()
            };
            let list = replicated
                .iter()
                .map(|(s, seq)| {
                    let mut info = SessionInfo::from_state(s, *seq);
                    if hot {
                        // No mirror: opened before this backup joined (or cold).
                        info.replica =
                            Some(states.get(&s.key).cloned().unwrap_or_else(|| "cold".into()));
                    }
                    info
                })
                .collect::<Vec<_>>();
            ("replica", list)
        };
        sessions.sort_by(|a, b| (&a.peer, &a.local).cmp(&(&b.peer, &b.local)));
        SessionList {
            node_id: self.node_id.clone(),
            mode,
            source: source.into(),
            sessions,
        }
    }

    /// Replication and interception figures for `status`.
    pub fn replication_view(&self) -> ReplicationView {
        let i = &self.interceptor.stats;
        let persist = self
            .replica
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .persist_stats();
        let master = self.mode.borrow().0 == Mode::Master;
        let sessions = if master {
            i.sessions.load(Ordering::Relaxed)
        } else {
            self.replica
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64
        };
        ReplicationView {
            mode: self.replication.to_string(),
            connected: self.stats.connected.load(Ordering::Relaxed),
            position: if master {
                i.last_seq.load(Ordering::Relaxed)
            } else {
                self.stats.acked_seq.load(Ordering::Relaxed)
            },
            acked: self.stats.acked_seq.load(Ordering::Relaxed),
            lag_records: if master {
                i.last_seq
                    .load(Ordering::Relaxed)
                    .saturating_sub(self.stats.acked_seq.load(Ordering::Relaxed))
            } else {
                0
            },
            lag_ms: if master { self.stats.lag_ms() } else { 0 },
            sessions,
            held_packets: i.held.load(Ordering::Relaxed),
            packets: (
                i.packets_in.load(Ordering::Relaxed),
                i.packets_out.load(Ordering::Relaxed),
            ),
            snapshots: self.stats.snapshots.load(Ordering::Relaxed),
            errors: self.stats.apply_errors.load(Ordering::Relaxed)
                + self.stats.store_errors.load(Ordering::Relaxed)
                + persist.errors.load(Ordering::Relaxed),
            restored: i.restored.load(Ordering::Relaxed),
            restore_pending: i.restore_pending.load(Ordering::Relaxed),
            restore_failed: i.restore_failed.load(Ordering::Relaxed),
            restore_ms: i.restore_last_us.load(Ordering::Relaxed) / 1000,
            sessions_reset: i.sessions_reset.load(Ordering::Relaxed),
            restore_session_p50_us: i.restore_session_p50_us.load(Ordering::Relaxed),
            restore_session_p99_us: i.restore_session_p99_us.load(Ordering::Relaxed),
            restore_since_promotion_ms: i.restore_since_promotion_ms.load(Ordering::Relaxed),
            app_crashes: i.app_deaths.load(Ordering::Relaxed),
            segments_out_of_window: i.segments_out_of_window.load(Ordering::Relaxed),
            handed_over_sessions: i.handed_over.load(Ordering::Relaxed),
            handed_over_bytes: i.handed_over_bytes.load(Ordering::Relaxed),
            sessions_at_risk: i.sessions_at_risk.load(Ordering::Relaxed),
            reset_at_risk: i.reset_at_risk.load(Ordering::Relaxed),
            resyncs: self.stats.resyncs.load(Ordering::Relaxed),
            replica: self.replica_mode.as_str().to_owned(),
            mirrors: i.mirrors.load(Ordering::Relaxed),
            mirrors_diverged: i.mirrors_diverged.load(Ordering::Relaxed),
            mirrors_cold: i.mirrors_cold.load(Ordering::Relaxed),
            mirrors_adopted: i.mirrors_adopted.load(Ordering::Relaxed),
            mirrors_fallback: i.mirrors_fallback.load(Ordering::Relaxed),
            dropped_malformed: i.malformed.load(Ordering::Relaxed)
                + i.unparsable.load(Ordering::Relaxed),
            dropped_truncated: i.truncated.load(Ordering::Relaxed),
            held_bytes: i.held_bytes.load(Ordering::Relaxed),
            bound_drops: nonstop_shared::control::BoundDrops {
                held: i.overflow_drops.load(Ordering::Relaxed),
                unacked: i.unacked_bound_drops.load(Ordering::Relaxed),
                backlog: i.backlog_drops.load(Ordering::Relaxed),
            },
            record_backlog_bytes: i.record_backlog.load(Ordering::Relaxed),
            persist_waits: persist.waits.load(Ordering::Relaxed),
            risk_poll_ms: i.risk_poll_ms.load(Ordering::Relaxed),
            sync_hops_us: i.hops.p50_us(),
        }
    }
}
