//! The binary layout of recovery records (being written).
