//! `nonstop-agent --check`: verifies the host, not only the file. One line per check
//! (✔/✘ and what was found); the exit status is 0 only if every check passed.
//!
//! [`evaluate`] is a pure function of the configuration and the [`HostFacts`] that
//! [`probe::gather`] collects (interfaces and addresses, capabilities, kernel
//! features, the key file, the data directory, the tools the agent runs), so every
//! verdict is unit-tested without a host.

pub mod probe;

use nonstop_shared::config::AgentConfig;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// One interface as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_RUNNING`).
    pub running: bool,
    /// Its IPv4 addresses with prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

/// The result of probing one kernel feature or resource: Ok with what was found, or
/// Err with why not.
pub type Probe = Result<String, String>;

/// Everything [`evaluate`] looks at.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// The interfaces of the (network namespace of the) host.
    pub interfaces: Vec<Interface>,
    /// Effective capability bits (`CapEff` of `/proc/self/status`).
    pub capabilities: Result<u64, String>,
    /// An NFQUEUE handle could be opened and bound (nfnetlink_queue).
    pub nfqueue: Probe,
    /// The xtables `NFQUEUE` target (loaded, built in or loadable).
    pub nfqueue_target: Probe,
    /// A raw IPv4 socket (restores inject forged segments with it).
    pub raw_socket: Probe,
    /// A packet socket (gratuitous ARP).
    pub packet_socket: Probe,
    /// Socket diagnostics with `SOCK_DESTROY`.
    pub sock_destroy: Probe,
    /// The key file: its fingerprint, or why it cannot be used.
    pub key: Probe,
    /// The data directory is (or can be made) writable.
    pub data_dir: Probe,
    /// `iptables` and `iptables-restore` on `PATH`.
    pub iptables: Probe,
}

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name, e.g. `service interface`.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (or what is wrong and how to fix it).
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { '✔' } else { '✘' };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_NICE: u32 = 23;

fn check(name: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

fn network(addr: Ipv4Addr, prefix: u8) -> u32 {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(addr) & mask
}

fn local_ips(facts: &HostFacts) -> Vec<Ipv4Addr> {
    facts
        .interfaces
        .iter()
        .flat_map(|i| i.addrs.iter().map(|(a, _)| *a))
        .collect()
}

/// Whether `ip` is an address of this host (any interface; loopback's 127/8 counts).
fn is_local(facts: &HostFacts, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() && facts.interfaces.iter().any(|i| i.name == "lo" && i.up)
                || local_ips(facts).contains(&v4)
        }
        IpAddr::V6(_) => false,
    }
}

