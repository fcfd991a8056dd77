//! The failover state machine, free of I/O.
//!
//! Inputs are heartbeats from the other node, operator commands, link and fence
//! results, and the current time; outputs are [`Action`]s (send a heartbeat, add or
//! remove the VIP, run the fence command, report a transition) and the next instant at
//! which [`Machine::handle_timeout`] must be called. Like `quinn-proto`, it never reads
//! a clock itself, so every scenario is a unit test.
//!
//! Rules (design §5):
//! - a starting node listens for one detection window; a master heard makes it a
//!   backup, silence makes it master, two starting nodes elect by priority then id;
//! - a backup promotes (epoch + 1) when the master misses `misses` heartbeats, when
//!   the master hands over, or when both nodes are alive and neither is master for a
//!   detection window (the better node, never the one that just handed over);
//! - every node's epoch is the highest it has seen; only a promotion adds one;
//! - two masters (a healed partition) converge: higher epoch, then priority, then node
//!   id stays; the other demotes;
//! - a node whose service link is down, whose fence command fails or whose VIP cannot
//!   be added enters `fault`, releases the VIP and never promotes until it recovers;
//! - a node whose service fails its health check ([`Machine::set_healthy`], carried
//!   in heartbeats) loses elections to a healthy peer and is never handed over to; it
//!   still promotes when the master is gone (the only one left).

use nonstop_shared::control::{Cause, Counters, PeerView};
use nonstop_shared::heartbeat::Heartbeat;
use nonstop_shared::Mode;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Extra listening after a fault, covering the kernel's ARP retry interval.
pub const REJOIN_EXTRA: Duration = Duration::from_secs(1);

/// Static settings of the machine, taken from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's id.
    pub node_id: String,
    /// Election priority.
    pub priority: u8,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Missed heartbeats before the peer counts as dead.
    pub misses: u32,
    /// Whether a fence command must succeed before taking over from a silent master.
    pub fence: bool,
}

impl Settings {
    /// How long the peer may be silent before it counts as dead.
    pub fn detection_window(&self) -> Duration {
        self.heartbeat * self.misses
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this heartbeat to the peer.
    SendHeartbeat(Heartbeat),
    /// Add the VIP to the service interface, then announce it (gratuitous ARP).
    AddVip,
    /// The VIP is on the service interface from before an agent restart: keep it,
    /// without announcing it. Peers already point here if this node still reigns; if
    /// the peer promoted meanwhile, an announcement would steal its peers (their
    /// packets would reach a host that has no socket for them) until this node
    /// yields a heartbeat later.
    KeepVip,
    /// Remove the VIP from the service interface.
    RemoveVip,
    /// Announce the VIP again (gratuitous ARP) without re-adding it: another master
    /// may have pointed the peers at itself before it yielded to us.
    Announce,
    /// Run the fence command and report with [`Machine::fence_finished`].
    RunFence,
    /// The mode changed; report it and persist the epoch.
    Transitioned {
        /// Mode before.
        from: Mode,
        /// Mode after.
        to: Mode,
        /// Epoch after.
        epoch: u64,
        /// Why.
        cause: Cause,
    },
}

/// Why a node is in `fault`, which decides how it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultReason {
    /// Left when the link comes back.
    ServiceLink,
    /// Fence or VIP failure: retried after [`Machine::fault_retry`].
    Retryable,
}

/// The last heartbeat-derived view of the other node.
#[derive(Debug, Clone)]
struct Peer {
    node_id: String,
    mode: Mode,
    epoch: u64,
    priority: u8,
    handover: bool,
    /// Its service fails its health check.
    unhealthy: bool,
    last_heard: Instant,
    /// Its clock value from its last heartbeat, to echo back.
    echo_us: u64,
    rtt: Option<Duration>,
    repl_pos: u64,
}

/// Error returned when a command cannot be carried out now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Switchover asked of a node that is not master.
    #[error("this node is {0}, not master; ask the master to switch over")]
    NotMaster(Mode),
    /// Switchover asked while the backup is not healthy.
    #[error("the backup is not ready to take over: {0}")]
    PeerNotReady(String),
    /// A switchover is already in progress.
    #[error("a switchover is already in progress")]
    AlreadyHandingOver,
}

