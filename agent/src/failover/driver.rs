//! The failover driver: the thin async shell around [`Machine`].
//!
//! It owns the heartbeat UDP socket on the sync link, the machine's timer, the netlink
//! handle for the VIP, the gratuitous-ARP burst and the fence command, and answers the
//! control API's [`ControlCommand`]s. Every decision is the machine's; this file only
//! carries inputs in and actions out.
//!
//! Every heartbeat goes out inside an authenticated envelope
//! ([`HeartbeatAuth`]); a datagram whose tag does not verify, or that is a replay, is
//! counted and dropped before it can reach the machine, so it can never change a mode
//! or move the VIP.

use crate::control::ControlCommand;
use crate::events::{unix_ms, EventLog};
use crate::failover::machine::{Action, Machine, Settings};
use crate::shutdown::Shutdown;
use crate::vip::{garp_frame, GarpSender, LinkInfo, Netlink};
use anyhow::Context;
use nonstop_shared::auth::{HeartbeatAuth, HeartbeatAuthError, Key};
use nonstop_shared::config::AgentConfig;
use nonstop_shared::control::{EventKind, NodeStatus, Transition};
use nonstop_shared::heartbeat::Heartbeat;
use nonstop_shared::Mode;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Everything the driver needs from the rest of the agent.
pub struct DriverParts {
    /// The validated configuration.
    pub config: AgentConfig,
    /// The event log.
    pub events: Arc<EventLog>,
    /// Commands from the control API.
    pub commands: mpsc::Receiver<ControlCommand>,
    /// The shutdown signal.
    pub shutdown: Shutdown,
    /// Where the driver publishes this node's mode and epoch.
    pub mode_tx: tokio::sync::watch::Sender<(Mode, u64)>,
    /// Replication counters: the acknowledged position goes into heartbeats.
    pub replication: Option<Arc<crate::replication::stats::ReplicationStats>>,
    /// The pre-shared key (heartbeat authentication).
    pub key: Key,
    /// The config's live part (SIGHUP): the GARP burst follows it.
    pub live: Option<tokio::sync::watch::Receiver<crate::host::reload::Live>>,
}

/// The running failover driver.
pub struct Driver {
    config: AgentConfig,
    machine: Machine,
    events: Arc<EventLog>,
    commands: mpsc::Receiver<ControlCommand>,
    shutdown: Shutdown,
    socket: UdpSocket,
    netlink: Netlink,
    link: LinkInfo,
    vip_held: bool,
    garp_task: Option<JoinHandle<()>>,
    garps_sent: Arc<AtomicU64>,
    fence_results: mpsc::Sender<(bool, String)>,
    fence_results_rx: mpsc::Receiver<(bool, String)>,
    started: Instant,
    last_transition: Option<Transition>,
    epoch_file: PathBuf,
    mode_tx: tokio::sync::watch::Sender<(Mode, u64)>,
    replication: Option<Arc<crate::replication::stats::ReplicationStats>>,
    auth: HeartbeatAuth,
    live: Option<tokio::sync::watch::Receiver<crate::host::reload::Live>>,
}

impl Driver {
    /// Binds the heartbeat socket, reads the persisted epoch and cleans up a VIP left
    /// behind by a previous run (a restarted node must not serve before deciding).
    pub async fn start(parts: DriverParts) -> anyhow::Result<Driver> {
        let DriverParts {
            config,
            events,
            commands,
            shutdown,
            mode_tx,
            replication,
            key,
            live,
        } = parts;
        let boot = u64::from_be_bytes(
            nonstop_shared::auth::random_bytes::<8>()
                .map_err(|e| anyhow::anyhow!("no random boot nonce: {e}"))?,
        );
        let auth = HeartbeatAuth::new(&key, boot);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        let epoch_file = config.data_dir.join("epoch");
        let persisted = read_epoch(&epoch_file)?;
        let epoch = persisted.epoch;
        let socket = UdpSocket::bind(config.sync.address)
            .await
            .with_context(|| format!("cannot bind heartbeat socket on {}", config.sync.address))?;
        let netlink = Netlink::connect().context("cannot open netlink")?;
        let link = netlink
            .link(&config.service.interface)
            .await
            .with_context(|| format!("service interface {}", config.service.interface))?;
        let vip = config.service.vip;
        let resume =
            persisted.mode == Some(Mode::Master) && netlink.has_address(link.index, vip).await?;
        if !resume && netlink.remove_vip(link.index, vip).await? {
            events.emit(EventKind::VipRemoved {
                vip: vip.to_string(),
            });
            tracing::warn!(%vip, "removed a VIP left over from a previous run");
        }
        let settings = Settings {
            node_id: config.node_id.clone(),
            priority: config.priority,
            heartbeat: Duration::from_millis(config.sync.heartbeat_ms),
            misses: config.sync.misses,
            fence: config.fence_command.is_some(),
        };
        let now = Instant::now();
        let machine = if resume {
            tracing::info!(epoch, "was master and still holds the VIP: resuming");
            Machine::resume_as_master(settings, epoch, now)
        } else {
            Machine::new(settings, epoch, now)
        };
        let (fence_results, fence_results_rx) = mpsc::channel(4);
        tracing::info!(
            node = %config.node_id, epoch, heartbeat_ms = config.sync.heartbeat_ms,
            misses = config.sync.misses, peer = %config.sync.peer, "failover manager starting"
        );
        Ok(Driver {
            config,
            machine,
            events,
            commands,
            shutdown,
            socket,
            netlink,
            link,
            vip_held: false,
            garp_task: None,
            garps_sent: Arc::new(AtomicU64::new(0)),
            fence_results,
            fence_results_rx,
            started: now,
            last_transition: None,
            epoch_file,
            mode_tx,
            replication,
            auth,
            live,
        })
    }

