//! Replication of recovery records, master → backup, over TCP on the sync link.
//!
//! Three layers, outside in: the authenticated frames of `nonstop_shared::auth`
//! (handshake, tag, counter), the messages inside them ([`wire`]), and the record
//! codec inside a record message (`nonstop_shared::record`).
//!
//! # Layout
//! - [`wire`]: the messages (hello, snapshot marker, records, acks, resync requests).
//! - [`stream`]: the one place frames are opened and sealed (bytes ↔ messages).
//! - [`leader`]: the master's end of a connection, sans-IO: handshake, snapshot
//!   coverage, records out, acks and resync requests in.
//! - [`follower`]: the backup's end, sans-IO: handshake, snapshot in progress, applies
//!   records and acknowledges only what applied; asks for a fresh snapshot otherwise.
//! - [`sender`]: the master's task — persists every record locally and drives a
//!   [`leader::Leader`] over TCP; feeds acks to the interceptor.
//! - [`receiver`]: the backup's task — accepts the master and drives a
//!   [`follower::Follower`] over TCP against the local replica.
//! - [`stats`]: counters and lag, shared with status reporting.
//! - [`hops`]: the sync loop's hops, timed (packet thread → sender → backup → back).

pub mod follower;
pub mod hops;
pub mod leader;
pub mod receiver;
pub mod sender;
pub mod stats;
pub mod stream;
pub mod wire;

#[cfg(test)]
mod tests;
