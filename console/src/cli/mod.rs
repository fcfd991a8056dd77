//! Subcommands of `nonstop-console`. Every one prints for people by default and one
//! JSON document with `--json`; the exit status says whether it succeeded.

mod chat;
mod check;
mod events;
mod inject;
mod render;
mod sessions;
mod status;
pub(crate) mod switchover;

use crate::client::AgentAddr;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// Command line of the console.
#[derive(Debug, Parser)]
#[command(
    name = "nonstop-console",
    version,
    about = "Operator console for a nonstop pair"
)]
pub struct Cli {
    /// An agent's control address, `IP:PORT` or `NETNS@IP:PORT`; give it once per node.
    #[arg(long = "agent", global = true)]
    pub agents: Vec<AgentAddr>,
    /// Find both agents of a lab started with `nonstop-lab up`.
    #[arg(long, global = true)]
    pub lab: Option<String>,
    /// The pre-shared key file (default: `$NONSTOP_KEY_FILE`, or the lab's key with
    /// `--lab`).
    #[arg(long, global = true)]
    pub key_file: Option<std::path::PathBuf>,
    /// Network timeout per request, milliseconds.
    #[arg(long, global = true, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// What to do (nothing: open the TUI).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The interactive console (also what runs without a subcommand).
    Tui,
    /// Mode, epoch, VIP and heartbeat health of each node.
    Status {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: the master hands the VIP to the backup.
    Switchover {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// How long to wait for the backup to become master, milliseconds.
        #[arg(long, default_value_t = 5000)]
        wait_ms: u64,
    },
    /// Every session each agent knows (tuple, phase, bytes, seq/ack, record number).
    Sessions {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare both agents' effective settings (VIP, ports, timings, replication,
    /// key fingerprint, sync addresses) and name every mismatch; exit 1 if any.
    Check {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the agents' event logs.
    Events {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Keep following new events until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Inject a fault on one node's host (drills); see `heal` to undo.
    Inject(inject::InjectArgs),
    /// Remove injected faults from one node (`--node`) or both (`--all`).
    Heal(inject::HealArgs),
    /// Run a switchover drill written in TOML (scripts/drills/); builds its own lab
    /// unless --lab is given.
    Drill(crate::drill::DrillArgs),
    /// Join the lab's chat (VIP:7000) from the peer namespace with an ordinary TCP
    /// connection; shows its local port, since when it is up and its reconnects.
    Chat(chat::ChatArgs),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Command::Drill(args)) = &cli.command {
        if !cli.agents.is_empty() {
            anyhow::bail!("drill works on a lab: give --lab NAME or nothing (it builds one)");
        }
        return crate::drill::run(args, cli.lab.as_deref());
    }
    if let Some(Command::Chat(args)) = &cli.command {
        return chat::run(cli.lab.as_deref(), args);
    }
    let agents = crate::pair::resolve(&cli.agents, cli.lab.as_deref())?;
    if let Some(path) = cli.key_file.clone() {
        crate::client::set_key_file(path);
    } else if std::env::var_os(crate::client::KEY_FILE_ENV).is_none() {
        if let Some(lab) = &cli.lab {
            let dir = nonstop_lab::lab_dir(lab);
            crate::client::set_key_file(nonstop_lab::agent_config::key_path(&dir));
        }
    }
    let timeout = Duration::from_millis(cli.timeout_ms.max(1));
    let labels: Vec<String> = match &cli.lab {
        Some(_) => vec!["master".to_owned(), "backup".to_owned()],
        None => agents.iter().map(|a| a.addr.to_string()).collect(),
    };
    match cli.command {
        None | Some(Command::Tui) => {
            crate::tui::run(&agents, &labels, timeout)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Inject(args)) => inject::run_inject(&agents, timeout, &args),
        Some(Command::Heal(args)) => inject::run_heal(&agents, timeout, &args),
        Some(Command::Status { json }) => status::run(&agents, timeout, json),
        Some(Command::Switchover { json, wait_ms }) => {
            switchover::run(&agents, timeout, Duration::from_millis(wait_ms), json)
        }
        Some(Command::Sessions { json }) => sessions::run(&agents, timeout, json),
        Some(Command::Check { json }) => check::run(&agents, timeout, json),
        Some(Command::Events { json, follow }) => events::run(&agents, timeout, json, follow),
        Some(Command::Drill(args)) => crate::drill::run(&args, cli.lab.as_deref()),
        Some(Command::Chat(args)) => chat::run(cli.lab.as_deref(), &args),
    }
}
