//! Failure-free overhead of the session manager (run via `scripts/bench-overhead`,
//! as root), one run, side by side:
//! - **plain**: the VIP on the master by hand, no agent: the plain kernel path;
//! - **sync**: both agents, sync replication (outbound packets wait for the backup);
//! - **async**: both agents, async replication.
//!
//! - **sync+fsync**: sync with `session.fsync = "always"` (the disk must be off the
//!   critical path: its RTT stays within 20 % of sync's).
//!
//! For each: echo RTT p50/p99 over one session and over 256 concurrent sessions, bulk
//! echo throughput over one session; with agents also replication lag p50/p99 under
//! the 256-session load and the master agent's CPU% and RSS. Every lab also measures
//! the sync link's own round trip (64-byte TCP ping-pong master → backup on the sync
//! addresses), the yardstick of sync mode's cost. `--perf` records the master agent
//! during the bulk transfer (`perf record -e cpu-clock`) and prints its top symbols.
//! Prints a table, the ratios to plain and the issue-15 targets met or missed, and
//! writes a JSON result.

use nonstop_e2e::{
    lab_with_agents_configured, percentile, require_root, start_echo, status_of, unique_name,
};
use nonstop_lab::{connect_in_netns, Lab, LabGuard, LabSpec, Node};
use nonstop_shared::config::{FsyncMode, ReplicationMode};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MSG: usize = 64;

struct Args {
    rtt_samples: usize,
    rounds_256: usize,
    bulk_mib: usize,
    out: String,
    perf: bool,
    /// Agent paths to measure (plain is always measured: it is the yardstick).
    paths: Vec<String>,
}

/// The agent paths, in the order they run.
const PATHS: [&str; 3] = ["sync", "async", "sync+fsync"];

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rtt_samples: 5000,
        rounds_256: 40,
        bulk_mib: 64,
        out: "target/bench/overhead.json".into(),
        perf: false,
        paths: PATHS.iter().map(|p| p.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rtt-samples" => {
                args.rtt_samples = value()?.parse().map_err(|_| "bad --rtt-samples")?
            }
            "--rounds-256" => args.rounds_256 = value()?.parse().map_err(|_| "bad --rounds-256")?,
            "--bulk-mib" => args.bulk_mib = value()?.parse().map_err(|_| "bad --bulk-mib")?,
            "--out" => args.out = value()?,
            "--perf" => args.perf = true,
            "--paths" => {
                let paths: Vec<String> = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = paths.iter().find(|p| !PATHS.contains(&p.as_str())) {
                    return Err(format!("unknown path {bad} (known: {})", PATHS.join(",")));
                }
                args.paths = paths;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn connect(lab: &Lab) -> TcpStream {
    let vip = SocketAddr::from((lab.vip(), 7000));
    let s = connect_in_netns(&lab.namespace("peer"), vip, Duration::from_secs(3))
        .expect("connect to VIP");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Round-trip times (µs) of `n` sequential 64-byte echoes on one session.
fn rtt_one(lab: &Lab, n: usize) -> Vec<u64> {
    let mut s = connect(lab);
    let msg = [b'x'; MSG];
    let mut back = [0u8; MSG];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        s.read_exact(&mut back).expect("read");
        out.push(t.elapsed().as_micros() as u64);
    }
    out
}

/// Per-message RTTs (µs) with 256 sessions: each round writes one message on every
/// session, then reads every echo.
fn rtt_256(lab: &Lab, rounds: usize) -> Vec<u64> {
    let mut streams: Vec<TcpStream> = (0..256).map(|_| connect(lab)).collect();
    let msg = [b'y'; MSG];
    let mut back = [0u8; MSG];
    let mut out = Vec::with_capacity(rounds * 256);
    for _ in 0..rounds {
        let mut sent_at = Vec::with_capacity(256);
        for s in &mut streams {
            sent_at.push(Instant::now());
            s.write_all(&msg).expect("write");
        }
        for (s, t) in streams.iter_mut().zip(sent_at) {
            s.read_exact(&mut back).expect("read");
            out.push(t.elapsed().as_micros() as u64);
        }
    }
    out
}

/// Echo throughput (MiB/s of payload each way) on one session.
fn bulk(lab: &Lab, mib: usize) -> f64 {
    let s = connect(lab);
    let mut reader = s.try_clone().expect("clone");
    let total = mib * 1024 * 1024;
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut s = s;
        let chunk = vec![b'z'; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("bulk write");
            left -= n;
        }
        s
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = reader.read(&mut buf).expect("bulk read");
        assert!(n > 0, "echo closed during bulk");
        got += n;
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = writer.join();
    mib as f64 / secs
}

/// Round trips (µs) of 64-byte TCP ping-pongs from the master's namespace to an echo
/// on the backup's sync address: the sync link's own cost.
fn sync_link_rtt(lab: &Lab, n: usize) -> Vec<u64> {
    let addr = SocketAddr::from((lab.sync_ip(Node::Backup), 7999));
    let listener = lab.listen("backup", addr).expect("listen on the sync link");
    let echo = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; MSG];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
    });
    let mut s = connect_in_netns(&lab.namespace("master"), addr, Duration::from_secs(3))
        .expect("connect over the sync link");
    s.set_nodelay(true).expect("nodelay");
    let msg = [b's'; MSG];
    let mut back = [0u8; MSG];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        s.read_exact(&mut back).expect("read");
        out.push(t.elapsed().as_micros() as u64);
    }
    drop(s);
    let _ = echo.join();
    out
}

