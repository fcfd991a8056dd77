//! Common types of nonstop: what crosses a wire or a file between its programs.
//!
//! # Layout
//! - [`mode`]: the failover mode of a node (`startup`, `backup`, `master`, `fault`).
//! - [`auth`]: the pre-shared key and the authentication of heartbeats, replication
//!   and control connections (HMAC-SHA256, replay protection).
//! - [`config`]: the agent's TOML configuration, validated with errors that name the key.
//! - `man` (feature `man`): man pages from a binary's clap definition.
//! - [`heartbeat`]: the binary heartbeat datagram exchanged on the sync link.
//! - [`control`]: the JSON-lines control protocol between console and agent.
//! - [`session`]: per-session recovery data and the records that carry it.
//! - [`settings`]: an agent's effective settings and the pair comparison of `console check`.
//! - [`record`]: the versioned binary layout of records, for replication and disk.
//! - [`kv`]: the line protocol of `nonstop-kv`, the stateful test service (sans-IO
//!   session, also the oracle of drills and tests).
//!
//! Nothing here does I/O (except reading the key file and the CSPRNG in [`auth`]); every decoder rejects bad input with a typed error.

pub mod auth;
pub mod config;
pub mod control;
pub mod heartbeat;
pub mod kv;
#[cfg(feature = "man")]
pub mod man;
pub mod mode;
pub mod record;
pub mod session;
pub mod settings;

pub use mode::Mode;
