//! The session manager's side of the node's role (design §4, §5): following mode
//! changes (hold, drop, park and restore, clean up after a reign), a lone sync-mode
//! master's policy, and the local restore after a crash of the service. Thin async
//! drivers: every decision on packets is the interceptor's.

use crate::session::interceptor::{InterceptorHandle, QueueCommand};
use crate::session::replica::Replica;
use nonstop_shared::config::ReplicationMode;
use nonstop_shared::Mode;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Keeps the interceptor in step with this node's role: holding (sync mode, master
/// only), dropping outbound service packets when not master, restoring the replicated
/// sessions into the local service when this node becomes master, and cleaning up
/// when a reign ends.
///
/// Never blocks on a slow step: the restore waits for the service in a task of its
/// own, cancelled if the mode changes first, and a reign is identified by its epoch,
/// so a demotion and re-promotion coalesced by the watch still end the old reign.
pub async fn follow_mode(
    interceptor: InterceptorHandle,
    mut mode: watch::Receiver<(Mode, u64)>,
    replication: ReplicationMode,
    replica: Arc<Mutex<Replica>>,
    vip: std::net::Ipv4Addr,
    ports: Vec<u16>,
    hot: bool,
) {
    // The epoch of the reign this node is master in.
    let mut reign: Option<u64> = None;
    // Whether this node has left `Startup` yet.
    let mut settled = false;
    let mut restore: Option<tokio::task::JoinHandle<()>> = None;
    let mut cleanup: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let (current, epoch) = *mode.borrow_and_update();
        let master = current == Mode::Master;
        if master && reign.is_some_and(|e| e != epoch) {
            // A new reign whose start looked like a continuation: end the old one.
            interceptor.send(QueueCommand::SetRole(false));
            reign = None;
        }
        interceptor.send(QueueCommand::SetRole(master));
        interceptor.send(QueueCommand::SetHolding(
            master && replication == ReplicationMode::Sync,
        ));
        if master && reign.is_none() {
            reign = Some(epoch);
            // Stale sockets of the last reign not destroyed yet: before the restore.
            let stale = cleanup.take().is_some_and(|task| {
                let pending = !task.is_finished();
                task.abort();
                pending
            });
            restore = Some(tokio::spawn(restore_when_listening(
                interceptor.clone(),
                Arc::clone(&replica),
                vip,
                ports.clone(),
                stale,
            )));
        }
        if !master {
            if let Some(task) = restore.take() {
                task.abort();
            }
            // Leaving a reign — demoted, or (re)starting as backup after a crash: this
            // node owns no session now. The tracker forgets what it was seeded with
            // from disk (kept for a *resume* as master only), and once the service
            // manager has stopped the app, none of its connections on the VIP may
            // survive (their RSTs are dropped by the queue): a later restore of the
            // same 4-tuples must meet no stale socket.
            // A hot replica keeps the service's connections: after a planned
            // switchover they are the new master's mirrors; the interceptor resets
            // the others itself.
            if current != Mode::Startup && (reign.is_some() || !settled) {
                interceptor.send(QueueCommand::ForgetSessions);
                // Hot: stale sockets went at the agent's start (`agent.rs`); now
                // they may be mirrors.
                if !hot {
                    let (vip, ports) = (vip, ports.clone());
                    cleanup = Some(tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        destroy_stale_sockets(vip, &ports).await;
                    }));
                }
            }
            reign = None;
        }
        settled |= current != Mode::Startup;
        if mode.changed().await.is_err() {
            return;
        }
    }
}

/// A new reign's restore: once the service listens, the replicated sessions (those
/// the interceptor does not track already — a resumed master tracks its own).
async fn restore_when_listening(
    interceptor: InterceptorHandle,
    replica: Arc<Mutex<Replica>>,
    vip: std::net::Ipv4Addr,
    ports: Vec<u16>,
    destroy_stale_first: bool,
) {
    let promoted_at = std::time::Instant::now();
    let states = replica
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .states();
    // Parked at once: until restored, no peer packet may reach the kernel (it has no
    // socket for the session and would answer with an RST). Sent even with nothing
    // to park: it ends the interceptor's wait for the takeover's sessions.
    interceptor.send(QueueCommand::Park {
        states,
        promoted_at,
    });
    if destroy_stale_first {
        destroy_stale_sockets(vip, &ports).await;
    }
    if !wait_for_listener(vip, &ports, std::time::Duration::from_secs(5)).await {
        tracing::warn!(?ports, "no service listening; restoring anyway");
    }
    interceptor.send(QueueCommand::ServiceReady);
}

