//! Small helpers around the `nfq` crate, shared by the session interceptor and the
//! fault injector's delayer: finding the queue's socket (`nfq` 0.2.5 does not expose
//! it), socket options, `poll`, and an eventfd that wakes a queue thread.

use std::collections::HashSet;
use std::os::fd::RawFd;

/// Opens an NFQUEUE handle and identifies its netlink socket: the one new
/// `AF_NETLINK`/`NETLINK_NETFILTER` descriptor of this process (`None` when that is
/// ambiguous, e.g. another thread opened one at the same moment).
pub fn open_queue() -> std::io::Result<(nfq::Queue, Option<RawFd>)> {
    let before = netfilter_sockets();
    let queue = nfq::Queue::open()?;
    let after = netfilter_sockets();
    let new: Vec<RawFd> = after.difference(&before).copied().collect();
    // nfq opens its socket without CLOEXEC: a service started by the agent would
    // inherit it and keep the queue bound after an agent crash, so the restarted
    // agent could not bind it again (EPERM). Close it on exec.
    for &fd in &new {
        // SAFETY: plain fcntl on a descriptor this process owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((queue, (new.len() == 1).then(|| new[0])))
}

/// Sets an integer socket option.
pub fn set_socket_int(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: valid pointer to a c_int and its length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Descriptors of this process that are netfilter netlink sockets.
fn netfilter_sockets() -> HashSet<RawFd> {
    let mut found = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return found;
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if socket_int(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
            && socket_int(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        {
            found.insert(fd);
        }
    }
    found
}

/// Reads an integer `SOL_SOCKET` option; `None` if `fd` is not a socket.
pub fn socket_int(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to a c_int and its length; a non-socket fd just fails.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Waits until either descriptor is readable or `timeout_ms` passes.
pub fn poll_two(a: RawFd, b: RawFd, timeout_ms: i32) -> std::io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of two pollfd structs.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// A Linux eventfd used to wake the thread.
#[derive(Debug)]
pub struct EventFd(RawFd);

impl EventFd {
    /// A new non-blocking eventfd.
    pub fn new() -> std::io::Result<EventFd> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventFd(fd))
    }

    /// The descriptor, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.0
    }

    /// Makes the descriptor readable.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }

    /// Makes it not readable again.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN when empty is fine.
        unsafe { libc::read(self.0, (&mut value as *mut u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}
