//! Collects [`HostFacts`] from the running host (its network namespace): interfaces
//! (getifaddrs), capabilities (`/proc/self/status`), kernel features by trying them
//! (an NFQUEUE bind, raw and packet sockets, a `SOCK_DESTROY` request for a socket
//! that does not exist), the key file, the data directory and `PATH`. Nothing is
//! changed on the host.

use super::{HostFacts, Interface, Probe};
use nonstop_shared::config::AgentConfig;
use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Probes everything [`super::evaluate`] needs.
pub fn gather(config: &AgentConfig) -> HostFacts {
    HostFacts {
        interfaces: interfaces().unwrap_or_default(),
        capabilities: capabilities(),
        nfqueue: nfqueue(),
        nfqueue_target: nfqueue_target(),
        raw_socket: socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .map(|_| "a raw IPv4 socket opens".to_owned())
        .map_err(|e| format!("cannot open a raw IPv4 socket: {e} (needs CAP_NET_RAW)")),
        packet_socket: socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None)
            .map(|_| "a packet socket opens (gratuitous ARP)".to_owned())
            .map_err(|e| format!("cannot open a packet socket: {e} (needs CAP_NET_RAW)")),
        sock_destroy: sock_destroy(),
        key: nonstop_shared::auth::Key::load(&config.security.key_file)
            .map(|key| {
                format!(
                    "{} is private and long enough, fingerprint {}",
                    config.security.key_file.display(),
                    key.fingerprint()
                )
            })
            .map_err(|e| e.to_string()),
        data_dir: data_dir(&config.data_dir),
        iptables: on_path(&["iptables", "iptables-restore"]),
    }
}

/// Every interface with its flags and IPv4 addresses.
pub fn interfaces() -> std::io::Result<Vec<Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out: Vec<Interface> = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = entry.ifa_flags;
        let index = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                out.push(Interface {
                    name,
                    up: flags & libc::IFF_UP as u32 != 0,
                    running: flags & libc::IFF_RUNNING as u32 != 0,
                    addrs: Vec::new(),
                });
                out.len() - 1
            }
        };
        if entry.ifa_addr.is_null() || entry.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family we check first.
        if i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET entries carry sockaddr_in address and netmask.
        let (addr, mask) = unsafe {
            let addr = &*(entry.ifa_addr as *const libc::sockaddr_in);
            let mask = &*(entry.ifa_netmask as *const libc::sockaddr_in);
            (
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u32::from_be(mask.sin_addr.s_addr),
            )
        };
        out[index].addrs.push((addr, mask.count_ones() as u8));
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The effective capability set.
fn capabilities() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(hex.trim(), 16).map_err(|e| format!("CapEff `{}`: {e}", hex.trim()))
}

/// Opens an NFQUEUE handle and binds a queue number nobody uses (not the agent's,
/// which may be bound right now), then unbinds it.
fn nfqueue() -> Probe {
    let mut queue = nfq::Queue::open().map_err(|e| {
        format!(
            "cannot open an nfnetlink socket: {e} (CONFIG_NETFILTER_NETLINK_QUEUE, CAP_NET_ADMIN)"
        )
    })?;
    let number = 65_000 + (std::process::id() % 500) as u16;
    queue.bind(number).map_err(|e| {
        format!("cannot bind NFQUEUE {number}: {e} (CONFIG_NETFILTER_NETLINK_QUEUE, CAP_NET_ADMIN)")
    })?;
    let _ = queue.unbind(number);
    Ok("nfnetlink_queue binds a queue".into())
}

/// The xtables NFQUEUE target: registered now, or built in or loadable.
fn nfqueue_target() -> Probe {
    let registered = std::fs::read_to_string("/proc/net/ip_tables_targets")
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "NFQUEUE"));
    if registered {
        return Ok("NFQUEUE is registered (/proc/net/ip_tables_targets)".into());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let modules = Path::new("/lib/modules").join(release);
    for (file, needle) in [
        ("modules.builtin", "xt_NFQUEUE.ko"),
        ("modules.dep", "xt_NFQUEUE.ko"),
    ] {
        if std::fs::read_to_string(modules.join(file)).is_ok_and(|t| t.contains(needle)) {
            return Ok(format!("xt_NFQUEUE is in {file} of {release}"));
        }
    }
    if let Ok(text) = std::fs::read_to_string(format!("/boot/config-{release}")) {
        for value in ["y", "m"] {
            if text.contains(&format!("CONFIG_NETFILTER_XT_TARGET_NFQUEUE={value}")) {
                return Ok(format!("CONFIG_NETFILTER_XT_TARGET_NFQUEUE={value}"));
            }
        }
    }
    Err(
        "the xtables NFQUEUE target is not registered, built in or installed as a module \
         (CONFIG_NETFILTER_XT_TARGET_NFQUEUE)"
            .into(),
    )
}