/// `lone_master = "serve"` in sync mode: once no backup has been connected for the
/// detection window (counted from when the replication connection went, also while
/// this node was still backup), output is released unreplicated (the service stays available;
/// the sessions are still stored locally), and held again as soon as a backup
/// connects (its snapshot covers everything). Both changes are events.
pub async fn serve_when_alone(
    interceptor: InterceptorHandle,
    mut mode: watch::Receiver<(Mode, u64)>,
    stats: Arc<crate::replication::stats::ReplicationStats>,
    events: Arc<crate::events::EventLog>,
    grace: std::time::Duration,
) {
    use std::sync::atomic::Ordering;
    let mut alone_since: Option<tokio::time::Instant> = None;
    let mut serving_alone = false;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let master = mode.borrow().0 == Mode::Master;
        let connected = stats.connected.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        // Counted from when the replication connection went, whatever the role: a
        // backup that promotes because its master crashed has had no master to
        // replicate from for a detection window already, so it serves at once
        // instead of holding its output for one more window.
        alone_since = match (!connected, alone_since) {
            (true, None) => Some(now),
            (true, since) => since,
            (false, _) => None,
        };
        let alone = master && alone_since.is_some_and(|since| now - since >= grace);
        if alone {
            // Re-sent every tick: a mode change elsewhere re-enables holding.
            interceptor.send(QueueCommand::SetHolding(false));
        } else if serving_alone && master {
            interceptor.send(QueueCommand::SetHolding(true));
        }
        if alone != serving_alone {
            serving_alone = alone;
            events.emit(nonstop_shared::control::EventKind::Protection {
                replicated: !alone,
                detail: if alone {
                    format!(
                        "no backup for {} ms: serving unreplicated (lone_master = serve)",
                        grace.as_millis()
                    )
                } else {
                    "a backup is connected: output held for replication again".to_owned()
                },
            });
        }
    }
}

/// An app crash on a healthy master (design §4): the interceptor drops the dying
/// service's FINs/RSTs and parks its sessions; the orphaned kernel sockets are
/// destroyed (their RSTs are dropped too); once the manager has restarted the
/// service and it listens again, the sessions are restored into it.
pub async fn restore_after_app_crashes(
    interceptor: InterceptorHandle,
    mut exits: tokio::sync::mpsc::UnboundedReceiver<()>,
    mode: watch::Receiver<(Mode, u64)>,
    vip: std::net::Ipv4Addr,
    ports: Vec<u16>,
) {
    while exits.recv().await.is_some() {
        if mode.borrow().0 != Mode::Master {
            // A hot replica's service: its mirrors are gone (cold); the master is
            // not affected.
            interceptor.send(QueueCommand::ReplicaServiceDied);
            continue;
        }
        // Park at once: peers' segments must not reach the orphaned sockets.
        interceptor.send(QueueCommand::AppDied);
        // Then one look at the dead process's sockets: orphans still holding output
        // never sent mark sessions that cannot be restored exactly.
        let look = {
            let ports = ports.clone();
            tokio::task::spawn_blocking(move || {
                crate::session::handover::service_connections(vip, &ports)
            })
            .await
        };
        let sockets = match look {
            Ok(Ok(conns)) => conns
                .into_iter()
                .map(|c| crate::session::risk::Observation {
                    key: c.key,
                    send_queue: c.send_queue,
                    not_sent: c.not_sent,
                    recv_queue: c.recv_queue,
                })
                .collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the dead service's sockets");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        interceptor.send(QueueCommand::DeadSockets(sockets));
        // Orphaned sockets (FIN_WAIT) would catch the forged SYNs of the restore.
        destroy_stale_sockets(vip, &ports).await;
        let limit = crate::app::RESTART_DELAY + std::time::Duration::from_secs(10);
        if !wait_for_listener(vip, &ports, limit).await {
            tracing::warn!(
                ?ports,
                "restarted service does not listen; restoring anyway"
            );
        }
        if mode.borrow().0 == Mode::Master {
            interceptor.send(QueueCommand::ServiceReady);
        }
    }
}

/// Destroys the TCP sockets on VIP:port (sock_diag `SOCK_DESTROY`, IPv4 and
/// dual-stack alike); listeners stay.
async fn destroy_stale_sockets(vip: std::net::Ipv4Addr, ports: &[u16]) {
    crate::sockets::destroy_stale(vip, ports).await;
}

/// Waits until something listens on one of `ports` for the VIP (an IPv4 or a
/// dual-stack `[::]` socket).
async fn wait_for_listener(
    vip: std::net::Ipv4Addr,
    ports: &[u16],
    limit: std::time::Duration,
) -> bool {
    crate::sockets::wait_for_listener(vip, ports, limit).await
}
