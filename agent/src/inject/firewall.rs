//! Drops and random loss: one nftables table of the injector's own,
//! `table inet nonstop_fault`, rendered whole from the set of active faults
//! ([`DropFaults`]) and replaced atomically with `nft -f -`.
//!
//! The script starts with `table …` then `delete table …` (create-if-missing, then
//! delete) and, if any fault is active, defines the table afresh — one transaction,
//! so the rules never flicker and it works whether or not the table exists.
//!
//! Placement, chosen to behave like a lossy *wire* on both sides of the host:
//! - `fault_in`, hook `input`, priority −300: a dropped inbound packet never reaches
//!   anything on this host (the delayer, the session manager's NFQUEUE, sockets);
//! - `fault_out`, hook `output`, priority 300: an outbound packet is dropped after
//!   every other table (the session manager's queue at 0, the delayer at 150) has
//!   seen it, as if lost on the cable.
//!
//! Rules match the interface by name (`iifname`/`oifname`) and count what they drop.
//! Loss is per packet and per direction: `N`% loss drops about `N`% of the packets
//! going each way, so a round trip (ping) is lost with probability 1 − (1 − N/100)².
//! The `inet` family does not see ARP, so neighbours still resolve during a cut.

use super::command;

/// The nftables family of the fault table.
pub const FAULT_FAMILY: &str = "inet";
/// The nftables table the injector owns.
pub const FAULT_TABLE: &str = "nonstop_fault";
/// Priority of the input chain (runs before every other input hook).
pub const INPUT_PRIORITY: i32 = -300;
/// Priority of the output chain (runs after every other output hook).
pub const OUTPUT_PRIORITY: i32 = 300;

/// The firewall faults active on this host, and the interfaces they apply to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropFaults {
    /// The sync link is cut (everything dropped both ways): its interface name.
    pub cut: Option<String>,
    /// Random loss per interface name, percent 1..=100, in insertion order.
    pub loss: Vec<(String, u8)>,
}

impl DropFaults {
    /// Whether any rule would be rendered.
    pub fn is_empty(&self) -> bool {
        self.cut.is_none() && self.loss.is_empty()
    }

    /// Sets (or replaces) the loss on `interface`.
    pub fn set_loss(&mut self, interface: &str, percent: u8) {
        match self.loss.iter_mut().find(|(i, _)| i == interface) {
            Some(entry) => entry.1 = percent,
            None => self.loss.push((interface.to_owned(), percent)),
        }
    }

    /// The active faults in words (`cut sync0, 30% loss on eth0`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(i) = &self.cut {
            parts.push(format!("cut {i}"));
        }
        for (i, p) in &self.loss {
            parts.push(format!("{p}% loss on {i}"));
        }
        parts.join(", ")
    }
}

/// The `nft -f -` script that makes the table match `faults` exactly (pure).
/// With no fault active it only deletes the table.
pub fn render(faults: &DropFaults) -> String {
    let mut script =
        format!("table {FAULT_FAMILY} {FAULT_TABLE}\ndelete table {FAULT_FAMILY} {FAULT_TABLE}\n");
    if faults.is_empty() {
        return script;
    }
    let mut rules_in = Vec::new();
    let mut rules_out = Vec::new();
    if let Some(i) = &faults.cut {
        rules_in.push(format!("iifname \"{i}\" counter drop"));
        rules_out.push(format!("oifname \"{i}\" counter drop"));
    }
    for (i, percent) in &faults.loss {
        rules_in.push(format!(
            "iifname \"{i}\" numgen random mod 100 < {percent} counter drop"
        ));
        rules_out.push(format!(
            "oifname \"{i}\" numgen random mod 100 < {percent} counter drop"
        ));
    }
    script.push_str(&format!("table {FAULT_FAMILY} {FAULT_TABLE} {{\n"));
    for (chain, hook, priority, rules) in [
        ("fault_in", "input", INPUT_PRIORITY, &rules_in),
        ("fault_out", "output", OUTPUT_PRIORITY, &rules_out),
    ] {
        script.push_str(&format!(
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority {priority}; policy accept;\n"
        ));
        for rule in rules {
            script.push_str(&format!("\t\t{rule}\n"));
        }
        script.push_str("\t}\n");
    }
    script.push_str("}\n");
    script
}

/// Replaces the table with one matching `faults` (or deletes it when none).
pub fn apply(faults: &DropFaults) -> Result<(), String> {
    command::run("nft", &["-f", "-"], Some(&render(faults))).map(|_| ())
}

/// Whether the table exists right now.
pub fn table_exists() -> Result<bool, String> {
    command::succeeds("nft", &["list", "table", FAULT_FAMILY, FAULT_TABLE])
}

/// Deletes the table if it exists; `true` when there was one.
pub fn remove() -> Result<bool, String> {
    if !table_exists()? {
        return Ok(false);
    }
    apply(&DropFaults::default())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_active_only_deletes_the_table() {
        assert_eq!(
            render(&DropFaults::default()),
            "table inet nonstop_fault\ndelete table inet nonstop_fault\n"
        );
    }

    #[test]
    fn a_cut_drops_both_directions_on_the_sync_interface() {
        let faults = DropFaults {
            cut: Some("sync0".into()),
            loss: Vec::new(),
        };
        let script = render(&faults);
        assert!(script.starts_with(
            "table inet nonstop_fault\ndelete table inet nonstop_fault\ntable inet nonstop_fault {\n"
        ));
        assert!(script.contains(
            "\tchain fault_in {\n\t\ttype filter hook input priority -300; policy accept;\n\
             \t\tiifname \"sync0\" counter drop\n\t}\n"
        ));
        assert!(script.contains(
            "\tchain fault_out {\n\t\ttype filter hook output priority 300; policy accept;\n\
             \t\toifname \"sync0\" counter drop\n\t}\n"
        ));
        assert!(!script.contains("numgen"));
        assert!(script.ends_with("}\n"));
    }

    #[test]
    fn faults_coexist_and_loss_is_replaced_per_interface() {
        let mut faults = DropFaults {
            cut: Some("sync0".into()),
            loss: Vec::new(),
        };
        faults.set_loss("eth0", 20);
        faults.set_loss("eth0", 30);
        faults.set_loss("sync0", 5);
        assert_eq!(
            faults.describe(),
            "cut sync0, 30% loss on eth0, 5% loss on sync0"
        );
        let script = render(&faults);
        assert!(script.contains("iifname \"eth0\" numgen random mod 100 < 30 counter drop\n"));
        assert!(script.contains("oifname \"eth0\" numgen random mod 100 < 30 counter drop\n"));
        assert!(script.contains("iifname \"sync0\" numgen random mod 100 < 5 counter drop\n"));
        assert!(!script.contains("< 20"));
        assert_eq!(script.matches("counter drop").count(), 6);
        // One table definition, two chains.
        assert_eq!(script.matches("table inet nonstop_fault {").count(), 1);
        assert_eq!(script.matches("type filter hook").count(), 2);
    }
}
