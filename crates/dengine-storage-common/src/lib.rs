//! # dengine-storage-common
//!
//! The machinery every durable dengine `LogStore` backend shares, so that a backend crate
//! holds only what is specific to its database:
//!
//! - [`Store`] and [`SyncLog`]: a backend implements `SyncLog` (blocking calls on its
//!   database) and names `Store<ItsLog>` its store. `Store` implements `LogStore` and the
//!   core's `LogReader` once for all backends: the marker check on open, database calls that
//!   never stall other tasks (writes in place via `block_in_place` on a multi-thread runtime,
//!   otherwise on tokio's blocking pool; a write the backend says only copies bytes,
//!   [`SyncLog::writes_in_place`], straight on the calling thread when no other write is in
//!   progress), writes in call order, database panics turned into errors.
//! - [`Bounds`]: the log's shape kept in memory, with the checks every write and read makes
//!   against it; [`engine_error`] and [`io_error`] build errors that name the file.
//! - [`codec`]: the versioned, checksummed record encoding of entries, hard state, compaction
//!   point and snapshot description (record version 3; version 2 is still read), and the
//!   store marker's text.
//! - [`marker`]: the store directory's marker file (backend name and format version), checked
//!   before the database is opened and written last when a store is created.
//! - [`FileRegion`]: snapshot data that lies in a file (part of an open file, read on demand),
//!   for the runtime's snapshot files and the transport's spool.
//! - `testing` (feature `testing`): the `LogStore` conformance suite, the damaged-input suite
//!   and the SIGKILL crash harness that every backend runs unchanged, plus small helpers.
//! - `bench` (feature `testing`): the synced-append benchmark behind
//!   `cargo xtask bench storage`.
//!
//! The storage contracts themselves (`LogReader`, `LogStore`, `StateMachine`, `StorageError`)
//! live in `dengine_core::store`; this crate depends on them, never the reverse.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod blocking;
mod bounds;
pub mod codec;
mod file_region;
pub mod marker;
mod store;

#[cfg(feature = "testing")]
pub mod bench;
#[cfg(feature = "testing")]
pub mod testing;

pub use bounds::{Bounds, engine_error, io_error};
pub use file_region::{FileRegion, crc32_of};
pub use store::{Reader, Store, StoreKind, SyncLog};
