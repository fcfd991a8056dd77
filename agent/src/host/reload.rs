//! SIGHUP: the agent re-reads its config file and applies what can change safely
//! while it runs — notify hooks, the health check, the log level, fault injection's
//! switch, the gratuitous ARP burst — and logs each key that only a restart applies. A file that does not
//! load (syntax, validation) is logged and ignored: the agent never dies of a
//! reload, and keeps its mode, its VIP and its sessions.

use super::logging::LogControl;
use nonstop_shared::config::{AgentConfig, CheckConfig, GarpConfig, InjectConfig, NotifyConfig};
use std::path::PathBuf;
use tokio::sync::watch;

/// The part of the config a running agent follows live.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// `[notify]`.
    pub notify: NotifyConfig,
    /// `[service.check]`.
    pub check: Option<CheckConfig>,
    /// `[log] level`.
    pub log_level: String,
    /// `[inject]`.
    pub inject: InjectConfig,
    /// `[garp]` (the next burst uses it).
    pub garp: GarpConfig,
}

impl Live {
    /// The live part of `config`.
    pub fn of(config: &AgentConfig) -> Live {
        Live {
            notify: config.notify.clone(),
            check: config.service.check.clone(),
            log_level: config.log.level.clone(),
            inject: config.inject.clone(),
            garp: config.garp.clone(),
        }
    }
}

/// Keys that differ between `old` and `new` and are only applied by a restart.
pub fn needs_restart(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differ = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    differ("node_id", old.node_id != new.node_id);
    differ("priority", old.priority != new.priority);
    differ("data_dir", old.data_dir != new.data_dir);
    differ("fence_command", old.fence_command != new.fence_command);
    let (mut a, mut b) = (old.service.clone(), new.service.clone());
    (a.check, b.check) = (None, None);
    differ("service", a != b);
    differ("sync", old.sync != new.sync);
    differ("control", old.control != new.control);
    differ("session", old.session != new.session);
    differ("security", old.security != new.security);
    keys
}

/// What one reload did, for the log and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Live sections that changed and were applied.
    pub applied: Vec<&'static str>,
    /// Keys that changed but need a restart.
    pub restart: Vec<&'static str>,
}

/// Which live sections differ.
pub fn live_changes(old: &Live, new: &Live) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.notify != new.notify {
        changed.push("notify");
    }
    if old.check != new.check {
        changed.push("service.check");
    }
    if old.log_level != new.log_level {
        changed.push("log.level");
    }
    if old.inject != new.inject {
        changed.push("inject");
    }
    if old.garp != new.garp {
        changed.push("garp");
    }
    changed
}

/// Applies reloaded configs: publishes the live part, changes the log level.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    current: AgentConfig,
    live: watch::Sender<Live>,
    log: Option<LogControl>,
}

impl Reloader {
    /// A reloader for the agent started with `config` from `path`; subscribe to the
    /// live part with [`Reloader::subscribe`].
    pub fn new(path: PathBuf, config: AgentConfig, log: Option<LogControl>) -> Reloader {
        let (live, _) = watch::channel(Live::of(&config));
        Reloader {
            path,
            current: config,
            live,
            log,
        }
    }

    /// Follows the live part of the config.
    pub fn subscribe(&self) -> watch::Receiver<Live> {
        self.live.subscribe()
    }

    /// Takes `new` (already loaded and validated): applies the live part, returns
    /// what changed. The restart-only keys keep their running values.
    pub fn apply(&mut self, new: AgentConfig) -> Result<Outcome, String> {
        let live = Live::of(&new);
        let applied = live_changes(&self.live.borrow(), &live);
        if applied.contains(&"log.level") {
            if let Some(log) = &self.log {
                if !log.set_level(&live.log_level)? {
                    tracing::info!("log.level changed, but RUST_LOG overrides it");
                }
            }
        }
        let restart = needs_restart(&self.current, &new);
        self.live.send_replace(live);
        // Restart-only keys keep the values the agent runs with, so the next reload
        // still reports them.
        let mut kept = self.current.clone();
        kept.notify = new.notify;
        kept.service.check = new.service.check;
        kept.log = new.log;
        kept.inject = new.inject;
        kept.garp = new.garp;
        self.current = kept;
        Ok(Outcome { applied, restart })
    }

