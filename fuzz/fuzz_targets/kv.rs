#![no_main]
//! Fuzz target `kv`: see `dengine_fuzz::kv::kv`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::kv::kv(data));
