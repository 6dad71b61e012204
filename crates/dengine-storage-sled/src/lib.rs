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
//! value is a [`dengine_storage_common::codec`] record with a CRC-32, verified on every read; a
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
//! * [`SledStore`] is [`dengine_storage_common::Store`] over [`SledLog`], as every backend:
//!   writes **serialized, in call order** without stalling other tasks, calls made inside a tokio
//!   runtime, a panic inside sled returned as [`StorageError::Backend`].
//! * **Limitation: damage inside sled's own log is silent.** sled checksums its log messages
//!   and, on recovery, treats a damaged or truncated one as a torn write: it drops that
//!   message and everything after it without an error. A flipped byte or a truncated file
//!   therefore shows up as a shorter log (a clean prefix, never garbage: every entry that is
//!   returned still passes its own CRC), which this backend cannot tell from a crash before
//!   fsync. The redb backend reports the same damage as [`StorageError::Corrupt`] or an
//!   open error (see the damaged-input suite, `dengine_storage_common::testing::run_bad_input`).
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
//! use dengine_core::{Entry, EntryPayload, LogReader, LogStore, PersistRequest};
//! use dengine_storage_sled::SledStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let store = SledStore::open_or_create(dir.path())?;
//!     let write = PersistRequest::new(None, vec![Entry::new(1, 1, EntryPayload::Blank)], true);
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
//! without multi-key read transactions: the batch in `persist`, and the reader lock that
//! stands in for a read transaction.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[cfg(doc)]
use dengine_core::store::{LogReader, LogStore};
use dengine_core::store::{PersistRequest, SnapshotMeta, StorageError, StoredState};
use dengine_core::{Entry, EntryId, LogIndex, Term};
use dengine_storage_common::marker::DirState;
use dengine_storage_common::{Bounds, Reader, Store, StoreKind, SyncLog};
use dengine_storage_common::{codec, engine_error, io_error};
use parking_lot::{Mutex, RwLock};

/// Name of this backend in the marker file.
pub const BACKEND: &str = "sled";
/// On-disk format version written and read by this build (sled 0.34 format, dengine records v1).
pub const FORMAT_VERSION: u32 = 1;
/// Name of the sled database directory inside the store directory.
pub const DB_DIR: &str = "sled";

/// A [`LogStore`] on sled 0.34. Cheap to clone; clones share the database.
pub type SledStore = Store<SledLog>;
/// The synchronous [`LogReader`] view of a [`SledStore`].
pub type SledReader = Reader<SledLog>;

const TREE: &str = "dengine-log";
/// Whether sled refused to open because another instance holds its file lock. sled 0.34
/// reports that as an `Other` I/O error carrying the `WouldBlock` in its message, so the kind
/// alone never matched (the retry below never ran until the sled_recovery fuzz target showed
/// it).
fn lock_held(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

/// How long opening waits for sled's file lock held by a just-closed store of this process.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const ENTRY_PREFIX: u8 = b'e';
const HARD_STATE: &str = "hard_state";
const COMPACTED: &str = "compacted";
const SNAPSHOT_META: &str = "snapshot_meta";

fn entry_key(index: LogIndex) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&codec::index_key(index));
    key
}

fn meta_key(name: &str) -> Vec<u8> {
    format!("m/{name}").into_bytes()
}

