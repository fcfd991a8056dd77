//! The control API: JSON lines over TCP (see `nonstop_shared::control`).
//!
//! Each connection is served by its own task. Requests that need the failover state
//! go to the failover driver as [`ControlCommand`]s; the event stream comes straight
//! from the [`EventLog`](crate::events::EventLog). Malformed lines get an error reply
//! and are counted; the connection stays open.

mod server;

pub use server::{serve, switchover, ControlCommand, ControlHandle};
