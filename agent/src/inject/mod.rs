//! Fault injection on this agent's own host (design §6), for drills and demos.
//!
//! The console sends `{"cmd":"inject","fault":…}`; the control server calls
//! [`Injector::inject`] and replies with the message it returns. Every fault uses a
//! real mechanism on this host only:
//!
//! | fault | mechanism |
//! |---|---|
//! | `kill_agent` | SIGKILL of this process 100 ms after replying (a thread of ours) |
//! | `freeze_agent` | detached helper: SIGSTOP in 100 ms, SIGCONT after `seconds` |
//! | `links_down` | detached helper: service and sync interfaces down in 100 ms, up after `seconds` |
//! | `cut_sync`, `loss` | nftables table `inet nonstop_fault` ([`firewall`]) |
//! | `delay` | NFQUEUE `session.queue + 100` served by a delayer thread ([`delayer`]) |
//! | `kill_app` | SIGKILL of the processes running `service.command` ([`process`]) |
//! | `drop_record` | the replication sender skips the next record with payload ([`RecordFault`]) |
//! | `heal_all` | removes all of the above that is still in place |
//!
//! Faults that kill, freeze or cut off the agent act 100 ms after `inject` returns,
//! so the reply reaches the console first. The firewall faults coexist (a cut sync
//! link plus loss on the service link): the injector keeps the set of active ones and
//! re-renders the whole table on each change.
//!
//! Cleanup: [`Injector::new`] removes leftovers of an earlier run (our table, our
//! delay chains); [`Injector::heal_all_blocking`] removes everything at shutdown, and
//! the injector also heals when its last clone is dropped.
//!
//! # Layout
//! - `mod.rs`: [`Injector`], argument checks ([`validate`]), dispatch, healing.
//! - [`firewall`]: the nftables table (pure rendering + `nft -f -`).
//! - [`delayer`]: the iptables delay chains and the NFQUEUE delay thread.
//! - [`process`]: signals, detached helpers, finding the managed service.
//! - `links`: the service and sync interfaces (`ip -j addr show`).
//! - `command`: running tools with errors that carry the command and its stderr.
//!
//! # Limitations
//! - `kill_app`: there is no application manager yet. The injector kills the
//!   processes of this network namespace whose command line is exactly
//!   `service.command` (or the `sh -c …` shell running it); a service that
//!   re-execs under another command line, or its forked children, are not found.
//! - `links_down` takes down only the service and sync interfaces (not `lo`, so the
//!   control API stays reachable on 127.0.0.1 and `heal_all` can end it early). The
//!   kernel restores connected routes on link up; other routes through those
//!   interfaces (none in the lab) are not restored.
//! - Loss and delay apply per packet in each direction: a round trip through this
//!   host is lost with probability 1 − (1 − p)² and delayed by twice the delay.
//! - Delay is IPv4 only; a killed agent leaves its faults in place until the next
//!   start (the delay rules carry `--queue-bypass`, so traffic then flows undelayed).

mod command;
pub mod delayer;
pub mod firewall;
mod links;
pub mod process;

use crate::replication::sender::RecordFault;
use delayer::Delayer;
use firewall::DropFaults;
use links::Link;
use nonstop_shared::config::AgentConfig;
use nonstop_shared::control::{Fault, LinkName};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The delayer's NFQUEUE number is the session manager's (`session.queue`) plus this.
pub const DELAY_QUEUE_OFFSET: u16 = 100;
/// Longest `freeze_agent` / `links_down`, seconds.
pub const MAX_SECONDS: u64 = 600;
/// Longest delay, milliseconds.
pub const MAX_DELAY_MS: u64 = 10_000;

/// Carries out [`Fault`]s on this host. Cheap to clone; clones share the set of
/// active faults. The [`Default`] injector is unconfigured and refuses every fault.
#[derive(Debug, Clone, Default)]
pub struct Injector {
    inner: Option<Arc<Inner>>,
    record_fault: RecordFault,
    /// `[inject] enabled` (follows SIGHUP reloads).
    enabled: Arc<std::sync::atomic::AtomicBool>,
    /// `inject` requests refused because injection is off.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct Settings {
    service_if: String,
    sync_ip: IpAddr,
    delay_queue: Option<u16>,
    service_command: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    drops: DropFaults,
    /// Delayed interfaces and their delay in ms.
    delays: Vec<(Link, u64)>,
    delayer: Option<Delayer>,
    /// The running `links_down` helper and the interfaces it took down.
    links_down: Option<(process::Helper, Vec<String>)>,
}

