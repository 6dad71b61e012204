//! The dengine-core `LogStore` conformance suite, run unchanged against `RedbStore`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use dengine_core::StorageError;
use dengine_core::store::testing::{StoreFactory, run_conformance};
use dengine_storage_redb::RedbStore;

struct Factory {
    root: tempfile::TempDir,
}

impl StoreFactory for Factory {
    type Store = RedbStore;

    async fn open(&mut self, name: &str) -> Result<RedbStore, StorageError> {
        RedbStore::open_or_create(self.root.path().join(name))
    }
}

#[test]
fn redb_store_passes_the_conformance_suite() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut factory = Factory {
        root: tempfile::tempdir().unwrap(),
    };
    runtime.block_on(run_conformance(&mut factory));
}
