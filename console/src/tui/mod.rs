//! The operator TUI: both agents of a pair at a glance, with switchover and fault
//! injection behind confirmations. Shaped like ratatui's async template and oxker.
//!
//! # Layout
//! - [`action`]: one enum of everything that can happen (keys, network reports,
//!   commands).
//! - [`app`]: the loop — events → actions → [`app::App::update`] → draw; never blocks
//!   on the network.
//! - [`model`]: plain data — both nodes' latest status or "unreachable since …",
//!   sessions per node with rates, five minutes of lag history, the merged event log.
//! - [`state`]: UI-only state — focus, overlays, table sort/filter/scroll.
//! - [`net`]: per agent, a worker thread polling status (250 ms) and sessions (1 s)
//!   and carrying out commands, plus an event-stream follower; both reconnect with
//!   exponential backoff (100 ms → 5 s).
//! - [`components`]: one file per panel — `nodes`, `sessions`, `lag`, `events`,
//!   `help`, `confirm`, `inject_menu` — and the screen layout.
//! - [`keys`]: every key binding, in one place (the help overlay reads it too).
//! - [`terminal`]: raw mode and alternate screen in; restored on quit, error and panic.
//! - [`format`]: small text formatters (UTC clock, durations, SI numbers).

pub mod action;
pub mod app;
pub mod components;
pub mod format;
pub mod keys;
pub mod model;
pub mod net;
pub mod state;
pub mod terminal;

#[cfg(test)]
pub(crate) mod fixtures;

pub use app::run;
