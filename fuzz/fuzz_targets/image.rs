//! libFuzzer target: see `nst_fuzz::image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nst_fuzz::image(data));
