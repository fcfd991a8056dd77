//! The lab on the real system: up, reachability, faults, idempotency, repair, down.
//!
//! Needs root (network namespaces). Without root these tests fail with an explanation
//! unless `NONSTOP_SKIP_ROOT_TESTS=1`. Every lab is named `it…` (unique per process
//! and test) and guarded, so a failing test still tears its lab down; sweep leftovers
//! with `nonstop-lab down --all-with-prefix it`.

use nonstop_lab::{netns, require_root, unique_name, Lab, LabGuard, LabSpec, Node};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const PROBE: Duration = Duration::from_millis(500);

/// Whether `host` reaches `ip`, retrying for up to `within` (ARP may need a moment
/// after a link comes back).
fn reaches(lab: &Lab, host: &str, ip: Ipv4Addr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if lab.reachable(host, ip, PROBE).expect("probe") {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lab_namespaces(name: &str) -> Vec<String> {
    let prefix = format!("nonstop-{name}-");
    netns::list_netns()
        .expect("list namespaces")
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect()
}

fn root_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        })
        .collect()
}

#[test]
fn up_reach_cut_heal_down() {
    if !require_root("up_reach_cut_heal_down") {
        return;
    }
    let name = unique_name("it");
    let spec = LabSpec {
        peers: 2,
        ..LabSpec::new(&name)
    };
    let guard = LabGuard::up(&spec).expect("lab up");
    let lab: &Lab = &guard;

    // Shape.
    let status = lab.status().expect("status");
    assert_eq!(status.namespaces.len(), 5, "{:?}", status.namespaces);
    assert_eq!(status.peers.len(), 2);
    assert_eq!(status.nodes.len(), 2);
    assert!(status.faults.is_empty(), "{:?}", status.faults);
    assert_eq!(lab.namespace("master"), format!("nonstop-{name}-master"));
    let l = lab.index();
    assert_eq!(lab.vip(), Ipv4Addr::new(198, 18, l, 100));
    assert_eq!(
        lab.addresses("master", "eth0").expect("addresses"),
        [format!("198.18.{l}.1/24")]
    );
    assert_eq!(
        lab.addresses("backup", "sync0").expect("addresses"),
        [format!("198.19.{l}.2/24")]
    );
    assert_eq!(
        lab.exec_ok("master", &["cat", "/proc/sys/net/ipv4/ip_nonlocal_bind"])
            .expect("sysctl")
            .trim(),
        "1"
    );
    assert!(lab.config_path(Node::Master).exists());
    assert!(lab.dir().join("status.json").exists());
    // Nothing of ours in the root namespace.
    for link in root_links() {
        assert!(
            !(link.starts_with("br-") || link.ends_with("-svc") || link.ends_with("-sync")),
            "lab link {link} in the root namespace"
        );
    }

    // Reachability on both networks.
    assert!(reaches(
        lab,
        "peer",
        lab.service_ip(Node::Master),
        Duration::ZERO
    ));
    assert!(reaches(
        lab,
        "peer2",
        lab.service_ip(Node::Backup),
        Duration::ZERO
    ));
    assert!(reaches(
        lab,
        "master",
        lab.sync_ip(Node::Backup),
        Duration::ZERO
    ));
    assert!(reaches(
        lab,
        "backup",
        lab.sync_ip(Node::Master),
        Duration::ZERO
    ));
    // The peer learned the master's MAC on the way.
    let master_mac = lab.mac_of("master", "eth0").expect("mac");
    assert_eq!(
        lab.neighbour_mac("peer", lab.service_ip(Node::Master))
            .expect("neigh"),
        Some(master_mac)
    );
    assert_eq!(lab.neighbour_mac("peer", lab.vip()).expect("neigh"), None);

    // A real TCP exchange across namespaces.
    let listener = lab
        .listen("master", SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7000)))
        .expect("listen");
    let mut client = lab
        .connect(
            "peer",
            SocketAddr::from((lab.service_ip(Node::Master), 7000)),
            Duration::from_secs(1),
        )
        .expect("connect");
    let (mut server, from) = listener.accept().expect("accept");
    assert_eq!(from.ip(), lab.peer_ip(1));
    client.write_all(b"ping").expect("send");
    let mut buf = [0; 4];
    server.read_exact(&mut buf).expect("receive");
    assert_eq!(&buf, b"ping");
    drop((client, server, listener));

    // Cutting the sync link leaves the service LAN alone.
    lab.cut_sync().expect("cut");
    lab.cut_sync().expect("cut twice is fine");
    assert!(!reaches(
        lab,
        "master",
        lab.sync_ip(Node::Backup),
        Duration::ZERO
    ));
    assert!(!reaches(
        lab,
        "backup",
        lab.sync_ip(Node::Master),
        Duration::ZERO
    ));
    assert!(reaches(
        lab,
        "peer",
        lab.service_ip(Node::Master),
        Duration::ZERO
    ));
    assert!(reaches(
        lab,
        "master",
        lab.service_ip(Node::Backup),
        Duration::ZERO
    ));
    assert_eq!(lab.active_faults().expect("faults").len(), 1);
    lab.heal_sync().expect("heal");
    lab.heal_sync().expect("heal twice is fine");
    assert!(reaches(
        lab,
        "master",
        lab.sync_ip(Node::Backup),
        Duration::from_secs(3)
    ));
    assert!(lab.active_faults().expect("faults").is_empty());

    // Pulling the master's cables.
    lab.set_host_links(Node::Master, false).expect("links down");
    assert!(!reaches(
        lab,
        "peer",
        lab.service_ip(Node::Master),
        Duration::ZERO
    ));
    assert!(!reaches(
        lab,
        "backup",
        lab.sync_ip(Node::Master),
        Duration::ZERO
    ));
    assert!(reaches(
        lab,
        "peer",
        lab.service_ip(Node::Backup),
        Duration::ZERO
    ));
    assert_eq!(lab.active_faults().expect("faults").len(), 2);
    lab.set_host_links(Node::Master, true).expect("links up");
    assert!(reaches(
        lab,
        "peer",
        lab.service_ip(Node::Master),
        Duration::from_secs(3)
    ));

    // `up` again on a live lab changes nothing and keeps it working.
    let again = Lab::up(&spec).expect("second up");
    assert_eq!(&again, lab);
    assert_eq!(lab_namespaces(&name).len(), 5);
    assert!(reaches(
        lab,
        "peer2",
        lab.service_ip(Node::Master),
        Duration::from_secs(1)
    ));

    // A process left running inside is killed by `down`.
    let mut child = lab.spawn("peer", &["sleep", "600"]).expect("spawn");
    let pid = child.id();
    let peer_ns = lab.namespace("peer");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !netns::netns_pids(&peer_ns).expect("pids").contains(&pid) {
        assert!(
            Instant::now() < deadline,
            "sleep {pid} never entered {peer_ns}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    drop(guard);
    assert!(
        lab_namespaces(&name).is_empty(),
        "{:?}",
        lab_namespaces(&name)
    );
    assert!(!nonstop_lab::lab_dir(&name).exists());
    let status = child.wait().expect("wait for sleep");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

#[test]
fn up_repairs_and_down_handles_half_built_labs() {
    if !require_root("up_repairs_and_down_handles_half_built_labs") {
        return;
    }
    let name = unique_name("it");
    let guard = LabGuard::new(&name).expect("lab up");
    let backup_ns = guard.namespace("backup");

    // Damage: a namespace deleted by hand, a port down, a fault left in place.
    netns::del_netns(&backup_ns).expect("delete backup namespace");
    guard.set_port("p1-svc", false).expect("port down");
    guard.cut_sync().expect("cut");
    let repaired = Lab::up(&LabSpec::new(&name)).expect("repairing up");
    assert!(reaches(
        &repaired,
        "peer",
        repaired.service_ip(Node::Backup),
        Duration::from_secs(1)
    ));
    assert!(reaches(
        &repaired,
        "master",
        repaired.sync_ip(Node::Backup),
        Duration::from_secs(1)
    ));
    assert!(repaired.active_faults().expect("faults").is_empty());

    // Half-built: `down` still removes everything and succeeds.
    netns::del_netns(&backup_ns).expect("delete backup namespace");
    Lab::down(&name).expect("down on a half-built lab");
    assert!(lab_namespaces(&name).is_empty());
    // Absent: fine too (the guard's own down runs on an absent lab as well).
    Lab::down(&name).expect("down on an absent lab");
    drop(guard);
    assert!(Lab::open(&name).is_err());
}

#[test]
fn cli_rejects_bad_names_and_downs_absent_labs() {
    let bin = env!("CARGO_BIN_EXE_nonstop-lab");
    let out = Command::new(bin)
        .args(["up", "--name", "Bad_Name"])
        .output()
        .expect("run nonstop-lab");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid lab name") && stderr.contains("[a-z0-9]"),
        "{stderr}"
    );

    let out = Command::new(bin)
        .args(["down", "--name", &unique_name("absent")])
        .env(
            "NONSTOP_LAB_DIR",
            std::env::temp_dir().join("nonstop-lab-absent"),
        )
        .output()
        .expect("run nonstop-lab");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
