//! The [`StateMachine`] contract: what the runtime applies committed entries to.

use std::future::Future;

use bytes::Bytes;

use super::error::StorageError;
use crate::types::{Entry, LogIndex, Membership, SnapshotMeta};

/// A snapshot of a state machine: what it covers and its serialized contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last entry folded in, and the membership at that point.
    pub meta: SnapshotMeta,
    /// The serialized state, opaque to Raft; [`StateMachine::install_snapshot`] reads it back.
    pub data: Bytes,
}

/// The replicated application. The runtime calls it off the protocol loop, one call at a time
/// (`&mut self`), with committed entries in log order.
///
/// # Contract
///
/// * **Apply.** [`apply`](StateMachine::apply) gets consecutive committed entries, each exactly
///   once in normal operation, and returns one response per entry in the same order. Blank and
///   membership entries get an empty response; a membership entry also replaces
///   [`membership`](StateMachine::membership).
/// * **Restart.** [`applied_index`](StateMachine::applied_index) and
///   [`membership`](StateMachine::membership) must survive a restart *together with the data
///   they describe*: a durable state machine writes its applied index atomically with the
///   effects of the entries (same transaction), so that after a crash it never re-applies an
///   entry it already applied or skips one. A state machine that is not durable (such as
///   `MemoryStateMachine`, feature `memory`) starts at 0 and is rebuilt by
///   replaying the log (or installing a snapshot) after a restart.
/// * **Determinism.** The responses and the resulting state depend only on the entries applied,
///   never on time, randomness or the node: all replicas must agree.
/// * **Errors.** An `Err` from `apply` means the state machine can no longer be trusted (disk
///   failure); the runtime stops the node. Application-level failures ("key not found") are
///   ordinary responses.
pub trait StateMachine: Send + 'static {
    /// Applies committed entries in order and returns one response per entry.
    fn apply(
        &mut self,
        entries: &[Entry],
    ) -> impl Future<Output = Result<Vec<Bytes>, StorageError>> + Send;

    /// Index of the last applied entry (0 if none). Must be durable with the data.
    fn applied_index(&self) -> LogIndex;

    /// The membership of the last applied membership entry (or snapshot).
    fn membership(&self) -> Membership;

    /// Serializes the current state. `meta.last_included` is the last applied entry.
    fn snapshot(&mut self) -> impl Future<Output = Result<Snapshot, StorageError>> + Send;

    /// Replaces the whole state with a snapshot (received from the leader). Afterwards
    /// `applied_index() == meta.last_included.index`.
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Bytes,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Answers a read-only request against the current state. Linearizability is the
    /// runtime's job (it calls this only once a read index has been applied).
    fn query(&self, request: Bytes) -> impl Future<Output = Result<Bytes, StorageError>> + Send;
}
