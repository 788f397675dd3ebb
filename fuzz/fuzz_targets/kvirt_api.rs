//! Hostile sequences of `KVirtArea` and raw page-table cursor operations on
//! an isolated hosted kernel space (the checks live in `kvirt_model::fuzz`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvirt_model::fuzz::kvirt_api(data));