/// `SOCK_DESTROY` (linux/sock_diag.h).
const SOCK_DESTROY: u16 = 21;

/// Asks the kernel to destroy a TCP socket that does not exist: a kernel with
/// `CONFIG_INET_DIAG_DESTROY` looks for it and answers ENOENT; one without answers
/// EOPNOTSUPP. Nothing is destroyed.
fn sock_destroy() -> Probe {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(format!(
            "no socket diagnostics: {} (CONFIG_INET_DIAG)",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes).
    let mut msg = [0u8; 72];
    msg[0..4].copy_from_slice(&72u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_INET as u8;
    msg[17] = libc::IPPROTO_TCP as u8;
    msg[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = 24;
    msg[id..id + 2].copy_from_slice(&9u16.to_be_bytes()); // sport: discard
    msg[id + 2..id + 4].copy_from_slice(&9u16.to_be_bytes()); // dport
    msg[id + 4..id + 8].copy_from_slice(&[127, 0, 0, 9]); // src
    msg[id + 20..id + 24].copy_from_slice(&[127, 0, 0, 9]); // dst
    msg[id + 40..id + 48].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
                                                       // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto with our buffer and a sockaddr_nl of the right size.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::addr_of!(kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(format!(
            "cannot ask socket diagnostics: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut reply = [0u8; 512];
    // SAFETY: recv into our buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 20 {
        return Err(format!(
            "no answer from socket diagnostics: {}",
            std::io::Error::last_os_error()
        ));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(format!("unexpected netlink answer type {kind}"));
    }
    let errno = -i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match errno {
        0 | libc::ENOENT => Ok("SOCK_DESTROY is supported (CONFIG_INET_DIAG_DESTROY)".into()),
        libc::EOPNOTSUPP => {
            Err("the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)".into())
        }
        other => Err(format!(
            "SOCK_DESTROY probe failed: {}",
            std::io::Error::from_raw_os_error(other)
        )),
    }
}

/// The data directory exists and is writable, or can be created.
fn data_dir(dir: &Path) -> Probe {
    let writable = |p: &Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: access(2) on a NUL-terminated path.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    };
    if dir.is_dir() {
        return if writable(dir) {
            Ok(format!("{} is writable", dir.display()))
        } else {
            Err(format!("{} is not writable", dir.display()))
        };
    }
    if dir.exists() {
        return Err(format!("{} exists and is not a directory", dir.display()));
    }
    match dir.ancestors().skip(1).find(|p| p.is_dir()) {
        Some(parent) if writable(parent) => Ok(format!(
            "{} will be created (in {})",
            dir.display(),
            parent.display()
        )),
        Some(parent) => Err(format!(
            "{} is missing and {} is not writable",
            dir.display(),
            parent.display()
        )),
        None => Err(format!("{} cannot be created", dir.display())),
    }
}

/// Every one of `tools` is an executable on `PATH`.
fn on_path(tools: &[&str]) -> Probe {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found = Vec::new();
    for tool in tools {
        let hit = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
        match hit {
            Some(p) => found.push(p.display().to_string()),
            None => return Err(format!("{tool} is not on PATH (install iptables)")),
        }
    }
    Ok(found.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_address() {
        let all = interfaces().expect("getifaddrs");
        let lo = all.iter().find(|i| i.name == "lo").expect("lo");
        if lo.up {
            assert!(lo.addrs.contains(&(Ipv4Addr::LOCALHOST, 8)), "{lo:?}");
        }
    }

    #[test]
    fn data_dir_verdicts() {
        let base = std::env::temp_dir().join(format!("nonstop-check-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("dir");
        assert!(data_dir(&base).expect("writable").contains("writable"));
        assert!(data_dir(&base.join("a/b"))
            .expect("creatable")
            .contains("will be created"));
        let file = base.join("file");
        std::fs::write(&file, b"x").expect("file");
        assert!(data_dir(&file).is_err());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn path_lookup_names_the_missing_tool() {
        assert!(on_path(&["sh"]).is_ok());
        let err = on_path(&["sh", "no-such-tool-here"]).expect_err("missing");
        assert!(err.contains("no-such-tool-here"), "{err}");
    }
}
