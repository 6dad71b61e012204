#![no_main]
//! Fuzz target `wal_recovery`: see `dengine_fuzz::storage::wal_recovery`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dengine_fuzz::storage::wal_recovery(data));
