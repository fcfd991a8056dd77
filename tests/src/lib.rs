//! Helpers for nonstop's end-to-end tests, which run on a real lab (network
//! namespaces, veth, bridges, nftables) and therefore need root.
//!
//! Every test brings up its own lab with a unique name (so tests run in parallel) in
//! a [`LabGuard`], which tears it down even when the test panics.

use anyhow::{bail, Context};
use nonstop_lab::{Lab, LabGuard, LabSpec, Node};
use nonstop_shared::control::{AgentEvent, EventKind, NodeStatus};
use nonstop_shared::Mode;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fails the test unless running as root (CI runs as root; a skipped e2e test would
/// hide a regression). `NONSTOP_SKIP_ROOT_TESTS=1` skips on a developer laptop.
pub fn require_root() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("NONSTOP_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipping: not root and NONSTOP_SKIP_ROOT_TESTS is set");
        return false;
    }
    panic!(
        "end-to-end tests need root (namespaces, nftables); set NONSTOP_SKIP_ROOT_TESTS=1 to skip"
    );
}

pub mod blind;
pub mod kv;
pub mod slow;

/// A scratch folder that is removed when the test ends, pass or fail (packages and
/// unpacked trees are hundreds of MB; CI disks are small).
pub struct WorkDir(pub PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A lab name unique to this process and tag: `t` + tag + pid in base 36.
pub fn unique_name(tag: &str) -> String {
    let mut pid = std::process::id();
    let mut suffix = String::new();
    while pid > 0 {
        let digit = (pid % 36) as u8;
        suffix.insert(
            0,
            char::from(if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            }),
        );
        pid /= 36;
    }
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(5)
        .collect();
    format!("t{}{}", tag.to_ascii_lowercase(), suffix)
}

/// Brings up a lab with both agents running and waits until it has one master and
/// one backup.
pub fn lab_with_agents(tag: &str, heartbeat_ms: u64, misses: u32) -> LabGuard {
    lab_with_agents_configured(tag, heartbeat_ms, misses, |_| {})
}

/// Like [`lab_with_agents`], with a change applied to both agents' configs first.
pub fn lab_with_agents_configured(
    tag: &str,
    heartbeat_ms: u64,
    misses: u32,
    change: impl Fn(&mut nonstop_shared::config::AgentConfig),
) -> LabGuard {
    let spec = LabSpec {
        name: unique_name(tag),
        peers: 1,
        heartbeat_ms,
        misses,
        service: None,
    };
    let guard = LabGuard::up(&spec).expect("lab up");
    for node in [Node::Master, Node::Backup] {
        let path = guard.config_path(node);
        let mut config = nonstop_shared::config::AgentConfig::load(&path).expect("lab config");
        change(&mut config);
        std::fs::write(&path, config.to_toml()).expect("write config");
    }
    guard.start_agent(Node::Master).expect("start master agent");
    std::thread::sleep(Duration::from_millis(
        heartbeat_ms * u64::from(misses) + 200,
    ));
    guard.start_agent(Node::Backup).expect("start backup agent");
    wait_for(Duration::from_secs(10), || {
        let (m, b) = statuses(&guard);
        (m.as_ref().map(|s| s.mode) == Some(Mode::Master)
            && b.as_ref().map(|s| s.mode) == Some(Mode::Backup))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("pair never settled: {e:#}\n{}", logs(&guard)));
    guard
}

/// Path of one of the workspace's binaries, next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    let candidate = dir.join(name);
    if candidate.exists() {
        return candidate;
    }
    dir.parent().expect("target dir").join(name)
}

/// Runs `nonstop-console --lab NAME ARGS...` and returns its exit status and stdout.
pub fn console(lab: &Lab, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("nonstop-console"))
        .arg("--lab")
        .arg(lab.name())
        .args(args)
        .output()
        .expect("run nonstop-console");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Both nodes' status as the console's `status --json` reports it (None when
/// unreachable), in (master node, backup node) order.
pub fn statuses(lab: &Lab) -> (Option<NodeStatus>, Option<NodeStatus>) {
    let (_, out) = console(lab, &["status", "--json", "--timeout-ms", "500"]);
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&out) else {
        return (None, None);
    };
    let pick = |i: usize| -> Option<NodeStatus> {
        serde_json::from_value(doc["agents"][i]["status"].clone()).ok()
    };
    (pick(0), pick(1))
}

