//! The service's health check (`[service.check]`): a command (healthy when it exits
//! 0 in time) or a TCP connect to the service port on this host, every
//! `interval_ms`; `fall` failures in a row make the service unhealthy, `rise`
//! successes in a row healthy again ([`Health`], sans-IO).
//!
//! The verdict goes to the failover machine (carried in heartbeats, so the peer
//! knows it: an unhealthy node loses elections and is never handed over to, see
//! `failover::machine`), into `status` ([`CheckView`]) and the event log. A master
//! whose service is unhealthy while the backup's is healthy hands over with a
//! drained switchover (sessions intact); with no healthy backup it stays master —
//! the only one left. A TCP check is skipped on a node that stops its service while
//! not master (`on_backup = "stop"`): there is nothing to check until it promotes.

use super::reload::Live;
use crate::control::{self, ControlCommand, ControlHandle};
use crate::shutdown::Shutdown;
use nonstop_shared::config::{CheckConfig, OnBackup};
use nonstop_shared::control::{CheckView, EventKind, Reply};
use nonstop_shared::Mode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Rise/fall counting of check results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    rise: u32,
    fall: u32,
    healthy: Option<bool>,
    /// Successes (> 0) or failures (< 0) in a row.
    streak: i64,
}

impl Health {
    /// No verdict yet.
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: None,
            streak: 0,
        }
    }

    /// The current verdict (`None` until decided).
    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }

    /// Successes (> 0) or failures (< 0) in a row.
    pub fn streak(&self) -> i64 {
        self.streak
    }

    /// Takes one result; returns the new verdict when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        self.streak = match (ok, self.streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        let verdict = if self.streak >= i64::from(self.rise) {
            Some(true)
        } else if self.streak <= -i64::from(self.fall) {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.healthy != Some(v) => {
                self.healthy = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// What one check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `sh -c COMMAND`; healthy on exit 0.
    Command(String),
    /// A TCP connection to this address.
    Tcp(SocketAddr),
}

impl Probe {
    /// The probe `check` describes (TCP to 127.0.0.1 on `tcp_port` or the first
    /// service port).
    pub fn of(check: &CheckConfig, ports: &[u16]) -> Probe {
        match &check.command {
            Some(command) => Probe::Command(command.clone()),
            None => {
                let port = check
                    .tcp_port
                    .or(ports.first().copied())
                    .unwrap_or_default();
                Probe::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
            }
        }
    }

    /// In words, for status.
    pub fn describe(&self) -> String {
        match self {
            Probe::Command(c) => format!("command: {c}"),
            Probe::Tcp(addr) => format!("tcp {addr}"),
        }
    }

    /// Runs the probe once, bounded by `timeout`.
    pub async fn run(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Probe::Tcp(addr) => {
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                    Err(_) => Err(format!(
                        "connect {addr}: no answer in {} ms",
                        timeout.as_millis()
                    )),
                }
            }
            Probe::Command(command) => {
                let mut child = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("cannot start the check: {e}"))?;
                match tokio::time::timeout(timeout, child.wait()).await {
                    Ok(Ok(status)) if status.success() => Ok(()),
                    Ok(Ok(status)) => Err(format!("check {status}")),
                    Ok(Err(e)) => Err(format!("cannot wait for the check: {e}")),
                    Err(_) => {
                        if let Some(pid) = child.id() {
                            // SAFETY: plain syscall on the check's own process group.
                            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                        }
                        let _ = child.kill().await;
                        Err(format!("check killed after {} ms", timeout.as_millis()))
                    }
                }
            }
        }
    }
}

/// Shortest time between two handovers started by the check.
const HANDOVER_RETRY: Duration = Duration::from_secs(5);

/// Everything the check task needs.
pub struct CheckParts {
    /// The live config (the check follows SIGHUP reloads).
    pub live: watch::Receiver<Live>,
    /// The service ports (default TCP check port).
    pub ports: Vec<u16>,
    /// What the service does on a non-master node.
    pub on_backup: OnBackup,
    /// This node's mode and epoch.
    pub mode: watch::Receiver<(Mode, u64)>,
    /// The control API's handle: status, switchover, events, the driver.
    pub control: ControlHandle,
    /// Where the view for `status` is published.
    pub view: watch::Sender<Option<CheckView>>,
    /// The agent's shutdown.
    pub shutdown: Shutdown,
}

