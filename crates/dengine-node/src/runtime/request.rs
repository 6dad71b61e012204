//! What flows into the event loop from clients and from its helper tasks.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use dengine_core::store::Snapshot;
use dengine_core::{LogIndex, Membership, MembershipChange, NodeId, SnapshotMeta};
use tokio::sync::oneshot;

use crate::api::{Consistency, Status};
use crate::error::{AdminError, ProposeError, ReadError};

/// A client or admin request to the event loop.
pub(crate) enum Request {
    Propose {
        command: Bytes,
        /// When the caller stops waiting: the loop answers `ProposeError::Timeout` then.
        deadline: Instant,
        span: tracing::Span,
        tx: oneshot::Sender<Result<Bytes, ProposeError>>,
    },
    Read {
        query: Bytes,
        consistency: Consistency,
        tx: oneshot::Sender<Result<Bytes, ReadError>>,
    },
    Status {
        tx: oneshot::Sender<Status>,
    },
    ChangeMembership {
        changes: Vec<MembershipChange>,
        addresses: BTreeMap<NodeId, String>,
        deadline: Instant,
        tx: oneshot::Sender<Result<Membership, AdminError>>,
    },
    TransferLeader {
        to: NodeId,
        deadline: Instant,
        tx: oneshot::Sender<Result<(), AdminError>>,
    },
    TriggerSnapshot {
        tx: oneshot::Sender<Result<SnapshotMeta, AdminError>>,
    },
    Campaign,
    Shutdown {
        tx: oneshot::Sender<()>,
    },
}

/// Reports from the apply task and the snapshot senders.
pub(crate) enum Event {
    /// The state machine applied everything up to `index`.
    Applied { index: LogIndex },
    /// A snapshot of the state machine was built.
    SnapshotBuilt(Result<Snapshot, String>),
    /// A snapshot from the leader was loaded into the state machine (or failed to).
    Installed {
        meta: SnapshotMeta,
        data: Bytes,
        result: Result<(), String>,
    },
    /// A snapshot stream to `peer` ended.
    SnapshotSent { peer: NodeId, delivered: bool },
    /// The state machine failed; the node must stop.
    Fatal(String),
}
