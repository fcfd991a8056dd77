//! The NFQUEUE thread: every packet of the service passes through here.
//!
//! The `nfq` queue is blocking and must be verdicted by the thread that owns it
//! (crates.md), so it runs on its own `std::thread` with the sans-IO [`Tracker`].
//! Each packet is fed to the tracker; the records it yields get consecutive sequence
//! numbers and go to the replication task. Inbound packets are accepted at once.
//! Outbound packets, in `sync` mode, are **held** until the backup has acknowledged
//! the record sequence number current when they were seen (design §3: nothing leaves
//! the master that the backup has not acknowledged). Holding is pipelined: any number
//! of packets wait, and one acknowledgement releases every packet it covers, in order.
//!
//! Waking: acknowledgements and commands arrive on a channel; an `eventfd` wakes the
//! thread, which `poll`s the queue's netlink socket and the eventfd together. `nfq`
//! 0.2.5 does not expose its socket, so we find it right after `Queue::open` as the
//! one new `AF_NETLINK`/`NETLINK_NETFILTER` descriptor of this process.

use crate::session::queue_rules;
use crate::session::tracker::{Direction, Tracker, TrackerLimits};
use anyhow::{bail, Context};
use nonstop_shared::session::{Record, SessionState};
use std::collections::{HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Half-open sessions idle this long are forgotten (SYN floods, lost handshakes).
pub const HANDSHAKE_IDLE_MS: u64 = 30_000;
/// Established sessions without a packet for this long are forgotten (a peer that
/// vanished without FIN or RST). Long, because an idle session without keepalives
/// is legitimate.
pub const ESTABLISHED_IDLE_MS: u64 = 24 * 3600 * 1000;

/// Most packets held at once; beyond it new outbound packets are dropped (TCP will
/// retransmit them), so memory stays bounded while the backup is away.
pub const MAX_HELD: usize = 65_536;

/// Settings of the interceptor.
#[derive(Debug, Clone)]
pub struct InterceptorConfig {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Service ports.
    pub ports: Vec<u16>,
    /// NFQUEUE number.
    pub queue: u16,
    /// Tracker limits.
    pub limits: TrackerLimits,
}

/// A record with its replication sequence number.
pub type Sequenced = (u64, Record);

/// Requests to the interceptor thread.
#[derive(Debug)]
pub enum QueueCommand {
    /// The backup has applied every record up to this sequence number.
    Acked(u64),
    /// Hold outbound packets until acknowledged (sync mode on a master) or not.
    SetHolding(bool),
    /// Full records of every session and the sequence number they are current at.
    Snapshot(tokio::sync::oneshot::Sender<(u64, Vec<Record>)>),
    /// The current table, for status and the console.
    Sessions(tokio::sync::oneshot::Sender<Vec<SessionState>>),
    /// Stop: release held packets, remove the table, end the thread.
    Stop,
}

/// Counters the thread keeps, readable from anywhere.
#[derive(Debug, Default)]
pub struct InterceptorStats {
    /// Packets seen, inbound.
    pub packets_in: AtomicU64,
    /// Packets seen, outbound.
    pub packets_out: AtomicU64,
    /// Packets the tracker rejected as malformed (accepted unchanged).
    pub malformed: AtomicU64,
    /// Packets held right now.
    pub held: AtomicU64,
    /// Packets dropped because too many were held.
    pub overflow_drops: AtomicU64,
    /// Last record sequence number issued.
    pub last_seq: AtomicU64,
    /// Last sequence number the backup acknowledged.
    pub acked_seq: AtomicU64,
    /// Sessions in the table.
    pub sessions: AtomicU64,
    /// Whether holding is on.
    pub holding: AtomicBool,
}

/// The handle other tasks use to talk to the thread.
#[derive(Debug, Clone)]
pub struct InterceptorHandle {
    commands: mpsc::Sender<QueueCommand>,
    wake: Arc<EventFd>,
    /// Live counters.
    pub stats: Arc<InterceptorStats>,
}

impl InterceptorHandle {
    /// Sends a command and wakes the thread.
    pub fn send(&self, command: QueueCommand) {
        if self.commands.send(command).is_ok() {
            self.wake.notify();
        }
    }

    /// Asks for the session table.
    pub async fn sessions(&self) -> Vec<SessionState> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(QueueCommand::Sessions(tx));
        rx.await.unwrap_or_default()
    }

    /// Asks for a snapshot: (sequence number, full records).
    pub async fn snapshot(&self) -> Option<(u64, Vec<Record>)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(QueueCommand::Snapshot(tx));
        rx.await.ok()
    }
}

