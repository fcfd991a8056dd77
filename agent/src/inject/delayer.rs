//! The delayer: this kernel has no `netem`, so delay is an NFQUEUE of our own whose
//! thread holds every packet for the requested time, then accepts it, in order.
//!
//! # Where the packets are taken (and why the session manager still sees them)
//! NFQUEUE is terminal *within one hook function*: a packet the delayer accepts skips
//! the rest of that table's chain. The kernel, however, then continues with the next
//! hook function registered at the same hook (the next priority). So the delay
//! rules live in tables that run at a different priority from `filter`, where the
//! session manager's `NFQUEUE` rules are (priority 0, [`crate::session::queue_rules`]):
//! - inbound: chain `NONSTOP_DELAY_IN` in table `mangle`, jumped to from `INPUT`
//!   (priority −150): a packet from the wire is delayed *before* the session manager
//!   sees it, as a slow cable would;
//! - outbound: chain `NONSTOP_DELAY_OUT` in table `security`, jumped to from `OUTPUT`
//!   (priority 150 with iptables-nft): a packet is delayed *after* the session manager
//!   has tracked (and, in sync mode, released) it, again as a slow cable would.
//!
//! Each packet therefore passes through the session manager's queue exactly once,
//! and a held outbound packet does not inflate the sync-mode holding time.
//! The delay applies per packet and per direction: a round trip through this host
//! (e.g. a ping from the other node) gains twice the delay.
//!
//! The rules are iptables (nf_tables backend, xtables `NFQUEUE` through the compat
//! layer) because this kernel has no nftables `queue` expression. They carry
//! `--queue-bypass`: if the agent dies, nobody serves the queue and packets pass
//! undelayed instead of being black-holed; the next agent start removes the rules.
//! The chains are (re)filled atomically by `iptables-restore --noflush`. Only IPv4
//! is delayed (no ip6tables rules).
//!
//! # The thread
//! `nfq` must be verdicted from the thread that owns the queue (crates.md). The thread
//! receives packet metadata only (copy mode "meta": the payload is never copied nor
//! written back), stamps each packet `release_at = max(now + delay, last release on
//! that interface)` so order is kept per interface even when the delay changes, and
//! accepts packets as they come due. It sleeps in `poll(2)` on the queue's netlink
//! socket with the time to the next release as timeout (found the same way as the
//! interceptor finds its socket; if that fails it polls every millisecond). Delays
//! are therefore never shorter than asked and at most ~1 ms longer.

use super::command;
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Chain (table `mangle`, from `INPUT`) that queues inbound packets to the delayer.
pub const DELAY_CHAIN_IN: &str = "NONSTOP_DELAY_IN";
/// Chain (table `security`, from `OUTPUT`) that queues outbound packets to the delayer.
pub const DELAY_CHAIN_OUT: &str = "NONSTOP_DELAY_OUT";
/// `(table, built-in chain, our chain)` for both directions.
pub const DELAY_HOOKS: [(&str, &str, &str); 2] = [
    ("mangle", "INPUT", DELAY_CHAIN_IN),
    ("security", "OUTPUT", DELAY_CHAIN_OUT),
];
/// Most packets held at once; beyond it new packets are dropped (a full buffer).
pub const MAX_HELD: usize = 16_384;
/// Longest sleep of an idle thread, so a stop request is seen promptly.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// The `iptables-restore --noflush` script that refills both chains so packets on
/// each of `interfaces` go to NFQUEUE `queue` (pure). Declaring a chain flushes it.
pub fn restore_script(interfaces: &[String], queue: u16) -> String {
    let mut script = String::new();
    for ((table, _, chain), flag) in DELAY_HOOKS.iter().zip(["-i", "-o"]) {
        script.push_str(&format!("*{table}\n:{chain} - [0:0]\n"));
        for interface in interfaces {
            script.push_str(&format!(
                "-A {chain} {flag} {interface} -j NFQUEUE --queue-num {queue} --queue-bypass\n"
            ));
        }
        script.push_str("COMMIT\n");
    }
    script
}

fn iptables(table: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-w", "-t", table];
    all.extend_from_slice(args);
    command::run("iptables", &all, None)
}

fn iptables_ok(table: &str, args: &[&str]) -> Result<bool, String> {
    let mut all = vec!["-w", "-t", table];
    all.extend_from_slice(args);
    command::succeeds("iptables", &all)
}

/// Fills both chains for `interfaces` and makes sure `INPUT`/`OUTPUT` jump to them
/// (once, first rule).
pub fn install_rules(interfaces: &[String], queue: u16) -> Result<(), String> {
    command::run(
        "iptables-restore",
        &["-w", "--noflush"],
        Some(&restore_script(interfaces, queue)),
    )?;
    for (table, hook, chain) in DELAY_HOOKS {
        if !iptables_ok(table, &["-C", hook, "-j", chain])? {
            iptables(table, &["-I", hook, "1", "-j", chain])?;
        }
    }
    Ok(())
}

