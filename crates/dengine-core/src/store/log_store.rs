//! The storage contracts the core and the runtime share: [`LogReader`], the core's
//! synchronous read-only view of the log, and [`LogStore`], the durable log and hard state
//! the runtime writes.

use std::future::Future;

use super::error::StorageError;
use super::persist::PersistRequest;
use crate::types::{Entry, HardState, LogIndex, SnapshotMeta, Term};

/// A synchronous, read-only view of the durable log.
///
/// Implementations are expected to serve reads from memory or a page cache; the core calls
/// them while handling messages. Entries before [`first_index`](LogReader::first_index) are
/// compacted; `term(first_index() - 1)` must still answer (the term of the snapshot's last
/// entry, or 0 for an empty log).
pub trait LogReader {
    /// Index of the first entry stored (1 for a log that was never compacted).
    fn first_index(&self) -> LogIndex;
    /// Index of the last entry stored (`first_index() - 1` when empty).
    fn last_index(&self) -> LogIndex;
    /// Term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;
    /// Appends to `out` the entries in `[low, high)`, stopping early once their total
    /// [`size_bytes`](Entry::size_bytes) would exceed `max_bytes` (but always at least one).
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError>;
}

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
