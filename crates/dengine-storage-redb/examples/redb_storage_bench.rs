//! Synced-append throughput of the redb backend next to the disk's raw fdatasync rate:
//! `cargo xtask bench storage` or
//! `cargo run --release -p dengine-storage-redb --example redb_storage_bench -- [--seconds N] [--dir PATH]`.

use dengine_storage_redb::RedbStore;

fn main() {
    dengine_storage_common::bench::main("redb", |dir| RedbStore::open_or_create(dir));
}
