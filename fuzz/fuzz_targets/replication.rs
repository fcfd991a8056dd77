//! Fuzz target `replication`: see `nonstop_agent::fuzzing::replication`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nonstop_agent::fuzzing::replication(data));
