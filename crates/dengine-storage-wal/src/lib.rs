//! # dengine-storage-wal
//!
//! A durable [`LogStore`] for dengine built for Raft: a write-ahead log of preallocated,
//! recycled segment files, CRC32C-framed records, and **one `fdatasync` per
//! [`persist`](LogStore::persist)** (one batch).
//!
//! ## Layout
//!
//! A store is a directory holding the marker file (`DENGINE_STORE`: backend `wal`, format
//! [`FORMAT_VERSION`]), the metadata file [`META_FILE`] and the segments
//! `00000000000000000001.wal`, `…002.wal`, …, plus purged segments kept for reuse
//! (`….spare`).
//!
//! * **Segments** are preallocated at [`WalOptions::segment_bytes`] (64 MiB) by *writing
//!   zeros*, not by `fallocate` or `set_len`: on ext4, an `fdatasync` after overwriting
//!   written blocks only flushes data, while one after writing into a hole or an unwritten
//!   extent also commits the allocation in the journal. Measured on the development machine
//!   with `dd oflag=dsync` (4 KiB writes): appending ~5,300/s, overwriting a `fallocate`d
//!   file ~5,850/s, overwriting a zero-filled file ~8,350/s. A purged segment is
//!   **recycled** (renamed to a spare and reused by a later segment), so its zeros need not
//!   be written again. A new store also preallocates one spare (`…000.spare`) beside its
//!   first segment. Writing 64 MiB of zeros and syncing them takes about 50 ms on an idle
//!   disk of the development machine, more under load, and the member's writes wait
//!   meanwhile; the members of a new cluster all reach their first roll at the same entry,
//!   about 200,000 small writes in (the p99.9 of writes at 64 clients there was 44–79 ms,
//!   20–23 ms with the spare: docs/benchmarks.md, 2026-12-06 00:08). A roll with no spare
//!   (compaction dropped no segment since the last one: snapshots off, or far apart) still
//!   preallocates in place.
//! * **Records** are frames `crc32c | len | segment life | kind | flags | body`, 8-byte
//!   aligned, little-endian (see `format.rs`): an entry carries its index and term, a hard
//!   state is a record of its own, and the last frame of each batch carries a `COMMIT` flag,
//!   so a batch is recovered whole or not at all. Each write also lays down an `END` frame
//!   after the batch, which the next batch overwrites. A suffix truncation is recorded by the
//!   entry that replaces it: recovery replays in order, and an entry at or before the last
//!   index discards everything from there, so a truncated entry never comes back.
//! * **Metadata** (`wal.meta`) — live segments, compaction point, snapshot description, and
//!   the hard state as of its last write — is double-written in two checksummed slots (A/B)
//!   and written only by purges, snapshots and segment activation, never by `persist`.
//! * **Purge** drops whole segments (those holding only entries up to the purge point) after
//!   recording the new compaction point; **reset to a snapshot** starts a fresh segment and
//!   drops all others. The directory is fsynced whenever a segment is created, renamed or
//!   removed.
//!
//! ## Recovery
//!
//! Opening scans every live segment and verifies every record. A half-written batch at the
//! end of the log (a write that never completed) is cut off. Bytes that fail their checksum
//! but are followed by a valid record of the same segment life had been written whole, so
//! they are **corruption**: opening fails with [`StorageError::CorruptMetadata`] naming the
//! file and the byte offset (an entry that fails its checksum when read back later is
//! [`StorageError::Corrupt`] with its index). Zeroed preallocated space and stale bytes from
//! a recycled segment's earlier life (whose frames carry another life number) never pass as
//! records. Unknown files in the directory, a missing segment, or damaged metadata are
//! refused the same way, with what to do.
//!
//! ## Reads and memory
//!
//! Terms come from an in-memory index (24 bytes per live entry, kept bounded by compaction);
//! the newest entries come from a cache bounded by [`WalOptions::cache_bytes`] (16 MiB);
//! older entries are read back from the segment files (and verified again). Reads never wait
//! for a write's `fdatasync`.
//!
//! ## Writes
//!
//! [`WalStore`] is [`dengine_storage_common::Store`] over [`WalLog`], as every backend: writes
//! run in call order, in place on a multi-thread runtime (without a hand-off to another
//! thread) and on tokio's blocking pool on a current-thread one, and the calls must be made
//! inside a tokio runtime. A
//! `persist` with `must_sync` is one positional write and one `fdatasync`. The exceptions
//! are rare: the write that fills a segment first activates the next one (preallocating it
//! if no spare is ready, a directory fsync and a metadata write), and syncs the old segment
//! if it holds unsynced batches. A failed write is never retried: the store refuses every
//! later write until it is reopened.
//!
//! ```
//! use dengine_core::{Entry, EntryPayload, HardState, LogReader, LogStore, PersistRequest};
//! use dengine_storage_wal::{WalOptions, WalStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     // Small segments for the example; the default is 64 MiB.
//!     let options = WalOptions::default().segment_bytes(1 << 20);
//!     let store = WalStore::open_or_create_with(dir.path(), options)?;
//!     let reader = store.reader(); // hand this to `Raft::new`
//!     let write = PersistRequest::new(
//!         Some(HardState { term: 1, vote: Some(1), commit: 0 }),
//!         vec![Entry::new(1, 1, EntryPayload::Blank)],
//!         true,
//!     );
//!     store.persist(&write).await?; // durable now: one write, one fdatasync
//!     assert_eq!(reader.last_index(), 1);
//!     Ok::<_, dengine_core::StorageError>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! (In a real runtime the `PersistRequest` comes from `Ready::persist`.)
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// Whether a deliberate recovery bug is switched on (`bugs.rs`); always `false` outside the
/// crate's own tests.
macro_rules! bug {
    ($bug:ident) => {{
        #[cfg(test)]
        {
            crate::bugs::on(crate::bugs::RecoveryBug::$bug)
        }
        #[cfg(not(test))]
        {
            false
        }
    }};
}

