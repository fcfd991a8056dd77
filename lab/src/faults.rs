//! Failure injection with real mechanisms: switch ports set down, nftables drops on
//! the sync bridge, SIGKILL of every process on a host.
//!
//! Sync-link faults live in one nftables table of the switch namespace,
//! `table bridge nonstop_lab_fault`, whose `forward` chain sees every frame the
//! `br-sync` bridge forwards between `m-sync` and `b-sync`. The bridge family is the
//! right layer: bridged frames never reach the `inet` family's forward hook (unless
//! `br_netfilter` is loaded), and it also drops ARP, so a cut is a real cut. The
//! table is replaced atomically (`nft -f -`, one transaction) and deleted to heal.

use crate::lab::Lab;
use crate::naming::{self, Node};
use crate::netns::{self, ip_in};
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// The nftables family of the fault table.
pub const FAULT_FAMILY: &str = "bridge";
/// The nftables table holding sync-link faults, in the switch namespace.
pub const FAULT_TABLE: &str = "nonstop_lab_fault";

/// The nftables script that replaces the fault table with one dropping `percent`%
/// (1..=100) of the frames entering the sync bridge from either node. It starts by
/// creating then deleting the table, so it works whether or not the table exists,
/// all in one transaction.
pub fn sync_fault_script(percent: u8) -> String {
    let [_, m_sync] = naming::node_ports(Node::Master);
    let [_, b_sync] = naming::node_ports(Node::Backup);
    let verdict = if percent >= 100 {
        "drop".to_owned()
    } else {
        format!("numgen random mod 100 < {percent} drop")
    };
    format!(
        "table {FAULT_FAMILY} {FAULT_TABLE}\n\
         delete table {FAULT_FAMILY} {FAULT_TABLE}\n\
         table {FAULT_FAMILY} {FAULT_TABLE} {{\n\
         \tchain sync_fault {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname {{ \"{m_sync}\", \"{b_sync}\" }} {verdict}\n\
         \t}}\n\
         }}\n"
    )
}

/// The nftables script that deletes the fault table, whether or not it exists.
pub fn heal_script() -> String {
    format!("table {FAULT_FAMILY} {FAULT_TABLE}\ndelete table {FAULT_FAMILY} {FAULT_TABLE}\n")
}

/// The nftables table holding service-LAN (peer link) faults, in the switch namespace:
/// a table of its own, so a sync-link fault and a peer-link fault can be set and
/// healed independently.
pub const PEER_FAULT_TABLE: &str = "nonstop_lab_peer_fault";

