//! The network side: per agent, one worker thread that polls status (every 250 ms)
//! and sessions (every 1 s) and carries out commands, plus one thread that follows
//! the agent's event stream. Both reconnect with exponential backoff (100 ms → 5 s)
//! and report everything to the app as [`Action::Net`] over a channel, so the UI
//! never waits on the network.

use super::action::{Action, NetUpdate, NodeCommand};
use crate::client::{AgentAddr, AgentConnection};
use nonstop_shared::control::{Reply, Request};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often status is polled.
pub const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How often sessions are polled.
pub const SESSIONS_EVERY: Duration = Duration::from_secs(1);
/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the event follower blocks on a read before checking for shutdown.
const EVENT_READ_TICK: Duration = Duration::from_millis(500);

/// Wall-clock time in ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Exponential backoff between reconnect attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay before the next attempt; doubles the one after, up to the maximum.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Handles on the workers; dropping it stops them.
pub struct Workers {
    commands: Vec<Sender<NodeCommand>>,
    stop: Arc<AtomicBool>,
}

impl Workers {
    /// Starts the threads for every agent; they report to `tx`.
    pub fn spawn(agents: &[AgentAddr], timeout: Duration, tx: &Sender<Action>) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let commands = agents
            .iter()
            .enumerate()
            .map(|(node, agent)| {
                let (cmd_tx, cmd_rx) = mpsc::channel();
                let (agent2, tx2, stop2) = (agent.clone(), tx.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("poll-{node}"))
                    .spawn(move || poll_worker(node, &agent2, timeout, &tx2, &cmd_rx, &stop2))
                    .ok();
                let (agent3, tx3, stop3) = (agent.clone(), tx.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("events-{node}"))
                    .spawn(move || event_worker(node, &agent3, timeout, &tx3, &stop3))
                    .ok();
                cmd_tx
            })
            .collect();
        Workers { commands, stop }
    }

    /// Hands `command` to agent `node`'s worker; the outcome comes back as
    /// [`NetUpdate::CommandDone`].
    pub fn send(&self, node: usize, command: NodeCommand) -> Result<(), String> {
        self.commands
            .get(node)
            .ok_or_else(|| format!("no agent #{node}"))?
            .send(command)
            .map_err(|_| "the agent's worker has stopped".to_owned())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn report(tx: &Sender<Action>, node: usize, update: NetUpdate) -> bool {
    tx.send(Action::Net { node, update }).is_ok()
}

enum Wait {
    Go,
    Stop,
}

/// Waits up to `wait` for a command; runs it (on `conn` if any) and reports it.
fn serve_commands(
    node: usize,
    wait: Duration,
    conn: &mut Option<AgentConnection>,
    tx: &Sender<Action>,
    rx: &Receiver<NodeCommand>,
) -> Wait {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(command) => {
                let result = match conn.as_mut() {
                    Some(c) => {
                        let result = run_command(c, &command);
                        if result.is_err() {
                            // The connection may be broken; a fresh one costs little.
                            *conn = None;
                        }
                        result
                    }
                    None => Err("agent unreachable".to_owned()),
                };
                let update = NetUpdate::CommandDone {
                    command,
                    result,
                    at_ms: wall_ms(),
                };
                if !report(tx, node, update) {
                    return Wait::Stop;
                }
                if conn.is_none() {
                    return Wait::Go;
                }
            }
            Err(RecvTimeoutError::Timeout) => return Wait::Go,
            Err(RecvTimeoutError::Disconnected) => return Wait::Stop,
        }
    }
}

