//! Starting, stopping and finding the two `nonstop-agent` processes of a lab.
//!
//! Each agent runs as `ip netns exec <ns> nonstop-agent --config <dir>/<node>.toml`
//! in its own process group, with stdout and stderr appended to `<dir>/<node>.log`
//! and its pid in `<dir>/<node>.pid` (second line: a hash of the config it started
//! with, to tell when `up` has changed it). `RUST_LOG` is inherited.

use crate::lab::Lab;
use crate::naming::Node;
use crate::netns;
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The agent binary's file name.
pub const AGENT_BIN: &str = "nonstop-agent";
/// Environment variable naming the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "NONSTOP_AGENT_BIN";
/// How long the master gets to start before the backup (so it wins the startup).
pub const MASTER_HEAD_START: Duration = Duration::from_millis(300);
/// How long [`Lab::start_agents`] waits for both control ports.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Lab::stop_agent`] waits for a terminating signal to take effect.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Finds `nonstop-agent`: next to the running executable, in its parent directory
/// (test binaries live in `target/debug/deps`), then `$NONSTOP_AGENT_BIN`, then `PATH`.
pub fn find_agent_binary() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(AGENT_BIN);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
            dir = d.parent();
        }
    }
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV).filter(|p| !p.is_empty()) {
        let candidate = PathBuf::from(path);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        tried.push(format!("${AGENT_BIN_ENV}={}", candidate.display()));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(AGENT_BIN);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        tried.push("$PATH".to_owned());
    }
    bail!(
        "cannot find {AGENT_BIN} (tried {}); build it with `cargo build -p nonstop-agent` \
         or set {AGENT_BIN_ENV}",
        tried.join(", ")
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// FNV-1a of a config file's contents (0 when unreadable), recorded in the pid file.
fn config_hash(path: &Path) -> u32 {
    crate::naming::fnv1a32(&std::fs::read(path).unwrap_or_default())
}

/// Whether `signal` ends a process (as opposed to stopping or continuing it).
fn terminates(signal: i32) -> bool {
    ![
        libc::SIGSTOP,
        libc::SIGCONT,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        0,
    ]
    .contains(&signal)
}

/// The last `lines` lines of a file ("" when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Lab {
    /// The pid of a node's agent if it is alive (from its pid file, checked against
    /// `/proc` so a recycled pid is not mistaken for the agent).
    pub fn agent_pid(&self, node: Node) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_path(node))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(AGENT_BIN);
        (ours && netns::pid_alive(pid)).then_some(pid)
    }

    /// Whether a node's agent is running with a config that has changed on disk since
    /// it started (an `up` with other flags): it needs a restart to apply it.
    pub fn agent_config_stale(&self, node: Node) -> bool {
        if self.agent_pid(node).is_none() {
            return false;
        }
        let recorded = std::fs::read_to_string(self.pid_path(node)).unwrap_or_default();
        let now = format!("config {:08x}", config_hash(&self.config_path(node)));
        !recorded.lines().any(|line| line == now)
    }

    /// Starts a node's agent unless it is already running; returns its pid. Does not
    /// wait for it to be ready (see [`Lab::wait_agent_ready`]).
    pub fn start_agent(&self, node: Node) -> Result<u32> {
        if let Some(pid) = self.agent_pid(node) {
            return Ok(pid);
        }
        let config = self.config_path(node);
        if !config.exists() {
            bail!(
                "{} is missing: run `nonstop-lab up --name {}` first",
                config.display(),
                self.name
            );
        }
        let ns = self.namespace(node.as_str());
        if !netns::netns_exists(&ns) {
            bail!(
                "namespace {ns} does not exist: run `nonstop-lab up --name {}`",
                self.name
            );
        }
        let bin = find_agent_binary()?;
        let log_path = self.log_path(node);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            log,
            "--- nonstop-lab: starting {node} agent ({}) at unix time {}.{:03} ---",
            bin.display(),
            now.as_secs(),
            now.subsec_millis()
        )
        .with_context(|| format!("cannot write {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log_path.display()))?;
        let mut child = Command::new("ip")
            .arg("netns")
            .arg("exec")
            .arg(&ns)
            .arg(&bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} in {ns}", bin.display()))?;
        let pid = child.id();
        let pid_path = self.pid_path(node);
        std::fs::write(
            &pid_path,
            format!("{pid}\nconfig {:08x}\n", config_hash(&config)),
        )
        .with_context(|| format!("cannot write {}", pid_path.display()))?;
        // Reap it whenever it exits, so it never lingers as a zombie of ours.
        std::thread::Builder::new()
            .name(format!("reap-{node}-agent"))
            .spawn(move || {
                let _ = child.wait();
            })
            .context("cannot start the agent reaper thread")?;
        self.write_status()?;
        Ok(pid)
    }

    /// Waits until a node's agent accepts a TCP connection on its control port (from
    /// inside its namespace). Fails early, with the log's tail, if the agent exits.
    pub fn wait_agent_ready(&self, node: Node, timeout: Duration) -> Result<()> {
        let ns = self.namespace(node.as_str());
        let deadline = Instant::now() + timeout;
        loop {
            let alive = self.agent_pid(node).is_some();
            if alive
                && netns::connect_in_netns(&ns, self.control_addr(node), Duration::from_millis(200))
                    .is_ok()
            {
                return Ok(());
            }
            if !alive || Instant::now() >= deadline {
                let what = if alive {
                    format!(
                        "did not accept connections on {} within {timeout:?}",
                        self.control_addr(node)
                    )
                } else {
                    "exited".to_owned()
                };
                bail!(
                    "the {node} agent {what}; last lines of {}:\n{}",
                    self.log_path(node).display(),
                    tail(&self.log_path(node), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts both agents, master first with a 300 ms head start, and waits (≤ 5 s)
    /// until both control ports accept connections.
    pub fn start_agents(&self) -> Result<()> {
        let master_was_running = self.agent_pid(Node::Master).is_some();
        self.start_agent(Node::Master)?;
        if !master_was_running && self.agent_pid(Node::Backup).is_none() {
            std::thread::sleep(MASTER_HEAD_START);
        }
        self.start_agent(Node::Backup)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in Node::ALL {
            self.wait_agent_ready(node, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// Sends `signal` to a node's agent (only the agent process, not its children:
    /// SIGKILL models an agent crash; see [`Lab::kill_all`] for a host crash). For a
    /// terminating signal, waits (≤ 5 s) until it has exited. For SIGSTOP/SIGCONT,
    /// returns at once. No error if the agent is not running.
    pub fn stop_agent(&self, node: Node, signal: i32) -> Result<()> {
        let Some(pid) = self.agent_pid(node) else {
            let _ = std::fs::remove_file(self.pid_path(node));
            return Ok(());
        };
        netns::signal(pid, signal)?;
        if !terminates(signal) {
            return Ok(());
        }
        let left = netns::wait_gone(&[pid], STOP_TIMEOUT);
        if !left.is_empty() {
            bail!("the {node} agent (pid {pid}) is still running {STOP_TIMEOUT:?} after signal {signal}");
        }
        let _ = std::fs::remove_file(self.pid_path(node));
        self.write_status()?;
        Ok(())
    }

    /// Stops both agents: SIGTERM, then SIGKILL for one that does not exit in time.
    pub fn stop_agents(&self) -> Result<()> {
        for node in Node::ALL {
            if self.stop_agent(node, libc::SIGTERM).is_err() {
                self.stop_agent(node, libc::SIGKILL)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_continue_do_not_terminate() {
        assert!(terminates(libc::SIGTERM));
        assert!(terminates(libc::SIGKILL));
        assert!(!terminates(libc::SIGSTOP));
        assert!(!terminates(libc::SIGCONT));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("nonstop-lab-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("log");
        std::fs::write(&file, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&file, 2), "b\nc");
        assert_eq!(tail(&file, 10), "a\nb\nc");
        assert_eq!(tail(&dir.join("missing"), 3), "");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
