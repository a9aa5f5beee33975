//! libFuzzer target: see `nst_fuzz::args`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nst_fuzz::args(data));