/// Whether either chain exists.
pub fn rules_exist() -> Result<bool, String> {
    for (table, _, chain) in DELAY_HOOKS {
        if iptables_ok(table, &["-S", chain])? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the jumps and both chains, whichever exist; `true` when something was
/// removed. Tables it finds without our chain are not touched.
pub fn remove_rules() -> Result<bool, String> {
    let mut removed = false;
    for (table, hook, chain) in DELAY_HOOKS {
        if !iptables_ok(table, &["-S", chain])? {
            continue;
        }
        // Every jump (a crashed run may have left more than one).
        for _ in 0..16 {
            if !iptables_ok(table, &["-D", hook, "-j", chain])? {
                break;
            }
        }
        iptables(table, &["-F", chain])?;
        iptables(table, &["-X", chain])?;
        removed = true;
    }
    Ok(removed)
}

/// A running delayer thread serving one NFQUEUE.
#[derive(Debug)]
pub struct Delayer {
    queue: u16,
    delays: Arc<Mutex<HashMap<u32, Duration>>>,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicU64>,
    thread: Option<JoinHandle<usize>>,
}

impl Delayer {
    /// Opens and configures NFQUEUE `queue` on a new thread (before any rule sends
    /// packets to it); fails with the reason if the queue cannot be bound.
    pub fn start(queue: u16) -> Result<Delayer, String> {
        let delays = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let delays = Arc::clone(&delays);
            let stop = Arc::clone(&stop);
            let held = Arc::clone(&held);
            std::thread::Builder::new()
                .name("delayer".into())
                .spawn(move || match Worker::open(queue, delays, stop, held) {
                    Ok(mut worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.run()
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        0
                    }
                })
                .map_err(|e| format!("cannot start the delayer thread: {e}"))?
        };
        let mut delayer = Delayer {
            queue,
            delays,
            stop,
            held,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(delayer),
            Ok(Err(e)) => {
                delayer.stop();
                Err(e)
            }
            Err(_) => {
                delayer.stop();
                Err("the delayer thread died while opening its queue".into())
            }
        }
    }

    /// The NFQUEUE number it serves.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Packets held right now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// From now on, delays packets of each interface index in `delays` (in or out)
    /// by its duration; packets of other interfaces pass at once.
    pub fn set_delays(&self, delays: HashMap<u32, Duration>) {
        *self.delays.lock().unwrap_or_else(PoisonError::into_inner) = delays;
    }

    /// Stops the thread: every held packet is accepted at once (in order) and the
    /// queue is closed. Returns how many packets were released early.
    pub fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Held {
    release_at: Instant,
    message: nfq::Message,
}

struct Worker {
    queue: nfq::Queue,
    queue_num: u16,
    /// The queue's netlink socket, when it could be identified.
    fd: Option<RawFd>,
    delays: Arc<Mutex<HashMap<u32, Duration>>>,
    stop: Arc<AtomicBool>,
    held_count: Arc<AtomicU64>,
    /// Held packets per interface index, oldest first, release times non-decreasing.
    held: HashMap<u32, VecDeque<Held>>,
    total: usize,
    dropped: u64,
}

impl Worker {
    fn open(
        queue_num: u16,
        delays: Arc<Mutex<HashMap<u32, Duration>>>,
        stop: Arc<AtomicBool>,
        held_count: Arc<AtomicU64>,
    ) -> Result<Worker, String> {
        let setup = |what: &str, e: std::io::Error| {
            format!("delayer: cannot {what} NFQUEUE {queue_num}: {e}")
        };
        let (mut queue, fd) = crate::nfqueue::open_queue().map_err(|e| setup("open", e))?;
        queue
            .bind(queue_num)
            .map_err(|e| setup("bind (is another process serving it?)", e))?;
        queue
            .set_copy_range(queue_num, 0)
            .map_err(|e| setup("set the copy mode of", e))?;
        queue
            .set_queue_max_len(queue_num, MAX_HELD as u32)
            .map_err(|e| setup("set the length of", e))?;
        queue
            .set_fail_open(queue_num, false)
            .map_err(|e| setup("configure", e))?;
        queue
            .set_recv_gso(queue_num, true)
            .map_err(|e| setup("configure GSO on", e))?;
        queue.set_nonblocking(true);
        tracing::info!(
            queue = queue_num,
            poll = fd.is_some(),
            "delayer serving its queue"
        );
        Ok(Worker {
            queue,
            queue_num,
            fd,
            delays,
            stop,
            held_count,
            held: HashMap::new(),
            total: 0,
            dropped: 0,
        })
    }

    /// Serves the queue until stopped; returns how many packets were released early.
    fn run(&mut self) -> usize {
        let mut last_error_log: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return self.release_all();
            }
            loop {
                match self.queue.recv() {
                    Ok(message) => self.on_packet(message),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        if !matches!(last_error_log, Some(t) if t.elapsed() <= Duration::from_secs(1))
                        {
                            tracing::warn!(error = %e, "delayer: NFQUEUE receive error");
                            last_error_log = Some(Instant::now());
                        }
                        break;
                    }
                }
            }
            let next = self.release_due(Instant::now());
            let wait = next
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            self.wait(wait);
        }
    }

    fn on_packet(&mut self, mut message: nfq::Message) {
        let ifindex = match message.get_indev() {
            0 => message.get_outdev(),
            index => index,
        };
        let delay = self
            .delays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ifindex)
            .copied()
            .unwrap_or_default();
        let deque = self.held.entry(ifindex).or_default();
        if delay.is_zero() && deque.is_empty() {
            message.set_verdict(nfq::Verdict::Accept);
            self.verdict(message);
            return;
        }
        if self.total >= MAX_HELD {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(dropped = self.dropped, "delayer full: dropping packets");
            }
            message.set_verdict(nfq::Verdict::Drop);
            self.verdict(message);
            return;
        }
        let now = Instant::now();
        let release_at = deque
            .back()
            .map_or(now + delay, |last| last.release_at.max(now + delay));
        deque.push_back(Held {
            release_at,
            message,
        });
        self.total += 1;
        self.held_count.store(self.total as u64, Ordering::Relaxed);
    }

    /// Accepts every packet due at `now`; returns the earliest pending release.
    fn release_due(&mut self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for deque in self.held.values_mut() {
            while deque.front().is_some_and(|h| h.release_at <= now) {
                if let Some(held) = deque.pop_front() {
                    due.push(held.message);
                }
            }
            if let Some(front) = deque.front() {
                next = Some(next.map_or(front.release_at, |n| n.min(front.release_at)));
            }
        }
        self.total -= due.len();
        for mut message in due {
            message.set_verdict(nfq::Verdict::Accept);
            self.verdict(message);
        }
        self.held_count.store(self.total as u64, Ordering::Relaxed);
        next
    }

    fn release_all(&mut self) -> usize {
        let mut released = 0;
        for (_, mut deque) in self.held.drain() {
            while let Some(mut held) = deque.pop_front() {
                held.message.set_verdict(nfq::Verdict::Accept);
                if let Err(e) = self.queue.verdict(held.message) {
                    tracing::warn!(error = %e, "delayer: verdict failed");
                }
                released += 1;
            }
        }
        self.total = 0;
        self.held_count.store(0, Ordering::Relaxed);
        if let Err(e) = self.queue.unbind(self.queue_num) {
            tracing::debug!(error = %e, "delayer: unbind");
        }
        tracing::info!(released, "delayer stopped");
        released
    }

    fn verdict(&mut self, message: nfq::Message) {
        if let Err(e) = self.queue.verdict(message) {
            tracing::warn!(error = %e, "delayer: verdict failed");
        }
    }

    /// Sleeps until the queue is readable or `timeout` passes (rounded up to 1 ms).
    fn wait(&self, timeout: Duration) {
        let Some(fd) = self.fd else {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            return;
        };
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the descriptor stays open while `self.queue` lives.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_queues_in_mangle_and_out_in_security_with_bypass() {
        let script = restore_script(&["sync0".into(), "eth0".into()], 107);
        assert_eq!(
            script,
            "*mangle\n:NONSTOP_DELAY_IN - [0:0]\n\
             -A NONSTOP_DELAY_IN -i sync0 -j NFQUEUE --queue-num 107 --queue-bypass\n\
             -A NONSTOP_DELAY_IN -i eth0 -j NFQUEUE --queue-num 107 --queue-bypass\n\
             COMMIT\n\
             *security\n:NONSTOP_DELAY_OUT - [0:0]\n\
             -A NONSTOP_DELAY_OUT -o sync0 -j NFQUEUE --queue-num 107 --queue-bypass\n\
             -A NONSTOP_DELAY_OUT -o eth0 -j NFQUEUE --queue-num 107 --queue-bypass\n\
             COMMIT\n"
        );
    }

    #[test]
    fn no_interface_leaves_empty_chains() {
        let script = restore_script(&[], 7);
        assert!(!script.contains("-A "));
        assert_eq!(script.matches("COMMIT").count(), 2);
    }

    #[test]
    fn the_delay_tables_are_not_the_session_managers() {
        // The session manager's NFQUEUE rules are in `filter`; NFQUEUE is terminal
        // per table, so sharing it would make one of the two queues skip packets.
        for (table, _, _) in DELAY_HOOKS {
            assert_ne!(table, "filter");
        }
    }
}
