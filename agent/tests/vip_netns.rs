//! Root-only end-to-end test of `nonstop_agent::vip` in throw-away network namespaces.
//!
//! Topology (every namespace is created here and deleted by a guard, also on failure;
//! nothing is done in the caller's namespace; only 198.18.0.0/15 is used):
//!
//! ```text
//!   nonstop-vipt-PID-m          nonstop-vipt-PID-p            nonstop-vipt-PID-n
//!   vm (VIP goes here) ─veth─ vbm ─┐                ┌─ vbn ─veth─ vn 198.18.250.3/24
//!                                  └──── br0 ───────┘
//! ```
//!
//! `m` plays the new master: the VIP is added/removed there over netlink and the GARP
//! leaves from there. `p` is a bridge and the capture point. `n` is a neighbour whose
//! ARP entry for the VIP points at a stale MAC and must be corrected by the GARP.
//!
//! Needs root (namespaces, `CAP_NET_RAW`) and `ip` (iproute2). Without root it fails
//! with a clear message, unless `NONSTOP_SKIP_ROOT_TESTS=1`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use etherparse::{ArpOperation, EtherType, LinkSlice, NetSlice, SlicedPacket};
use nonstop_agent::vip::{garp_frame, GarpSender, LinkInfo, Netlink, VipError, GARP_FRAME_LEN};
use nonstop_shared::config::Vip;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

const VIP: Vip = Vip {
    addr: Ipv4Addr::new(198, 18, 250, 100),
    prefix: 24,
};
const STALE_MAC: &str = "02:00:00:00:00:99";

/// Deletes the namespaces it names when dropped (test passed or panicked).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(suffixes: &[&str]) -> Namespaces {
        let mut guard = Namespaces { names: Vec::new() };
        for suffix in suffixes {
            let name = format!("nonstop-vipt-{}-{suffix}", std::process::id());
            // Registered before creation: a half-created namespace is still removed.
            guard.names.push(name.clone());
            ip(&["netns", "add", &name]);
        }
        guard
    }

    fn name(&self, suffix: &str) -> &str {
        let wanted = format!("-{suffix}");
        self.names
            .iter()
            .find(|n| n.ends_with(&wanted))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no namespace with suffix {suffix}"))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            // Deleting a namespace also destroys its veth ends and the bridge.
            let status = Command::new("ip").args(["netns", "del", name]).status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("warning: could not delete network namespace {name}: {status:?}");
            }
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure; returns stdout.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `ip {}` (is iproute2 installed?): {e}",
            args.join(" ")
        )
    });
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: plain syscall on a valid fd; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs async `f` on a current-thread runtime on a thread inside namespace `ns`.
fn block_in_netns<T, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    in_netns(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(f())
    })
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON from ip ({e}): {text}"))
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `ip -j addr show dev IF` in `ns` lists `vip` with its prefix length.
fn ip_shows_vip(ns: &str, ifname: &str) -> bool {
    let out = json(&ip(&["-n", ns, "-j", "addr", "show", "dev", ifname]));
    out.as_array().into_iter().flatten().any(|link| {
        link["addr_info"].as_array().into_iter().flatten().any(|a| {
            a["family"] == "inet"
                && a["local"] == VIP.addr.to_string()
                && a["prefixlen"] == u64::from(VIP.prefix)
        })
    })
}

/// The lladdr of the neighbour entry for the VIP in `ns` on `ifname`, if any.
fn neighbour_lladdr(ns: &str, ifname: &str) -> Option<String> {
    let vip = VIP.addr.to_string();
    let out = json(&ip(&["-n", ns, "-j", "neigh", "show", &vip, "dev", ifname]));
    out.as_array()?.first()?["lladdr"]
        .as_str()
        .map(str::to_owned)
}

/// An AF_PACKET socket in the current namespace receiving every frame on `ifindex`.
///
/// `ETH_P_ALL`, not `ETH_P_ARP`: on a bridge port the bridge consumes the frame before
/// protocol-specific packet sockets see it; only "all" taps run before it.
fn frame_capture(ifindex: u32) -> Socket {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    let socket = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(protocol))),
    )
    .expect("capture socket");
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll fits in sockaddr_storage and all zeros is a valid value.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = protocol;
    ll.sll_ifindex = ifindex as libc::c_int;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: an initialised sockaddr_ll of `len` bytes.
    let address = unsafe { SockAddr::new(storage, len) };
    socket.bind(&address).expect("bind capture socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    socket
}

