//! Issue 17: `nonstop-agent --check` checks the host (on a lab node: all pass; with a
//! missing interface or a foreign sync address: the failing check is named, exit 1),
//! and `nonstop-console check` names a mismatched heartbeat interval between agents.

use nonstop_e2e::*;
use nonstop_lab::{Lab, Node};
use nonstop_shared::config::AgentConfig;
use std::process::Command;
use std::time::Duration;

/// Runs `nonstop-agent --check` on `config` inside `node`'s namespace.
fn agent_check(lab: &Lab, node: Node, config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.namespace(node.as_str())])
        .arg(bin("nonstop-agent"))
        .arg("--config")
        .arg(config)
        .arg("--check")
        .output()
        .expect("run nonstop-agent --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_passes_on_lab_nodes_and_names_what_is_broken() {
    if !require_root() {
        return;
    }
    let lab = lab_with_agents("hchk", 100, 3);
    for node in [Node::Master, Node::Backup] {
        // With the agents running (their queue bound, their ports taken) too.
        let (code, out) = agent_check(&lab, node, &lab.config_path(node));
        assert_eq!(code, Some(0), "{node}:\n{out}");
        let checks: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with('✔') || l.starts_with('✘'))
            .collect();
        assert_eq!(checks.len(), 15, "{out}");
        assert!(checks.iter().all(|l| l.starts_with('✔')), "{out}");
        for name in [
            "service interface",
            "VIP fits the service network",
            "sync address is local",
            "kernel: NFQUEUE",
            "kernel: xtables NFQUEUE target",
            "kernel: socket diagnostics with destroy",
            "capabilities",
            "key file",
        ] {
            assert!(out.contains(&format!("✔ {name}: ")), "{name}:\n{out}");
        }
        if node == Node::Master {
            eprintln!("{out}");
        }
    }

    let base = AgentConfig::load(&lab.config_path(Node::Master)).expect("config");
    let broken = |name: &str, change: &dyn Fn(&mut AgentConfig)| {
        let mut config = base.clone();
        change(&mut config);
        let path = lab.dir().join(format!("broken-{name}.toml"));
        std::fs::write(&path, config.to_toml()).expect("write");
        let (code, out) = agent_check(&lab, Node::Master, &path);
        let failed: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with('✘'))
            .map(str::to_owned)
            .collect();
        (code, failed, out)
    };
    let (code, failed, out) = broken("iface", &|c| c.service.interface = "nosuch0".into());
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed.len(), 2, "{out}");
    assert!(
        failed[0].starts_with("✘ service interface: nosuch0 does not exist"),
        "{out}"
    );
    assert!(
        failed[1].starts_with("✘ VIP fits the service network"),
        "{out}"
    );
    let std::net::IpAddr::V4(own) = base.sync.address.ip() else {
        panic!("the lab is IPv4");
    };
    let [a, b, c, _] = own.octets();
    let foreign = std::net::SocketAddr::from((
        std::net::Ipv4Addr::new(a, b, c, 9),
        base.sync.address.port(),
    ));
    let (code, failed, out) = broken("sync", &|c| c.sync.address = foreign);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].starts_with(&format!(
            "✘ sync address is local: {} (sync.address) is not an address of this host",
            foreign.ip()
        )),
        "{out}"
    );

    // The pair agrees...
    let (ok, out) = console(&lab, &["check"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("✔ master and backup agree"), "{out}");
    // ... until the backup comes back with another heartbeat interval.
    let path = lab.config_path(Node::Backup);
    let mut config = AgentConfig::load(&path).expect("backup config");
    config.sync.heartbeat_ms = 150;
    std::fs::write(&path, config.to_toml()).expect("write");
    lab.stop_agent(Node::Backup, libc::SIGTERM)
        .expect("stop backup");
    lab.start_agent(Node::Backup).expect("start backup");
    let out = wait_for(Duration::from_secs(10), || {
        let (ok, out) = console(&lab, &["check"]);
        (!ok && out.contains("✘")).then_some(out)
    })
    .unwrap_or_else(|e| {
        panic!(
            "console check never reported the mismatch: {e}\n{}",
            logs(&lab)
        )
    });
    assert_eq!(
        out,
        "✘ sync.heartbeat_ms: master has 100, backup has 150 (must be the same on both nodes)\n\
         1 mismatch(es)\n"
    );
    let (ok, json) = console(&lab, &["check", "--json"]);
    assert!(!ok);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(doc["mismatches"][0]["key"], "sync.heartbeat_ms");
    assert_eq!(doc["ok"], false);
}
