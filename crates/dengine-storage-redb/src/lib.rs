//! # dengine-storage-redb
//!
//! A durable [`LogStore`] for dengine on [redb](https://docs.rs/redb) 4 (`storage.backend =
//! "redb"`; the default is the write-ahead log of `dengine-storage-wal`).
//!
//! ## Layout and durability
//!
//! A store is a directory holding a marker file (`DENGINE_STORE`: backend `redb`, format
//! [`FORMAT_VERSION`]) and one redb database file, `log.redb`, with two tables: `entries`
//! (log index → entry record) and `meta` (hard state, compaction point, snapshot meta). Every
//! record is encoded by [`dengine_storage_common::codec`]: versioned, carrying its own index, and
//! sealed with a CRC-32 that is verified on every read; a mismatch is
//! [`StorageError::Corrupt`] naming the file and the index. (redb checksums its pages for
//! crash recovery; the record checksum also catches corruption that happens later, under a
//! clean database.)
//!
//! * [`LogStore::persist`] is **one redb write transaction**: hard state, truncation of the
//!   suffix and the new entries commit atomically. With `must_sync` it commits with
//!   [`redb::Durability::Immediate`] (redb fsyncs before `commit` returns), so it is durable
//!   when the future completes. Without `must_sync` it commits with `Durability::None`: visible
//!   at once, made durable by the next synced commit ([`LogStore::sync`] commits an empty
//!   transaction with `Immediate` durability).
//! * [`LogStore::purge`], [`LogStore::save_snapshot_meta`] and [`LogStore::reset_to_snapshot`]
//!   always commit with `Immediate`.
//! * [`RedbStore`] is [`dengine_storage_common::Store`] over [`RedbLog`]: writes are
//!   **serialized, in call order** without stalling other tasks, reads never block an executor
//!   thread, the calls must be made inside a tokio runtime, and a panic inside redb (it
//!   `debug_assert`s on some damaged files in debug builds) is returned as
//!   [`StorageError::Backend`] — the same for every backend, see that type.
//! * The [`RedbReader`] (the core's synchronous [`LogReader`]) reads through short redb read
//!   transactions, served from redb's cache, without waiting for a write's fsync. A read that
//!   races with a truncation or purge of the very entries it asks for may fail with
//!   `Unavailable`; the core treats that like any other missing entry.
//!
//! ## Opening
//!
//! [`RedbStore::open_or_create`] creates a store in an empty or missing directory;
//! [`RedbStore::open`] only opens an existing one and fails with [`StorageError::NotFound`]
//! if the directory (or the database file in it) is gone — a node whose log vanished must not
//! silently restart with an empty log, forgetting the votes it cast. A directory written by
//! another backend or a newer format is refused with [`StorageError::FormatMismatch`]. Opening
//! blocks (it may recover a crashed database); do it before starting the node. A new store's
//! marker is written last, after the database file exists: a crash in between leaves
//! leftovers that the next `open_or_create` clears (nothing was acknowledged yet), while
//! `open` reports [`StorageError::NotFound`].
//!
//! ```
//! use dengine_core::{Entry, EntryPayload, HardState, LogReader, LogStore, PersistRequest};
//! use dengine_storage_redb::RedbStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let store = RedbStore::open_or_create(dir.path())?;
//!     let reader = store.reader(); // hand this to `Raft::new`
//!     let write = PersistRequest::new(
//!         Some(HardState { term: 1, vote: Some(1), commit: 0 }),
//!         vec![Entry::new(1, 1, EntryPayload::Blank)],
//!         true,
//!     );
//!     store.persist(&write).await?; // durable now
//!     assert_eq!(reader.last_index(), 1);
//!     Ok::<_, dengine_core::StorageError>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! (In a real runtime the `PersistRequest` comes from `Ready::persist`.)
//!
//! ## Implementing `LogStore` for another database
//!
//! This crate is meant to be read as a template. The steps are listed in
//! [`dengine_core::store`]; here they are the [`SyncLog`] implementation of [`RedbLog`] (step 2
//! in its `persist`), [`dengine_storage_common::Store`] (steps 3 to 5) and the suites in
//! `tests/storage.rs` (step 6).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::ops::Range;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use dengine_core::store::{LogReader, LogStore};
use dengine_core::store::{PersistRequest, SnapshotMeta, StorageError, StoredState};
use dengine_core::{Entry, EntryId, LogIndex, Term};
use dengine_storage_common::marker::DirState;
use dengine_storage_common::{Bounds, Reader, Store, StoreKind, SyncLog};
use dengine_storage_common::{codec, engine_error, io_error};
use parking_lot::RwLock;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

/// Name of this backend in the marker file.
pub const BACKEND: &str = "redb";
/// On-disk format version written and read by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the database file inside the store directory.
pub const DB_FILE: &str = "log.redb";