/// The sled database behind a [`SledStore`]: the [`SyncLog`] that
/// [`Store`] runs. Use it through `SledStore`.
pub struct SledLog {
    tree: sled::Tree,
    /// The database handle, held for the store's lifetime (it owns sled's background
    /// flusher); all data goes through `tree`.
    _db: sled::Db,
    path: PathBuf,
    /// Readers hold it shared while they read; writers exclusively while applying a batch.
    bounds: RwLock<Bounds>,
    /// sled's data file, opened by us only to fsync it (see [`SledLog::make_durable`]).
    data_file: fs::File,
    /// Blob files already fsynced (blobs are immutable once written).
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl SledLog {
    fn get_meta<T>(
        &self,
        record: &'static str,
        decode: fn(&[u8]) -> Result<T, codec::CodecError>,
    ) -> Result<Option<T>, StorageError> {
        let value = self
            .tree
            .get(meta_key(record))
            .map_err(engine_error(&self.path, "reading"))?;
        value
            .map(|v| decode(&v).map_err(|e| e.in_record(&self.path, record)))
            .transpose()
    }

    /// Reads the compaction point and the stored entries' span, refusing a log with holes.
    fn load_bounds(&self) -> Result<Bounds, StorageError> {
        let compacted = self
            .get_meta(COMPACTED, codec::decode_entry_id)?
            .unwrap_or(EntryId::ZERO);
        let read = engine_error(&self.path, "reading");
        let mut iter = self.tree.scan_prefix([ENTRY_PREFIX]);
        let first = iter.next().transpose().map_err(&read)?;
        let last = iter.next_back().transpose().map_err(&read)?;
        let index_of = |key: &[u8]| {
            key.get(1..)
                .and_then(codec::key_index)
                .ok_or_else(|| StorageError::CorruptMetadata {
                    path: self.path.clone(),
                    record: "entry key",
                    detail: format!("malformed entry key {key:?}"),
                })
        };
        let span = match first {
            None => None,
            Some((first, _)) => {
                let first = index_of(&first)?;
                let last = match last {
                    Some((last, _)) => index_of(&last)?,
                    None => first,
                };
                // One scan of the keys at open (values are not decoded): O(log length), a
                // price paid once for refusing a log with holes instead of serving one.
                let count = self.tree.scan_prefix([ENTRY_PREFIX]).count() as u64;
                Some((first, last, count))
            }
        };
        Bounds::from_stored(&self.path, compacted, span)
    }

    /// The entry at `index`, which `bounds` (held by the caller, so no writer runs) says is
    /// stored: a missing one is damage, not a race.
    fn entry_at(&self, bounds: &Bounds, index: LogIndex) -> Result<Entry, StorageError> {
        let value = self
            .tree
            .get(entry_key(index))
            .map_err(engine_error(&self.path, "reading"))?
            .ok_or_else(|| StorageError::Corrupt {
                path: self.path.clone(),
                index,
                detail: format!(
                    "entry missing inside the log {}..={}",
                    bounds.first_index(),
                    bounds.last_index
                ),
            })?;
        codec::decode_entry(&value, index).map_err(|e| e.in_entry(&self.path, index))
    }

    fn term_locked(&self, bounds: &Bounds, index: LogIndex) -> Result<Term, StorageError> {
        if index == bounds.compacted.index {
            return Ok(bounds.compacted.term);
        }
        bounds.check_read(index, index + 1)?;
        self.entry_at(bounds, index).map(|e| e.term)
    }

    /// Applies `batch` atomically and publishes `after` under the exclusive bounds lock, then
    /// flushes (fsync) if asked.
    fn commit(
        &self,
        batch: sled::Batch,
        after: Bounds,
        sync: bool,
        op: &'static str,
    ) -> Result<(), StorageError> {
        {
            let mut bounds = self.bounds.write();
            self.tree
                .apply_batch(batch)
                .map_err(engine_error(&self.path, op))?;
            *bounds = after;
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
        self.tree.flush().map_err(engine_error(&self.path, op))?;
        self.data_file
            .sync_all()
            .map_err(io_error(&self.path.join("db"), "fsyncing"))?;
        let blobs = self.path.join("blobs");
        let listing = match fs::read_dir(&blobs) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&blobs, "listing")(e)),
        };
        let mut synced = self.synced_blobs.lock();
        let mut present = HashSet::new();
        let mut added = false;
        for item in listing {
            let item = item.map_err(io_error(&blobs, "listing"))?;
            let name = item.file_name();
            if !synced.contains(&name) {
                let blob = item.path();
                fs::File::open(&blob)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error(&blob, "fsyncing"))?;
                added = true;
            }
            present.insert(name);
        }
        if added {
            fs::File::open(&blobs)
                .and_then(|d| d.sync_all())
                .map_err(io_error(&blobs, "fsyncing"))?;
        }
        // Forget blobs sled has garbage-collected, so the set stays bounded.
        *synced = present;
        Ok(())
    }
}

impl SyncLog for SledLog {
    const KIND: StoreKind = StoreKind::new(BACKEND, FORMAT_VERSION, &[DB_DIR]);
    type Options = ();

