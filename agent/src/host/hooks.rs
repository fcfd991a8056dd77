//! Notify hooks (keepalived's `notify_master`, `notify_backup`, `notify_fault`,
//! `notify_stop` and `notify`): commands run when this node changes mode.
//!
//! They follow the event log, not the failover driver: the driver emits the
//! transition and goes on, so a slow or hanging hook can never delay a heartbeat or
//! a takeover. Hooks run one after another in transition order (a marker written by
//! the `backup` hook never lands before the `master` one of the transition before),
//! each with `sh -c`, killed after `[notify] timeout_ms`. Failures and timeouts are
//! logged, emitted as events and counted ([`HookStats`]). The `stop` hook runs when
//! the agent shuts down — after the hooks of the transitions shutdown causes (a
//! master hands over and becomes backup) — and the agent waits for it (at most the
//! timeout).
//!
//! Environment of every hook: `NONSTOP_NODE`, `NONSTOP_STATE` (`master`, `backup`,
//! `fault`, `stop`), `NONSTOP_PREVIOUS`, `NONSTOP_EPOCH`, `NONSTOP_VIP`,
//! `NONSTOP_REASON`; `notify` also gets the state as its first argument.

use super::reload::Live;
use crate::events::EventLog;
use crate::shutdown::Shutdown;
use nonstop_shared::config::NotifyConfig;
use nonstop_shared::control::{EventKind, Transition};
use nonstop_shared::Mode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest the hooks follow events once shutdown has started.
const SHUTDOWN_EVENTS: Duration = Duration::from_secs(1);
/// Shutdown's transitions are over once no event came for this long.
const SHUTDOWN_QUIET: Duration = Duration::from_millis(200);

/// Counters of hook runs.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Hooks started.
    pub runs: AtomicU64,
    /// Hooks that exited non-zero, could not start, or were killed at the timeout.
    pub failures: AtomicU64,
    /// Of those, hooks killed at the timeout.
    pub timeouts: AtomicU64,
}

/// One hook to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// Which hook (`master`, …, `notify`), for logs.
    pub name: &'static str,
    /// Shell command.
    pub command: String,
    /// Extra positional arguments (`$1`…).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(&'static str, String)>,
}

/// What a transition means for hooks: the state they are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `master`, `backup`, `fault` or `stop`.
    pub state: &'static str,
    /// The mode before.
    pub previous: &'static str,
    /// Epoch after.
    pub epoch: u64,
    /// Why, in words.
    pub reason: String,
}

impl Change {
    /// The hooks' view of a mode transition; `None` for transitions into `startup`.
    pub fn of(transition: &Transition) -> Option<Change> {
        let state = match transition.to {
            Mode::Master => "master",
            Mode::Backup => "backup",
            Mode::Fault => "fault",
            Mode::Startup => return None,
        };
        Some(Change {
            state,
            previous: transition.from.as_str(),
            epoch: transition.epoch,
            reason: transition.cause.to_string(),
        })
    }
}

/// The hooks `notify` configures for `change`, in the order they run: the state's
/// own hook, then the catch-all.
pub fn plan(notify: &NotifyConfig, change: &Change, node: &str, vip: &str) -> Vec<HookRun> {
    let specific = match change.state {
        "master" => &notify.master,
        "backup" => &notify.backup,
        "fault" => &notify.fault,
        _ => &notify.stop,
    };
    let env = vec![
        ("NONSTOP_NODE", node.to_owned()),
        ("NONSTOP_STATE", change.state.to_owned()),
        ("NONSTOP_PREVIOUS", change.previous.to_owned()),
        ("NONSTOP_EPOCH", change.epoch.to_string()),
        ("NONSTOP_VIP", vip.to_owned()),
        ("NONSTOP_REASON", change.reason.clone()),
    ];
    let mut runs = Vec::new();
    if let Some(command) = specific {
        runs.push(HookRun {
            name: change.state,
            command: command.clone(),
            args: Vec::new(),
            env: env.clone(),
        });
    }
    if let Some(command) = &notify.notify {
        runs.push(HookRun {
            name: "notify",
            command: command.clone(),
            args: vec![change.state.to_owned()],
            env,
        });
    }
    runs
}

