//! The few header fields the interceptor decides on before the tracker runs.

use nonstop_shared::session::SessionKey;
use std::net::Ipv4Addr;

/// The few header fields the interceptor decides on before the tracker runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peek {
    /// The session the packet belongs to.
    pub key: SessionKey,
    /// From the VIP to a peer.
    pub outbound: bool,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub ack: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// The sequence number.
    pub seq: u32,
    /// The acknowledgment number.
    pub ack_no: u32,
    /// TCP payload bytes.
    pub payload_len: usize,
}

impl Peek {
    /// Reads an IPv4/TCP packet's tuple and flags; `None` if it is not one.
    /// Outbound packets come from the VIP (the queue rules match nothing else).
    pub fn of(packet: &[u8], vip: Ipv4Addr) -> Option<Peek> {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != 6 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
        let tcp = packet.get(ihl..total.min(packet.len()))?;
        if tcp.len() < 20 {
            return None;
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let data_offset = usize::from(tcp[12] >> 4) * 4;
        let flags = tcp[13];
        let outbound = src == vip;
        let key = if outbound {
            SessionKey {
                peer_ip: dst,
                peer_port: dport,
                local_ip: src,
                local_port: sport,
            }
        } else {
            SessionKey {
                peer_ip: src,
                peer_port: sport,
                local_ip: dst,
                local_port: dport,
            }
        };
        Some(Peek {
            key,
            outbound,
            syn: flags & super::flags::SYN != 0,
            ack: flags & super::flags::ACK != 0,
            fin: flags & super::flags::FIN != 0,
            rst: flags & super::flags::RST != 0,
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ack_no: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            payload_len: tcp.len().saturating_sub(data_offset),
        })
    }
}
