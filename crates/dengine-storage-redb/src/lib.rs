//! # dengine-storage-redb
//!
//! A durable [`LogStore`] for dengine on [redb](https://docs.rs/redb) 4, the default backend.
//!
//! ## Layout and durability
//!
//! A store is a directory holding a marker file (`DENGINE_STORE`: backend `redb`, format
//! [`FORMAT_VERSION`]) and one redb database file, `log.redb`, with two tables: `entries`
//! (log index → entry record) and `meta` (hard state, compaction point, snapshot meta). Every
//! record is encoded by [`dengine_core::store::codec`]: versioned, carrying its own index, and
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
//! * Writes are **serialized, in call order**: each write call takes a ticket when it is
//!   *called* (not when its future is first polled) and starts on tokio's blocking pool
//!   (`spawn_blocking`) right away; the writes then run one at a time in ticket order. So N
//!   concurrent `persist` calls are simply applied one after the other (no speed-up from
//!   issuing them in parallel; the runtime batches instead: one `persist` per `Ready`, many
//!   proposals per `Ready`), and pipelined calls reach the disk in the order they were
//!   made. Each waiting write holds a blocking-pool thread, so keep the number in flight small.
//!   Dropping a write's future does not cancel the write.
//! * All database work runs on the blocking pool, so the futures never block an executor
//!   thread; the calls must be made inside a tokio runtime (outside one they fail with
//!   [`StorageError::Backend`]).
//! * The [`RedbReader`] (the core's synchronous [`LogReader`]) reads through short redb read
//!   transactions, served from redb's cache. A read that races with a truncation or purge of
//!   the very entries it asks for may fail with `Unavailable`; the core treats that like any
//!   other missing entry.
//! * A panic inside redb (it `debug_assert`s on some damaged files in debug builds) is caught
//!   and returned as [`StorageError::Backend`]: a damaged disk never takes the process down.
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
//! use dengine_core::store::testing::persist_request;
//! use dengine_core::{Entry, EntryPayload, HardState, LogReader, LogStore};
//! use dengine_storage_redb::RedbStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let store = RedbStore::open_or_create(dir.path())?;
//!     let reader = store.reader(); // hand this to `Raft::new`
//!     let write = persist_request(
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
//! (In a real runtime the `PersistRequest` comes from `Ready::persist`; `persist_request` is a
//! test helper of dengine-core's `testing` feature.)
//!
//! ## Implementing `LogStore` for another database
//!
//! This crate is meant to be read as a template. The steps are listed in
//! [`dengine_core::store`]; here they are `marker.rs` (step 5) and, in this file,
//! `persist_blocking` (step 2), `Sequencer` and `ordered_write` (step 3) and [`RedbReader`]
//! (step 4).
//! The conformance test is `tests/conformance.rs` (step 6).

use dengine_storage_common::blocking::{self, Sequencer, blocking_read, guarded, ordered_write};
use dengine_storage_common::marker;

use std::future::Future;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dengine_core::store::codec::{self, Marker};
use dengine_core::store::{SnapshotMeta, validate_persist, validate_range, validate_snapshot};
use dengine_core::{
    Entry, EntryId, HardState, LogError, LogIndex, LogReader, LogStore, PersistRequest,
    StorageError, StoredState, Term,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use marker::DirState;

/// Name of this backend in the marker file.
pub const BACKEND: &str = "redb";
/// On-disk format version written and read by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the database file inside the store directory.
pub const DB_FILE: &str = "log.redb";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HARD_STATE: &str = "hard_state";
const COMPACTED: &str = "compacted";
const SNAPSHOT_META: &str = "snapshot_meta";

/// The marker this build writes and accepts.
pub fn marker() -> Marker {
    Marker {
        backend: BACKEND.into(),
        format: FORMAT_VERSION,
    }
}

/// Log bounds, cached so that `first_index`/`last_index` need no database read.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// The last purged entry (`EntryId::ZERO` if none).
    compacted: EntryId,
    last_index: LogIndex,
}

struct Shared {
    db: Database,
    file: PathBuf,
    /// Applies writes one at a time, in the order the calls were made.
    sequencer: Sequencer,
    bounds: Mutex<Bounds>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data updated in one assignment; a panic elsewhere while
    // holding the lock cannot leave them half-written, so poisoning carries no information.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn bounds(&self) -> Bounds {
        *lock(&self.bounds)
    }

    fn backend(&self, op: &'static str) -> impl FnOnce(redb::Error) -> StorageError + '_ {
        move |e| StorageError::Backend {
            path: self.file.clone(),
            op,
            detail: e.to_string(),
        }
    }

    fn corrupt(&self, index: LogIndex, e: codec::CodecError) -> StorageError {
        StorageError::Corrupt {
            path: self.file.clone(),
            index,
            detail: e.0,
        }
    }

    fn corrupt_meta(&self, record: &'static str, e: codec::CodecError) -> StorageError {
        StorageError::CorruptMetadata {
            path: self.file.clone(),
            record,
            detail: e.0,
        }
    }
}

