//! TCP on the wire, in one place: reading a packet's header and options, the quick
//! peek the interceptor decides on, and writing or rewriting packets. The tracker,
//! the interceptor and the restore core all use these; none parses TCP itself.
//!
//! # Layout
//! - [`segment`]: an IPv4 packet read (and validated, with etherparse) into the TCP
//!   fields the tracker needs.
//! - [`options`]: a small parser over the raw TCP option bytes (values).
//! - [`peek`]: the few header fields the interceptor decides on before the tracker runs.
//! - [`wire`]: writing whole packets, checksums, the layout of a parsed packet and a
//!   walk over option bytes (offsets, for rewriting).
//! - this file: flag bits, option kinds and [`PacketError`].

pub mod options;
pub(crate) mod peek;
pub mod segment;
pub(crate) mod wire;

/// TCP flag bits (byte 13 of the TCP header).
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// TCP option kinds.
pub mod kind {
    /// End of option list.
    pub const END: u8 = 0;
    /// No-operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size.
    pub const MSS: u8 = 2;
    /// Window scale.
    pub const WSCALE: u8 = 3;
    /// SACK permitted.
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK blocks.
    pub const SACK: u8 = 5;
    /// Timestamps.
    pub const TIMESTAMPS: u8 = 8;
}

/// Why a packet was not tracked. The driver accepts such packets unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Not an IPv4 packet.
    #[error("not an IPv4 packet")]
    NotIpv4,
    /// Shorter than its headers or its IPv4 total length say.
    #[error("truncated packet")]
    Truncated,
    /// Not TCP.
    #[error("not a TCP packet")]
    NotTcp,
    /// An IPv4 fragment: the TCP header cannot be read as a whole.
    #[error("IPv4 fragment")]
    Fragmented,
    /// Neither to nor from VIP:service port.
    #[error("not to or from the service")]
    NotOurs,
    /// An IPv4 or TCP header field is invalid.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The TCP options are malformed.
    #[error("bad TCP options: {0}")]
    BadOption(#[from] options::OptionError),
    /// A new session would exceed `TrackerLimits::max_sessions`.
    #[error("too many sessions")]
    TooManySessions,
}