    /// Runs until shutdown; on shutdown a master hands over and drops the VIP.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 2048];
        let link_poll = Duration::from_millis(self.config.sync.heartbeat_ms.clamp(20, 250));
        let mut link_timer = tokio::time::interval(link_poll);
        link_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            if let Some(stats) = &self.replication {
                let acked = stats.acked_seq.load(Ordering::Relaxed);
                self.machine.set_repl_pos(acked);
            }
            self.carry_out_actions().await;
            let deadline = tokio::time::Instant::from_std(self.machine.poll_timeout());
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    self.machine.handle_timeout(Instant::now());
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&buf[..len], from),
                    Err(e) => tracing::debug!(error = %e, "heartbeat receive error"),
                },
                Some(command) = self.commands.recv() => self.on_command(command),
                _ = link_timer.tick() => self.poll_service_link().await,
                Some((ok, detail)) = self.fence_results_rx.recv() => {
                    self.events.emit(EventKind::FenceRan { ok, detail: detail.clone() });
                    self.machine.fence_finished(ok, detail, Instant::now());
                }
                _ = shutdown.wait() => break,
            }
        }
        self.machine.shutdown(Instant::now());
        self.carry_out_actions().await;
        // Whatever the mode, never leave the VIP behind.
        if let Err(e) = self.release_vip().await {
            tracing::error!(error = %e, "could not remove the VIP at shutdown");
        }
        Ok(())
    }

    fn on_datagram(&mut self, bytes: &[u8], from: std::net::SocketAddr) {
        if from.ip() != self.config.sync.peer.ip() {
            self.machine.counters_mut().foreign_heartbeats += 1;
            tracing::warn!(%from, "heartbeat port datagram from an unexpected address dropped");
            return;
        }
        let accepted = match self.auth.open(bytes) {
            Ok(accepted) => accepted,
            Err(e) => {
                let counters = self.machine.counters_mut();
                let count = match e {
                    HeartbeatAuthError::Replayed { .. } => {
                        counters.heartbeats_replayed += 1;
                        counters.heartbeats_replayed
                    }
                    HeartbeatAuthError::Unconfirmed => {
                        counters.heartbeats_unconfirmed += 1;
                        counters.heartbeats_unconfirmed
                    }
                    // Not even an envelope: malformed, as before authentication.
                    HeartbeatAuthError::Malformed(_) => {
                        counters.malformed_heartbeats += 1;
                        counters.malformed_heartbeats
                    }
                    HeartbeatAuthError::BadTag => {
                        counters.heartbeats_rejected += 1;
                        counters.heartbeats_rejected
                    }
                };
                if count <= 10 || count.is_power_of_two() {
                    tracing::warn!(%from, error = %e, count, "heartbeat dropped");
                }
                return;
            }
        };
        let earlier = accepted.earlier.as_deref();
        for inner in earlier.into_iter().chain([accepted.heartbeat]) {
            self.on_heartbeat_bytes(inner, from);
        }
    }

    fn on_heartbeat_bytes(&mut self, inner: &[u8], from: std::net::SocketAddr) {
        match Heartbeat::decode(inner) {
            Ok(hb) => self.machine.handle_heartbeat(hb, Instant::now()),
            Err(e) => {
                let counters = self.machine.counters_mut();
                counters.malformed_heartbeats += 1;
                let count = counters.malformed_heartbeats;
                if count <= 10 || count.is_power_of_two() {
                    tracing::warn!(%from, error = %e, count, "malformed heartbeat dropped");
                }
            }
        }
    }

    fn on_command(&mut self, command: ControlCommand) {
        match command {
            ControlCommand::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ControlCommand::SetHealth(healthy) => {
                self.machine.set_healthy(healthy, Instant::now());
            }
            ControlCommand::Switchover(reply) => {
                let peer = self.config.sync.peer;
                let result = self
                    .machine
                    .request_switchover(Instant::now())
                    .map(|()| format!("handing over to the backup at {peer}"))
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
        }
    }

    async fn poll_service_link(&mut self) {
        match self.netlink.link(&self.config.service.interface).await {
            Ok(link) => {
                let up = link.oper_up;
                self.link = link;
                self.machine.service_link_changed(up, Instant::now());
            }
            Err(e) => {
                tracing::warn!(error = %e, "service interface lookup failed");
                self.machine.service_link_changed(false, Instant::now());
            }
        }
    }

    async fn carry_out_actions(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::SendHeartbeat(hb) => {
                    let sealed = self.auth.seal(&hb.encode());
                    if let Err(e) = self.socket.send_to(&sealed, self.config.sync.peer).await {
                        tracing::debug!(error = %e, "heartbeat send failed");
                    }
                }
                Action::AddVip => {
                    if let Err(e) = self.take_vip().await {
                        let detail = format!("{e:#}");
                        self.events.emit(EventKind::Error {
                            detail: detail.clone(),
                        });
                        self.machine.vip_failed(detail, Instant::now());
                    }
                }
                Action::KeepVip => {
                    // Re-added if it went meanwhile (idempotent), never announced.
                    let vip = self.config.service.vip;
                    match self.netlink.add_vip(self.link.index, vip).await {
                        Ok(_) => self.vip_held = true,
                        Err(e) => {
                            let detail = format!("{e:#}");
                            self.events.emit(EventKind::Error {
                                detail: detail.clone(),
                            });
                            self.machine.vip_failed(detail, Instant::now());
                        }
                    }
                }
                Action::RemoveVip => {
                    if let Err(e) = self.release_vip().await {
                        self.events.emit(EventKind::Error {
                            detail: format!("{e:#}"),
                        });
                    }
                }
                Action::Announce => {
                    if self.vip_held {
                        if let Err(e) = self.start_garp_burst() {
                            self.events.emit(EventKind::Error {
                                detail: format!("{e:#}"),
                            });
                        }
                    }
                }
                Action::RunFence => self.run_fence(),
                Action::Transitioned {
                    from,
                    to,
                    epoch,
                    cause,
                } => {
                    let transition = Transition {
                        from,
                        to,
                        epoch,
                        cause,
                        at_unix_ms: unix_ms(),
                    };
                    if let Err(e) = write_epoch(&self.epoch_file, epoch, to) {
                        tracing::error!(error = %e, "cannot persist epoch");
                    }
                    self.events.emit_at(
                        EventKind::ModeChanged(transition.clone()),
                        transition.at_unix_ms,
                    );
                    let _ = self.mode_tx.send((to, epoch));
                    self.last_transition = Some(transition);
                }
            }
        }
    }

    async fn take_vip(&mut self) -> anyhow::Result<()> {
        let vip = self.config.service.vip;
        self.netlink.add_vip(self.link.index, vip).await?;
        self.vip_held = true;
        self.events.emit(EventKind::VipAdded {
            vip: vip.to_string(),
        });
        self.start_garp_burst()
    }

    async fn release_vip(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.garp_task.take() {
            task.abort();
        }
        let vip = self.config.service.vip;
        let removed = self.netlink.remove_vip(self.link.index, vip).await?;
        self.vip_held = false;
        if removed {
            self.events.emit(EventKind::VipRemoved {
                vip: vip.to_string(),
            });
        }
        Ok(())
    }

    /// Announces the VIP: the first frame at once, the rest spaced out so that one
    /// lost frame does not strand the VIP. (Current Linux applies a gratuitous ARP at
    /// once; older kernels ignore updates within `locktime`, 1 s, which the spacing
    /// also covers.)
    fn start_garp_burst(&mut self) -> anyhow::Result<()> {
        let sender = GarpSender::open(self.link.index)
            .with_context(|| format!("raw socket on {}", self.config.service.interface))?;
        let frame = garp_frame(self.link.mac, self.config.service.vip.addr);
        let garp = self.live.as_ref().map_or_else(
            || self.config.garp.clone(),
            |live| live.borrow().garp.clone(),
        );
        let count = garp.count;
        let interval = Duration::from_millis(garp.interval_ms);
        let events = Arc::clone(&self.events);
        let sent = Arc::clone(&self.garps_sent);
        if let Some(task) = self.garp_task.take() {
            task.abort();
        }
        self.garp_task = Some(tokio::spawn(async move {
            for number in 1..=count {
                match sender.send(&frame) {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        events.emit(EventKind::GarpSent { number });
                    }
                    Err(e) => {
                        events.emit(EventKind::Error {
                            detail: format!("gratuitous ARP {number} failed: {e}"),
                        });
                    }
                }
                if number < count {
                    tokio::time::sleep(interval).await;
                }
            }
        }));
        Ok(())
    }

    fn run_fence(&self) {
        let Some(command) = self.config.fence_command.clone() else {
            let _ = self
                .fence_results
                .try_send((true, "no fence command".into()));
            return;
        };
        let results = self.fence_results.clone();
        let limit = self.config.sync.fence_timeout();
        tokio::spawn(async move {
            tracing::info!(%command, "running fence command");
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .kill_on_drop(true)
                .status();
            let outcome = match tokio::time::timeout(limit, run).await {
                Ok(Ok(status)) if status.success() => (true, status.to_string()),
                Ok(Ok(status)) => (false, status.to_string()),
                Ok(Err(e)) => (false, format!("cannot run: {e}")),
                Err(_) => (false, format!("timed out after {limit:?}")),
            };
            let _ = results.send(outcome).await;
        });
    }

    /// The failover manager's part of the status (mode, epoch, peer, heartbeat
    /// counters); [`crate::status`] adds the other managers' parts.
    fn status(&self) -> NodeStatus {
        let now = Instant::now();
        let mut counters = self.machine.counters().clone();
        counters.garps_sent = self.garps_sent.load(Ordering::Relaxed);
        let missed = if self.machine.mode() == Mode::Startup && !self.machine.peer_alive(now) {
            0
        } else {
            self.machine.missed_heartbeats(now)
        };
        NodeStatus {
            node_id: self.config.node_id.clone(),
            mode: self.machine.mode(),
            epoch: self.machine.epoch(),
            priority: self.config.priority,
            vip: self.config.service.vip.to_string(),
            vip_held: self.vip_held,
            heartbeat_ms: self.config.sync.heartbeat_ms,
            misses: self.config.sync.misses,
            missed_heartbeats: missed,
            peer: self.machine.peer_view(now),
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            pid: std::process::id(),
            last_transition: self.last_transition.clone(),
            counters,
            replication: Default::default(),
            resources: Default::default(),
            app: None,
            // Filled in by the control server from the health check's own view.
            check: None,
        }
    }
}

