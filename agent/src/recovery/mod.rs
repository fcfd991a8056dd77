//! Session recovery on a new master (design §4): forging the peer's handshake into
//! the local stack and translating every later segment between the peer's view of the
//! session and the restored socket's. Sans-IO.
//!
//! - [`forge`]: builds the forged SYN and ACK, and recognises the app kernel's SYN-ACK.
//! - [`translate`]: per-session sequence/ack/SACK/window/timestamp translation.
//! - [`freeze`]: zero-window segments for a planned switchover's drain.
//! - [`tail`]: delivering the replicated tail to the peer reliably (window, duplicate
//!   ACKs, retransmission timer).
//! - [`divergence`]: proving, right after a restore, that the peer saw nothing the
//!   replica lacks (async mode), and the resets that end a session when it did.

pub mod divergence;
pub mod forge;
pub mod freeze;
pub mod tail;
pub mod translate;
mod wire;

#[cfg(test)]
mod tests;
