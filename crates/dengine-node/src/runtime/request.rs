//! What flows into the event loop from clients and from its helper tasks.

use std::collections::BTreeMap;
use tokio::time::Instant;

use bytes::Bytes;
use dengine_core::store::{Snapshot, SnapshotData};
use dengine_core::{Membership, MembershipChange, NodeId, SnapshotMeta};
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
        /// `None`: a barrier (answered with an empty response once applied, without asking
        /// the state machine).
        query: Option<Bytes>,
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
        tx: oneshot::Sender<Result<Snapshot, AdminError>>,
    },
    Campaign,
    Shutdown {
        tx: oneshot::Sender<()>,
    },
}

/// What the apply task reports besides its progress (which it publishes on a `watch`
/// channel: only the newest applied index matters).
///
/// These travel on a bounded queue of [`EVENT_QUEUE_LEN`]. At most one of each kind is ever
/// outstanding: the loop asks for one snapshot build and one installation at a time, and the
/// task ends after `Fatal`. So the queue never fills; if it did, the apply task would wait
/// for the loop to take an event (nothing is dropped), and the loop, which takes events on
/// every turn, would free it.
pub(crate) enum Event {
    /// A snapshot of the state machine was built.
    SnapshotBuilt(Result<Snapshot, String>),
    /// A snapshot from the leader was loaded into the state machine (or failed to).
    Installed {
        meta: SnapshotMeta,
        data: SnapshotData,
        result: Result<(), String>,
    },
    /// The state machine failed; the node must stop.
    Fatal(String),
}

/// Capacity of the apply task's [`Event`] queue (see there why it never fills).
pub(crate) const EVENT_QUEUE_LEN: usize = 4;
