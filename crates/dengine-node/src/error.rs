//! The errors of the node's public API: starting a node, proposing, reading and
//! administration. Every variant says what the caller can do about it.

use dengine_core::{
    ConfigError, LeaderHint, LogIndex, MembershipError, NodeId, StorageError, TransferError,
};

/// Why a proposal did not produce a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// The protocol refused the command; it was not applied. On
    /// [`NotLeader`](dengine_core::ProposeError::NotLeader), send it to the leader named
    /// there ([`leader`](ProposeError::leader)); on `TransferInProgress` or `UncommittedLimit`
    /// retry shortly; on `TooLarge` split it.
    #[error(transparent)]
    Refused(#[from] dengine_core::ProposeError),
    /// Too many requests are pending here (`client.max_pending`). The command was not
    /// applied; retry later.
    #[error("the node is busy ({0}); the command was not applied, retry later")]
    Busy(&'static str),
    /// No outcome within `client.propose_timeout_ms`. **The outcome is unknown**: the command
    /// may still be applied later. Retry only if the command is idempotent.
    #[error(
        "no response within the proposal timeout; the outcome is unknown (the command may \
         still be applied)"
    )]
    Timeout,
    /// The request was accepted but its fate could not be followed to the end (its entry
    /// was folded into a snapshot received from the leader). **The outcome is unknown.**
    #[error("the outcome of the command is unknown: {0}")]
    Interrupted(&'static str),
    /// The node is shutting down. A command accepted before the shutdown began has an
    /// **unknown outcome**; a new one was not applied.
    #[error("the node is shutting down (a command already accepted has an unknown outcome)")]
    ShuttingDown,
    /// The node stopped after a fatal error; the outcome of an accepted command is unknown.
    #[error("the node stopped: {reason}")]
    Stopped {
        /// The fatal error.
        reason: String,
    },
    /// The client session refused the command; it was not applied (see
    /// [`SessionRefusal`](dengine_core::sessions::SessionRefusal) for what to do).
    #[error("{0}")]
    Session(dengine_core::sessions::SessionRefusal),
    /// A retried session command that **was applied, once**, but whose response is no
    /// longer known: the member applied it before a restart, and a durable state machine's
    /// session table is rebuilt from the log without the responses (docs/sessions.md). It
    /// will not be applied again; read the state to learn its effect.
    #[error(
        "the command was applied (once), but its response is lost: the leader restarted          since it applied it and keeps no copy; read the state to learn its effect"
    )]
    ResponseLost,
    /// A session call on a node without client sessions
    /// ([`NodeBuilder::client_sessions`](crate::NodeBuilder::client_sessions)).
    #[error(
        "client sessions are off on this node: start every member with client sessions on \
         (NodeBuilder::client_sessions) to use them"
    )]
    SessionsOff,
}

impl ProposeError {
    /// The leader to send the command to, when this node refused it for not leading: its id
    /// and, if the configuration records it, its address.
    pub fn leader(&self) -> Option<(NodeId, Option<&str>)> {
        match self {
            ProposeError::Refused(dengine_core::ProposeError::NotLeader {
                leader: Some(leader),
                leader_address,
            }) => Some((*leader, leader_address.as_deref())),
            _ => None,
        }
    }

    /// A refusal for not leading, naming `leader` (for the runtime's own refusals).
    pub(crate) fn not_leader(leader: Option<NodeId>, leader_address: Option<String>) -> Self {
        ProposeError::Refused(dengine_core::ProposeError::NotLeader {
            leader,
            leader_address,
        })
    }
}

/// Why a read did not produce an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The read could not be confirmed within `client.read_timeout_ms` (no leader, or the
    /// leader could not reach a majority). Retry.
    #[error("the read could not be confirmed within the read timeout; retry")]
    Timeout,
    /// Too many requests are pending (`client.max_pending`); retry later.
    #[error("the node is busy (too many pending requests); retry later")]
    Busy,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node stopped after a fatal error.
    #[error("the node stopped: {reason}")]
    Stopped {
        /// The fatal error.
        reason: String,
    },
    /// The state machine failed to answer the query.
    #[error("the state machine failed the query: {0}")]
    StateMachine(String),
}

