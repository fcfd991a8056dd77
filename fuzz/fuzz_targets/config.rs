//! Fuzz target `config`: see `nonstop_agent::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nonstop_agent::fuzzing::config(data));
