//! Session groups: ordinary TCP connections from the lab's peer namespace to
//! VIP:7000 that exchange numbered data and check every byte, continuously, on one
//! thread per group, from the `open` step until the drill ends.
//!
//! Each *round*, every live session of a group sends one message:
//! - `echo`/`bulk`: the echo must come back byte-exact and in order;
//! - `chat`: every member must hear every live member's line of that round, in
//!   order per sender (lines from anybody else, e.g. people in the demo, are ignored);
//! - `slow`: the round's share of a stream (`message_bytes`) is written and read
//!   back slowly ([`super::slow`]), byte for byte;
//! - `stateful`: `INCR` and `WHO` to `nonstop-kv`; every reply must be what the
//!   protocol says (`nonstop_shared::kv::check`); a wrong one counts as a *wrong reply*.
//!
//! A session is *broken* on EOF, a reset or any other error, a corrupted byte, or no
//! progress for [`STALL_LIMIT`] — except that a slow session reset cleanly (at once,
//! every byte so far exact) counts as a *reset* and connects again. *Lost bytes* are
//! bytes sent that never came back (a broken echo session's outstanding bytes, chat
//! lines a member never heard) and bytes that came back wrong, a hole included.
//! Message formats and checks are pure functions at the top of this file and in
//! [`super::slow`] and `nonstop_shared::kv::check`; the thread below them is the only I/O.

use super::slow;
use super::spec::Workload;
use anyhow::Context;
use nonstop_shared::kv::check::{self as stateful, KvCheck, Request};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A session that makes no progress for this long is broken.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// After the drill's last step, how long an unfinished round may take to complete.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(15);
/// Read/write timeout of each socket operation (the loop checks stop/stall between).
const IO_TICK: Duration = Duration::from_millis(100);
/// A reset counts as clean only if it came this soon after the session's last
/// progress (later, the session stalled first).
pub const RESET_PROMPT: Duration = Duration::from_secs(10);

/// The echo/bulk message of `session` in `round`: a header naming both, then a
/// pattern that depends on the position, `bytes` long, ending in a newline.
pub fn echo_message(group: &str, session: usize, round: u64, bytes: usize) -> Vec<u8> {
    let mut msg = format!("{group}:{session}:{round}:").into_bytes();
    let mut i = msg.len();
    while msg.len() + 1 < bytes {
        msg.push(b'a' + ((i * 7 + session * 13 + round as usize) % 26) as u8);
        i += 1;
    }
    msg.push(b'\n');
    msg
}

/// The chat line of `session` in `round` (newline included). Same shape as
/// [`echo_message`], so [`parse_chat_line`] can tell who said it and when.
pub fn chat_line(group: &str, session: usize, round: u64, bytes: usize) -> Vec<u8> {
    echo_message(group, session, round, bytes)
}

/// `(session, round)` of one of our group's chat lines; `None` for anybody else's.
pub fn parse_chat_line(group: &str, line: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix(group)?.strip_prefix(':')?;
    let mut parts = rest.splitn(3, ':');
    let session = parts.next()?.parse().ok()?;
    let round = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((session, round))
}

/// Index of the first byte where `got` differs from `want` (`None`: identical).
pub fn first_mismatch(want: &[u8], got: &[u8]) -> Option<usize> {
    if want == got {
        return None;
    }
    Some(
        want.iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(got.len())),
    )
}

/// What a chat receiver makes of one line from a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The next line from that sender, intact.
    Ok,
    /// Intact, but `missed` earlier rounds of that sender never arrived.
    AfterGap {
        /// Rounds skipped.
        missed: u64,
    },
    /// A round already heard (a duplicate) or a line that does not match.
    Bad,
}

/// Checks a member's line against what the receiver expects next from that sender.
pub fn judge_chat_line(
    group: &str,
    sender: usize,
    round: u64,
    expected_round: u64,
    line: &[u8],
    bytes: usize,
) -> Heard {
    if round < expected_round || line != chat_line(group, sender, round, bytes).as_slice() {
        return Heard::Bad;
    }
    match round - expected_round {
        0 => Heard::Ok,
        missed => Heard::AfterGap { missed },
    }
}

