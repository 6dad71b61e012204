#![no_main]
//! Fuzz target `client`: see `dengine_fuzz::client::client`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::client::client(data));
