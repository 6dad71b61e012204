#![no_main]
//! Fuzz target `protocol`: see `dengine_fuzz::protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::protocol(data));
