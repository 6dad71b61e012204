//! The storage contracts a runtime drives: [`LogStore`] for the Raft log and hard state,
//! [`StateMachine`] for the replicated application.
//!
//! The core itself never calls these traits (it is sans-I/O); the runtime does. The core only
//! reads the log back through the synchronous [`LogReader`] that
//! [`LogStore::reader`] hands out.
//!
//! Implementations in this workspace: `MemoryStore` and `MemoryStateMachine` (feature
//! `memory`), `dengine-storage-redb` and `dengine-storage-sled`. Every `LogStore` must pass the
//! conformance suite in `store::testing` (feature `testing`).
//!
//! # Implementing `LogStore` for another database
//!
//! A walkthrough, in the order the pieces are usually written:
//!
//! 1. **Layout.** Store each entry under its index (big-endian if the database sorts keys as
//!    bytes, so that key order is log order), plus three small records: the [`HardState`], the
//!    compaction point (index and term of the last purged entry) and the [`SnapshotMeta`].
//!    With feature `codec`, `store::codec` gives a versioned byte encoding for all of them with a
//!    CRC-32 per record; verify it on every read and report a mismatch as
//!    [`StorageError::Corrupt`] naming the file and the index.
//! 2. **One write per [`LogStore::persist`].** Hard state, truncation of the suffix from
//!    `entries[0].index` and the new entries go into *one* atomic batch (transaction), followed
//!    by *one* fsync when `must_sync` is set. Validate the request first (consecutive indexes,
//!    no gap after the last index, nothing at or below the compaction point) and refuse a bad
//!    one with [`StorageError::InvalidArgument`] before writing anything.
//! 3. **Do not block the executor, keep call order.** Database calls block; run them on a
//!    blocking thread pool (`tokio::task::spawn_blocking` in the workspace backends). Start a
//!    write (or at least take its place in line) when the method is *called*, then return the
//!    future: writes must apply in call order even if their futures are polled out of order.
//!    `dengine_storage_common::blocking` does exactly this for the workspace backends.
//! 4. **The reader.** [`LogStore::Reader`] is a cheap clone sharing the database handle. The
//!    core calls it on its own thread, so it must answer from memory or the page cache, and it
//!    must show every write whose `persist` future has completed.
//! 5. **Markers.** Write a backend name and format version next to the data and refuse to open
//!    data written by another backend or a newer format ([`StorageError::FormatMismatch`]).
//! 6. **Run the suite.** Call `testing::run_conformance` from a test with a
//!    `testing::StoreFactory` that opens (and reopens) your store by name.
//!
//! ```
//! # #[cfg(all(feature = "memory", feature = "testing"))]
//! # {
//! use dengine_core::store::testing::{block_on, persist_request};
//! use dengine_core::store::{LogStore, MemoryStore};
//! use dengine_core::{Entry, EntryPayload, HardState, LogReader};
//!
//! let store = MemoryStore::new();
//! let reader = store.reader();
//! let req = persist_request(
//!     Some(HardState { term: 1, vote: Some(1), commit: 0 }),
//!     vec![Entry::new(1, 1, EntryPayload::Blank)],
//!     true,
//! );
//! block_on(store.persist(&req)).unwrap();
//! // The reader shows the write as soon as `persist` has returned.
//! assert_eq!(reader.last_index(), 1);
//! assert_eq!(block_on(store.load_state()).unwrap().hard_state.term, 1);
//! # }
//! ```

use std::future::Future;
use std::io;
use std::path::PathBuf;

use crate::ready::PersistRequest;
use crate::storage::{LogError, LogReader};
/// What a snapshot covers (defined with the protocol types; re-exported here because every
/// store records it).
pub use crate::types::SnapshotMeta;
use crate::types::{Entry, EntryId, HardState, LogIndex, Term};

#[cfg(feature = "codec")]
pub mod codec;
#[cfg(feature = "memory")]
mod memory;
mod state_machine;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "memory")]
pub use memory::{MemoryStateMachine, MemoryStore};
pub use state_machine::{Snapshot, StateMachine};

/// Everything a [`LogStore`] holds besides the entries themselves, read at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// The last saved hard state ([`HardState::default`] for a new store).
    pub hard_state: HardState,
    /// Index of the first stored entry (1 for a log that was never compacted).
    pub first_index: LogIndex,
    /// Index of the last stored entry (`first_index - 1` when the log is empty).
    pub last_index: LogIndex,
    /// The last saved snapshot description, if any.
    pub snapshot_meta: Option<SnapshotMeta>,
}

