//! The kernel's socket diagnostics (netlink `NETLINK_SOCK_DIAG`, as `ss` uses them):
//! the local service's TCP sockets, IPv4 and IPv6 alike, and their destruction.
//!
//! A server that listens the way Go, Node.js and Java do by default holds one
//! dual-stack socket on `[::]`; its connections from IPv4 peers are `AF_INET6` sockets
//! with IPv4-mapped addresses (`::ffff:a.b.c.d`). Every query here dumps both families
//! and reports such sockets by their IPv4 addresses, so callers only ever think in
//! terms of VIP:port.
//!
//! - [`Diag::listeners`]: sockets listening on the service ports that accept
//!   connections to the VIP, with their accept queues.
//! - [`Diag::connections`]: every other socket on VIP:port, with its receive queue
//!   (input the service has not read), send queue (output the peer has not
//!   acknowledged, sent or not) and not-sent bytes — one call, one dump per family.
//! - [`Diag::destroy`] / [`Diag::destroy_on`]: `SOCK_DESTROY` (what `ss -K` does).
//!
//! Message layouts come from `netlink-packet-sock-diag`; the decoding of one reply
//! datagram ([`read_datagram`]) and the selection of the sockets that matter
//! ([`Listener::serves`], [`to_connection`]) are plain functions with unit tests. The
//! I/O is one blocking netlink socket; each request is answered at once by the
//! kernel (a receive timeout bounds every wait).

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Most matching sockets one query returns (the dump itself is read to its end).
pub const MAX_SOCKETS: usize = 1 << 18;

/// Size of the receive buffer: the kernel fills dump datagrams up to 32 KiB (ss uses
/// the same), so nothing is ever truncated.
const RECV_BUFFER: usize = 64 * 1024;

/// Longest wait for one reply datagram; the kernel answers synchronously.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// Offset of `tcpi_notsent_bytes` in the kernel's `struct tcp_info` (stable ABI since
/// Linux 4.6; shorter replies from older kernels have no such field).
const TCPI_NOTSENT_BYTES: usize = 144;

