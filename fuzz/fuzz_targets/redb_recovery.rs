#![no_main]
//! Fuzz target `redb_recovery`: see `dengine_fuzz::storage::redb_recovery`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::storage::redb_recovery(data));
