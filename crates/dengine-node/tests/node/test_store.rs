//! A `MemoryStore` wrapper for runtime tests: a disk that can fail, hold writes until released
//! (a slow fsync), and records every synced write it carried out.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dengine_core::store::MemoryStore;
use dengine_core::{
    Entry, LogIndex, LogStore, PersistRequest, SnapshotMeta, StorageError, StoredState,
};
use tokio::sync::Semaphore;

/// See the module docs. Clones share everything.
#[derive(Clone)]
pub(crate) struct TestStore {
    inner: MemoryStore,
    /// Every `persist` fails once set (a dying disk).
    pub(crate) fail: Arc<AtomicBool>,
    /// While set, synced writes wait for a permit of `gate` (see [`TestStore::release`]).
    hold: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    /// The indexes of the entries of every synced write carried out, in order.
    pub(crate) synced_writes: Arc<Mutex<Vec<Vec<LogIndex>>>>,
}

impl Default for TestStore {
    fn default() -> Self {
        TestStore {
            inner: MemoryStore::new(),
            fail: Arc::default(),
            hold: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            synced_writes: Arc::default(),
        }
    }
}

impl TestStore {
    /// From now on synced writes wait until released.
    pub(crate) fn hold_writes(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Lets writes through again, the held ones included.
    pub(crate) fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// The synced writes that carried entries, as their entries' indexes.
    pub(crate) fn entry_writes(&self) -> Vec<Vec<LogIndex>> {
        let writes = self.synced_writes.lock().unwrap();
        writes.iter().filter(|w| !w.is_empty()).cloned().collect()
    }
}

impl LogStore for TestStore {
    type Reader = MemoryStore;

    fn reader(&self) -> MemoryStore {
        self.inner.reader()
    }
    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send {
        self.inner.load_state()
    }
    fn persist(
        &self,
        req: &PersistRequest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let this = self.clone();
        let req = req.clone();
        async move {
            if this.fail.load(Ordering::SeqCst) {
                return Err(StorageError::Io {
                    path: "/dev/broken".into(),
                    op: "writing",
                    source: std::io::Error::other("injected disk failure").into(),
                });
            }
            if req.must_sync {
                if this.hold.load(Ordering::SeqCst) {
                    let permit = this.gate.acquire().await.expect("the gate is never closed");
                    permit.forget();
                }
                let indexes = req.entries.iter().map(|e| e.index).collect();
                this.synced_writes.lock().unwrap().push(indexes);
            }
            this.inner.persist(&req).await
        }
    }
    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>> + Send {
        self.inner.read_entries(low, high, max_bytes)
    }
    fn purge(&self, up_to: LogIndex) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.inner.purge(up_to)
    }
    fn save_snapshot_meta(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.inner.save_snapshot_meta(meta)
    }
    fn reset_to_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.inner.reset_to_snapshot(meta)
    }
    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.inner.sync()
    }
}