    /// Reloads the file once and logs the outcome; never fails the agent.
    pub fn reload(&mut self) {
        let new = match AgentConfig::load(&self.path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; keeping the running configuration");
                return;
            }
        };
        match self.apply(new) {
            Ok(outcome) => {
                tracing::info!(
                    applied = ?outcome.applied,
                    "SIGHUP: configuration reloaded from {}",
                    self.path.display()
                );
                for key in outcome.restart {
                    tracing::warn!("SIGHUP: `{key}` changed; it takes effect at the next restart");
                }
            }
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the running configuration"),
        }
    }

    /// Reloads on every SIGHUP until the process ends. Installs the handler at once
    /// (SIGHUP's default action would kill the agent).
    pub fn spawn(mut self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                self.reload();
            }
        }))
    }
}

/// Calls `apply` with every new live config (not the first): for settings that are
/// plain switches.
pub fn follow(
    mut live: watch::Receiver<Live>,
    mut apply: impl FnMut(&Live) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    live.mark_unchanged();
    tokio::spawn(async move {
        while live.changed().await.is_ok() {
            apply(&live.borrow_and_update());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
node_id = "master"
data_dir = "/tmp/nonstop-reload-test"
[service]
interface = "eth0"
vip = "198.18.1.100/24"
ports = [7000]
[sync]
address = "198.19.1.1:7701"
peer = "198.19.1.2:7701"
[security]
key_file = "/etc/nonstop/key"
"#;

    fn config(extra: &str) -> AgentConfig {
        AgentConfig::from_toml(&format!("{BASE}{extra}")).expect("valid")
    }

    #[test]
    fn live_sections_apply_and_restart_only_keys_are_named() {
        let mut reloader = Reloader::new(PathBuf::from("/nonexistent"), config(""), None);
        let live = reloader.subscribe();
        let new = config(
            "[notify]\nmaster = \"true\"\n[inject]\nenabled = true\n[log]\nlevel = \"debug\"\n",
        );
        let outcome = reloader.apply(new).expect("applies");
        assert_eq!(outcome.applied, vec!["notify", "log.level", "inject"]);
        assert!(outcome.restart.is_empty());
        assert_eq!(live.borrow().notify.master.as_deref(), Some("true"));
        assert!(live.borrow().inject.enabled);

        let mut moved = config(
            "[notify]\nmaster = \"true\"\n[inject]\nenabled = true\n[log]\nlevel = \"debug\"\n",
        );
        moved.priority = 7;
        moved.garp.count = 9;
        moved.sync.heartbeat_ms = 50;
        moved.service.ports = vec![7001];
        let outcome = reloader.apply(moved.clone()).expect("applies");
        assert_eq!(outcome.applied, vec!["garp"]);
        assert_eq!(live.borrow().garp.count, 9);
        assert_eq!(outcome.restart, vec!["priority", "service", "sync"]);
        // Still reported next time: the agent runs with the old values.
        let again = reloader.apply(moved).expect("applies");
        assert_eq!((again.applied.len(), again.restart.len()), (0, 3));
    }

    #[test]
    fn the_health_check_is_live_the_service_is_not() {
        let old = config("");
        let mut new = old.clone();
        new.service.check =
            config("")
                .service
                .check
                .or(Some(nonstop_shared::config::CheckConfig {
                    command: None,
                    tcp: true,
                    tcp_port: None,
                    interval_ms: 100,
                    timeout_ms: 100,
                    rise: 1,
                    fall: 1,
                }));
        assert!(needs_restart(&old, &new).is_empty());
        assert_eq!(
            live_changes(&Live::of(&old), &Live::of(&new)),
            vec!["service.check"]
        );
    }

    #[test]
    fn a_bad_file_is_logged_and_the_running_config_kept() {
        let dir = std::env::temp_dir().join(format!("nonstop-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("agent.toml");
        std::fs::write(&path, "this is not toml [").expect("write");
        let mut reloader = Reloader::new(path.clone(), config(""), None);
        let live = reloader.subscribe();
        reloader.reload();
        assert_eq!(*live.borrow(), Live::of(&config("")));
        std::fs::write(&path, format!("{BASE}[notify]\nbackup = \"true\"\n")).expect("write");
        reloader.reload();
        assert_eq!(live.borrow().notify.backup.as_deref(), Some("true"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
