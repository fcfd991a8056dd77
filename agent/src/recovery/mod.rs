//! Session recovery on a new master (design §4): forging the peer's handshake into
//! the local stack and translating every later segment between the peer's view of the
//! session and the restored socket's. Sans-IO.
//!
//! - [`forge`]: builds the forged SYN and ACK, and recognises the app kernel's SYN-ACK.
//! - [`translate`]: per-session sequence/ack/SACK/window/timestamp translation.
//! - [`freeze`]: zero-window segments for a planned switchover's drain.
//! - [`feed`]: feeding the restored service the input its predecessor had not read.
//! - [`tail`]: delivering the replicated tail to the peer reliably (window, duplicate
//!   ACKs, retransmission timer).
//! - [`divergence`]: proving, right after a restore, that the peer saw nothing the
//!   replica lacks (async mode), and the resets that end a session when it did.
//!
//! Packets are read and written with [`crate::tcp`] (`segment`, `options`, `wire`).

pub mod divergence;
pub mod feed;
pub mod forge;
pub mod freeze;
pub mod tail;
pub mod translate;

#[cfg(test)]
mod tests;
