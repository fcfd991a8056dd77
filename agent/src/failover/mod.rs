//! The failover manager: who is master, and what to do when that changes.
//!
//! - [`machine`]: the sans-IO state machine (heartbeats and time in, actions out).
//! - [`driver`]: the tokio task that owns the UDP socket, the timers, netlink and the
//!   fence command, and carries the machine's actions out.

pub mod driver;
pub mod machine;
