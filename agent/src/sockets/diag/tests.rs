//! Decoding tests on replies built with the crate's own encoder, and tests against
//! the real kernel on loopback: a dual-stack `[::]` listener, its IPv4-mapped
//! connections, their queues and their destruction.

use super::*;
use netlink_packet_core::NLMSG_DONE;
use netlink_packet_sock_diag::inet::InetResponseHeader;
use netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, TcpStream};
use std::time::Instant;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn response(family: u8, state: u8, local: IpAddr, port: u16, rq: u32, sq: u32) -> InetResponse {
    let peer = match local {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)),
        IpAddr::V6(_) => IpAddr::V6(Ipv4Addr::new(198, 18, 0, 10).to_ipv6_mapped()),
    };
    InetResponse {
        header: InetResponseHeader {
            family,
            state,
            timer: None,
            socket_id: SocketId {
                source_port: port,
                destination_port: 40000,
                source_address: local,
                destination_address: peer,
                interface_id: 0,
                cookie: [7; 8],
            },
            recv_queue: rq,
            send_queue: sq,
            uid: 0,
            inode: 1,
        },
        nlas: Default::default(),
    }
}

/// One netlink message as the kernel would send it.
fn message(payload: NetlinkPayload<SockDiagMessage>, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, payload);
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

fn inner(r: InetResponse) -> NetlinkPayload<SockDiagMessage> {
    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(Box::new(r)))
}

#[test]
fn a_datagram_yields_its_sockets_until_done_and_skips_other_requests() {
    let v4 = response(AF_INET, 10, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7000, 3, 128);
    let v6 = response(AF_INET6, 1, IpAddr::V6(VIP.to_ipv6_mapped()), 7000, 42, 0);
    let mut datagram = message(inner(v4.clone()), 5);
    datagram.extend(message(inner(v6.clone()), 4)); // an older request's leftover
    datagram.extend(message(inner(v6.clone()), 5));
    let mut seen = Vec::new();
    let done = read_datagram(&datagram, 5, |r| seen.push(r.clone())).expect("decodes");
    assert!(!done);
    assert_eq!(seen, vec![v4, v6]);
    // The kernel's NLMSG_DONE of a dump carries one int.
    let mut done_msg = message(NetlinkPayload::Noop, 5);
    done_msg.extend([0; 4]);
    done_msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
    done_msg[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    assert!(read_datagram(&done_msg, 5, |_| panic!("no socket")).expect("done"));
}

#[test]
fn a_refused_dump_and_garbage_are_errors_not_panics() {
    let mut error = message(NetlinkPayload::Noop, 9);
    // NLMSG_ERROR with -ENOENT and (a stub of) the request header.
    error.truncate(16);
    error.extend((-libc::ENOENT).to_ne_bytes());
    error.extend([0u8; 16]);
    let len = error.len() as u32;
    error[0..4].copy_from_slice(&len.to_ne_bytes());
    error[4..6].copy_from_slice(&2u16.to_ne_bytes());
    match read_datagram(&error, 9, |_| {}) {
        Err(DiagError::Kernel { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT))
        }
        other => panic!("expected a kernel error, got {other:?}"),
    }
    assert!(matches!(
        read_ack(&error, 9),
        Ok(Some(Err(e))) if e.raw_os_error() == Some(libc::ENOENT)
    ));
    assert!(matches!(read_ack(&error, 8), Ok(None)));
    for garbage in [&[1u8, 2, 3][..], &[0xff; 40][..]] {
        assert!(read_datagram(garbage, 1, |_| {}).is_err());
    }
    // A sock_diag reply of an unknown family is refused by the decoder.
    let mut odd = message(inner(response(AF_INET, 1, IpAddr::V4(VIP), 7000, 0, 0)), 3);
    odd[16] = 99;
    assert!(read_datagram(&odd, 3, |_| {}).is_err());
    assert_eq!(SOCK_DIAG_BY_FAMILY, u16::from_ne_bytes([odd[4], odd[5]]));
}

