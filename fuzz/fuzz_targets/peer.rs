#![no_main]
//! Fuzz target `peer`: see `dengine_fuzz::peer::peer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::peer::peer(data));