/// The status of one node.
pub fn status_of(lab: &Lab, node: Node) -> Option<NodeStatus> {
    let (m, b) = statuses(lab);
    match node {
        Node::Master => m,
        Node::Backup => b,
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds since the Unix epoch (the agents stamp events with the same clock).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The event history of both agents.
pub fn events(lab: &Lab) -> anyhow::Result<Vec<AgentEvent>> {
    let (_, out) = console(lab, &["events", "--json"]);
    out.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("event line {line}")))
        .collect()
}

/// When `node_id` became master after `after_ms`, from the event logs.
pub fn promoted_at(lab: &Lab, node_id: &str, after_ms: u64) -> Option<u64> {
    events(lab).ok()?.into_iter().find_map(|e| match e.kind {
        EventKind::ModeChanged(t)
            if e.node_id == node_id && t.to == Mode::Master && t.at_unix_ms >= after_ms =>
        {
            Some(t.at_unix_ms)
        }
        _ => None,
    })
}

/// Whether `host`'s service interface carries the VIP right now.
pub fn holds_vip(lab: &Lab, node: Node) -> bool {
    let vip = format!("{}/", lab.vip());
    lab.addresses(node.as_str(), "eth0")
        .map(|addrs| addrs.iter().any(|a| a.starts_with(&vip)))
        .unwrap_or(false)
}

/// The tails of both agents' logs, for failure messages.
pub fn logs(lab: &Lab) -> String {
    let mut out = String::new();
    for node in [Node::Master, Node::Backup] {
        let text = std::fs::read_to_string(lab.log_path(node)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("--- {node} log (last 40 lines) ---\n"));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Percentile (0..=100) of a sample, nearest-rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `trials` failures of the current master with `fail`, recovering with
/// `recover`, and returns each detection time in ms (failure → other node promoted).
pub fn detection_trials(
    lab: &Lab,
    trials: usize,
    fail: impl Fn(&Lab, Node),
    recover: impl Fn(&Lab, Node),
) -> Vec<u64> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let (m, b) = statuses(lab);
        let victim = match (m.map(|s| s.mode), b.map(|s| s.mode)) {
            (Some(Mode::Master), Some(Mode::Backup)) => Node::Master,
            (Some(Mode::Backup), Some(Mode::Master)) => Node::Backup,
            other => panic!("trial {trial}: pair not settled: {other:?}\n{}", logs(lab)),
        };
        let survivor = victim.other();
        // Fail at a random phase of the heartbeat cycle.
        std::thread::sleep(Duration::from_millis(137 + 29 * trial as u64 % 100));
        let failed_at = unix_ms();
        fail(lab, victim);
        let promoted = wait_for(Duration::from_secs(3), || {
            promoted_at(lab, survivor.as_str(), failed_at)
        })
        .unwrap_or_else(|e| {
            panic!(
                "trial {trial}: {survivor} never promoted: {e}\n{}",
                logs(lab)
            )
        });
        times.push(promoted - failed_at);
        assert!(
            holds_vip(lab, survivor),
            "trial {trial}: survivor lacks the VIP"
        );
        recover(lab, victim);
        // The recovered node comes back as backup and does not take the VIP.
        wait_for(Duration::from_secs(5), || {
            (status_of(lab, victim)?.mode == Mode::Backup).then_some(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "trial {trial}: {victim} did not come back as backup: {e}\n{}",
                logs(lab)
            )
        });
        assert!(
            !holds_vip(lab, victim),
            "trial {trial}: recovered node holds the VIP"
        );
        // Settled: each side hears the other within two intervals, roles unchanged.
        wait_for(Duration::from_secs(5), || {
            let (m, b) = statuses(lab);
            let (m, b) = (m?, b?);
            let fresh = |s: &NodeStatus| {
                s.peer
                    .last_heard_ms
                    .is_some_and(|ms| ms <= 2 * s.heartbeat_ms)
            };
            let roles = match survivor {
                Node::Master => (m.mode, b.mode) == (Mode::Master, Mode::Backup),
                Node::Backup => (m.mode, b.mode) == (Mode::Backup, Mode::Master),
            };
            (roles && fresh(&m) && fresh(&b)).then_some(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "trial {trial}: pair did not settle after recovery: {e}\n{}",
                logs(lab)
            )
        });
    }
    times
}

