//! The one place that assembles the agent (mini-redis's `server::run` shape):
//! [`Agent::start`] opens the session store, starts interception, replication, the
//! application manager, the failover thread and the control API, all wired to one
//! shutdown; [`Agent::run`] waits for the given shutdown signal (or a component that
//! ends on its own), lets the failover driver hand over and remove the VIP, then stops
//! the service and the interception thread.
//!
//! Startup order matters and is kept here:
//! 1. the persisted replica seeds the tracker (only on a node that was master: a
//!    restarted backup's stored sessions have no live sockets behind them);
//! 2. interception starts before replication, so no record is lost;
//! 3. the replication listener binds before anything runs (a bind error stops the
//!    agent);
//! 4. the failover driver runs on its own real-time thread, so session work can never
//!    delay a heartbeat.

use crate::control::{self, ControlHandle};
use crate::events::EventLog;
use crate::failover::driver::{Driver, DriverParts};
use crate::replication::receiver::{self, ReceiverParts};
use crate::replication::sender::{self, RecordFault, SenderParts};
use crate::replication::stats::ReplicationStats;
use crate::session::interceptor::{self, InterceptorConfig, InterceptorHandle, QueueCommand};
use crate::session::replica::Replica;
use crate::session::roles;
use crate::session::tracker::TrackerLimits;
use crate::session::view::SessionView;
use crate::shutdown::{self, ShutdownTrigger};
use crate::status::StatusSources;
use anyhow::Context;
use nonstop_shared::auth::Key;
use nonstop_shared::config::{AgentConfig, LoneMaster, OnBackup, ReplicaMode, ReplicationMode};
use nonstop_shared::Mode;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long the application manager gets to stop the service at shutdown.
const APP_STOP_LIMIT: Duration = Duration::from_secs(5);