/// A [`LogStore`] on redb. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
}

/// The synchronous [`LogReader`] view of a [`RedbStore`].
#[derive(Clone)]
pub struct RedbReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("file", &self.shared.file)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RedbReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbReader")
            .field("file", &self.shared.file)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty. Blocks.
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), true)
    }

    /// Opens the existing store in `dir`; [`StorageError::NotFound`] if there is none. Blocks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), false)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.file
    }

    fn open_dir(dir: &Path, create: bool) -> Result<Self, StorageError> {
        let state = marker::prepare(dir, &marker(), create, &[DB_FILE])?;
        let file = dir.join(DB_FILE);
        let exists = file.try_exists().map_err(|source| StorageError::Io {
            path: file.clone(),
            op: "looking for",
            source,
        })?;
        // A marker without its database means the database was deleted: refuse rather than
        // start over with an empty log, which would forget the votes this node cast.
        if state == DirState::Existing && !exists {
            return Err(StorageError::NotFound { path: file });
        }
        let opened = catch_unwind(|| {
            if state == DirState::Existing {
                Database::open(&file)
            } else {
                Database::create(&file)
            }
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                return Err(StorageError::Backend {
                    path: file,
                    op: "opening",
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(StorageError::Backend {
                    path: file,
                    op: "opening",
                    detail: "redb panicked while opening the file (it is damaged)".into(),
                });
            }
        };
        if state == DirState::New {
            // The marker goes last: it is what makes the new store exist.
            marker::write(dir, &marker())?;
        }
        let shared = Shared {
            db,
            file,
            sequencer: Sequencer::default(),
            bounds: Mutex::new(Bounds {
                compacted: EntryId::ZERO,
                last_index: 0,
            }),
        };
        let bounds = guarded(&shared, "opening", |s| s.load_bounds())?;
        *lock(&shared.bounds) = bounds;
        Ok(RedbStore {
            shared: Arc::new(shared),
        })
    }
}

/// Runs a synchronous database call, turning a panic inside redb into an error. redb
/// `debug_assert`s on some damaged files (in debug builds only); a damaged disk must not
/// take the process down with it.
impl blocking::Backend for Shared {
    const STORE: &'static str = "RedbStore";
    const DATABASE: &'static str = "redb";

    fn path(&self) -> &Path {
        &self.file
    }

    fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }
}

