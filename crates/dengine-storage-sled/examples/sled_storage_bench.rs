//! Synced-append throughput of the sled backend next to the disk's raw fdatasync rate:
//! `cargo xtask bench storage` or
//! `cargo run --release -p dengine-storage-sled --example sled_storage_bench -- [--seconds N] [--dir PATH]`.

use dengine_storage_sled::SledStore;

fn main() {
    dengine_storage_common::bench::main("sled", |dir| SledStore::open_or_create(dir));
}