/// A [`LogStore`] on redb. Cheap to clone; clones share the database.
pub type RedbStore = Store<RedbLog>;
/// The synchronous [`LogReader`] view of a [`RedbStore`].
pub type RedbReader = Reader<RedbLog>;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HARD_STATE: &str = "hard_state";
const COMPACTED: &str = "compacted";
const SNAPSHOT_META: &str = "snapshot_meta";

/// The redb database behind a [`RedbStore`]: the [`SyncLog`] that
/// [`Store`] runs. Use it through `RedbStore`.
pub struct RedbLog {
    db: ClosingDb,
    file: PathBuf,
    /// The log's shape, so that `first_index`/`last_index` need no database read. Readers copy
    /// it and read through their own redb transaction; the writer replaces it after a commit.
    bounds: RwLock<Bounds>,
}

impl RedbLog {
    fn read_txn(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.db
            .begin_read()
            .map_err(engine_error(&self.file, "reading"))
    }

    /// Opens a table for reading; `None` if it was never created (a fresh database).
    fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StorageError> {
        match txn.open_table(table) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(engine_error(&self.file, "opening a table in")(e)),
        }
    }

    /// Reads a metadata record and decodes it with `decode`; `None` if it was never written.
    fn meta<T>(
        &self,
        txn: &redb::ReadTransaction,
        record: &'static str,
        decode: fn(&[u8]) -> Result<T, codec::CodecError>,
    ) -> Result<Option<T>, StorageError> {
        let Some(meta) = self.open_read(txn, META)? else {
            return Ok(None);
        };
        let value = meta
            .get(record)
            .map_err(engine_error(&self.file, "reading"))?;
        value
            .map(|v| decode(v.value()).map_err(|e| e.in_record(&self.file, record)))
            .transpose()
    }

    /// Reads the compaction point and the stored entries' span, refusing a log with holes.
    fn load_bounds(&self) -> Result<Bounds, StorageError> {
        let txn = self.read_txn()?;
        let compacted = self
            .meta(&txn, COMPACTED, codec::decode_entry_id)?
            .unwrap_or(EntryId::ZERO);
        let span = match self.open_read(&txn, ENTRIES)? {
            None => None,
            Some(entries) => {
                let read_err = engine_error(&self.file, "reading");
                let first = entries.first().map_err(&read_err)?;
                let last = entries.last().map_err(&read_err)?;
                let len = entries.len().map_err(&read_err)?;
                first
                    .zip(last)
                    .map(|((first, _), (last, _))| (first.value(), last.value(), len))
            }
        };
        Bounds::from_stored(&self.file, compacted, span)
    }

    /// Runs `write` in one write transaction with the given durability and commits it.
    fn transaction(
        &self,
        op: &'static str,
        durability: Durability,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StorageError> {
        let err = |e: redb::Error| engine_error(&self.file, op)(e);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        write(&txn).map_err(err)?;
        txn.commit().map_err(|e| err(e.into()))
    }
}

/// redb's `Database`, closed under `catch_unwind`: closing runs a last commit of redb's own
/// bookkeeping, and on a damaged file redb 4.6 can panic there (an index out of bounds in its
/// page allocator, found by the `redb_recovery` fuzz target) — a store being dropped must not
/// take the process down. The panic hook has already reported it; the log loses nothing,
/// since every `persist` committed durably before returning.
struct ClosingDb(Option<Database>);

impl std::ops::Deref for ClosingDb {
    type Target = Database;

    fn deref(&self) -> &Database {
        match &self.0 {
            Some(db) => db,
            None => unreachable!("the database is taken only when the store is dropped"),
        }
    }
}

impl Drop for ClosingDb {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        }
    }
}

impl std::fmt::Debug for ClosingDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Database")
    }
}

impl RedbLog {
    /// The log in `db` (opened from `file`, which errors name).
    fn with_database(db: Database, file: PathBuf) -> Result<Self, StorageError> {
        let log = RedbLog {
            db: ClosingDb(Some(db)),
            file,
            bounds: RwLock::new(Bounds::EMPTY),
        };
        *log.bounds.write() = log.load_bounds()?;
        Ok(log)
    }
}

impl SyncLog for RedbLog {
    const KIND: StoreKind = StoreKind::new(BACKEND, FORMAT_VERSION, &[DB_FILE]);
    type Options = ();

    fn open(dir: &Path, state: DirState, (): ()) -> Result<Self, StorageError> {
        let file = dir.join(DB_FILE);
        let exists = file.try_exists().map_err(io_error(&file, "looking for"))?;
        // A marker without its database means the database was deleted: refuse rather than
        // start over with an empty log, which would forget the votes this node cast.
        if state == DirState::Existing && !exists {
            return Err(StorageError::NotFound { path: file });
        }
        let db = if state == DirState::Existing {
            Database::open(&file)
        } else {
            Database::create(&file)
        }
        .map_err(engine_error(&file, "opening"))?;
        RedbLog::with_database(db, file)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let bounds = self.bounds();
        if index == bounds.compacted.index {
            return Ok(bounds.compacted.term);
        }
        let entries = self.read(index..index + 1, 0)?;
        entries
            .first()
            .map(|e| e.term)
            .ok_or_else(|| bounds.vanished(index))
    }