mod format;
mod meta;
mod options;
mod recovery;
mod segment;
mod vfs;
mod view;
mod wal;

#[cfg(test)]
mod bugs;
#[cfg(test)]
mod power_loss;
#[cfg(test)]
mod sim;

use std::ops::Range;
use std::path::Path;

use dengine_core::{
    Entry, LogIndex, PersistRequest, SnapshotMeta, StorageError, StoredState, Term,
};
#[cfg(doc)]
use dengine_core::{LogReader, LogStore};
use dengine_storage_common::marker::DirState;
use dengine_storage_common::{Bounds, Reader, Store, StoreKind, SyncLog};

pub use options::{DEFAULT_CACHE_BYTES, DEFAULT_SEGMENT_BYTES, WalOptions};

use crate::vfs::StdFs;
use crate::wal::Wal;

/// Name of this backend in the marker file.
pub const BACKEND: &str = "wal";
/// On-disk format version written and read by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the metadata file inside the store directory.
pub const META_FILE: &str = segment::META_FILE;

/// A [`LogStore`] on a write-ahead log. Cheap to clone; clones share the log. Open it with
/// [`WalOptions`] through `open_with`/`open_or_create_with`.
pub type WalStore = Store<WalLog>;
/// The synchronous [`LogReader`] view of a [`WalStore`]: answers from memory, or from the
/// segment files (page cache) for entries older than the cache.
pub type WalReader = Reader<WalLog>;

/// The file name of segment number `seq` (numbers start at 1).
pub fn segment_file_name(seq: u64) -> String {
    segment::segment_name(seq)
}

/// The write-ahead log behind a [`WalStore`]: the [`SyncLog`] that
/// [`Store`] runs. Use it through `WalStore`; reach it with
/// [`Store::backend`] for [`recovery_notes`](Self::recovery_notes).
pub struct WalLog {
    wal: Wal<StdFs>,
}

impl WalLog {
    /// What opening the store repaired, one line each, naming the file: a torn tail cut off
    /// (a write that never completed, so never acknowledged), leftovers of an interrupted
    /// purge, roll or preallocation removed. Empty when the store was closed cleanly or
    /// stopped between writes. Worth logging at start-up.
    pub fn recovery_notes(&self) -> &[String] {
        &self.wal.notes
    }
}

impl SyncLog for WalLog {
    const KIND: StoreKind = StoreKind::new(
        BACKEND,
        FORMAT_VERSION,
        &[META_FILE, segment::FIRST_SEGMENT, segment::TMP_FILE],
    );
    type Options = WalOptions;

    fn open(dir: &Path, state: DirState, options: WalOptions) -> Result<Self, StorageError> {
        let wal = match state {
            DirState::Existing => recovery::open(StdFs, dir, options)?,
            DirState::New => recovery::create(StdFs, dir, options)?,
        };
        Ok(WalLog { wal })
    }

    fn path(&self) -> &Path {
        &self.wal.dir
    }

    fn bounds(&self) -> Bounds {
        let view = self.wal.view();
        Bounds {
            compacted: view.compacted,
            last_index: view.last_index(),
        }
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.wal.term(index)
    }

    fn read(&self, range: Range<LogIndex>, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.wal.view().read(range, max_bytes)
    }

    fn load_state(&self) -> Result<StoredState, StorageError> {
        // Everything it returns is in memory.
        Ok(self.wal.load_state())
    }

    fn persist(&self, req: &PersistRequest) -> Result<(), StorageError> {
        self.wal.persist(req)
    }

    fn writes_in_place(&self, req: &PersistRequest) -> bool {
        self.wal.writes_in_place(req)
    }

    fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.wal.purge(up_to)
    }

    fn snapshot(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        self.wal.snapshot(meta, reset)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.wal.sync()
    }
}
