//! Session recovery, measured on the real lab (run via `scripts/bench-recovery`, as
//! root). Three parts, each on fresh labs with both agents managing `nonstop-echo`:
//!
//! 1. **Per-session recovery time** (the paper's table): N idle sessions, a planned
//!    switchover; the new master reports how long restoring took (first forged SYN to
//!    last handshake completed) — divided by N it is the paper's "average recovery
//!    time per session" — with per-session p50/p99 and promotion-to-last-restored.
//!    Every session is then checked with one echo round.
//! 2. **Client-visible pause**: N sessions each ping every `--ping-ms` (a 16-byte
//!    numbered message, echo checked); the largest gap between two echoes of a session
//!    spanning a planned switchover or a master crash (SIGKILL of agent and service,
//!    `heartbeat_ms` 50 × 3), p50/p99/max over the sessions.
//!    `--replica hot|cold|both` runs it with a cold replica (restored sessions), a
//!    hot one (sessions taken over by their mirrors), or both side by side.
//! 3. **Post-failover overhead**: after a switchover, echo RTT and bulk throughput on a
//!    restored (translated) session versus a fresh session through the same new master.
//!
//! Prints Markdown tables and writes a JSON result.

use nonstop_e2e::{
    bin, lab_with_agents_configured, logs, percentile, require_root, status_of, wait_for,
};
use nonstop_lab::{run_in_netns, Lab, LabGuard, Node};
use nonstop_shared::config::ReplicaMode;
use nonstop_shared::control::ReplicationView;
use nonstop_shared::Mode;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    /// Replica modes part 2 (the pause) runs in (`--replica hot|cold|both`).
    replicas: Vec<ReplicaMode>,
    sizes: Vec<usize>,
    pause_sizes: Vec<usize>,
    ping_ms: u64,
    rtt_samples: usize,
    bulk_mib: usize,
    out: String,
}

