//! What the core's administrative calls take and how they refuse: membership changes
//! (rules in `membership.rs`), snapshot reports (`snapshot.rs`) and leader transfers
//! (`transfer.rs`).

use crate::types::{EntryId, LeaderHint, LogIndex, NodeId};

/// One change to the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Make `id` a voter (a new node, or promote a learner).
    AddVoter(NodeId),
    /// Add `id` as a learner: it receives the log but does not vote.
    AddLearner(NodeId),
    /// Remove `id` from the cluster, voter or learner.
    Remove(NodeId),
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes membership.
    #[error(
        "not the leader: {}; send the change to the leader",
        LeaderHint::of(.leader, &None)
    )]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Another change is still in progress (its entry is not committed, or the joint
    /// configuration has not been left yet): one change at a time (thesis §4.1).
    #[error("membership change at index {index} is still in progress; retry when it commits")]
    ChangeInProgress {
        /// Index of the configuration entry still pending.
        index: LogIndex,
    },
    /// A new leader must first commit an entry of its own term (the 2015 single-server
    /// change fix, thesis §4.1 and raft-dev "bug in single-server membership changes").
    #[error("the leader has not yet committed an entry in its term; retry shortly")]
    LeaderNotReady,
    /// A leader transfer is in progress.
    #[error("a leader transfer is in progress; retry after it completes")]
    TransferInProgress,
    /// The change makes no sense for the current configuration.
    #[error("invalid membership change: {0}")]
    Invalid(String),
}

/// Why a snapshot report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot may only cover entries the state machine has applied.
    #[error("snapshot at index {index} is ahead of the applied index {applied}")]
    AheadOfApplied {
        /// The snapshot's last index.
        index: LogIndex,
        /// The applied index.
        applied: LogIndex,
    },
    /// The snapshot's last entry is not the entry in this node's log at that index.
    #[error("snapshot ends at {claimed} but the log holds term {actual} at that index")]
    TermMismatch {
        /// What the snapshot claims.
        claimed: EntryId,
        /// The term in the log.
        actual: u64,
    },
}

/// Why a leadership transfer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error(
        "not the leader: {}; ask the leader to transfer",
        LeaderHint::of(.leader, &None)
    )]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    #[error("node {0} is not a voter and cannot become leader")]
    NotAVoter(NodeId),
    /// This node already leads.
    #[error("node {0} is already the leader")]
    AlreadyLeader(NodeId),
}
