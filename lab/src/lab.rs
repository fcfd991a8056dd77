//! [`Lab`], a handle on one lab, and [`LabSpec`], what `up` builds.
//!
//! This file holds the handle itself, its paths and addresses, and running commands
//! on its hosts. Building and removing a lab is in [`crate::topology`], agents in
//! [`crate::agents`], failure injection in [`crate::faults`], and what a lab looks like
//! right now in [`crate::status`].

use crate::agent_config::AgentKnobs;
use crate::naming::{self, AddressPlan, Host, Node, CONTROL_PORT};
use crate::netns;
use crate::status::LabStatus;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Parent of every lab directory unless `NONSTOP_LAB_DIR` says otherwise.
pub const DEFAULT_LAB_ROOT: &str = "/run/nonstop-lab";

/// The parent of the lab directories: `$NONSTOP_LAB_DIR` or `/run/nonstop-lab`.
pub fn lab_root() -> PathBuf {
    match std::env::var_os("NONSTOP_LAB_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_LAB_ROOT),
    }
}

/// The directory of lab `name` (configs, logs, pid files, `status.json`).
pub fn lab_dir(name: &str) -> PathBuf {
    lab_root().join(name)
}

/// What [`Lab::up`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Lab name, `[a-z0-9]{1,12}`.
    pub name: String,
    /// Number of peers on the service LAN (1..=90).
    pub peers: usize,
    /// Agents' heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before an agent declares its peer dead.
    pub misses: u32,
    /// Service command the agents manage (`sh -c`), if any.
    pub service: Option<String>,
}

impl Default for LabSpec {
    /// Lab `demo`, one peer, 100 ms heartbeats, 3 misses, no service command.
    fn default() -> Self {
        LabSpec {
            name: "demo".to_owned(),
            peers: 1,
            heartbeat_ms: 100,
            misses: 3,
            service: None,
        }
    }
}

impl LabSpec {
    /// The default spec with another name.
    pub fn new(name: &str) -> LabSpec {
        LabSpec {
            name: name.to_owned(),
            ..LabSpec::default()
        }
    }

    /// The knobs that go into the agent configs.
    pub(crate) fn knobs(&self) -> AgentKnobs {
        AgentKnobs {
            heartbeat_ms: self.heartbeat_ms,
            misses: self.misses,
            service: self.service.clone(),
            replica: Default::default(),
        }
    }
}

/// A handle on a lab that exists (made by [`Lab::up`] or [`Lab::open`]).
///
/// The handle is plain data; every query looks at the live system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    pub(crate) name: String,
    pub(crate) plan: AddressPlan,
    pub(crate) dir: PathBuf,
    pub(crate) peers: usize,
}

impl Lab {
    /// A handle without touching the system (callers have validated `name`).
    pub(crate) fn handle(name: &str, peers: usize) -> Lab {
        Lab {
            name: name.to_owned(),
            plan: AddressPlan::for_name(name),
            dir: lab_dir(name),
            peers,
        }
    }