impl State {
    fn active(&self) -> bool {
        !self.drops.is_empty()
            || !self.delays.is_empty()
            || self.delayer.is_some()
            || self.links_down.as_ref().is_some_and(|(h, _)| h.running())
    }
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    state: Mutex<State>,
}

/// Checks a fault's arguments: percent 1..=100, ms 1..=10000, seconds 1..=600.
pub fn validate(fault: &Fault) -> Result<(), String> {
    match *fault {
        Fault::Loss { percent, .. } if !(1..=100).contains(&percent) => {
            Err(format!("loss: percent must be in 1..=100, got {percent}"))
        }
        Fault::Delay { ms, .. } if !(1..=MAX_DELAY_MS).contains(&ms) => {
            Err(format!("delay: ms must be in 1..={MAX_DELAY_MS}, got {ms}"))
        }
        Fault::FreezeAgent { seconds } | Fault::LinksDown { seconds }
            if !(1..=MAX_SECONDS).contains(&seconds) =>
        {
            Err(format!(
                "{}: seconds must be in 1..={MAX_SECONDS}, got {seconds}",
                if matches!(fault, Fault::FreezeAgent { .. }) {
                    "freeze_agent"
                } else {
                    "links_down"
                }
            ))
        }
        _ => Ok(()),
    }
}

fn link_word(link: LinkName) -> &'static str {
    match link {
        LinkName::Sync => "sync",
        LinkName::Service => "service",
    }
}

