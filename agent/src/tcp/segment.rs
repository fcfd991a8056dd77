//! One IPv4 packet read into the few TCP fields the tracker needs.
//!
//! Headers are validated with etherparse (version, header lengths, total length);
//! the TCP options are read later by [`super::options`], once the packet is known to
//! belong to the service (a stranger's odd options are not our error). Checksums are
//! not verified: outbound packets seen at `OUTPUT` carry partial checksums
//! (offload), and the kernel drops corrupt inbound packets itself.

use super::options::{self, OptionError, TcpOptions};
use super::PacketError;
use etherparse::err::{ipv4, tcp};
use etherparse::{IpNumber, Ipv4HeaderSlice, TcpSlice};
use std::net::Ipv4Addr;

/// Length of the TCP header without options.
const TCP_FIXED_LEN: usize = 20;

/// The TCP fields of one packet; payload and options borrow the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    /// IPv4 source address.
    pub src: Ipv4Addr,
    /// IPv4 destination address.
    pub dst: Ipv4Addr,
    /// TCP source port.
    pub src_port: u16,
    /// TCP destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number, if the ACK flag is set.
    pub ack: Option<u32>,
    /// SYN flag.
    pub syn: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// Raw (unscaled) window field.
    pub window: u16,
    /// The option bytes (after the fixed 20-byte header).
    pub raw_options: &'a [u8],
    /// The TCP payload (up to the IPv4 total length; link padding excluded).
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// Reads an IPv4 packet starting at the IP header.
    pub fn parse(packet: &'a [u8]) -> Result<Segment<'a>, PacketError> {
        let ip = Ipv4HeaderSlice::from_slice(packet).map_err(|e| match e {
            ipv4::HeaderSliceError::Len(_) if packet.first().is_some_and(|b| b >> 4 != 4) => {
                PacketError::NotIpv4
            }
            ipv4::HeaderSliceError::Len(_) => PacketError::Truncated,
            ipv4::HeaderSliceError::Content(ipv4::HeaderError::UnexpectedVersion { .. }) => {
                PacketError::NotIpv4
            }
            ipv4::HeaderSliceError::Content(e) => PacketError::BadHeader(e.to_string()),
        })?;
        let header_len = ip.slice().len();
        let total_len = usize::from(ip.total_len());
        if total_len < header_len {
            return Err(PacketError::BadHeader(format!(
                "IPv4 total length {total_len} below header length {header_len}"
            )));
        }
        let ip_payload = packet
            .get(header_len..total_len)
            .ok_or(PacketError::Truncated)?;
        if ip.protocol() != IpNumber::TCP {
            return Err(PacketError::NotTcp);
        }
        if ip.more_fragments() || ip.fragments_offset().value() != 0 {
            return Err(PacketError::Fragmented);
        }
        let tcp = TcpSlice::from_slice(ip_payload).map_err(|e| match e {
            tcp::HeaderSliceError::Len(_) => PacketError::Truncated,
            tcp::HeaderSliceError::Content(e) => PacketError::BadHeader(e.to_string()),
        })?;
        Ok(Segment {
            src: ip.source_addr(),
            dst: ip.destination_addr(),
            src_port: tcp.source_port(),
            dst_port: tcp.destination_port(),
            seq: tcp.sequence_number(),
            ack: tcp.ack().then(|| tcp.acknowledgment_number()),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            window: tcp.window_size(),
            raw_options: tcp.header_slice().get(TCP_FIXED_LEN..).unwrap_or_default(),
            payload: tcp.payload(),
        })
    }

    /// The options, read by the tracker's own parser.
    pub fn options(&self) -> Result<TcpOptions, OptionError> {
        options::parse(self.raw_options)
    }

    /// Payload length as a sequence-space distance (an IPv4 packet is below 64 KiB).
    pub fn len(&self) -> u32 {
        // Cannot truncate: the payload lies inside a packet of at most 65535 bytes.
        self.payload.len() as u32
    }

    /// Whether the segment carries no payload.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// Sequence number of the first payload byte (after a SYN, if any).
    pub fn payload_seq(&self) -> u32 {
        self.seq.wrapping_add(u32::from(self.syn))
    }

    /// Sequence number just past the payload (where a FIN, if any, sits).
    pub fn payload_end(&self) -> u32 {
        self.payload_seq().wrapping_add(self.len())
    }

    /// Sequence number just past everything the segment occupies (SYN and FIN count).
    pub fn end(&self) -> u32 {
        self.payload_end().wrapping_add(u32::from(self.fin))
    }
}