/// Why a socket query failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The kernel has no `NETLINK_SOCK_DIAG` at all.
    #[error("the kernel has no socket diagnostics (netlink sock_diag): {0}")]
    Unsupported(#[source] io::Error),
    /// The kernel has sock_diag but no TCP handler for this address family
    /// (`CONFIG_INET_DIAG`/`tcp_diag`, or IPv6 disabled).
    #[error(
        "the kernel has no TCP socket diagnostics for {0} (CONFIG_INET_DIAG, tcp_diag module)"
    )]
    FamilyUnsupported(&'static str),
    /// `SOCK_DESTROY` is not built into this kernel.
    #[error("the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)")]
    DestroyUnsupported,
    /// Destroying sockets needs `CAP_NET_ADMIN`.
    #[error("destroying sockets needs CAP_NET_ADMIN: {0}")]
    NotPermitted(#[source] io::Error),
    /// A system call on the netlink socket failed.
    #[error("sock_diag {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("sock_diag {what}: the kernel answered {source}")]
    Kernel {
        /// What was being asked.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A reply did not decode.
    #[error("malformed sock_diag reply: {0}")]
    Malformed(String),
    /// More matching sockets than [`MAX_SOCKETS`].
    #[error("more than {MAX_SOCKETS} matching sockets")]
    TooMany,
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// `TCP_ESTABLISHED`.
    Established,
    /// `TCP_SYN_SENT`.
    SynSent,
    /// `TCP_SYN_RECV` (and request sockets, `TCP_NEW_SYN_RECV`).
    SynRecv,
    /// `TCP_FIN_WAIT1`.
    FinWait1,
    /// `TCP_FIN_WAIT2`.
    FinWait2,
    /// `TCP_TIME_WAIT`.
    TimeWait,
    /// `TCP_CLOSE`.
    Close,
    /// `TCP_CLOSE_WAIT`: the peer closed; input may still be unread.
    CloseWait,
    /// `TCP_LAST_ACK`.
    LastAck,
    /// `TCP_LISTEN`.
    Listen,
    /// `TCP_CLOSING`.
    Closing,
    /// A state number this code does not know.
    Other(u8),
}

impl TcpState {
    /// From the kernel's number.
    pub fn from_kernel(state: u8) -> TcpState {
        match state {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 | 12 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }

    /// Whether the service can still read input from a socket in this state.
    pub fn readable(self) -> bool {
        matches!(self, TcpState::Established | TcpState::CloseWait)
    }
}

/// A listening socket on one of the service ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Where it listens: `0.0.0.0`, `[::]`, the VIP, …; IPv4-mapped addresses are
    /// reported as IPv4.
    pub local: SocketAddr,
    /// An IPv6 socket with `IPV6_V6ONLY` (it accepts no IPv4 connection).
    pub v6only: bool,
    /// Handshakes completed by the kernel, not yet `accept()`ed by the service.
    pub accept_queue: u32,
    /// The accept queue's limit (`listen()` backlog).
    pub backlog: u32,
}

impl Listener {
    /// Whether this listener accepts connections to `vip`: a wildcard socket (IPv6
    /// only when dual-stack) or one bound to the VIP itself.
    pub fn serves(&self, vip: Ipv4Addr) -> bool {
        match self.local.ip() {
            IpAddr::V4(ip) => ip.is_unspecified() || ip == vip,
            IpAddr::V6(ip) => ip.is_unspecified() && !self.v6only,
        }
    }
}

/// One TCP socket on VIP:port other than a listener, with its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// VIP:port.
    pub local: SocketAddrV4,
    /// The peer (IPv4-mapped addresses reported as IPv4).
    pub remote: SocketAddr,
    /// Its TCP state.
    pub state: TcpState,
    /// Bytes received and not yet read by the service (`rcv_nxt − copied_seq`).
    pub recv_queue: u32,
    /// Bytes written by the service the peer has not acknowledged, sent or not
    /// (`write_seq − snd_una`).
    pub send_queue: u32,
    /// Of those, bytes not sent yet (`write_seq − snd_nxt`); `None` when the kernel's
    /// `tcp_info` has no such field.
    pub not_sent: Option<u32>,
    /// Whether the socket is an `AF_INET6` one (a dual-stack service).
    pub dual_stack: bool,
    /// The socket's inode (to find the process holding it).
    pub inode: u32,
    /// The kernel's identity of the socket (for [`Diag::destroy`]).
    id: SocketId,
}

impl Connection {
    /// Bytes in flight: sent, not acknowledged by the peer.
    pub fn unacked_sent(&self) -> u32 {
        self.send_queue
            .saturating_sub(self.not_sent.unwrap_or_default())
    }
}

/// What [`Diag::destroy_on`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestroyReport {
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets that were gone before their turn came.
    pub gone: usize,
}

/// One `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
pub struct Diag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diag").field("seq", &self.seq).finish()
    }
}

