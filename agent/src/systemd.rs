//! systemd integration (`Type=notify`): READY once the node has a role, STATUS lines
//! (mode, epoch, sessions, backup), WATCHDOG pings while the failover manager answers,
//! STOPPING when the shutdown starts. Without `NOTIFY_SOCKET` (not under systemd)
//! nothing is sent.
//!
//! [`Notifier`] decides what to send from each status (sans-IO, unit-tested); [`run`]
//! asks the failover driver for its status through the control command channel — so
//! a failover thread that stops answering also stops the watchdog pings, and systemd
//! restarts the agent (`WatchdogSec=`, `Restart=on-failure`).

use crate::control::ControlCommand;
use crate::shutdown::Shutdown;
use nonstop_shared::control::NodeStatus;
use nonstop_shared::Mode;
use sd_notify::NotifyState;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the status line is refreshed when no watchdog asks for more.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`.
    Ready,
    /// `STATUS=...`.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
}

/// What to tell systemd, decided from the statuses the driver reports.
#[derive(Debug, Default)]
pub struct Notifier {
    ready: bool,
    last_status: Option<String>,
    watchdog: bool,
}

impl Notifier {
    /// A notifier; `watchdog` says whether systemd expects pings.
    pub fn new(watchdog: bool) -> Notifier {
        Notifier {
            watchdog,
            ..Notifier::default()
        }
    }

    /// What to send after the driver answered with `status`. A status proves the
    /// failover manager is alive, so it always earns a watchdog ping; READY goes out
    /// once, when the node has left `startup` (it knows whether it is master); STATUS
    /// only when its text changed.
    pub fn on_status(&mut self, status: &NodeStatus) -> Vec<Notice> {
        let mut out = Vec::new();
        if !self.ready && status.mode != Mode::Startup {
            self.ready = true;
            out.push(Notice::Ready);
        }
        let text = status_line(status);
        if self.last_status.as_deref() != Some(text.as_str()) {
            self.last_status = Some(text.clone());
            out.push(Notice::Status(text));
        }
        if self.watchdog {
            out.push(Notice::Watchdog);
        }
        out
    }
}

/// The `STATUS=` text: `master, epoch 3, 2 sessions, backup connected`.
pub fn status_line(status: &NodeStatus) -> String {
    let peer = match (status.mode, status.replication.connected) {
        (Mode::Master, true) => ", backup connected",
        (Mode::Master, false) => ", no backup",
        (Mode::Backup, true) => ", replicating",
        (Mode::Backup, false) => ", not replicating",
        _ => "",
    };
    let vip = if status.vip_held { ", holds VIP" } else { "" };
    format!(
        "{}, epoch {}, {} sessions{peer}{vip}",
        status.mode, status.epoch, status.replication.sessions
    )
}

fn send(notices: &[Notice]) {
    let states: Vec<NotifyState> = notices
        .iter()
        .map(|n| match n {
            Notice::Ready => NotifyState::Ready,
            Notice::Status(text) => NotifyState::Status(text),
            Notice::Watchdog => NotifyState::Watchdog,
        })
        .collect();
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Whether the agent runs under a service manager that listens (`NOTIFY_SOCKET`).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this pid), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Reports to systemd until shutdown, then sends `STOPPING=1`. Returns at once when
/// not under systemd.
pub async fn run(
    commands: mpsc::Sender<ControlCommand>,
    sources: crate::status::StatusSources,
    mut shutdown: Shutdown,
) {
    if !enabled() {
        return;
    }
    let watchdog = watchdog_interval();
    // Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
    let period = watchdog
        .map(|w| (w / 2).clamp(Duration::from_millis(10), STATUS_INTERVAL))
        .unwrap_or(STATUS_INTERVAL);
    tracing::info!(?watchdog, ?period, "notifying systemd");
    let mut notifier = Notifier::new(watchdog.is_some());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => {}
        }
        let (tx, rx) = oneshot::channel();
        if commands.send(ControlCommand::Status(tx)).await.is_err() {
            break;
        }
        // No answer within the period: no ping; systemd decides when it has waited
        // long enough.
        if let Ok(Ok(status)) = tokio::time::timeout(period, rx).await {
            let status = sources.assemble(status);
            let notices = notifier.on_status(&status);
            if !notices.is_empty() {
                send(&notices);
            }
        }
    }
    send_stopping();
}

/// `STOPPING=1` (and a last STATUS): the agent is handing over and cleaning up.
pub fn send_stopping() {
    if !enabled() {
        return;
    }
    let states = [
        NotifyState::Stopping,
        NotifyState::Status("stopping: handing over, removing the VIP and queue rules"),
    ];
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_shared::control::{Counters, PeerView, ReplicationView, Resources};

    fn status(mode: Mode, epoch: u64, sessions: u64) -> NodeStatus {
        NodeStatus {
            node_id: "a".into(),
            mode,
            epoch,
            priority: 100,
            vip: "198.18.1.100/24".into(),
            vip_held: mode == Mode::Master,
            heartbeat_ms: 100,
            misses: 3,
            missed_heartbeats: 0,
            peer: PeerView::default(),
            uptime_ms: 0,
            pid: 1,
            last_transition: None,
            counters: Counters::default(),
            replication: ReplicationView {
                connected: true,
                sessions,
                ..ReplicationView::default()
            },
            resources: Resources::default(),
            app: None,
            check: None,
        }
    }

    #[test]
    fn ready_once_after_startup_status_on_change_watchdog_every_answer() {
        let mut n = Notifier::new(true);
        assert_eq!(
            n.on_status(&status(Mode::Startup, 0, 0)),
            [
                Notice::Status("startup, epoch 0, 0 sessions".into()),
                Notice::Watchdog
            ]
        );
        assert_eq!(
            n.on_status(&status(Mode::Startup, 0, 0)),
            [Notice::Watchdog]
        );
        assert_eq!(
            n.on_status(&status(Mode::Master, 1, 0)),
            [
                Notice::Ready,
                Notice::Status("master, epoch 1, 0 sessions, backup connected, holds VIP".into()),
                Notice::Watchdog
            ]
        );
        assert_eq!(
            n.on_status(&status(Mode::Master, 1, 2)),
            [
                Notice::Status("master, epoch 1, 2 sessions, backup connected, holds VIP".into()),
                Notice::Watchdog
            ]
        );
        // Demoted later: no second READY.
        assert_eq!(
            n.on_status(&status(Mode::Backup, 2, 2)),
            [
                Notice::Status("backup, epoch 2, 2 sessions, replicating".into()),
                Notice::Watchdog
            ]
        );
    }

    #[test]
    fn without_a_watchdog_only_changes_are_sent() {
        let mut n = Notifier::new(false);
        assert_eq!(n.on_status(&status(Mode::Backup, 1, 0)).len(), 2);
        assert!(n.on_status(&status(Mode::Backup, 1, 0)).is_empty());
    }
}