impl Shared {
    /// Reads the compaction point and the last index, and checks that the entries table is
    /// the contiguous range between them.
    fn load_bounds(&self) -> Result<Bounds, StorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.backend("reading")(e.into()))?;
        let compacted = match open_read(&txn, META, self)? {
            Some(meta) => match meta
                .get(COMPACTED)
                .map_err(|e| self.backend("reading")(e.into()))?
            {
                Some(v) => codec::decode_entry_id(v.value())
                    .map_err(|e| self.corrupt_meta(COMPACTED, e))?,
                None => EntryId::ZERO,
            },
            None => EntryId::ZERO,
        };
        let Some(entries) = open_read(&txn, ENTRIES, self)? else {
            return Ok(Bounds {
                compacted,
                last_index: compacted.index,
            });
        };
        let read_err = |e: redb::StorageError| self.backend("reading")(e.into());
        let first = entries.first().map_err(read_err)?.map(|(k, _)| k.value());
        let last = entries.last().map_err(read_err)?.map(|(k, _)| k.value());
        let len = entries.len().map_err(read_err)?;
        let last_index = match (first, last) {
            (Some(first), Some(last)) => {
                if first != compacted.index + 1 || last - first + 1 != len {
                    return Err(StorageError::CorruptMetadata {
                        path: self.file.clone(),
                        record: "entries",
                        detail: format!(
                            "the log is not contiguous after the compaction point {}: \
                             {len} entries stored from {first} to {last}",
                            compacted.index
                        ),
                    });
                }
                last
            }
            _ => compacted.index,
        };
        Ok(Bounds {
            compacted,
            last_index,
        })
    }

    fn read_range(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        let bounds = self.bounds();
        validate_range(low, high, bounds.compacted.index + 1, bounds.last_index)?;
        if low == high {
            return Ok(());
        }
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.backend("reading")(e.into()))?;
        let Some(table) = open_read(&txn, ENTRIES, self)? else {
            return Err(race(low, bounds));
        };
        let read_err = |e: redb::StorageError| self.backend("reading")(e.into());
        let mut bytes = 0u64;
        let before = out.len();
        for (expected, item) in (low..).zip(table.range(low..high).map_err(read_err)?) {
            let (key, value) = item.map_err(read_err)?;
            let index = key.value();
            if index != expected {
                // Entries vanished under us: a concurrent truncation or purge.
                return Err(race(expected, bounds));
            }
            let entry =
                codec::decode_entry(value.value(), index).map_err(|e| self.corrupt(index, e))?;
            bytes = bytes.saturating_add(entry.size_bytes());
            if bytes > max_bytes && index > low {
                break;
            }
            out.push(entry);
        }
        if out.len() == before {
            return Err(race(low, bounds));
        }
        Ok(())
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let bounds = self.bounds();
        if index == bounds.compacted.index {
            return Ok(bounds.compacted.term);
        }
        let mut out = Vec::with_capacity(1);
        self.read_range(index, index + 1, 0, &mut out)?;
        out.first().map(|e| e.term).ok_or(race(index, bounds))
    }

    fn load_state(&self) -> Result<StoredState, StorageError> {
        let bounds = self.bounds();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.backend("reading")(e.into()))?;
        let mut state = StoredState {
            hard_state: HardState::default(),
            first_index: bounds.compacted.index + 1,
            last_index: bounds.last_index,
            snapshot_meta: None,
        };
        if let Some(meta) = open_read(&txn, META, self)? {
            let read_err = |e: redb::StorageError| self.backend("reading")(e.into());
            if let Some(v) = meta.get(HARD_STATE).map_err(read_err)? {
                state.hard_state = codec::decode_hard_state(v.value())
                    .map_err(|e| self.corrupt_meta(HARD_STATE, e))?;
            }
            if let Some(v) = meta.get(SNAPSHOT_META).map_err(read_err)? {
                state.snapshot_meta = Some(
                    codec::decode_snapshot_meta(v.value())
                        .map_err(|e| self.corrupt_meta(SNAPSHOT_META, e))?,
                );
            }
        }
        Ok(state)
    }

    /// One `PersistRequest` = one write transaction = (with `must_sync`) one fsync.
    fn persist_blocking(&self, req: &PersistRequest) -> Result<(), StorageError> {
        let bounds = self.bounds();
        validate_persist(req, bounds.compacted.index, bounds.last_index)?;
        let write_err = |e: redb::Error| self.backend("writing")(e);
        let mut txn = self.db.begin_write().map_err(|e| write_err(e.into()))?;
        let durability = if req.must_sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| write_err(e.into()))?;
        let mut last_index = bounds.last_index;
        {
            if let Some(hs) = &req.hard_state {
                let mut meta = txn.open_table(META).map_err(|e| write_err(e.into()))?;
                meta.insert(HARD_STATE, codec::encode_hard_state(hs).as_slice())
                    .map_err(|e| write_err(e.into()))?;
            }
            if let (Some(first), Some(last)) = (req.entries.first(), req.entries.last()) {
                let mut table = txn.open_table(ENTRIES).map_err(|e| write_err(e.into()))?;
                if first.index <= bounds.last_index {
                    // Entries overwrite: drop the whole old suffix, not only the keys the new
                    // entries replace, or a shorter new suffix would leave stale entries.
                    table
                        .retain_in(first.index.., |_, _| false)
                        .map_err(|e| write_err(e.into()))?;
                }
                for entry in &req.entries {
                    table
                        .insert(entry.index, codec::encode_entry(entry).as_slice())
                        .map_err(|e| write_err(e.into()))?;
                }
                last_index = last.index;
            }
        }
        txn.commit().map_err(|e| write_err(e.into()))?;
        lock(&self.bounds).last_index = last_index;
        Ok(())
    }

    fn purge_blocking(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let bounds = self.bounds();
        // Past the end, purge the whole log (as `MemoryLog::compact` does): the runtime may
        // pass a purge point from a snapshot that covers more than this log holds.
        let up_to = up_to.min(bounds.last_index);
        if up_to <= bounds.compacted.index {
            return Ok(());
        }
        let term = self.term(up_to)?;
        let compacted = EntryId::new(term, up_to);
        let write_err = |e: redb::Error| self.backend("purging")(e);
        let txn = self.db.begin_write().map_err(|e| write_err(e.into()))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| write_err(e.into()))?;
            table
                .retain_in(..=up_to, |_, _| false)
                .map_err(|e| write_err(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| write_err(e.into()))?;
            meta.insert(COMPACTED, codec::encode_entry_id(compacted).as_slice())
                .map_err(|e| write_err(e.into()))?;
        }
        txn.commit().map_err(|e| write_err(e.into()))?;
        lock(&self.bounds).compacted = compacted;
        Ok(())
    }

    fn snapshot_blocking(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        let bounds = self.bounds();
        let at = meta.last_included;
        let term_at = if at.index > bounds.compacted.index && at.index <= bounds.last_index {
            Some(self.term(at.index)?)
        } else {
            None
        };
        validate_snapshot(meta, bounds.compacted, term_at, reset)?;
        let discard = reset;
        let write_err = |e: redb::Error| self.backend("saving snapshot meta in")(e);
        let txn = self.db.begin_write().map_err(|e| write_err(e.into()))?;
        {
            let mut table = txn.open_table(META).map_err(|e| write_err(e.into()))?;
            table
                .insert(SNAPSHOT_META, codec::encode_snapshot_meta(meta).as_slice())
                .map_err(|e| write_err(e.into()))?;
            if discard {
                table
                    .insert(COMPACTED, codec::encode_entry_id(at).as_slice())
                    .map_err(|e| write_err(e.into()))?;
                let mut entries = txn.open_table(ENTRIES).map_err(|e| write_err(e.into()))?;
                entries
                    .retain(|_, _| false)
                    .map_err(|e| write_err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| write_err(e.into()))?;
        if discard {
            *lock(&self.bounds) = Bounds {
                compacted: at,
                last_index: at.index,
            };
        }
        Ok(())
    }

    fn sync_blocking(&self) -> Result<(), StorageError> {
        // An empty commit with Immediate durability makes every earlier `Durability::None`
        // commit durable too (redb persists the whole committed state).
        let write_err = |e: redb::Error| self.backend("syncing")(e);
        let txn = self.db.begin_write().map_err(|e| write_err(e.into()))?;
        txn.commit().map_err(|e| write_err(e.into()))
    }
}

/// The error for entries that the cached bounds promised but the database no longer holds:
/// a concurrent truncation or purge.
fn race(index: LogIndex, bounds: Bounds) -> StorageError {
    StorageError::Unavailable {
        index,
        last_index: bounds.last_index,
    }
}

/// Opens a table for reading; `None` if it was never created (a fresh database).
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    shared: &Shared,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StorageError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(shared.backend("opening a table in")(e.into())),
    }
}

