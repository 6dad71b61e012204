#![no_main]
//! Fuzz target `record_codec`: see `dengine_fuzz::storage::record_codec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::storage::record_codec(data));
