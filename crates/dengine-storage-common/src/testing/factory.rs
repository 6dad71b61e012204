//! How the suites get stores: [`StoreFactory`] opens one by name; [`DirFactory`] does it for
//! any backend that opens a store in a directory, [`MemoryFactory`] for `MemoryStore`.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use dengine_core::{LogStore, MemoryStore, StorageError};

/// Opens (or creates) a store in a directory: a backend's `open` or `open_or_create`, or a
/// closure calling its `open_with`/`open_or_create_with` with options.
pub type Opener<S> = fn(&Path) -> Result<S, StorageError>;

/// Opens stores for the conformance suite.
pub trait StoreFactory {
    /// The store under test.
    type Store: LogStore;

    /// Opens the store called `name`: empty the first time a name is used, and with everything
    /// durable from earlier instances when it is opened again. The suite drops every earlier
    /// instance of the store (and its readers) before it reopens one.
    fn open(&mut self, name: &str) -> impl Future<Output = Result<Self::Store, StorageError>>;
}

/// A [`StoreFactory`] that opens the store called `name` in the directory `name` under a
/// temporary directory, with the backend's `open_or_create`.
#[derive(Debug)]
pub struct DirFactory<S> {
    root: tempfile::TempDir,
    open_or_create: Opener<S>,
}

impl<S> DirFactory<S> {
    /// Stores under a new temporary directory (removed when the factory is dropped).
    pub fn new(open_or_create: Opener<S>) -> Self {
        let root = tempfile::tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        DirFactory {
            root,
            open_or_create,
        }
    }
}

impl<S: LogStore> StoreFactory for DirFactory<S> {
    type Store = S;

    async fn open(&mut self, name: &str) -> Result<S, StorageError> {
        (self.open_or_create)(&self.root.path().join(name))
    }
}

/// A [`StoreFactory`] for `MemoryStore`: reopening a name hands out the same store.
#[derive(Debug, Default)]
pub struct MemoryFactory {
    stores: HashMap<String, MemoryStore>,
}

impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn open(&mut self, name: &str) -> Result<MemoryStore, StorageError> {
        Ok(self.stores.entry(name.to_string()).or_default().clone())
    }
}
