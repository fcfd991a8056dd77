//! Names, the lab index and the address plan: pure functions, no I/O.
//!
//! A lab called `demo` lives in the namespaces `nonstop-demo-switch`,
//! `nonstop-demo-master`, `nonstop-demo-backup`, `nonstop-demo-peer`,
//! `nonstop-demo-peer2`, … Its index `L` (1..=250) is derived from the name with
//! FNV-1a and picks the two /24 networks inside the benchmarking range
//! 198.18.0.0/15: the service LAN `198.18.L.0/24` and the sync link `198.19.L.0/24`.
//! Two labs whose names hash to the same index do not collide: every address lives
//! inside the lab's own namespaces.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Every lab namespace starts with this.
pub const NS_PREFIX: &str = "nonstop-";
/// Longest lab name (namespace and interface names stay short).
pub const MAX_NAME_LEN: usize = 12;
/// Most peers a lab can have: peers take .10 up to .99, below the VIP at .100.
pub const MAX_PEERS: usize = 90;
/// The bridge of the service LAN, in the switch namespace.
pub const SERVICE_BRIDGE: &str = "br-svc";
/// The bridge of the sync link, in the switch namespace.
pub const SYNC_BRIDGE: &str = "br-sync";
/// Every host's interface on the service LAN.
pub const SERVICE_IF: &str = "eth0";
/// The master's and the backup's interface on the sync link.
pub const SYNC_IF: &str = "sync0";
/// Prefix length of both lab networks.
pub const PREFIX_LEN: u8 = 24;
/// The service port written into the agent configs.
pub const SERVICE_PORT: u16 = 7000;
/// The agents' control port (JSON lines over TCP).
pub const CONTROL_PORT: u16 = 7700;
/// The agents' Prometheus metrics port (on localhost inside each node namespace).
pub const METRICS_PORT: u16 = 9477;
/// The agents' heartbeat/replication port on the sync link.
pub const SYNC_PORT: u16 = 7701;

/// Checks that `name` is a valid lab name: 1 to 12 characters of `[a-z0-9]`.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        bail!(
            "invalid lab name `{name}`: must be 1..={MAX_NAME_LEN} characters of [a-z0-9] \
             (got {} characters)",
            name.chars().count()
        );
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        bail!("invalid lab name `{name}`: `{bad}` is not in [a-z0-9]");
    }
    Ok(())
}

/// 32-bit FNV-1a hash.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The lab index `L` in 1..=250: `fnv1a32(name) % 250 + 1`.
pub fn lab_index(name: &str) -> u8 {
    // The remainder is below 250, so the sum fits in a u8.
    (fnv1a32(name.as_bytes()) % 250) as u8 + 1
}

/// The namespace of `host` (`master`, `peer2`, `switch`, …) in lab `name`.
pub fn namespace(name: &str, host: &str) -> String {
    format!("{NS_PREFIX}{name}-{host}")
}

/// The namespace prefix shared by every namespace of lab `name` (`nonstop-demo-`).
pub fn namespace_prefix(name: &str) -> String {
    format!("{NS_PREFIX}{name}-")
}

/// Splits a namespace name into its lab name and host, if it is a lab namespace.
///
/// Strict: `nonstop-demo-peer1` is not a lab namespace (the first peer is `peer`).
pub fn parse_namespace(ns: &str) -> Option<(String, Host)> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    let (name, host) = rest.split_once('-')?;
    validate_name(name).ok()?;
    let host: Host = host.parse().ok()?;
    (namespace(name, &host.to_string()) == ns).then(|| (name.to_owned(), host))
}

/// One of the two agent hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    /// Starts as master: priority 110, service address .1.
    Master,
    /// Starts as backup: priority 100, service address .2.
    Backup,
}

impl Node {
    /// Both nodes, master first (the order agents are started in).
    pub const ALL: [Node; 2] = [Node::Master, Node::Backup];

