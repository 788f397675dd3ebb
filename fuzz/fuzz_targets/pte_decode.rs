//! Arbitrary words through the x86-64 PTE decoder and back (the checks live
//! in `fuzz/fuzz_logic.rs`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_logic::pte_decode(data));
