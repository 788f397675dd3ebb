//! Hostile sequences of `KVirtArea` and raw page-table cursor operations on
//! an isolated hosted kernel space (the checks live in `fuzz/fuzz_logic.rs`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_logic::kvirt_api(data));