    /// The other node of the pair.
    pub fn other(self) -> Node {
        match self {
            Node::Master => Node::Backup,
            Node::Backup => Node::Master,
        }
    }

    /// Host name, also the namespace suffix and the agent's node id.
    pub fn as_str(self) -> &'static str {
        match self {
            Node::Master => "master",
            Node::Backup => "backup",
        }
    }

    /// Election priority written into the agent config.
    pub fn priority(self) -> u8 {
        match self {
            Node::Master => 110,
            Node::Backup => 100,
        }
    }

    /// Last octet of this node's service and sync addresses.
    pub fn host_octet(self) -> u8 {
        match self {
            Node::Master => 1,
            Node::Backup => 2,
        }
    }

    /// One-letter prefix of its switch-side ports (`m-svc`, `b-sync`).
    fn port_letter(self) -> char {
        match self {
            Node::Master => 'm',
            Node::Backup => 'b',
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Node {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Node> {
        match s {
            "master" => Ok(Node::Master),
            "backup" => Ok(Node::Backup),
            _ => bail!("unknown node `{s}`: expected `master` or `backup`"),
        }
    }
}

/// A host of the lab: the switch, one of the two nodes, or peer `k` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// The namespace holding the two bridges.
    Switch,
    /// The master or the backup.
    Node(Node),
    /// A client on the service LAN; `Peer(1)` is called `peer`, `Peer(2)` `peer2`.
    Peer(usize),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Switch => f.write_str("switch"),
            Host::Node(node) => node.fmt(f),
            Host::Peer(1) => f.write_str("peer"),
            Host::Peer(k) => write!(f, "peer{k}"),
        }
    }
}

impl FromStr for Host {
    type Err = anyhow::Error;

    /// Accepts `switch`, `master`, `backup`, `peer` (= `peer1`), `peer2`, …
    fn from_str(s: &str) -> Result<Host> {
        match s {
            "switch" => return Ok(Host::Switch),
            "peer" => return Ok(Host::Peer(1)),
            _ => {}
        }
        if let Ok(node) = s.parse::<Node>() {
            return Ok(Host::Node(node));
        }
        if let Some(k) = s.strip_prefix("peer") {
            if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) && !k.starts_with('0') {
                if let Ok(k) = k.parse::<usize>() {
                    if (1..=MAX_PEERS).contains(&k) {
                        return Ok(Host::Peer(k));
                    }
                }
            }
        }
        bail!("unknown host `{s}`: expected peer, peer2, …, master, backup or switch")
    }
}

/// The addresses of lab index `L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    /// The lab index `L` (1..=250), the third octet of both networks.
    pub index: u8,
}

impl AddressPlan {
    /// The plan of lab `name`.
    pub fn for_name(name: &str) -> AddressPlan {
        AddressPlan {
            index: lab_index(name),
        }
    }

    fn service(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, host)
    }

    fn sync(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.index, host)
    }

    /// The service LAN, `198.18.L.0/24`.
    pub fn service_net(&self) -> String {
        format!("{}/{PREFIX_LEN}", self.service(0))
    }

    /// The sync link, `198.19.L.0/24`.
    pub fn sync_net(&self) -> String {
        format!("{}/{PREFIX_LEN}", self.sync(0))
    }

    /// The virtual IP, `198.18.L.100`.
    pub fn vip(&self) -> Ipv4Addr {
        self.service(100)
    }

    /// A node's own address on the service LAN (`.1` master, `.2` backup).
    pub fn service_ip(&self, node: Node) -> Ipv4Addr {
        self.service(node.host_octet())
    }

    /// A node's address on the sync link (`.1` master, `.2` backup).
    pub fn sync_ip(&self, node: Node) -> Ipv4Addr {
        self.sync(node.host_octet())
    }

    /// Peer `k`'s address (1-based: `peer` is `.10`, `peer2` `.11`, …).
    /// `k = 0` is taken as the first peer; `k` is clamped to [`MAX_PEERS`].
    pub fn peer_ip(&self, k: usize) -> Ipv4Addr {
        let k = k.clamp(1, MAX_PEERS);
        // k - 1 < 90, so the octet stays in 10..=99.
        self.service(9 + k as u8)
    }

    /// The address `host` has on the service LAN (`None` for the switch).
    pub fn host_service_ip(&self, host: Host) -> Option<Ipv4Addr> {
        match host {
            Host::Switch => None,
            Host::Node(node) => Some(self.service_ip(node)),
            Host::Peer(k) => Some(self.peer_ip(k)),
        }
    }
}