/// Why an administrative operation (membership change, leader transfer, snapshot) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// This node does not lead; send the request to `leader` (at `leader_address`).
    #[error(
        "not the leader: {}; send the request to the leader",
        LeaderHint::of(.leader, .leader_address)
    )]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
        /// Where the leader is reached, from the membership's addresses.
        leader_address: Option<String>,
    },
    /// The core refused the membership change.
    #[error("membership change refused: {0}")]
    Membership(MembershipError),
    /// The core refused the leader transfer.
    #[error("leader transfer refused: {0}")]
    Transfer(TransferError),
    /// The leader transfer did not complete in time (the target may be unreachable or far
    /// behind); the old leader resumed.
    #[error("leadership did not move to node {to} in time ({detail})")]
    TransferFailed {
        /// The transfer target.
        to: NodeId,
        /// What happened instead.
        detail: String,
    },
    /// The configuration entry was overwritten by a new leader: the change did not happen.
    #[error("the membership change at index {index} was overwritten by a new leader; retry")]
    Overwritten {
        /// Index of the lost configuration entry.
        index: LogIndex,
    },
    /// The operation did not complete in time; its outcome is unknown (check `status()`).
    #[error("the operation did not complete in time; check status() for its outcome")]
    Timeout,
    /// Building or recording a snapshot failed.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node stopped after a fatal error.
    #[error("the node stopped: {reason}")]
    Stopped {
        /// The fatal error.
        reason: String,
    },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `bootstrap` was asked of a store that already holds Raft state. Bootstrapping twice
    /// would forget votes and entries and could elect two leaders; restart the node with
    /// `start()` instead.
    #[error(
        "refusing to bootstrap: the log store already holds state (term {term}, last index \
         {last_index}); restart the node with start() instead"
    )]
    AlreadyInitialized {
        /// The stored term.
        term: u64,
        /// The stored last log index.
        last_index: LogIndex,
    },
    /// Client sessions were asked for with a durable state machine on a node that keeps no
    /// snapshot files: at a restart the session table is rebuilt from the newest snapshot
    /// file and the log after it, which needs the files. Give the node a snapshot directory
    /// ([`NodeBuilder::snapshot_dir`](crate::NodeBuilder::snapshot_dir)), or run without
    /// sessions.
    #[error(
        "client sessions with a durable state machine need snapshot files (the session table \
         is rebuilt at a restart from the newest snapshot and the log after it): give the node \
         a snapshot directory (NodeBuilder::snapshot_dir), or run without \
         NodeBuilder::client_sessions"
    )]
    SessionsNeedSnapshots,
    /// A durable state machine's session table cannot be rebuilt at start (see
    /// [`SessionsNeedSnapshots`](StartError::SessionsNeedSnapshots)): the snapshot's table is
    /// damaged, or log entries it needs are compacted or unreadable.
    #[error("the client session table cannot be rebuilt: {0}")]
    SessionTable(String),
    /// The initial members given to `bootstrap` are unusable.
    #[error("invalid initial members: {0}")]
    InvalidMembers(String),
    /// The configuration failed validation
    /// ([`NodeConfig::validate`](crate::NodeConfig::validate)).
    #[error("invalid node configuration: {}", describe(.0))]
    Config(#[from] ConfigError),
    /// The snapshot directory could not be read.
    #[error("snapshot directory: {0}")]
    SnapshotFile(String),
    /// The log store failed while starting.
    #[error("log store error while starting: {0}")]
    Storage(#[from] StorageError),
    /// The state machine failed to load its snapshot while starting.
    #[error("the state machine could not load its snapshot while starting: {0}")]
    StateMachine(String),
    /// The state machine has applied less than the log store still holds: the entries in
    /// between were compacted, so the node cannot rebuild its state. The state machine must
    /// be durable (or restored from its snapshot) when the log is compacted.
    #[error(
        "the state machine has applied up to index {applied}, but the log store was compacted \
         up to index {compacted}; entries {from}..={compacted} are gone. Use a durable state \
         machine or restore it from its snapshot before restarting",
        from = applied + 1
    )]
    StateMachineBehindLog {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The log store's compaction point.
        compacted: LogIndex,
    },
    /// A durable state machine has applied beyond the end of the log store, and no snapshot
    /// file covers it. Either the node stopped while installing a snapshot from the leader,
    /// after the state machine took it and before the log store was reset to it, and has no
    /// snapshot file to finish the install from
    /// ([`NodeBuilder::snapshot_dir`](crate::NodeBuilder::snapshot_dir)); or the log store
    /// lost entries it had reported durable (a disk, file system or store that does not honour
    /// `fsync`).
    #[error(
        "the state machine has applied up to index {applied}, beyond the end of the log store \
         (index {last_index}), and no snapshot file covers it: the node stopped while installing \
         a snapshot from the leader without a snapshot directory (run nodes with \
         NodeBuilder::snapshot_dir; the dengine facade always does), or the log store lost \
         entries it had reported durable (a disk or file system that does not honour fsync). \
         Replace the member: remove it from the cluster, wipe its data, add it again under a \
         new id (docs/operations.md, \"Replacing a member\")"
    )]
    StateMachineAheadOfLog {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The last index of the log store.
        last_index: LogIndex,
    },
}

/// Every problem of `e`, one per line.
fn describe(e: &ConfigError) -> String {
    e.problems
        .iter()
        .map(|p| format!("\n  {} = {} (allowed: {})", p.field, p.value, p.allowed))
        .collect()
}
