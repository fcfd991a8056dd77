//! Issue 15's bounded memory on a real lab: a frozen backup (SIGSTOP) under bulk load
//! in sync mode with `lone_master = "hold"`. The master holds output for the backup,
//! reaches its bounds and drops what comes beyond them (counted; TCP sends it again);
//! its RSS grows by no more than the configured bounds; the peer stalls; after SIGCONT
//! every byte flows, checked end to end.

use nonstop_e2e::*;
use nonstop_lab::{connect_in_netns, Node};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The bounds configured for the master (bytes).
const HELD: u64 = 4 * MIB;
const BACKLOG: u64 = 4 * MIB;
const UNACKED: u64 = MIB;
/// What the test sends through the echo (and reads back).
const TOTAL: u64 = 48 * MIB;

/// Byte `i` of the stream.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 16) as u8
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_frozen_backup_stalls_the_peers_within_the_bounds_and_loses_nothing() {
    if !require_root() {
        return;
    }
    // A long detection window: the freeze is a stall, not a failover.
    let lab = lab_with_agents_configured("frz", 100, 60, |c| {
        c.session.lone_master = nonstop_shared::config::LoneMaster::Hold;
        c.session.max_held_bytes = HELD;
        c.session.max_record_backlog_bytes = BACKLOG;
        c.session.max_unacked_bytes = UNACKED;
    });
    let _echo = start_echo(&lab, Node::Master);
    std::thread::sleep(Duration::from_millis(300));
    let vip = SocketAddr::from((lab.vip(), 7000));
    let stream =
        connect_in_netns(&lab.namespace("peer"), vip, Duration::from_secs(3)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut reader = stream.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut s = stream;
        let mut at = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while at < TOTAL {
            let n = (TOTAL - at).min(chunk.len() as u64) as usize;
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(at + k as u64);
            }
            s.write_all(&chunk[..n]).expect("bulk write");
            at += n as u64;
        }
        s
    });
    let received = Arc::new(AtomicU64::new(0));
    let reading = {
        let received = Arc::clone(&received);
        std::thread::spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; 256 * 1024];
            let mut at = 0u64;
            while at < TOTAL {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| format!("read at {at}: {e}"))?;
                if n == 0 {
                    return Err(format!("closed at {at}"));
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(at + k as u64) {
                        return Err(format!("wrong byte at {}", at + k as u64));
                    }
                }
                at += n as u64;
                received.store(at, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    wait_for(Duration::from_secs(20), || {
        (received.load(Ordering::Relaxed) >= 4 * MIB).then_some(())
    })
    .unwrap_or_else(|e| panic!("bulk never started: {e}\n{}", logs(&lab)));
    let pid = lab.agent_pid(Node::Master).expect("master pid");
    let base_rss = rss_kib(pid);

    lab.stop_agent(Node::Backup, libc::SIGSTOP)
        .expect("freeze the backup agent");
    std::thread::sleep(Duration::from_millis(700));
    let frozen_at = received.load(Ordering::Relaxed);
    let mut max_rss = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let stalled_at = received.load(Ordering::Relaxed);
    let status = status_of(&lab, Node::Master).expect("master status");
    lab.stop_agent(Node::Backup, libc::SIGCONT)
        .expect("thaw the backup agent");

    eprintln!(
        "frozen: received {frozen_at} -> {stalled_at} B; master RSS {base_rss} -> max {max_rss} KiB; \
         held {} B; bound drops {:?}; record backlog {} B",
        status.replication.held_bytes,
        status.replication.bound_drops,
        status.replication.record_backlog_bytes
    );
    // Nothing the backup lacks reached the peer while it was frozen.
    assert_eq!(
        stalled_at, frozen_at,
        "output flowed while the backup was frozen (sync mode, lone_master = hold)"
    );
    let r = &status.replication;
    assert!(
        r.held_bytes > 0 || r.bound_drops.held + r.bound_drops.backlog > 0,
        "nothing held or dropped at a bound: {r:?}"
    );
    assert!(r.held_bytes <= HELD, "held {} > bound {HELD}", r.held_bytes);
    // Growth within the configured bounds (plus the queue's receive buffers and
    // allocator slack).
    let bound_kib = (HELD + BACKLOG + UNACKED + 16 * MIB) / 1024;
    assert!(
        max_rss <= base_rss + bound_kib,
        "master RSS grew from {base_rss} KiB to {max_rss} KiB (bounds + slack: {bound_kib} KiB)"
    );

    // Every byte flows after the thaw, in order and intact.
    match reading.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("after the thaw: {e}\n{}", logs(&lab)),
        Err(_) => panic!("reader panicked"),
    }
    let _ = writer.join();
    assert_eq!(received.load(Ordering::Relaxed), TOTAL);
    let status = status_of(&lab, Node::Master).expect("master status");
    assert_eq!(
        status.mode,
        nonstop_shared::Mode::Master,
        "no failover happened"
    );
}
