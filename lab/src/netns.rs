//! Running `ip` and `nft`, finding namespaces and their processes, and opening
//! sockets inside a namespace.
//!
//! Every external command goes through [`run`], whose error ([`CommandError`]) carries
//! the full command line, its exit status and its stderr. Set `NONSTOP_LAB_TRACE=1`
//! to print each command to stderr before it runs.

use anyhow::{Context, Result};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// An external command that could not be started or exited unsuccessfully.
#[derive(Debug, Clone)]
pub struct CommandError {
    /// The command line, shell-quoted for copy and paste.
    pub command: String,
    /// Exit code; `None` when the command could not be started or died by a signal.
    pub status: Option<i32>,
    /// What the command printed on stderr (or why it could not start), trimmed.
    pub stderr: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(f, "`{}` failed (exit {code})", self.command)?,
            None => write!(f, "`{}` failed", self.command)?,
        }
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandError {}

/// Quotes one argument for display when it contains anything beyond plain characters.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Renders a command line for messages.
pub fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    std::iter::once(quote(program))
        .chain(args.iter().map(|a| quote(&a.as_ref().to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ")
}

fn trace(line: &str) {
    if std::env::var_os("NONSTOP_LAB_TRACE").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("+ {line}");
    }
}

/// Runs `program args…` (feeding `stdin` if given), returns its stdout on success.
pub fn run<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&str>,
) -> std::result::Result<String, CommandError> {
    let line = command_line(program, args);
    trace(&line);
    let fail = |status: Option<i32>, stderr: String| CommandError {
        command: line.clone(),
        status,
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(None, format!("cannot start `{program}`: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // An early exit closes the pipe; the exit status tells the story then.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(None, format!("cannot wait for `{program}`: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(out.status.code(), stderr))
    }
}

/// Runs `ip args…`.
pub fn ip(args: &[&str]) -> std::result::Result<String, CommandError> {
    run("ip", args, None)
}

/// Runs `ip -n NS args…` (iproute2 inside namespace `ns`).
pub fn ip_in(ns: &str, args: &[&str]) -> std::result::Result<String, CommandError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Runs `ip -j -n NS args…` and parses its JSON output (an array; empty output is `[]`).
pub fn ip_json(ns: &str, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut all = vec!["-j", "-n", ns];
    all.extend_from_slice(args);
    let text = ip(&all)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("cannot parse the JSON of `{}`", command_line("ip", &all)))
}

/// Loads an nftables script into namespace `ns` with `nft -f -` (one transaction).
pub fn nft_in(ns: &str, script: &str) -> std::result::Result<String, CommandError> {
    run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script))
}

/// The path of a namespace handle (`/run/netns/NS`).
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Whether namespace `ns` exists (has a handle under `/run/netns`).
pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Every named namespace, sorted (what `ip netns list` shows).
pub fn list_netns() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {NETNS_DIR}"))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Creates namespace `ns` (`ip netns add`).
pub fn add_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    Ok(())
}