    /// Opens an existing lab: its `status.json`, or failing that its namespaces.
    pub fn open(name: &str) -> Result<Lab> {
        naming::validate_name(name)?;
        let dir = lab_dir(name);
        let status_path = dir.join(crate::status::STATUS_FILE);
        match std::fs::read_to_string(&status_path) {
            Ok(text) => {
                let status: LabStatus = serde_json::from_str(&text)
                    .with_context(|| format!("cannot parse {}", status_path.display()))?;
                Ok(Lab::handle(name, status.peers.len()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let hosts = crate::topology::existing_hosts(name)?;
                if hosts.is_empty() {
                    bail!(
                        "lab `{name}` is not up (no {} and no {}* namespaces); \
                         run `nonstop-lab up --name {name}`",
                        status_path.display(),
                        naming::namespace_prefix(name)
                    );
                }
                let peers = hosts
                    .iter()
                    .filter_map(|h| match h {
                        Host::Peer(k) => Some(*k),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                Ok(Lab::handle(name, peers))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", status_path.display())),
        }
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lab index `L` (third octet of both networks).
    pub fn index(&self) -> u8 {
        self.plan.index
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of peers.
    pub fn peers(&self) -> usize {
        self.peers
    }

    /// The address plan.
    pub fn plan(&self) -> AddressPlan {
        self.plan
    }

    /// The namespace of `host` (`"master"` → `nonstop-<name>-master`). Not checked:
    /// see [`Lab::host`] for that.
    pub fn namespace(&self, host: &str) -> String {
        naming::namespace(&self.name, host)
    }

    /// Every host of this lab: switch, master, backup, peers.
    pub fn hosts(&self) -> Vec<Host> {
        naming::hosts(self.peers)
    }

    /// Parses `host` and checks that this lab has it (`peer3` needs three peers).
    pub fn host(&self, host: &str) -> Result<Host> {
        let parsed: Host = host.parse()?;
        if let Host::Peer(k) = parsed {
            if k > self.peers {
                bail!(
                    "lab `{}` has {} peer(s); there is no `{host}`",
                    self.name,
                    self.peers
                );
            }
        }
        Ok(parsed)
    }

    /// The namespace of a checked host, failing if it does not exist on the system.
    fn live_namespace(&self, host: &str) -> Result<String> {
        let parsed = self.host(host)?;
        let ns = self.namespace(&parsed.to_string());
        if !netns::netns_exists(&ns) {
            bail!(
                "namespace {ns} does not exist: is lab `{}` up? (`nonstop-lab up --name {}`)",
                self.name,
                self.name
            );
        }
        Ok(ns)
    }

    /// `ip netns exec NS argv…` with the given stdio.
    fn command(&self, host: &str, argv: &[&str]) -> Result<Command> {
        let Some((program, args)) = argv.split_first() else {
            bail!("no command given to run on `{host}`");
        };
        let ns = self.live_namespace(host)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, program]).args(args);
        Ok(cmd)
    }

    /// Runs `argv` on `host` and captures its output. A non-zero exit is not an error
    /// here (look at `status`); see [`Lab::exec_ok`].
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Output> {
        let mut cmd = self.command(host, argv)?;
        cmd.stdin(Stdio::null());
        cmd.output().with_context(|| {
            format!(
                "cannot run {} on {host}",
                netns::command_line(argv[0], &argv[1..])
            )
        })
    }

    /// Runs `argv` on `host`; fails unless it exits 0. Returns its stdout.
    pub fn exec_ok(&self, host: &str, argv: &[&str]) -> Result<String> {
        let out = self.exec(host, argv)?;
        if !out.status.success() {
            bail!(
                "`{}` on {host} failed ({}): {}",
                netns::command_line(argv[0], &argv[1..]),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `argv` on `host` with stdin and stdout piped and stderr inherited. The
    /// caller owns the child (kill and wait for it; `down` SIGKILLs it regardless).
    pub fn spawn(&self, host: &str, argv: &[&str]) -> Result<Child> {
        let mut cmd = self.command(host, argv)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.spawn().with_context(|| {
            format!(
                "cannot start {} on {host}",
                netns::command_line(argv[0], &argv[1..])
            )
        })
    }

    /// The virtual IP (`198.18.L.100`).
    pub fn vip(&self) -> Ipv4Addr {
        self.plan.vip()
    }

    /// A node's own service-LAN address (`198.18.L.1` / `.2`).
    pub fn service_ip(&self, node: Node) -> Ipv4Addr {
        self.plan.service_ip(node)
    }

    /// Peer `k`'s address, 1-based like the host names (`peer_ip(1)` is `peer`'s
    /// `198.18.L.10`, `peer_ip(2)` is `peer2`'s `.11`; 0 is taken as 1).
    pub fn peer_ip(&self, k: usize) -> Ipv4Addr {
        self.plan.peer_ip(k)
    }

    /// A node's sync-link address (`198.19.L.1` / `.2`).
    pub fn sync_ip(&self, node: Node) -> Ipv4Addr {
        self.plan.sync_ip(node)
    }

    /// The agent's control address as seen from inside its own namespace
    /// (`127.0.0.1:7700`); connect with [`Lab::connect`] or [`netns::connect_in_netns`].
    pub fn control_addr(&self, _node: Node) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, CONTROL_PORT))
    }

    /// The agent's metrics address inside its own namespace, as its config says
    /// (`127.0.0.1:9477` as the lab writes it), or None if metrics are off.
    pub fn metrics_addr(&self, node: Node) -> Option<SocketAddr> {
        nonstop_shared::config::AgentConfig::load(&self.config_path(node))
            .ok()?
            .metrics
            .listen
    }

    /// The agent's control address on the sync link (`198.19.L.x:7700`), reachable
    /// from the other node.
    pub fn control_sync_addr(&self, node: Node) -> SocketAddr {
        SocketAddr::from((self.plan.sync_ip(node), CONTROL_PORT))
    }

    /// Connects a TCP stream from inside `host`'s namespace.
    pub fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<std::net::TcpStream> {
        let ns = self.live_namespace(host)?;
        Ok(netns::connect_in_netns(&ns, addr, timeout)?)
    }

    /// Binds a TCP listener inside `host`'s namespace.
    pub fn listen(&self, host: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
        let ns = self.live_namespace(host)?;
        Ok(netns::listen_in_netns(&ns, addr)?)
    }

    /// Whether `ip` answers TCP from `host` within `timeout` (see [`netns::tcp_probe`]):
    /// a reachability check that needs no `ping`.
    pub fn reachable(
        &self,
        host: &str,
        ip: Ipv4Addr,
        timeout: std::time::Duration,
    ) -> Result<bool> {
        let ns = self.live_namespace(host)?;
        Ok(netns::tcp_probe(&ns, ip, timeout))
    }

    /// The config file of a node's agent (`<dir>/master.toml`).
    pub fn config_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{node}.toml"))
    }

    /// Sets `service.replica` (design §9) in both agents' configs (`up --replica`);
    /// running agents apply it at their next start.
    pub fn set_replica(&self, mode: nonstop_shared::config::ReplicaMode) -> Result<()> {
        for node in Node::ALL {
            let path = self.config_path(node);
            let mut config = nonstop_shared::config::AgentConfig::load(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if config.service.replica == mode {
                continue;
            }
            config.service.replica = mode;
            std::fs::write(&path, config.to_toml())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// The `service.replica` of the master's agent config (`cold` if unreadable).
    pub fn replica(&self) -> nonstop_shared::config::ReplicaMode {
        nonstop_shared::config::AgentConfig::load(&self.config_path(Node::Master))
            .map(|c| c.service.replica)
            .unwrap_or_default()
    }

    /// The log of a node's agent, stdout and stderr (`<dir>/master.log`).
    pub fn log_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{node}.log"))
    }

    /// The pid file of a node's agent (`<dir>/master.pid`).
    pub fn pid_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{node}.pid"))
    }
}
