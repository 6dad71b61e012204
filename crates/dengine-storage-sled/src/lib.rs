//! # dengine-storage-sled
//!
//! A durable [`LogStore`] for dengine on [sled](https://docs.rs/sled) **0.34** (0.34.7).
//!
//! ## Why sled 0.34, and what that means
//!
//! 0.34.7 is sled's last stable release; the 1.0 alphas have a new API and a new on-disk
//! format. sled's own documentation warns that its on-disk format will change before 1.0 and
//! that upgrading will need a manual migration (export with the old version, import with the
//! new one). This crate therefore pins `sled = "0.34.7"` and writes its own marker
//! (`DENGINE_STORE`: backend `sled`, format [`FORMAT_VERSION`]). Moving to another sled
//! format will be a new `FORMAT_VERSION`, and this build refuses to open such a directory
//! ([`StorageError::FormatMismatch`]) instead of letting sled misread it. For new
//! deployments prefer `dengine-storage-redb`, whose format is stable.
//!
//! ## Layout and durability
//!
//! A store is a directory holding the marker and a sled database in the subdirectory `sled/`,
//! with one tree `dengine-log`: keys `e` + big-endian index for entries (so key order is log
//! order) and `m/…` for the hard state, the compaction point and the snapshot meta. Every
//! value is a [`dengine_core::store::codec`] record with a CRC-32, verified on every read; a
//! mismatch is [`StorageError::Corrupt`] naming the database directory and the index.
//!
//! * [`LogStore::persist`] builds one [`sled::Batch`] (hard state, removal of the old suffix,
//!   new entries) and applies it atomically, then, if `must_sync`, calls
//!   [`sled::Tree::flush`] **and then fsyncs sled's files itself**: durable when the future
//!   completes. (sled 0.34's flush uses `sync_file_range` on Linux, which does not flush the
//!   drive's write cache or the file's metadata, and it never fsyncs its blob files for
//!   large values; so the backend follows every flush with `fsync` of the data file and of
//!   new blob files, at the price of one more fsync per synced write.) Without `must_sync` the batch is visible at once and made durable by the next
//!   flush ([`LogStore::sync`], or a later synced call). sled also flushes on its own every
//!   500 ms by default.
//! * [`LogStore::purge`], [`LogStore::save_snapshot_meta`] and [`LogStore::reset_to_snapshot`]
//!   always flush.
//! * Writes are **serialized, in call order**, exactly as in the redb backend: a ticket taken
//!   when the method is called, the work started at once on tokio's blocking pool
//!   (`spawn_blocking`), run one at a time in ticket order. Concurrent calls bring no
//!   speed-up; the runtime batches instead. Calls must be made inside a tokio runtime.
//! * **Limitation: damage inside sled's own log is silent.** sled checksums its log messages
//!   and, on recovery, treats a damaged or truncated one as a torn write: it drops that
//!   message and everything after it without an error. A flipped byte or a truncated file
//!   therefore shows up as a shorter log (a clean prefix, never garbage: every entry that is
//!   returned still passes its own CRC), which this backend cannot tell from a crash before
//!   fsync. The redb backend reports the same damage as [`StorageError::Corrupt`] or an
//!   open error (see `tests/bad_input.rs` in both crates).
//! * The [`SledReader`] reads sled's in-memory page cache under a read lock that writers take
//!   exclusively while applying a batch, so it always sees a consistent log.
//!
//! ## Opening
//!
//! Same rules as the redb backend: [`SledStore::open_or_create`] creates a store only in a
//! missing or empty directory, [`SledStore::open`] fails with [`StorageError::NotFound`] if
//! the store is gone, and a foreign or newer directory fails with
//! [`StorageError::FormatMismatch`].
//!
//! ```
//! use dengine_core::store::testing::persist_request;
//! use dengine_core::{Entry, EntryPayload, LogReader, LogStore};
//! use dengine_storage_sled::SledStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let store = SledStore::open_or_create(dir.path())?;
//!     let write = persist_request(None, vec![Entry::new(1, 1, EntryPayload::Blank)], true);
//!     store.persist(&write).await?;
//!     assert_eq!(store.reader().last_index(), 1);
//!     Ok::<_, dengine_core::StorageError>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Implementing `LogStore` for another database
//!
//! Read [`dengine_core::store`] for the steps; this crate shows them for a key-value store
//! without multi-key read transactions: the batch in `persist_blocking`, and the reader lock
//! that stands in for a read transaction.