/// One veth pair: a switch-side port enslaved to a bridge, and its host end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Port name in the switch namespace (`m-svc`, `p2-svc`, …).
    pub name: String,
    /// The bridge it belongs to.
    pub bridge: &'static str,
    /// The host at the other end.
    pub host: Host,
    /// Interface name inside the host (`eth0` or `sync0`).
    pub host_if: &'static str,
    /// The host end's address.
    pub address: Ipv4Addr,
}

impl Port {
    /// The host end's address with prefix (`198.18.L.1/24`).
    pub fn cidr(&self) -> String {
        format!("{}/{PREFIX_LEN}", self.address)
    }
}

/// Switch-side port names of a node: service port then sync port (`m-svc`, `m-sync`).
pub fn node_ports(node: Node) -> [String; 2] {
    let l = node.port_letter();
    [format!("{l}-svc"), format!("{l}-sync")]
}

/// Switch-side port name of peer `k` (`p1-svc`, `p2-svc`, …).
pub fn peer_port(k: usize) -> String {
    format!("p{k}-svc")
}

/// Every veth pair of a lab with `peers` peers, nodes first.
pub fn ports(plan: &AddressPlan, peers: usize) -> Vec<Port> {
    let mut out = Vec::with_capacity(4 + peers);
    for node in Node::ALL {
        let [svc, sync] = node_ports(node);
        out.push(Port {
            name: svc,
            bridge: SERVICE_BRIDGE,
            host: Host::Node(node),
            host_if: SERVICE_IF,
            address: plan.service_ip(node),
        });
        out.push(Port {
            name: sync,
            bridge: SYNC_BRIDGE,
            host: Host::Node(node),
            host_if: SYNC_IF,
            address: plan.sync_ip(node),
        });
    }
    for k in 1..=peers {
        out.push(Port {
            name: peer_port(k),
            bridge: SERVICE_BRIDGE,
            host: Host::Peer(k),
            host_if: SERVICE_IF,
            address: plan.peer_ip(k),
        });
    }
    out
}