/// Runs the configured check until shutdown.
pub async fn run(parts: CheckParts) {
    let CheckParts {
        mut live,
        ports,
        on_backup,
        mode,
        control,
        view,
        mut shutdown,
    } = parts;
    let mut config: Option<CheckConfig> = None;
    let mut health = Health::new(1, 1);
    let mut handovers = 0u64;
    let mut last_handover: Option<Instant> = None;
    let mut reported_unhealthy = false;
    loop {
        let wanted = live.borrow_and_update().check.clone();
        if wanted != config {
            config = wanted;
            health = config
                .as_ref()
                .map_or(Health::new(1, 1), |c| Health::new(c.rise, c.fall));
            view.send_replace(None);
        }
        let Some(check) = config.clone() else {
            if reported_unhealthy {
                reported_unhealthy = false;
                let _ = control.commands.send(ControlCommand::SetHealth(true)).await;
            }
            tokio::select! {
                changed = live.changed() => if changed.is_err() { return },
                _ = shutdown.wait() => return,
            }
            continue;
        };
        let probe = Probe::of(&check, &ports);
        let master = mode.borrow().0 == Mode::Master;
        let last = if matches!(probe, Probe::Tcp(_)) && !master && on_backup == OnBackup::Stop {
            "not checked: the service is stopped on a node that is not master".to_owned()
        } else {
            let result = probe.run(Duration::from_millis(check.timeout_ms)).await;
            let last = match &result {
                Ok(()) => "ok".to_owned(),
                Err(why) => why.clone(),
            };
            if let Some(healthy) = health.observe(result.is_ok()) {
                reported_unhealthy = !healthy;
                let _ = control
                    .commands
                    .send(ControlCommand::SetHealth(healthy))
                    .await;
                control.events.emit(EventKind::Check {
                    healthy,
                    detail: format!("{} ({last})", probe.describe()),
                });
            }
            last
        };
        if health.healthy() == Some(false)
            && mode.borrow().0 == Mode::Master
            && last_handover.is_none_or(|at| at.elapsed() >= HANDOVER_RETRY)
            && peer_can_take_over(&control).await
        {
            last_handover = Some(Instant::now());
            handovers += 1;
            let detail = match control::switchover(&control).await {
                Reply::Ack { message } => format!("handing over: {message}"),
                Reply::Error { message } => format!("handover refused: {message}"),
                other => format!("handover: {other:?}"),
            };
            tracing::warn!("service unhealthy on the master: {detail}");
            control.events.emit(EventKind::Check {
                healthy: false,
                detail,
            });
        }
        view.send_replace(Some(CheckView {
            probe: probe.describe(),
            healthy: health.healthy(),
            streak: health.streak(),
            last,
            handovers,
        }));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(check.interval_ms)) => {}
            changed = live.changed() => if changed.is_err() { return },
            _ = shutdown.wait() => return,
        }
    }
}

/// Whether the peer is a live backup whose service passes its check.
async fn peer_can_take_over(control: &ControlHandle) -> bool {
    crate::switchover::ask(&control.commands, ControlCommand::Status)
        .await
        .is_ok_and(|s: nonstop_shared::control::NodeStatus| {
            s.peer.mode == Some(Mode::Backup)
                && s.peer.healthy == Some(true)
                && s.missed_heartbeats < s.misses
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_in_a_row_make_it_unhealthy_and_rise_successes_healthy() {
        let mut h = Health::new(2, 3);
        assert_eq!(h.healthy(), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert_eq!(h.observe(true), None, "no change, no news");
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None, "a success breaks the streak");
        assert_eq!((h.observe(false), h.observe(false)), (None, None));
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.streak(), -3);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert_eq!(h.healthy(), Some(true));
    }

    #[test]
    fn the_probe_is_the_command_or_the_first_service_port_on_localhost() {
        let mut check = CheckConfig {
            command: Some("true".into()),
            tcp: false,
            tcp_port: None,
            interval_ms: 100,
            timeout_ms: 100,
            rise: 1,
            fall: 1,
        };
        assert_eq!(Probe::of(&check, &[7000]), Probe::Command("true".into()));
        check.command = None;
        check.tcp = true;
        assert_eq!(
            Probe::of(&check, &[7000, 7001]).describe(),
            "tcp 127.0.0.1:7000"
        );
        check.tcp_port = Some(9000);
        assert_eq!(Probe::of(&check, &[7000]).describe(), "tcp 127.0.0.1:9000");
    }

    #[tokio::test]
    async fn probes_report_success_failure_and_timeout() {
        let t = Duration::from_millis(300);
        assert_eq!(Probe::Command("exit 0".into()).run(t).await, Ok(()));
        let err = Probe::Command("exit 4".into())
            .run(t)
            .await
            .expect_err("fails");
        assert!(err.contains('4'), "{err}");
        let began = Instant::now();
        let err = Probe::Command("sleep 30".into())
            .run(t)
            .await
            .expect_err("hangs");
        assert!(err.contains("killed after 300 ms"), "{err}");
        assert!(began.elapsed() < Duration::from_secs(5));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(Probe::Tcp(addr).run(t).await, Ok(()));
        drop(listener);
        assert!(Probe::Tcp(addr).run(t).await.is_err());
    }
}
