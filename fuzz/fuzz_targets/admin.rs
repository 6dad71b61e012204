#![no_main]
//! Fuzz target `admin`: see `dengine_fuzz::admin::admin`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::admin::admin(data));
