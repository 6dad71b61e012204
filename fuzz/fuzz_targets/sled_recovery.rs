#![no_main]
//! Fuzz target `sled_recovery`: see `dengine_fuzz::storage::sled_recovery`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::storage::sled_recovery(data));
