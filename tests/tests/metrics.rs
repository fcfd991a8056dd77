//! Issue 17: the Prometheus endpoint on a real lab under traffic and through a
//! switchover. Every scrape must parse as the text exposition format, and its figures
//! must be the ones `status` reports.

use nonstop_e2e::*;
use nonstop_lab::{Lab, Node};
use nonstop_shared::control::{NodeStatus, Reply, Request};
use nonstop_shared::Mode;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SESSIONS: usize = 16;

/// `GET /metrics` from inside `node`'s namespace: (status line, content type, body).
fn scrape(lab: &Lab, node: Node) -> anyhow::Result<(String, String, String)> {
    let addr = lab
        .metrics_addr(node)
        .ok_or_else(|| anyhow::anyhow!("the lab config has no [metrics] listen"))?;
    let mut stream =
        nonstop_lab::connect_in_netns(&lab.namespace(node.as_str()), addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end in {response:?}"))?;
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status_line, content_type, body.to_owned()))
}

/// Parses an exposition strictly: every sample line must be understood by the
/// parser (it silently skips lines it cannot read, so the counts must agree) and be
/// of a declared type.
fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("exposition parses");
    let sample_lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "some lines are not valid samples:\n{text}"
    );
    for sample in &scrape.samples {
        assert!(
            matches!(
                sample.value,
                prometheus_parse::Value::Counter(_) | prometheus_parse::Value::Gauge(_)
            ),
            "{} has no TYPE: {:?}",
            sample.metric,
            sample.value
        );
    }
    scrape
}

/// One sample's value (`label` = (name, value) for a labelled series).
fn value(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && match label {
                    None => true,
                    Some((k, v)) => s.labels.get(k) == Some(v),
                }
        })
        .unwrap_or_else(|| panic!("{metric} {label:?} missing"));
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
        ref other => panic!("{metric}: unexpected {other:?}"),
    }
}

fn status(lab: &Lab, node: Node) -> NodeStatus {
    match control_request(lab, node, &Request::Status) {
        Ok(Reply::Status(status)) => status,
        other => panic!("status of {node}: {other:?}\n{}", logs(lab)),
    }
}

/// A scrape taken between two status calls: every figure that only grows lies between
/// them, every figure that did not change between them equals it.
fn check_against_status(lab: &Lab, node: Node) -> prometheus_parse::Scrape {
    let before = status(lab, node);
    let (line, content_type, body) = scrape(lab, node).expect("scrape");
    let after = status(lab, node);
    assert!(line.contains(" 200 "), "{line}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let m = parse(&body);
    let between = |metric: &str, label: Option<(&str, &str)>, lo: u64, hi: u64| {
        let v = value(&m, metric, label);
        assert!(
            (lo as f64) <= v && v <= hi as f64,
            "{node} {metric} {label:?} = {v}, status says {lo}..={hi}"
        );
    };
    between("nonstop_epoch", None, before.epoch, after.epoch);
    if before.mode == after.mode {
        assert_eq!(
            value(&m, "nonstop_mode", Some(("mode", mode_label(after.mode)))),
            1.0,
            "{node} mode"
        );
    }
    let (b, a) = (&before.counters, &after.counters);
    between(
        "nonstop_heartbeats_sent_total",
        None,
        b.heartbeats_sent,
        a.heartbeats_sent,
    );
    between(
        "nonstop_heartbeats_received_total",
        None,
        b.heartbeats_received,
        a.heartbeats_received,
    );
    between("nonstop_promotions_total", None, b.promotions, a.promotions);
    between("nonstop_garps_sent_total", None, b.garps_sent, a.garps_sent);
    between(
        "nonstop_auth_rejections_total",
        Some(("channel", "control")),
        b.control_rejected,
        a.control_rejected,
    );
    let (b, a) = (&before.replication, &after.replication);
    between(
        "nonstop_restored_sessions_total",
        None,
        b.restored,
        a.restored,
    );
    between(
        "nonstop_packets_total",
        Some(("direction", "in")),
        b.packets.0,
        a.packets.0,
    );
    between(
        "nonstop_packets_total",
        Some(("direction", "out")),
        b.packets.1,
        a.packets.1,
    );
    if b.position == a.position {
        between("nonstop_replication_position", None, b.position, a.position);
    }
    if b.sessions == a.sessions {
        between("nonstop_sessions", None, b.sessions, a.sessions);
    }
    m
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Startup => "startup",
        Mode::Backup => "backup",
        Mode::Master => "master",
        Mode::Fault => "fault",
    }
}