/// `perf record` of a process, stopped (SIGINT) by [`Profile::report`].
struct Profile {
    child: std::process::Child,
    data: String,
}

impl Profile {
    fn start(pid: u32, label: &str) -> Option<Profile> {
        let data = format!("/tmp/nonstop-bench-{label}-{}.perf", std::process::id());
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2999",
                "-g",
                "-o",
                &data,
                "-p",
            ])
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf not available: {e}"))
            .ok()?;
        // perf needs a moment to attach before the load starts.
        std::thread::sleep(Duration::from_millis(700));
        Some(Profile { child, data })
    }

    /// Stops the recording; the top `n` symbols (self time) as "pct symbol" lines.
    fn report(mut self, n: usize) -> Vec<String> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = std::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--sort",
                "sym",
                "-i",
            ])
            .arg(&self.data)
            .output();
        let _ = std::fs::remove_file(&self.data);
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .map(str::trim)
            .filter(|l| l.ends_with(|c: char| c.is_ascii_graphic()) && l.contains('%'))
            .filter(|l| !l.starts_with('#'))
            .take(n)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }
}

fn summary(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    json!({ "samples": v.len(), "p50_us": percentile(&v, 50.0), "p99_us": percentile(&v, 99.0) })
}

/// CPU time (ticks) and RSS (KiB) of a process.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
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

