//! The application manager: runs the configured service command on the master,
//! stops it (or keeps it parked) elsewhere, restarts it if it exits on its own, and
//! forwards its output to the agent's log.
//!
//! The service runs as `sh -c COMMAND` in its own process group, so stopping it
//! (SIGTERM, then SIGKILL after [`STOP_GRACE`]) reaches every process it started.

use crate::events::EventLog;
use crate::shutdown::Shutdown;
use nonstop_shared::config::OnBackup;
use nonstop_shared::control::{AppView, EventKind};
use nonstop_shared::Mode;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a stopping service gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Pause before restarting a service that exited on its own.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Shared view of the managed service, for `status`.
#[derive(Debug, Clone, Default)]
pub struct AppHandle(Arc<Mutex<AppView>>);

impl AppHandle {
    /// The current view.
    pub fn view(&self) -> AppView {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut AppView)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Whether the service should run in `mode` under `policy`.
pub fn should_run(mode: Mode, policy: OnBackup) -> bool {
    mode == Mode::Master || (policy == OnBackup::Park && mode != Mode::Fault)
}

/// The manager task.
pub struct AppManager {
    command: String,
    policy: OnBackup,
    events: Arc<EventLog>,
    handle: AppHandle,
    mode: watch::Receiver<(Mode, u64)>,
    shutdown: Shutdown,
    exits: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

impl AppManager {
    /// Also tells `exits` each time the service dies while it should be running
    /// (a crash), so its sessions can be restored into the restarted service.
    pub fn notify_exits(mut self, exits: tokio::sync::mpsc::UnboundedSender<()>) -> AppManager {
        self.exits = Some(exits);
        self
    }

    /// A manager for `command`; returns it and the handle for status reports.
    pub fn new(
        command: String,
        policy: OnBackup,
        events: Arc<EventLog>,
        mode: watch::Receiver<(Mode, u64)>,
        shutdown: Shutdown,
    ) -> (AppManager, AppHandle) {
        let handle = AppHandle::default();
        handle.update(|v| v.command = command.clone());
        let manager = AppManager {
            command,
            policy,
            events,
            handle: handle.clone(),
            mode,
            shutdown,
            exits: None,
        };
        (manager, handle)
    }

    /// Runs until shutdown, then stops the service.
    pub async fn run(mut self) {
        let mut child: Option<Child> = None;
        let mut restart_at: Option<tokio::time::Instant> = None;
        loop {
            let want = should_run(self.mode.borrow().0, self.policy);
            if want
                && child.is_none()
                && restart_at.is_none_or(|at| at <= tokio::time::Instant::now())
            {
                restart_at = None;
                child = self.start();
                if child.is_none() {
                    restart_at = Some(tokio::time::Instant::now() + RESTART_DELAY);
                }
            }
            if !want {
                restart_at = None;
                if let Some(running) = child.take() {
                    self.stop(running, "node is no longer master").await;
                }
            }
            let sleep_until = restart_at
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = self.shutdown.wait() => {
                    if let Some(running) = child.take() {
                        self.stop(running, "agent shutdown").await;
                    }
                    return;
                }
                changed = self.mode.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                exited = wait_child(&mut child) => {
                    // The shell may have left children behind (still holding the
                    // service's port): the whole group goes with its leader.
                    child = None;
                    if let Some(pid) = self.handle.view().pid {
                        signal_group(pid, libc::SIGKILL);
                    }
                    let detail = match exited {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    let still_wanted = should_run(self.mode.borrow().0, self.policy);
                    self.handle.update(|v| {
                        v.pid = None;
                        v.last_exit = Some(detail.clone());
                        if still_wanted {
                            v.restarts += 1;
                        }
                    });
                    if still_wanted {
                        if let Some(exits) = &self.exits {
                            let _ = exits.send(());
                        }
                    }
                    let what = if still_wanted {
                        restart_at = Some(tokio::time::Instant::now() + RESTART_DELAY);
                        format!("service exited ({detail}); restarting in {RESTART_DELAY:?}")
                    } else {
                        format!("service exited ({detail})")
                    };
                    self.events.emit(EventKind::App { detail: what });
                }
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    fn start(&self) -> Option<Child> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match command.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(forward_lines(out, "stdout"));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(forward_lines(err, "stderr"));
                }
                self.handle.update(|v| v.pid = pid);
                self.events.emit(EventKind::App {
                    detail: format!("started service (pid {})", pid.unwrap_or(0)),
                });
                Some(child)
            }
            Err(e) => {
                self.events.emit(EventKind::Error {
                    detail: format!("cannot start the service `{}`: {e}", self.command),
                });
                None
            }
        }
    }

