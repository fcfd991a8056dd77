//! Common types of nonstop: what crosses a wire or a file between its programs.
//!
//! # Layout
//! - [`mode`]: the failover mode of a node (`startup`, `backup`, `master`, `fault`).
//! - [`config`]: the agent's TOML configuration, validated with errors that name the key.
//! - [`heartbeat`]: the binary heartbeat datagram exchanged on the sync link.
//! - [`control`]: the JSON-lines control protocol between console and agent.
//! - [`session`]: per-session recovery data and the records that carry it.
//! - [`record`]: the versioned binary layout of records, for replication and disk.
//!
//! Nothing here does I/O; every decoder rejects bad input with a typed error.

pub mod config;
pub mod control;
pub mod heartbeat;
pub mod mode;
pub mod record;
pub mod session;

pub use mode::Mode;
