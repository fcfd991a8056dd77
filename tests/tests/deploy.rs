//! Issue 17: docs/DEPLOY.md is followed as written on a lab whose `master` and
//! `backup` namespaces play node-a and node-b. Every block marked
//! `<!-- run: node-a|node-b|both -->` runs in order inside the node's namespace with
//! the substitutions the guide lists in "How this guide is tested"; 16 echo sessions
//! from the lab's peer stay open from the start of the pair through the drill and the
//! rolling upgrade, and must come out byte-exact with no reset.

use nonstop_e2e::*;
use nonstop_lab::{LabGuard, LabSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SESSIONS: usize = 16;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

/// The runnable blocks of the guide: (where, shell text).
fn blocks(guide: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut target: Option<String> = None;
    let mut body: Option<String> = None;
    for line in guide.lines() {
        if let Some(text) = body.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push((target.take().expect("target"), std::mem::take(text)));
                body = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.trim().strip_prefix("<!-- run: ") {
            target = Some(rest.trim_end_matches("-->").trim().to_owned());
        } else if line.trim_start().starts_with("```") && target.is_some() {
            body = Some(String::new());
        } else if !line.trim().is_empty() {
            // A marker applies to the very next block only.
            target = None;
        }
    }
    out
}

/// The stand-ins for the two tools a lab namespace lacks (see DEPLOY.md).
fn write_shims(dir: &Path) {
    std::fs::create_dir_all(dir).expect("shims");
    let apt = r#"#!/bin/sh
# Lab stand-in for `apt-get install -y ./nonstop_*.deb`: the runner unpacked the very
# same package once and put its /usr/bin first on PATH; check that it is that package.
set -eu
[ "$1" = install ] || { echo "apt-get stand-in: only install" >&2; exit 2; }
for arg; do case "$arg" in *.deb) deb=$arg ;; esac; done
[ "$(dpkg-deb --field "${deb:?no .deb given}" Package)" = nonstop ]
cmp -s "$deb" "$NONSTOP_DEB"
echo "apt-get stand-in: $deb is unpacked at $NONSTOP_PKGROOT"
"#;
    let systemctl = r#"#!/bin/sh
# Lab stand-in for systemctl on nonstop-agent.service: runs the packaged unit's
# ExecStartPre and ExecStart (their /usr/bin/ found on PATH), waits for READY=1 on a
# notify socket like systemd, and stops with the unit's KillSignal (SIGTERM).
set -eu
unit="$NONSTOP_PKGROOT/lib/systemd/system/nonstop-agent.service"
state=/var/lib/nonstop
cmd=$1; shift
if [ "$cmd" = enable ]; then
  [ "${1:-}" = --now ] || exit 0
  shift; cmd=start
fi
case "${1:-}" in nonstop-agent|nonstop-agent.service) ;; *) echo "unknown unit ${1:-}" >&2; exit 2 ;; esac
field() { sed -n "s#^$1=/usr/bin/##p" "$unit"; }
stop() {
  [ -f "$state/.agent.pid" ] || return 0
  pid=$(cat "$state/.agent.pid")
  kill -TERM "$pid" 2>/dev/null || true
  i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { kill -KILL "$pid"; break; }
    sleep 0.1
  done
  [ -f "$state/.notify.pid" ] && kill "$(cat "$state/.notify.pid")" 2>/dev/null || true
  rm -f "$state/.agent.pid" "$state/.notify.pid"
}
start() {
  mkdir -p "$state"
  $(field ExecStartPre) >/dev/null
  rm -f "$state/.notify.sock" "$state/.notify.log"
  socat -u UNIX-RECV:"$state/.notify.sock" OPEN:"$state/.notify.log",creat,append \
    </dev/null >/dev/null 2>&1 &
  echo $! > "$state/.notify.pid"
  i=0; while [ ! -S "$state/.notify.sock" ]; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.05; done
  NOTIFY_SOCKET="$state/.notify.sock" $(field ExecStart) >>"$state/agent.log" 2>&1 </dev/null &
  echo $! > "$state/.agent.pid"
  i=0
  until grep -q '^READY=1' "$state/.notify.log" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "no READY=1" >&2; tail "$state/agent.log" >&2; exit 1; }
    kill -0 "$(cat "$state/.agent.pid")" || { echo "agent exited" >&2; tail "$state/agent.log" >&2; exit 1; }
    sleep 0.05
  done
}
case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) grep '^STATUS=' "$state/.notify.log" | tail -1 ;;
  daemon-reload) ;;
  *) echo "systemctl stand-in: $cmd unsupported" >&2; exit 2 ;;
esac
"#;
    for (name, text) in [("apt-get", apt), ("systemctl", systemctl)] {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("shim");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
}

/// Per-node private directories, bind-mounted over the real paths.
struct Host {
    ns: String,
    etc: PathBuf,
    var: PathBuf,
}

const MOUNTPOINTS: [&str; 3] = ["/etc/nonstop", "/var/lib/nonstop", "/usr/share/doc/nonstop"];

fn run_block(
    host: &Host,
    work: &Path,
    pkgroot: &Path,
    deb: &Path,
    shims: &Path,
    text: &str,
) -> std::process::Output {
    let path = format!(
        "{}:{}:{}",
        shims.display(),
        pkgroot.join("usr/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c"])
        .arg(
            "mount --bind \"$1\" /etc/nonstop && mount --bind \"$2\" /var/lib/nonstop && \
             mount --bind \"$3\" /usr/share/doc/nonstop && cd \"$4\" && exec sh -eu -c \"$5\"",
        )
        .arg("sh")
        .arg(&host.etc)
        .arg(&host.var)
        .arg(pkgroot.join("usr/share/doc/nonstop"))
        .arg(work)
        .arg(text)
        .env("PATH", path)
        .env("NONSTOP_PKGROOT", pkgroot)
        .env("NONSTOP_DEB", deb)
        .output()
        .expect("run a block")
}