/// Sends one command and interprets the reply.
pub fn run_command(conn: &mut AgentConnection, command: &NodeCommand) -> Result<String, String> {
    let request = match command {
        NodeCommand::Switchover => Request::Switchover,
        NodeCommand::Inject(fault) => Request::Inject {
            fault: fault.clone(),
        },
    };
    match conn.request(&request) {
        Ok(Reply::Ack { message }) => Ok(message),
        Ok(Reply::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected reply: {other:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn poll_worker(
    node: usize,
    agent: &AgentAddr,
    timeout: Duration,
    tx: &Sender<Action>,
    rx: &Receiver<NodeCommand>,
    stop: &AtomicBool,
) {
    let mut conn: Option<AgentConnection> = None;
    let mut backoff = Backoff::default();
    let mut next_status = Instant::now();
    let mut next_sessions = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match AgentConnection::connect(agent, timeout) {
                Ok(c) => {
                    next_status = Instant::now();
                    next_sessions = Instant::now();
                    conn.insert(c)
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if !report(
                        tx,
                        node,
                        NetUpdate::Unreachable {
                            error,
                            at_ms: wall_ms(),
                        },
                    ) {
                        return;
                    }
                    match serve_commands(node, backoff.fail(), &mut conn, tx, rx) {
                        Wait::Go => continue,
                        Wait::Stop => return,
                    }
                }
            },
        };
        let mut failure = None;
        if Instant::now() >= next_status {
            next_status = Instant::now() + STATUS_EVERY;
            match c.request(&Request::Status) {
                Ok(Reply::Status(status)) => {
                    backoff.reset();
                    let update = NetUpdate::Status {
                        status: Box::new(status),
                        at_ms: wall_ms(),
                    };
                    if !report(tx, node, update) {
                        return;
                    }
                }
                Ok(Reply::Error { message }) => {
                    failure = Some(format!("status refused: {message}"))
                }
                Ok(other) => failure = Some(format!("unexpected reply to status: {other:?}")),
                Err(e) => failure = Some(format!("{e:#}")),
            }
        }
        if failure.is_none() && Instant::now() >= next_sessions {
            next_sessions = Instant::now() + SESSIONS_EVERY;
            match c.request(&Request::Sessions) {
                Ok(Reply::Sessions(list)) => {
                    let update = NetUpdate::Sessions {
                        list,
                        at_ms: wall_ms(),
                    };
                    if !report(tx, node, update) {
                        return;
                    }
                }
                Ok(Reply::Error { message }) => {
                    if !report(tx, node, NetUpdate::SessionsUnavailable { message }) {
                        return;
                    }
                }
                Ok(other) => failure = Some(format!("unexpected reply to sessions: {other:?}")),
                Err(e) => failure = Some(format!("{e:#}")),
            }
        }
        let wait = match failure {
            Some(error) => {
                conn = None;
                if !report(
                    tx,
                    node,
                    NetUpdate::Unreachable {
                        error,
                        at_ms: wall_ms(),
                    },
                ) {
                    return;
                }
                backoff.fail()
            }
            None => next_status
                .min(next_sessions)
                .saturating_duration_since(Instant::now()),
        };
        if let Wait::Stop = serve_commands(node, wait, &mut conn, tx, rx) {
            return;
        }
    }
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}

fn event_worker(
    node: usize,
    agent: &AgentAddr,
    timeout: Duration,
    tx: &Sender<Action>,
    stop: &AtomicBool,
) {
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::Relaxed) {
        match follow_events(node, agent, timeout, tx, stop, &mut backoff) {
            Ok(()) => return,
            Err(_) => {
                // The poll worker reports the agent as unreachable; just retry.
                let until = Instant::now() + backoff.fail();
                while Instant::now() < until {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Follows one event stream until it breaks (`Err`) or the app is gone (`Ok`).
fn follow_events(
    node: usize,
    agent: &AgentAddr,
    timeout: Duration,
    tx: &Sender<Action>,
    stop: &AtomicBool,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let mut conn = AgentConnection::connect(agent, timeout)?;
    conn.request_stream(&Request::Events)?;
    conn.set_read_timeout(Some(EVENT_READ_TICK))?;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match conn.read_reply() {
            Ok(Reply::Event(event)) => {
                backoff.reset();
                if !report(tx, node, NetUpdate::Event(event)) {
                    return Ok(());
                }
            }
            Ok(Reply::Error { message }) => anyhow::bail!("event stream refused: {message}"),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_5s_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.fail().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.fail(), BACKOFF_MIN);
    }

    #[test]
    fn an_absent_agent_is_reported_unreachable_and_commands_fail_fast() {
        // Nothing listens on port 1 of localhost.
        let agent: AgentAddr = "127.0.0.1:1".parse().expect("address");
        let (tx, rx) = mpsc::channel();
        let workers = Workers::spawn(&[agent], Duration::from_millis(200), &tx);
        let mut unreachable = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !unreachable && Instant::now() < deadline {
            if let Ok(Action::Net {
                update: NetUpdate::Unreachable { .. },
                ..
            }) = rx.recv_timeout(Duration::from_millis(100))
            {
                unreachable = true;
            }
        }
        assert!(unreachable);
        workers
            .send(0, NodeCommand::Switchover)
            .expect("worker alive");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut failed = false;
        while !failed && Instant::now() < deadline {
            if let Ok(Action::Net {
                update: NetUpdate::CommandDone { result: Err(_), .. },
                ..
            }) = rx.recv_timeout(Duration::from_millis(100))
            {
                failed = true;
            }
        }
        assert!(failed, "a command to an unreachable agent fails");
    }
}