#[test]
fn metrics_match_status_under_traffic_and_through_a_switchover() {
    if !require_root() {
        return;
    }
    let lab = managed_echo_lab("metr", 100, 3);
    // The lab turns metrics on and publishes where.
    let lab_status = lab.status().expect("lab status");
    for node in &lab_status.nodes {
        assert_eq!(
            node.metrics_addr.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9477"),
            "{:?}",
            node.node
        );
    }
    let mut clients = EchoClients::connect(&lab, SESSIONS).expect("sessions");
    clients.round().expect("first round");
    wait_replicated(&lab, &clients).expect("replicated");

    // Live traffic in the background for the rest of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> anyhow::Result<EchoClients> {
            while !stop.load(Ordering::Relaxed) {
                clients.round()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(clients)
        })
    };
    for _ in 0..3 {
        for node in [Node::Master, Node::Backup] {
            check_against_status(&lab, node);
        }
    }
    let m = check_against_status(&lab, Node::Master);
    assert_eq!(value(&m, "nonstop_mode", Some(("mode", "master"))), 1.0);
    assert_eq!(value(&m, "nonstop_vip_held", None), 1.0);
    assert_eq!(value(&m, "nonstop_replication_connected", None), 1.0);
    assert!(value(&m, "nonstop_heartbeat_rtt_seconds", None) > 0.0);
    assert_eq!(
        value(
            &m,
            "nonstop_sessions_by_phase",
            Some(("phase", "established"))
        ),
        SESSIONS as f64
    );
    let epoch_before = value(&m, "nonstop_epoch", None);

    // Switch over under traffic, scraping both agents all along.
    let mut scrapes = 0;
    let switchover = {
        let name = lab.name().to_owned();
        std::thread::spawn(move || {
            std::process::Command::new(bin("nonstop-console"))
                .args(["--lab", &name, "switchover", "--json"])
                .output()
                .expect("run nonstop-console")
        })
    };
    while !switchover.is_finished() {
        for node in [Node::Master, Node::Backup] {
            let (line, _, body) = scrape(&lab, node).expect("scrape during the switchover");
            assert!(line.contains(" 200 "), "{node}: {line}");
            parse(&body);
            scrapes += 1;
        }
    }
    let out = switchover.join().expect("switchover thread");
    assert!(
        out.status.success(),
        "switchover failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        logs(&lab)
    );
    wait_for(Duration::from_secs(15), || {
        for node in [Node::Master, Node::Backup] {
            let (line, _, body) = scrape(&lab, node).expect("scrape during the switchover");
            assert!(line.contains(" 200 "), "{node}: {line}");
            parse(&body);
            scrapes += 1;
        }
        let s = status(&lab, Node::Backup);
        (s.mode == Mode::Master
            && s.replication.restore_pending == 0
            && s.replication.restored >= SESSIONS as u64)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("backup never took over: {e}\n{}", logs(&lab)));
    assert!(scrapes >= 4);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut clients = traffic.join().expect("traffic thread").unwrap_or_else(|e| {
        panic!(
            "a session broke under the switchover: {e:#}\n{}",
            logs(&lab)
        )
    });
    clients.round().expect("round after");
    wait_replicated(&lab, &clients).expect("replicated after");

    // Quiet now: the new master's exposition equals its status.
    let new = check_against_status(&lab, Node::Backup);
    let s = status(&lab, Node::Backup);
    assert_eq!(value(&new, "nonstop_mode", Some(("mode", "master"))), 1.0);
    assert_eq!(value(&new, "nonstop_epoch", None), epoch_before + 1.0);
    assert_eq!(
        value(&new, "nonstop_sessions", None),
        s.replication.sessions as f64
    );
    assert_eq!(value(&new, "nonstop_sessions", None), SESSIONS as f64);
    assert_eq!(
        value(&new, "nonstop_restored_sessions_total", None),
        s.replication.restored as f64
    );
    assert_eq!(value(&new, "nonstop_restore_failures_total", None), 0.0);
    assert_eq!(value(&new, "nonstop_sessions_reset_total", None), 0.0);
    assert_eq!(value(&new, "nonstop_vip_held", None), 1.0);
    eprintln!(
        "{scrapes} scrapes during the switchover; new master epoch {}, {} sessions, {} restored, \
         {} samples per exposition",
        s.epoch,
        s.replication.sessions,
        s.replication.restored,
        new.samples.len()
    );
    let old = check_against_status(&lab, Node::Master);
    assert_eq!(value(&old, "nonstop_mode", Some(("mode", "backup"))), 1.0);
    assert_eq!(value(&old, "nonstop_vip_held", None), 0.0);
    assert_eq!(
        value(&old, "nonstop_sessions", None),
        status(&lab, Node::Master).replication.sessions as f64
    );

    // Anything but GET /metrics is refused, not served.
    let addr = lab.metrics_addr(Node::Master).expect("addr");
    let mut stream =
        nonstop_lab::connect_in_netns(&lab.namespace("master"), addr, Duration::from_secs(2))
            .expect("connect");
    stream
        .write_all(b"GET /other HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
