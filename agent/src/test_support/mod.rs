//! Helpers shared by the crate's unit tests.

pub mod records;
pub mod segment;