/// Runs the hooks for every transition this node makes, and the `stop` hook at
/// shutdown; returns once that is done.
pub async fn run(
    events: Arc<EventLog>,
    mut live: watch::Receiver<Live>,
    node: String,
    vip: String,
    stats: Arc<HookStats>,
    mut shutdown: Shutdown,
) {
    let (_, mut stream) = events.subscribe();
    let mut last = "startup";
    // After shutdown starts, the transitions it causes (a master's handover) still
    // get their hooks: events are taken until none came for a moment.
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        let event = match stopping {
            None => tokio::select! {
                received = stream.recv() => received,
                _ = shutdown.wait() => {
                    stopping = Some(tokio::time::Instant::now() + SHUTDOWN_EVENTS);
                    continue;
                }
            },
            Some(until) => {
                let quiet = tokio::time::Instant::now() + SHUTDOWN_QUIET;
                match tokio::time::timeout_at(quiet.min(until), stream.recv()).await {
                    Ok(received) => received,
                    Err(_) => break,
                }
            }
        };
        let transition = match event {
            Ok(event) => match event.kind {
                EventKind::ModeChanged(t) => t,
                _ => continue,
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("notify hooks: {n} events missed (hooks running slowly)");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        let Some(change) = Change::of(&transition) else {
            continue;
        };
        last = change.state;
        let notify = live.borrow_and_update().notify.clone();
        for hook in plan(&notify, &change, &node, &vip) {
            execute(&hook, &notify, &events, &stats).await;
        }
    }
    let notify = live.borrow().notify.clone();
    let change = Change {
        state: "stop",
        previous: last,
        epoch: 0,
        reason: "the agent is stopping".into(),
    };
    for hook in plan(&notify, &change, &node, &vip) {
        execute(&hook, &notify, &events, &stats).await;
    }
}

/// Runs one hook to its end or its timeout; logs, counts and reports failures.
async fn execute(hook: &HookRun, notify: &NotifyConfig, events: &EventLog, stats: &HookStats) {
    stats.runs.fetch_add(1, Ordering::Relaxed);
    let timeout = Duration::from_millis(notify.timeout_ms);
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&hook.command)
        .arg(format!("nonstop-notify-{}", hook.name))
        .args(&hook.args)
        .envs(hook.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        // Its own process group: a timeout kills the hook and whatever it started.
        .process_group(0);
    let failure = match command.spawn() {
        Err(e) => Some(format!("cannot start: {e}")),
        Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(format!("exited with {status}")),
            Ok(Err(e)) => Some(format!("cannot wait for it: {e}")),
            Err(_) => {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                if let Some(pid) = child.id() {
                    // SAFETY: plain syscall on the hook's own process group.
                    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                }
                let _ = child.kill().await;
                Some(format!("killed after {} ms", notify.timeout_ms))
            }
        },
    };
    match failure {
        None => tracing::info!(hook = hook.name, "notify hook ran"),
        Some(why) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(hook = hook.name, command = %hook.command, "notify hook failed: {why}");
            events.emit(EventKind::Error {
                detail: format!("notify hook `{}` failed: {why}", hook.name),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_shared::control::Cause;

    fn notify() -> NotifyConfig {
        NotifyConfig {
            master: Some("echo m".into()),
            fault: Some("echo f".into()),
            notify: Some("echo any".into()),
            timeout_ms: 200,
            ..NotifyConfig::default()
        }
    }

    fn transition(from: Mode, to: Mode) -> Transition {
        Transition {
            from,
            to,
            epoch: 4,
            cause: Cause::Switchover,
            at_unix_ms: 1,
        }
    }

    #[test]
    fn a_transition_runs_its_own_hook_then_the_catch_all_with_the_state() {
        let change = Change::of(&transition(Mode::Backup, Mode::Master)).expect("a change");
        let runs = plan(&notify(), &change, "n1", "198.18.1.100/24");
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].name, runs[0].command.as_str()),
            ("master", "echo m")
        );
        assert!(runs[0].args.is_empty());
        assert_eq!(
            (runs[1].name, runs[1].args.clone()),
            ("notify", vec!["master".to_owned()])
        );
        let env: std::collections::HashMap<_, _> = runs[0].env.iter().cloned().collect();
        assert_eq!(env["NONSTOP_STATE"], "master");
        assert_eq!(env["NONSTOP_PREVIOUS"], "backup");
        assert_eq!(env["NONSTOP_EPOCH"], "4");
        assert_eq!(env["NONSTOP_VIP"], "198.18.1.100/24");
        assert_eq!(env["NONSTOP_NODE"], "n1");
        assert_eq!(env["NONSTOP_REASON"], Cause::Switchover.to_string());
        // No backup hook configured: only the catch-all.
        let change = Change::of(&transition(Mode::Master, Mode::Backup)).expect("a change");
        let runs = plan(&notify(), &change, "n1", "v");
        assert_eq!(
            runs.iter().map(|r| r.name).collect::<Vec<_>>(),
            vec!["notify"]
        );
        assert!(Change::of(&transition(Mode::Backup, Mode::Startup)).is_none());
    }

    #[tokio::test]
    async fn shutdown_runs_the_hooks_of_its_own_transitions_then_stop() {
        let dir = std::env::temp_dir().join(format!("nonstop-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("markers");
        let config = nonstop_shared::config::AgentConfig::from_toml(&format!(
            r#"
node_id = "n1"
data_dir = "/tmp/nonstop-hooks-test"
[service]
interface = "eth0"
vip = "198.18.1.100/24"
ports = [7000]
[sync]
address = "198.19.1.1:7701"
peer = "198.19.1.2:7701"
[security]
key_file = "/k"
[notify]
notify = "echo $1 >> {}"
"#,
            file.display()
        ))
        .expect("config");
        let reloader = super::super::reload::Reloader::new(dir.join("x.toml"), config, None);
        let events = EventLog::new("n1");
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(run(
            Arc::clone(&events),
            reloader.subscribe(),
            "n1".into(),
            "198.18.1.100/24".into(),
            Arc::new(HookStats::default()),
            shutdown,
        ));
        tokio::task::yield_now().await;
        events.emit(EventKind::ModeChanged(transition(
            Mode::Startup,
            Mode::Master,
        )));
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.trigger();
        // The driver's handover comes just after the shutdown started.
        tokio::time::sleep(Duration::from_millis(20)).await;
        events.emit(EventKind::ModeChanged(transition(
            Mode::Master,
            Mode::Backup,
        )));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("hooks end")
            .expect("task");
        let text = std::fs::read_to_string(&file).expect("markers");
        assert_eq!(text, "master\nbackup\nstop\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed_at_its_timeout_and_counted() {
        let events = EventLog::new("n1");
        let stats = HookStats::default();
        let mut config = notify();
        config.timeout_ms = 100;
        let hook = HookRun {
            name: "master",
            command: "sleep 30".into(),
            args: Vec::new(),
            env: Vec::new(),
        };
        let began = std::time::Instant::now();
        execute(&hook, &config, &events, &stats).await;
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
        let failing = HookRun {
            command: "exit 3".into(),
            ..hook.clone()
        };
        execute(&failing, &config, &events, &stats).await;
        assert_eq!(stats.failures.load(Ordering::Relaxed), 2);
        let (history, _) = events.subscribe();
        assert!(history.iter().any(|e| matches!(&e.kind, EventKind::Error { detail } if detail.contains("killed after 100 ms"))));
        let ok = HookRun {
            command: "test \"$1\" = x && test \"$NONSTOP_STATE\" = master".into(),
            args: vec!["x".into()],
            env: vec![("NONSTOP_STATE", "master".into())],
            ..hook
        };
        execute(&ok, &config, &events, &stats).await;
        assert_eq!(stats.failures.load(Ordering::Relaxed), 2);
        assert_eq!(stats.runs.load(Ordering::Relaxed), 3);
    }
}
