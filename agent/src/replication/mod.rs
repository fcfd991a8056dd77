//! Replication of recovery records, master → backup, over TCP on the sync link.
//!
//! - [`wire`]: the stream's framing (hello, snapshot marker, records, acks).
//! - [`sender`]: the master side — persists every record locally, streams it to the
//!   backup (a snapshot first on every new connection), feeds acks to the interceptor.
//! - [`receiver`]: the backup side — applies records to its table and store, acks.
//! - [`stats`]: counters and lag, shared with status reporting.

pub mod receiver;
pub mod sender;
pub mod stats;
pub mod wire;