/// A started agent.
pub struct Agent {
    trigger: ShutdownTrigger,
    interceptor: InterceptorHandle,
    queue_thread: std::thread::JoinHandle<()>,
    driver: oneshot::Receiver<anyhow::Result<()>>,
    control: JoinHandle<anyhow::Result<()>>,
    app: Option<JoinHandle<()>>,
    /// The notify hooks' task, and how long shutdown waits for it.
    hooks: (JoinHandle<()>, Duration),
    /// Hot replica: the VIP on `lo`, removed at shutdown.
    vip_on_lo: Option<std::net::Ipv4Addr>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts every component of the agent for `config`, authenticated with `key`;
    /// `reloader` re-reads the config on SIGHUP.
    pub async fn start(
        config: AgentConfig,
        key: Key,
        reloader: crate::host::reload::Reloader,
    ) -> anyhow::Result<Agent> {
        // First: SIGHUP's default action would kill the agent.
        let live = reloader.subscribe();
        reloader.spawn().context("SIGHUP handler")?;
        let (trigger, shutdown) = shutdown::channel();
        let events = EventLog::new(&config.node_id);
        // Notify hooks follow the event log from the start (they never block the driver).
        let hook_stats = Arc::new(crate::host::hooks::HookStats::default());
        let hooks = tokio::spawn(crate::host::hooks::run(
            Arc::clone(&events),
            live.clone(),
            config.node_id.clone(),
            config.service.vip.to_string(),
            Arc::clone(&hook_stats),
            shutdown.clone(),
        ));
        let hook_limit = Duration::from_millis(2 * live.borrow().notify.timeout_ms + 2000);
        let (mode_tx, mode) = watch::channel((Mode::Startup, 0u64));

        // Session manager: the persisted copy seeds the tracker, then interception.
        let replica = Arc::new(Mutex::new(
            Replica::open(&config.data_dir, &config.session).context("session store")?,
        ));
        let (seed, first_seq) = seed(&config, &replica);
        let (records_tx, records) = tokio::sync::mpsc::unbounded_channel();
        let interceptor_config = InterceptorConfig {
            vip: config.service.vip.addr,
            ports: config.service.ports.clone(),
            queue: config.session.queue,
            limits: TrackerLimits {
                max_sessions: config.session.max_sessions,
                max_unacked_bytes: usize::try_from(config.session.max_unacked_bytes)
                    .unwrap_or(usize::MAX),
            },
            max_held_bytes: config.session.max_held_bytes,
            max_record_backlog_bytes: config.session.max_record_backlog_bytes,
        };
        let (interceptor, queue_thread) =
            interceptor::spawn(interceptor_config, records_tx, seed, first_seq)
                .context("interception")?;
        interceptor.send(QueueCommand::SetEventLog(Arc::clone(&events)));
        let hot = config.service.replica == ReplicaMode::Hot;
        let on_backup = if hot {
            // A hot replica runs the service on the backup too (its mirrors).
            OnBackup::Park
        } else {
            config.service.on_backup
        };
        let tap: Option<receiver::Tap> = if hot {
            interceptor.send(QueueCommand::Hot {
                backlog: config.service.mirror_backlog,
            });
            crate::vip::lo::prepare(&config.service.interface, config.service.vip.addr)
                .await
                .context("hot replica")?;
            // Connections of a service that outlived an earlier agent go now, before
            // any mirror opens (a hot node never destroys sockets later: they may be
            // mirrors).
            crate::sockets::destroy_stale(config.service.vip.addr, &config.service.ports).await;
            let mirrors = interceptor.clone();
            Some(Arc::new(move |applied| {
                mirrors.send(match applied {
                    receiver::Applied::Snapshot(records) => QueueCommand::MirrorSnapshot(records),
                    receiver::Applied::Records(records) => QueueCommand::Mirror(records),
                })
            }))
        } else {
            None
        };

        // Replication: the backup's listener and the master's sender.
        let stats = Arc::new(ReplicationStats::default());
        let record_fault = RecordFault::default();
        let receiver = receiver::bind(ReceiverParts {
            listen: config.sync.address,
            peer_ip: config.sync.peer.ip(),
            replica: Arc::clone(&replica),
            mode: mode.clone(),
            stats: Arc::clone(&stats),
            shutdown: shutdown.clone(),
            key: key.clone(),
            max_sessions: config.session.max_sessions,
            tap,
        })
        .await?;
        tokio::spawn(receiver);
        tokio::spawn(sender::run(SenderParts {
            records,
            interceptor: interceptor.clone(),
            replica: Arc::clone(&replica),
            peer: config.sync.peer,
            local: config.sync.address,
            node_id: config.node_id.clone(),
            mode: mode.clone(),
            stats: Arc::clone(&stats),
            shutdown: shutdown.clone(),
            key: key.clone(),
            fault: record_fault.clone(),
            ack_gap: (config.session.replication == ReplicationMode::Async)
                .then_some(sender::ASYNC_ACK_GAP),
        }));

        // The interceptor's roles follow the mode.
        if config.session.replication == ReplicationMode::Sync
            && config.session.lone_master == LoneMaster::Serve
        {
            tokio::spawn(roles::serve_when_alone(
                interceptor.clone(),
                mode.clone(),
                Arc::clone(&stats),
                Arc::clone(&events),
                config.sync.detection_window(),
            ));
        }
        tokio::spawn(roles::follow_mode(
            interceptor.clone(),
            mode.clone(),
            config.session.replication,
            Arc::clone(&replica),
            config.service.vip.addr,
            config.service.ports.clone(),
            hot,
        ));
        if config.session.risk_poll_ms > 0 {
            tokio::spawn(crate::session::risk::watch(
                interceptor.clone(),
                mode.clone(),
                config.service.vip.addr,
                config.service.ports.clone(),
                Duration::from_millis(config.session.risk_poll_ms),
            ));
        }
        let view = SessionView {
            node_id: config.node_id.clone(),
            replication: config.session.replication,
            interceptor: interceptor.clone(),
            replica,
            stats,
            mode: mode.clone(),
            ports: config.service.ports.clone(),
            vip: config.service.vip.addr,
            drain_limit: config.session.drain_limit(),
            replica_mode: config.service.replica,
        };

        // Application manager; its crashes on a healthy master restore locally.
        let (app_handle, app) = match config.service.command.clone() {
            Some(command) => {
                let (manager, handle) = crate::app::AppManager::new(
                    command,
                    on_backup,
                    Arc::clone(&events),
                    mode.clone(),
                    shutdown.clone(),
                );
                let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(roles::restore_after_app_crashes(
                    interceptor.clone(),
                    exits_rx,
                    mode.clone(),
                    config.service.vip.addr,
                    config.service.ports.clone(),
                ));
                let task = tokio::spawn(manager.notify_exits(exits_tx).run());
                (Some(handle), Some(task))
            }
            None => (None, None),
        };
        let resources = crate::resources::ResourceMonitor::default();
        tokio::spawn(resources.clone().run());

        // Failover manager and control API.
        let (commands_tx, commands) = tokio::sync::mpsc::channel(64);
        let driver = spawn_failover_thread(DriverParts {
            config: config.clone(),
            events: Arc::clone(&events),
            commands,
            shutdown: shutdown.clone(),
            mode_tx,
            replication: Some(Arc::clone(&view.stats)),
            key: key.clone(),
            live: Some(live.clone()),
        })?;
        let injector = crate::inject::Injector::new(&config).with_record_fault(record_fault);
        crate::host::reload::follow(live.clone(), {
            let injector = injector.clone();
            move |live| injector.set_enabled(live.inject.enabled)
        });
        let (check_view, _) = watch::channel(None);
        let sources = StatusSources {
            sessions: Some(view),
            resources,
            app: app_handle,
            malformed_control_lines: Arc::new(AtomicU64::new(0)),
            control_rejected: Arc::new(AtomicU64::new(0)),
        };
        // Metrics bind before the control API: a taken address fails the start.
        if let Some(addr) = config.metrics.listen {
            let source = crate::metrics::MetricsSource {
                commands: commands_tx.clone(),
                status: sources.clone(),
            };
            let listener = crate::metrics::bind(addr).await?;
            tokio::spawn(crate::metrics::serve(listener, source, shutdown.clone()));
        }
        // systemd (Type=notify): READY, STATUS, WATCHDOG, STOPPING; nothing without it.
        tokio::spawn(crate::systemd::run(
            commands_tx.clone(),
            sources.clone(),
            shutdown.clone(),
        ));
        let settings = Arc::new(nonstop_shared::settings::Settings::from_config(
            &config,
            key.fingerprint(),
        ));
        let handle = ControlHandle {
            commands: commands_tx,
            events,
            key,
            status: sources,
            settings,
            injector,
            hooks: Arc::clone(&hook_stats),
            check: Some(check_view.subscribe()),
        };
        tokio::spawn(crate::host::check::run(crate::host::check::CheckParts {
            live: live.clone(),
            ports: config.service.ports.clone(),
            on_backup,
            mode: mode.clone(),
            control: handle.clone(),
            view: check_view,
            shutdown: shutdown.clone(),
        }));
        let listen = config.control.listen.clone();
        let control = tokio::spawn(async move { control::serve(&listen, handle, shutdown).await });
        Ok(Agent {
            trigger,
            interceptor,
            queue_thread,
            driver,
            control,
            app,
            hooks: (hooks, hook_limit),
            vip_on_lo: hot.then_some(config.service.vip.addr),
        })
    }

