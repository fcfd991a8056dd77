//! The agent's event log: a bounded history plus a live broadcast.
//!
//! Drivers call [`EventLog::emit`]; control connections that ask for `events` get the
//! history first and then every new event. Each event is also logged with `tracing`.

use nonstop_shared::control::{AgentEvent, EventKind};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How many past events a new subscriber receives.
pub const HISTORY: usize = 256;

/// Shared event log of one agent.
#[derive(Debug)]
pub struct EventLog {
    node_id: String,
    inner: Mutex<History>,
    live: broadcast::Sender<AgentEvent>,
}

#[derive(Debug, Default)]
struct History {
    next_seq: u64,
    recent: VecDeque<AgentEvent>,
}

/// Milliseconds since the Unix epoch, for events and transitions.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    /// A new, empty log for `node_id`.
    pub fn new(node_id: &str) -> Arc<EventLog> {
        let (live, _) = broadcast::channel(1024);
        Arc::new(EventLog {
            node_id: node_id.to_owned(),
            inner: Mutex::new(History::default()),
            live,
        })
    }

    /// Records an event, logs it and sends it to every subscriber.
    pub fn emit(&self, kind: EventKind) -> AgentEvent {
        self.emit_at(kind, unix_ms())
    }

    /// Like [`EventLog::emit`] with an explicit wall-clock time.
    pub fn emit_at(&self, kind: EventKind, at_unix_ms: u64) -> AgentEvent {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.next_seq += 1;
        let event = AgentEvent {
            seq: inner.next_seq,
            node_id: self.node_id.clone(),
            at_unix_ms,
            kind,
        };
        if inner.recent.len() == HISTORY {
            inner.recent.pop_front();
        }
        inner.recent.push_back(event.clone());
        log_event(&event);
        // Sending while holding the lock keeps history and stream in one order.
        let _ = self.live.send(event.clone());
        event
    }

    /// The recent history and a receiver for everything after it.
    pub fn subscribe(&self) -> (Vec<AgentEvent>, broadcast::Receiver<AgentEvent>) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (
            inner.recent.iter().cloned().collect(),
            self.live.subscribe(),
        )
    }
}

fn log_event(event: &AgentEvent) {
    match &event.kind {
        EventKind::ModeChanged(t) => {
            tracing::info!(from = %t.from, to = %t.to, epoch = t.epoch, cause = %t.cause, "mode changed")
        }
        EventKind::VipAdded { vip } => tracing::info!(%vip, "VIP added"),
        EventKind::VipRemoved { vip } => tracing::info!(%vip, "VIP removed"),
        EventKind::GarpSent { number } => tracing::debug!(number, "gratuitous ARP sent"),
        EventKind::FenceRan { ok, detail } => tracing::info!(ok, %detail, "fence command ran"),
        EventKind::App { detail } => tracing::info!(%detail, "service"),
        EventKind::Restored {
            sessions,
            failed,
            elapsed_ms,
            ..
        } => {
            tracing::info!(sessions, failed, elapsed_ms, "sessions restored")
        }
        EventKind::Protection { replicated, detail } => {
            tracing::warn!(replicated, %detail, "replication protection changed")
        }
        EventKind::SessionReset { peer, reason } => {
            tracing::warn!(%peer, %reason, "restored session reset")
        }
        EventKind::Injected { fault } => tracing::warn!(%fault, "fault injected"),
        EventKind::Check { healthy, detail } => {
            tracing::warn!(healthy, %detail, "service health check changed")
        }
        EventKind::Mirror {
            peer,
            state,
            detail,
        } => tracing::info!(%peer, %state, %detail, "hot replica"),
        EventKind::Error { detail } => tracing::warn!(%detail, "error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn history_is_bounded_and_stream_follows_it() {
        let log = EventLog::new("n1");
        for i in 0..(HISTORY + 10) {
            log.emit(EventKind::GarpSent { number: i as u32 });
        }
        let (history, mut live) = log.subscribe();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0].seq, 11);
        assert_eq!(history.last().map(|e| e.seq), Some((HISTORY + 10) as u64));
        log.emit(EventKind::Error { detail: "x".into() });
        let next = live.recv().await.expect("live event");
        assert_eq!(next.seq, (HISTORY + 11) as u64);
        assert_eq!(next.node_id, "n1");
    }
}
