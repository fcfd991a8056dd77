//! Fuzz target `heartbeat`: see `nonstop_agent::fuzzing::heartbeat`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nonstop_agent::fuzzing::heartbeat(data));
