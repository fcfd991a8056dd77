//! A small async handle over rtnetlink: read a link, add, check and remove the VIP.
//!
//! One netlink connection per [`Netlink`], driven by a task spawned on the tokio
//! runtime that called [`Netlink::connect`] and aborted when the handle is dropped.
//! The socket belongs to the network namespace of the calling thread at `connect`.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage, State};
use netlink_packet_route::AddressFamily;
use nonstop_shared::config::Vip;
use rtnetlink::{AddressMessageBuilder, Handle};
use tokio::task::JoinHandle;

use super::VipError;

/// What the agent needs to know about the service interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// Kernel interface index.
    pub index: u32,
    /// Ethernet address (the GARP sender MAC).
    pub mac: [u8; 6],
    /// Administratively up, carrier present (`IFF_UP` and `IFF_LOWER_UP`) and an
    /// operational state of `UP` or `UNKNOWN` (what virtual links without state report).
    pub oper_up: bool,
}

/// One rtnetlink connection (route family) with the few operations the VIP needs.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The connection task would otherwise outlive the handle: it only stops once
        // the (dropped) unsolicited-message receiver is noticed.
        self.task.abort();
    }
}

impl Netlink {
    /// Opens the netlink socket and spawns its connection task on the current tokio
    /// runtime (fails with [`VipError::NoRuntime`] outside one, instead of panicking).
    pub fn connect() -> Result<Netlink, VipError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| VipError::NoRuntime)?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(VipError::Connect)?;
        let task = runtime.spawn(connection);
        Ok(Netlink { handle, task })
    }

    /// Reads interface `ifname`: index, MAC and operational state.
    pub async fn link(&self, ifname: &str) -> Result<LinkInfo, VipError> {
        let mut replies = self.handle.link().get().match_name(ifname).execute();
        let message = match replies.try_next().await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(no_such_interface(ifname)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Err(no_such_interface(ifname)),
            Err(source) => {
                return Err(VipError::Link {
                    ifname: ifname.to_owned(),
                    source,
                })
            }
        };
        link_info(ifname, &message)
    }

    /// Whether `vip` (address *and* prefix length) is configured on interface `ifindex`.
    ///
    /// The same address with another prefix length is a different kernel address and
    /// does not count (it is also what [`Netlink::add_vip`] would add beside it).
    pub async fn has_address(&self, ifindex: u32, vip: Vip) -> Result<bool, VipError> {
        let mut request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .set_prefix_length_filter(vip.prefix)
            .set_address_filter(IpAddr::V4(vip.addr));
        request.message_mut().header.family = AddressFamily::Inet;
        let mut replies = request.execute();
        let mut found = false;
        // Drain the whole dump: leaving it half-read is harmless but wasteful.
        loop {
            match replies.try_next().await {
                Ok(Some(message)) => found |= is_local(&message, vip),
                Ok(None) => return Ok(found),
                Err(source) => {
                    return Err(VipError::ListAddresses {
                        ifindex,
                        vip,
                        source,
                    })
                }
            }
        }
    }

    /// Adds `vip` to interface `ifindex`. `Ok(false)` if it was already there
    /// (`EEXIST` is not an error), `Ok(true)` if this call added it.
    pub async fn add_vip(&self, ifindex: u32, vip: Vip) -> Result<bool, VipError> {
        let result = self
            .handle
            .address()
            .add(ifindex, IpAddr::V4(vip.addr), vip.prefix)
            .execute()
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(source) => Err(VipError::AddAddress {
                ifindex,
                vip,
                source,
            }),
        }
    }

    /// Removes `vip` from interface `ifindex`. `Ok(false)` if it was not there
    /// (`EADDRNOTAVAIL` is not an error), `Ok(true)` if this call removed it.
    pub async fn remove_vip(&self, ifindex: u32, vip: Vip) -> Result<bool, VipError> {
        let message = AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(ifindex)
            .address(vip.addr, vip.prefix)
            .build();
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(VipError::RemoveAddress {
                ifindex,
                vip,
                source,
            }),
        }
    }
}

fn no_such_interface(ifname: &str) -> VipError {
    VipError::NoSuchInterface {
        ifname: ifname.to_owned(),
    }
}