/// Reads frames from `capture` for up to `limit`, returning the first GARP for the VIP.
fn wait_for_garp(capture: &Socket, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 2048];
    while Instant::now() < deadline {
        match std::io::Read::read(&mut &*capture, &mut buffer) {
            Ok(n) => {
                let frame = &buffer[..n];
                if let Ok(p) = SlicedPacket::from_ethernet(frame) {
                    if let Some(NetSlice::Arp(arp)) = &p.net {
                        if arp.sender_protocol_addr() == VIP.addr.octets() {
                            return Some(frame.to_vec());
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("capture failed: {e}"),
        }
    }
    None
}

fn assert_is_announcement(frame: &[u8], mac: [u8; 6]) {
    assert_eq!(
        frame.len(),
        GARP_FRAME_LEN,
        "veth does not pad: the frame arrives as sent"
    );
    let p = SlicedPacket::from_ethernet(frame).expect("captured frame parses");
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("captured frame is not Ethernet II")
    };
    assert_eq!(eth.destination(), [0xff; 6]);
    assert_eq!(eth.source(), mac);
    assert_eq!(eth.ether_type(), EtherType::ARP);
    let Some(NetSlice::Arp(arp)) = &p.net else {
        panic!("captured frame is not ARP")
    };
    assert_eq!(arp.operation(), ArpOperation::REQUEST);
    assert_eq!(arp.sender_hw_addr(), mac);
    assert_eq!(arp.sender_protocol_addr(), VIP.addr.octets());
    assert_eq!(arp.target_hw_addr(), [0; 6]);
    assert_eq!(arp.target_protocol_addr(), VIP.addr.octets());
}

/// Sends one GARP for the VIP from `vm` in namespace `ns`.
fn send_garp(ns: &str, link: LinkInfo) {
    in_netns(ns, move || {
        let sender = GarpSender::open(link.index).expect("open GARP socket");
        assert_eq!(sender.ifindex(), link.index);
        sender
            .send(&garp_frame(link.mac, VIP.addr))
            .expect("send GARP");
    });
}

/// Points the neighbour entry for the VIP in `ns` at [`STALE_MAC`] (state stale), waits
/// `settle`, sends a GARP from `master`, and returns the entry's lladdr afterwards (polling
/// up to 1 s for it to change).
fn poison_then_announce(
    ns: &str,
    ifname: &str,
    master: &str,
    link: LinkInfo,
    settle: Duration,
) -> Option<String> {
    let vip = VIP.addr.to_string();
    ip(&[
        "-n", ns, "neigh", "replace", &vip, "lladdr", STALE_MAC, "dev", ifname, "nud", "stale",
    ]);
    assert_eq!(neighbour_lladdr(ns, ifname).as_deref(), Some(STALE_MAC));
    thread::sleep(settle);
    send_garp(master, link);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let lladdr = neighbour_lladdr(ns, ifname);
        if lladdr.as_deref() != Some(STALE_MAC) || Instant::now() > deadline {
            return lladdr;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vip_add_remove_and_garp_in_network_namespaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("NONSTOP_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: vip_netns needs root (NONSTOP_SKIP_ROOT_TESTS=1)");
            return;
        }
        panic!(
            "vip_netns must run as root (it creates network namespaces and raw sockets); \
             run it as root or set NONSTOP_SKIP_ROOT_TESTS=1 to skip it"
        );
    }

    let namespaces = Namespaces::create(&["m", "p", "n"]);
    let (m, p, n) = (
        namespaces.name("m"),
        namespaces.name("p"),
        namespaces.name("n"),
    );
    ip(&[
        "-n", m, "link", "add", "vm", "type", "veth", "peer", "name", "vbm", "netns", p,
    ]);
    ip(&[
        "-n", n, "link", "add", "vn", "type", "veth", "peer", "name", "vbn", "netns", p,
    ]);
    ip(&["-n", p, "link", "add", "br0", "type", "bridge"]);
    for port in ["vbm", "vbn"] {
        ip(&["-n", p, "link", "set", port, "master", "br0"]);
        ip(&["-n", p, "link", "set", port, "up"]);
    }
    ip(&["-n", p, "link", "set", "br0", "up"]);
    ip(&["-n", m, "link", "set", "vm", "up"]);
    ip(&["-n", n, "addr", "add", "198.18.250.3/24", "dev", "vn"]);
    ip(&["-n", n, "link", "set", "vn", "up"]);

    // Netlink: link info, then the add/remove cycle, checked against `ip`.
    let m_owned = m.to_owned();
    let (link, steps) = block_in_netns(m, move || async move {
        let netlink = Netlink::connect().expect("netlink connect");
        let link = netlink.link("vm").await.expect("link vm");
        let missing = netlink.link("nonstop-nope").await;
        assert!(
            matches!(&missing, Err(VipError::NoSuchInterface { ifname }) if ifname == "nonstop-nope"),
            "{missing:?}"
        );
        let lo = netlink.link("lo").await;
        assert!(matches!(lo, Err(VipError::NotEthernet { .. })), "{lo:?}");

        let mut steps = Vec::new();
        assert!(!netlink
            .has_address(link.index, VIP)
            .await
            .expect("has_address"));
        steps.push(("add", netlink.add_vip(link.index, VIP).await.expect("add")));
        let present = netlink
            .has_address(link.index, VIP)
            .await
            .expect("has_address");
        assert!(present, "has_address after add");
        let shown = ip_shows_vip(&m_owned, "vm");
        assert!(shown, "`ip addr` does not show {VIP} after add_vip");
        let other_prefix = Vip { prefix: 16, ..VIP };
        assert!(!netlink
            .has_address(link.index, other_prefix)
            .await
            .expect("has_address /16"));
        steps.push((
            "add again",
            netlink.add_vip(link.index, VIP).await.expect("add again"),
        ));
        steps.push((
            "remove",
            netlink.remove_vip(link.index, VIP).await.expect("remove"),
        ));
        assert!(!netlink
            .has_address(link.index, VIP)
            .await
            .expect("has_address"));
        assert!(
            !ip_shows_vip(&m_owned, "vm"),
            "`ip addr` still shows {VIP} after remove_vip"
        );
        steps.push((
            "remove again",
            netlink
                .remove_vip(link.index, VIP)
                .await
                .expect("remove again"),
        ));
        let bad = netlink.add_vip(999_999, VIP).await;
        assert!(
            matches!(&bad, Err(e @ VipError::AddAddress { .. }) if e.to_string().contains("198.18.250.100/24")),
            "{bad:?}"
        );
        // Leave the VIP configured for the GARP part, as a promotion would.
        assert!(netlink.add_vip(link.index, VIP).await.expect("re-add"));
        (link, steps)
    });
    assert_eq!(
        steps,
        [
            ("add", true),
            ("add again", false),
            ("remove", true),
            ("remove again", false)
        ]
    );

    // The MAC and index netlink reported are the ones `ip` reports.
    let shown = json(&ip(&["-n", m, "-j", "link", "show", "dev", "vm"]));
    assert_eq!(shown[0]["address"], mac_string(link.mac), "{shown}");
    assert_eq!(shown[0]["ifindex"], u64::from(link.index), "{shown}");
    assert!(link.oper_up, "vm should be up with carrier: {shown}");

    // GARP: capture on the bridge port facing `m`.
    let vbm_index = json(&ip(&["-n", p, "-j", "link", "show", "dev", "vbm"]))[0]["ifindex"]
        .as_u64()
        .expect("vbm ifindex") as u32;
    let capture = in_netns(p, move || frame_capture(vbm_index));
    send_garp(m, link);
    let frame = wait_for_garp(&capture, Duration::from_secs(3)).expect("no GARP captured on vbm");
    assert_is_announcement(&frame, link.mac);

    // The neighbour's stale entry is corrected. First without waiting for locktime
    // (informational: kernels since 4.13 override on a GARP regardless of locktime),
    // then after waiting past locktime (1 s by default), which must always work.
    let our_mac = mac_string(link.mac);
    let at_once = poison_then_announce(n, "vn", m, link, Duration::ZERO);
    eprintln!(
        "neighbour entry after a GARP within locktime: {at_once:?} (ours: {our_mac}, stale: {STALE_MAC})"
    );
    let after_locktime = poison_then_announce(n, "vn", m, link, Duration::from_millis(1200));
    assert_eq!(
        after_locktime.as_deref(),
        Some(our_mac.as_str()),
        "GARP did not update the neighbour"
    );

    drop(capture);
    drop(namespaces);
}
