//! `nonstop-agent --config FILE`: the daemon on the master and on the backup.
//!
//! Parses the arguments, loads the configuration and the key, then starts the agent
//! ([`nonstop_agent::agent::Agent`]) and runs it until SIGTERM/SIGINT, on which a
//! master hands over to the backup, removes the VIP and its nftables table.

use clap::Parser;
use nonstop_agent::agent::Agent;
use nonstop_agent::host::reload::Reloader;
use nonstop_agent::shutdown;
use nonstop_shared::auth::Key;
use nonstop_shared::config::AgentConfig;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Log line format on stderr: `text` (ANSI colours only on a terminal) or `json`.
    #[arg(long, default_value = "text")]
    log_format: nonstop_agent::host::logging::LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("nonstop-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let log = match nonstop_agent::host::logging::init(args.log_format, &config.log.level) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("nonstop-agent: log.level: {e}");
            return ExitCode::from(2);
        }
    };
    // No key, no agent: every channel is authenticated with it.
    let key = match Key::load(&config.security.key_file) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("nonstop-agent: security.key_file: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nonstop-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reloader = Reloader::new(args.config, config.clone(), Some(log));
    let result = runtime.block_on(async {
        let agent = Agent::start(config, key, reloader).await?;
        agent.run(shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nonstop-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