/// One session's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionStats {
    /// The peer-side port (stays the same: no reconnects).
    pub local_port: u16,
    /// Bytes written.
    pub sent: u64,
    /// Bytes read back and found correct.
    pub verified: u64,
    /// Bytes lost or corrupted.
    pub lost: u64,
    /// Why the session broke, if it did.
    pub broken: Option<String>,
    /// Replies the protocol forbids (stateful).
    pub wrong_replies: u64,
    /// The first wrong reply: what came, what was due.
    pub first_wrong: Option<String>,
    /// Clean resets after which the session connected again (slow).
    pub resets: u64,
}

/// A group's figures, shared between its thread and the runner.
#[derive(Debug, Clone)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Workload.
    pub workload: Workload,
    /// Per session.
    pub sessions: Vec<SessionStats>,
    /// Completed rounds: (started, finished), in order.
    pub rounds: Vec<(Instant, Instant)>,
    /// When each clean reset was seen.
    pub resets: Vec<Instant>,
}

impl GroupStats {
    /// Wrong replies over all sessions.
    pub fn wrong_replies(&self) -> u64 {
        self.sessions.iter().map(|s| s.wrong_replies).sum()
    }

    /// Clean resets seen at or after `t`.
    pub fn resets_since(&self, t: Instant) -> u64 {
        self.resets.iter().filter(|r| **r >= t).count() as u64
    }

    /// Sessions that broke.
    pub fn broken(&self) -> u64 {
        self.sessions.iter().filter(|s| s.broken.is_some()).count() as u64
    }

    /// Bytes lost or corrupted.
    pub fn lost(&self) -> u64 {
        self.sessions.iter().map(|s| s.lost).sum()
    }

    /// The first completed round that started at or after `t`: how long after `t` it
    /// finished.
    pub fn resumed_after(&self, t: Instant) -> Option<Duration> {
        self.rounds
            .iter()
            .find(|(start, _)| *start >= t)
            .map(|(_, end)| end.duration_since(t))
    }

    /// Longest time between two consecutive completed rounds.
    pub fn max_gap(&self) -> Duration {
        self.rounds
            .windows(2)
            .map(|w| w[1].1.duration_since(w[0].1))
            .max()
            .unwrap_or_default()
    }
}

/// One connection and what is buffered from it.
struct Conn {
    stream: TcpStream,
    inbox: Vec<u8>,
    /// Chat: next round expected from each sender.
    next: Vec<u64>,
    /// Stateful: the session's expected state.
    kv: Option<KvCheck>,
    /// Slow: the writer and how far the stream was read.
    slow: Option<SlowState>,
}

/// A slow session's reading side.
struct SlowState {
    writer: slow::Writer,
    /// Stream bytes read back (all exact).
    received: u64,
    /// Bytes of this connection's stream counted in the session's figures before it
    /// (earlier connections of the session, reset cleanly).
    base_sent: u64,
    last_progress: Instant,
}

impl Conn {
    fn new(
        stream: TcpStream,
        workload: Workload,
        name: &str,
        index: usize,
        sessions: usize,
    ) -> std::io::Result<Conn> {
        let slow = match workload {
            Workload::Slow => Some(SlowState {
                writer: slow::Writer::start(&stream)?,
                received: 0,
                base_sent: 0,
                last_progress: Instant::now(),
            }),
            _ => None,
        };
        Ok(Conn {
            stream,
            inbox: Vec::new(),
            next: vec![1; sessions],
            kv: (workload == Workload::Stateful).then(|| KvCheck::new(name, index)),
            slow,
        })
    }
}

/// Controls shared with the group's thread.
#[derive(Debug, Default)]
struct Flags {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicBool,
}

