//! A planned switchover hands over the output the old master's service wrote but its
//! kernel has not sent yet (issue: no silent hole). Without it, a slow-reading peer's
//! stream would go on, after the switchover, with whatever the new service writes
//! next — a hole nobody notices.
//!
//! With the peers frozen and the service's input drained (`session::drain`), the old
//! master:
//! 1. stops the service's processes (`SIGSTOP`), so nothing more is written;
//! 2. takes each service socket that still holds unsent output or unread input with
//!    `pidfd_getfd`, puts it in repair mode, peeks at its send queue (`TCP_REPAIR_QUEUE
//!    = TCP_SEND_QUEUE`, as CRIU does) and its receive queue (`TCP_RECV_QUEUE`), notes
//!    `write_seq` and `rcv_nxt`, and leaves repair mode at once (without a window
//!    probe) — the connection carries on untouched;
//! 3. gives both to the tracker
//!    ([`Tracker::hand_over`](crate::session::tracker::Tracker::hand_over)), which
//!    replicates them with the session's state: the new master sends the output
//!    (`recovery::tail`) and maps the new service's first byte after it, and feeds the
//!    input to its service before the peer's next bytes (`recovery::feed`).
//!
//! The processes are continued (`SIGCONT`) once this node no longer serves (its
//! interceptor drops every outbound packet) or when the switchover is called off.
//! A session whose output cannot be taken (no permission, no such kernel feature, a
//! socket closing) is reset cleanly by the caller and counted — never handed over
//! with a hole.
//!
//! The parsing and the byte arithmetic are plain functions with unit tests; the
//! system calls are in [`peek_send_queue`] and [`owners`].

use nonstop_shared::session::{seq_le, seq_lt, SessionKey};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The kernel's table of IPv4 TCP sockets (this network namespace).
pub const PROC_TCP: &str = "/proc/net/tcp";

/// Largest queue read from one socket (a bound on memory: the kernel's own
/// `tcp_wmem`/`tcp_rmem` maxima are 4 and 6 MiB by default).
pub const MAX_SEND_QUEUE: usize = nonstop_shared::record::MAX_INPUT;

/// `/proc/net/tcp` state codes of connections whose output can be handed over.
const ESTABLISHED: u8 = 0x01;
const CLOSE_WAIT: u8 = 0x08;

// Linux TCP repair constants (include/uapi/linux/tcp.h).
const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
const TCP_REPAIR_ON: libc::c_int = 1;
/// Leave repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

/// One connection of the service, as `/proc/net/tcp` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The session it carries (peer, VIP:port).
    pub key: SessionKey,
    /// Whether its output can be handed over (ESTABLISHED or CLOSE_WAIT: no FIN of
    /// ours queued).
    pub open: bool,
    /// Bytes in its send queue: sent and unacknowledged plus not sent yet.
    pub send_queue: u32,
    /// Bytes in its receive queue the service has not read.
    pub recv_queue: u32,
    /// Of the send queue, bytes its kernel has not sent yet (sock_diag's
    /// `tcpi_notsent_bytes`; `None` from `/proc/net/tcp`).
    pub not_sent: Option<u32>,
    /// The socket's inode (to find the process holding it).
    pub inode: u64,
}

/// The connections to `vip` at `ports` in a `/proc/net/tcp` text; lines that do not
/// parse are skipped.
pub fn connections(table: &str, vip: Ipv4Addr, ports: &[u16]) -> Vec<Connection> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local_ip, local_port) = address(f.get(1)?)?;
            let (peer_ip, peer_port) = address(f.get(2)?)?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let (tx, rx) = f.get(4)?.split_once(':')?;
            let send_queue = u32::from_str_radix(tx, 16).ok()?;
            let recv_queue = u32::from_str_radix(rx, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            (local_ip == vip && ports.contains(&local_port) && peer_port != 0).then_some(
                Connection {
                    key: SessionKey {
                        peer_ip,
                        peer_port,
                        local_ip,
                        local_port,
                    },
                    open: state == ESTABLISHED || state == CLOSE_WAIT,
                    send_queue,
                    recv_queue,
                    not_sent: None,
                    inode,
                },
            )
        })
        .collect()
}