/// Every host of a lab with `peers` peers: switch, master, backup, peers.
pub fn hosts(peers: usize) -> Vec<Host> {
    let mut out = vec![
        Host::Switch,
        Host::Node(Node::Master),
        Host::Node(Node::Backup),
    ];
    out.extend((1..=peers).map(Host::Peer));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "demo", "t1", "abcdefghijkl", "0"] {
            validate_name(good).expect(good);
        }
        for bad in ["", "Demo", "de-mo", "de_mo", "abcdefghijklm", "dé", "a b"] {
            let err = validate_name(bad).expect_err(bad).to_string();
            assert!(err.contains("[a-z0-9]"), "{bad}: {err}");
        }
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn index_is_in_range_and_stable() {
        assert_eq!(lab_index("a"), (0xe40c_292c_u32 % 250) as u8 + 1);
        for i in 0..5000 {
            let index = lab_index(&format!("n{i}"));
            assert!((1..=250).contains(&index));
        }
    }

    #[test]
    fn address_plan_stays_in_benchmark_range() {
        let plan = AddressPlan { index: 7 };
        assert_eq!(plan.service_net(), "198.18.7.0/24");
        assert_eq!(plan.sync_net(), "198.19.7.0/24");
        assert_eq!(plan.vip(), Ipv4Addr::new(198, 18, 7, 100));
        assert_eq!(plan.service_ip(Node::Master), Ipv4Addr::new(198, 18, 7, 1));
        assert_eq!(plan.service_ip(Node::Backup), Ipv4Addr::new(198, 18, 7, 2));
        assert_eq!(plan.sync_ip(Node::Master), Ipv4Addr::new(198, 19, 7, 1));
        assert_eq!(plan.sync_ip(Node::Backup), Ipv4Addr::new(198, 19, 7, 2));
        assert_eq!(plan.peer_ip(1), Ipv4Addr::new(198, 18, 7, 10));
        assert_eq!(plan.peer_ip(0), Ipv4Addr::new(198, 18, 7, 10));
        assert_eq!(plan.peer_ip(2), Ipv4Addr::new(198, 18, 7, 11));
        assert_eq!(plan.peer_ip(MAX_PEERS), Ipv4Addr::new(198, 18, 7, 99));
        for index in 1..=250 {
            let plan = AddressPlan { index };
            for port in ports(&plan, MAX_PEERS) {
                let [a, b, _, _] = port.address.octets();
                assert!(a == 198 && (b == 18 || b == 19), "{}", port.address);
                assert_ne!(port.address, plan.vip());
            }
        }
    }

    #[test]
    fn ports_and_hosts_are_named_as_documented() {
        let plan = AddressPlan { index: 3 };
        let names: Vec<_> = ports(&plan, 2).into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            ["m-svc", "m-sync", "b-svc", "b-sync", "p1-svc", "p2-svc"]
        );
        let hosts: Vec<_> = hosts(2).iter().map(Host::to_string).collect();
        assert_eq!(hosts, ["switch", "master", "backup", "peer", "peer2"]);
        let all = ports(&plan, 1);
        assert_eq!(all[1].cidr(), "198.19.3.1/24");
        assert_eq!(all[1].host_if, SYNC_IF);
        assert_eq!(all[4].cidr(), "198.18.3.10/24");
        // Interface names fit IFNAMSIZ.
        assert!(ports(&plan, MAX_PEERS).iter().all(|p| p.name.len() <= 15));
    }

    #[test]
    fn hosts_parse_and_print() {
        for (text, host) in [
            ("switch", Host::Switch),
            ("master", Host::Node(Node::Master)),
            ("backup", Host::Node(Node::Backup)),
            ("peer", Host::Peer(1)),
            ("peer2", Host::Peer(2)),
            ("peer90", Host::Peer(90)),
        ] {
            assert_eq!(text.parse::<Host>().expect(text), host);
            assert_eq!(host.to_string(), text);
        }
        assert_eq!("peer1".parse::<Host>().expect("alias"), Host::Peer(1));
        for bad in ["", "peer0", "peer02", "peer91", "peerx", "Master", "client"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_round_trip() {
        assert_eq!(namespace("demo", "master"), "nonstop-demo-master");
        assert_eq!(
            parse_namespace("nonstop-demo-peer2"),
            Some(("demo".to_owned(), Host::Peer(2)))
        );
        assert_eq!(
            parse_namespace("nonstop-t1-switch"),
            Some(("t1".to_owned(), Host::Switch))
        );
        for other in [
            "nonstop-demo-peer1",
            "nonstop-demo",
            "demo-master",
            "nonstop-Demo-master",
        ] {
            assert_eq!(parse_namespace(other), None, "{other}");
        }
    }

    #[test]
    fn node_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&Node::Master).expect("json"),
            "\"master\""
        );
        let node: Node = serde_json::from_str("\"backup\"").expect("json");
        assert_eq!(node, Node::Backup);
        assert_eq!("master".parse::<Node>().expect("node"), Node::Master);
        assert!("primary".parse::<Node>().is_err());
        assert_eq!(Node::Master.other(), Node::Backup);
        assert_eq!(node_ports(Node::Backup), ["b-svc", "b-sync"]);
    }
}