impl LogStore for RedbStore {
    type Reader = RedbReader;

    fn reader(&self) -> RedbReader {
        RedbReader {
            shared: Arc::clone(&self.shared),
        }
    }

    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send {
        blocking_read(&self.shared, "loading state from", |s| s.load_state())
    }

    fn persist(
        &self,
        req: &PersistRequest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        // Cloning is cheap: payloads are reference-counted `Bytes`.
        let req = req.clone();
        ordered_write(&self.shared, "persisting to", move |s| {
            s.persist_blocking(&req)
        })
    }

    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>> + Send {
        blocking_read(&self.shared, "reading entries from", move |s| {
            let mut out = Vec::new();
            s.read_range(low, high, max_bytes, &mut out).map(|()| out)
        })
    }

    fn purge(&self, up_to: LogIndex) -> impl Future<Output = Result<(), StorageError>> + Send {
        ordered_write(&self.shared, "purging", move |s| s.purge_blocking(up_to))
    }

    fn save_snapshot_meta(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let meta = meta.clone();
        ordered_write(&self.shared, "saving snapshot meta to", move |s| {
            s.snapshot_blocking(&meta, false)
        })
    }

    fn reset_to_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let meta = meta.clone();
        ordered_write(&self.shared, "installing a snapshot in", move |s| {
            s.snapshot_blocking(&meta, true)
        })
    }

    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send {
        ordered_write(&self.shared, "syncing", |s| s.sync_blocking())
    }
}

impl LogReader for RedbReader {
    fn first_index(&self) -> LogIndex {
        self.shared.bounds().compacted.index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.shared.bounds().last_index
    }

    fn term(&self, index: LogIndex) -> Result<Term, LogError> {
        Ok(guarded(&*self.shared, "reading", |s| s.term(index))?)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogError> {
        Ok(guarded(&*self.shared, "reading", |s| {
            s.read_range(low, high, max_bytes, out)
        })?)
    }
}
