//! Failure-detection benchmark (run via `scripts/bench-failover`, as root).
//!
//! For each heartbeat interval (misses fixed at 3): SIGKILL the master agent `trials`
//! times on a real lab and measure the time from the kill to the backup's promotion
//! (both stamped with the same wall clock); then leave the healthy pair idle and count
//! false failovers. Prints a table and writes a JSON result.

use nonstop_e2e::{detection_trials, events, lab_with_agents, percentile, require_root, unix_ms};
use nonstop_shared::control::EventKind;
use nonstop_shared::Mode;
use serde_json::json;
use std::time::Duration;

struct Args {
    intervals: Vec<u64>,
    misses: u32,
    trials: usize,
    idle_secs: u64,
    out: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        intervals: vec![20, 50, 100, 1000],
        misses: 3,
        trials: 20,
        idle_secs: 60,
        out: "target/bench/failover.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--intervals" => {
                args.intervals = value()?
                    .split(',')
                    .map(|v| v.trim().parse().map_err(|_| format!("bad interval `{v}`")))
                    .collect::<Result<_, _>>()?
            }
            "--misses" => args.misses = value()?.parse().map_err(|_| "bad --misses")?,
            "--trials" => args.trials = value()?.parse().map_err(|_| "bad --trials")?,
            "--idle-secs" => args.idle_secs = value()?.parse().map_err(|_| "bad --idle-secs")?,
            "--out" => args.out = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-failover: {e}");
            std::process::exit(2);
        }
    };
    if !require_root() {
        return;
    }
    let command = format!(
        "scripts/bench-failover --intervals {} --misses {} --trials {} --idle-secs {}",
        args.intervals
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.misses,
        args.trials,
        args.idle_secs
    );
    println!("reproduce: {command}");
    let mut rows = Vec::new();
    for &hb in &args.intervals {
        eprintln!(
            "heartbeat_ms={hb} misses={}: {} kill trials…",
            args.misses, args.trials
        );
        let lab = lab_with_agents(&format!("bf{hb}"), hb, args.misses);
        let times = detection_trials(
            &lab,
            args.trials,
            |lab, node| lab.stop_agent(node, libc::SIGKILL).expect("kill agent"),
            |lab, node| {
                lab.start_agent(node).expect("restart agent");
            },
        );
        eprintln!("heartbeat_ms={hb}: idle for {} s…", args.idle_secs);
        let idle_from = unix_ms();
        std::thread::sleep(Duration::from_secs(args.idle_secs));
        let false_failovers = events(&lab)
            .map(|evs| {
                evs.iter()
                    .filter(|e| e.at_unix_ms >= idle_from)
                    .filter(
                        |e| matches!(&e.kind, EventKind::ModeChanged(t) if t.to == Mode::Master),
                    )
                    .count()
            })
            .unwrap_or(usize::MAX);
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let row = json!({
            "heartbeat_ms": hb,
            "misses": args.misses,
            "window_ms": hb * u64::from(args.misses),
            "trials": times.len(),
            "detection_ms": times,
            "p50_ms": percentile(&sorted, 50.0),
            "p99_ms": percentile(&sorted, 99.0),
            "max_ms": sorted.last().copied().unwrap_or(0),
            "idle_secs": args.idle_secs,
            "false_failovers": false_failovers,
        });
        drop(lab);
        rows.push(row);
    }
    println!();
    println!("| heartbeat_ms | misses | window ms | trials | detection p50 ms | p99 ms | max ms | false failovers / {} s idle |", args.idle_secs);
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r["heartbeat_ms"],
            r["misses"],
            r["window_ms"],
            r["trials"],
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["false_failovers"]
        );
    }
    let doc = json!({ "benchmark": "failover-detection", "command": command, "results": rows });
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
