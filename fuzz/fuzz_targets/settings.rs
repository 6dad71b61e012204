#![no_main]
//! Fuzz target `settings`: see `dengine_fuzz::settings::settings`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::settings::settings(data));
