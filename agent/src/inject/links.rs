//! Finding this host's service and sync interfaces (`ip -j addr show`).

use super::command;
use std::net::IpAddr;

/// One network interface of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name (`sync0`).
    pub name: String,
    /// Interface index (what NFQUEUE reports as in/out device).
    pub index: u32,
}

/// An interface as `ip -j addr show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name and index.
    pub link: Link,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// Whether `name` is a plausible interface name that is safe to put in nft and
/// iptables scripts and `sh` command lines (no quotes, spaces or shell syntax).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b))
}

/// Parses the JSON of `ip -j addr show` (pure).
pub fn parse_ip_addr(json: &str) -> Result<Vec<Interface>, String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("cannot parse the output of `ip -j addr show`: {e}"))?;
    let Some(entries) = value.as_array() else {
        return Err("`ip -j addr show` did not print a JSON array".into());
    };
    let mut out = Vec::new();
    for entry in entries {
        let (Some(name), Some(index)) = (
            entry.get("ifname").and_then(|v| v.as_str()),
            entry.get("ifindex").and_then(|v| v.as_u64()),
        ) else {
            continue;
        };
        let Ok(index) = u32::try_from(index) else {
            continue;
        };
        let addresses = entry
            .get("addr_info")
            .and_then(|v| v.as_array())
            .map(|infos| {
                infos
                    .iter()
                    .filter_map(|i| i.get("local").and_then(|l| l.as_str()))
                    .filter_map(|l| l.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Interface {
            link: Link {
                name: name.to_owned(),
                index,
            },
            addresses,
        });
    }
    Ok(out)
}

/// Every interface of this host (network namespace), with its addresses.
pub fn interfaces() -> Result<Vec<Interface>, String> {
    parse_ip_addr(&command::run("ip", &["-j", "addr", "show"], None)?)
}

/// The interface named `name`.
pub fn by_name(all: &[Interface], name: &str) -> Result<Link, String> {
    all.iter()
        .find(|i| i.link.name == name)
        .map(|i| i.link.clone())
        .ok_or_else(|| format!("interface {name} (service.interface) does not exist on this host"))
        .and_then(checked)
}

/// The interface holding `ip` (the sync interface holds `sync.address`'s IP).
pub fn by_address(all: &[Interface], ip: IpAddr) -> Result<Link, String> {
    all.iter()
        .find(|i| i.addresses.contains(&ip))
        .map(|i| i.link.clone())
        .ok_or_else(|| {
            format!(
                "no interface on this host holds {ip} (sync.address): cannot find the sync link"
            )
        })
        .and_then(checked)
}

fn checked(link: Link) -> Result<Link, String> {
    if valid_ifname(&link.name) {
        Ok(link)
    } else {
        Err(format!(
            "interface name {:?} has characters the injector does not put in firewall rules",
            link.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[
      {"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":7,"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.3.1","prefixlen":24},
                                               {"family":"inet6","local":"fe80::1","prefixlen":64}]},
      {"ifindex":9,"ifname":"sync0","addr_info":[{"family":"inet","local":"198.19.3.1","prefixlen":24}]},
      {"ifindex":11,"ifname":"bad\"name","addr_info":[{"family":"inet","local":"198.19.9.9","prefixlen":24}]},
      {"link_index_only":3}
    ]"#;

    #[test]
    fn finds_interfaces_by_name_and_address() {
        let all = parse_ip_addr(SAMPLE).expect("parses");
        assert_eq!(all.len(), 4);
        assert_eq!(
            by_name(&all, "eth0").expect("eth0"),
            Link {
                name: "eth0".into(),
                index: 7
            }
        );
        let sync = by_address(&all, "198.19.3.1".parse().expect("ip")).expect("sync");
        assert_eq!(sync.name, "sync0");
        assert_eq!(sync.index, 9);
        assert!(by_name(&all, "eth9").expect_err("missing").contains("eth9"));
        assert!(by_address(&all, "198.19.3.7".parse().expect("ip"))
            .expect_err("missing")
            .contains("198.19.3.7"));
        assert!(by_address(&all, "198.19.9.9".parse().expect("ip")).is_err());
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("br-sync.10"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a name"));
        assert!(!valid_ifname("x\";drop"));
        assert!(!valid_ifname("sixteen-chars-xx"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_ip_addr("not json").is_err());
        assert!(parse_ip_addr("{}").is_err());
    }
}
