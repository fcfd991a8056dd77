//! `nonstop-lab`: the command line over the `nonstop_lab` library.
//!
//! ```text
//! nonstop-lab up     [--name N] [--peers K] [--agents] [--service CMD | --no-service] [--heartbeat-ms MS] [--misses M] [--replica cold|hot]
//! nonstop-lab down   [--name N | --all-with-prefix P]
//! nonstop-lab status [--name N] [--json]
//! nonstop-lab exec   [--name N] HOST -- CMD...
//! nonstop-lab agents start|stop|kill|restart [--name N] [--node master|backup]
//! nonstop-lab fault  cut-sync|heal-sync|sync-loss PCT|link-down NODE|link-up NODE [--name N]
//! ```
//!
//! Everything is done by the library; this file only parses and prints.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nonstop_lab::{Lab, LabSpec, Node};
use std::process::{Command, ExitCode};

/// Three-host lab for nonstop in network namespaces (needs root).
#[derive(Debug, Parser)]
#[command(name = "nonstop-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab, or repair it to spec (idempotent).
    Up {
        /// Lab name, [a-z0-9]{1,12}.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Number of peers on the service LAN.
        #[arg(long, default_value_t = 1)]
        peers: usize,
        /// Also start both agents and wait until their control ports answer.
        #[arg(long)]
        agents: bool,
        /// Service command line the agents manage (run with `sh -c`). Default: the
        /// project's echo service on port 7000 (`nonstop-echo`, next to this binary).
        #[arg(long, conflicts_with = "no_service")]
        service: Option<String>,
        /// Run no service under the agents.
        #[arg(long)]
        no_service: bool,
        /// Agents' heartbeat interval in milliseconds.
        #[arg(long, default_value_t = 100)]
        heartbeat_ms: u64,
        /// Missed heartbeats before an agent declares its peer dead.
        #[arg(long, default_value_t = 3)]
        misses: u32,
        /// `cold` (default) or `hot`: a hot replica runs the service on the backup too
        /// and mirrors every session in it (design §9).
        #[arg(long, default_value = "cold")]
        replica: nonstop_shared::config::ReplicaMode,
    },
    /// Remove the lab: processes, namespaces, links, rules, directory.
    Down {
        /// Lab name.
        #[arg(long, default_value = "demo", conflicts_with = "all_with_prefix")]
        name: String,
        /// Remove every lab whose namespaces start with nonstop-<P> instead.
        #[arg(long, value_name = "P")]
        all_with_prefix: Option<String>,
    },
    /// Show the lab's namespaces, addresses, agents and faults.
    Status {
        /// Lab name.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Print JSON (the same as status.json).
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a host (peer, peer2, …, master, backup, switch).
    Exec {
        /// Lab name.
        #[arg(long, default_value = "demo")]
        name: String,
        /// The host.
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Start, stop (SIGTERM), kill (SIGKILL) or restart the agents.
    Agents {
        /// What to do.
        action: AgentAction,
        /// Lab name.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Only this node (default: both).
        #[arg(long)]
        node: Option<Node>,
    },
    /// Inject or remove a fault.
    Fault {
        /// What to do.
        #[command(subcommand)]
        action: FaultAction,
        /// Lab name.
        #[arg(long, default_value = "demo", global = true)]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AgentAction {
    Start,
    Stop,
    Kill,
    Restart,
}

#[derive(Debug, Subcommand)]
enum FaultAction {
    /// Drop everything on the sync link (nftables, switch namespace).
    CutSync,
    /// Remove any sync-link fault.
    HealSync,
    /// Drop PCT percent of sync-link frames at random.
    SyncLoss {
        /// Percentage, 0..=100.
        pct: u8,
    },
    /// Set a node's switch ports (service and sync) down.
    LinkDown {
        /// master or backup.
        node: Node,
    },
    /// Set a node's switch ports back up.
    LinkUp {
        /// master or backup.
        node: Node,
    },
}

/// `println!` that ignores a closed stdout (`nonstop-lab status | head`).
macro_rules! say {
    (no_newline $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), "{}", $($arg)*);
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    // `scripts/package` asks for the man pages with NONSTOP_GENERATE_MAN=DIR.
    if let Some(code) =
        nonstop_shared::man::generate_if_asked(<Cli as clap::CommandFactory>::command(), "1")
    {
        return code;
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nonstop-lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn nodes(node: Option<Node>) -> Vec<Node> {
    node.map_or_else(|| Node::ALL.to_vec(), |n| vec![n])
}

fn start(lab: &Lab, node: Option<Node>) -> Result<()> {
    match node {
        None => lab.start_agents()?,
        Some(node) => {
            lab.start_agent(node)?;
            lab.wait_agent_ready(node, nonstop_lab::agents::READY_TIMEOUT)?;
        }
    }
    for node in nodes(node) {
        if let Some(pid) = lab.agent_pid(node) {
            say!(
                "{node} agent running, pid {pid}, log {}",
                lab.log_path(node).display()
            );
        }
    }
    Ok(())
}

fn stop(lab: &Lab, node: Option<Node>, signal: i32) -> Result<()> {
    for node in nodes(node) {
        let pid = lab.agent_pid(node);
        if signal == libc::SIGTERM && lab.stop_agent(node, signal).is_err() {
            eprintln!("{node} agent ignored SIGTERM; sending SIGKILL");
            lab.stop_agent(node, libc::SIGKILL)?;
        } else {
            lab.stop_agent(node, signal)?;
        }
        match pid {
            Some(pid) => say!("{node} agent (pid {pid}) stopped"),
            None => say!("{node} agent was not running"),
        }
    }
    Ok(())
}

/// The echo service next to this binary, if it was built.
fn default_service() -> Option<String> {
    let echo = std::env::current_exe().ok()?.parent()?.join("nonstop-echo");
    echo.exists()
        .then(|| format!("{} --listen 0.0.0.0:7000", echo.display()))
}

fn run(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Up {
            name,
            peers,
            agents,
            service,
            no_service,
            heartbeat_ms,
            misses,
            replica,
        } => {
            let service = if no_service {
                None
            } else {
                service.or_else(default_service)
            };
            let spec = LabSpec {
                name,
                peers,
                heartbeat_ms,
                misses,
                service,
            };
            let lab = Lab::up(&spec)?;
            lab.set_replica(replica)?;
            let stale: Vec<Node> = Node::ALL
                .into_iter()
                .filter(|&node| lab.agent_config_stale(node))
                .collect();
            if agents {
                for &node in &stale {
                    say!("{node} agent config changed: restarting it");
                    stop(&lab, Some(node), libc::SIGTERM)?;
                }
                start(&lab, None)?;
            } else {
                for node in stale {
                    say!(
                        "{node} agent config changed: `nonstop-lab agents restart --name {}` to apply",
                        lab.name()
                    );
                }
            }
            say!(no_newline lab.status()?.render());
            say!(
                "  try: nonstop-lab exec --name {} peer -- ping -c1 {}",
                lab.name(),
                lab.service_ip(Node::Master)
            );
        }
        Cmd::Down {
            name,
            all_with_prefix,
        } => match all_with_prefix {
            Some(prefix) => {
                let removed = Lab::down_all_with_prefix(&prefix)?;
                say!("removed {} lab(s): {}", removed.len(), removed.join(" "));
            }
            None => {
                Lab::down(&name)?;
                say!("lab {name} is down");
            }
        },
        Cmd::Status { name, json } => {
            let lab = Lab::open(&name)?;
            let status = lab.status()?;
            if lab.dir().exists() {
                lab.write_status()?;
            }
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&status).context("cannot encode the status")?
                );
            } else {
                say!(no_newline status.render());
            }
        }
        Cmd::Exec { name, host, cmd } => {
            let lab = Lab::open(&name)?;
            let ns = lab.namespace(&lab.host(&host)?.to_string());
            let status = Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&cmd)
                .status()
                .with_context(|| format!("cannot run `ip netns exec {ns} ...`"))?;
            let code = match status.code() {
                Some(code) => code,
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    128 + status.signal().unwrap_or(0)
                }
            };
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Cmd::Agents { action, name, node } => {
            let lab = Lab::open(&name)?;
            match action {
                AgentAction::Start => start(&lab, node)?,
                AgentAction::Stop => stop(&lab, node, libc::SIGTERM)?,
                AgentAction::Kill => stop(&lab, node, libc::SIGKILL)?,
                AgentAction::Restart => {
                    stop(&lab, node, libc::SIGTERM)?;
                    start(&lab, node)?;
                }
            }
        }
        Cmd::Fault { action, name } => {
            let lab = Lab::open(&name)?;
            match action {
                FaultAction::CutSync => lab.cut_sync()?,
                FaultAction::HealSync => lab.heal_sync()?,
                FaultAction::SyncLoss { pct } => lab.sync_loss(pct)?,
                FaultAction::LinkDown { node } => lab.set_host_links(node, false)?,
                FaultAction::LinkUp { node } => lab.set_host_links(node, true)?,
            }
            let faults = lab.active_faults()?;
            say!(
                "faults: {}",
                if faults.is_empty() {
                    "none".to_owned()
                } else {
                    faults.join("; ")
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
