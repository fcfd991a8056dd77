//! The hot replica's VIP on the backup (design §9): the backup's kernel must accept
//! the forged segments of its mirrors for VIP:port while it does not hold the VIP. As
//! LVS direct-routing real servers do, the VIP sits on `lo` as a /32 and the service
//! interface gets `arp_ignore = 1` (answer ARP only for addresses on the interface
//! asked) and `arp_announce = 2` (never use the VIP as an ARP source there), so the
//! backup never answers ARP for it. A takeover adds the VIP to the service interface
//! as always (and announces it); the /32 on `lo` stays, harmless on a master.

use super::netlink::Netlink;
use anyhow::Context;
use nonstop_shared::config::Vip;
use std::net::Ipv4Addr;

/// The sysctls a hot replica sets on the service interface: (name, value).
pub const ARP_SYSCTLS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

/// Sets the ARP sysctls on `interface` and adds `vip`/32 to `lo`.
pub async fn prepare(interface: &str, vip: Ipv4Addr) -> anyhow::Result<()> {
    for (name, value) in ARP_SYSCTLS {
        let path = format!("/proc/sys/net/ipv4/conf/{interface}/{name}");
        std::fs::write(&path, value).with_context(|| format!("cannot set {path} = {value}"))?;
    }
    let netlink = Netlink::connect().context("netlink")?;
    let added = netlink
        .add_vip(
            lo_index()?,
            Vip {
                addr: vip,
                prefix: 32,
            },
        )
        .await
        .context("cannot add the VIP to lo")?;
    tracing::info!(%vip, interface, added, "hot replica: VIP on lo, ARP for it ignored");
    Ok(())
}

/// Removes `vip`/32 from `lo` (at shutdown).
pub async fn undo(vip: Ipv4Addr) -> anyhow::Result<()> {
    let netlink = Netlink::connect().context("netlink")?;
    netlink
        .remove_vip(
            lo_index()?,
            Vip {
                addr: vip,
                prefix: 32,
            },
        )
        .await
        .context("cannot remove the VIP from lo")?;
    Ok(())
}

/// The loopback interface's index.
fn lo_index() -> anyhow::Result<u32> {
    // SAFETY: a NUL-terminated constant string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    anyhow::ensure!(index != 0, "no loopback interface `lo`");
    Ok(index)
}
