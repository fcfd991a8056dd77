//! The virtual IP: netlink address management and gratuitous ARP.