fn parse_list(value: &str, flag: &str) -> Result<Vec<usize>, String> {
    value
        .split(',')
        .map(|v| v.trim().parse().map_err(|_| format!("bad {flag}: `{v}`")))
        .collect()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        replicas: vec![ReplicaMode::Cold],
        sizes: vec![64, 128, 256, 512, 1024, 4096, 10_000],
        pause_sizes: vec![256, 1024],
        ping_ms: 10,
        rtt_samples: 3000,
        bulk_mib: 32,
        out: "target/bench/recovery.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => args.sizes = parse_list(&value()?, "--sizes")?,
            "--pause-sizes" => args.pause_sizes = parse_list(&value()?, "--pause-sizes")?,
            "--ping-ms" => args.ping_ms = value()?.parse().map_err(|_| "bad --ping-ms")?,
            "--rtt-samples" => {
                args.rtt_samples = value()?.parse().map_err(|_| "bad --rtt-samples")?
            }
            "--bulk-mib" => args.bulk_mib = value()?.parse().map_err(|_| "bad --bulk-mib")?,
            "--out" => args.out = value()?,
            "--replica" => {
                args.replicas = match value()?.as_str() {
                    "both" => vec![ReplicaMode::Cold, ReplicaMode::Hot],
                    v => vec![v.parse::<ReplicaMode>()?],
                }
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bench-recovery [--sizes 64,128,...] [--pause-sizes 256,1024] \
                     [--ping-ms 10] [--rtt-samples 3000] [--bulk-mib 32] \
                     [--replica cold|hot|both] [--out FILE]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.ping_ms == 0 {
        return Err("--ping-ms must be at least 1".into());
    }
    Ok(args)
}

/// Lets this process (and the agents and services it starts, which inherit the limit)
/// hold one descriptor per session and then some: the soft limit goes up to `want`,
/// at most to the hard limit (raising that needs CAP_SYS_RESOURCE).
fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = want.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            eprintln!(
                "warning: cannot raise RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    limit.rlim_cur
}

/// A lab with both agents managing the echo service, heartbeats every `heartbeat_ms`,
/// in `replica` mode (hot: the backup's service runs too).
fn echo_lab(tag: &str, heartbeat_ms: u64, replica: ReplicaMode) -> LabGuard {
    let echo = bin("nonstop-echo");
    let lab = lab_with_agents_configured(tag, heartbeat_ms, 3, |c| {
        c.service.command = Some(format!("{} --listen 0.0.0.0:7000", echo.display()));
        c.service.replica = replica;
    });
    wait_for(Duration::from_secs(10), || {
        let s = status_of(&lab, Node::Master)?;
        let b = status_of(&lab, Node::Backup)?;
        let backup_ready = replica == ReplicaMode::Cold || b.app?.pid.is_some();
        (s.app?.pid.is_some() && s.replication.connected && backup_ready).then_some(())
    })
    .unwrap_or_else(|e| panic!("service never started: {e}\n{}", logs(&lab)));
    // The service must listen before the first connection.
    std::thread::sleep(Duration::from_millis(300));
    lab
}

/// Opens `n` sessions from the peer namespace (one thread, joined to it once).
fn connect_many(lab: &Lab, n: usize) -> Vec<TcpStream> {
    let vip = SocketAddr::from((lab.vip(), 7000));
    run_in_netns(&lab.namespace("peer"), move || {
        (0..n)
            .map(|_| {
                let s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                Ok(s)
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .unwrap_or_else(|e| panic!("cannot open {n} sessions: {e}"))
}

/// One echo round over every session: (answered correctly, broken).
fn echo_round(streams: &mut [TcpStream], tag: &str) -> (usize, usize) {
    let mut broken = vec![false; streams.len()];
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("{tag} {i:06}\n");
        broken[i] = s.write_all(msg.as_bytes()).is_err();
    }
    for (i, s) in streams.iter_mut().enumerate() {
        if broken[i] {
            continue;
        }
        let want = format!("{tag} {i:06}\n");
        let mut got = vec![0u8; want.len()];
        broken[i] = s.read_exact(&mut got).is_err() || got != want.as_bytes();
    }
    let bad = broken.iter().filter(|b| **b).count();
    (streams.len() - bad, bad)
}

fn wait_restored(lab: &Lab, node: Node, at_least: u64, limit: Duration) -> ReplicationView {
    wait_for(limit, || {
        let s = status_of(lab, node)?;
        let r = s.replication;
        // A hot replica's sessions are taken over by their mirrors, not restored.
        (s.mode == Mode::Master
            && r.restore_pending == 0
            && r.restored + r.mirrors_adopted >= at_least)
            .then_some(r)
    })
    .unwrap_or_else(|e| {
        panic!(
            "restore of {at_least} sessions not reported: {e}\n{}",
            logs(lab)
        )
    })
}

fn switchover(lab: &Lab) {
    let out = std::process::Command::new(bin("nonstop-console"))
        .args(["--lab", lab.name(), "switchover"])
        .output()
        .expect("run nonstop-console");
    assert!(
        out.status.success(),
        "switchover failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(lab)
    );
}

/// Part 1: the paper's table.
fn per_session(sizes: &[usize]) -> Vec<serde_json::Value> {
    println!("\n## Per-session recovery time (planned switchover, sync mode)\n");
    println!("| sessions | restore total ms | avg per session ms | per-session p50 ms | p99 ms | promotion→last restored ms | failed | broken after |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &n in sizes {
        let lab = echo_lab("brps", 100, ReplicaMode::Cold);
        let mut streams = connect_many(&lab, n);
        let (_, broken_before) = echo_round(&mut streams, "before");
        assert_eq!(
            broken_before, 0,
            "{n}: sessions broken before the switchover"
        );
        wait_for(Duration::from_secs(60), || {
            let s = status_of(&lab, Node::Backup)?;
            (s.replication.sessions >= n as u64).then_some(())
        })
        .unwrap_or_else(|e| panic!("{n}: backup never had every session: {e}"));
        switchover(&lab);
        let r = wait_restored(&lab, Node::Backup, n as u64, Duration::from_secs(120));
        let (_, broken) = echo_round(&mut streams, "after");
        let total_ms = r.restore_ms;
        let avg_ms = total_ms as f64 / n as f64;
        println!(
            "| {n} | {total_ms} | {avg_ms:.3} | {:.3} | {:.3} | {} | {} | {broken} |",
            r.restore_session_p50_us as f64 / 1000.0,
            r.restore_session_p99_us as f64 / 1000.0,
            r.restore_since_promotion_ms,
            r.restore_failed
        );
        rows.push(json!({
            "sessions": n, "restore_total_ms": total_ms, "avg_per_session_ms": avg_ms,
            "session_p50_us": r.restore_session_p50_us, "session_p99_us": r.restore_session_p99_us,
            "since_promotion_ms": r.restore_since_promotion_ms, "failed": r.restore_failed,
            "broken_after": broken,
        }));
    }
    rows
}

/// Pingers: one thread runs every session's ping loop (non-blocking sockets, poll).
struct Pingers {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<Instant>>>,
}

/// Starts pinging every `interval` on each session; returns the echo arrival times
/// per session when stopped. A session that breaks stops pinging (its times end).
fn start_pingers(streams: Vec<TcpStream>, interval: Duration) -> Pingers {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || ping_loop(streams, interval, &flag));
    Pingers { stop, thread }
}

fn ping_loop(
    mut streams: Vec<TcpStream>,
    interval: Duration,
    stop: &AtomicBool,
) -> Vec<Vec<Instant>> {
    use std::os::fd::AsRawFd;
    const MSG: usize = 16;
    let n = streams.len();
    for s in &streams {
        let _ = s.set_nonblocking(true);
    }
    let mut arrivals: Vec<Vec<Instant>> = vec![Vec::new(); n];
    let mut seq = vec![0u64; n];
    let mut waiting = vec![false; n];
    let mut buf: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut alive = vec![true; n];
    let start = Instant::now();
    // Spread the first pings over one interval.
    let mut next_send: Vec<Instant> = (0..n)
        .map(|i| start + interval.mul_f64(i as f64 / n.max(1) as f64))
        .collect();
    let message = |i: usize, k: u64| format!("{i:06} {k:08}\n").into_bytes();
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(n);
    let mut who: Vec<usize> = Vec::with_capacity(n);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut soonest = now + interval;
        for i in 0..n {
            if alive[i] && !waiting[i] {
                if now >= next_send[i] {
                    seq[i] += 1;
                    match streams[i].write(&message(i, seq[i])) {
                        Ok(MSG) => waiting[i] = true,
                        Ok(_) | Err(_) => alive[i] = false,
                    }
                    next_send[i] += interval;
                    if next_send[i] < now {
                        next_send[i] = now + interval;
                    }
                } else {
                    soonest = soonest.min(next_send[i]);
                }
            }
        }
        fds.clear();
        who.clear();
        for i in (0..n).filter(|&i| alive[i] && waiting[i]) {
            fds.push(libc::pollfd {
                fd: streams[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            who.push(i);
        }
        let timeout_ms = soonest
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(0, 50) as libc::c_int;
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready <= 0 {
            continue;
        }
        for (k, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let i = who[k];
            let mut chunk = [0u8; MSG];
            match streams[i].read(&mut chunk) {
                Ok(0) => alive[i] = false,
                Ok(got) => {
                    buf[i].extend_from_slice(&chunk[..got]);
                    if buf[i].len() >= MSG {
                        let echo: Vec<u8> = buf[i].drain(..MSG).collect();
                        if echo != message(i, seq[i]) {
                            eprintln!(
                                "session {i}: wrong echo {:?}",
                                String::from_utf8_lossy(&echo)
                            );
                            alive[i] = false;
                        } else {
                            arrivals[i].push(Instant::now());
                            waiting[i] = false;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => alive[i] = false,
            }
        }
    }
    for s in &streams {
        let _ = s.set_nonblocking(false);
    }
    streams.clear();
    arrivals
}

/// Part 2: the largest echo gap per session across a switchover or a crash, for each
/// replica mode (hot: every session mirrored before the event).
fn pauses(sizes: &[usize], ping: Duration, replicas: &[ReplicaMode]) -> Vec<serde_json::Value> {
    println!("\n## Client-visible pause (largest gap between echoes; ping every {} ms; heartbeat_ms 50 × 3)\n", ping.as_millis());
    println!("| replica | event | sessions | pause p50 ms | p99 ms | max ms | sessions broken | hot taken over |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &replica in replicas {
        for &n in sizes {
            for event in ["switchover", "crash"] {
                let lab = echo_lab("brpa", 50, replica);
                let streams = connect_many(&lab, n);
                wait_for(Duration::from_secs(60), || {
                    let s = status_of(&lab, Node::Backup)?;
                    let mirrored =
                        replica == ReplicaMode::Cold || s.replication.mirrors >= n as u64;
                    (s.replication.sessions >= n as u64 && mirrored).then_some(())
                })
                .unwrap_or_else(|e| panic!("{n}: backup never had every session: {e}"));
                let pingers = start_pingers(streams, ping);
                std::thread::sleep(Duration::from_secs(2));
                let event_at = Instant::now();
                match event {
                    "switchover" => switchover(&lab),
                    _ => lab.kill_all("master").expect("crash the master"),
                }
                let taken = wait_restored(&lab, Node::Backup, n as u64, Duration::from_secs(60));
                std::thread::sleep(Duration::from_secs(3));
                pingers.stop.store(true, Ordering::Relaxed);
                let arrivals = pingers.thread.join().expect("pinger thread");
                let end = Instant::now() - Duration::from_millis(500);
                let mut gaps = Vec::new();
                let mut broken = 0;
                for times in &arrivals {
                    // A session that did not answer to the end is broken.
                    if times.last().is_none_or(|t| *t < end) {
                        broken += 1;
                        continue;
                    }
                    let gap = times
                        .windows(2)
                        .filter(|w| w[1] >= event_at)
                        .map(|w| (w[1] - w[0]).as_micros() as u64)
                        .max()
                        .unwrap_or(0);
                    gaps.push(gap);
                }
                gaps.sort_unstable();
                let ms = |us: u64| us as f64 / 1000.0;
                println!(
                    "| {} | {event} | {n} | {:.1} | {:.1} | {:.1} | {broken} | {} |",
                    replica.as_str(),
                    ms(percentile(&gaps, 50.0)),
                    ms(percentile(&gaps, 99.0)),
                    ms(gaps.last().copied().unwrap_or(0)),
                    taken.mirrors_adopted
                );
                rows.push(json!({
                "replica": replica.as_str(), "hot_taken_over": taken.mirrors_adopted,
                "event": event, "sessions": n, "ping_ms": ping.as_millis() as u64,
                "pause_p50_us": percentile(&gaps, 50.0), "pause_p99_us": percentile(&gaps, 99.0),
                "pause_max_us": gaps.last().copied().unwrap_or(0), "broken": broken,
            }));
            }
        }
    }
    rows
}

fn rtt(s: &mut TcpStream, samples: usize) -> Vec<u64> {
    let msg = [b'r'; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        s.read_exact(&mut back).expect("read");
        assert_eq!(back, msg, "echo differs");
        out.push(t.elapsed().as_micros() as u64);
    }
    out.sort_unstable();
    out
}

/// MiB/s echoing `mib` MiB (a writer thread, the reader here, bytes checked).
fn bulk(s: &TcpStream, mib: usize) -> f64 {
    let total = mib << 20;
    let mut writer = s.try_clone().expect("clone");
    let mut reader = s.try_clone().expect("clone");
    let began = Instant::now();
    let w = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < total {
            let k = chunk.len().min(total - sent);
            writer.write_all(&chunk[..k]).expect("bulk write");
            sent += k;
        }
    });
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    while got < total {
        let k = reader.read(&mut buf).expect("bulk read");
        assert!(k > 0, "bulk session closed");
        for (j, b) in buf[..k].iter().enumerate() {
            assert_eq!(*b, (((got + j) % 65536) % 251) as u8, "bulk byte differs");
        }
        got += k;
    }
    w.join().expect("writer");
    total as f64 / (1 << 20) as f64 / began.elapsed().as_secs_f64()
}

/// Part 3: restored versus fresh sessions through the same new master.
fn overhead(samples: usize, mib: usize) -> serde_json::Value {
    let lab = echo_lab("brov", 100, ReplicaMode::Cold);
    let mut restored = connect_many(&lab, 2);
    echo_round(&mut restored, "warm");
    switchover(&lab);
    wait_restored(&lab, Node::Backup, 2, Duration::from_secs(20));
    // Let the old master rejoin as backup so both kinds are replicated alike.
    wait_for(Duration::from_secs(10), || {
        status_of(&lab, Node::Backup)?
            .replication
            .connected
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("replication never reconnected: {e}"));
    let mut fresh = connect_many(&lab, 2);
    let r_rtt = rtt(&mut restored[0], samples);
    let f_rtt = rtt(&mut fresh[0], samples);
    let r_bulk = bulk(&restored[1], mib);
    let f_bulk = bulk(&fresh[1], mib);
    println!(
        "\n## After a switchover: restored (translated) versus fresh sessions, same new master\n"
    );
    println!("| session | RTT p50 µs | RTT p99 µs | bulk MiB/s |");
    println!("|---|---:|---:|---:|");
    for (name, rtts, mbps) in [("restored", &r_rtt, r_bulk), ("fresh", &f_rtt, f_bulk)] {
        println!(
            "| {name} | {} | {} | {mbps:.1} |",
            percentile(rtts, 50.0),
            percentile(rtts, 99.0)
        );
    }
    json!({
        "restored": {"rtt_p50_us": percentile(&r_rtt, 50.0), "rtt_p99_us": percentile(&r_rtt, 99.0), "bulk_mib_s": r_bulk},
        "fresh": {"rtt_p50_us": percentile(&f_rtt, 50.0), "rtt_p99_us": percentile(&f_rtt, 99.0), "bulk_mib_s": f_bulk},
        "rtt_samples": samples, "bulk_mib": mib,
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-recovery: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if !require_root() {
        eprintln!("bench-recovery: needs root (it builds labs in network namespaces)");
        return std::process::ExitCode::from(2);
    }
    let largest = args
        .sizes
        .iter()
        .chain(&args.pause_sizes)
        .max()
        .copied()
        .unwrap_or(0);
    let fds = raise_fd_limit(largest as u64 + 4096);
    if (fds as usize) < largest + 256 {
        eprintln!(
            "bench-recovery: {largest} sessions need more than the {fds} descriptors allowed here"
        );
        return std::process::ExitCode::from(2);
    }
    let per_session = per_session(&args.sizes);
    let pauses = pauses(
        &args.pause_sizes,
        Duration::from_millis(args.ping_ms),
        &args.replicas,
    );
    let overhead = overhead(args.rtt_samples, args.bulk_mib);
    let result = json!({"per_session": per_session, "pauses": pauses, "overhead": overhead});
    if let Some(dir) = std::path::Path::new(&args.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&result).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nwrote {}", args.out),
        Err(e) => eprintln!("cannot write {}: {e}", args.out),
    }
    std::process::ExitCode::SUCCESS
}