fn measure(label: &str, lab: &Lab, args: &Args, agents: bool) -> serde_json::Value {
    eprintln!("{label}: sync link RTT…");
    let link = summary(sync_link_rtt(lab, args.rtt_samples.min(2000)));
    eprintln!("{label}: 1-session RTT…");
    let one = summary(rtt_one(lab, args.rtt_samples));
    // The sync loop's hops over the 1-session echo (medians, µs).
    let hops = agents
        .then(|| status_of(lab, Node::Master))
        .flatten()
        .map(|s| s.replication.sync_hops_us);
    eprintln!("{label}: 256-session RTT…");
    let pid = if agents {
        lab.agent_pid(Node::Master)
    } else {
        None
    };
    let before = pid.and_then(proc_usage);
    let started = Instant::now();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = agents.then(|| {
        let sampling = Arc::clone(&sampling);
        let name = lab.name().to_owned();
        std::thread::spawn(move || {
            let lab = Lab::open(&name).expect("lab");
            let mut lags = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(s) = status_of(&lab, Node::Master) {
                    lags.push(s.replication.lag_ms);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            lags
        })
    });
    let many = summary(rtt_256(lab, args.rounds_256));
    let elapsed = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let lags = sampler.map(|h| h.join().unwrap_or_default());
    let after = pid.and_then(proc_usage);
    eprintln!("{label}: bulk…");
    let profile = pid
        .filter(|_| args.perf)
        .and_then(|p| Profile::start(p, label));
    let bulk_mib_s = bulk(lab, args.bulk_mib);
    let profile = profile.map(|p| p.report(15));
    let tick = 100.0; // USER_HZ
    let cpu = match (before, after) {
        (Some((t0, _)), Some((t1, _))) => Some(((t1 - t0) as f64 / tick) / elapsed * 100.0),
        _ => None,
    };
    json!({
        "rtt_1_session": one,
        "rtt_256_sessions": many,
        "bulk_mib_per_s": (bulk_mib_s * 10.0).round() / 10.0,
        "replication_lag_ms": lags.map(|l| { let mut l = l; l.sort_unstable(); json!({"samples": l.len(), "p50": percentile(&l, 50.0), "p99": percentile(&l, 99.0)}) }),
        "agent_cpu_percent_256": cpu.map(|c| (c * 10.0).round() / 10.0),
        "agent_rss_kib": after.map(|(_, rss)| rss),
        "sync_link_rtt": link,
        "sync_hops_us": hops,
        "bulk_profile_top": profile,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-overhead: {e}");
            std::process::exit(2);
        }
    };
    if !require_root() {
        return;
    }
    let command = format!(
        "scripts/bench-overhead --rtt-samples {} --rounds-256 {} --bulk-mib {} --paths {}{}",
        args.rtt_samples,
        args.rounds_256,
        args.bulk_mib,
        args.paths.join(","),
        if args.perf { " --perf" } else { "" }
    );
    println!("reproduce: {command}");

    // Plain kernel path: same lab shape, VIP added by hand, no agent.
    let plain_lab = LabGuard::up(&LabSpec {
        name: unique_name("bop"),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: None,
    })
    .expect("lab up");
    let vip = format!("{}/24", plain_lab.vip());
    plain_lab
        .exec("master", &["ip", "addr", "add", &vip, "dev", "eth0"])
        .expect("add VIP");
    let _echo = start_echo(&plain_lab, Node::Master);
    std::thread::sleep(Duration::from_millis(300));
    let plain = measure("plain", &plain_lab, &args, false);
    drop(_echo);
    drop(plain_lab);

    let mut results = vec![("plain", plain)];
    for (label, mode, fsync) in [
        ("sync", ReplicationMode::Sync, FsyncMode::Periodic),
        ("async", ReplicationMode::Async, FsyncMode::Periodic),
        ("sync+fsync", ReplicationMode::Sync, FsyncMode::Always),
    ] {
        if !args.paths.iter().any(|p| p == label) {
            continue;
        }
        let tag = format!("bo{}", label.replace("+fsync", "f"));
        let lab = lab_with_agents_configured(&tag, 100, 3, |c| {
            c.session.replication = mode;
            c.session.fsync = fsync;
        });
        let echo = start_echo(&lab, Node::Master);
        std::thread::sleep(Duration::from_millis(300));
        results.push((label, measure(label, &lab, &args, true)));
        drop(echo);
    }

    let base = &results[0].1;
    let ratio = |v: &serde_json::Value, path: &[&str]| -> String {
        let get = |x: &serde_json::Value| {
            path.iter()
                .fold(x.clone(), |acc, k| acc[*k].clone())
                .as_f64()
        };
        match (get(v), get(base)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        }
    };
    println!();
    println!("| path | RTT 1s p50 µs | p99 µs | RTT 256s p50 µs | p99 µs | bulk MiB/s | lag p50/p99 ms | agent CPU % | agent RSS KiB | sync link p50 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, r) in &results {
        let lag = if r["replication_lag_ms"].is_null() {
            "-".to_string()
        } else {
            format!(
                "{}/{}",
                r["replication_lag_ms"]["p50"], r["replication_lag_ms"]["p99"]
            )
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {lag} | {} | {} | {} |",
            r["rtt_1_session"]["p50_us"],
            r["rtt_1_session"]["p99_us"],
            r["rtt_256_sessions"]["p50_us"],
            r["rtt_256_sessions"]["p99_us"],
            r["bulk_mib_per_s"],
            r["agent_cpu_percent_256"],
            r["agent_rss_kib"],
            r["sync_link_rtt"]["p50_us"]
        );
    }
    println!();
    println!("| ratio to plain | RTT 1s p50 | RTT 1s p99 | RTT 256s p50 | RTT 256s p99 | bulk |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, r) in &results[1..] {
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            ratio(r, &["rtt_1_session", "p50_us"]),
            ratio(r, &["rtt_1_session", "p99_us"]),
            ratio(r, &["rtt_256_sessions", "p50_us"]),
            ratio(r, &["rtt_256_sessions", "p99_us"]),
            ratio(r, &["bulk_mib_per_s"])
        );
    }
    let targets = targets(&results);
    println!();
    println!("| issue 15 target | measured | met |");
    println!("|---|---|---|");
    for (name, measured, met) in &targets {
        println!(
            "| {name} | {measured} | {} |",
            if *met { "yes" } else { "NO" }
        );
    }
    for (label, r) in &results[1..] {
        println!(
            "{label}: sync loop hops (medians, µs): issue→sent {}, sent→acked {}, acked→applied {}",
            r["sync_hops_us"][0], r["sync_hops_us"][1], r["sync_hops_us"][2]
        );
    }
    for (label, r) in &results {
        if let Some(top) = r["bulk_profile_top"].as_array() {
            println!("\nmaster agent during bulk ({label}), top symbols:");
            for line in top {
                println!("  {}", line.as_str().unwrap_or_default());
            }
        }
    }
    let doc = json!({
        "targets": targets.iter().map(|(n, m, ok)| json!({"target": n, "measured": m, "met": ok})).collect::<Vec<_>>(),
        "benchmark": "overhead",
        "command": command,
        "results": results.iter().map(|(l, r)| json!({"path": l, "result": r})).collect::<Vec<_>>(),
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
}

/// The issue-15 acceptance figures: (target, measured, met).
fn targets(results: &[(&str, serde_json::Value)]) -> Vec<(String, String, bool)> {
    let get = |label: &str, path: &[&str]| -> f64 {
        results
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, r)| path.iter().fold(r.clone(), |acc, k| acc[*k].clone()))
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN)
    };
    let plain_bulk = get("plain", &["bulk_mib_per_s"]);
    let plain_p50 = get("plain", &["rtt_1_session", "p50_us"]);
    let plain_p99_256 = get("plain", &["rtt_256_sessions", "p99_us"]);
    let link = get("sync", &["sync_link_rtt", "p50_us"]);
    let sync_p50 = get("sync", &["rtt_1_session", "p50_us"]);
    let mut out = Vec::new();
    let mut add = |name: String, measured: String, met: bool| out.push((name, measured, met));
    for (label, min) in [("sync", 0.5), ("async", 0.6)] {
        let r = get(label, &["bulk_mib_per_s"]) / plain_bulk;
        add(
            format!("bulk {label} >= {min}x plain"),
            format!("{r:.2}x"),
            r >= min,
        );
    }
    let limit = plain_p50 + 2.0 * link + 10.0;
    add(
        format!("1-session p50 sync <= plain + 2 x link + 10 = {limit:.0} µs"),
        format!("{sync_p50} µs"),
        sync_p50 <= limit,
    );
    let async_p50 = get("async", &["rtt_1_session", "p50_us"]);
    add(
        "1-session p50 async <= 1.5x plain".into(),
        format!("{:.2}x", async_p50 / plain_p50),
        async_p50 <= 1.5 * plain_p50,
    );
    for label in ["sync", "async"] {
        let r = get(label, &["rtt_256_sessions", "p99_us"]) / plain_p99_256;
        add(
            format!("256-session p99 {label} <= 2x plain"),
            format!("{r:.2}x"),
            r <= 2.0,
        );
    }
    let fsync_p50 = get("sync+fsync", &["rtt_1_session", "p50_us"]);
    add(
        "sync p50 with fsync=always within 20 % of sync".into(),
        format!("{fsync_p50} vs {sync_p50} µs"),
        fsync_p50 <= 1.2 * sync_p50,
    );
    out
}