#[test]
fn listeners_serve_the_vip_on_wildcards_dual_stack_or_the_vip_itself() {
    let listener = |ip: IpAddr, v6only| Listener {
        local: SocketAddr::new(ip, 7000),
        v6only,
        accept_queue: 0,
        backlog: 128,
    };
    assert!(listener(Ipv4Addr::UNSPECIFIED.into(), false).serves(VIP));
    assert!(listener(VIP.into(), false).serves(VIP));
    assert!(!listener(Ipv4Addr::LOCALHOST.into(), false).serves(VIP));
    assert!(listener(Ipv6Addr::UNSPECIFIED.into(), false).serves(VIP));
    assert!(!listener(Ipv6Addr::UNSPECIFIED.into(), true).serves(VIP));
    assert!(!listener(Ipv6Addr::LOCALHOST.into(), false).serves(VIP));
    // A mapped VIP is reported as IPv4 by `to_listener`.
    let mut r = response(AF_INET6, 10, IpAddr::V6(VIP.to_ipv6_mapped()), 7000, 2, 64);
    let l = to_listener(&r);
    assert_eq!(l.local, SocketAddr::new(VIP.into(), 7000));
    assert_eq!((l.accept_queue, l.backlog, l.v6only), (2, 64, false));
    assert!(l.serves(VIP));
    r.header.socket_id.source_address = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    r.nlas.push(Nla::SkV6Only(true));
    assert!(!to_listener(&r).serves(VIP));
}

#[test]
fn connections_are_the_vip_ports_non_listeners_mapped_addresses_as_ipv4() {
    let mapped = response(AF_INET6, 1, IpAddr::V6(VIP.to_ipv6_mapped()), 7000, 42, 9);
    let c = to_connection(&mapped, VIP, &[7000]).expect("a dual-stack connection");
    assert_eq!(c.local, SocketAddrV4::new(VIP, 7000));
    assert_eq!(
        c.remote,
        SocketAddr::new(Ipv4Addr::new(198, 18, 0, 10).into(), 40000)
    );
    assert_eq!(
        (c.state, c.recv_queue, c.send_queue),
        (TcpState::Established, 42, 9)
    );
    assert!(c.dual_stack);
    assert_eq!(c.not_sent, None);
    let plain = response(AF_INET, 8, IpAddr::V4(VIP), 7000, 1, 0);
    let c = to_connection(&plain, VIP, &[7000]).expect("an IPv4 connection");
    assert!(!c.dual_stack);
    assert!(c.state.readable());
    // Not ours: another port, another address, a listener.
    assert!(to_connection(&plain, VIP, &[7001]).is_none());
    let other = response(AF_INET, 1, IpAddr::V4(Ipv4Addr::LOCALHOST), 7000, 1, 0);
    assert!(to_connection(&other, VIP, &[7000]).is_none());
    let listener = response(AF_INET, 10, IpAddr::V4(VIP), 7000, 1, 0);
    assert!(to_connection(&listener, VIP, &[7000]).is_none());
}

#[test]
fn not_sent_bytes_come_from_tcp_info_when_the_kernel_has_them() {
    let mut info = vec![0u8; 232];
    info[TCPI_NOTSENT_BYTES..TCPI_NOTSENT_BYTES + 4].copy_from_slice(&1234u32.to_ne_bytes());
    assert_eq!(not_sent_bytes(&info), Some(1234));
    assert_eq!(not_sent_bytes(&info[..104]), None);
    let mut r = response(AF_INET, 1, IpAddr::V4(VIP), 7000, 0, 5000);
    r.nlas.push(Nla::TcpInfo(info));
    let c = to_connection(&r, VIP, &[7000]).expect("ours");
    assert_eq!(c.not_sent, Some(1234));
    assert_eq!(c.unacked_sent(), 5000 - 1234);
    for (n, state) in [
        (3, TcpState::SynRecv),
        (12, TcpState::SynRecv),
        (99, TcpState::Other(99)),
    ] {
        assert_eq!(TcpState::from_kernel(n), state);
    }
}

