//! The session manager: intercepts the service's TCP traffic, tracks each session's
//! recovery data, replicates it to the backup and keeps it on disk.
//!
//! - [`tracker`]: the sans-IO TCP session tracker (packet in, records out).
//! - [`table`]: the backup-side table that applies records.
//! - [`store`]: local persistence (append log + compaction).
//! - [`replica`]: the table and its store kept in step (this node's persisted copy).
//! - [`persist`]: the thread that writes the store (the disk off the critical path).
//! - [`interceptor`]: the NFQUEUE thread: tracking, record numbering, holding.
//! - [`drain`], [`handover`]: a planned switchover's drain, and the hand-over of the
//!   service's unsent output (read from its sockets in repair mode).
//! - [`risk`]: which sessions a crash could not continue exactly (output not sent,
//!   input not read), marked on the master and reset by the new master.
//! - [`queue_rules`]: the firewall chains that queue the service traffic (fail-closed).

pub mod drain;
pub mod handover;
pub mod interceptor;
pub mod mirror;
pub mod persist;
pub mod queue_rules;
pub mod replica;
pub mod risk;
pub mod roles;
pub mod store;
pub mod table;
pub mod tracker;
pub mod view;