    /// Runs until `signal` completes (or the failover driver or the control API ends on
    /// its own), then shuts down: the driver hands over and removes the VIP, the
    /// service is stopped, interception ends. Returns the first error.
    pub async fn run(
        self,
        signal: impl Future<Output = std::io::Result<()>> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Agent {
            trigger,
            interceptor,
            queue_thread,
            mut driver,
            control,
            app,
            hooks,
            vip_on_lo,
        } = self;
        let on_signal = trigger.clone();
        tokio::spawn(async move {
            if let Err(e) = signal.await {
                tracing::error!(error = %e, "cannot wait for signals: shutting down");
            }
            on_signal.trigger();
        });
        let result = tokio::select! {
            finished = &mut driver => {
                trigger.trigger();
                finished.context("failover task").and_then(|r| r)
            }
            served = control => {
                // The control API only returns early on a bind failure: stop everything,
                // letting the driver hand over and remove the VIP first.
                trigger.trigger();
                let driver_result = driver.await.context("failover task").and_then(|r| r);
                served.context("control task").and_then(|r| r).and(driver_result)
            }
        };
        if let Some(task) = app {
            // The manager stops the service when it sees the shutdown.
            let _ = tokio::time::timeout(APP_STOP_LIMIT, task).await;
        }
        interceptor.send(QueueCommand::Stop);
        let _ = tokio::task::spawn_blocking(move || queue_thread.join()).await;
        if let Some(vip) = vip_on_lo {
            if let Err(e) = crate::vip::lo::undo(vip).await {
                tracing::warn!(error = format!("{e:#}"), "the VIP stays on lo");
            }
        }
        // The hooks of shutdown's own transition, then the `stop` hook, each bounded.
        let _ = tokio::time::timeout(hooks.1, hooks.0).await;
        result
    }
}

