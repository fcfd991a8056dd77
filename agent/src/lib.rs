//! nonstop-agent: the daemon that runs on the master and on the backup.
//!
//! # Layout
//! - [`agent`]: the one place that assembles the agent: [`agent::Agent::start`] and
//!   [`agent::Agent::run`] (`main.rs` only parses arguments, loads, starts and waits).
//! - [`failover`]: the failover manager — a sans-IO state machine ([`failover::machine`])
//!   and the tokio driver that feeds it heartbeats and time ([`failover::driver`]).
//! - [`vip`]: the virtual IP on the service interface (netlink) and gratuitous ARP
//!   (raw packet socket).
//! - [`session`]: the session manager — interception, tracking, replication, storage.
//! - [`replication`]: records master → backup over TCP on the sync link, with acks.
//! - [`recovery`]: restoring replicated sessions into an unmodified server (sans-IO core).
//! - [`app`]: the application manager — runs the service on the master.
//! - [`sockets`]: the service's TCP sockets through netlink sock_diag (IPv4 and
//!   dual-stack IPv6): listeners, queues, destruction.
//! - [`control`]: the JSON-lines control API the console talks to.
//! - [`events`]: the event log shared by the drivers and the control API.
//! - [`status`]: assembles a node's status from each manager's own part.
//! - [`switchover`]: a planned switchover in one sequence (check, drain, hand over,
//!   thaw), called by the control API.
//! - [`tcp`]: TCP on the wire in one place: header and option parsing, the
//!   interceptor's peek, writing and rewriting packets.
//! - [`host`]: fitting the host — logging, SIGHUP reload, notify hooks, health check.
//! - [`check`]: `--check` host checks (interface, addresses, kernel features, capabilities).
//! - [`metrics`]: Prometheus `/metrics` rendered from the same status as the control API.
//! - [`shutdown`]: the one shutdown path every task listens to.
//! - [`systemd`]: `Type=notify` READY/STATUS/WATCHDOG/STOPPING from the driver's status.
//! - [`fuzzing`]: fuzz targets for every decoder of outside input (`fuzz/`, `scripts/fuzz`).

pub mod agent;
pub mod app;
pub mod check;
pub mod control;
pub mod events;
pub mod failover;
pub mod fuzzing;
pub mod host;
pub mod inject;
pub mod metrics;
pub mod nfqueue;
pub mod recovery;
pub mod replication;
pub mod resources;
pub mod session;
pub mod shutdown;
pub mod sockets;
pub mod status;
pub mod switchover;
pub mod systemd;
pub mod tcp;
pub mod vip;

#[cfg(test)]
pub(crate) mod test_support;