/// Starts the thread: opens and configures the queue, then installs the queue rules
/// (in that order, so no packet meets a queue nobody reads), seeded with the
/// sessions restored from disk.
pub fn spawn(
    config: InterceptorConfig,
    records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
    restored: Vec<SessionState>,
    first_seq: u64,
) -> anyhow::Result<(InterceptorHandle, std::thread::JoinHandle<()>)> {
    let (commands_tx, commands_rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new().context("eventfd")?);
    let stats = Arc::new(InterceptorStats::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = {
        let wake = Arc::clone(&wake);
        let stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("nfqueue".into())
            .spawn(move || {
                let mut worker = match Worker::open(
                    config,
                    records,
                    commands_rx,
                    wake,
                    stats,
                    restored,
                    first_seq,
                ) {
                    Ok(worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker.run();
            })
            .context("cannot start the nfqueue thread")?
    };
    ready_rx
        .recv()
        .context("nfqueue thread died during setup")??;
    Ok((
        InterceptorHandle {
            commands: commands_tx,
            wake,
            stats,
        },
        thread,
    ))
}

struct Held {
    required: u64,
    message: nfq::Message,
}

struct Worker {
    queue: nfq::Queue,
    queue_fd: RawFd,
    tracker: Tracker,
    records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
    commands: mpsc::Receiver<QueueCommand>,
    wake: Arc<EventFd>,
    stats: Arc<InterceptorStats>,
    next_seq: u64,
    acked: u64,
    holding: bool,
    held: VecDeque<Held>,
}

impl Worker {
    fn open(
        config: InterceptorConfig,
        records: tokio::sync::mpsc::UnboundedSender<Sequenced>,
        commands: mpsc::Receiver<QueueCommand>,
        wake: Arc<EventFd>,
        stats: Arc<InterceptorStats>,
        restored: Vec<SessionState>,
        first_seq: u64,
    ) -> anyhow::Result<Worker> {
        let before = netfilter_sockets()?;
        let mut queue = nfq::Queue::open().context("cannot open NFQUEUE (need CAP_NET_ADMIN)")?;
        let after = netfilter_sockets()?;
        let mut new: Vec<RawFd> = after.difference(&before).copied().collect();
        if new.len() != 1 {
            bail!(
                "cannot identify the NFQUEUE socket ({} candidates)",
                new.len()
            );
        }
        let queue_fd = new.remove(0);
        // A burst larger than the socket buffer makes the kernel drop packets on the
        // way to us ("user_dropped" in /proc/net/netfilter/nfnetlink_queue), which TCP
        // repairs only after a retransmission timeout: give the socket room.
        set_socket_int(
            queue_fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RCVBUF_BYTES,
        )
        .context("cannot enlarge the NFQUEUE socket buffer")?;
        queue
            .bind(config.queue)
            .with_context(|| format!("cannot bind NFQUEUE {}", config.queue))?;
        queue.set_copy_range(config.queue, 0xffff)?;
        queue.set_queue_max_len(config.queue, MAX_HELD as u32)?;
        queue.set_fail_open(config.queue, false)?;
        queue.set_recv_gso(config.queue, false)?;
        queue.set_nonblocking(true);
        queue_rules::install(config.vip, &config.ports, config.queue)?;
        let mut tracker = Tracker::new(config.vip, &config.ports, config.limits);
        tracker.restore(restored);
        stats
            .sessions
            .store(tracker.len() as u64, Ordering::Relaxed);
        tracing::info!(queue = config.queue, vip = %config.vip, ports = ?config.ports, sessions = tracker.len(), "intercepting service traffic");
        Ok(Worker {
            queue,
            queue_fd,
            tracker,
            records,
            commands,
            wake,
            stats,
            next_seq: first_seq,
            acked: first_seq.saturating_sub(1),
            holding: false,
            held: VecDeque::new(),
        })
    }

    fn run(&mut self) {
        let mut last_error_log = Instant::now() - Duration::from_secs(10);
        let mut last_expiry = Instant::now();
        loop {
            if last_expiry.elapsed() >= Duration::from_secs(1) {
                last_expiry = Instant::now();
                let now_ms = crate::events::unix_ms();
                for record in self
                    .tracker
                    .expire(now_ms, HANDSHAKE_IDLE_MS, ESTABLISHED_IDLE_MS)
                {
                    tracing::info!(session = %record.key(), "idle session expired");
                    self.issue(record);
                }
            }
            // Everything the socket has, then everything the channel has.
            loop {
                match self.queue.recv() {
                    Ok(message) => self.on_packet(message),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // A rejected verdict of an earlier packet shows up here.
                        if last_error_log.elapsed() > Duration::from_secs(1) {
                            tracing::warn!(error = %e, "NFQUEUE receive error");
                            last_error_log = Instant::now();
                        }
                        break;
                    }
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(QueueCommand::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.stop();
                        return;
                    }
                    Ok(command) => self.on_command(command),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            self.release();
            if let Err(e) = poll_two(self.queue_fd, self.wake.fd(), 1000) {
                tracing::warn!(error = %e, "poll failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            self.wake.drain();
        }
    }

    fn on_packet(&mut self, mut message: nfq::Message) {
        let now_ms = crate::events::unix_ms();
        let outcome = self.tracker.on_packet(message.get_payload(), now_ms);
        let outbound = match outcome {
            Ok(outcome) => {
                for record in outcome.records {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let _ = self.records.send((seq, record));
                }
                self.stats
                    .last_seq
                    .store(self.next_seq - 1, Ordering::Relaxed);
                self.stats
                    .sessions
                    .store(self.tracker.len() as u64, Ordering::Relaxed);
                matches!(outcome.direction, Direction::Outbound)
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "packet not tracked");
                false
            }
        };
        let counter = if outbound {
            &self.stats.packets_out
        } else {
            &self.stats.packets_in
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let required = self.next_seq - 1;
        if outbound && self.holding && (required > self.acked || !self.held.is_empty()) {
            if self.held.len() >= MAX_HELD {
                self.stats.overflow_drops.fetch_add(1, Ordering::Relaxed);
                message.set_verdict(nfq::Verdict::Drop);
                self.verdict(message);
                return;
            }
            self.held.push_back(Held { required, message });
            self.stats
                .held
                .store(self.held.len() as u64, Ordering::Relaxed);
            return;
        }
        message.set_verdict(nfq::Verdict::Accept);
        self.verdict(message);
    }

    /// Numbers a record and hands it to replication.
    fn issue(&mut self, record: Record) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = self.records.send((seq, record));
        self.stats.last_seq.store(seq, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.tracker.len() as u64, Ordering::Relaxed);
    }

    fn on_command(&mut self, command: QueueCommand) {
        match command {
            QueueCommand::Acked(seq) => {
                self.acked = self.acked.max(seq);
                self.stats.acked_seq.store(self.acked, Ordering::Relaxed);
            }
            QueueCommand::SetHolding(on) => {
                if self.holding != on {
                    tracing::info!(holding = on, "outbound holding changed");
                }
                self.holding = on;
                self.stats.holding.store(on, Ordering::Relaxed);
                if !on {
                    self.release_all();
                }
            }
            QueueCommand::Snapshot(reply) => {
                let _ = reply.send((self.next_seq - 1, self.tracker.snapshot()));
            }
            QueueCommand::Sessions(reply) => {
                let _ = reply.send(self.tracker.sessions().cloned().collect());
            }
            QueueCommand::Stop => {}
        }
    }

    /// Releases, in order, every held packet the backup's acknowledgement covers.
    fn release(&mut self) {
        while self.held.front().is_some_and(|h| h.required <= self.acked) {
            if let Some(mut held) = self.held.pop_front() {
                held.message.set_verdict(nfq::Verdict::Accept);
                self.verdict(held.message);
            }
        }
        self.stats
            .held
            .store(self.held.len() as u64, Ordering::Relaxed);
    }

    fn release_all(&mut self) {
        while let Some(mut held) = self.held.pop_front() {
            held.message.set_verdict(nfq::Verdict::Accept);
            self.verdict(held.message);
        }
        self.stats.held.store(0, Ordering::Relaxed);
    }

    fn verdict(&mut self, message: nfq::Message) {
        if let Err(e) = self.queue.verdict(message) {
            tracing::warn!(error = %e, "NFQUEUE verdict failed");
        }
    }

    /// Shutdown: held packets are dropped, not released (their state may never reach
    /// the backup; TCP retransmits them), and the table goes with the agent.
    fn stop(&mut self) {
        while let Some(mut held) = self.held.pop_front() {
            held.message.set_verdict(nfq::Verdict::Drop);
            self.verdict(held.message);
        }
        if let Err(e) = queue_rules::remove() {
            tracing::error!(error = %e, "could not remove the queue rules");
        }
        tracing::info!("interception stopped");
    }
}

/// Receive buffer of the NFQUEUE socket.
pub const RCVBUF_BYTES: libc::c_int = 32 << 20;

fn set_socket_int(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: valid pointer to a c_int and its length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Descriptors of this process that are netfilter netlink sockets.
fn netfilter_sockets() -> anyhow::Result<HashSet<RawFd>> {
    let mut found = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("reading /proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if socket_int(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
            && socket_int(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        {
            found.insert(fd);
        }
    }
    Ok(found)
}

fn socket_int(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to a c_int and its length; a non-socket fd just fails.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Waits until either descriptor is readable or `timeout_ms` passes.
fn poll_two(a: RawFd, b: RawFd, timeout_ms: i32) -> std::io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of two pollfd structs.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// A Linux eventfd used to wake the thread.
#[derive(Debug)]
pub struct EventFd(RawFd);

impl EventFd {
    /// A new non-blocking eventfd.
    pub fn new() -> std::io::Result<EventFd> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventFd(fd))
    }

    fn fd(&self) -> RawFd {
        self.0
    }

    /// Makes the descriptor readable.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN when empty is fine.
        unsafe { libc::read(self.0, (&mut value as *mut u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}
