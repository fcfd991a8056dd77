//! nonstop's lab: three hosts (`peer`s, `master`, `backup`) and a switch, each a
//! Linux network namespace, on two networks — a service LAN and a separate sync link —
//! so that either can be cut on its own. One implementation serves humans (the
//! `nonstop-lab` binary), tests ([`LabGuard`]), benchmarks and the demo.
//!
//! ```text
//!            nonstop-<name>-switch
//!        br-svc (198.18.L.0/24)         br-sync (198.19.L.0/24)
//!   p1-svc p2-svc … m-svc b-svc          m-sync b-sync
//!     |      |        |     |              |      |
//!   peer   peer2    master backup ------ master backup
//!   .10     .11     eth0 .1 eth0 .2      sync0 .1 sync0 .2     VIP 198.18.L.100
//! ```
//!
//! `L` is `fnv1a32(name) % 250 + 1`. Nothing is created in the root namespace, and
//! [`Lab::down`] removes every namespace, link, rule and process of a lab. Needs root,
//! `ip` (iproute2) and `nft`.
//!
//! # Layout
//! - [`naming`]: lab names, the index `L`, namespaces, address plan, port names (pure).
//! - [`netns`]: running `ip`/`nft` with errors that carry the command and its stderr;
//!   namespaces and their processes; sockets inside a namespace ([`connect_in_netns`]).
//! - [`lab`]: the [`Lab`] handle and [`LabSpec`]; paths, addresses, `exec`/`spawn`.
//! - [`topology`]: [`Lab::up`] (converging, idempotent) and [`Lab::down`].
//! - [`agent_config`]: the `master.toml`/`backup.toml` agent configs (pure).
//! - [`agents`]: starting, stopping and finding the `nonstop-agent` processes.
//! - [`faults`]: failure injection — ports down, nftables drops on the sync bridge,
//!   SIGKILL of a whole host.
//! - [`status`]: [`LabStatus`] (`status.json`, `status --json`) and interface queries
//!   (MAC, addresses, neighbour table).
//! - [`guard`]: [`LabGuard`], [`unique_name`], [`require_root`] for tests.
//!
//! The `nonstop-lab` binary (`src/main.rs`) is only a command line over this library.

#![warn(missing_docs)]

pub mod agent_config;
pub mod agents;
pub mod faults;
pub mod guard;
pub mod lab;
pub mod naming;
pub mod netns;
pub mod status;
pub mod topology;

pub use guard::{require_root, unique_name, LabGuard};
pub use lab::{lab_dir, lab_root, Lab, LabSpec};
pub use naming::{validate_name, Host, Node};
pub use netns::{connect_in_netns, listen_in_netns, run_in_netns, CommandError};
pub use status::{LabStatus, NodeInfo, PeerInfo};
