//! Faults on processes: SIGKILL or SIGSTOP of the agent itself, SIGKILL of the
//! managed service, and the detached helpers that carry out a fault after the
//! agent has replied (or while it is frozen or cut off).
//!
//! A helper is `sh -c SCRIPT` in a new session (`setsid`), with every descriptor
//! above stderr closed: it must not keep the agent's sockets — in particular the
//! NFQUEUE netlink sockets, whose binding would otherwise outlive a dead agent and
//! block the next one from binding its queues. Its stderr is the agent's (the log).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long after replying the agent is killed, frozen or cut off, so the reply
/// reaches the console first.
pub const ACT_AFTER: Duration = Duration::from_millis(100);

/// A detached helper process.
#[derive(Debug)]
pub struct Helper {
    /// Its pid (also its process group and session id).
    pub pid: u32,
    done: Arc<AtomicBool>,
}

impl Helper {
    /// Whether it is still running.
    pub fn running(&self) -> bool {
        !self.done.load(Ordering::Relaxed)
    }

    /// SIGKILLs its whole process group if it still runs; `true` if it did.
    pub fn kill(&self) -> bool {
        if !self.running() {
            return false;
        }
        let Ok(pgid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        // SAFETY: plain syscall; the group is the helper's own session (setsid).
        unsafe { libc::kill(-pgid, libc::SIGKILL) == 0 }
    }
}

/// Starts `sh -c script` detached from the agent (new session, no inherited
/// descriptors but stdio); a thread reaps it.
pub fn spawn_detached(script: &str) -> Result<Helper, String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: setsid and close_range are async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
                for fd in 3..1024 {
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start helper `sh -c {script:?}`: {e}"))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let reaped = Arc::clone(&done);
    std::thread::Builder::new()
        .name("inject-helper".into())
        .spawn(move || {
            let _ = child.wait();
            reaped.store(true, Ordering::Relaxed);
        })
        .map_err(|e| format!("cannot start the helper reaper thread: {e}"))?;
    Ok(Helper { pid, done })
}

fn seconds_text(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Helper script: SIGSTOP `pid` after [`ACT_AFTER`], SIGCONT `seconds` later (pure).
pub fn freeze_script(pid: u32, seconds: u64) -> String {
    format!(
        "sleep {}; kill -STOP {pid}; sleep {seconds}; kill -CONT {pid}",
        seconds_text(ACT_AFTER)
    )
}

/// Helper script: `interfaces` down after [`ACT_AFTER`], up again `seconds` later
/// (pure). Names must be checked first (`links::valid_ifname`).
pub fn links_down_script(interfaces: &[String], seconds: u64) -> String {
    let set = |state: &str| {
        interfaces
            .iter()
            .map(|i| format!("ip link set dev {i} {state}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "sleep {}; {}; sleep {seconds}; {}",
        seconds_text(ACT_AFTER),
        set("down"),
        set("up")
    )
}

/// SIGKILLs this process [`ACT_AFTER`] from now, from a thread of its own.
pub fn kill_self_later() -> Result<(), String> {
    std::thread::Builder::new()
        .name("inject-kill".into())
        .spawn(|| {
            std::thread::sleep(ACT_AFTER);
            // SAFETY: plain syscalls on our own pid.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the kill thread: {e}"))
}

/// Whether a process with arguments `args` runs `command`: its arguments joined by
/// spaces equal the command (whitespace-normalised), or it is the `sh -c COMMAND`
/// shell that started it (pure).
pub fn matches_command(args: &[String], command: &str) -> bool {
    let wanted: Vec<&str> = command.split_whitespace().collect();
    if wanted.is_empty() {
        return false;
    }
    let joined = args.join(" ");
    let have: Vec<&str> = joined.split_whitespace().collect();
    if have == wanted {
        return true;
    }
    matches!(args, [sh, flag, cmd]
        if Path::new(sh).file_name().is_some_and(|n| n == "sh" || n == "bash")
            && flag == "-c"
            && cmd.split_whitespace().eq(wanted.iter().copied()))
}

/// SIGKILLs every process of this host (same network namespace, not this agent)
/// that runs `command` ([`matches_command`]); returns their pids, or an error if
/// there is none.
pub fn kill_app(command: &str) -> Result<Vec<u32>, String> {
    let own_netns = std::fs::read_link("/proc/self/ns/net")
        .map_err(|e| format!("cannot read /proc/self/ns/net: {e}"))?;
    let own_pid = std::process::id();
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    let mut victims = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        let dir = entry.path();
        if std::fs::read_link(dir.join("ns/net")).ok().as_ref() != Some(&own_netns) {
            continue;
        }
        let Ok(raw) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if matches_command(&args, command) {
            victims.push(pid);
        }
    }
    if victims.is_empty() {
        return Err(format!(
            "no process on this host runs the managed service `{command}` (service.command)"
        ));
    }
    let mut killed = Vec::new();
    for pid in victims {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: plain syscall.
        if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
            killed.push(pid);
        }
    }
    if killed.is_empty() {
        return Err(format!(
            "found processes running `{command}` but could not kill them"
        ));
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_matching_is_exact() {
        let cmd = "nonstop-echo --listen 0.0.0.0:7000";
        assert!(matches_command(
            &args(&["nonstop-echo", "--listen", "0.0.0.0:7000"]),
            cmd
        ));
        assert!(matches_command(&args(&["sh", "-c", cmd]), cmd));
        assert!(matches_command(&args(&["/bin/sh", "-c", cmd]), cmd));
        assert!(!matches_command(&args(&["nonstop-echo"]), cmd));
        assert!(!matches_command(
            &args(&["nonstop-echo", "--listen", "0.0.0.0:7000", "-v"]),
            cmd
        ));
        assert!(!matches_command(&args(&["vi", "-c", cmd]), cmd));
        assert!(!matches_command(&args(&[]), cmd));
        assert!(!matches_command(&args(&["x"]), "  "));
    }

    #[test]
    fn scripts_act_after_the_reply() {
        assert_eq!(
            freeze_script(42, 3),
            "sleep 0.100; kill -STOP 42; sleep 3; kill -CONT 42"
        );
        assert_eq!(
            links_down_script(&["eth0".into(), "sync0".into()], 2),
            "sleep 0.100; ip link set dev eth0 down; ip link set dev sync0 down; sleep 2; \
             ip link set dev eth0 up; ip link set dev sync0 up"
        );
    }

    #[test]
    fn a_helper_runs_detached_and_can_be_killed() {
        let helper = spawn_detached("sleep 30").expect("spawn");
        assert!(helper.running());
        assert!(helper.kill());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while helper.running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!helper.running());
        assert!(!helper.kill());
    }

    #[test]
    fn a_helper_inherits_no_descriptor_beyond_stdio() {
        // Like nfq's netlink socket: opened without CLOEXEC.
        // SAFETY: plain syscalls; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
        assert!(fd > 2);
        let helper = spawn_detached("sleep 30").expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut fds = Vec::new();
        while std::time::Instant::now() < deadline {
            // Wait until the child has exec'd `sh` (before that it is our fork).
            let exe = std::fs::read_link(format!("/proc/{}/exe", helper.pid));
            if exe.is_ok_and(|p| !p.ends_with(std::env::current_exe().unwrap_or_default())) {
                fds = std::fs::read_dir(format!("/proc/{}/fd", helper.pid))
                    .map(|d| d.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        helper.kill();
        // SAFETY: we own the descriptor.
        unsafe { libc::close(fd) };
        fds.sort();
        assert_eq!(fds, ["0", "1", "2"], "inherited descriptors");
    }
}
