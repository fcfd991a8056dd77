//! Issue 17: `scripts/package` builds the .deb; this test unpacks it, checks its
//! contents and its systemd unit (`systemd-analyze verify`), then runs a lab pair
//! from the packaged binaries with the packaged example configs (only addresses and
//! the per-host paths substituted: both "hosts" share this machine's filesystem) and
//! switches over with sessions intact.
//!
//! CI time: the test packages the debug binaries `cargo test` has already built
//! (`--profile debug`, uncompressed), so it compiles nothing; `scripts/package`
//! without flags builds and packages the release binaries the same way.

use nonstop_e2e::*;
use nonstop_lab::{LabGuard, LabSpec, Node};
use nonstop_shared::Mode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

/// Agents started from the package; killed when the test ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn packaged_binaries_and_example_configs_run_a_pair_through_a_switchover() {
    if !require_root() {
        return;
    }
    let work = std::env::temp_dir().join(format!("nonstop-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let _cleanup = WorkDir(work.clone());
    let deb = run_ok(
        Command::new(repo().join("scripts/package"))
            .args(["--profile", "debug", "--out"])
            .arg(&work),
    );
    let deb = PathBuf::from(deb.trim());
    assert!(deb.exists(), "{}", deb.display());

    // Contents: binaries, unit, man pages, examples, docs.
    let listing = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/nonstop-agent",
        "./usr/bin/nonstop-console",
        "./usr/bin/nonstop-lab",
        "./usr/bin/nonstop-echo",
        "./lib/systemd/system/nonstop-agent.service",
        "./usr/share/man/man8/nonstop-agent.8.gz",
        "./usr/share/man/man1/nonstop-console.1.gz",
        "./usr/share/man/man1/nonstop-console-check.1.gz",
        "./usr/share/man/man1/nonstop-lab.1.gz",
        "./usr/share/doc/nonstop/examples/agent-a.toml",
        "./usr/share/doc/nonstop/examples/agent-b.toml",
        "./usr/share/doc/nonstop/README.md",
        "./usr/share/doc/nonstop/DEPLOY.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    let info = run_ok(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Package"),
    );
    assert_eq!(info.trim(), "nonstop");

    // The unit verifies cleanly against a root holding the host's units and the package.
    let root = work.join("root");
    std::fs::create_dir_all(root.join("lib/systemd")).expect("root");
    run_ok(
        Command::new("cp")
            .args(["-a", "/lib/systemd/system"])
            .arg(root.join("lib/systemd/")),
    );
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("/lib/systemd/system/nonstop-agent.service")
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let said = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/nonstop-agent.service"))
        .expect("unit");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_NICE",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit");
    }
    let man = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$0\"")
            .arg(root.join("usr/share/man/man8/nonstop-agent.8.gz")),
    );
    assert!(
        man.contains("\\-\\-check"),
        "the man page documents --check"
    );

    // A pair from the packaged binaries and example configs.
    let bin_dir = root.join("usr/bin");
    let lab = LabGuard::up(&LabSpec {
        name: unique_name("pkg"),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: None,
    })
    .expect("lab up");
    let index = lab.status().expect("lab status").index;
    let key = lab.key_path();
    let mut agents = Agents(Vec::new());
    let mut agent_addrs = Vec::new();
    for (example, node) in [
        ("agent-a.toml", Node::Master),
        ("agent-b.toml", Node::Backup),
    ] {
        let text =
            std::fs::read_to_string(root.join("usr/share/doc/nonstop/examples").join(example))
                .expect("example config");
        let text = text
            .replace("198.18.1.", &format!("198.18.{index}."))
            .replace("198.19.1.", &format!("198.19.{index}."))
            .replace(
                "/var/lib/nonstop",
                &lab.dir()
                    .join(format!("{node}-pkg-data"))
                    .display()
                    .to_string(),
            )
            .replace("/etc/nonstop/key", &key.display().to_string());
        let path = lab.dir().join(format!("pkg-{example}"));
        std::fs::write(&path, &text).expect("config");
        let ns = lab.namespace(node.as_str());
        // What ExecStartPre runs: the host checks pass on the lab node.
        let check = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(bin_dir.join("nonstop-agent"))
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .expect("--check");
        assert!(
            check.status.success(),
            "{example} --check:\n{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let log = std::fs::File::create(lab.dir().join(format!("pkg-{node}.log"))).expect("log");
        // The service command is `nonstop-echo ...`: PATH finds the packaged one, as
        // /usr/bin would under systemd.
        let path_var = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(bin_dir.join("nonstop-agent"))
            .arg("--config")
            .arg(&path)
            .env("PATH", path_var)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start packaged agent");
        agents.0.push(child);
        agent_addrs.push(format!("{ns}@127.0.0.1:7700"));
        if node == Node::Master {
            std::thread::sleep(Duration::from_millis(600));
        }
    }
    let pkg_logs = || {
        ["master", "backup"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(lab.dir().join(format!("pkg-{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {n} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let packaged_console = |args: &[&str]| {
        let mut cmd = Command::new(bin_dir.join("nonstop-console"));
        for a in &agent_addrs {
            cmd.arg("--agent").arg(a);
        }
        let out = cmd
            .arg("--key-file")
            .arg(&key)
            .args(args)
            .output()
            .expect("packaged console");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    wait_for(Duration::from_secs(15), || {
        let (m, b) = statuses(&lab);
        let (m, b) = (m?, b?);
        (m.mode == Mode::Master
            && b.mode == Mode::Backup
            && m.app.as_ref()?.pid.is_some()
            && m.replication.connected)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("packaged pair never settled: {e}\n{}", pkg_logs()));
    let (ok, out) = packaged_console(&["check"]);
    assert!(ok, "the example configs must agree: {out}");

    let mut clients = EchoClients::connect(&lab, 16).expect("sessions");
    for _ in 0..3 {
        clients.round().expect("round before");
    }
    wait_replicated(&lab, &clients).expect("replicated");
    let ports = clients.ports();
    let counters = peer_tcp_counters(&lab);
    let (ok, out) = packaged_console(&["switchover", "--json"]);
    assert!(ok, "switchover: {out}\n{}", pkg_logs());
    wait_for(Duration::from_secs(10), || {
        let s = status_of(&lab, Node::Backup)?;
        (s.mode == Mode::Master
            && s.replication.restore_pending == 0
            && s.replication.restored >= 16)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("node-b never took over: {e}\n{}", pkg_logs()));
    for round in 0..5 {
        clients.round().unwrap_or_else(|e| {
            panic!("round {round} after the switchover: {e:#}\n{}", pkg_logs())
        });
    }
    assert_eq!(clients.ports(), ports, "same connections");
    assert_eq!(
        peer_tcp_counters(&lab),
        counters,
        "no reset, no new connection, no abort on the peer"
    );
    drop(agents);
}