use dengine_storage_common::blocking::{self, Sequencer, blocking_read, guarded, ordered_write};
use dengine_storage_common::marker;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::future::Future;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use dengine_core::store::codec::{self, Marker};
use dengine_core::store::{SnapshotMeta, validate_persist, validate_range, validate_snapshot};
use dengine_core::{
    Entry, EntryId, HardState, LogError, LogIndex, LogReader, LogStore, PersistRequest,
    StorageError, StoredState, Term,
};

use marker::DirState;

/// Name of this backend in the marker file.
pub const BACKEND: &str = "sled";
/// On-disk format version written and read by this build (sled 0.34 format, dengine records v1).
pub const FORMAT_VERSION: u32 = 1;
/// Name of the sled database directory inside the store directory.
pub const DB_DIR: &str = "sled";

const TREE: &str = "dengine-log";
const ENTRY_PREFIX: u8 = b'e';
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

fn entry_key(index: LogIndex) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&codec::index_key(index));
    key
}

fn meta_key(name: &str) -> Vec<u8> {
    format!("m/{name}").into_bytes()
}

#[derive(Clone, Copy, Debug)]
struct Bounds {
    compacted: EntryId,
    last_index: LogIndex,
}

struct Shared {
    tree: sled::Tree,
    /// The database handle, held for the store's lifetime (it owns sled's background
    /// flusher); all data goes through `tree`.
    _db: sled::Db,
    path: PathBuf,
    /// Applies writes one at a time, in the order the calls were made.
    sequencer: Sequencer,
    /// Readers hold it shared while they read; writers exclusively while applying a batch.
    bounds: RwLock<Bounds>,
    /// sled's data file, opened by us only to fsync it (see [`Shared::make_durable`]).
    data_file: fs::File,
    /// Blob files already fsynced (blobs are immutable once written).
    synced_blobs: Mutex<HashSet<OsString>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guards plain data (or nothing); poisoning carries no information here.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`LogStore`] on sled 0.34. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
}

/// The synchronous [`LogReader`] view of a [`SledStore`].
#[derive(Clone)]
pub struct SledReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SledReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledReader")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty. Blocks.
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), true)
    }

    /// Opens the existing store in `dir`; [`StorageError::NotFound`] if there is none. Blocks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), false)
    }

    /// The sled database directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn open_dir(dir: &Path, create: bool) -> Result<Self, StorageError> {
        let state = marker::prepare(dir, &marker(), create, &[DB_DIR])?;
        let path = dir.join(DB_DIR);
        let exists = path
            .join("conf")
            .try_exists()
            .map_err(|source| StorageError::Io {
                path: path.clone(),
                op: "looking for",
                source,
            })?;
        // A marker without its database means the database was deleted: refuse rather than
        // start over with an empty log, which would forget the votes this node cast.
        if state == DirState::Existing && !exists {
            return Err(StorageError::NotFound { path });
        }
        let backend = |op: &'static str, detail: String| StorageError::Backend {
            path: path.clone(),
            op,
            detail,
        };
        // sled panics on some damaged files instead of returning an error.
        let opened = catch_unwind(|| {
            let db = sled::Config::new()
                .path(&path)
                .create_new(state == DirState::New)
                .open()?;
            let tree = db.open_tree(TREE)?;
            Ok::<_, sled::Error>((db, tree))
        });
        let (db, tree) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(backend("opening", e.to_string())),
            Err(_) => {
                return Err(backend(
                    "opening",
                    "sled panicked while opening the database (it is damaged)".into(),
                ));
            }
        };
        if state == DirState::New {
            // The marker goes last: it is what makes the new store exist.
            marker::write(dir, &marker())?;
        }
        let data_path = path.join("db");
        let data_file = fs::File::open(&data_path).map_err(|source| StorageError::Io {
            path: data_path,
            op: "opening sled's data file in",
            source,
        })?;
        if state == DirState::New {
            // Make sled's new files part of the directory for good before the marker says
            // the store exists.
            fs::File::open(&path)
                .and_then(|d| d.sync_all())
                .map_err(|source| StorageError::Io {
                    path: path.clone(),
                    op: "syncing the directory",
                    source,
                })?;
        }
        let shared = Shared {
            tree,
            _db: db,
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
            path: path.clone(),
            sequencer: Sequencer::default(),
            bounds: RwLock::new(Bounds {
                compacted: EntryId::ZERO,
                last_index: 0,
            }),
        };
        let bounds = guarded(&shared, "opening", Shared::load_bounds)?;
        *shared
            .bounds
            .write()
            .unwrap_or_else(PoisonError::into_inner) = bounds;
        Ok(SledStore {
            shared: Arc::new(shared),
        })
    }
}

