//! One place that assembles a node's [`NodeStatus`] from each manager's own part:
//! the failover manager (mode, epoch, peer, heartbeat counters — asked of the failover
//! thread, which knows nothing else), the session manager
//! ([`SessionView::replication_view`], computed here, off the failover thread), the
//! application manager, the resource monitor and the control API's own counters.

use crate::app::AppHandle;
use crate::resources::ResourceMonitor;
use crate::session::view::SessionView;
use nonstop_shared::control::NodeStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where each part of the status comes from (besides the failover manager).
#[derive(Clone)]
pub struct StatusSources {
    /// The session manager.
    pub sessions: Option<SessionView>,
    /// CPU and memory samples.
    pub resources: ResourceMonitor,
    /// The managed service, if any.
    pub app: Option<AppHandle>,
    /// Control lines that could not be parsed.
    pub malformed_control_lines: Arc<AtomicU64>,
    /// Control connections that failed (or skipped) authentication.
    pub control_rejected: Arc<AtomicU64>,
}

impl StatusSources {
    /// Completes the failover manager's `status` with every other manager's part.
    pub fn assemble(&self, mut status: NodeStatus) -> NodeStatus {
        let counters = &mut status.counters;
        counters.malformed_control_lines = self.malformed_control_lines.load(Ordering::Relaxed);
        counters.control_rejected = self.control_rejected.load(Ordering::Relaxed);
        if let Some(view) = &self.sessions {
            counters.replication_rejected = view.stats.replication_rejected.load(Ordering::Relaxed);
            counters.replication_replayed = view.stats.replication_replayed.load(Ordering::Relaxed);
            status.replication = view.replication_view();
        }
        status.resources = self.resources.latest();
        status.app = self.app.as_ref().map(|a| a.view());
        status
    }
}
