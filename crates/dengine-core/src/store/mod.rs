//! The storage contracts, in one place: [`LogReader`] (the core's synchronous read-only view of
//! the log), [`LogStore`] (the durable log and hard state the runtime writes, one
//! [`PersistRequest`] at a time), [`StateMachine`] (the replicated application), and their one
//! error type, [`StorageError`].
//!
//! The core itself never calls [`LogStore`] or [`StateMachine`] (it is sans-I/O); the runtime
//! does. The core only reads the log back through the [`LogReader`] that
//! [`LogStore::reader`] hands out, and reports the reads that failed in
//! [`Ready::storage_errors`](crate::Ready::storage_errors) with the same [`StorageError`] the
//! stores return.
//!
//! Implementations: `MemoryStore` and `MemoryStateMachine` here (feature `memory`), and the
//! durable backends `dengine-storage-wal`, `dengine-storage-redb` and `dengine-storage-sled`,
//! which share their machinery (call-ordered blocking writes, the record codec, the store
//! marker) through `dengine-storage-common`. Every `LogStore` must pass the conformance suite
//! in `dengine_storage_common::testing` (feature `testing` of that crate).
//!
//! # Layout of this module
//!
//! One job per file, and no file imports the one that imports it: `error.rs`
//! ([`StorageError`]), `persist.rs` ([`PersistRequest`], [`Persisted`]), `log_store.rs`
//! ([`LogReader`], [`LogStore`], [`StoredState`]), `validate.rs` (the request rules every
//! store checks), `snapshot_data.rs` ([`SnapshotData`], a snapshot's bytes in memory or in a file), `state_machine.rs`
//! ([`StateMachine`], [`Snapshot`]) and `memory.rs` (the
//! in-memory implementations). [`Ready`](crate::Ready) uses the write and the error type from
//! here; nothing here uses `Ready`.
//!
//! # Implementing `LogStore` for another database
//!
//! A walkthrough, in the order the pieces are usually written:
//!
//! 1. **Layout.** Store each entry under its index (big-endian if the database sorts keys as
//!    bytes, so that key order is log order), plus three small records: the [`HardState`](crate::HardState), the
//!    compaction point (index and term of the last purged entry) and the [`SnapshotMeta`].
//!    `dengine_storage_common::codec` gives a versioned byte encoding for all of them with a
//!    CRC-32 per record; verify it on every read and report a mismatch as
//!    [`StorageError::Corrupt`] naming the file and the index.
//! 2. **One write per [`LogStore::persist`].** Hard state, truncation of the suffix from
//!    `entries[0].index` and the new entries go into *one* atomic batch (transaction), followed
//!    by *one* fsync when `must_sync` is set. Validate the request first ([`validate_persist`]:
//!    consecutive indexes, no gap after the last index, nothing at or below the compaction
//!    point) and refuse a bad one with [`StorageError::InvalidArgument`] before writing
//!    anything.
//! 3. **Do not block the executor, keep call order.** Database calls block; run them on a
//!    blocking thread pool. Start a write (or at least take its place in line) when the method
//!    is *called*, then return the future: writes must apply in call order even if their
//!    futures are polled out of order. `dengine_storage_common::Store` does exactly this (and
//!    implements [`LogStore`] and [`LogReader`]) for any backend that implements its
//!    synchronous `SyncLog` trait; the workspace backends are built that way.
//! 4. **The reader.** [`LogStore::Reader`] is a cheap clone sharing the database handle. The
//!    core calls it on its own thread, so it must answer from memory or the page cache, and it
//!    must show every write whose `persist` future has completed.
//! 5. **Markers.** Write a backend name and format version next to the data and refuse to open
//!    data written by another backend or a newer format ([`StorageError::FormatMismatch`]).
//! 6. **Run the suites.** `dengine_storage_common::testing` runs the conformance suite and the
//!    damaged-input suite against your store, given a function that opens it in a directory.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # {
//! use dengine_core::store::{LogReader, LogStore, MemoryStore, PersistRequest};
//! use dengine_core::{Entry, EntryPayload, HardState};
//!
//! let store = MemoryStore::new();
//! let reader = store.reader();
//! let write = PersistRequest::new(
//!     Some(HardState { term: 1, vote: Some(1), commit: 0 }),
//!     vec![Entry::new(1, 1, EntryPayload::Blank)],
//!     true,
//! );
//! // What `LogStore::persist` does, without the future (the store has no I/O to wait for).
//! store.persist_now(&write).unwrap();
//! // The reader shows the write as soon as the write has returned.
//! assert_eq!(reader.last_index(), 1);
//! assert_eq!(store.hard_state().term, 1);
//! # }
//! ```

mod error;
mod log_store;
#[cfg(feature = "memory")]
mod memory;
mod persist;
mod snapshot_data;
mod state_machine;
mod validate;

/// What a snapshot covers (defined with the protocol types; re-exported here because every
/// store records it).
pub use crate::types::SnapshotMeta;
pub use error::StorageError;
pub use log_store::{LogReader, LogStore, StoredState};
#[cfg(feature = "memory")]
pub use memory::{MemoryStateMachine, MemoryStore};
pub use persist::{PersistRequest, Persisted};
pub use snapshot_data::{SnapshotData, SnapshotReader, SnapshotSource};
pub use state_machine::{Command, Snapshot, SnapshotIoError, SnapshotView, StateMachine};
pub use validate::{validate_persist, validate_range, validate_snapshot};