/// A connection from the kernel's socket diagnostics (IPv4 and dual-stack IPv6
/// sockets alike), or `None` for a peer that is not IPv4.
pub fn from_diag(c: &crate::sockets::diag::Connection) -> Option<Connection> {
    let std::net::IpAddr::V4(peer_ip) = c.remote.ip() else {
        return None;
    };
    Some(Connection {
        key: SessionKey {
            peer_ip,
            peer_port: c.remote.port(),
            local_ip: *c.local.ip(),
            local_port: c.local.port(),
        },
        open: matches!(
            c.state,
            crate::sockets::diag::TcpState::Established | crate::sockets::diag::TcpState::CloseWait
        ),
        send_queue: c.send_queue,
        recv_queue: c.recv_queue,
        not_sent: c.not_sent,
        inode: u64::from(c.inode),
    })
}

/// The service's connections to `vip` at `ports`, from the kernel's socket
/// diagnostics (dual-stack `[::]` services included).
pub fn service_connections(vip: Ipv4Addr, ports: &[u16]) -> io::Result<Vec<Connection>> {
    let mut diag = crate::sockets::diag::Diag::open().map_err(io::Error::other)?;
    let conns = diag.connections(vip, ports).map_err(io::Error::other)?;
    Ok(conns.iter().filter_map(from_diag).collect())
}

/// `0100007F:1F90` → 127.0.0.1:8080 (the address as the kernel holds it in memory,
/// printed as a native-endian word).
fn address(field: &str) -> Option<(Ipv4Addr, u16)> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    Some((
        Ipv4Addr::from(ip.to_ne_bytes()),
        u16::from_str_radix(port, 16).ok()?,
    ))
}

/// What one session's socket held, to hand over
/// ([`Tracker::hand_over`](crate::session::tracker::Tracker::hand_over)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The session.
    pub key: SessionKey,
    /// The service's output from a sequence number on (sent or not).
    pub output: Option<(u32, Vec<u8>)>,
    /// The input the service has not read, and where it ends (the kernel's
    /// `rcv_nxt`).
    pub input: Option<(u32, Vec<u8>)>,
}

/// A socket's send queue, read in repair mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendQueue {
    /// Sequence number just past the last byte the service wrote.
    pub write_seq: u32,
    /// The queue: sent-unacknowledged bytes, then bytes not sent yet.
    pub bytes: Vec<u8>,
}

impl SendQueue {
    /// Sequence number of the queue's first byte.
    pub fn start(&self) -> u32 {
        // The queue is bounded by MAX_SEND_QUEUE, far below 4 GiB.
        self.write_seq.wrapping_sub(self.bytes.len() as u32)
    }

    /// The bytes from sequence number `from` on, if the queue covers `from`.
    pub fn from(&self, from: u32) -> Option<&[u8]> {
        if seq_lt(from, self.start()) || seq_lt(self.write_seq, from) {
            return None;
        }
        self.bytes.get(from.wrapping_sub(self.start()) as usize..)
    }

    /// Whether the queue holds bytes at or past `seq` (output not yet known there).
    pub fn reaches_past(&self, seq: u32) -> bool {
        !seq_le(self.write_seq, seq)
    }
}

/// The process and descriptor holding each socket inode in `inodes` (every process's
/// `/proc/PID/fd`; processes that vanish meanwhile are skipped).
pub fn owners(inodes: &HashSet<u64>) -> HashMap<u64, (i32, i32)> {
    let mut found = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                found.entry(inode).or_insert((pid, n));
            }
        }
    }
    found
}

/// Sends `signal` to every pid (errors ignored: a process may have exited).
pub fn signal_all(pids: &[i32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// A socket's receive queue (input the service has not read), read in repair mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvQueue {
    /// The kernel's `rcv_nxt`: just past the last byte received.
    pub rcv_nxt: u32,
    /// The bytes the service has not read, ending at `rcv_nxt`.
    pub bytes: Vec<u8>,
}

/// Both queues of descriptor `fd` of process `pid` (see the module doc): the socket
/// is duplicated into this process, put in repair mode only for the reads, and left
/// as it was.
pub fn peek_queues(pid: i32, fd: i32) -> io::Result<(SendQueue, RecvQueue)> {
    // SAFETY: plain system calls on integers; the returned descriptors are owned.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd is a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: as above.
    let sock = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as i32) };
    let raw = sock.as_raw_fd();
    set(raw, TCP_REPAIR, TCP_REPAIR_ON)?;
    let result = read_queue(raw, TCP_SEND_QUEUE, libc::TIOCOUTQ).and_then(|(write_seq, bytes)| {
        let send = SendQueue { write_seq, bytes };
        let (rcv_nxt, bytes) = read_queue(raw, TCP_RECV_QUEUE, libc::FIONREAD)?;
        Ok((send, RecvQueue { rcv_nxt, bytes }))
    });
    let off = set(raw, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    let queues = result?;
    off?;
    Ok(queues)
}