/// The lab's addresses and interface in place of the guide's examples.
fn substitute(text: &str, index: u8) -> String {
    text.replace("198.18.1.", &format!("198.18.{index}."))
        .replace("198.19.1.", &format!("198.19.{index}."))
        .replace("\"eth1\"", "\"sync0\"")
}

#[test]
fn deploy_guide_runs_as_written_on_the_lab() {
    if !require_root() {
        return;
    }
    let guide = std::fs::read_to_string(repo().join("docs/DEPLOY.md")).expect("DEPLOY.md");
    let steps = blocks(&guide);
    assert!(
        steps.len() >= 14,
        "{} runnable blocks: {steps:?}",
        steps.len()
    );
    let work = std::env::temp_dir().join(format!("nonstop-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work");
    let _cleanup = WorkDir(work.clone());
    let out = Command::new(repo().join("scripts/package"))
        .args(["--profile", "debug", "--out"])
        .arg(&work)
        .output()
        .expect("scripts/package");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let pkgroot = work.join("pkgroot");
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&pkgroot)
        .status();
    assert!(unpack.expect("dpkg-deb").success());
    let shims = work.join("shims");
    write_shims(&shims);
    let mut created = Vec::new();
    for mountpoint in MOUNTPOINTS {
        if !Path::new(mountpoint).exists() {
            std::fs::create_dir_all(mountpoint).expect("mountpoint");
            created.push(mountpoint);
        }
    }

    let lab = LabGuard::up(&LabSpec {
        name: unique_name("deploy"),
        peers: 1,
        heartbeat_ms: 100,
        misses: 3,
        service: None,
    })
    .expect("lab up");
    let index = lab.status().expect("status").index;
    let host = |name: &str, node: &str| {
        let dir = work.join(name);
        let host = Host {
            ns: lab.namespace(node),
            etc: dir.join("etc-nonstop"),
            var: dir.join("var-lib-nonstop"),
        };
        std::fs::create_dir_all(&host.etc).expect("etc");
        std::fs::create_dir_all(&host.var).expect("var");
        host
    };
    let a = host("node-a", "master");
    let b = host("node-b", "backup");
    let agent_logs = || {
        [&a, &b]
            .iter()
            .map(|h| {
                let text = std::fs::read_to_string(h.var.join("agent.log")).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                format!(
                    "--- {} ---\n{}",
                    h.ns,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic: Option<std::thread::JoinHandle<anyhow::Result<EchoClients>>> = None;
    let mut before = None;
    let mut ports = Vec::new();
    for (i, (target, text)) in steps.iter().enumerate() {
        let text = substitute(text, index);
        let hosts: Vec<&Host> = match target.as_str() {
            "node-a" => vec![&a],
            "node-b" => vec![&b],
            "both" => vec![&a, &b],
            other => panic!("block {i}: unknown target {other}"),
        };
        for h in hosts {
            let out = run_block(h, &work, &pkgroot, &deb, &shims, &text);
            assert!(
                out.status.success(),
                "block {i} on {} failed:\n{text}\n--- stdout\n{}\n--- stderr\n{}\n{}",
                h.ns,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                agent_logs()
            );
            eprintln!(
                "block {i} on {}: ok\n{}",
                h.ns,
                String::from_utf8_lossy(&out.stdout).trim_end()
            );
        }
        // The scp step: the key goes from node-a to node-b.
        let key_a = a.etc.join("key");
        let key_b = b.etc.join("key");
        if key_a.exists() && !key_b.exists() {
            std::fs::copy(&key_a, &key_b).expect("copy key");
        }
        // The edit step of section 5: the lab's addresses in the installed configs.
        for h in [&a, &b] {
            let config = h.etc.join("agent.toml");
            if let Ok(text) = std::fs::read_to_string(&config) {
                let edited = substitute(&text, index);
                if edited != text {
                    std::fs::write(&config, edited).expect("edit config");
                }
            }
        }
        // Once both agents run (node-b started), sessions open and stay under traffic.
        if traffic.is_none() && target == "node-b" && text.contains("systemctl enable --now") {
            let mut clients = EchoClients::connect(&lab, SESSIONS)
                .unwrap_or_else(|e| panic!("sessions to the VIP: {e:#}\n{}", agent_logs()));
            clients.round().expect("first round");
            ports = clients.ports();
            before = Some(peer_tcp_counters(&lab));
            let stop = Arc::clone(&stop);
            traffic = Some(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    clients.round()?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(clients)
            }));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut clients = traffic
        .expect("the guide starts node-b")
        .join()
        .expect("traffic thread")
        .unwrap_or_else(|e| {
            panic!(
                "a session broke while following the guide: {e:#}\n{}",
                agent_logs()
            )
        });
    clients.round().expect("round at the end");
    assert_eq!(clients.ports(), ports);
    assert_eq!(
        Some(peer_tcp_counters(&lab)),
        before,
        "no reset, new connection or abort on the peer"
    );
    eprintln!(
        "{} blocks of DEPLOY.md ran; {SESSIONS} sessions carried {} bytes each way unbroken",
        steps.len(),
        clients.sent.iter().sum::<u64>()
    );
    // Stop both agents the way the guide's unit would.
    for h in [&b, &a] {
        let _ = run_block(
            h,
            &work,
            &pkgroot,
            &deb,
            &shims,
            "systemctl stop nonstop-agent",
        );
    }
    drop(lab);
    for mountpoint in created {
        let _ = std::fs::remove_dir(mountpoint);
    }
}
