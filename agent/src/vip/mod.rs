//! The virtual IP: netlink address management and gratuitous ARP.
//!
//! - [`netlink`]: one rtnetlink connection ([`Netlink`]) to read the service link
//!   ([`LinkInfo`]: index, MAC, operational state) and to add, check and remove the VIP.
//!   Adding a present VIP or removing an absent one is not an error (`Ok(false)`), so
//!   promotion and demotion are idempotent.
//! - [`garp`]: the gratuitous ARP frame ([`garp_frame`], pure) and the raw
//!   `AF_PACKET` socket that sends it ([`GarpSender`]).
//!
//! Both the netlink socket and the packet socket belong to the network namespace of
//! the thread that opened them; they may be used from any thread afterwards.

pub mod garp;
pub mod lo;
pub mod netlink;

pub use garp::{garp_frame, GarpSender, GARP_FRAME_LEN};
pub use netlink::{LinkInfo, Netlink};

use std::io;

use nonstop_shared::config::Vip;

/// Everything that can go wrong while managing the VIP or announcing it.
///
/// Each message names the interface (by name, or by index where only the index is
/// known) and the address involved.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// `Netlink::connect` was called outside a tokio runtime.
    #[error("netlink needs a tokio runtime to run its connection task")]
    NoRuntime,
    /// The rtnetlink socket could not be opened.
    #[error("cannot open a netlink route socket: {0}")]
    Connect(#[source] io::Error),
    /// No interface has this name (in the current network namespace).
    #[error("interface `{ifname}` does not exist")]
    NoSuchInterface {
        /// The interface name asked for.
        ifname: String,
    },
    /// The interface exists but has no Ethernet address (loopback, tun, …).
    #[error("interface `{ifname}` is not an Ethernet interface ({detail})")]
    NotEthernet {
        /// The interface name.
        ifname: String,
        /// What was found instead.
        detail: String,
    },
    /// Reading the interface over netlink failed.
    #[error("cannot read interface `{ifname}` over netlink: {source}")]
    Link {
        /// The interface name.
        ifname: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing the addresses of an interface failed.
    #[error("cannot list the addresses of interface #{ifindex} (looking for {vip}): {source}")]
    ListAddresses {
        /// The interface index.
        ifindex: u32,
        /// The VIP looked for.
        vip: Vip,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Adding the VIP failed (for a reason other than "already present").
    #[error("cannot add {vip} to interface #{ifindex}: {source}")]
    AddAddress {
        /// The interface index.
        ifindex: u32,
        /// The VIP.
        vip: Vip,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Removing the VIP failed (for a reason other than "not present").
    #[error("cannot remove {vip} from interface #{ifindex}: {source}")]
    RemoveAddress {
        /// The interface index.
        ifindex: u32,
        /// The VIP.
        vip: Vip,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The raw packet socket could not be opened or bound.
    #[error("cannot open a raw packet socket on interface #{ifindex}: {source}")]
    PacketSocket {
        /// The interface index.
        ifindex: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending a frame failed.
    #[error("cannot send a gratuitous ARP on interface #{ifindex}: {source}")]
    Send {
        /// The interface index.
        ifindex: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel accepted only part of the frame.
    #[error("short send of a gratuitous ARP on interface #{ifindex}: {sent} of {len} bytes")]
    ShortSend {
        /// The interface index.
        ifindex: u32,
        /// Bytes sent.
        sent: usize,
        /// Bytes in the frame.
        len: usize,
    },
}
