//! The firewall rules that send the service's TCP traffic on the VIP, both
//! directions, to our NFQUEUE.
//!
//! **Why iptables and not an nftables table of our own:** the kernels we run on have
//! NFQUEUE (`CONFIG_NETFILTER_NETLINK_QUEUE`) but not always nftables' `queue`
//! expression (`CONFIG_NFT_QUEUE` is off on the lab machines). The xtables `NFQUEUE`
//! target is available through nftables' compat layer, and `iptables-restore` (the
//! nf_tables backend) is the supported way to create it. We keep our rules in two
//! chains of our own, `NONSTOP_IN` and `NONSTOP_OUT`, replaced atomically by one
//! `iptables-restore --noflush` transaction, and jumped to from `INPUT`/`OUTPUT`.
//!
//! The rules carry no `--queue-bypass` on purpose: while they exist and no agent
//! listens on the queue, the kernel drops the service's packets (fail-closed, design
//! §3/§5): a dead master's kernel must not keep talking to peers the backup is taking
//! over. A backup holds no VIP, so nothing of the service reaches its queue. The
//! rules are removed when the agent exits and replaced when it starts again.

use anyhow::{bail, Context};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Chain for packets to the service.
pub const CHAIN_IN: &str = "NONSTOP_IN";
/// Chain for packets from the service.
pub const CHAIN_OUT: &str = "NONSTOP_OUT";

/// The `iptables-restore --noflush` script that (re)creates both chains.
pub fn restore_script(vip: Ipv4Addr, ports: &[u16], queue: u16) -> String {
    let mut script = format!("*filter\n:{CHAIN_IN} - [0:0]\n:{CHAIN_OUT} - [0:0]\n");
    for port in ports {
        script.push_str(&format!(
            "-A {CHAIN_IN} -d {vip}/32 -p tcp --dport {port} -j NFQUEUE --queue-num {queue}\n"
        ));
        script.push_str(&format!(
            "-A {CHAIN_OUT} -s {vip}/32 -p tcp --sport {port} -j NFQUEUE --queue-num {queue}\n"
        ));
    }
    script.push_str("COMMIT\n");
    script
}

/// Installs (or atomically replaces) the chains, then makes sure `INPUT` and
/// `OUTPUT` jump to them (once).
pub fn install(vip: Ipv4Addr, ports: &[u16], queue: u16) -> anyhow::Result<()> {
    restore(&restore_script(vip, ports, queue)).context("cannot install the queue rules")?;
    for (hook, chain) in [("INPUT", CHAIN_IN), ("OUTPUT", CHAIN_OUT)] {
        if !iptables(&["-C", hook, "-j", chain]).is_ok_and(|ok| ok) {
            ensure(iptables(&["-I", hook, "1", "-j", chain]), || {
                format!("cannot jump from {hook} to {chain}")
            })?;
        }
    }
    Ok(())
}

/// Removes the jumps and the chains; succeeds when they are already gone.
pub fn remove() -> anyhow::Result<()> {
    for (hook, chain) in [("INPUT", CHAIN_IN), ("OUTPUT", CHAIN_OUT)] {
        // Delete every jump (a crashed run may have left more than one).
        for _ in 0..16 {
            if !iptables(&["-D", hook, "-j", chain])? {
                break;
            }
        }
        if iptables(&["-F", chain])? {
            ensure(iptables(&["-X", chain]), || {
                format!("cannot delete chain {chain}")
            })?;
        }
    }
    Ok(())
}

fn ensure(result: anyhow::Result<bool>, what: impl Fn() -> String) -> anyhow::Result<()> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => bail!("{}", what()),
        Err(e) => Err(e.context(what())),
    }
}

/// Runs `iptables ARGS` in the filter table; Ok(false) when it exits non-zero.
fn iptables(args: &[&str]) -> anyhow::Result<bool> {
    let status = Command::new("iptables")
        .args(["-w", "-t", "filter"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run iptables (is the iptables package installed?)")?;
    Ok(status.success())
}

fn restore(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run iptables-restore (is the iptables package installed?)")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(script.as_bytes())
        .context("writing to iptables-restore")?;
    let out = child
        .wait_with_output()
        .context("waiting for iptables-restore")?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_queues_both_directions_per_port_without_bypass() {
        let text = restore_script(Ipv4Addr::new(198, 18, 1, 100), &[7000, 7001], 3);
        assert!(text.starts_with("*filter\n:NONSTOP_IN - [0:0]\n:NONSTOP_OUT - [0:0]\n"));
        for port in [7000, 7001] {
            assert!(text.contains(&format!(
                "-A NONSTOP_IN -d 198.18.1.100/32 -p tcp --dport {port} -j NFQUEUE --queue-num 3"
            )));
            assert!(text.contains(&format!(
                "-A NONSTOP_OUT -s 198.18.1.100/32 -p tcp --sport {port} -j NFQUEUE --queue-num 3"
            )));
        }
        assert!(!text.contains("bypass"));
        assert!(text.ends_with("COMMIT\n"));
    }
}