/// A running group: its thread, its figures and its controls.
pub struct Group {
    stats: Arc<Mutex<GroupStats>>,
    flags: Arc<Flags>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Connects from `ns` to `addr`; a refusal is tried again for up to 2 s (the settled
/// pair's service was just started: its process exists, its listener may not yet).
fn connect_patiently(ns: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match nonstop_lab::connect_in_netns(ns, addr, Duration::from_secs(3)) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Group {
    /// Connects `sessions` sessions from namespace `ns` to `addr` and starts checking
    /// them. Fails if any session cannot connect.
    pub fn open(
        ns: &str,
        addr: SocketAddr,
        name: &str,
        workload: Workload,
        sessions: usize,
        bytes: usize,
        interval: Duration,
    ) -> anyhow::Result<Group> {
        let mut conns = Vec::with_capacity(sessions);
        let mut stats = Vec::with_capacity(sessions);
        for i in 0..sessions {
            let stream = connect_for(workload, ns, addr)
                .with_context(|| format!("group {name}: session {i} cannot connect to {addr}"))?;
            stats.push(SessionStats {
                local_port: stream.local_addr().map_or(0, |a| a.port()),
                ..SessionStats::default()
            });
            conns.push(
                Conn::new(stream, workload, name, i, sessions)
                    .context("cannot start a slow session's writer")?,
            );
        }
        let shared = Arc::new(Mutex::new(GroupStats {
            name: name.to_owned(),
            workload,
            sessions: stats,
            rounds: Vec::new(),
            resets: Vec::new(),
        }));
        let flags = Arc::new(Flags::default());
        let mut worker = Worker {
            ns: ns.to_owned(),
            addr,
            name: name.to_owned(),
            workload,
            bytes,
            interval,
            conns,
            stats: Arc::clone(&shared),
            flags: Arc::clone(&flags),
            local: lock(&shared).sessions.clone(),
            stop_deadline: None,
        };
        match workload {
            Workload::Chat => worker.join_chat()?,
            Workload::Stateful => worker.open_kv()?,
            _ => {}
        }
        let thread = std::thread::Builder::new()
            .name(format!("drill-{name}"))
            .spawn(move || worker.run())
            .context("cannot start a workload thread")?;
        Ok(Group {
            stats: shared,
            flags,
            thread: Some(thread),
        })
    }

    /// A copy of the figures right now.
    pub fn snapshot(&self) -> GroupStats {
        lock(&self.stats).clone()
    }

    /// Asks the thread to stop at the next round boundary and waits until it has
    /// (the running round may take up to [`DRAIN_LIMIT`] to finish).
    pub fn stop(&mut self) -> GroupStats {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.flags.pause.store(false, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.snapshot()
    }

    /// Asks the thread to hold still at the next round boundary.
    pub fn request_pause(&self) {
        self.flags.pause.store(true, Ordering::SeqCst);
    }

    /// Whether the thread is holding still (or has ended).
    pub fn is_paused(&self) -> bool {
        self.flags.paused.load(Ordering::SeqCst)
            || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Lets a paused thread go on.
    pub fn resume(&self) {
        self.flags.pause.store(false, Ordering::SeqCst);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Connects one session of `workload` and sets its socket up (slow: a small receive
/// buffer, reads that only look).
fn connect_for(workload: Workload, ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = if workload == Workload::Slow {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match slow::connect(ns, addr) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        }
    } else {
        connect_patiently(ns, addr)?
    };
    stream.set_nodelay(true)?;
    // A slow session's reads only look (its writer thread has its own timeout).
    stream.set_read_timeout(Some(if workload == Workload::Slow {
        Duration::from_millis(1)
    } else {
        IO_TICK
    }))?;
    stream.set_write_timeout(Some(IO_TICK))?;
    Ok(stream)
}

/// Why a read or write gave up.
enum IoEnd {
    /// The session is broken (reason).
    Broken(String),
    /// The drill ended and the drain time ran out.
    Drained,
}

struct Worker {
    /// Where sessions connect from and to (slow sessions connect again after a reset).
    ns: String,
    addr: SocketAddr,
    name: String,
    workload: Workload,
    bytes: usize,
    interval: Duration,
    conns: Vec<Conn>,
    stats: Arc<Mutex<GroupStats>>,
    flags: Arc<Flags>,
    /// The thread's own copy of the session figures, published after each round.
    local: Vec<SessionStats>,
    stop_deadline: Option<Instant>,
}

impl Worker {
    fn live(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.local[i].broken.is_none())
            .collect()
    }

    fn publish(&self, round: Option<(Instant, Instant)>) {
        let mut s = lock(&self.stats);
        s.sessions.clone_from(&self.local);
        if let Some(r) = round {
            s.rounds.push(r);
        }
    }

    fn publish_reset(&self, at: Instant) {
        let mut s = lock(&self.stats);
        s.resets.push(at);
        s.sessions.clone_from(&self.local);
    }

    fn stopping(&mut self) -> bool {
        if self.flags.stop.load(Ordering::SeqCst) {
            self.stop_deadline
                .get_or_insert_with(|| Instant::now() + DRAIN_LIMIT);
            true
        } else {
            false
        }
    }

    fn break_session(&mut self, i: usize, why: String) {
        let s = &mut self.local[i];
        if s.broken.is_none() {
            if !matches!(self.workload, Workload::Chat | Workload::Stateful) {
                s.lost += s.sent.saturating_sub(s.verified + s.lost);
            }
            s.broken = Some(why);
            let _ = self.conns[i].stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Writes all of `data` (retrying timeouts until the stall limit).
    fn write_fully(&mut self, i: usize, data: &[u8]) -> Result<(), IoEnd> {
        let mut done = 0;
        let mut last_progress = Instant::now();
        while done < data.len() {
            match self.conns[i].stream.write(&data[done..]) {
                Ok(0) => return Err(IoEnd::Broken("write returned 0".into())),
                Ok(n) => {
                    done += n;
                    self.local[i].sent += n as u64;
                    last_progress = Instant::now();
                }
                Err(e) if is_timeout(&e) => self.check_stall(last_progress, "write")?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(IoEnd::Broken(format!("write: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads until session `i`'s inbox holds at least `want` bytes.
    fn fill(&mut self, i: usize, want: usize) -> Result<(), IoEnd> {
        let mut last_progress = Instant::now();
        let mut buf = [0u8; 64 * 1024];
        while self.conns[i].inbox.len() < want {
            match self.conns[i].stream.read(&mut buf) {
                Ok(0) => return Err(IoEnd::Broken("connection closed (EOF)".into())),
                Ok(n) => {
                    self.conns[i].inbox.extend_from_slice(&buf[..n]);
                    last_progress = Instant::now();
                }
                Err(e) if is_timeout(&e) => self.check_stall(last_progress, "read")?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(IoEnd::Broken(format!("read: {e}"))),
            }
        }
        Ok(())
    }

    fn check_stall(&mut self, last_progress: Instant, what: &str) -> Result<(), IoEnd> {
        if last_progress.elapsed() >= STALL_LIMIT {
            return Err(IoEnd::Broken(format!(
                "{what} stalled for {} s",
                STALL_LIMIT.as_secs()
            )));
        }
        self.stopping();
        if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(IoEnd::Drained);
        }
        Ok(())
    }

    fn end(&mut self, i: usize, end: IoEnd) {
        let why = match end {
            IoEnd::Broken(why) => why,
            IoEnd::Drained => format!(
                "round unfinished {} s after the drill's last step",
                DRAIN_LIMIT.as_secs()
            ),
        };
        self.break_session(i, why);
    }

    /// Chat: every member says hello and waits to hear itself, which proves the chat
    /// service has subscribed it to the room before round 1.
    fn join_chat(&mut self) -> anyhow::Result<()> {
        for i in 0..self.conns.len() {
            let hello = format!("{}:{i}:0:hello\n", self.name);
            if let Err(IoEnd::Broken(why)) = self.write_fully(i, hello.as_bytes()) {
                anyhow::bail!(
                    "group {}: session {i} cannot join the chat: {why}",
                    self.name
                );
            }
            self.local[i].sent = 0;
        }
        for i in 0..self.conns.len() {
            let hello = format!("{}:{i}:0:hello", self.name);
            loop {
                let line = match self.next_line(i) {
                    Ok(line) => line,
                    Err(end) => {
                        let why = match end {
                            IoEnd::Broken(why) => why,
                            IoEnd::Drained => "stopped".to_owned(),
                        };
                        anyhow::bail!(
                            "group {}: session {i} never heard itself join the chat: {why}",
                            self.name
                        );
                    }
                };
                if line.strip_suffix(b"\n") == Some(hello.as_bytes()) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The next complete line from session `i` (newline included).
    fn next_line(&mut self, i: usize) -> Result<Vec<u8>, IoEnd> {
        loop {
            if let Some(pos) = self.conns[i].inbox.iter().position(|&b| b == b'\n') {
                return Ok(self.conns[i].inbox.drain(..=pos).collect());
            }
            let have = self.conns[i].inbox.len();
            self.fill(i, have + 1)?;
        }
    }

    fn run(mut self) {
        let mut round = 0u64;
        loop {
            if self.stopping() {
                break;
            }
            if self.flags.pause.load(Ordering::SeqCst) {
                self.flags.paused.store(true, Ordering::SeqCst);
                while self.flags.pause.load(Ordering::SeqCst) && !self.stopping() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.flags.paused.store(false, Ordering::SeqCst);
                continue;
            }
            let live = self.live();
            if live.is_empty() {
                break;
            }
            round += 1;
            let started = Instant::now();
            let complete = match self.workload {
                Workload::Echo => self.echo_round(round, &live),
                Workload::Bulk => self.bulk_round(round, &live),
                Workload::Chat => self.chat_round(round, &live),
                Workload::Stateful => self.stateful_round(&live),
                Workload::Slow => self.slow_round(&live),
            };
            let finished = Instant::now();
            self.publish(complete.then_some((started, finished)));
            // Slow sessions pause between reads, not between rounds.
            let pause = if self.workload == Workload::Slow {
                Duration::ZERO
            } else {
                self.interval
            };
            let until = Instant::now() + pause;
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(5).min(self.interval));
            }
        }
        self.publish(None);
        for conn in &mut self.conns {
            // Stops and joins the writer threads.
            conn.slow = None;
        }
    }

    /// Verifies `len` bytes of session `i`'s inbox against `want`.
    fn verify(&mut self, i: usize, want: &[u8]) -> bool {
        let got: Vec<u8> = self.conns[i].inbox.drain(..want.len()).collect();
        match first_mismatch(want, &got) {
            None => {
                self.local[i].verified += want.len() as u64;
                true
            }
            Some(at) => {
                self.local[i].verified += at as u64;
                self.local[i].lost += (want.len() - at) as u64;
                self.break_session(
                    i,
                    format!(
                        "corrupted: byte {} of the echo differs (expected {:?}, got {:?})",
                        self.local[i].verified,
                        String::from_utf8_lossy(&want[at..(at + 16).min(want.len())]),
                        String::from_utf8_lossy(&got[at..(at + 16).min(got.len())])
                    ),
                );
                false
            }
        }
    }

    fn echo_round(&mut self, round: u64, live: &[usize]) -> bool {
        let mut ok = true;
        for &i in live {
            let msg = echo_message(&self.name, i, round, self.bytes);
            if let Err(e) = self.write_fully(i, &msg) {
                self.end(i, e);
                ok = false;
            }
        }
        for &i in live {
            if self.local[i].broken.is_some() {
                continue;
            }
            let msg = echo_message(&self.name, i, round, self.bytes);
            match self.fill(i, msg.len()) {
                Ok(()) => ok &= self.verify(i, &msg),
                Err(e) => {
                    self.end(i, e);
                    ok = false;
                }
            }
        }
        ok
    }

    fn bulk_round(&mut self, round: u64, live: &[usize]) -> bool {
        let mut ok = true;
        for &i in live {
            let msg = echo_message(&self.name, i, round, self.bytes);
            let result = self
                .write_fully(i, &msg)
                .and_then(|()| self.fill(i, msg.len()));
            match result {
                Ok(()) => ok &= self.verify(i, &msg),
                Err(e) => {
                    self.end(i, e);
                    ok = false;
                }
            }
        }
        ok
    }

    fn chat_round(&mut self, round: u64, live: &[usize]) -> bool {
        let mut ok = true;
        for &i in live {
            let line = chat_line(&self.name, i, round, self.bytes);
            if let Err(e) = self.write_fully(i, &line) {
                self.end(i, e);
                ok = false;
            }
        }
        let line_len = chat_line(&self.name, 0, round, self.bytes).len() as u64;
        for &r in live {
            // Wait for this round's line from every sender still alive.
            loop {
                if self.local[r].broken.is_some() {
                    ok = false;
                    break;
                }
                let waiting = self
                    .live()
                    .into_iter()
                    .any(|s| self.conns[r].next[s] <= round);
                if !waiting {
                    break;
                }
                let line = match self.next_line(r) {
                    Ok(line) => line,
                    Err(e) => {
                        self.end(r, e);
                        ok = false;
                        break;
                    }
                };
                let Some((sender, said_round)) = parse_chat_line(&self.name, &line) else {
                    continue; // somebody else in the room
                };
                if sender >= self.conns.len() || said_round == 0 {
                    continue;
                }
                let expected = self.conns[r].next[sender];
                match judge_chat_line(&self.name, sender, said_round, expected, &line, self.bytes) {
                    Heard::Ok => {
                        self.local[r].verified += line.len() as u64;
                        self.conns[r].next[sender] = said_round + 1;
                    }
                    Heard::AfterGap { missed } => {
                        self.local[r].verified += line.len() as u64;
                        self.local[r].lost += missed * line_len;
                        self.conns[r].next[sender] = said_round + 1;
                    }
                    Heard::Bad => {
                        self.local[r].lost += line.len() as u64;
                        self.break_session(
                            r,
                            format!(
                                "heard a duplicate or corrupted line from member {sender}: {:?}",
                                String::from_utf8_lossy(&line).trim_end()
                            ),
                        );
                        ok = false;
                        break;
                    }
                }
            }
        }
        ok
    }
}

impl Worker {
    /// Stateful: every session logs in and selects its namespace; any reply but the
    /// protocol's fails the opening.
    fn open_kv(&mut self) -> anyhow::Result<()> {
        let opening: Vec<Vec<Request>> = self
            .conns
            .iter()
            .map(|c| c.kv.as_ref().map(KvCheck::opening).unwrap_or_default())
            .collect();
        for (i, requests) in opening.iter().enumerate() {
            if let Err(IoEnd::Broken(why)) = self.write_fully(i, &stateful::encode(requests)) {
                anyhow::bail!("group {}: session {i} cannot log in: {why}", self.name);
            }
        }
        for (i, requests) in opening.iter().enumerate() {
            for r in requests {
                let reply = match self.next_line(i) {
                    Ok(line) => line,
                    Err(_) => anyhow::bail!(
                        "group {}: session {i} got no reply to {:?}",
                        self.name,
                        r.line
                    ),
                };
                let reply = String::from_utf8_lossy(&reply).trim_end().to_owned();
                if let Some(Err(expected)) = self.conns[i].kv.as_mut().map(|k| k.judge(r, &reply)) {
                    anyhow::bail!(
                        "group {}: session {i}: {:?} answered {reply:?}, not {expected:?} \
                         (is the service nonstop-kv?)",
                        self.name,
                        r.line
                    );
                }
                self.local[i].verified += reply.len() as u64 + 1;
            }
        }
        Ok(())
    }

    fn stateful_round(&mut self, live: &[usize]) -> bool {
        let mut ok = true;
        let mut sent: Vec<(usize, Vec<Request>)> = Vec::with_capacity(live.len());
        for &i in live {
            let Some(requests) = self.conns[i].kv.as_mut().map(KvCheck::round) else {
                continue;
            };
            match self.write_fully(i, &stateful::encode(&requests)) {
                Ok(()) => sent.push((i, requests)),
                Err(e) => {
                    self.end(i, e);
                    ok = false;
                }
            }
        }
        for (i, requests) in sent {
            for r in &requests {
                if self.local[i].broken.is_some() {
                    break;
                }
                let reply = match self.next_line(i) {
                    Ok(line) => line,
                    Err(e) => {
                        self.end(i, e);
                        ok = false;
                        break;
                    }
                };
                let text = String::from_utf8_lossy(&reply).trim_end().to_owned();
                let verdict = self.conns[i].kv.as_mut().map(|k| k.judge(r, &text));
                let s = &mut self.local[i];
                match verdict {
                    Some(Err(expected)) => {
                        s.wrong_replies += 1;
                        s.first_wrong.get_or_insert_with(|| {
                            format!("{:?} answered {text:?}, expected {expected:?}", r.line)
                        });
                        ok = false;
                    }
                    _ => s.verified += reply.len() as u64,
                }
            }
        }
        ok
    }

    /// Slow: every live session's stream goes on by `bytes`, read back slowly.
    fn slow_round(&mut self, live: &[usize]) -> bool {
        let mut ok = true;
        let mut targets: Vec<(usize, u64)> = Vec::with_capacity(live.len());
        for &i in live {
            if let Some(st) = &self.conns[i].slow {
                let target = st.received + self.bytes as u64;
                st.writer.allow(target);
                targets.push((i, target));
            }
        }
        let mut buf = vec![0u8; slow::CHUNK];
        loop {
            let mut waiting = false;
            for (i, target) in targets.iter_mut() {
                let i = *i;
                if self.local[i].broken.is_some() {
                    continue;
                }
                match self.slow_read(i, *target, &mut buf) {
                    SlowRead::Done => {}
                    SlowRead::More => waiting = true,
                    SlowRead::Reconnected(new_target) => {
                        *target = new_target;
                        waiting = true;
                    }
                    SlowRead::Broken => ok = false,
                }
            }
            if !waiting {
                break;
            }
            std::thread::sleep(self.interval);
        }
        ok
    }

    /// One read of slow session `i` toward stream offset `target`.
    fn slow_read(&mut self, i: usize, target: u64, buf: &mut [u8]) -> SlowRead {
        let Some(st) = self.conns[i].slow.as_ref() else {
            return SlowRead::Done;
        };
        let (received, last_progress) = (st.received, st.last_progress);
        self.local[i].sent = st.base_sent + st.writer.written();
        if received >= target {
            return SlowRead::Done;
        }
        let want = (target - received).min(buf.len() as u64) as usize;
        let n = match self.conns[i].stream.read(&mut buf[..want]) {
            Ok(0) => return self.slow_reset(i, last_progress, "connection closed (EOF)"),
            Ok(n) => n,
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => 0,
            Err(e) if slow::is_reset(&e) => {
                return self.slow_reset(i, last_progress, &format!("read: {e}"))
            }
            Err(e) => {
                self.break_session(i, format!("read: {e}"));
                return SlowRead::Broken;
            }
        };
        if n == 0 {
            if last_progress.elapsed() >= STALL_LIMIT {
                let writer = self.conns[i]
                    .slow
                    .as_ref()
                    .and_then(|s| s.writer.error())
                    .map_or(String::new(), |e| format!(" (its writer: {e})"));
                let why = format!(
                    "slow reader stalled for {} s at byte {received} of its stream{writer}",
                    STALL_LIMIT.as_secs()
                );
                self.break_session(i, why);
                return SlowRead::Broken;
            }
            self.stopping();
            if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
                self.end(i, IoEnd::Drained);
                return SlowRead::Broken;
            }
            return SlowRead::More;
        }
        if let Some(bad) = slow::first_wrong(received, &buf[..n]) {
            self.local[i].verified += bad as u64;
            let at = received + bad as u64;
            self.break_session(
                i,
                format!("a hole or a wrong byte at byte {at} of the slow stream"),
            );
            return SlowRead::Broken;
        }
        if let Some(st) = self.conns[i].slow.as_mut() {
            st.received += n as u64;
            st.last_progress = Instant::now();
        }
        self.local[i].verified += n as u64;
        SlowRead::More
    }

    /// Slow session `i` was reset or closed: clean if it came soon after its last
    /// progress (then it connects again), broken otherwise.
    fn slow_reset(&mut self, i: usize, last_progress: Instant, why: &str) -> SlowRead {
        let quiet = last_progress.elapsed();
        if quiet >= RESET_PROMPT {
            self.break_session(
                i,
                format!("reset after {} s without progress: {why}", quiet.as_secs()),
            );
            return SlowRead::Broken;
        }
        self.reconnect_slow(i, why)
    }

    /// A slow session reset cleanly: counted, then connected again.
    fn reconnect_slow(&mut self, i: usize, why: &str) -> SlowRead {
        let at = Instant::now();
        let received = self.conns[i].slow.as_ref().map_or(0, |s| s.received);
        // The bytes written but never read back are not lost (the stream ended
        // visibly); count only what was read.
        self.local[i].sent = self.local[i].verified;
        self.local[i].resets += 1;
        self.conns[i].slow = None;
        self.publish_reset(at);
        let stream = match connect_for(Workload::Slow, &self.ns, self.addr) {
            Ok(s) => s,
            Err(e) => {
                self.break_session(
                    i,
                    format!(
                        "reset cleanly at byte {received} ({why}), then cannot connect again: {e}"
                    ),
                );
                return SlowRead::Broken;
            }
        };
        let writer = match slow::Writer::start(&stream) {
            Ok(w) => w,
            Err(e) => {
                self.break_session(i, format!("cannot start a writer again: {e}"));
                return SlowRead::Broken;
            }
        };
        let target = self.bytes as u64;
        writer.allow(target);
        self.local[i].local_port = stream.local_addr().map_or(0, |a| a.port());
        self.conns[i].stream = stream;
        self.conns[i].slow = Some(SlowState {
            writer,
            received: 0,
            base_sent: self.local[i].sent,
            last_progress: Instant::now(),
        });
        SlowRead::Reconnected(target)
    }
}

/// What one slow read came to.
enum SlowRead {
    /// The session reached its target.
    Done,
    /// Not yet.
    More,
    /// It was reset cleanly and connected again; its new target.
    Reconnected(u64),
    /// It broke.
    Broken,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_asked_size_and_differ() {
        for bytes in [32, 64, 1000, 16384] {
            let m = echo_message("web", 7, 12, bytes);
            assert_eq!(m.len(), bytes);
            assert!(m.starts_with(b"web:7:12:"));
            assert_eq!(m.last(), Some(&b'\n'));
            assert_eq!(m.iter().filter(|&&b| b == b'\n').count(), 1);
        }
        assert_ne!(echo_message("g", 1, 1, 64), echo_message("g", 1, 2, 64));
        assert_ne!(echo_message("g", 1, 1, 64), echo_message("g", 2, 1, 64));
    }

    #[test]
    fn chat_lines_name_their_sender_and_round() {
        let line = chat_line("room", 3, 41, 48);
        assert_eq!(parse_chat_line("room", &line), Some((3, 41)));
        assert_eq!(parse_chat_line("room", b"bot: tick 5\n"), None);
        assert_eq!(parse_chat_line("other", &line), None);
        assert_eq!(parse_chat_line("room", b"room:x:1:zz\n"), None);
    }

    #[test]
    fn mismatches_are_located() {
        assert_eq!(first_mismatch(b"abcdef", b"abcdef"), None);
        assert_eq!(first_mismatch(b"abcdef", b"abXdef"), Some(2));
        assert_eq!(first_mismatch(b"abcdef", b"abc"), Some(3));
    }

    #[test]
    fn chat_lines_are_judged_in_order_per_sender() {
        let l5 = chat_line("g", 1, 5, 48);
        assert_eq!(judge_chat_line("g", 1, 5, 5, &l5, 48), Heard::Ok);
        assert_eq!(
            judge_chat_line("g", 1, 5, 3, &l5, 48),
            Heard::AfterGap { missed: 2 }
        );
        assert_eq!(judge_chat_line("g", 1, 5, 6, &l5, 48), Heard::Bad);
        let mut corrupt = l5.clone();
        corrupt[20] ^= 1;
        assert_eq!(judge_chat_line("g", 1, 5, 5, &corrupt, 48), Heard::Bad);
    }

    #[test]
    fn resumption_is_the_first_round_that_started_after_the_fault() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let stats = GroupStats {
            name: "g".into(),
            workload: Workload::Echo,
            sessions: vec![],
            rounds: vec![(at(0), at(10)), (at(90), at(400)), (at(410), at(420))],
            resets: vec![at(50), at(95)],
        };
        assert_eq!(stats.resets_since(at(90)), 1);
        assert_eq!(stats.resets_since(at(0)), 2);
        assert_eq!(
            stats.resumed_after(at(100)),
            Some(Duration::from_millis(320))
        );
        assert_eq!(stats.resumed_after(at(500)), None);
        assert_eq!(stats.max_gap(), Duration::from_millis(390));
    }
}
