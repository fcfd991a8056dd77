//! The raw socket forged packets leave through.

use super::INJECT_MARK;
use crate::nfqueue::set_socket_int;
use std::os::fd::RawFd;

/// Send buffer of the raw socket.
const SNDBUF_BYTES: libc::c_int = 8 << 20;

/// A raw IPv4 socket (`IPPROTO_RAW`, header included) whose packets carry
/// [`INJECT_MARK`], for forged handshakes and retransmissions. Non-blocking.
pub(super) struct RawSender(RawFd);

impl RawSender {
    pub fn open() -> std::io::Result<RawSender> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sender = RawSender(fd);
        set_socket_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            INJECT_MARK as libc::c_int,
        )?;
        // Room for a burst (its packets stay charged to the socket while they wait
        // in the queue for our own verdict); beyond it sends return EWOULDBLOCK.
        set_socket_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF_BYTES)?;
        Ok(sender)
    }

    pub fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        if packet.len() < 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "short packet",
            ));
        }
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr = libc::in_addr {
            s_addr: u32::from_ne_bytes([packet[16], packet[17], packet[18], packet[19]]),
        };
        // SAFETY: valid buffer and sockaddr_in of the right size.
        let rc = unsafe {
            libc::sendto(
                self.0,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}
