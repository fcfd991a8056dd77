//! Gratuitous ARP: the announcement frame and the raw socket that sends it.
//!
//! The frame is an ARP *request* (not a reply) broadcast on Ethernet, with sender IP =
//! target IP = the VIP and the sender MAC = ours: every host on the segment that has a
//! neighbour entry for the VIP updates it, and none answers.

use std::io;
use std::mem;
use std::net::Ipv4Addr;

use etherparse::{ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, PacketBuilder};
use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};

use super::VipError;

/// Length of a gratuitous ARP frame: 14 bytes of Ethernet II header + 28 of ARP.
/// (The NIC pads it to the 60-byte Ethernet minimum; veth does not.)
pub const GARP_FRAME_LEN: usize = Ethernet2Header::LEN + ArpEthIpv4Packet::LEN;

const BROADCAST: [u8; 6] = [0xff; 6];

/// Builds the gratuitous ARP for `vip` announced from `mac`: an Ethernet II broadcast
/// frame (source `mac`) carrying an ARP request with sender MAC `mac`, sender IP =
/// target IP = `vip` and target MAC zero. Always [`GARP_FRAME_LEN`] bytes.
pub fn garp_frame(mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: vip.octets(),
        target_mac: [0; 6],
        target_ipv4: vip.octets(),
    };
    let builder = PacketBuilder::ethernet2(mac, BROADCAST).arp(arp.to_arp_packet());
    let mut frame = Vec::with_capacity(builder.size());
    match builder.write_to_vec(&mut frame) {
        Ok(()) => frame,
        // Cannot happen: a Vec writer does not fail and the ARP address sizes are
        // 6 and 4 by construction. Should it ever, assemble the same bytes from
        // etherparse's infallible serialisers rather than panic.
        Err(_) => {
            let ethernet = Ethernet2Header {
                source: mac,
                destination: BROADCAST,
                ether_type: EtherType::ARP,
            };
            let mut frame = ethernet.to_bytes().to_vec();
            frame.extend_from_slice(&arp.to_bytes());
            frame
        }
    }
}

/// A raw `AF_PACKET`/`SOCK_RAW` socket bound to one interface, for sending frames
/// such as [`garp_frame`]. It is opened with protocol 0, so it receives nothing and
/// never queues traffic; it is non-blocking (a full queue is reported, not waited on).
#[derive(Debug)]
pub struct GarpSender {
    socket: Socket,
    ifindex: u32,
    destination: SockAddr,
}

