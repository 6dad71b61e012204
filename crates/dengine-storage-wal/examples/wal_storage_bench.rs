//! Synced-append throughput of the WAL backend next to the disk's raw fdatasync rates:
//! `cargo xtask bench storage` or
//! `cargo run --release -p dengine-storage-wal --example wal_storage_bench -- [--seconds N] [--dir PATH]`.

use dengine_storage_wal::WalStore;

fn main() {
    dengine_storage_common::bench::main("wal", |dir| WalStore::open_or_create(dir));
}