    fn open(dir: &Path, state: DirState, (): ()) -> Result<Self, StorageError> {
        let path = dir.join(DB_DIR);
        let conf = path.join("conf");
        let exists = conf.try_exists().map_err(io_error(&path, "looking for"))?;
        // A marker without its database means the database was deleted: refuse rather than
        // start over with an empty log, which would forget the votes this node cast.
        if state == DirState::Existing && !exists {
            return Err(StorageError::NotFound { path });
        }
        let config = sled::Config::new()
            .path(&path)
            .create_new(state == DirState::New);
        // sled releases its file lock only once the background work of a dropped instance has
        // finished: a store of this process that was just closed (a restart in place) may
        // still hold it for a moment under load. Another process holding it fails after the
        // wait, as before.
        let started = Instant::now();
        let db = loop {
            match config.open() {
                Err(e) if lock_held(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.map_err(engine_error(&path, "opening"))?,
            }
        };
        let tree = db.open_tree(TREE).map_err(engine_error(&path, "opening"))?;
        let data_path = path.join("db");
        let data_file = fs::File::open(&data_path)
            .map_err(io_error(&data_path, "opening sled's data file in"))?;
        if state == DirState::New {
            // Make sled's new files part of the directory for good before the marker says
            // the store exists.
            fs::File::open(&path)
                .and_then(|d| d.sync_all())
                .map_err(io_error(&path, "syncing the directory"))?;
        }
        let log = SledLog {
            tree,
            _db: db,
            path,
            bounds: RwLock::new(Bounds::EMPTY),
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
        };
        let bounds = log.load_bounds()?;
        *log.bounds.write() = bounds;
        Ok(log)
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn bounds(&self) -> Bounds {
        *self.bounds.read()
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.term_locked(&self.bounds.read(), index)
    }

    fn read(&self, range: Range<LogIndex>, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let (low, high) = (range.start, range.end);
        let bounds = self.bounds.read();
        bounds.check_read(low, high)?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for index in low..high {
            let entry = self.entry_at(&bounds, index)?;
            bytes = bytes.saturating_add(entry.size_bytes());
            if bytes > max_bytes && index > low {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn load_state(&self) -> Result<StoredState, StorageError> {
        // Under the read lock, so that no batch lands between the records and the bounds.
        let bounds = self.bounds.read();
        let hard_state = self.get_meta(HARD_STATE, codec::decode_hard_state)?;
        let snapshot = self.get_meta(SNAPSHOT_META, codec::decode_snapshot_meta)?;
        Ok(bounds.stored_state(hard_state, snapshot))
    }

    /// One `PersistRequest` = one atomic batch = (with `must_sync`) one flush.
    fn persist(&self, req: &PersistRequest) -> Result<(), StorageError> {
        let bounds = *self.bounds.read();
        let after = bounds.after_persist(req)?;
        let mut batch = sled::Batch::default();
        if let Some(hs) = &req.hard_state {
            batch.insert(meta_key(HARD_STATE), codec::encode_hard_state(hs));
        }
        if let Some(last) = req.entries.last() {
            // Entries overwrite: remove the whole old suffix beyond the new entries too.
            for index in last.index + 1..=bounds.last_index {
                batch.remove(&entry_key(index));
            }
            for entry in &req.entries {
                batch.insert(&entry_key(entry.index), codec::encode_entry(entry));
            }
        }
        self.commit(batch, after, req.must_sync, "persisting to")
    }

    fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let bounds = *self.bounds.read();
        let Some(up_to) = bounds.purge_point(up_to) else {
            return Ok(());
        };
        let compacted = EntryId::new(self.term_locked(&bounds, up_to)?, up_to);
        let mut batch = sled::Batch::default();
        for index in bounds.first_index()..=up_to {
            batch.remove(&entry_key(index));
        }
        batch.insert(meta_key(COMPACTED), codec::encode_entry_id(compacted));
        let after = Bounds {
            compacted,
            ..bounds
        };
        self.commit(batch, after, true, "purging")
    }

    /// One batch: the description and, for a reset, the removal of the whole log and the
    /// new compaction point; then a flush.
    fn snapshot(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        let bounds = *self.bounds.read();
        let after = bounds.after_snapshot(meta, reset, |index| self.term_locked(&bounds, index))?;
        let mut batch = sled::Batch::default();
        batch.insert(meta_key(SNAPSHOT_META), codec::encode_snapshot_meta(meta));
        if reset {
            for index in bounds.first_index()..=bounds.last_index {
                batch.remove(&entry_key(index));
            }
            batch.insert(
                meta_key(COMPACTED),
                codec::encode_entry_id(meta.last_included),
            );
        }
        self.commit(batch, after, true, "saving snapshot meta to")
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.make_durable("syncing")
    }
}
