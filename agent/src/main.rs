//! `nonstop-agent --config FILE`: the daemon on the master and on the backup.
//!
//! Starts the session manager (store, NFQUEUE interception, replication), the failover
//! driver and the control API, then waits for SIGTERM/SIGINT, on which a master hands
//! over to the backup, removes the VIP and its iptables queue chains before exiting.
//! Under systemd (`Type=notify`) it reports READY/STATUS/WATCHDOG/STOPPING; with
//! `[metrics] listen` it serves Prometheus text; `--check` checks the host.

use anyhow::Context;
use clap::Parser;
use nonstop_agent::control::{self, ControlHandle};
use nonstop_agent::events::EventLog;
use nonstop_agent::failover::driver::{Driver, DriverParts};
use nonstop_agent::replication::receiver::{self, ReceiverParts};
use nonstop_agent::replication::sender::{self, SenderParts};
use nonstop_agent::replication::stats::ReplicationStats;
use nonstop_agent::session::interceptor::{self, InterceptorConfig, QueueCommand};
use nonstop_agent::session::replica::Replica;
use nonstop_agent::session::roles;
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
    /// Validate the configuration and check the host (interface, addresses, kernel
    /// features, capabilities, key, data directory), one line per check; exit 0 only
    /// if all pass (1 if a host check fails, 2 if the file or key is invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    // `scripts/package` asks for the man pages with NONSTOP_GENERATE_MAN=DIR.
    if let Some(code) =
        nonstop_shared::man::generate_if_asked(<Args as clap::CommandFactory>::command(), "8")
    {
        return code;
    }
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
        // The file is valid (else exit 2 above); now the host: one line per check.
        println!("{}: configuration is valid", args.config.display());
        return if nonstop_agent::check::run_and_print(&config) {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
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
        tokio::spawn(roles::serve_when_alone(
            interceptor.clone(),
            mode_rx.clone(),
            Arc::clone(&stats),
            Arc::clone(&events),
            std::time::Duration::from_millis(
                config.sync.heartbeat_ms * u64::from(config.sync.misses),
            ),
        ));
    }
    tokio::spawn(roles::follow_mode(
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
    // Metrics bind before the failover manager starts: a taken address fails the start.
    if let Some(addr) = config.metrics.listen {
        let source = nonstop_agent::metrics::MetricsSource {
            commands: commands_tx.clone(),
            sessions: Some(view.clone()),
        };
        let listener = nonstop_agent::metrics::bind(addr).await?;
        tokio::spawn(nonstop_agent::metrics::serve(
            listener,
            source,
            shutdown.clone(),
        ));
    }

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
        tokio::spawn(roles::restore_after_app_crashes(
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
    // systemd (Type=notify): READY, STATUS, WATCHDOG, STOPPING; nothing without it.
    tokio::spawn(nonstop_agent::systemd::run(
        commands_tx.clone(),
        shutdown.clone(),
    ));
    let settings = Arc::new(nonstop_shared::settings::Settings::from_config(
        &config,
        key.fingerprint(),
    ));
    let handle = ControlHandle {
        commands: commands_tx,
        events,
        malformed_lines: malformed,
        rejected: control_rejected,
        key,
        sessions: Some(view),
        injector: nonstop_agent::inject::Injector::new(&config),
        settings,
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