impl GarpSender {
    /// Opens the socket and binds it to interface `ifindex` (in the network namespace
    /// of the calling thread). Needs `CAP_NET_RAW`.
    pub fn open(ifindex: u32) -> Result<GarpSender, VipError> {
        let error = |source| VipError::PacketSocket { ifindex, source };
        let socket = Socket::new(Domain::PACKET, Type::RAW, None).map_err(error)?;
        socket.set_nonblocking(true).map_err(error)?;
        // Binding with protocol 0 attaches the socket to the interface without
        // subscribing it to any received frames; it fails at once for a bad index.
        socket
            .bind(&link_address(ifindex, 0, [0; 6]))
            .map_err(error)?;
        let destination = link_address(ifindex, libc::ETH_P_ARP as u16, BROADCAST);
        Ok(GarpSender {
            socket,
            ifindex,
            destination,
        })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one complete Ethernet frame (header included) to the broadcast address
    /// via `sendto`. Retries on `EINTR`; any other error, including `EAGAIN` when the
    /// device queue is full, is returned.
    pub fn send(&self, frame: &[u8]) -> Result<(), VipError> {
        let ifindex = self.ifindex;
        let sent = loop {
            match self.socket.send_to(frame, &self.destination) {
                Ok(sent) => break sent,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(VipError::Send { ifindex, source }),
            }
        };
        if sent == frame.len() {
            Ok(())
        } else {
            Err(VipError::ShortSend {
                ifindex,
                sent,
                len: frame.len(),
            })
        }
    }
}

/// A `sockaddr_ll` for interface `ifindex`, Ethernet protocol `protocol` (host order)
/// and hardware address `addr`.
fn link_address(ifindex: u32, protocol: u16, addr: [u8; 6]) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is a plain C struct for which all zeros is valid, and it
    // fits in `sockaddr_storage` (view_as asserts the size).
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = protocol.to_be();
    // Interface indexes are positive `int`s in the kernel; the cast is lossless for
    // any index the kernel hands out.
    ll.sll_ifindex = ifindex as libc::c_int;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&addr);
    let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised `sockaddr_ll` of `len` bytes with its
    // family set.
    unsafe { SockAddr::new(storage, len) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{ArpHardwareId, LinkSlice, NetSlice, SlicedPacket};

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 100);

    #[test]
    fn frame_is_a_broadcast_arp_announcement() {
        let frame = garp_frame(MAC, VIP);
        assert_eq!(frame.len(), 42);
        assert_eq!(frame.len(), GARP_FRAME_LEN);

        let parsed = SlicedPacket::from_ethernet(&frame).expect("frame parses");
        let Some(LinkSlice::Ethernet2(ethernet)) = &parsed.link else {
            panic!("not Ethernet II: {:?}", parsed.link);
        };
        assert_eq!(ethernet.destination(), [0xff; 6]);
        assert_eq!(ethernet.source(), MAC);
        assert_eq!(ethernet.ether_type(), EtherType::ARP);
        assert!(parsed.vlan().is_none());

        let Some(NetSlice::Arp(arp)) = &parsed.net else {
            panic!("not ARP: {:?}", parsed.net);
        };
        assert_eq!(arp.hw_addr_type(), ArpHardwareId::ETHERNET);
        assert_eq!(arp.proto_addr_type(), EtherType::IPV4);
        assert_eq!(arp.hw_addr_size(), 6);
        assert_eq!(arp.proto_addr_size(), 4);
        assert_eq!(arp.operation(), ArpOperation::REQUEST);
        assert_eq!(arp.sender_hw_addr(), MAC);
        assert_eq!(arp.sender_protocol_addr(), VIP.octets());
        assert_eq!(arp.target_hw_addr(), [0; 6]);
        assert_eq!(arp.target_protocol_addr(), VIP.octets());

        let typed = arp.to_packet().try_eth_ipv4().expect("Ethernet/IPv4 ARP");
        assert_eq!(typed.sender_ipv4_addr(), VIP);
        assert_eq!(typed.target_ipv4_addr(), VIP);
        assert!(parsed.transport.is_none());
    }

    #[test]
    fn frame_bytes_are_exact() {
        let frame = garp_frame(MAC, VIP);
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // source: our MAC
            0x08, 0x06,                         // EtherType ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // htype 1, ptype IPv4, hlen, plen
            0x00, 0x01,                         // op: request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // sender MAC
            198, 18, 250, 100,                  // sender IP = VIP
            0, 0, 0, 0, 0, 0,                   // target MAC: zero
            198, 18, 250, 100,                  // target IP = VIP
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn link_address_is_a_sockaddr_ll() {
        let address = link_address(9, libc::ETH_P_ARP as u16, BROADCAST);
        assert_eq!(address.family(), libc::AF_PACKET as libc::sa_family_t);
        assert_eq!(address.len() as usize, mem::size_of::<libc::sockaddr_ll>());
        // SAFETY: the address was built from a sockaddr_ll of exactly this size.
        let ll = unsafe { &*(address.as_ptr() as *const libc::sockaddr_ll) };
        assert_eq!(ll.sll_ifindex, 9);
        assert_eq!(u16::from_be(ll.sll_protocol), 0x0806);
        assert_eq!(ll.sll_halen, 6);
        assert_eq!(ll.sll_addr[..6], BROADCAST);
    }
}
