//! Arbitrary words through the x86-64 PTE decoder and back (the checks live
//! in `kvirt_model::fuzz`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvirt_model::fuzz::pte_decode(data));
