//! What a lab looks like right now ([`LabStatus`], also saved as `status.json`), and
//! queries of a host's interfaces: MAC, addresses, neighbour table.

use crate::lab::Lab;
use crate::naming::{Host, Node, SERVICE_IF};
use crate::netns;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// The status file in the lab directory, rewritten by `up` and agent changes.
pub const STATUS_FILE: &str = "status.json";

/// A lab's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabStatus {
    /// Lab name.
    pub name: String,
    /// Lab index `L`.
    pub index: u8,
    /// Lab directory.
    pub dir: PathBuf,
    /// The lab's namespaces that exist right now.
    pub namespaces: Vec<String>,
    /// Service LAN, `198.18.L.0/24`.
    pub service_net: String,
    /// Sync link, `198.19.L.0/24`.
    pub sync_net: String,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// Master and backup.
    pub nodes: Vec<NodeInfo>,
    /// The peers, in order.
    pub peers: Vec<PeerInfo>,
    /// Injected faults in place (see [`Lab::active_faults`]).
    #[serde(default)]
    pub faults: Vec<String>,
}

/// One of the two agent hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Which node.
    pub node: Node,
    /// Its namespace.
    pub namespace: String,
    /// Its own service-LAN address.
    pub service_ip: Ipv4Addr,
    /// Its sync-link address.
    pub sync_ip: Ipv4Addr,
    /// Its agent's config file.
    pub config_path: PathBuf,
    /// Its agent's log.
    pub log_path: PathBuf,
    /// Its agent's pid, if alive.
    pub agent_pid: Option<u32>,
    /// Its agent's control address, inside its namespace.
    pub control_addr: SocketAddr,
    /// Its agent's Prometheus address inside its namespace (None if metrics are off).
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Whether the VIP is on its `eth0` right now.
    pub holds_vip: bool,
}

/// A peer (client host) on the service LAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Host name: `peer`, `peer2`, …
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl LabStatus {
    /// A human-readable summary (what `nonstop-lab status` prints).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "lab {} (index {}), dir {}",
            self.name,
            self.index,
            self.dir.display()
        );
        let _ = writeln!(
            out,
            "  service LAN {}  sync link {}  VIP {}",
            self.service_net, self.sync_net, self.vip
        );
        for n in &self.nodes {
            let agent = match n.agent_pid {
                Some(pid) => format!("agent pid {pid}"),
                None => "agent not running".to_owned(),
            };
            let vip = if n.holds_vip { "  holds VIP" } else { "" };
            let _ = writeln!(
                out,
                "  {:<7} {:<15} sync {:<15} {agent}{vip}",
                n.node.to_string(),
                n.service_ip.to_string(),
                n.sync_ip.to_string()
            );
        }
        for p in &self.peers {
            let _ = writeln!(out, "  {:<7} {}", p.name, p.ip);
        }
        let _ = writeln!(out, "  namespaces: {}", self.namespaces.join(" "));
        if self.faults.is_empty() {
            let _ = writeln!(out, "  faults: none");
        } else {
            let _ = writeln!(out, "  faults: {}", self.faults.join("; "));
        }
        out
    }
}

/// The flags of one link from `ip -j link` / `ip -j addr` output.
fn has_flag(link: &serde_json::Value, flag: &str) -> bool {
    link.get("flags")
        .and_then(|f| f.as_array())
        .is_some_and(|flags| flags.iter().any(|f| f.as_str() == Some(flag)))
}

impl Lab {
    /// The lab's live state.
    pub fn status(&self) -> Result<LabStatus> {
        let namespaces = crate::topology::lab_namespaces(&self.name)?;
        let nodes = Node::ALL
            .iter()
            .map(|&node| NodeInfo {
                node,
                namespace: self.namespace(node.as_str()),
                service_ip: self.service_ip(node),
                sync_ip: self.sync_ip(node),
                config_path: self.config_path(node),
                log_path: self.log_path(node),
                agent_pid: self.agent_pid(node),
                control_addr: self.control_addr(node),
                metrics_addr: self.metrics_addr(node),
                holds_vip: self.holds_vip(node),
            })
            .collect();
        let peers = (1..=self.peers)
            .map(|k| {
                let name = Host::Peer(k).to_string();
                PeerInfo {
                    namespace: self.namespace(&name),
                    name,
                    ip: self.peer_ip(k),
                }
            })
            .collect();
        Ok(LabStatus {
            name: self.name.clone(),
            index: self.index(),
            dir: self.dir.clone(),
            namespaces,
            service_net: self.plan.service_net(),
            sync_net: self.plan.sync_net(),
            vip: self.vip(),
            nodes,
            peers,
            faults: self.active_faults()?,
        })
    }

    /// Writes the live state to `<dir>/status.json` (atomically) and returns it.
    pub fn write_status(&self) -> Result<LabStatus> {
        let status = self.status()?;
        let path = self.dir.join(STATUS_FILE);
        let tmp = self
            .dir
            .join(format!(".{STATUS_FILE}.{}", std::process::id()));
        let text = serde_json::to_string_pretty(&status).context("cannot encode the lab status")?;
        std::fs::write(&tmp, text + "\n")
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(status)
    }