impl Diag {
    /// Opens the socket (in the calling thread's network namespace).
    pub fn open() -> Result<Diag, DiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                DiagError::Unsupported(e)
            } else {
                DiagError::Io {
                    what: "socket",
                    source: e,
                }
            }
        })?;
        let io = |what| move |source| DiagError::Io { what, source };
        socket.bind_auto().map_err(io("bind"))?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(io("connect"))?;
        set_receive_timeout(&socket, RECV_TIMEOUT).map_err(io("SO_RCVTIMEO"))?;
        Ok(Diag {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Listening sockets on `ports` (IPv4 and IPv6) that accept connections to `vip`.
    pub fn listeners(&mut self, vip: Ipv4Addr, ports: &[u16]) -> Result<Vec<Listener>, DiagError> {
        let mut found = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, StateFlags::LISTEN, ExtensionFlags::empty(), |r| {
                let listener = to_listener(r);
                if ports.contains(&listener.local.port()) && listener.serves(vip) {
                    push_bounded(&mut found, listener)
                } else {
                    Ok(())
                }
            })?;
        }
        Ok(found)
    }

    /// Whether something listens on one of `ports` for `vip`.
    pub fn listening(&mut self, vip: Ipv4Addr, ports: &[u16]) -> Result<bool, DiagError> {
        Ok(!self.listeners(vip, ports)?.is_empty())
    }

    /// Connections completed by the kernel that the service has not `accept()`ed yet,
    /// over every listener of `ports` serving `vip`.
    pub fn accept_backlog(&mut self, vip: Ipv4Addr, ports: &[u16]) -> Result<u64, DiagError> {
        Ok(self
            .listeners(vip, ports)?
            .iter()
            .map(|l| u64::from(l.accept_queue))
            .sum())
    }

    /// Every socket on `vip`:`ports` except listeners — IPv4 and dual-stack IPv6 —
    /// with its receive queue, send queue and not-sent bytes, from one dump per
    /// address family.
    pub fn connections(
        &mut self,
        vip: Ipv4Addr,
        ports: &[u16],
    ) -> Result<Vec<Connection>, DiagError> {
        let states = StateFlags::all() & !StateFlags::LISTEN;
        let mut found = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(
                family,
                states.clone(),
                ExtensionFlags::INFO,
                |r| match to_connection(r, vip, ports) {
                    Some(c) => push_bounded(&mut found, c),
                    None => Ok(()),
                },
            )?;
        }
        Ok(found)
    }

    /// Bytes the service has not read from its established (or peer-closed)
    /// connections on `vip`:`ports`.
    pub fn unread_input(&mut self, vip: Ipv4Addr, ports: &[u16]) -> Result<u64, DiagError> {
        Ok(self
            .connections(vip, ports)?
            .iter()
            .filter(|c| c.state.readable())
            .map(|c| u64::from(c.recv_queue))
            .sum())
    }

    /// Destroys one socket (`SOCK_DESTROY`): its owner sees `ECONNABORTED`; the kernel
    /// sends the peer an RST (which the queue drops for the service's sockets).
    /// `Ok(false)` when it was gone already.
    pub fn destroy(&mut self, connection: &Connection) -> Result<bool, DiagError> {
        let family = if connection.dual_stack {
            AF_INET6
        } else {
            AF_INET
        };
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: connection.id.clone(),
        }));
        let seq = self.send(request, NLM_F_REQUEST | NLM_F_ACK, "destroy request")?;
        loop {
            let len = self.recv()?;
            match read_ack(&self.buf[..len], seq)? {
                None => continue,
                Some(Ok(())) => return Ok(true),
                Some(Err(e)) => {
                    return match e.raw_os_error() {
                        Some(libc::ENOENT) => Ok(false),
                        Some(libc::EOPNOTSUPP) => Err(DiagError::DestroyUnsupported),
                        Some(libc::EPERM) | Some(libc::EACCES) => Err(DiagError::NotPermitted(e)),
                        _ => Err(DiagError::Kernel {
                            what: "destroy",
                            source: e,
                        }),
                    }
                }
            }
        }
    }

    /// Destroys every socket on `vip`:`ports` except the listeners (a reign's stale
    /// connections, an orphaned service's sockets).
    pub fn destroy_on(&mut self, vip: Ipv4Addr, ports: &[u16]) -> Result<DestroyReport, DiagError> {
        let mut report = DestroyReport::default();
        for connection in self.connections(vip, ports)? {
            if self.destroy(&connection)? {
                report.destroyed += 1;
            } else {
                report.gone += 1;
            }
        }
        Ok(report)
    }

    /// Dumps the TCP sockets of `family` in `states`, handing each reply to `each`;
    /// reads the dump to its end even after an error (the socket stays usable).
    fn dump(
        &mut self,
        family: u8,
        states: StateFlags,
        extensions: ExtensionFlags,
        mut each: impl FnMut(&InetResponse) -> Result<(), DiagError>,
    ) -> Result<(), DiagError> {
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        });
        let seq = self.send(request, NLM_F_REQUEST | NLM_F_DUMP, "dump request")?;
        let mut first_error = None;
        loop {
            let len = self.recv()?;
            let done = read_datagram(&self.buf[..len], seq, |response| {
                if first_error.is_none() {
                    if let Err(e) = each(response) {
                        first_error = Some(e);
                    }
                }
            });
            match done {
                Ok(false) => continue,
                Ok(true) => break,
                Err(DiagError::Kernel { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Err(DiagError::FamilyUnsupported(family_name(family)));
                }
                Err(e) => return Err(e),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends one request with the next sequence number, which it returns.
    fn send<M: NetlinkSerializable>(
        &mut self,
        message: M,
        flags: u16,
        what: &'static str,
    ) -> Result<u32, DiagError>
    where
        NetlinkPayload<M>: From<M>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|source| DiagError::Io { what, source })?;
        Ok(self.seq)
    }

    /// Receives one datagram into the buffer; its length.
    fn recv(&mut self) -> Result<usize, DiagError> {
        let capacity = self.buf.len();
        let len = self
            .socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|source| DiagError::Io {
                what: "receive",
                source,
            })?;
        if len > capacity {
            return Err(DiagError::Malformed(format!(
                "datagram of {len} bytes truncated to {capacity}"
            )));
        }
        Ok(len)
    }
}