/// Why a storage operation failed. Every variant names what and where, so an operator can act
/// on the message alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A stored log entry failed its checksum or could not be decoded.
    #[error("corrupt log entry at index {index} in {path}: {detail}")]
    Corrupt {
        /// The file or database that holds the entry.
        path: PathBuf,
        /// The index of the entry.
        index: LogIndex,
        /// What exactly is wrong.
        detail: String,
    },
    /// A stored metadata record (hard state, compaction point, snapshot meta, marker) failed
    /// its checksum or could not be decoded.
    #[error("corrupt {record} record in {path}: {detail}")]
    CorruptMetadata {
        /// The file or database that holds the record.
        path: PathBuf,
        /// Which record.
        record: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// The operating system refused or failed an operation.
    #[error("I/O error while {op} {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done ("opening", "writing the marker of", ...).
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The data was written by another backend or a format version this build cannot read.
    #[error(
        "{path} holds a store of format {found:?}, but this backend reads {expected:?}; \
         open it with the backend and version that wrote it"
    )]
    FormatMismatch {
        /// The marker file or database.
        path: PathBuf,
        /// The backend and version found there.
        found: String,
        /// The backend and version this build expects.
        expected: String,
    },
    /// There is no store at the given location (it was never created, or it was deleted).
    #[error(
        "no dengine store at {path}: it does not exist; create it explicitly if it is meant to be new"
    )]
    NotFound {
        /// The location asked for.
        path: PathBuf,
    },
    /// The database engine underneath failed.
    #[error("database error while {op} {path}: {detail}")]
    Backend {
        /// The database file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The engine's own message.
        detail: String,
    },
    /// The caller asked for something the contract does not allow (a gap in the log, a
    /// truncation below the compaction point, an inverted range).
    #[error("invalid storage request: {0}")]
    InvalidArgument(String),
    /// The index lies at or before the compaction point.
    #[error("log index {index} is compacted; the log now starts at {first_index}")]
    Compacted {
        /// The index asked for.
        index: LogIndex,
        /// The first index still stored.
        first_index: LogIndex,
    },
    /// The index lies after the last stored entry.
    #[error("log index {index} is not available; the log ends at {last_index}")]
    Unavailable {
        /// The index asked for.
        index: LogIndex,
        /// The last index stored.
        last_index: LogIndex,
    },
}

impl From<StorageError> for LogError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Compacted { index, first_index } => {
                LogError::Compacted { index, first_index }
            }
            StorageError::Unavailable { index, last_index } => {
                LogError::Unavailable { index, last_index }
            }
            other => LogError::Storage(other.to_string()),
        }
    }
}