/// Deletes namespace `ns` (`ip netns del`); no error when it does not exist.
pub fn del_netns(ns: &str) -> Result<()> {
    if !netns_exists(ns) {
        return Ok(());
    }
    match ip(&["netns", "del", ns]) {
        Ok(_) => Ok(()),
        Err(_) if !netns_exists(ns) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The inode that identifies namespace `ns` (what `/proc/<pid>/ns/net` points to), if
/// it exists.
pub fn netns_inode(ns: &str) -> Result<Option<u64>> {
    let path = netns_path(ns);
    match std::fs::metadata(&path) {
        Ok(meta) => Ok(Some(meta.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
}

/// The pids of every process whose network namespace is `ns` (what `ip netns pids`
/// prints), read from `/proc/*/ns/net`. Zombies have no namespace and are not listed.
pub fn netns_pids(ns: &str) -> Result<Vec<u32>> {
    match netns_inode(ns)? {
        Some(inode) => pids_in_netns_inode(inode),
        None => Ok(Vec::new()),
    }
}

/// The pids of every process in the network namespace with this inode; works after
/// the namespace's name is gone.
pub fn pids_in_netns_inode(inode: u64) -> Result<Vec<u32>> {
    let wanted = format!("net:[{inode}]");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes vanish while we look; an unreadable link is simply not ours.
        if let Ok(link) = std::fs::read_link(entry.path().join("ns/net")) {
            if link.as_os_str() == wanted.as_str() {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Whether `pid` is a live process (not gone, not a zombie). Never reaps: a zombie
/// belongs to its parent, which may still want its exit status.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: i32) -> Result<()> {
    let raw = libc::pid_t::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    if raw <= 1 {
        anyhow::bail!("refusing to signal pid {pid}");
    }
    signal_raw(raw, signal)
}

/// `kill(target, signal)` (negative target: a process group), ESRCH tolerated.
fn signal_raw(target: libc::pid_t, signal: i32) -> Result<()> {
    if target == 0 || target == -1 || target == 1 {
        anyhow::bail!("refusing to signal {target}");
    }
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(target, signal) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("cannot send signal {signal} to {target}"));
        }
    }
    Ok(())
}

/// The process group of `pid`, from `/proc/<pid>/stat`.
pub fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state, ppid, pgrp.
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// SIGKILLs the process group led by `leader` (if `leader` really leads it) and waits
/// for the leader to go.
pub fn kill_group(leader: u32, timeout: Duration) -> Result<()> {
    if pgid_of(leader) == Some(leader) {
        let raw =
            libc::pid_t::try_from(leader).with_context(|| format!("pid {leader} out of range"))?;
        signal_raw(-raw, libc::SIGKILL)?;
    } else {
        signal(leader, libc::SIGKILL)?;
    }
    if !wait_gone(&[leader], timeout).is_empty() {
        anyhow::bail!("pid {leader} survived SIGKILL");
    }
    Ok(())
}

/// Waits until none of `pids` is alive; returns the ones still alive at the deadline.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs every process in namespace `ns` (never this process) and waits until
/// they are gone, retrying for processes started meanwhile.
pub fn kill_all_in(ns: &str, timeout: Duration) -> Result<()> {
    match netns_inode(ns)? {
        Some(inode) => kill_all_in_inode(inode, timeout)
            .with_context(|| format!("cannot empty namespace {ns}")),
        None => Ok(()),
    }
}

/// [`kill_all_in`] by namespace inode (see [`netns_inode`]).
pub fn kill_all_in_inode(inode: u64, timeout: Duration) -> Result<()> {
    let me = std::process::id();
    let deadline = Instant::now() + timeout;
    loop {
        let pids: Vec<u32> = pids_in_netns_inode(inode)?
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for &pid in &pids {
            signal(pid, libc::SIGKILL)?;
        }
        let left = wait_gone(&pids, deadline.saturating_duration_since(Instant::now()));
        if Instant::now() >= deadline && !left.is_empty() {
            anyhow::bail!("processes {left:?} survived SIGKILL");
        }
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `netns`, and returns
/// its result. Sockets created inside keep that namespace after the thread exits.
pub fn run_in_netns<T, F>(netns: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let path = netns_path(netns);
    let handle = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open namespace {}: {e}", path.display()),
        )
    })?;
    let thread = std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            // SAFETY: setns on a valid, open namespace fd; it changes only this thread.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot enter namespace {}: {err}", path.display()),
                ));
            }
            drop(handle);
            f()
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other(format!("thread in namespace {netns} panicked")))?
}

/// Connects a TCP socket from inside network namespace `netns`: a thread joins the
/// namespace (`setns`), connects with `timeout` and hands the stream back.
pub fn connect_in_netns(netns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    run_in_netns(netns, move || TcpStream::connect_timeout(&addr, timeout)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("connect to {addr} from namespace {netns}: {e}"),
        )
    })
}

/// Binds a TCP listener inside network namespace `netns`.
pub fn listen_in_netns(netns: &str, addr: SocketAddr) -> io::Result<TcpListener> {
    run_in_netns(netns, move || TcpListener::bind(addr))
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr} in namespace {netns}: {e}")))
}

/// Whether `ip` answers TCP from inside `netns` within `timeout`: a connection to
/// the discard port that is accepted *or refused* (RST) proves the path both ways;
/// silence or "unreachable" does not. Needs no `ping` binary.
pub fn tcp_probe(netns: &str, ip: std::net::Ipv4Addr, timeout: Duration) -> bool {
    match connect_in_netns(netns, SocketAddr::from((ip, 9)), timeout) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
    }
}

/// Writes `value` to `/proc/sys/<key with dots as slashes>` inside namespace `netns`.
/// `/proc/sys/net` follows the writing thread's namespace, so a joined thread suffices.
pub fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let text = value.to_owned();
    let shown = path.clone();
    run_in_netns(netns, move || std::fs::write(&path, text))
        .with_context(|| format!("cannot set {shown} = {value} in namespace {netns}"))
}

/// Reads `/proc/sys/<key>` inside namespace `netns`, trimmed.
pub fn sysctl_get(netns: &str, key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let shown = path.clone();
    run_in_netns(netns, move || std::fs::read_to_string(&path))
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("cannot read {shown} in namespace {netns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_for_copy_and_paste() {
        assert_eq!(
            command_line("ip", &["-n", "nonstop-a-switch", "link", "add", "m-svc"]),
            "ip -n nonstop-a-switch link add m-svc"
        );
        assert_eq!(
            command_line("sh", &["-c", "echo 'hi' there"]),
            r"sh -c 'echo '\''hi'\'' there'"
        );
        assert_eq!(command_line("x", &[""]), "x ''");
    }

    #[test]
    fn failures_carry_command_and_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], None).expect_err("fails");
        assert_eq!(err.status, Some(3));
        assert_eq!(err.stderr, "oops");
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo oops >&2; exit 3'` failed (exit 3): oops"
        );
        let err = run("/nonexistent/prog", &["a"], None).expect_err("cannot start");
        assert_eq!(err.status, None);
        assert!(err.to_string().contains("cannot start"), "{err}");
        let out = run("cat", &[] as &[&str], Some("fed")).expect("cat");
        assert_eq!(out, "fed");
    }

    #[test]
    fn our_own_pid_is_alive_and_a_bogus_one_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