/// Decodes one datagram of a dump answering request `seq`: each socket goes to
/// `each`; `Ok(true)` once the dump is done. Messages of other requests are skipped.
pub fn read_datagram(
    datagram: &[u8],
    seq: u32,
    mut each: impl FnMut(&InetResponse),
) -> Result<bool, DiagError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[offset..])
            .map_err(|e| DiagError::Malformed(e.to_string()))?;
        let len = message.header.length as usize;
        if len == 0 {
            return Err(DiagError::Malformed("zero-length message".into()));
        }
        offset += len.next_multiple_of(4);
        if message.header.sequence_number != seq {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                each(&response)
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(DiagError::Kernel {
                    what: "dump",
                    source: e.to_io(),
                })
            }
            NetlinkPayload::Overrun(_) => return Err(DiagError::Malformed("dump overrun".into())),
            _ => {}
        }
    }
    Ok(false)
}

/// The acknowledgement of request `seq` in one datagram: `None` when it is not there,
/// `Some(Err(errno))` for a refusal.
fn read_ack(datagram: &[u8], seq: u32) -> Result<Option<Result<(), io::Error>>, DiagError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[offset..])
            .map_err(|e| DiagError::Malformed(e.to_string()))?;
        let len = message.header.length as usize;
        if len == 0 {
            return Err(DiagError::Malformed("zero-length message".into()));
        }
        offset += len.next_multiple_of(4);
        if message.header.sequence_number != seq {
            continue;
        }
        if let NetlinkPayload::Error(e) = message.payload {
            return Ok(Some(match e.code {
                None => Ok(()),
                Some(_) => Err(e.to_io()),
            }));
        }
    }
    Ok(None)
}

/// A listener's figures from its dump reply.
pub fn to_listener(response: &InetResponse) -> Listener {
    let id = &response.header.socket_id;
    Listener {
        local: SocketAddr::new(unmap(id.source_address), id.source_port),
        v6only: response
            .nlas
            .iter()
            .any(|nla| matches!(nla, Nla::SkV6Only(true))),
        accept_queue: response.header.recv_queue,
        backlog: response.header.send_queue,
    }
}

/// A dump reply as a [`Connection`] when it is a non-listening socket on
/// `vip`:`ports` (directly or IPv4-mapped).
pub fn to_connection(response: &InetResponse, vip: Ipv4Addr, ports: &[u16]) -> Option<Connection> {
    let header = &response.header;
    let id = &header.socket_id;
    let state = TcpState::from_kernel(header.state);
    if state == TcpState::Listen || !ports.contains(&id.source_port) {
        return None;
    }
    let local = match unmap(id.source_address) {
        IpAddr::V4(ip) if ip == vip => SocketAddrV4::new(ip, id.source_port),
        _ => return None,
    };
    let not_sent = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(info) => not_sent_bytes(info),
        _ => None,
    });
    Some(Connection {
        local,
        remote: SocketAddr::new(unmap(id.destination_address), id.destination_port),
        state,
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        not_sent,
        dual_stack: header.family == AF_INET6,
        inode: header.inode,
        id: id.clone(),
    })
}

/// `tcpi_notsent_bytes` from the raw `struct tcp_info`, if the kernel's is long enough.
pub fn not_sent_bytes(tcp_info: &[u8]) -> Option<u32> {
    let bytes = tcp_info.get(TCPI_NOTSENT_BYTES..TCPI_NOTSENT_BYTES + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Appends unless [`MAX_SOCKETS`] are collected already.
fn push_bounded<T>(found: &mut Vec<T>, item: T) -> Result<(), DiagError> {
    if found.len() >= MAX_SOCKETS {
        return Err(DiagError::TooMany);
    }
    found.push(item);
    Ok(())
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `SO_RCVTIMEO` on the netlink socket.
fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid fd and a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