    fn read(&self, range: Range<LogIndex>, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let (low, high) = (range.start, range.end);
        let bounds = self.bounds();
        bounds.check_read(low, high)?;
        let mut out = Vec::new();
        if low == high {
            return Ok(out);
        }
        let txn = self.read_txn()?;
        let Some(table) = self.open_read(&txn, ENTRIES)? else {
            return Err(bounds.vanished(low));
        };
        let read_err = engine_error(&self.file, "reading");
        let mut bytes = 0u64;
        for (expected, item) in (low..).zip(table.range(low..high).map_err(&read_err)?) {
            let (key, value) = item.map_err(&read_err)?;
            let index = key.value();
            if index != expected {
                // Entries vanished under us: a concurrent truncation or purge.
                return Err(bounds.vanished(expected));
            }
            let entry = codec::decode_entry(value.value(), index)
                .map_err(|e| e.in_entry(&self.file, index))?;
            bytes = bytes.saturating_add(entry.size_bytes());
            if bytes > max_bytes && index > low {
                break;
            }
            out.push(entry);
        }
        if out.is_empty() {
            return Err(bounds.vanished(low));
        }
        Ok(out)
    }

    fn load_state(&self) -> Result<StoredState, StorageError> {
        let bounds = self.bounds();
        let txn = self.read_txn()?;
        let hard_state = self.meta(&txn, HARD_STATE, codec::decode_hard_state)?;
        let snapshot = self.meta(&txn, SNAPSHOT_META, codec::decode_snapshot_meta)?;
        Ok(bounds.stored_state(hard_state, snapshot))
    }

    /// One `PersistRequest` = one write transaction = (with `must_sync`) one fsync: with
    /// `Durability::Immediate` redb fsyncs before `commit` returns; with `Durability::None`
    /// the commit is visible at once and made durable by the next synced commit.
    fn persist(&self, req: &PersistRequest) -> Result<(), StorageError> {
        let bounds = self.bounds();
        let after = bounds.after_persist(req)?;
        let durability = if req.must_sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.transaction("writing", durability, |txn| {
            if let Some(hs) = &req.hard_state {
                txn.open_table(META)?
                    .insert(HARD_STATE, codec::encode_hard_state(hs).as_slice())?;
            }
            if let Some(first) = req.entries.first() {
                let mut table = txn.open_table(ENTRIES)?;
                if first.index <= bounds.last_index {
                    // Entries overwrite: drop the whole old suffix, not only the keys the new
                    // entries replace, or a shorter new suffix would leave stale entries.
                    table.retain_in(first.index.., |_, _| false)?;
                }
                for entry in &req.entries {
                    table.insert(entry.index, codec::encode_entry(entry).as_slice())?;
                }
            }
            Ok(())
        })?;
        *self.bounds.write() = after;
        Ok(())
    }

    fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let bounds = self.bounds();
        let Some(up_to) = bounds.purge_point(up_to) else {
            return Ok(());
        };
        let compacted = EntryId::new(self.term(up_to)?, up_to);
        self.transaction("purging", Durability::Immediate, |txn| {
            txn.open_table(ENTRIES)?.retain_in(..=up_to, |_, _| false)?;
            txn.open_table(META)?
                .insert(COMPACTED, codec::encode_entry_id(compacted).as_slice())?;
            Ok(())
        })?;
        self.bounds.write().compacted = compacted;
        Ok(())
    }

    /// Records `meta` (and, for a reset, restarts the log right after it) in one durable
    /// transaction.
    fn snapshot(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        let after = self
            .bounds()
            .after_snapshot(meta, reset, |index| self.term(index))?;
        let at = meta.last_included;
        self.transaction("saving snapshot meta in", Durability::Immediate, |txn| {
            let mut table = txn.open_table(META)?;
            table.insert(SNAPSHOT_META, codec::encode_snapshot_meta(meta).as_slice())?;
            if reset {
                table.insert(COMPACTED, codec::encode_entry_id(at).as_slice())?;
                txn.open_table(ENTRIES)?.retain(|_, _| false)?;
            }
            Ok(())
        })?;
        *self.bounds.write() = after;
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        // An empty commit with Immediate durability makes every earlier `Durability::None`
        // commit durable too (redb persists the whole committed state).
        self.transaction("syncing", Durability::Immediate, |_| Ok(()))
    }

    fn path(&self) -> &Path {
        &self.file
    }

    fn bounds(&self) -> Bounds {
        *self.bounds.read()
    }
}

#[cfg(test)]
mod power_loss;
