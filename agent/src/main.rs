//! `nonstop-agent --config FILE`, the daemon on master and backup: parses arguments,
//! loads config and key, starts the agent ([`nonstop_agent::agent::Agent`]) and runs
//! it until SIGTERM/SIGINT (a master hands over first); `--check` checks the host.

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
    /// Validate the configuration and check the host (interface, addresses, kernel
    /// features, capabilities, key, data directory), one line per check; exit 0 only
    /// if all pass (1 if a host check fails, 2 if the file or key is invalid).
    #[arg(long)]
    check: bool,
    /// Log line format on stderr: `text` (ANSI colours only on a terminal) or `json`.
    #[arg(long, default_value = "text")]
    log_format: nonstop_agent::host::logging::LogFormat,
}

fn main() -> ExitCode {
    // `scripts/package` asks for the man pages with NONSTOP_GENERATE_MAN=DIR.
    if let Some(code) =
        nonstop_shared::man::generate_if_asked(<Args as clap::CommandFactory>::command(), "8")
    {
        return code;
    }
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
        // The file is valid (else exit 2 above); now the host: one line per check.
        println!("{}: configuration is valid", args.config.display());
        return if nonstop_agent::check::run_and_print(&config) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
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
