//! Building ([`Lab::up`]) and removing ([`Lab::down`]) a lab.
//!
//! `up` converges: each step checks what exists and only adds what is missing, so it
//! creates a fresh lab, leaves a healthy one alone (running agents included) and
//! repairs a half-built or damaged one (a deleted namespace, a port set down, a
//! missing address, an injected fault). Nothing is created in the root namespace:
//! veth pairs are made from inside the switch namespace with their host end moved
//! straight into the host's namespace.
//!
//! `down` SIGKILLs the agents' process groups (from their pid files) and every process
//! in the lab's namespaces, waits for them to go, and
//! deletes the namespaces (taking every veth, bridge and nftables table with them),
//! then the lab directory. It succeeds on an absent or half-built lab.

use crate::agent_config::agent_config;
use crate::lab::{lab_dir, lab_root, Lab, LabSpec};
use crate::naming::{self, Host, Node, Port, MAX_PEERS, NS_PREFIX};
use crate::netns::{self, ip_in};
use anyhow::{bail, Context, Result};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// How long `down` waits for SIGKILLed processes to disappear, per namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The hosts of lab `name` whose namespaces exist, sorted.
pub(crate) fn existing_hosts(name: &str) -> Result<Vec<Host>> {
    let mut hosts: Vec<Host> = netns::list_netns()?
        .iter()
        .filter_map(|ns| naming::parse_namespace(ns))
        .filter(|(lab, _)| lab == name)
        .map(|(_, host)| host)
        .collect();
    hosts.sort();
    Ok(hosts)
}

/// Every namespace whose name starts with `nonstop-<name>-` (names contain no `-`,
/// so the prefix belongs to this lab alone).
pub(crate) fn lab_namespaces(name: &str) -> Result<Vec<String>> {
    let prefix = naming::namespace_prefix(name);
    Ok(netns::list_netns()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect())
}

/// Interface names in namespace `ns`.
fn link_names(ns: &str) -> Result<BTreeSet<String>> {
    Ok(netns::ip_json(ns, &["link", "show"])?
        .iter()
        .filter_map(|link| {
            link.get("ifname")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        })
        .collect())
}

