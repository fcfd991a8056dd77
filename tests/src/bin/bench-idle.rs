//! Idle cost of many sessions (run via `scripts/bench-idle`, as root): both agents in
//! sync mode, an echo service on the master, N sessions (default 10,000) opened from
//! the peer and left idle after one echo each. Reports each agent's RSS and its CPU
//! over an idle interval, and checks issue 15's targets (RSS ≤ 64 MiB, CPU ≤ 2 %).
//! Prints the command that reproduces it and writes a JSON result.

use nonstop_e2e::{lab_with_agents_configured, require_root, start_echo, status_of, wait_for};
use nonstop_lab::{connect_in_netns, Node};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Args {
    sessions: usize,
    idle_secs: u64,
    out: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sessions: 10_000,
        idle_secs: 10,
        out: "target/bench/idle.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sessions" => args.sessions = value()?.parse().map_err(|_| "bad --sessions")?,
            "--idle-secs" => args.idle_secs = value()?.parse().map_err(|_| "bad --idle-secs")?,
            "--out" => args.out = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// CPU ticks (user + system) and RSS (KiB) of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// Raises the open-files limit to its hard limit (10,000 sockets need it).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-idle: {e}");
            std::process::exit(2);
        }
    };
    if !require_root() {
        return;
    }
    raise_nofile();
    let command = format!(
        "scripts/bench-idle --sessions {} --idle-secs {}",
        args.sessions, args.idle_secs
    );
    println!("reproduce: {command}");
    let lab = lab_with_agents_configured("boidle", 100, 3, |c| {
        c.session.max_sessions = c.session.max_sessions.max(args.sessions + 100);
    });
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(300));
    let vip = SocketAddr::from((lab.vip(), 7000));
    let ns = lab.namespace("peer");
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::with_capacity(args.sessions);
    let mut buf = [0u8; 8];
    while streams.len() < args.sessions {
        let mut s = match connect_in_netns(&ns, vip, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect {} failed: {e}; retrying", streams.len());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"idle-one").expect("write");
        s.read_exact(&mut buf).expect("echo");
        streams.push(s);
        if streams.len().is_multiple_of(1000) {
            eprintln!(
                "{} sessions ({:.1} s)",
                streams.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let want = args.sessions as u64;
    let replicated = wait_for(Duration::from_secs(60), || {
        let m = status_of(&lab, Node::Master)?;
        let b = status_of(&lab, Node::Backup)?;
        (m.replication.sessions >= want && b.replication.sessions >= want)
            .then_some((m.replication.sessions, b.replication.sessions))
    });
    if let Err(e) = &replicated {
        eprintln!("sessions not all replicated: {e}");
    }
    // Let the opening burst settle (compaction, allocator), then measure idle.
    std::thread::sleep(Duration::from_secs(2));
    let pids = [
        ("master", lab.agent_pid(Node::Master)),
        ("backup", lab.agent_pid(Node::Backup)),
    ];
    let before: Vec<_> = pids.iter().map(|(_, p)| p.and_then(usage)).collect();
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let after: Vec<_> = pids.iter().map(|(_, p)| p.and_then(usage)).collect();
    let mut rows = Vec::new();
    println!();
    println!("| agent | sessions | RSS MiB | idle CPU % | RSS <= 64 MiB | CPU <= 2 % |");
    println!("|---|---:|---:|---:|---|---|");
    for (i, (name, _)) in pids.iter().enumerate() {
        let (Some((t0, _)), Some((t1, rss))) = (before[i], after[i]) else {
            println!("| {name} | - | - | - | - | - |");
            continue;
        };
        let cpu = (t1 - t0) as f64 / 100.0 / args.idle_secs as f64 * 100.0;
        let rss_mib = rss as f64 / 1024.0;
        let sessions = replicated
            .as_ref()
            .map(|(m, b)| if i == 0 { *m } else { *b })
            .unwrap_or(0);
        println!(
            "| {name} | {sessions} | {rss_mib:.1} | {cpu:.2} | {} | {} |",
            if rss_mib <= 64.0 { "yes" } else { "NO" },
            if cpu <= 2.0 { "yes" } else { "NO" }
        );
        rows.push(json!({"agent": name, "sessions": sessions, "rss_mib": (rss_mib * 10.0).round() / 10.0, "idle_cpu_percent": (cpu * 100.0).round() / 100.0}));
    }
    let doc = json!({
        "benchmark": "idle",
        "command": command,
        "sessions": args.sessions,
        "open_seconds": open_secs,
        "idle_seconds": args.idle_secs,
        "agents": rows,
    });
    if let Some(dir) = std::path::Path::new(&args.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nwrote {}", args.out),
        Err(e) => eprintln!("cannot write {}: {e}", args.out),
    }
    drop(streams);
}
