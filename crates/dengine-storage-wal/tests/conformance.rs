//! The dengine-core `LogStore` conformance suite, run unchanged against `WalStore`: once with
//! the default options and once with tiny segments and a tiny cache, so that segment rolls,
//! purges of whole segments, spare reuse and reads from the files are exercised too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use dengine_core::StorageError;
use dengine_core::store::testing::{StoreFactory, run_conformance};
use dengine_storage_wal::{WalOptions, WalStore};

struct Factory {
    root: tempfile::TempDir,
    options: WalOptions,
}

impl StoreFactory for Factory {
    type Store = WalStore;

    async fn open(&mut self, name: &str) -> Result<WalStore, StorageError> {
        WalStore::open_or_create_with(self.root.path().join(name), self.options.clone())
    }
}

fn run(options: WalOptions) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut factory = Factory {
        root: tempfile::tempdir().unwrap(),
        options,
    };
    runtime.block_on(run_conformance(&mut factory));
}

#[test]
fn wal_store_passes_the_conformance_suite() {
    // 1 MiB segments instead of 64: the suite's stores are many and small.
    run(WalOptions::default().segment_bytes(1 << 20));
}

#[test]
fn wal_store_with_tiny_segments_and_cache_passes_the_conformance_suite() {
    run(WalOptions::default()
        .segment_bytes(4096)
        .cache_bytes(256)
        .max_spare_segments(2));
}