/// Durable storage for the Raft log and hard state.
///
/// # Contract
///
/// * **Durability.** When the future of [`persist`](LogStore::persist) with
///   `must_sync == true`, [`purge`](LogStore::purge),
///   [`save_snapshot_meta`](LogStore::save_snapshot_meta),
///   [`reset_to_snapshot`](LogStore::reset_to_snapshot) or [`sync`](LogStore::sync) completes with `Ok`, the write (and every earlier one) survives
///   a crash of the process or the machine. A `persist` with `must_sync == false` is applied
///   and visible at once but may be lost in a crash until the next synced call; it is never
///   reordered after a later write (a lost unsynced write is lost together with everything
///   after it).
/// * **Atomicity.** One `persist` is one batch: after a crash either all of it (hard state,
///   truncation and appended entries) is there, or none of it. One call means one fsync (group
///   commit): the runtime batches many proposals into one request.
/// * **Visibility.** A [`Reader`](LogStore::Reader) obtained at any time shows every write
///   whose future has completed.
/// * **Order.** Writes (every method but `reader`, `load_state` and `read_entries`) are applied and
///   become durable in the order the *methods are called*, even if the runtime polls their
///   futures in another order or concurrently (pipelining, protocol contract 3). An
///   implementation therefore fixes a write's place in line when the method is called, not
///   when the future is first polled (a plain `async fn` does not). Implementations may apply
///   writes one at a time; a runtime that wants throughput batches instead of issuing many
///   writes in parallel.
/// * **Log shape.** The log is the contiguous range `first_index..=last_index`; the term of
///   `first_index - 1` (the compaction point, 0 for a fresh log) stays readable.
/// * **Errors** are values. A failed write leaves the store as it was before the call (or, if
///   the engine cannot promise that, the store reports every later call as failed); the
///   runtime should stop the node.
pub trait LogStore: Send + Sync + 'static {
    /// The synchronous read view handed to the core (see [`Raft::new`](crate::Raft::new)).
    type Reader: LogReader + Clone + Send + Sync + 'static;

    /// A read view over the same data. Cheap; every clone sees the same store.
    fn reader(&self) -> Self::Reader;

    /// Reads everything besides the entries: hard state, log bounds and snapshot meta.
    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send;

    /// Carries out a [`PersistRequest`]: saves the hard state (if any), discards every stored
    /// entry at or after `entries[0].index`, appends `entries`, and syncs if `must_sync`.
    ///
    /// The entries must be consecutive, `entries[0].index` must lie in
    /// `first_index..=last_index + 1` (after the compaction point and without a gap); anything
    /// else is refused with [`StorageError::InvalidArgument`] and nothing is written.
    /// Durable on return when `must_sync` is set.
    fn persist(
        &self,
        req: &PersistRequest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Entries in `[low, high)`, stopping once their total [`Entry::size_bytes`] would
    /// exceed `max_bytes`, but always at least one entry if the range is not empty.
    ///
    /// `low < first_index` is [`StorageError::Compacted`], `high > last_index + 1` is
    /// [`StorageError::Unavailable`], `low > high` is [`StorageError::InvalidArgument`].
    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>> + Send;

    /// Compaction: discards every entry up to and including `up_to`, remembering the term of
    /// `up_to` so that `term(first_index - 1)` still answers. A no-op if `up_to` is already
    /// compacted; an `up_to` past the last entry purges the whole log (the compaction point
    /// becomes the last entry). Durable on return.
    fn purge(&self, up_to: LogIndex) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Records the description of a snapshot this node built itself (returned by
    /// [`load_state`](LogStore::load_state)); the log is left as it is, compact it later
    /// with [`purge`](LogStore::purge).
    ///
    /// The log must contain `meta.last_included` (same index and term) or have compacted
    /// exactly up to it; anything else is refused with [`StorageError::InvalidArgument`] (a
    /// snapshot from the leader goes through [`reset_to_snapshot`](LogStore::reset_to_snapshot)).
    /// Durable on return.
    fn save_snapshot_meta(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Installs a snapshot received from the leader (`Ready::snapshot_to_install`): in one
    /// atomic, durable write, discards the whole log, restarts it right after
    /// `meta.last_included` (whose term `term(first_index - 1)` then answers) and records
    /// `meta`. Refused with [`StorageError::InvalidArgument`] if `meta.last_included` lies
    /// before the compaction point.
    fn reset_to_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Makes every earlier write durable, including those persisted with `must_sync == false`.
    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Checks a [`PersistRequest`] against the current log bounds, as every backend must before it
/// writes anything. `compacted` is the index of the last purged entry (`first_index - 1`).
pub fn validate_persist(
    req: &PersistRequest,
    compacted: LogIndex,
    last_index: LogIndex,
) -> Result<(), StorageError> {
    let Some(first) = req.entries.first() else {
        return Ok(());
    };
    if first.index <= compacted {
        return Err(StorageError::InvalidArgument(format!(
            "cannot write at index {}: entries up to {compacted} are compacted",
            first.index
        )));
    }
    if first.index > last_index.saturating_add(1) {
        return Err(StorageError::InvalidArgument(format!(
            "cannot write at index {}: the log ends at {last_index}, this would leave a gap",
            first.index
        )));
    }
    for (expected, entry) in (first.index..).zip(&req.entries) {
        if entry.index != expected {
            return Err(StorageError::InvalidArgument(format!(
                "entries are not consecutive: expected index {expected}, found {}",
                entry.index
            )));
        }
    }
    Ok(())
}

/// Checks a read range against the log bounds: the shared rules of
/// [`LogStore::read_entries`] and [`LogReader::entries`].
pub fn validate_range(
    low: LogIndex,
    high: LogIndex,
    first_index: LogIndex,
    last_index: LogIndex,
) -> Result<(), StorageError> {
    if low > high {
        return Err(StorageError::InvalidArgument(format!(
            "inverted range [{low}, {high})"
        )));
    }
    if low < first_index {
        return Err(StorageError::Compacted {
            index: low,
            first_index,
        });
    }
    if high > last_index.saturating_add(1) {
        return Err(StorageError::Unavailable {
            index: high - 1,
            last_index,
        });
    }
    Ok(())
}

/// Checks a snapshot against the log bounds before [`LogStore::save_snapshot_meta`]
/// (`reset == false`) or [`LogStore::reset_to_snapshot`] (`reset == true`). `term_at` is the
/// stored term at `meta.last_included.index`, if the log holds that index.
pub fn validate_snapshot(
    meta: &SnapshotMeta,
    compacted: EntryId,
    term_at: Option<Term>,
    reset: bool,
) -> Result<(), StorageError> {
    let at = meta.last_included;
    if at.index < compacted.index {
        return Err(StorageError::InvalidArgument(format!(
            "snapshot at {at} is older than the compaction point {compacted}"
        )));
    }
    let matches = at == compacted || term_at == Some(at.term);
    if !reset && !matches {
        return Err(StorageError::InvalidArgument(format!(
            "snapshot at {at} does not match the log (term there: {term_at:?}); a snapshot \
             from the leader is installed with reset_to_snapshot"
        )));
    }
    Ok(())
}
