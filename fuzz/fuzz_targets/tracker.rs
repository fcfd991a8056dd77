//! Fuzz target `tracker`: see `nonstop_agent::fuzzing::tracker`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nonstop_agent::fuzzing::tracker(data));