/// The positive errno of a netlink NACK, if that is what `error` is.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// Whether an address dump entry is `vip` (IFA_LOCAL is the interface's own address;
/// IFA_ADDRESS only differs from it on point-to-point links).
fn is_local(message: &AddressMessage, vip: Vip) -> bool {
    let wanted = IpAddr::V4(vip.addr);
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    message.header.prefix_len == vip.prefix && local.or(address) == Some(wanted)
}

/// Extracts a [`LinkInfo`] from an `RTM_NEWLINK` reply.
fn link_info(ifname: &str, message: &LinkMessage) -> Result<LinkInfo, VipError> {
    let header = &message.header;
    if header.link_layer_type != LinkLayerType::Ether {
        return Err(VipError::NotEthernet {
            ifname: ifname.to_owned(),
            detail: format!("link type {:?}", header.link_layer_type),
        });
    }
    let mut mac = None;
    let mut oper_state = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => mac = Some(bytes.as_slice()),
            LinkAttribute::OperState(state) => oper_state = Some(*state),
            _ => {}
        }
    }
    let mac: [u8; 6] = match mac.map(<[u8; 6]>::try_from) {
        Some(Ok(mac)) => mac,
        Some(Err(_)) | None => {
            return Err(VipError::NotEthernet {
                ifname: ifname.to_owned(),
                detail: format!("hardware address {mac:02x?} is not 6 bytes"),
            })
        }
    };
    let flags_up = header.flags.contains(LinkFlags::Up | LinkFlags::LowerUp);
    let state_up = matches!(oper_state, None | Some(State::Up) | Some(State::Unknown));
    Ok(LinkInfo {
        index: header.index,
        mac,
        oper_up: flags_up && state_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;
    use std::net::Ipv4Addr;

    fn vip() -> Vip {
        Vip {
            addr: Ipv4Addr::new(198, 18, 250, 100),
            prefix: 24,
        }
    }

    fn link_message(flags: LinkFlags, state: Option<State>, mac: &[u8]) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header = LinkHeader {
            index: 7,
            link_layer_type: LinkLayerType::Ether,
            flags,
            ..LinkHeader::default()
        };
        message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        if let Some(state) = state {
            message.attributes.push(LinkAttribute::OperState(state));
        }
        message
    }

    #[test]
    fn link_info_reads_index_mac_and_state() {
        let mac = [0x02, 0, 0, 0, 0, 0x42];
        let up = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Broadcast;
        let info = link_info("eth0", &link_message(up, Some(State::Up), &mac));
        assert_eq!(
            info.ok(),
            Some(LinkInfo {
                index: 7,
                mac,
                oper_up: true
            })
        );
        let unknown = link_info("d0", &link_message(up, Some(State::Unknown), &mac));
        assert!(unknown.is_ok_and(|i| i.oper_up));
        let no_carrier = link_info(
            "eth0",
            &link_message(LinkFlags::Up, Some(State::LowerLayerDown), &mac),
        );
        assert!(no_carrier.is_ok_and(|i| !i.oper_up));
        let dormant = link_info("eth0", &link_message(up, Some(State::Dormant), &mac));
        assert!(dormant.is_ok_and(|i| !i.oper_up));
        let admin_down = link_info(
            "eth0",
            &link_message(LinkFlags::LowerUp, Some(State::Down), &mac),
        );
        assert!(admin_down.is_ok_and(|i| !i.oper_up));
    }

    #[test]
    fn link_info_rejects_non_ethernet() {
        let mut message = link_message(LinkFlags::Up, None, &[0; 6]);
        message.header.link_layer_type = LinkLayerType::Loopback;
        let err = link_info("lo", &message).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("`lo`")));
        let short = link_info("x0", &link_message(LinkFlags::Up, None, &[1, 2, 3]));
        assert!(matches!(short, Err(VipError::NotEthernet { .. })));
    }

    #[test]
    fn is_local_matches_address_and_prefix() {
        let mut message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(3)
            .address(vip().addr, 24)
            .build();
        assert!(is_local(&message, vip()));
        assert!(!is_local(
            &message,
            Vip {
                prefix: 16,
                ..vip()
            }
        ));
        message.header.prefix_len = 16;
        assert!(!is_local(&message, vip()));
    }

    #[test]
    fn errno_reads_netlink_nacks() {
        let mut nack = rtnetlink::packet_core::ErrorMessage::default();
        nack.code = std::num::NonZeroI32::new(-libc::EEXIST);
        assert_eq!(
            errno(&rtnetlink::Error::NetlinkError(nack)),
            Some(libc::EEXIST)
        );
        assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
    }
}