/// Both nodes' session lists from `sessions --json`, in (master node, backup node) order.
pub fn session_lists(
    lab: &Lab,
) -> (
    Option<nonstop_shared::control::SessionList>,
    Option<nonstop_shared::control::SessionList>,
) {
    let (_, out) = console(lab, &["sessions", "--json", "--timeout-ms", "3000"]);
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&out) else {
        return (None, None);
    };
    let pick = |i: usize| serde_json::from_value(doc["agents"][i]["list"].clone()).ok();
    (pick(0), pick(1))
}

/// A service process started by a test; killed and reaped when dropped (the lab's
/// teardown would kill it too, this also reaps it).
pub struct ServiceProcess(std::process::Child);

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the project's echo service on port 7000 in `node`'s namespace.
pub fn start_echo(lab: &Lab, node: Node) -> ServiceProcess {
    let echo = bin("nonstop-echo");
    let echo = echo.to_str().expect("utf-8 path");
    ServiceProcess(
        lab.spawn(node.as_str(), &[echo, "--listen", "0.0.0.0:7000"])
            .expect("start nonstop-echo"),
    )
}

/// A set of client sessions from the peer namespace to VIP:7000 that exchange
/// sequence-numbered messages with an echo service and check every byte.
pub struct EchoClients {
    /// The connections.
    pub streams: Vec<std::net::TcpStream>,
    /// Bytes each client wrote.
    pub sent: Vec<u64>,
    /// Bytes each client read back (all verified).
    pub received: Vec<u64>,
    round: u64,
}