/// A dual-stack listener on `[::]`, port chosen by the kernel.
fn dual_stack_listener() -> (std::net::TcpListener, u16) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("socket");
    socket.set_only_v6(false).expect("dual-stack");
    socket
        .bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0).into())
        .expect("bind [::]:0");
    socket.listen(16).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// Polls `f` until it returns `Some`, for at most two seconds.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_kernel_reports_a_dual_stack_listener_and_its_ipv4_mapped_connections() {
    let lo = Ipv4Addr::LOCALHOST;
    let (listener, port) = dual_stack_listener();
    let mut diag = Diag::open().expect("sock_diag");
    let found = diag.listeners(lo, &[port]).expect("listeners");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].local,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
    );
    assert!(!found[0].v6only);
    assert_eq!(found[0].backlog, 16);
    assert!(diag.listening(lo, &[port]).expect("listening"));
    assert!(!diag
        .listening(lo, &[port.wrapping_add(1)])
        .expect("other port"));

    // An IPv4 client: the handshake completes in the kernel, waiting in the accept
    // queue of the IPv6 socket.
    let mut client = TcpStream::connect((lo, port)).expect("connect over IPv4");
    eventually("the accept queue", || {
        (diag.accept_backlog(lo, &[port]).expect("backlog") == 1).then_some(())
    });
    let (mut server, from) = listener.accept().expect("accept");
    assert!(matches!(from.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped() == Some(lo)));
    assert_eq!(diag.accept_backlog(lo, &[port]).expect("backlog"), 0);

    // Unread input shows on the server's (mapped) socket.
    client.write_all(&[1; 100]).expect("write");
    let connection = eventually("the unread input", || {
        let all = diag.connections(lo, &[port]).expect("connections");
        all.into_iter().find(|c| c.recv_queue == 100)
    });
    assert!(connection.dual_stack);
    assert_eq!(connection.local, SocketAddrV4::new(lo, port));
    assert_eq!(connection.remote, client.local_addr().expect("client addr"));
    assert_eq!(connection.state, TcpState::Established);
    assert_eq!(diag.unread_input(lo, &[port]).expect("unread"), 100);
    let mut input = [0; 100];
    server.read_exact(&mut input).expect("read");
    assert_eq!(diag.unread_input(lo, &[port]).expect("unread"), 0);

    // Output the client does not read: once its window is full, the server's send
    // queue holds bytes not even sent.
    server.set_nonblocking(true).expect("nonblocking");
    let mut written = 0usize;
    let chunk = vec![2u8; 64 * 1024];
    while written < 64 << 20 {
        match server.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    let connection = eventually("not-sent bytes", || {
        let all = diag.connections(lo, &[port]).expect("connections");
        all.into_iter()
            .find(|c| c.not_sent.is_some_and(|n| n > 0) && c.send_queue > 0)
    });
    assert!(
        connection.not_sent <= Some(connection.send_queue),
        "{connection:?}"
    );
    assert!(connection.send_queue as usize <= written);
}

#[test]
fn ipv6_only_and_other_address_listeners_are_not_the_services() {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("socket");
    socket.set_only_v6(true).expect("v6only");
    socket
        .bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0).into())
        .expect("bind");
    socket.listen(4).expect("listen");
    let port = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let mut diag = Diag::open().expect("sock_diag");
    assert!(!diag
        .listening(Ipv4Addr::LOCALHOST, &[port])
        .expect("listeners"));
    // Bound to 127.0.0.1: it serves that address, not the VIP.
    let v4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = v4.local_addr().expect("addr").port();
    assert!(diag
        .listening(Ipv4Addr::LOCALHOST, &[port])
        .expect("listeners"));
    assert!(!diag.listening(VIP, &[port]).expect("listeners"));
}

#[test]
fn destroying_aborts_the_service_side_of_ipv4_and_dual_stack_connections() {
    if !nonstop_lab::require_root("destroying sockets (CAP_NET_ADMIN)") {
        return;
    }
    let lo = Ipv4Addr::LOCALHOST;
    let (dual, dual_port) = dual_stack_listener();
    let plain = std::net::TcpListener::bind((lo, 0)).expect("bind");
    let plain_port = plain.local_addr().expect("addr").port();
    let _c1 = TcpStream::connect((lo, dual_port)).expect("connect");
    let _c2 = TcpStream::connect((lo, plain_port)).expect("connect");
    let (mut s1, _) = dual.accept().expect("accept");
    let (mut s2, _) = plain.accept().expect("accept");
    let mut diag = Diag::open().expect("sock_diag");
    let ports = [dual_port, plain_port];
    let report = diag.destroy_on(lo, &ports).expect("destroy");
    assert_eq!(report.destroyed, 2, "{report:?}");
    for server in [&mut s1, &mut s2] {
        let mut byte = [0u8; 1];
        let error = server.read(&mut byte).expect_err("aborted");
        assert_eq!(error.raw_os_error(), Some(libc::ECONNABORTED), "{error}");
    }
    // The listeners stay; nothing else is left on the ports (the clients' RSTs
    // answered, they are closed or gone).
    assert!(diag.listening(lo, &[dual_port]).expect("listening"));
    let left: Vec<_> = diag
        .connections(lo, &ports)
        .expect("connections")
        .into_iter()
        .filter(|c| c.state != TcpState::Close)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Gone already: reported, not an error.
    let again = diag.destroy_on(lo, &ports).expect("destroy again");
    assert_eq!(again.destroyed + again.gone, 0, "{again:?}");
}