impl Injector {
    /// An injector for this host: finds the sync interface (the one holding
    /// `sync.address`'s IP) and removes what an earlier run may have left behind (our
    /// nftables table, our delay chains). Problems are logged, not fatal: a fault that
    /// needs a missing interface fails with the reason when it is injected.
    pub fn new(config: &AgentConfig) -> Injector {
        let settings = Settings {
            service_if: config.service.interface.clone(),
            sync_ip: config.sync.address.ip(),
            delay_queue: config.session.queue.checked_add(DELAY_QUEUE_OFFSET),
            service_command: config.service.command.clone(),
        };
        let inner = Inner {
            settings,
            state: Mutex::new(State::default()),
        };
        match inner.remove_leftovers() {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!("fault injection: removed leftovers of an earlier run: {removed}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("fault injection: cannot remove leftovers: {e}"),
        }
        match (inner.link(LinkName::Service), inner.link(LinkName::Sync)) {
            (Ok(service), Ok(sync)) => tracing::info!(
                service = %service.name,
                sync = %sync.name,
                "fault injection ready"
            ),
            (service, sync) => {
                for e in [service.err(), sync.err()].into_iter().flatten() {
                    tracing::warn!("fault injection: {e}");
                }
            }
        }
        Injector {
            inner: Some(Arc::new(inner)),
            record_fault: RecordFault::default(),
            enabled: Arc::new(config.inject.enabled.into()),
            refused: Arc::default(),
        }
    }

    /// Connects the `drop_record` fault to the replication sender.
    pub fn with_record_fault(mut self, fault: RecordFault) -> Injector {
        self.record_fault = fault;
        self
    }

    /// Turns injection on or off (`[inject] enabled`, on a reload).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// `inject` requests refused because injection is off.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks `fault` ([`validate`]) and carries it out on this host; the message
    /// says what was done, the error why not (with the failing command's stderr).
    pub async fn inject(&self, fault: &Fault) -> Result<String, String> {
        validate(fault)?;
        let Some(inner) = self.inner.clone() else {
            return Err("fault injection is not configured on this agent".into());
        };
        // Healing is always allowed: it only removes what an earlier run injected.
        if !self.enabled.load(std::sync::atomic::Ordering::Relaxed) && *fault != Fault::HealAll {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(
                "fault injection is disabled on this agent (set `[inject] enabled = true` \
                 in its config and reload with SIGHUP)"
                    .into(),
            );
        }
        if *fault == Fault::DropRecord {
            self.record_fault.arm();
            return Ok(
                "the next replicated record that carries payload will not be sent \
                       to the backup (one-shot)"
                    .into(),
            );
        }
        let fault = fault.clone();
        tokio::task::spawn_blocking(move || inner.apply(&fault))
            .await
            .map_err(|e| format!("the fault injection task failed: {e}"))?
    }

    /// Removes every injected fault now (for the agent's shutdown path); logs what
    /// it did. Blocking: it runs `nft`, `iptables` and `ip`.
    pub fn heal_all_blocking(&self) {
        let Some(inner) = &self.inner else { return };
        match inner.heal() {
            Ok(message) => tracing::info!("fault injection: {message}"),
            Err(e) => tracing::error!("fault injection: {e}"),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The interface of `link`, looked up now (interfaces may come and go).
    fn link(&self, link: LinkName) -> Result<Link, String> {
        let all = links::interfaces()?;
        match link {
            LinkName::Service => links::by_name(&all, &self.settings.service_if),
            LinkName::Sync => links::by_address(&all, self.settings.sync_ip),
        }
    }

    fn apply(&self, fault: &Fault) -> Result<String, String> {
        let pid = std::process::id();
        match *fault {
            Fault::KillApp => {
                let Some(command) = &self.settings.service_command else {
                    return Err(
                        "no managed service on this node (service.command is not set)".into(),
                    );
                };
                let pids = process::kill_app(command)?;
                Ok(format!(
                    "killed the managed service `{command}` with SIGKILL (pid {})",
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Fault::KillAgent => {
                process::kill_self_later()?;
                Ok(format!(
                    "killing this agent (pid {pid}) with SIGKILL in 100 ms; injected faults stay \
                     in place until the next agent start removes them"
                ))
            }
            Fault::FreezeAgent { seconds } => {
                let helper = process::spawn_detached(&process::freeze_script(pid, seconds))?;
                Ok(format!(
                    "freezing this agent (pid {pid}) with SIGSTOP in 100 ms and SIGCONT after \
                     {seconds} s (detached helper pid {})",
                    helper.pid
                ))
            }
            Fault::LinksDown { seconds } => self.links_down(seconds),
            Fault::CutSync => {
                let sync = self.link(LinkName::Sync)?;
                self.change_drops(|d| d.cut = Some(sync.name.clone()))
                    .map(|all| {
                        format!(
                            "cut the sync link on {}: every packet in and out dropped \
                             (nftables table {} {}; active: {all})",
                            sync.name,
                            firewall::FAULT_FAMILY,
                            firewall::FAULT_TABLE
                        )
                    })
            }
            Fault::Loss { link, percent } => {
                let l = self.link(link)?;
                self.change_drops(|d| d.set_loss(&l.name, percent))
                    .map(|all| {
                        format!(
                            "{percent}% random loss on the {} link ({}), each direction \
                             (nftables table {} {}; active: {all})",
                            link_word(link),
                            l.name,
                            firewall::FAULT_FAMILY,
                            firewall::FAULT_TABLE
                        )
                    })
            }
            Fault::Delay { link, ms } => self.delay(link, ms),
            Fault::DropRecord => Err("drop_record is handled by the replication sender".into()),
            Fault::HealAll => self.heal(),
        }
    }

    /// Applies `change` to the firewall faults and replaces the table; the state
    /// changes only if `nft` succeeded. Returns the active set in words.
    fn change_drops(&self, change: impl FnOnce(&mut DropFaults)) -> Result<String, String> {
        let mut state = self.lock();
        let mut next = state.drops.clone();
        change(&mut next);
        firewall::apply(&next)?;
        state.drops = next;
        Ok(state.drops.describe())
    }

    fn links_down(&self, seconds: u64) -> Result<String, String> {
        let mut state = self.lock();
        if let Some((helper, names)) = &state.links_down {
            if helper.running() {
                return Err(format!(
                    "{} are already down or about to be (helper pid {}); heal_all brings them \
                     back now",
                    names.join(" and "),
                    helper.pid
                ));
            }
        }
        let mut names = vec![self.link(LinkName::Service)?.name];
        let sync = self.link(LinkName::Sync)?.name;
        if !names.contains(&sync) {
            names.push(sync);
        }
        let helper = process::spawn_detached(&process::links_down_script(&names, seconds))?;
        let message = format!(
            "taking {} down in 100 ms for {seconds} s; a detached helper (pid {}) sets them up \
             again (meanwhile this agent answers only on 127.0.0.1)",
            names.join(" and "),
            helper.pid
        );
        state.links_down = Some((helper, names));
        Ok(message)
    }

    fn delay(&self, link: LinkName, ms: u64) -> Result<String, String> {
        let Some(queue) = self.settings.delay_queue else {
            return Err(format!(
                "no NFQUEUE number left for the delayer (session.queue + {DELAY_QUEUE_OFFSET} \
                 exceeds 65535)"
            ));
        };
        let l = self.link(link)?;
        let mut state = self.lock();
        let mut delays = state.delays.clone();
        match delays.iter_mut().find(|(d, _)| d.name == l.name) {
            Some(entry) => *entry = (l.clone(), ms),
            None => delays.push((l.clone(), ms)),
        }
        if state.delayer.is_none() {
            state.delayer = Some(Delayer::start(queue)?);
        }
        let map = |delays: &[(Link, u64)]| -> HashMap<u32, Duration> {
            delays
                .iter()
                .map(|(l, ms)| (l.index, Duration::from_millis(*ms)))
                .collect()
        };
        if let Some(delayer) = &state.delayer {
            delayer.set_delays(map(&delays));
        }
        let names: Vec<String> = delays.iter().map(|(l, _)| l.name.clone()).collect();
        if let Err(e) = delayer::install_rules(&names, queue) {
            if let Some(delayer) = &state.delayer {
                delayer.set_delays(map(&state.delays));
            }
            if state.delays.is_empty() {
                state.delayer = None;
            }
            return Err(e);
        }
        state.delays = delays;
        Ok(format!(
            "delaying every packet on the {} link ({}) by {ms} ms in each direction (NFQUEUE \
             {queue}; iptables chains mangle/{} and security/{}); a round trip through this host \
             takes {} ms longer",
            link_word(link),
            l.name,
            delayer::DELAY_CHAIN_IN,
            delayer::DELAY_CHAIN_OUT,
            2 * ms
        ))
    }

    /// Removes every fault; says what was removed. Goes on after an error and
    /// reports all errors at the end.
    fn heal(&self) -> Result<String, String> {
        let mut state = self.lock();
        let mut done = Vec::new();
        let mut errors = Vec::new();
        if let Some((helper, names)) = state.links_down.take() {
            if helper.kill() {
                for name in &names {
                    if let Err(e) = command::run("ip", &["link", "set", "dev", name, "up"], None) {
                        errors.push(e);
                    }
                }
                done.push(format!(
                    "set {} up again (stopped helper pid {})",
                    names.join(" and "),
                    helper.pid
                ));
            }
        }
        let what = state.drops.describe();
        match firewall::remove() {
            Ok(removed) => {
                if removed {
                    done.push(format!(
                        "removed nftables table {} {} ({})",
                        firewall::FAULT_FAMILY,
                        firewall::FAULT_TABLE,
                        if what.is_empty() { "left over" } else { &what }
                    ));
                }
                state.drops = DropFaults::default();
            }
            Err(e) => errors.push(e),
        }
        match delayer::remove_rules() {
            Ok(true) => done.push(format!(
                "removed the delay chains mangle/{} and security/{}",
                delayer::DELAY_CHAIN_IN,
                delayer::DELAY_CHAIN_OUT
            )),
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
        if let Some(mut delayer) = state.delayer.take() {
            let released = delayer.stop();
            done.push(format!(
                "stopped the delayer on NFQUEUE {} (released {released} held packets at once)",
                delayer.queue()
            ));
        }
        state.delays.clear();
        if !errors.is_empty() {
            return Err(format!(
                "healing failed: {}{}",
                errors.join("; "),
                if done.is_empty() {
                    String::new()
                } else {
                    format!(" (done: {})", done.join("; "))
                }
            ));
        }
        if done.is_empty() {
            return Ok("nothing to heal: no injected fault is in place on this host".into());
        }
        Ok(format!("healed: {}", done.join("; ")))
    }

    /// Removes our table and chains if they exist (at start); says what it removed.
    fn remove_leftovers(&self) -> Result<String, String> {
        let mut removed = Vec::new();
        if firewall::remove()? {
            removed.push(format!(
                "nftables table {} {}",
                firewall::FAULT_FAMILY,
                firewall::FAULT_TABLE
            ));
        }
        if delayer::remove_rules()? {
            removed.push(format!(
                "iptables chains {} and {}",
                delayer::DELAY_CHAIN_IN,
                delayer::DELAY_CHAIN_OUT
            ));
        }
        Ok(removed.join(", "))
    }
}

impl Drop for Inner {
    /// The last clone is gone (agent shutdown): heal whatever is still in place.
    fn drop(&mut self) {
        if self.lock().active() {
            match self.heal() {
                Ok(message) => tracing::info!("fault injection at exit: {message}"),
                Err(e) => tracing::error!("fault injection at exit: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_with_clear_errors() {
        let bad = [
            (
                Fault::Loss {
                    link: LinkName::Sync,
                    percent: 0,
                },
                "loss: percent must be in 1..=100, got 0",
            ),
            (
                Fault::Loss {
                    link: LinkName::Service,
                    percent: 101,
                },
                "loss: percent must be in 1..=100, got 101",
            ),
            (
                Fault::Delay {
                    link: LinkName::Sync,
                    ms: 0,
                },
                "delay: ms must be in 1..=10000, got 0",
            ),
            (
                Fault::Delay {
                    link: LinkName::Sync,
                    ms: 10_001,
                },
                "delay: ms must be in 1..=10000, got 10001",
            ),
            (
                Fault::FreezeAgent { seconds: 0 },
                "freeze_agent: seconds must be in 1..=600, got 0",
            ),
            (
                Fault::LinksDown { seconds: 601 },
                "links_down: seconds must be in 1..=600, got 601",
            ),
        ];
        for (fault, text) in bad {
            assert_eq!(validate(&fault).expect_err(text), text);
        }
        let good = [
            Fault::KillApp,
            Fault::KillAgent,
            Fault::FreezeAgent { seconds: 600 },
            Fault::LinksDown { seconds: 1 },
            Fault::CutSync,
            Fault::Loss {
                link: LinkName::Sync,
                percent: 100,
            },
            Fault::Delay {
                link: LinkName::Service,
                ms: 10_000,
            },
            Fault::HealAll,
        ];
        for fault in good {
            assert_eq!(validate(&fault), Ok(()), "{fault}");
        }
    }

    #[tokio::test]
    async fn an_unconfigured_injector_refuses_but_still_validates() {
        let injector = Injector::default();
        let err = injector.inject(&Fault::CutSync).await.expect_err("refused");
        assert!(err.contains("not configured"), "{err}");
        let err = injector
            .inject(&Fault::FreezeAgent { seconds: 0 })
            .await
            .expect_err("invalid");
        assert!(err.contains("seconds"), "{err}");
        injector.heal_all_blocking();
    }

    #[tokio::test]
    async fn a_disabled_injector_refuses_counts_and_follows_the_switch() {
        let config = nonstop_shared::config::AgentConfig::from_toml(
            r#"
node_id = "n"
data_dir = "/tmp/nonstop-inject-test"
[service]
interface = "nonstop-none0"
vip = "198.18.1.100/24"
ports = [7000]
[sync]
address = "198.19.1.1:7701"
peer = "198.19.1.2:7701"
[security]
key_file = "/k"
"#,
        )
        .expect("config");
        assert!(!config.inject.enabled, "off by default");
        let injector = Injector::new(&config);
        let err = injector.inject(&Fault::CutSync).await.expect_err("refused");
        assert!(err.contains("disabled"), "{err}");
        assert_eq!(injector.refused(), 1);
        // Invalid arguments are reported as such, not counted as refusals.
        assert!(injector
            .inject(&Fault::FreezeAgent { seconds: 0 })
            .await
            .is_err());
        assert_eq!(injector.refused(), 1);
        // (Enabled, it would act on this host: the lab tests cover that side.)
        injector.set_enabled(true);
        injector.set_enabled(false);
        assert!(injector.inject(&Fault::CutSync).await.is_err());
        assert_eq!(injector.refused(), 2);
        // Healing stays allowed.
        let _ = injector.inject(&Fault::HealAll).await;
        assert_eq!(injector.refused(), 2);
    }
}
