//! A blind in-session attacker (RFC 5961's model): it knows each session's 4-tuple but
//! not its sequence numbers, and sprays segments with guessed numbers from inside the
//! peer's network — raw IPv4 packets sent from the peer namespace.

use anyhow::Context;
use etherparse::PacketBuilder;
use nonstop_lab::Lab;
use std::net::{Ipv4Addr, SocketAddrV4};

/// What one forged segment carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// RST, random sequence number.
    Rst,
    /// FIN+ACK, random numbers.
    Fin,
    /// SYN, random sequence number.
    Syn,
    /// 32 bytes of data + ACK, random numbers.
    Data,
    /// A pure ACK, random numbers.
    Ack,
}

impl Forgery {
    /// Every kind, in the order a spray cycles through them.
    pub const ALL: [Forgery; 5] = [
        Forgery::Rst,
        Forgery::Fin,
        Forgery::Syn,
        Forgery::Data,
        Forgery::Ack,
    ];
}

/// A small deterministic generator (xorshift64*), so a failing spray can be replayed.
#[derive(Debug, Clone)]
pub struct Guesses(u64);

impl Guesses {
    /// A generator seeded with `seed` (0 is replaced by a constant).
    pub fn new(seed: u64) -> Guesses {
        Guesses(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next guessed 32-bit number.
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// One forged segment from `peer` to `vip`, as IPv4 bytes.
pub fn forge(peer: SocketAddrV4, vip: SocketAddrV4, kind: Forgery, g: &mut Guesses) -> Vec<u8> {
    let (seq, ack) = (g.next_u32(), g.next_u32());
    let b = PacketBuilder::ipv4(peer.ip().octets(), vip.ip().octets(), 64).tcp(
        peer.port(),
        vip.port(),
        seq,
        64_240,
    );
    let (b, payload): (_, &[u8]) = match kind {
        Forgery::Rst => (b.rst(), &[]),
        Forgery::Fin => (b.fin().ack(ack), &[]),
        Forgery::Syn => (b.syn(), &[]),
        Forgery::Data => (b.psh().ack(ack), b"forged bytes the service must never see"),
        Forgery::Ack => (b.ack(ack), &[]),
    };
    let mut packet = Vec::with_capacity(b.size(payload.len()));
    // Writing into a Vec cannot fail.
    let _ = b.write(&mut packet, payload);
    packet
}

/// Sends `per_session` forged segments (cycling through every [`Forgery`]) to each of
/// `peer_ports` on the VIP's port 7000, from the lab's peer namespace. Returns how
/// many were sent.
pub fn spray(
    lab: &Lab,
    peer_ports: &[u16],
    per_session: usize,
    seed: u64,
) -> anyhow::Result<usize> {
    let peer_ip: Ipv4Addr = lab.plan().peer_ip(0);
    let vip = SocketAddrV4::new(lab.vip(), 7000);
    let mut g = Guesses::new(seed);
    let mut packets = Vec::with_capacity(peer_ports.len() * per_session);
    for i in 0..per_session {
        for &port in peer_ports {
            let kind = Forgery::ALL[i % Forgery::ALL.len()];
            packets.push(forge(SocketAddrV4::new(peer_ip, port), vip, kind, &mut g));
        }
    }
    let count = packets.len();
    let ns = lab.namespace("peer");
    nonstop_lab::run_in_netns(&ns, move || {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )?;
        for (i, packet) in packets.iter().enumerate() {
            let to = socket2::SockAddr::from(SocketAddrV4::new(vip.ip().to_owned(), 0));
            socket.send_to(packet, &to)?;
            if i % 256 == 255 {
                // Do not overrun the queues: an attacker gains nothing from drops.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        Ok(())
    })
    .context("blind spray from the peer namespace")?;
    Ok(count)
}
