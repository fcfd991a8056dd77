//! The failover driver (being written).