    /// Whether the VIP is on a node's `eth0` right now (false if that cannot be read).
    pub fn holds_vip(&self, node: Node) -> bool {
        let vip = self.vip().to_string();
        self.addresses(node.as_str(), SERVICE_IF)
            .is_ok_and(|addrs| {
                addrs
                    .iter()
                    .any(|a| a.split('/').next() == Some(vip.as_str()))
            })
    }

    /// The `ip -j link` record of one interface on a host.
    fn link_json(&self, host: &str, ifname: &str) -> Result<serde_json::Value> {
        let ns = self.namespace(&self.host(host)?.to_string());
        let links = netns::ip_json(&ns, &["link", "show", "dev", ifname])
            .with_context(|| format!("no interface {ifname} on {host}"))?;
        links
            .into_iter()
            .next()
            .with_context(|| format!("no interface {ifname} on {host}"))
    }

    /// The MAC address of `ifname` on `host` (`aa:bb:…`, lowercase).
    pub fn mac_of(&self, host: &str, ifname: &str) -> Result<String> {
        let link = self.link_json(host, ifname)?;
        match link.get("address").and_then(|a| a.as_str()) {
            Some(mac) => Ok(mac.to_ascii_lowercase()),
            None => bail!("interface {ifname} on {host} has no MAC address"),
        }
    }

    /// Whether `ifname` on `host` is administratively up.
    pub fn link_is_up(&self, host: &str, ifname: &str) -> Result<bool> {
        Ok(has_flag(&self.link_json(host, ifname)?, "UP"))
    }

    /// The MAC that `host`'s neighbour (ARP) table holds for `ip`, if it has a usable
    /// entry (not `FAILED`/`INCOMPLETE`).
    pub fn neighbour_mac(&self, host: &str, ip: Ipv4Addr) -> Result<Option<String>> {
        let ns = self.namespace(&self.host(host)?.to_string());
        let target = ip.to_string();
        let entries = netns::ip_json(&ns, &["neigh", "show", "to", &target])?;
        for entry in entries {
            if entry.get("dst").and_then(|d| d.as_str()) != Some(target.as_str()) {
                continue;
            }
            let unusable = entry
                .get("state")
                .and_then(|s| s.as_array())
                .is_some_and(|states| {
                    states
                        .iter()
                        .any(|s| matches!(s.as_str(), Some("FAILED" | "INCOMPLETE")))
                });
            if let (false, Some(mac)) = (unusable, entry.get("lladdr").and_then(|m| m.as_str())) {
                return Ok(Some(mac.to_ascii_lowercase()));
            }
        }
        Ok(None)
    }

    /// The IPv4 addresses on `ifname` of `host`, as `198.18.L.100/24` strings.
    pub fn addresses(&self, host: &str, ifname: &str) -> Result<Vec<String>> {
        let ns = self.namespace(&self.host(host)?.to_string());
        let links = netns::ip_json(&ns, &["-4", "addr", "show", "dev", ifname])
            .with_context(|| format!("no interface {ifname} on {host}"))?;
        let mut out = Vec::new();
        for link in &links {
            let Some(infos) = link.get("addr_info").and_then(|a| a.as_array()) else {
                continue;
            };
            for info in infos {
                if info.get("family").and_then(|f| f.as_str()) != Some("inet") {
                    continue;
                }
                if let (Some(local), Some(prefix)) = (
                    info.get("local").and_then(|l| l.as_str()),
                    info.get("prefixlen").and_then(|p| p.as_u64()),
                ) {
                    out.push(format!("{local}/{prefix}"));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabStatus {
        LabStatus {
            name: "demo".to_owned(),
            index: 9,
            dir: PathBuf::from("/run/nonstop-lab/demo"),
            namespaces: vec!["nonstop-demo-master".to_owned()],
            service_net: "198.18.9.0/24".to_owned(),
            sync_net: "198.19.9.0/24".to_owned(),
            vip: Ipv4Addr::new(198, 18, 9, 100),
            nodes: vec![NodeInfo {
                node: Node::Master,
                namespace: "nonstop-demo-master".to_owned(),
                service_ip: Ipv4Addr::new(198, 18, 9, 1),
                sync_ip: Ipv4Addr::new(198, 19, 9, 1),
                config_path: PathBuf::from("/run/nonstop-lab/demo/master.toml"),
                log_path: PathBuf::from("/run/nonstop-lab/demo/master.log"),
                agent_pid: Some(42),
                control_addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
                metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9477))),
                holds_vip: true,
            }],
            peers: vec![PeerInfo {
                name: "peer".to_owned(),
                namespace: "nonstop-demo-peer".to_owned(),
                ip: Ipv4Addr::new(198, 18, 9, 10),
            }],
            faults: vec![],
        }
    }

    #[test]
    fn status_round_trips_through_json_with_lowercase_nodes() {
        let status = sample();
        let json = serde_json::to_string(&status).expect("encode");
        assert!(json.contains("\"node\":\"master\""), "{json}");
        assert!(
            json.contains("\"control_addr\":\"127.0.0.1:7700\""),
            "{json}"
        );
        assert!(
            json.contains("\"metrics_addr\":\"127.0.0.1:9477\""),
            "{json}"
        );
        let back: LabStatus = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, status);
    }

    #[test]
    fn render_names_everything() {
        let text = sample().render();
        for needle in [
            "lab demo (index 9)",
            "198.18.9.100",
            "agent pid 42",
            "holds VIP",
            "peer",
            "faults: none",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