/// Every verdict for `config` on a host described by `facts`, in a fixed order.
pub fn evaluate(config: &AgentConfig, facts: &HostFacts) -> Vec<Check> {
    let mut out = vec![Check {
        name: "configuration",
        ok: true,
        detail: "parsed and validated".into(),
    }];
    let vip = config.service.vip;
    let ifname = &config.service.interface;
    let iface = facts.interfaces.iter().find(|i| &i.name == ifname);
    out.push(check(
        "service interface",
        match iface {
            None => Err(format!(
                "{ifname} does not exist (interfaces: {})",
                facts
                    .interfaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(i) if !i.up => Err(format!("{ifname} is down (ip link set {ifname} up)")),
            Some(i) if !i.running => Err(format!("{ifname} is up but has no carrier")),
            Some(_) => Ok(format!("{ifname} exists, is up and has a carrier")),
        },
    ));
    out.push(check(
        "VIP fits the service network",
        match iface {
            None => Err(format!("{ifname} does not exist")),
            Some(i) => {
                let own: Vec<&(Ipv4Addr, u8)> =
                    i.addrs.iter().filter(|(a, _)| *a != vip.addr).collect();
                match own
                    .iter()
                    .find(|(a, p)| network(*a, *p) == network(vip.addr, *p))
                {
                    Some((a, p)) if *p == vip.prefix => {
                        Ok(format!("{vip} is in {a}/{p} on {ifname}"))
                    }
                    Some((a, p)) => Err(format!(
                        "{vip} is in {a}/{p} on {ifname}, but its prefix is /{}: use /{p}",
                        vip.prefix
                    )),
                    None if own.is_empty() => Err(format!(
                        "{ifname} has no IPv4 address of its own; the VIP needs one in its network"
                    )),
                    None => Err(format!(
                        "{vip} is outside every network of {ifname} ({})",
                        own.iter()
                            .map(|(a, p)| format!("{a}/{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        },
    ));
    let sync = config.sync.address;
    out.push(check(
        "sync address is local",
        if is_local(facts, sync.ip()) {
            Ok(format!("{} is an address of this host", sync.ip()))
        } else {
            Err(format!(
                "{} (sync.address) is not an address of this host (local: {})",
                sync.ip(),
                local_ips(facts)
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        },
    ));
    let peer = config.sync.peer;
    out.push(check(
        "sync peer is another host",
        if is_local(facts, peer.ip()) {
            Err(format!(
                "{} (sync.peer) is an address of this host: it must be the other node's",
                peer.ip()
            ))
        } else {
            Ok(format!("{peer}"))
        },
    ));
    let foreign: Vec<String> = config
        .control
        .listen
        .iter()
        .chain(config.metrics.listen.iter())
        .filter(|a| !is_local(facts, a.ip()))
        .map(ToString::to_string)
        .collect();
    out.push(check(
        "control and metrics addresses are local",
        if foreign.is_empty() {
            Ok("every listen address is on this host".into())
        } else {
            Err(format!(
                "not addresses of this host: {}",
                foreign.join(", ")
            ))
        },
    ));
    out.push(check("kernel: NFQUEUE", facts.nfqueue.clone()));
    out.push(check(
        "kernel: xtables NFQUEUE target",
        facts.nfqueue_target.clone(),
    ));
    out.push(check("kernel: raw IPv4 sockets", facts.raw_socket.clone()));
    out.push(check("kernel: packet sockets", facts.packet_socket.clone()));
    out.push(check(
        "kernel: socket diagnostics with destroy",
        facts.sock_destroy.clone(),
    ));
    out.push(check(
        "capabilities",
        match facts.capabilities {
            Err(ref e) => Err(e.clone()),
            Ok(bits) => {
                let missing: Vec<&str> = [
                    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                    (CAP_NET_RAW, "CAP_NET_RAW"),
                    (CAP_SYS_NICE, "CAP_SYS_NICE"),
                ]
                .iter()
                .filter(|(bit, _)| bits & (1u64 << bit) == 0)
                .map(|(_, name)| *name)
                .collect();
                if missing.is_empty() {
                    Ok("CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_NICE".into())
                } else {
                    Err(format!("missing {}", missing.join(", ")))
                }
            }
        },
    ));
    out.push(check("iptables", facts.iptables.clone()));
    out.push(check("key file", facts.key.clone()));
    out.push(check("data directory", facts.data_dir.clone()));
    out
}

/// Runs every check on this host, prints one line each, and says whether all passed.
pub fn run_and_print(config: &AgentConfig) -> bool {
    let facts = probe::gather(config);
    let checks = evaluate(config, &facts);
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("all {} checks passed", checks.len());
    } else {
        println!("{failed} of {} checks failed", checks.len());
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
node_id = "master"
data_dir = "/var/lib/nonstop"
[service]
interface = "eth0"
vip = "198.18.1.100/24"
ports = [7000]
[sync]
address = "198.19.1.1:7701"
peer = "198.19.1.2:7701"
[control]
listen = ["127.0.0.1:7700", "198.19.1.1:7700"]
[metrics]
listen = "127.0.0.1:9477"
[security]
key_file = "/etc/nonstop/key"
"#;

    fn config() -> AgentConfig {
        AgentConfig::from_toml(CONFIG).expect("config")
    }

    fn iface(name: &str, addrs: &[(&str, u8)]) -> Interface {
        Interface {
            name: name.into(),
            up: true,
            running: true,
            addrs: addrs
                .iter()
                .map(|(a, p)| (a.parse().expect("ip"), *p))
                .collect(),
        }
    }

    fn good() -> HostFacts {
        HostFacts {
            interfaces: vec![
                iface("lo", &[("127.0.0.1", 8)]),
                iface("eth0", &[("198.18.1.1", 24)]),
                iface("sync0", &[("198.19.1.1", 24)]),
            ],
            capabilities: Ok(u64::MAX >> 24),
            nfqueue: Ok("queue opened".into()),
            nfqueue_target: Ok("NFQUEUE registered".into()),
            raw_socket: Ok("ok".into()),
            packet_socket: Ok("ok".into()),
            sock_destroy: Ok("ok".into()),
            key: Ok("fingerprint 00".into()),
            data_dir: Ok("writable".into()),
            iptables: Ok("found".into()),
        }
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn a_good_host_passes_every_check() {
        let checks = evaluate(&config(), &good());
        assert_eq!(failed(&checks), Vec::<&str>::new(), "{checks:#?}");
        assert_eq!(checks.len(), 15);
        assert_eq!(
            checks[2].to_string(),
            "✔ VIP fits the service network: 198.18.1.100/24 is in 198.18.1.1/24 on eth0"
        );
    }

    #[test]
    fn a_missing_or_down_interface_fails_by_name() {
        let mut facts = good();
        facts.interfaces.retain(|i| i.name != "eth0");
        let checks = evaluate(&config(), &facts);
        assert_eq!(
            failed(&checks),
            ["service interface", "VIP fits the service network"]
        );
        assert!(checks[1]
            .detail
            .starts_with("eth0 does not exist (interfaces: lo, sync0"));
        let mut facts = good();
        facts.interfaces[1].up = false;
        assert_eq!(failed(&evaluate(&config(), &facts)), ["service interface"]);
        let mut facts = good();
        facts.interfaces[1].running = false;
        assert!(evaluate(&config(), &facts)[1].detail.contains("no carrier"));
    }

    #[test]
    fn the_vip_must_sit_in_the_interface_network_with_its_prefix() {
        // The VIP itself on the interface (a master) does not count as its network.
        let mut facts = good();
        facts.interfaces[1].addrs = vec![("198.18.1.100".parse().expect("ip"), 24)];
        assert!(evaluate(&config(), &facts)[2]
            .detail
            .contains("no IPv4 address of its own"));
        facts.interfaces[1]
            .addrs
            .push(("198.18.2.1".parse().expect("ip"), 24));
        assert!(evaluate(&config(), &facts)[2]
            .detail
            .contains("outside every network"));
        facts.interfaces[1].addrs = vec![("198.18.1.1".parse().expect("ip"), 16)];
        let c = &evaluate(&config(), &facts)[2];
        assert!(!c.ok && c.detail.contains("use /16"), "{c}");
    }

    #[test]
    fn sync_addresses_must_be_ours_and_the_peer_not() {
        let mut facts = good();
        facts.interfaces[2].addrs = vec![("198.19.1.7".parse().expect("ip"), 24)];
        let checks = evaluate(&config(), &facts);
        assert_eq!(
            failed(&checks),
            [
                "sync address is local",
                "control and metrics addresses are local"
            ]
        );
        assert!(checks[3]
            .detail
            .contains("198.19.1.1 (sync.address) is not"));
        let mut facts = good();
        facts.interfaces[2]
            .addrs
            .push(("198.19.1.2".parse().expect("ip"), 24));
        assert_eq!(
            failed(&evaluate(&config(), &facts)),
            ["sync peer is another host"]
        );
    }

    #[test]
    fn missing_capabilities_and_kernel_features_are_named() {
        let mut facts = good();
        facts.capabilities = Ok(1 << CAP_NET_RAW);
        facts.sock_destroy = Err("not supported (CONFIG_INET_DIAG_DESTROY)".into());
        let checks = evaluate(&config(), &facts);
        assert_eq!(
            failed(&checks),
            ["kernel: socket diagnostics with destroy", "capabilities"]
        );
        let caps = checks
            .iter()
            .find(|c| c.name == "capabilities")
            .expect("caps");
        assert_eq!(caps.detail, "missing CAP_NET_ADMIN, CAP_SYS_NICE");
        assert!(caps.to_string().starts_with("✘ "));
    }
}
