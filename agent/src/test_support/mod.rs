//! Helpers shared by the crate's unit tests.

pub mod segment;