/// The mode a previous run recorded in `data_dir/epoch` (None if unknown).
pub fn persisted_mode(data_dir: &std::path::Path) -> Option<Mode> {
    read_epoch(&data_dir.join("epoch")).ok()?.mode
}

/// What a previous run left in `data_dir/epoch`: the epoch and the last mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Persisted {
    epoch: u64,
    mode: Option<Mode>,
}

fn read_epoch(path: &std::path::Path) -> anyhow::Result<Persisted> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Persisted {
                epoch: 0,
                mode: None,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut words = text.split_whitespace();
    let epoch = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("{} does not hold an epoch number", path.display()))?;
    let mode = match words.next() {
        Some("master") => Some(Mode::Master),
        Some("backup") => Some(Mode::Backup),
        Some("fault") => Some(Mode::Fault),
        Some("startup") => Some(Mode::Startup),
        _ => None,
    };
    Ok(Persisted { epoch, mode })
}

/// Persists epoch and mode atomically (write, fsync, rename) so a restart never goes
/// back in epoch and knows whether it was master.
fn write_epoch(path: &std::path::Path, epoch: u64, mode: Mode) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{epoch} {mode}")?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_file_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("nonstop-epoch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("epoch");
        assert_eq!(
            read_epoch(&path).expect("absent is 0"),
            Persisted {
                epoch: 0,
                mode: None
            }
        );
        write_epoch(&path, 42, Mode::Master).expect("write");
        assert_eq!(
            read_epoch(&path).expect("read"),
            Persisted {
                epoch: 42,
                mode: Some(Mode::Master)
            }
        );
        std::fs::write(&path, "7\n").expect("old format");
        assert_eq!(
            read_epoch(&path).expect("read"),
            Persisted {
                epoch: 7,
                mode: None
            }
        );
        std::fs::write(&path, "forty-two").expect("write");
        let err = read_epoch(&path).expect_err("garbage");
        assert!(format!("{err:#}").contains("epoch"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
