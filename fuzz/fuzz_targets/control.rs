//! Fuzz target `control`: see `nonstop_agent::fuzzing::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nonstop_agent::fuzzing::control(data));
