//! Fuzz target `record`: see `nonstop_agent::fuzzing::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nonstop_agent::fuzzing::record(data));
