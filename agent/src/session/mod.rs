//! The session manager: intercepts the service's TCP traffic, tracks each session's
//! recovery data, replicates it to the backup and keeps it on disk.
//!
//! - [`tracker`]: the sans-IO TCP session tracker (packet in, records out).
//! - [`table`]: the backup-side table that applies records.
//! - [`store`]: local persistence (append log + compaction).

pub mod store;
pub mod table;
pub mod tracker;
