//! libFuzzer target: see `nst_fuzz::weights`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nst_fuzz::weights(data));