/// The nftables script that replaces the peer fault table with one dropping `percent`%
/// (1..=100) of the frames on each peer's service port, in each direction: frames the
/// peer sends (entering the bridge at its port) and frames sent to it (leaving by its
/// port), whichever node they come from. One transaction, like [`sync_fault_script`].
pub fn peer_fault_script(percent: u8, peers: usize) -> String {
    let ports = (1..=peers)
        .map(|k| format!("\"{}\"", naming::peer_port(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let verdict = if percent >= 100 {
        "drop".to_owned()
    } else {
        format!("numgen random mod 100 < {percent} drop")
    };
    format!(
        "table {FAULT_FAMILY} {PEER_FAULT_TABLE}\n\
         delete table {FAULT_FAMILY} {PEER_FAULT_TABLE}\n\
         table {FAULT_FAMILY} {PEER_FAULT_TABLE} {{\n\
         \tchain peer_fault {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname {{ {ports} }} {verdict}\n\
         \t\toifname {{ {ports} }} {verdict}\n\
         \t}}\n\
         }}\n"
    )
}

impl Lab {
    /// Sets one switch-side port (`m-svc`, `b-sync`, `p2-svc`, …) down or up.
    pub fn set_port(&self, port: &str, up: bool) -> Result<()> {
        let sw = self.namespace("switch");
        ip_in(&sw, &["link", "set", port, if up { "up" } else { "down" }]).with_context(|| {
            format!("cannot set port {port} {}", if up { "up" } else { "down" })
        })?;
        Ok(())
    }

    /// Sets both switch-side ports of a node (service LAN and sync link) down or up:
    /// the node drops off both networks, as if its cables were pulled.
    pub fn set_host_links(&self, node: Node, up: bool) -> Result<()> {
        for port in naming::node_ports(node) {
            self.set_port(&port, up)?;
        }
        Ok(())
    }

    /// Sets peer `k`'s (1-based) switch port down or up.
    pub fn set_peer_link(&self, k: usize, up: bool) -> Result<()> {
        if k == 0 || k > self.peers {
            bail!("lab `{}` has no peer {k}", self.name);
        }
        self.set_port(&naming::peer_port(k), up)
    }

    /// Cuts the sync link: drops every frame on `br-sync` (heartbeats, replication,
    /// ARP) with an nftables bridge table in the switch namespace. The service LAN is
    /// untouched. Replaces any loss set by [`Lab::sync_loss`].
    pub fn cut_sync(&self) -> Result<()> {
        self.sync_loss(100)
    }

    /// Drops `percent`% of the frames on the sync link at random (`numgen random mod
    /// 100 < N drop`); 100 is a cut, 0 heals.
    pub fn sync_loss(&self, percent: u8) -> Result<()> {
        if percent == 0 {
            return self.heal_sync();
        }
        if percent > 100 {
            bail!("loss must be 0..=100 %, got {percent}");
        }
        let sw = self.namespace("switch");
        netns::nft_in(&sw, &sync_fault_script(percent)).with_context(|| {
            format!(
                "cannot inject {percent}% loss on the sync link of lab `{}`",
                self.name
            )
        })?;
        Ok(())
    }

    /// Removes any sync-link fault (deletes the fault table; fine when absent).
    pub fn heal_sync(&self) -> Result<()> {
        let sw = self.namespace("switch");
        netns::nft_in(&sw, &heal_script())
            .with_context(|| format!("cannot heal the sync link of lab `{}`", self.name))?;
        Ok(())
    }

    /// Drops `percent`% of the frames between the peers and the service LAN, at
    /// random and independently in each direction (5 % means 5 % of what the peers send
    /// and 5 % of what they receive); 0 heals. The sync link is untouched.
    pub fn peer_loss(&self, percent: u8) -> Result<()> {
        if percent > 100 {
            bail!("loss must be 0..=100 %, got {percent}");
        }
        let sw = self.namespace("switch");
        let script = if percent == 0 {
            format!(
                "table {FAULT_FAMILY} {PEER_FAULT_TABLE}\ndelete table {FAULT_FAMILY} {PEER_FAULT_TABLE}\n"
            )
        } else {
            peer_fault_script(percent, self.peers)
        };
        netns::nft_in(&sw, &script).with_context(|| {
            format!(
                "cannot set {percent}% loss on the peer links of lab `{}`",
                self.name
            )
        })?;
        Ok(())
    }

    /// SIGKILLs every process on `host` (agent, service, anything started with
    /// [`Lab::spawn`]) and waits until they are gone: a host crash, minus the links.
    pub fn kill_all(&self, host: &str) -> Result<()> {
        let parsed = self.host(host)?;
        netns::kill_all_in(&self.namespace(&parsed.to_string()), Duration::from_secs(5))
    }

    /// Faults in place right now, in words (`sync link: 100% drop`, `port m-svc down`).
    pub fn active_faults(&self) -> Result<Vec<String>> {
        let sw = self.namespace("switch");
        let mut faults = Vec::new();
        if !netns::netns_exists(&sw) {
            return Ok(faults);
        }
        for (table, what) in [
            (FAULT_TABLE, "sync link"),
            (PEER_FAULT_TABLE, "peer links (each way)"),
        ] {
            if let Some(loss) = table_loss(&sw, table) {
                faults.push(format!(
                    "{what}: {loss}% drop (nft table {FAULT_FAMILY} {table} in {sw})"
                ));
            }
        }
        for link in netns::ip_json(&sw, &["link", "show"])? {
            let Some(name) = link.get("ifname").and_then(|n| n.as_str()) else {
                continue;
            };
            if name.starts_with("br-") {
                continue;
            }
            let up = link
                .get("flags")
                .and_then(|f| f.as_array())
                .is_some_and(|flags| flags.iter().any(|f| f.as_str() == Some("UP")));
            if !up && name != "lo" {
                faults.push(format!("port {name} down"));
            }
        }
        Ok(faults)
    }
}

/// The drop percentage of fault table `table` in namespace `sw` (100 for a cut), or
/// `None` when the table does not exist.
fn table_loss(sw: &str, table: &str) -> Option<String> {
    let text = netns::run(
        "ip",
        &[
            "netns",
            "exec",
            sw,
            "nft",
            "list",
            "table",
            FAULT_FAMILY,
            table,
        ],
        None,
    )
    .ok()?;
    Some(
        text.split_once("numgen random mod 100 < ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("100")
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_script_drops_both_sync_ports_atomically() {
        let script = sync_fault_script(100);
        assert!(script.starts_with(
            "table bridge nonstop_lab_fault\ndelete table bridge nonstop_lab_fault\n"
        ));
        assert!(script.contains("type filter hook forward priority 0; policy accept;"));
        assert!(script.contains("iifname { \"m-sync\", \"b-sync\" } drop\n"));
        assert!(!script.contains("numgen"));
    }

    #[test]
    fn loss_script_uses_numgen() {
        assert!(sync_fault_script(20)
            .contains("iifname { \"m-sync\", \"b-sync\" } numgen random mod 100 < 20 drop"));
    }

    #[test]
    fn peer_loss_script_drops_each_direction_of_every_peer_port() {
        let script = peer_fault_script(5, 2);
        assert!(script.starts_with(
            "table bridge nonstop_lab_peer_fault\ndelete table bridge nonstop_lab_peer_fault\n"
        ));
        assert!(
            script.contains("iifname { \"p1-svc\", \"p2-svc\" } numgen random mod 100 < 5 drop\n")
        );
        assert!(
            script.contains("oifname { \"p1-svc\", \"p2-svc\" } numgen random mod 100 < 5 drop\n")
        );
    }

    #[test]
    fn heal_script_works_with_or_without_the_table() {
        assert_eq!(
            heal_script(),
            "table bridge nonstop_lab_fault\ndelete table bridge nonstop_lab_fault\n"
        );
    }
}