/// The failover state machine of one node.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    origin: Instant,
    mode: Mode,
    epoch: u64,
    /// When the current mode was entered.
    mode_since: Instant,
    /// Last instant a master was known to exist in the pair (us or the peer).
    master_seen_at: Instant,
    peer: Option<Peer>,
    seq: u64,
    next_heartbeat_at: Instant,
    /// We handed mastership over and keep saying so until the peer is master.
    handing_over_until: Option<Instant>,
    /// A promotion waiting for the fence command.
    pending_promotion: Option<Cause>,
    /// How long the current `startup` listens before deciding.
    listen_window: Duration,
    fault: Option<FaultReason>,
    service_link_up: bool,
    /// This node's service passes its health check (or has none).
    healthy: bool,
    repl_pos: u64,
    counters: Counters,
    actions: VecDeque<Action>,
}

impl Machine {
    /// A node restarting at `now` that was master at `epoch` and still holds the VIP:
    /// it resumes as master without a new epoch, so a quick agent restart moves
    /// nothing. If the peer promoted meanwhile it has a higher epoch and wins. The VIP
    /// is kept, not announced ([`Action::KeepVip`]).
    pub fn resume_as_master(settings: Settings, epoch: u64, now: Instant) -> Machine {
        let mut machine = Machine::new(settings, epoch, now);
        machine.actions.clear();
        machine.master_seen_at = now;
        machine.actions.push_back(Action::KeepVip);
        machine.transition(Mode::Master, Cause::Resumed, now);
        machine
    }

    /// A node starting at `now` with the epoch it persisted last time.
    pub fn new(settings: Settings, epoch: u64, now: Instant) -> Machine {
        let listen_window = settings.detection_window() + settings.heartbeat;
        let mut machine = Machine {
            settings,
            origin: now,
            mode: Mode::Startup,
            epoch,
            mode_since: now,
            master_seen_at: now,
            peer: None,
            seq: 0,
            next_heartbeat_at: now,
            handing_over_until: None,
            pending_promotion: None,
            listen_window,
            fault: None,
            service_link_up: true,
            healthy: true,
            repl_pos: 0,
            counters: Counters::default(),
            actions: VecDeque::new(),
        };
        machine.send_heartbeat(now);
        machine
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The settings the machine runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counters kept by the machine (the driver adds its own).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Mutable counters, for the driver's own tallies.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Reports this node's health check; the peer hears of a change at once.
    pub fn set_healthy(&mut self, healthy: bool, now: Instant) {
        if healthy != self.healthy {
            self.healthy = healthy;
            self.send_heartbeat(now);
        }
    }

    /// Whether this node's service passes its health check (or has none).
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Whether the peer's service passed its health check in its last heartbeat.
    pub fn peer_healthy(&self) -> Option<bool> {
        self.peer.as_ref().map(|p| !p.unhealthy)
    }

    /// Sets the replication position carried in heartbeats.
    pub fn set_repl_pos(&mut self, pos: u64) {
        self.repl_pos = pos;
    }

    /// Whether the peer was heard within the detection window.
    pub fn peer_alive(&self, now: Instant) -> bool {
        self.peer.as_ref().is_some_and(|p| {
            now.saturating_duration_since(p.last_heard) < self.settings.detection_window()
        })
    }

    /// Heartbeat intervals since the peer was last heard (0 while it is on time).
    pub fn missed_heartbeats(&self, now: Instant) -> u32 {
        let since = match &self.peer {
            Some(p) => now.saturating_duration_since(p.last_heard),
            None => now.saturating_duration_since(self.origin),
        };
        let missed = since.as_micros() / self.settings.heartbeat.as_micros().max(1);
        u32::try_from(missed).unwrap_or(u32::MAX)
    }

    /// What we know of the other node, for status reports.
    pub fn peer_view(&self, now: Instant) -> PeerView {
        match &self.peer {
            None => PeerView::default(),
            Some(p) => PeerView {
                node_id: Some(p.node_id.clone()),
                mode: Some(p.mode),
                epoch: Some(p.epoch),
                last_heard_ms: Some(now.saturating_duration_since(p.last_heard).as_millis() as u64),
                rtt_us: p.rtt.map(|d| d.as_micros() as u64),
                healthy: Some(!p.unhealthy),
            },
        }
    }

    /// The peer's replication position from its last heartbeat.
    pub fn peer_repl_pos(&self) -> Option<u64> {
        self.peer.as_ref().map(|p| p.repl_pos)
    }

    /// Next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Machine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_heartbeat_at;
        if let Some(deadline) = self.decision_deadline() {
            next = next.min(deadline);
        }
        if let Some(until) = self.handing_over_until {
            next = next.min(until);
        }
        next
    }