impl EchoClients {
    /// Opens `n` sessions (each from its own ephemeral port).
    pub fn connect(lab: &Lab, n: usize) -> anyhow::Result<EchoClients> {
        let vip = std::net::SocketAddr::from((lab.vip(), 7000));
        let ns = lab.namespace("peer");
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            let stream = nonstop_lab::connect_in_netns(&ns, vip, Duration::from_secs(3))
                .with_context(|| format!("client {i} connect"))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            streams.push(stream);
        }
        Ok(EchoClients {
            sent: vec![0; n],
            received: vec![0; n],
            streams,
            round: 0,
        })
    }

    fn message(client: usize, round: u64) -> String {
        format!(
            "client {client:05} round {round:08} {}\n",
            "x".repeat(client % 40)
        )
    }

    /// One round: every client writes one numbered message, then reads its echo and
    /// checks it byte for byte.
    pub fn round(&mut self) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        self.round += 1;
        for (i, stream) in self.streams.iter_mut().enumerate() {
            let msg = Self::message(i, self.round);
            stream
                .write_all(msg.as_bytes())
                .with_context(|| format!("client {i} write"))?;
            self.sent[i] += msg.len() as u64;
        }
        for (i, stream) in self.streams.iter_mut().enumerate() {
            let want = Self::message(i, self.round);
            let mut got = vec![0u8; want.len()];
            stream
                .read_exact(&mut got)
                .with_context(|| format!("client {i} round {} read", self.round))?;
            if got != want.as_bytes() {
                bail!(
                    "client {i} round {}: expected {want:?}, got {:?}",
                    self.round,
                    String::from_utf8_lossy(&got)
                );
            }
            self.received[i] += got.len() as u64;
        }
        Ok(())
    }

    /// Completes a round whose writes went out but whose reads failed (timed out):
    /// reads the rest of every echo and checks it.
    pub fn finish_stalled_round(&mut self) -> anyhow::Result<()> {
        use std::io::Read;
        for (i, stream) in self.streams.iter_mut().enumerate() {
            let want = Self::message(i, self.round);
            let already = (self.sent[i] - self.received[i]) as usize;
            let missing = already.min(want.len());
            let mut got = vec![0u8; missing];
            stream
                .read_exact(&mut got)
                .with_context(|| format!("client {i} stalled round read"))?;
            if got != want.as_bytes()[want.len() - missing..] {
                bail!(
                    "client {i}: stalled round echoed {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
            self.received[i] += got.len() as u64;
        }
        Ok(())
    }

    /// Local ports, to match sessions in the agents' tables.
    pub fn ports(&self) -> Vec<u16> {
        self.streams
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect()
    }
}

/// Opens a control connection to `node`'s agent from inside its namespace and runs the
/// authentication handshake with `key` (the lab's key unless given). Returns the
/// buffered reader and the writer; the first reply line is already consumed.
pub fn control_session(
    lab: &Lab,
    node: Node,
    key: Option<&nonstop_shared::auth::Key>,
) -> anyhow::Result<(std::io::BufReader<std::net::TcpStream>, std::net::TcpStream)> {
    use nonstop_shared::auth;
    use nonstop_shared::control::{Reply, Request};
    use std::io::{BufRead, Write};
    let lab_key;
    let key = match key {
        Some(key) => key,
        None => {
            lab_key = auth::Key::load(&lab.key_path()).context("lab key")?;
            &lab_key
        }
    };
    let stream = nonstop_lab::connect_in_netns(
        &lab.namespace(node.as_str()),
        lab.control_addr(node),
        Duration::from_secs(2),
    )
    .context("control connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = std::io::BufReader::new(stream);
    let read_reply = |reader: &mut std::io::BufReader<std::net::TcpStream>| {
        let mut line = String::new();
        reader.read_line(&mut line).context("read reply")?;
        Reply::parse_line(&line).map_err(anyhow::Error::msg)
    };
    let Reply::Challenge { nonce, .. } = read_reply(&mut reader)? else {
        bail!("the agent did not open with a challenge");
    };
    let server = auth::parse_nonce(&nonce).context("challenge nonce")?;
    let client: [u8; auth::NONCE_LEN] =
        auth::random_bytes().map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let request = Request::Auth {
        nonce: client.iter().map(|b| format!("{b:02x}")).collect(),
        mac: auth::control_client_mac(key, &server, &client),
    };
    writer.write_all(request.to_line().as_bytes())?;
    match read_reply(&mut reader)? {
        Reply::Authenticated { mac }
            if auth::control_verify(key, false, &server, &client, &mac) =>
        {
            Ok((reader, writer))
        }
        other => bail!("authentication failed: {other:?}"),
    }
}

/// Sends one request on an authenticated control connection to `node`'s agent and
/// returns the reply.
pub fn control_request(
    lab: &Lab,
    node: Node,
    request: &nonstop_shared::control::Request,
) -> anyhow::Result<nonstop_shared::control::Reply> {
    use std::io::{BufRead, Write};
    let (mut reader, mut writer) = control_session(lab, node, None)?;
    writer.write_all(request.to_line().as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line).context("read reply")?;
    nonstop_shared::control::Reply::parse_line(&line).map_err(anyhow::Error::msg)
}

/// Injects `fault` through `node`'s agent (its own nftables/delayer mechanisms).
pub fn inject_fault(
    lab: &Lab,
    node: Node,
    fault: nonstop_shared::control::Fault,
) -> anyhow::Result<String> {
    use nonstop_shared::control::{Reply, Request};
    match control_request(lab, node, &Request::Inject { fault })? {
        Reply::Ack { message } => Ok(message),
        other => bail!("inject refused: {other:?}"),
    }
}

/// A lab whose agents manage the echo service, settled with one master (service
/// running, replication connected) and one backup.
pub fn managed_echo_lab(tag: &str, heartbeat_ms: u64, misses: u32) -> LabGuard {
    let echo = bin("nonstop-echo");
    let service = format!("{} --listen 0.0.0.0:7000", echo.display());
    managed_service_lab(tag, &service, heartbeat_ms, misses)
}

/// A lab whose agents manage `service` (a shell command), settled with one master
/// (service running, replication connected) and one backup.
pub fn managed_service_lab(tag: &str, service: &str, heartbeat_ms: u64, misses: u32) -> LabGuard {
    let spec = LabSpec {
        name: unique_name(tag),
        peers: 1,
        heartbeat_ms,
        misses,
        service: Some(service.to_owned()),
    };
    let lab = LabGuard::up(&spec).expect("lab up");
    lab.start_agent(Node::Master).expect("master agent");
    std::thread::sleep(Duration::from_millis(
        heartbeat_ms * u64::from(misses) + 200,
    ));
    lab.start_agent(Node::Backup).expect("backup agent");
    wait_for(Duration::from_secs(10), || {
        let (m, b) = statuses(&lab);
        let (m, b) = (m?, b?);
        (m.mode == Mode::Master
            && b.mode == Mode::Backup
            && m.app?.pid.is_some()
            && m.replication.connected)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("pair never settled: {e}\n{}", logs(&lab)));
    lab
}

/// Waits until both nodes' tables agree on every client session with nothing unacked
/// (the backup holds exactly what the master does).
pub fn wait_replicated(lab: &Lab, clients: &EchoClients) -> anyhow::Result<()> {
    let ports = clients.ports();
    wait_for(Duration::from_secs(15), || {
        let (m, b) = session_lists(lab);
        let (m, b) = (m?, b?);
        let master = if m.mode == Mode::Master { &m } else { &b };
        let backup = if m.mode == Mode::Master { &b } else { &m };
        let find = |list: &nonstop_shared::control::SessionList, port: u16| {
            list.sessions
                .iter()
                .find(|s| s.peer.ends_with(&format!(":{port}")))
                .cloned()
        };
        ports
            .iter()
            .all(|&p| match (find(master, p), find(backup, p)) {
                (Some(x), Some(y)) => {
                    x.snd_una == x.snd_nxt && (x.rcv_nxt, x.snd_nxt) == (y.rcv_nxt, y.snd_nxt)
                }
                _ => false,
            })
            .then_some(())
    })
}

/// The peer's kernel counters that would show a broken session: (established
/// connections reset, active opens, aborts on data).
pub fn peer_tcp_counters(lab: &Lab) -> (u64, u64, u64) {
    // A missing `nstat` must fail the test, not compare two equal placeholders.
    let out = lab
        .exec(
            "peer",
            &[
                "nstat",
                "-az",
                "TcpEstabResets",
                "TcpActiveOpens",
                "TcpExtTCPAbortOnData",
            ],
        )
        .expect("nstat in the peer namespace");
    assert!(
        out.status.success(),
        "nstat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (
        get("TcpEstabResets"),
        get("TcpActiveOpens"),
        get("TcpExtTCPAbortOnData"),
    )
}

/// Segments the peer's kernel has retransmitted so far (`TcpRetransSegs`): proof that
/// a loss fault really dropped the peer's traffic.
pub fn peer_retransmits(lab: &Lab) -> u64 {
    let out = lab
        .exec("peer", &["nstat", "-az", "TcpRetransSegs"])
        .expect("nstat in the peer namespace");
    assert!(out.status.success(), "nstat failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("TcpRetransSegs"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("TcpRetransSegs in nstat's output")
}

/// Which nodes hold the VIP on their service interface right now.
pub fn vip_holders(lab: &Lab) -> Vec<Node> {
    [Node::Master, Node::Backup]
        .into_iter()
        .filter(|&n| holds_vip(lab, n))
        .collect()
}
