//! `nonstop-agent --config FILE`: the daemon on the master and on the backup.
//!
//! Starts the session manager (store, NFQUEUE interception, replication), the failover
//! driver and the control API, then waits for SIGTERM/SIGINT, on which a master hands
//! over to the backup, removes the VIP and its nftables table before exiting.

use anyhow::Context;
use clap::Parser;
use nonstop_agent::control::{self, ControlHandle};
use nonstop_agent::events::EventLog;
use nonstop_agent::failover::driver::{Driver, DriverParts};
use nonstop_agent::replication::receiver::{self, ReceiverParts};
use nonstop_agent::replication::sender::{self, SenderParts};
use nonstop_agent::replication::stats::ReplicationStats;
use nonstop_agent::session::interceptor::{
    self, InterceptorConfig, InterceptorHandle, QueueCommand,
};
use nonstop_agent::session::replica::Replica;
use nonstop_agent::session::tracker::TrackerLimits;
use nonstop_agent::session::view::SessionView;
use nonstop_agent::shutdown;
use nonstop_shared::auth::Key;
use nonstop_shared::config::{AgentConfig, ReplicationMode};
use nonstop_shared::Mode;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Command line of the agent.
#[derive(Debug, Parser)]
#[command(
    name = "nonstop-agent",
    version,
    about = "nonstop high-availability agent"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Only validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("nonstop-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // No key, no agent: every channel is authenticated with it.
    let key = match Key::load(&config.security.key_file) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("nonstop-agent: security.key_file: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nonstop-agent: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, key)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nonstop-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: AgentConfig, key: Key) -> anyhow::Result<()> {
    let (trigger, shutdown) = shutdown::channel();
    let events = EventLog::new(&config.node_id);
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(64);
    let malformed = Arc::new(AtomicU64::new(0));
    let control_rejected = Arc::new(AtomicU64::new(0));
    let (mode_tx, mode_rx) = watch::channel((Mode::Startup, 0u64));
    let mode_rx_for_app = mode_rx.clone();

    // Session manager: the persisted copy seeds the tracker (an agent restart keeps
    // its sessions), then interception starts.
    let replica = Arc::new(Mutex::new(
        Replica::open(&config.data_dir, &config.session).context("session store")?,
    ));
    let (restored, first_seq) = {
        let replica = replica.lock().unwrap_or_else(PoisonError::into_inner);
        // Only a node that was master has live sockets behind its stored sessions. A
        // restarted backup must not seed them, or its promotion would skip restoring
        // them as "already tracked" (found by tests/tests/faults.rs).
        let was_master =
            nonstop_agent::failover::driver::persisted_mode(&config.data_dir) == Some(Mode::Master);
        let seed = if was_master {
            replica.states()
        } else {
            Vec::new()
        };
        (seed, replica.last_seq() + 1)
    };
    let (records_tx, records_rx) = tokio::sync::mpsc::unbounded_channel();
    let interceptor_config = InterceptorConfig {
        vip: config.service.vip.addr,
        ports: config.service.ports.clone(),
        queue: config.session.queue,
        limits: TrackerLimits {
            max_sessions: config.session.max_sessions,
            ..TrackerLimits::default()
        },
    };
    let (interceptor, queue_thread) =
        interceptor::spawn(interceptor_config, records_tx, restored, first_seq)
            .context("interception")?;
    interceptor.send(QueueCommand::SetEventLog(Arc::clone(&events)));
    let stats = Arc::new(ReplicationStats::default());
    let receiver = receiver::bind(ReceiverParts {
        listen: config.sync.address,
        peer_ip: config.sync.peer.ip(),
        replica: Arc::clone(&replica),
        mode: mode_rx.clone(),
        stats: Arc::clone(&stats),
        shutdown: shutdown.clone(),
        key: key.clone(),
        max_sessions: config.session.max_sessions,
    })
    .await?;
    tokio::spawn(receiver);
    tokio::spawn(sender::run(SenderParts {
        records: records_rx,
        interceptor: interceptor.clone(),
        replica: Arc::clone(&replica),
        peer: config.sync.peer,
        local: config.sync.address,
        node_id: config.node_id.clone(),
        mode: mode_rx.clone(),
        stats: Arc::clone(&stats),
        shutdown: shutdown.clone(),
        key: key.clone(),
    }));
    if config.session.replication == ReplicationMode::Sync
        && config.session.lone_master == nonstop_shared::config::LoneMaster::Serve
    {
        tokio::spawn(serve_when_alone(
            interceptor.clone(),
            mode_rx.clone(),
            Arc::clone(&stats),
            Arc::clone(&events),
            std::time::Duration::from_millis(
                config.sync.heartbeat_ms * u64::from(config.sync.misses),
            ),
        ));
    }
    tokio::spawn(follow_mode(
        interceptor.clone(),
        mode_rx.clone(),
        config.session.replication,
        Arc::clone(&replica),
        config.service.vip.addr,
        config.service.ports.clone(),
    ));
    let view = SessionView {
        node_id: config.node_id.clone(),
        replication: config.session.replication,
        interceptor: interceptor.clone(),
        replica,
        stats,
        mode: mode_rx,
        ports: config.service.ports.clone(),
        drain_limit: std::time::Duration::from_millis(config.session.drain_ms),
    };

    let app = config.service.command.clone().map(|command| {
        let (manager, handle) = nonstop_agent::app::AppManager::new(
            command,
            config.service.on_backup,
            Arc::clone(&events),
            mode_rx_for_app.clone(),
            shutdown.clone(),
        );
        (manager, handle)
    });
    let app_handle = app.as_ref().map(|(_, h)| h.clone());
    let app_task = app.map(|(manager, _)| {
        let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(restore_after_app_crashes(
            interceptor.clone(),
            exits_rx,
            mode_rx_for_app.clone(),
            config.service.vip.addr,
            config.service.ports.clone(),
        ));
        tokio::spawn(manager.notify_exits(exits_tx).run())
    });
    let resources = nonstop_agent::resources::ResourceMonitor::default();
    tokio::spawn(resources.clone().run());
    // The failover driver gets a thread and a runtime of its own, so that session
    // work (replication, storage, status polls) can never delay a heartbeat.
    let driver_task = spawn_failover_thread(DriverParts {
        config: config.clone(),
        events: Arc::clone(&events),
        commands: commands_rx,
        malformed_control_lines: Arc::clone(&malformed),
        shutdown: shutdown.clone(),
        mode_tx,
        sessions: Some(view.clone()),
        resources,
        app: app_handle,
        key: key.clone(),
        control_rejected: Arc::clone(&control_rejected),
    })?;
    let handle = ControlHandle {
        commands: commands_tx,
        events,
        malformed_lines: malformed,
        rejected: control_rejected,
        key,
        sessions: Some(view),
        injector: nonstop_agent::inject::Injector::new(&config),
    };
    let control_addrs = config.control.listen.clone();
    let control_shutdown = shutdown.clone();
    let control =
        tokio::spawn(async move { control::serve(&control_addrs, handle, control_shutdown).await });
    tokio::spawn(shutdown::trip_on_signals(trigger.clone()));
    let mut driver_task = driver_task;
    let result = tokio::select! {
        finished = &mut driver_task => {
            trigger.trigger();
            finished.context("failover task").and_then(|r| r)
        }
        served = control => {
            // The control API only returns early on a bind failure: stop everything,
            // letting the driver hand over and remove the VIP first.
            trigger.trigger();
            let driver_result = driver_task.await.context("failover task").and_then(|r| r);
            served.context("control task").and_then(|r| r).and(driver_result)
        }
    };
    if let Some(task) = app_task {
        // The manager stops the service when it sees the shutdown.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    interceptor.send(QueueCommand::Stop);
    let _ = tokio::task::spawn_blocking(move || queue_thread.join()).await;
    result
}

/// Runs the failover driver on its own thread with a current-thread runtime; the
/// receiver yields its result (a startup error included) when it ends.
fn spawn_failover_thread(
    parts: DriverParts,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
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

/// Keeps the interceptor in step with this node's role: holding (sync mode, master
/// only), dropping outbound service packets when not master, restoring the replicated
/// sessions into the local service when this node becomes master, and cleaning up
/// when a reign ends.
///
/// Never blocks on a slow step: the restore waits for the service in a task of its
/// own, cancelled if the mode changes first, and a reign is identified by its epoch,
/// so a demotion and re-promotion coalesced by the watch still end the old reign.
async fn follow_mode(
    interceptor: InterceptorHandle,
    mut mode: watch::Receiver<(Mode, u64)>,
    replication: ReplicationMode,
    replica: Arc<Mutex<Replica>>,
    vip: std::net::Ipv4Addr,
    ports: Vec<u16>,
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
            if current != Mode::Startup && (reign.is_some() || !settled) {
                interceptor.send(QueueCommand::ForgetSessions);
                let (vip, ports) = (vip, ports.clone());
                cleanup = Some(tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    destroy_stale_sockets(vip, &ports).await;
                }));
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
    // socket for the session and would answer with an RST).
    if !states.is_empty() {
        interceptor.send(QueueCommand::Park {
            states,
            promoted_at,
        });
    }
    if destroy_stale_first {
        destroy_stale_sockets(vip, &ports).await;
    }
    if !wait_for_listener(&ports, std::time::Duration::from_secs(5)).await {
        tracing::warn!(?ports, "no service listening; restoring anyway");
    }
    interceptor.send(QueueCommand::ServiceReady);
}

/// `lone_master = "serve"` in sync mode: once no backup has been connected for the
/// detection window, output is released unreplicated (the service stays available;
/// the sessions are still stored locally), and held again as soon as a backup
/// connects (its snapshot covers everything). Both changes are events.
async fn serve_when_alone(
    interceptor: InterceptorHandle,
    mut mode: watch::Receiver<(Mode, u64)>,
    stats: Arc<nonstop_agent::replication::stats::ReplicationStats>,
    events: Arc<nonstop_agent::events::EventLog>,
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
        alone_since = match (master && !connected, alone_since) {
            (true, None) => Some(now),
            (true, since) => since,
            (false, _) => None,
        };
        let alone = alone_since.is_some_and(|since| now - since >= grace);
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
async fn restore_after_app_crashes(
    interceptor: InterceptorHandle,
    mut exits: tokio::sync::mpsc::UnboundedReceiver<()>,
    mode: watch::Receiver<(Mode, u64)>,
    vip: std::net::Ipv4Addr,
    ports: Vec<u16>,
) {
    while exits.recv().await.is_some() {
        if mode.borrow().0 != Mode::Master {
            continue;
        }
        interceptor.send(QueueCommand::AppDied);
        // Orphaned sockets (FIN_WAIT) would catch the forged SYNs of the restore.
        destroy_stale_sockets(vip, &ports).await;
        let limit = nonstop_agent::app::RESTART_DELAY + std::time::Duration::from_secs(10);
        if !wait_for_listener(&ports, limit).await {
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

/// Kills TCP sockets on VIP:port with `ss -K` (sock_destroy).
async fn destroy_stale_sockets(vip: std::net::Ipv4Addr, ports: &[u16]) {
    for port in ports {
        let filter = format!("src {vip} and sport = :{port}");
        let result = tokio::process::Command::new("ss")
            .args(["-K", "-t", "-n", "state", "all"])
            .arg(&filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot run ss -K");
        }
    }
}

/// Waits until something listens on one of `ports` (from /proc/net/tcp).
async fn wait_for_listener(ports: &[u16], limit: std::time::Duration) -> bool {
    use nonstop_agent::session::proc_tcp;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(table) = tokio::fs::read_to_string(proc_tcp::PATH).await {
            if proc_tcp::listening(&table, ports) {
                return true;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