/// Runs a synchronous database call, turning a panic inside sled into an error: a damaged
/// disk must not take the process down with it.
impl blocking::Backend for Shared {
    const STORE: &'static str = "SledStore";
    const DATABASE: &'static str = "sled";

    fn path(&self) -> &Path {
        &self.path
    }

    fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }
}

impl Shared {
    fn backend(&self, op: &'static str) -> impl Fn(sled::Error) -> StorageError + '_ {
        move |e| StorageError::Backend {
            path: self.path.clone(),
            op,
            detail: e.to_string(),
        }
    }

    fn read_bounds(&self) -> RwLockReadGuard<'_, Bounds> {
        self.bounds.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_meta(&self, name: &'static str) -> Result<Option<sled::IVec>, StorageError> {
        self.tree
            .get(meta_key(name))
            .map_err(self.backend("reading"))
    }

    fn load_bounds(&self) -> Result<Bounds, StorageError> {
        let compacted = match self.get_meta(COMPACTED)? {
            Some(v) => codec::decode_entry_id(&v).map_err(|e| StorageError::CorruptMetadata {
                path: self.path.clone(),
                record: COMPACTED,
                detail: e.0,
            })?,
            None => EntryId::ZERO,
        };
        let read = self.backend("reading");
        let mut iter = self.tree.scan_prefix([ENTRY_PREFIX]);
        let first = iter.next().transpose().map_err(&read)?;
        let last = iter
            .next_back()
            .transpose()
            .map_err(&read)?
            .or(first.clone());
        let index_of = |key: &[u8]| {
            key.get(1..)
                .and_then(codec::key_index)
                .ok_or_else(|| StorageError::CorruptMetadata {
                    path: self.path.clone(),
                    record: "entry key",
                    detail: format!("malformed entry key {key:?}"),
                })
        };
        let last_index = match (first, last) {
            (Some((first, _)), Some((last, _))) => {
                let (first, last) = (index_of(&first)?, index_of(&last)?);
                // One scan of the keys at open (values are not decoded): O(log length), a
                // price paid once for refusing a log with holes instead of serving one.
                let len = self.tree.scan_prefix([ENTRY_PREFIX]).count() as u64;
                if first != compacted.index + 1 || last - first + 1 != len {
                    return Err(StorageError::CorruptMetadata {
                        path: self.path.clone(),
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
        let bounds = self.read_bounds();
        validate_range(low, high, bounds.compacted.index + 1, bounds.last_index)?;
        let read = self.backend("reading");
        let mut bytes = 0u64;
        for index in low..high {
            let Some(value) = self.tree.get(entry_key(index)).map_err(&read)? else {
                // The bounds lock excludes writers, so a hole is damage, not a race.
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    index,
                    detail: format!(
                        "entry missing inside the log {}..={}",
                        bounds.compacted.index + 1,
                        bounds.last_index
                    ),
                });
            };
            let entry = codec::decode_entry(&value, index).map_err(|e| StorageError::Corrupt {
                path: self.path.clone(),
                index,
                detail: e.0,
            })?;
            bytes = bytes.saturating_add(entry.size_bytes());
            if bytes > max_bytes && index > low {
                break;
            }
            out.push(entry);
        }
        Ok(())
    }

    fn term_locked(&self, bounds: &Bounds, index: LogIndex) -> Result<Term, StorageError> {
        if index == bounds.compacted.index {
            return Ok(bounds.compacted.term);
        }
        validate_range(
            index,
            index + 1,
            bounds.compacted.index + 1,
            bounds.last_index,
        )?;
        let value = self
            .tree
            .get(entry_key(index))
            .map_err(self.backend("reading"))?
            .ok_or_else(|| StorageError::Corrupt {
                path: self.path.clone(),
                index,
                detail: "entry missing inside the log".into(),
            })?;
        codec::decode_entry(&value, index)
            .map(|e| e.term)
            .map_err(|e| StorageError::Corrupt {
                path: self.path.clone(),
                index,
                detail: e.0,
            })
    }

    fn load_state(&self) -> Result<StoredState, StorageError> {
        let bounds = self.read_bounds();
        let meta_err = |record: &'static str| {
            move |e: codec::CodecError| StorageError::CorruptMetadata {
                path: self.path.clone(),
                record,
                detail: e.0,
            }
        };
        let hard_state = match self.get_meta(HARD_STATE)? {
            Some(v) => codec::decode_hard_state(&v).map_err(meta_err(HARD_STATE))?,
            None => HardState::default(),
        };
        let snapshot_meta = match self.get_meta(SNAPSHOT_META)? {
            Some(v) => Some(codec::decode_snapshot_meta(&v).map_err(meta_err(SNAPSHOT_META))?),
            None => None,
        };
        Ok(StoredState {
            hard_state,
            first_index: bounds.compacted.index + 1,
            last_index: bounds.last_index,
            snapshot_meta,
        })
    }

    /// Applies `batch` atomically and publishes `new_bounds` under the exclusive bounds lock,
    /// then flushes (fsync) if asked. Call only during the writer's turn.
    fn commit(
        &self,
        batch: sled::Batch,
        new_bounds: Bounds,
        sync: bool,
        op: &'static str,
    ) -> Result<(), StorageError> {
        {
            let mut bounds = self.bounds.write().unwrap_or_else(PoisonError::into_inner);
            self.tree.apply_batch(batch).map_err(self.backend(op))?;
            *bounds = new_bounds;
        }
        if sync {
            self.make_durable(op)?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable, power loss included.
    ///
    /// `sled::Tree::flush` alone is not enough on Linux: sled 0.34 writes its log with
    /// `sync_file_range`, which neither flushes the drive's volatile write cache nor the
    /// file's metadata (its grown length), and it writes large values to blob files without
    /// any fsync. So after sled's flush we fsync its data file and every blob file not yet
    /// synced, and the blob directory if it gained files. This costs one extra fsync per
    /// synced write (see the benchmark).
    fn make_durable(&self, op: &'static str) -> Result<(), StorageError> {
        self.tree.flush().map_err(self.backend(op))?;
        let io = |path: &Path, what: &'static str| {
            let path = path.to_path_buf();
            move |source| StorageError::Io {
                path,
                op: what,
                source,
            }
        };
        self.data_file
            .sync_all()
            .map_err(io(&self.path.join("db"), "fsyncing"))?;
        let blobs = self.path.join("blobs");
        let listing = match fs::read_dir(&blobs) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&blobs, "listing")(e)),
        };
        let mut synced = lock(&self.synced_blobs);
        let mut present = HashSet::new();
        let mut added = false;
        for item in listing {
            let item = item.map_err(io(&blobs, "listing"))?;
            let name = item.file_name();
            if !synced.contains(&name) {
                let blob = item.path();
                fs::File::open(&blob)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&blob, "fsyncing"))?;
                added = true;
            }
            present.insert(name);
        }
        if added {
            fs::File::open(&blobs)
                .and_then(|d| d.sync_all())
                .map_err(io(&blobs, "fsyncing"))?;
        }
        // Forget blobs sled has garbage-collected, so the set stays bounded.
        *synced = present;
        Ok(())
    }

    /// One `PersistRequest` = one atomic batch = (with `must_sync`) one flush.
    fn persist_blocking(&self, req: &PersistRequest) -> Result<(), StorageError> {
        let bounds = *self.read_bounds();
        validate_persist(req, bounds.compacted.index, bounds.last_index)?;
        let mut batch = sled::Batch::default();
        if let Some(hs) = &req.hard_state {
            batch.insert(meta_key(HARD_STATE), codec::encode_hard_state(hs));
        }
        let mut new_bounds = bounds;
        if let Some(last) = req.entries.last() {
            // Entries overwrite: remove the whole old suffix beyond the new entries too.
            for index in last.index + 1..=bounds.last_index {
                batch.remove(&entry_key(index));
            }
            for entry in &req.entries {
                batch.insert(&entry_key(entry.index), codec::encode_entry(entry));
            }
            new_bounds.last_index = last.index;
        }
        self.commit(batch, new_bounds, req.must_sync, "persisting to")
    }

    fn purge_blocking(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let bounds = *self.read_bounds();
        // Past the end, purge the whole log (as `MemoryLog::compact` does): the runtime may
        // pass a purge point from a snapshot that covers more than this log holds.
        let up_to = up_to.min(bounds.last_index);
        if up_to <= bounds.compacted.index {
            return Ok(());
        }
        let compacted = EntryId::new(self.term_locked(&bounds, up_to)?, up_to);
        let mut batch = sled::Batch::default();
        for index in bounds.compacted.index + 1..=up_to {
            batch.remove(&entry_key(index));
        }
        batch.insert(meta_key(COMPACTED), codec::encode_entry_id(compacted));
        let new_bounds = Bounds {
            compacted,
            last_index: bounds.last_index,
        };
        self.commit(batch, new_bounds, true, "purging")
    }

    fn snapshot_blocking(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        let bounds = *self.read_bounds();
        let at = meta.last_included;
        let term_at = if at.index > bounds.compacted.index && at.index <= bounds.last_index {
            Some(self.term_locked(&bounds, at.index)?)
        } else {
            None
        };
        validate_snapshot(meta, bounds.compacted, term_at, reset)?;
        let mut batch = sled::Batch::default();
        batch.insert(meta_key(SNAPSHOT_META), codec::encode_snapshot_meta(meta));
        let mut new_bounds = bounds;
        if reset {
            for index in bounds.compacted.index + 1..=bounds.last_index {
                batch.remove(&entry_key(index));
            }
            batch.insert(meta_key(COMPACTED), codec::encode_entry_id(at));
            new_bounds = Bounds {
                compacted: at,
                last_index: at.index,
            };
        }
        self.commit(batch, new_bounds, true, "saving snapshot meta to")
    }

    fn sync_blocking(&self) -> Result<(), StorageError> {
        self.make_durable("syncing")
    }
}

impl LogStore for SledStore {
    type Reader = SledReader;

    fn reader(&self) -> SledReader {
        SledReader {
            shared: Arc::clone(&self.shared),
        }
    }

    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send {
        blocking_read(&self.shared, "loading state from", Shared::load_state)
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
        ordered_write(&self.shared, "syncing", Shared::sync_blocking)
    }
}

impl LogReader for SledReader {
    fn first_index(&self) -> LogIndex {
        self.shared.read_bounds().compacted.index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.shared.read_bounds().last_index
    }

    fn term(&self, index: LogIndex) -> Result<Term, LogError> {
        Ok(guarded(&*self.shared, "reading", |s| {
            s.term_locked(&s.read_bounds(), index)
        })?)
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
