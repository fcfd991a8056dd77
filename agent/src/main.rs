//! `nonstop-agent --config FILE`: the daemon on the master and on the backup.
//!
//! Starts the failover driver and the control API, then waits for SIGTERM/SIGINT, on
//! which a master hands over to the backup and removes the VIP before exiting.

use anyhow::Context;
use clap::Parser;
use nonstop_agent::control::{self, ControlHandle};
use nonstop_agent::events::EventLog;
use nonstop_agent::failover::driver::{Driver, DriverParts};
use nonstop_agent::shutdown;
use nonstop_shared::config::AgentConfig;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

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
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nonstop-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let (trigger, shutdown) = shutdown::channel();
    let events = EventLog::new(&config.node_id);
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(64);
    let malformed = Arc::new(AtomicU64::new(0));
    let driver = Driver::start(DriverParts {
        config: config.clone(),
        events: Arc::clone(&events),
        commands: commands_rx,
        malformed_control_lines: Arc::clone(&malformed),
        shutdown: shutdown.clone(),
    })
    .await
    .context("failover manager")?;
    let handle = ControlHandle {
        commands: commands_tx,
        events,
        malformed_lines: malformed,
    };
    let control_addrs = config.control.listen.clone();
    let control_shutdown = shutdown.clone();
    let control =
        tokio::spawn(async move { control::serve(&control_addrs, handle, control_shutdown).await });
    tokio::spawn(shutdown::trip_on_signals(trigger.clone()));
    let mut driver_task = tokio::spawn(driver.run());
    tokio::select! {
        finished = &mut driver_task => {
            trigger.trigger();
            finished.context("failover task")?
        }
        served = control => {
            // The control API only returns early on a bind failure: stop everything,
            // letting the driver hand over and remove the VIP first.
            trigger.trigger();
            let driver_result = driver_task.await.context("failover task")?;
            served.context("control task")??;
            driver_result
        }
    }
}