    /// The instant at which the current mode must re-decide, if it has one.
    fn decision_deadline(&self) -> Option<Instant> {
        let window = self.settings.detection_window();
        if self.pending_promotion.is_some() {
            return None;
        }
        match self.mode {
            Mode::Startup => Some(self.mode_since + self.listen_window),
            Mode::Backup => {
                let silent_since = self
                    .peer
                    .as_ref()
                    .map_or(self.mode_since, |p| p.last_heard.max(self.mode_since));
                let no_master_since = self.master_seen_at.max(self.mode_since);
                Some((silent_since + window).min(no_master_since + window))
            }
            Mode::Fault if self.fault == Some(FaultReason::Retryable) => {
                Some(self.mode_since + self.fault_retry())
            }
            Mode::Master | Mode::Fault => None,
        }
    }

    /// How long a retryable fault lasts before the node tries again.
    pub fn fault_retry(&self) -> Duration {
        (self.settings.heartbeat * 10).max(Duration::from_secs(1))
    }

    /// Processes a heartbeat received from the peer at `now`.
    pub fn handle_heartbeat(&mut self, hb: Heartbeat, now: Instant) {
        if hb.node_id == self.settings.node_id {
            // Our own id from elsewhere: a misconfiguration or a reflection.
            self.counters.foreign_heartbeats += 1;
            return;
        }
        if let Some(known) = &self.peer {
            if known.node_id != hb.node_id {
                self.counters.foreign_heartbeats += 1;
                tracing_peer_change(&known.node_id, &hb.node_id);
            }
        }
        self.counters.heartbeats_received += 1;
        let now_us = self.clock_us(now);
        let rtt = (hb.echo_us != 0)
            .then(|| {
                now_us
                    .checked_sub(hb.echo_us)?
                    .checked_sub(u64::from(hb.echo_delay_us))
            })
            .flatten()
            .map(Duration::from_micros)
            .or(self.peer.as_ref().and_then(|p| p.rtt));
        self.peer = Some(Peer {
            node_id: hb.node_id.clone(),
            mode: hb.mode,
            epoch: hb.epoch,
            priority: hb.priority,
            handover: hb.handover,
            unhealthy: hb.unhealthy,
            last_heard: now,
            echo_us: hb.sent_us,
            rtt,
            repl_pos: hb.repl_pos,
        });
        if hb.mode == Mode::Master {
            self.master_seen_at = now;
        }
        match self.mode {
            Mode::Startup => self.startup_on_heartbeat(&hb, now),
            Mode::Backup => self.backup_on_heartbeat(&hb, now),
            Mode::Master => self.master_on_heartbeat(&hb, now),
            Mode::Fault => {
                if hb.mode == Mode::Master {
                    self.epoch = self.epoch.max(hb.epoch);
                }
            }
        }
    }

    fn startup_on_heartbeat(&mut self, hb: &Heartbeat, now: Instant) {
        if hb.mode == Mode::Master {
            self.epoch = self.epoch.max(hb.epoch);
            let cause = Cause::HeardMaster {
                master: hb.node_id.clone(),
                epoch: hb.epoch,
            };
            self.transition(Mode::Backup, cause, now);
        }
        // Another starting or backup node: decided when the listening window ends.
    }

    fn backup_on_heartbeat(&mut self, hb: &Heartbeat, now: Instant) {
        if hb.mode == Mode::Master {
            self.epoch = self.epoch.max(hb.epoch);
            self.pending_promotion = None;
            self.handing_over_until = None;
            if hb.handover {
                self.promote(Cause::HandoverReceived, now);
            }
        } else if hb.handover && self.handing_over_until.is_none() {
            // The old master already stepped down and hands over to us.
            self.promote(Cause::HandoverReceived, now);
        }
    }

    fn master_on_heartbeat(&mut self, hb: &Heartbeat, now: Instant) {
        if hb.mode != Mode::Master {
            // A backup that once reigned at a higher epoch (a healed partition, then a
            // restart): the pair's epoch is the highest any node has seen.
            self.epoch = self.epoch.max(hb.epoch);
            return;
        }
        let ours = (
            self.epoch,
            self.settings.priority,
            self.settings.node_id.as_str(),
        );
        let theirs = (hb.epoch, hb.priority, hb.node_id.as_str());
        if theirs.cmp(&ours) == Ordering::Greater {
            self.epoch = self.epoch.max(hb.epoch);
            let cause = Cause::LostToMaster {
                master: hb.node_id.clone(),
                epoch: hb.epoch,
            };
            self.actions.push_back(Action::RemoveVip);
            self.transition(Mode::Backup, cause, now);
        } else {
            // We stay; the other master will yield, but its gratuitous ARPs may have
            // pointed the peers at it: point them back.
            self.actions.push_back(Action::Announce);
        }
    }