/// The sessions that seed the tracker and the first record number. Only a node that
/// was master has live sockets behind its stored sessions. A restarted backup must not
/// seed them, or its promotion would skip restoring them as "already tracked" (found
/// by tests/tests/faults.rs).
fn seed(
    config: &AgentConfig,
    replica: &Mutex<Replica>,
) -> (Vec<nonstop_shared::session::SessionState>, u64) {
    let replica = replica.lock().unwrap_or_else(PoisonError::into_inner);
    let was_master =
        crate::failover::driver::persisted_mode(&config.data_dir) == Some(Mode::Master);
    let seed = if was_master {
        replica.states()
    } else {
        Vec::new()
    };
    (seed, replica.last_seq() + 1)
}

/// Runs the failover driver on its own thread with a current-thread runtime; the
/// receiver yields its result (a startup error included) when it ends.
fn spawn_failover_thread(
    parts: DriverParts,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<()>>> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("failover".into())
        .spawn(move || {
            use_realtime_scheduling();
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("failover runtime")
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let driver = Driver::start(parts).await.context("failover manager")?;
                        driver.run().await
                    })
                });
            let _ = done_tx.send(result);
        })
        .context("cannot start the failover thread")?;
    Ok(done_rx)
}

/// Real-time priority (SCHED_RR) of the failover thread: heartbeats must go out and
/// be read on time even when the host is saturated (a starved heartbeat thread would
/// look dead to the peer after `heartbeat_ms × misses`, as keepalived's
/// `vrrp_rt_priority` also guards against). Low in the RT range: it sleeps nearly
/// always, so it can never starve the host.
const FAILOVER_RT_PRIORITY: libc::c_int = 10;

/// Puts the calling thread under SCHED_RR at [`FAILOVER_RT_PRIORITY`]; without the
/// privilege (CAP_SYS_NICE) it stays at normal priority, with a warning.
fn use_realtime_scheduling() {
    let param = libc::sched_param {
        sched_priority: FAILOVER_RT_PRIORITY,
    };
    // Processes it starts (the fence command) must not inherit the priority.
    let policy = libc::SCHED_RR | libc::SCHED_RESET_ON_FORK;
    // SAFETY: plain syscall; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "failover thread stays at normal priority: heartbeats may be late on a saturated host"
        );
    }
}
