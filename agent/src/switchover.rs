//! A planned switchover, in one sequence (design §3, §5): **check** that this node is
//! master with a live backup, **drain** (freeze the peers with a zero window, wait for
//! the service to read its input and the peers to acknowledge its output, hand over
//! what the service has not sent — [`crate::session::drain`]), **hand over** (the
//! failover manager gives the VIP to the backup), and **thaw** the peers again if the
//! hand-over did not happen. The control API calls [`run`].

use crate::control::ControlCommand;
use crate::session::view::SessionView;
use nonstop_shared::control::NodeStatus;
use nonstop_shared::Mode;
use tokio::sync::{mpsc, oneshot};

/// Runs a planned switchover; the message says what happened, the error why not.
pub async fn run(
    failover: &mpsc::Sender<ControlCommand>,
    sessions: Option<&SessionView>,
) -> Result<String, String> {
    // A master still restoring its sessions must not hand them over: the backup's
    // copy would lack the ones not restored yet (found by tests/tests/deploy.rs: two
    // switchovers 40 ms apart reset sessions).
    let pending = sessions.map_or(0, |v| {
        v.interceptor
            .stats
            .restore_pending
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    if pending > 0 {
        return Err(format!(
            "{pending} sessions are still being restored; switch over once \
             restore_pending is 0"
        ));
    }
    // Check: only a master with a live backup drains (a failed check still asks the
    // failover manager, whose answer says why not).
    let ready = ask(failover, ControlCommand::Status)
        .await
        .is_ok_and(|s: NodeStatus| {
            s.mode == Mode::Master
                && s.peer.mode == Some(Mode::Backup)
                && s.peer.healthy != Some(false)
                && s.missed_heartbeats < s.misses
        });
    let drained = match sessions {
        Some(view) if ready => view.drain_for_switchover().await,
        _ => None,
    };
    match ask(failover, ControlCommand::Switchover).await {
        Ok(Ok(message)) => Ok(match &drained {
            Some(report) => format!("{}; {message}", report.describe()),
            None => message,
        }),
        Ok(Err(message)) | Err(message) => {
            if let (Some(view), Some(_)) = (sessions, &drained) {
                view.thaw();
            }
            Err(message)
        }
    }
}

/// Sends a request to the failover manager and waits for its answer.
pub async fn ask<T>(
    failover: &mpsc::Sender<ControlCommand>,
    command: impl FnOnce(oneshot::Sender<T>) -> ControlCommand,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    failover
        .send(command(tx))
        .await
        .map_err(|_| "agent is shutting down".to_owned())?;
    rx.await.map_err(|_| "agent is shutting down".to_owned())
}