    /// Advances time: sends due heartbeats and takes due decisions.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(until) = self.handing_over_until {
            if now >= until {
                self.handing_over_until = None;
            }
        }
        if let Some(deadline) = self.decision_deadline() {
            if now >= deadline {
                self.decide(now);
            }
        }
        if now >= self.next_heartbeat_at {
            self.send_heartbeat(now);
        }
    }

    fn decide(&mut self, now: Instant) {
        let alive = self.peer_alive(now);
        match self.mode {
            Mode::Startup => {
                let peer = self.peer.as_ref().filter(|_| alive);
                match peer {
                    None => self.promote(Cause::NoMasterAtStartup, now),
                    Some(p) if p.mode == Mode::Fault || self.better_than_peer(p) => {
                        self.promote(Cause::WonStartupElection, now)
                    }
                    Some(p) => {
                        let cause = Cause::LostStartupElection {
                            winner: p.node_id.clone(),
                        };
                        // The better node will promote; wait for it as a backup.
                        self.transition(Mode::Backup, cause, now);
                    }
                }
            }
            Mode::Backup => {
                if !alive {
                    let missed = self.missed_heartbeats(now);
                    self.promote(Cause::PeerSilent { missed }, now);
                    return;
                }
                let Some(peer) = self.peer.as_ref() else {
                    return;
                };
                if peer.mode == Mode::Master {
                    return;
                }
                // Both alive, no master for a whole window.
                let we_should = self.handing_over_until.is_none()
                    && (peer.mode == Mode::Fault || peer.handover || self.better_than_peer(peer));
                if we_should {
                    self.promote(Cause::NoMasterInPair, now);
                } else {
                    // Wait another window for the better node.
                    self.master_seen_at = now;
                }
            }
            Mode::Fault => {
                self.fault = None;
                self.rejoin(Cause::FaultRetry, now);
            }
            Mode::Master => {}
        }
    }

    /// Election order: a healthy service first, then priority, then node id.
    fn better_than_peer(&self, peer: &Peer) -> bool {
        match (self.healthy, !peer.unhealthy) {
            (true, false) => true,
            (false, true) => false,
            _ => self.outranks_peer(peer),
        }
    }

    fn outranks_peer(&self, peer: &Peer) -> bool {
        (self.settings.priority, self.settings.node_id.as_str())
            > (peer.priority, peer.node_id.as_str())
    }

    /// Starts a promotion: fence first when configured and the master did not consent.
    fn promote(&mut self, cause: Cause, now: Instant) {
        if !self.service_link_up {
            return;
        }
        let consented = matches!(cause, Cause::HandoverReceived);
        if self.settings.fence && !consented {
            if self.pending_promotion.is_none() {
                self.pending_promotion = Some(cause);
                self.actions.push_back(Action::RunFence);
            }
            return;
        }
        self.become_master(cause, now);
    }

    fn become_master(&mut self, cause: Cause, now: Instant) {
        let peer_epoch = self.peer.as_ref().map_or(0, |p| p.epoch);
        self.epoch = self.epoch.max(peer_epoch) + 1;
        self.counters.promotions += 1;
        self.handing_over_until = None;
        self.master_seen_at = now;
        self.actions.push_back(Action::AddVip);
        self.transition(Mode::Master, cause, now);
    }

    /// Reports the fence command's outcome.
    pub fn fence_finished(&mut self, ok: bool, detail: String, now: Instant) {
        let Some(cause) = self.pending_promotion.take() else {
            return; // promotion was cancelled (the master came back)
        };
        if !matches!(self.mode, Mode::Startup | Mode::Backup) {
            return;
        }
        if ok {
            self.become_master(cause, now);
        } else {
            self.enter_fault(FaultReason::Retryable, Cause::FenceFailed { detail }, now);
        }
    }

    /// Reports that adding the VIP failed: the node cannot serve.
    pub fn vip_failed(&mut self, detail: String, now: Instant) {
        if self.mode == Mode::Master {
            self.enter_fault(FaultReason::Retryable, Cause::VipFailed { detail }, now);
        }
    }

    /// Reports the service interface's state (carrier and admin up).
    pub fn service_link_changed(&mut self, up: bool, now: Instant) {
        if up == self.service_link_up {
            return;
        }
        self.service_link_up = up;
        if !up {
            self.pending_promotion = None;
            self.enter_fault(FaultReason::ServiceLink, Cause::ServiceLinkDown, now);
        } else if self.mode == Mode::Fault && self.fault == Some(FaultReason::ServiceLink) {
            self.fault = None;
            self.rejoin(Cause::ServiceLinkUp, now);
        }
    }

    /// Leaves `fault` through `startup` with a longer listening window: after an
    /// outage the neighbour caches on the sync link may hold failed entries that the
    /// kernel retries only every `retrans_time` (1 s), so the master may stay unheard
    /// for that long. Promoting sooner would depose a healthy master (both would have
    /// the same epoch, since we missed its promotion).
    fn rejoin(&mut self, cause: Cause, now: Instant) {
        self.listen_window = self.rejoin_window();
        self.transition(Mode::Startup, cause, now);
    }

    /// Listening window after a fault: a detection window plus the ARP retry time.
    pub fn rejoin_window(&self) -> Duration {
        self.settings.detection_window() + self.settings.detection_window().max(REJOIN_EXTRA)
    }

    fn enter_fault(&mut self, reason: FaultReason, cause: Cause, now: Instant) {
        if self.mode == Mode::Master {
            self.actions.push_back(Action::RemoveVip);
        }
        self.fault = Some(reason);
        self.handing_over_until = None;
        self.transition(Mode::Fault, cause, now);
    }

    /// Operator switchover: a master steps down and hands over to a healthy backup.
    pub fn request_switchover(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.mode != Mode::Master {
            return Err(CommandError::NotMaster(self.mode));
        }
        if self.handing_over_until.is_some() {
            return Err(CommandError::AlreadyHandingOver);
        }
        let alive = self.peer_alive(now);
        match &self.peer {
            None => return Err(CommandError::PeerNotReady("never heard".into())),
            Some(_) if !alive => return Err(CommandError::PeerNotReady("silent".into())),
            Some(p) if p.mode != Mode::Backup => {
                return Err(CommandError::PeerNotReady(format!("it is {}", p.mode)))
            }
            Some(p) if p.unhealthy => {
                return Err(CommandError::PeerNotReady(
                    "its service fails its health check".into(),
                ))
            }
            Some(_) => {}
        }
        self.step_down_with_handover(Cause::Switchover, now);
        Ok(())
    }

    /// Agent shutdown: a master hands over so the backup need not wait for silence.
    pub fn shutdown(&mut self, now: Instant) {
        if self.mode == Mode::Master {
            self.step_down_with_handover(Cause::Shutdown, now);
        }
    }

    fn step_down_with_handover(&mut self, cause: Cause, now: Instant) {
        self.actions.push_back(Action::RemoveVip);
        // Keep announcing the handover for a detection window; the peer promotes on
        // the first one it hears.
        self.handing_over_until = Some(now + self.settings.detection_window() * 2);
        self.transition(Mode::Backup, cause, now);
    }

    fn transition(&mut self, to: Mode, cause: Cause, now: Instant) {
        let from = self.mode;
        self.mode = to;
        self.mode_since = now;
        if to == Mode::Backup && self.peer.as_ref().is_some_and(|p| p.mode == Mode::Master) {
            self.master_seen_at = now;
        }
        self.actions.push_back(Action::Transitioned {
            from,
            to,
            epoch: self.epoch,
            cause,
        });
        // Tell the peer at once rather than at the next interval.
        self.send_heartbeat(now);
    }

    fn send_heartbeat(&mut self, now: Instant) {
        self.seq += 1;
        let now_us = self.clock_us(now);
        let (echo_us, echo_delay_us) = match &self.peer {
            Some(p) => {
                let held = now.saturating_duration_since(p.last_heard).as_micros();
                (p.echo_us, u32::try_from(held).unwrap_or(u32::MAX))
            }
            None => (0, 0),
        };
        let hb = Heartbeat {
            node_id: self.settings.node_id.clone(),
            epoch: self.epoch,
            mode: self.mode,
            priority: self.settings.priority,
            handover: self.handing_over_until.is_some(),
            unhealthy: !self.healthy,
            seq: self.seq,
            sent_us: now_us,
            echo_us,
            echo_delay_us,
            repl_pos: self.repl_pos,
        };
        self.counters.heartbeats_sent += 1;
        self.actions.push_back(Action::SendHeartbeat(hb));
        self.next_heartbeat_at = now + self.settings.heartbeat;
    }

    /// Microseconds since the machine started; never 0 so that 0 can mean "none".
    fn clock_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64 + 1
    }
}

fn tracing_peer_change(old: &str, new: &str) {
    tracing::warn!(old, new, "heartbeat from a different node id than before");
}

#[cfg(test)]
mod tests;