/// One queue in repair mode: its end sequence number (`write_seq` or `rcv_nxt`) and
/// its bytes (peeked; `size_request` is the ioctl that gives their count). The end is
/// read before and after the peek and must not have moved (an ACK or a late segment
/// arriving meanwhile): tried a few times.
fn read_queue(
    raw: i32,
    which: libc::c_int,
    size_request: libc::c_ulong,
) -> io::Result<(u32, Vec<u8>)> {
    set(raw, TCP_REPAIR_QUEUE, which)?;
    for _ in 0..QUEUE_TRIES {
        let end = get(raw, TCP_QUEUE_SEQ)? as u32;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ / SIOCINQ write one int.
        if unsafe { libc::ioctl(raw, size_request, &mut queued) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(queued).unwrap_or(0);
        if len > MAX_SEND_QUEUE {
            return Err(io::Error::other(format!("queue of {len} bytes")));
        }
        let mut bytes = vec![0u8; len];
        let mut got = 0;
        if len > 0 {
            // SAFETY: the buffer is `len` bytes long.
            let n = unsafe {
                libc::recv(
                    raw,
                    bytes.as_mut_ptr().cast(),
                    len,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            got = n as usize;
        }
        let end_after = get(raw, TCP_QUEUE_SEQ)? as u32;
        if got == len && end_after == end {
            return Ok((end, bytes));
        }
    }
    Err(io::Error::other(
        "the queue kept changing while it was read",
    ))
}

/// Reads of a queue before giving up on a consistent one.
const QUEUE_TRIES: usize = 10;

fn set(fd: i32, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: one int, its size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get(fd: i32, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: one int, its size given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_TCP,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 641212C6:1B58 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 11 1 0000000000000000 100 0 0 10 0
   1: 641212C6:1B58 0A1212C6:A2D4 01 00001000:00000010 00:00000000 00000000     0        0 12 1 0000000000000000 20 4 30 10 -1
   2: 641212C6:1B58 0A1212C6:A2D6 04 00000005:00000000 00:00000000 00000000     0        0 13 1 0000000000000000 20 4 30 10 -1
   3: 651212C6:1B58 0A1212C6:A2D8 01 00000007:00000000 00:00000000 00000000     0        0 14 1 0000000000000000 20 4 30 10 -1
garbage
";

    #[test]
    fn connections_of_the_service_with_their_send_queues() {
        let vip = Ipv4Addr::new(198, 18, 18, 100);
        let got = connections(TABLE, vip, &[7000]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].key.peer_ip, Ipv4Addr::new(198, 18, 18, 10));
        assert_eq!(
            (got[0].key.peer_port, got[0].key.local_port),
            (0xA2D4, 7000)
        );
        assert_eq!(
            (got[0].open, got[0].send_queue, got[0].inode),
            (true, 0x1000, 12)
        );
        assert_eq!(got[0].recv_queue, 0x10);
        // FIN_WAIT1: our FIN is queued, nothing can be handed over.
        assert_eq!((got[1].open, got[1].send_queue), (false, 5));
        assert!(connections(TABLE, vip, &[7001]).is_empty());
    }

    #[test]
    fn the_queue_is_addressed_by_sequence_number_across_the_wrap() {
        let q = SendQueue {
            write_seq: 5,
            bytes: (0..10u8).collect(),
        };
        assert_eq!(q.start(), u32::MAX - 4);
        assert_eq!(q.from(u32::MAX - 4), Some(&q.bytes[..]));
        assert_eq!(q.from(2), Some(&[7u8, 8, 9][..]));
        assert_eq!(q.from(5), Some(&[][..]));
        assert_eq!(q.from(6), None);
        assert_eq!(q.from(u32::MAX - 5), None);
        assert!(q.reaches_past(4) && !q.reaches_past(5));
    }
}