    async fn stop(&self, mut child: Child, why: &str) {
        let Some(pid) = child.id() else { return };
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        signal_group(pid, libc::SIGTERM);
        // A process a switchover's hand-over stopped acts on SIGTERM only once
        // continued.
        signal_group(pid, libc::SIGCONT);
        let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            Err(_) => {
                signal_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
                "killed after the grace period".to_owned()
            }
        };
        // `sh -c` does not always exec the service: the shell may be gone while the
        // service itself (its child, same group) still holds the port — a new
        // service started at once (a quick switch back) would fail to listen.
        if !group_gone_by(pid, deadline).await {
            signal_group(pid, libc::SIGKILL);
            let _ = group_gone_by(pid, tokio::time::Instant::now() + STOP_GRACE).await;
        }
        self.handle.update(|v| {
            v.pid = None;
            v.last_exit = Some(status.clone());
        });
        self.events.emit(EventKind::App {
            detail: format!("stopped service (pid {pid}, {why}): {status}"),
        });
    }
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// Waits until no process of group `pid` is left, at most until `deadline`; true if
/// none is.
async fn group_gone_by(pid: u32, deadline: tokio::time::Instant) -> bool {
    loop {
        if !group_alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a live process of group `pid` exists (zombies do not count: an orphaned
/// service's zombie waits for whoever reaps it, holding nothing).
fn group_alive(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 1..)) else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        pgrp == Some(pid) && state != "Z" && state != "X"
    })
}

fn signal_group(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain syscall; a negative pid addresses the process group.
        unsafe { libc::kill(-pid, signal) };
    }
}

async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(stream: R, which: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "service", stream = which, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    #[test]
    fn runs_on_the_master_and_on_a_parked_backup_only() {
        assert!(should_run(Mode::Master, OnBackup::Stop));
        assert!(!should_run(Mode::Backup, OnBackup::Stop));
        assert!(!should_run(Mode::Startup, OnBackup::Stop));
        assert!(should_run(Mode::Backup, OnBackup::Park));
        assert!(!should_run(Mode::Fault, OnBackup::Park));
    }

    #[tokio::test]
    async fn starts_on_promotion_restarts_after_a_crash_and_stops_on_demotion() {
        let (trigger, shutdown) = shutdown::channel();
        let (mode_tx, mode_rx) = watch::channel((Mode::Backup, 1));
        let events = EventLog::new("t");
        let (manager, handle) =
            AppManager::new("sleep 30".into(), OnBackup::Stop, events, mode_rx, shutdown);
        let task = tokio::spawn(manager.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(handle.view().pid, None, "not started on a backup");
        mode_tx.send((Mode::Master, 2)).expect("send");
        let pid = wait_pid(&handle).await;
        // A crash: the manager restarts it.
        signal_group(pid, libc::SIGKILL);
        tokio::time::sleep(RESTART_DELAY + Duration::from_millis(300)).await;
        let view = handle.view();
        assert_eq!(view.restarts, 1);
        let again = view.pid.expect("restarted");
        assert_ne!(again, pid);
        // Demotion stops it.
        mode_tx.send((Mode::Backup, 3)).expect("send");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(handle.view().pid, None);
        assert!(!std::path::Path::new(&format!("/proc/{again}")).exists() || is_zombie(again));
        trigger.trigger();
        let _ = task.await;
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_service_the_shell_left_behind() {
        let (trigger, shutdown) = shutdown::channel();
        let (mode_tx, mode_rx) = watch::channel((Mode::Master, 1));
        let events = EventLog::new("t");
        // The shell forks the service (no exec), which ignores SIGTERM: the shell dies
        // at once, the service would live on holding its port.
        let command = "sh -c \"trap '' TERM; exec sleep 30\"; true".to_owned();
        let (manager, handle) = AppManager::new(command, OnBackup::Stop, events, mode_rx, shutdown);
        let task = tokio::spawn(manager.run());
        let pid = wait_pid(&handle).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(group_alive(pid));
        mode_tx.send((Mode::Backup, 2)).expect("send");
        let stopped = tokio::time::Instant::now();
        while handle.view().pid.is_some() {
            assert!(stopped.elapsed() < STOP_GRACE * 3, "stop never returned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !group_alive(pid),
            "no process of the service's group outlives its stop"
        );
        trigger.trigger();
        let _ = task.await;
    }

    async fn wait_pid(handle: &AppHandle) -> u32 {
        for _ in 0..50 {
            if let Some(pid) = handle.view().pid {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("service never started");
    }

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    }
}