/// Sets a sysctl, tolerating keys this kernel lacks (e.g. no IPv6).
fn optional_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    match netns::sysctl_in(ns, key, value) {
        Ok(()) => Ok(()),
        Err(_) if !Path::new(&path).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

impl Lab {
    /// Builds lab `spec.name` or brings an existing one back to spec (idempotent),
    /// writes the agent configs and `status.json`. Does not start agents (see
    /// [`Lab::start_agents`]); agents already running are left alone. A lab with more
    /// peers than asked loses the extra ones.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        naming::validate_name(&spec.name)?;
        if spec.peers > MAX_PEERS {
            bail!("--peers {} is too many: at most {MAX_PEERS}", spec.peers);
        }
        let lab = Lab::handle(&spec.name, spec.peers);
        // Check the configs before touching the system.
        let configs = Node::ALL
            .iter()
            .map(|&node| agent_config(&lab.plan, &lab.dir, node, &spec.knobs()).map(|c| (node, c)))
            .collect::<Result<Vec<_>>>()?;
        lab.converge()
            .with_context(|| format!("cannot bring lab `{}` up", lab.name))?;
        std::fs::create_dir_all(&lab.dir)
            .with_context(|| format!("cannot create {}", lab.dir.display()))?;
        crate::agent_config::ensure_key(&crate::agent_config::key_path(&lab.dir))?;
        for (node, config) in configs {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
            let path = lab.config_path(node);
            let text = config.to_toml();
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        lab.write_status()?;
        Ok(lab)
    }

    /// Makes the system match the topology: namespaces, sysctls, bridges, veths,
    /// addresses, links up, no extra peers, no injected faults.
    fn converge(&self) -> Result<()> {
        // Peers beyond the spec (an earlier `up --peers 3`) go.
        for host in existing_hosts(&self.name)? {
            if let Host::Peer(k) = host {
                if k > self.peers {
                    let ns = self.namespace(&host.to_string());
                    netns::kill_all_in(&ns, KILL_TIMEOUT)?;
                    netns::del_netns(&ns)?;
                }
            }
        }
        let hosts = self.hosts();
        for host in &hosts {
            let ns = self.namespace(&host.to_string());
            if !netns::netns_exists(&ns) {
                netns::add_netns(&ns)?;
            }
            // Before any veth arrives, so `default` applies to it.
            optional_sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
            optional_sysctl(&ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
            if let Host::Node(_) = host {
                netns::sysctl_in(&ns, "net.ipv4.ip_nonlocal_bind", "1")?;
            }
            ip_in(&ns, &["link", "set", "lo", "up"])?;
        }

        let sw = self.namespace("switch");
        let mut sw_links = link_names(&sw)?;
        for bridge in [naming::SERVICE_BRIDGE, naming::SYNC_BRIDGE] {
            if !sw_links.contains(bridge) {
                ip_in(&sw, &["link", "add", bridge, "type", "bridge"])?;
                sw_links.insert(bridge.to_owned());
            }
            ip_in(&sw, &["link", "set", bridge, "up"])?;
        }
        // Stray peer ports (their peer namespace went away without them).
        for link in &sw_links {
            let stray = link
                .strip_prefix('p')
                .and_then(|rest| rest.strip_suffix("-svc"))
                .and_then(|k| k.parse::<usize>().ok())
                .is_some_and(|k| k > self.peers);
            if stray {
                ip_in(&sw, &["link", "del", link])?;
            }
        }

        let ports = naming::ports(&self.plan, self.peers);
        let mut host_links: BTreeMap<Host, BTreeSet<String>> = BTreeMap::new();
        for port in &ports {
            let ns = self.namespace(&port.host.to_string());
            let links = match host_links.entry(port.host) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(link_names(&ns)?),
            };
            let host_has = links.contains(port.host_if);
            self.ensure_port(port, &sw, sw_links.contains(&port.name), host_has)?;
        }
        self.heal_sync()?;
        Ok(())
    }

    /// Creates (or re-creates) one veth pair and configures both ends.
    fn ensure_port(&self, port: &Port, sw: &str, sw_has: bool, host_has: bool) -> Result<()> {
        let ns = self.namespace(&port.host.to_string());
        if sw_has != host_has {
            // Half a pair cannot be a veth pair of ours: remove the leftover end.
            if sw_has {
                ip_in(sw, &["link", "del", &port.name])?;
            } else {
                ip_in(&ns, &["link", "del", port.host_if])?;
            }
        }
        if !(sw_has && host_has) {
            ip_in(
                sw,
                &[
                    "link",
                    "add",
                    &port.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port.host_if,
                    "netns",
                    &ns,
                ],
            )?;
        }
        ip_in(
            sw,
            &["link", "set", &port.name, "master", port.bridge, "up"],
        )?;
        // `replace` is idempotent and keeps other addresses (the VIP) in place.
        ip_in(&ns, &["addr", "replace", &port.cidr(), "dev", port.host_if])?;
        ip_in(&ns, &["link", "set", port.host_if, "up"])?;
        Ok(())
    }

    /// Removes lab `name` completely: processes, namespaces (with their links, bridges
    /// and nftables tables) and the lab directory. Fine when the lab is absent or
    /// half-built; every part is attempted even when one fails.
    pub fn down(name: &str) -> Result<()> {
        naming::validate_name(name)?;
        let namespaces = lab_namespaces(name)?;
        let mut errors = Vec::new();
        // Agents first, by their pid files: one whose namespace was deleted by hand is
        // no longer found by the namespace scan below. Their process group goes too.
        let lab = Lab::handle(name, 0);
        for node in Node::ALL {
            if let Some(pid) = lab.agent_pid(node) {
                if let Err(e) = netns::kill_group(pid, KILL_TIMEOUT) {
                    errors.push(format!("{node} agent: {e:#}"));
                }
            }
        }
        let mut inodes = Vec::new();
        for ns in &namespaces {
            match netns::netns_inode(ns) {
                Ok(Some(inode)) => inodes.push(inode),
                Ok(None) => {}
                Err(e) => errors.push(format!("{e:#}")),
            }
            if let Err(e) = netns::kill_all_in(ns, KILL_TIMEOUT) {
                errors.push(format!("{e:#}"));
            }
        }
        for ns in &namespaces {
            if let Err(e) = netns::del_netns(ns) {
                errors.push(format!("{e:#}"));
            }
        }
        // Once the names are gone nothing new can enter; a process that was entering
        // during the first pass (`ip netns exec` between open and setns) dies here.
        for inode in inodes {
            if let Err(e) = netns::kill_all_in_inode(inode, KILL_TIMEOUT) {
                errors.push(format!("{e:#}"));
            }
        }
        let dir = lab_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("cannot remove {}: {e}", dir.display())),
        }
        if !errors.is_empty() {
            bail!(
                "lab `{name}` was not fully removed:\n  {}",
                errors.join("\n  ")
            );
        }
        Ok(())
    }

    /// Removes every lab whose namespaces start with `nonstop-<prefix>` (or whose
    /// directory name starts with `prefix`); returns their names. An empty prefix
    /// means every lab. Used by CI to sweep after tests.
    pub fn down_all_with_prefix(prefix: &str) -> Result<Vec<String>> {
        if !prefix.is_empty() {
            naming::validate_name(prefix).context("invalid prefix")?;
        }
        let mut names = BTreeSet::new();
        for ns in netns::list_netns()? {
            let Some(rest) = ns.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let Some((name, _host)) = rest.split_once('-') else {
                continue;
            };
            if name.starts_with(prefix) && naming::validate_name(name).is_ok() {
                names.insert(name.to_owned());
            }
        }
        let root = lab_root();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str() {
                    let ours = entry.path().join(crate::status::STATUS_FILE).exists()
                        || entry.path().join("master.toml").exists();
                    if ours && name.starts_with(prefix) && naming::validate_name(name).is_ok() {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
        let mut errors = Vec::new();
        for name in &names {
            if let Err(e) = Lab::down(name) {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(names.into_iter().collect())
    }
}
