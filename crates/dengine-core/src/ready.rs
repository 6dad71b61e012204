//! The output of the core: one [`Ready`] bundle per turn, with the reads, failures and
//! peer regressions it reports. The contract is documented on [`Ready`]; the write it hands
//! out ([`PersistRequest`]) and its acknowledgement belong to the storage contract
//! ([`crate::store`]).

use crate::message::{Message, ReadCtx};
use crate::store::{PersistRequest, StorageError};
use crate::types::{Entry, LeaderHint, LogIndex, NodeId, SnapshotMeta, SoftState};

/// A follower was found to have lost log entries it had acknowledged to this leader: its
/// storage was wiped, damaged or rolled back (or replaced by an older copy). The leader no
/// longer counts those entries for it — it is excluded from quorums for them until it has
/// them again — and catches it up from `log_end`. A runtime should log this prominently: a
/// member that forgets what it acknowledged weakens the cluster's durability, and if it
/// happened without an operator knowing, the member's disk or its operation is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRegression {
    /// The follower.
    pub peer: NodeId,
    /// The index it had acknowledged.
    pub acknowledged: LogIndex,
    /// Where its log ends now.
    pub log_end: LogIndex,
}

/// Everything the core asks the runtime to do after a batch of inputs.
///
/// The I/O-ordering contract, in the order a runtime must honour it:
/// 1. **Persist** [`Ready::persist`] (hard state and entries). Entries overwrite the log from
///    the first entry's index on. Writes become durable in the order they are handed out.
/// 2. **Send** [`Ready::messages`] at any time, in parallel with (1): the core only puts a
///    message there once everything it depends on is durable. Responses that depend on a
///    write (vote grants, append acknowledgements) are held inside the core and appear in a
///    later `Ready`, after the runtime has reported the write with
///    [`Raft::on_persisted`](crate::Raft::on_persisted). A runtime therefore cannot send one
///    early: it never sees it before the write is done.
/// 3. **Apply** [`Ready::committed_entries`] in order, then report with
///    [`Raft::on_applied`](crate::Raft::on_applied). Serve [`Ready::read_states`] (they are
///    released only once the state machine has applied up to their index).
///
/// `docs/protocol.md` in the repository explains the contract at length.
#[derive(Debug, Default)]
#[must_use = "a Ready carries writes and messages the runtime must carry out"]
pub struct Ready {
    /// Role, term or leader changed since the last `Ready`.
    pub soft_state: Option<SoftState>,
    /// State to make durable; report completion with
    /// [`Raft::on_persisted`](crate::Raft::on_persisted)`(persist.done())`.
    pub persist: Option<PersistRequest>,
    /// Messages that may be sent now.
    pub messages: Vec<Message>,
    /// Committed entries to apply to the state machine, in order.
    pub committed_entries: Vec<Entry>,
    /// A snapshot from the leader to install: finish applying the committed entries handed
    /// out earlier, then load its data (which arrived with the `InstallSnapshot` message)
    /// into the state machine, reset the log store to start right after `last_included` and
    /// save the metadata durably, then call
    /// [`Raft::on_snapshot_installed`](crate::Raft::on_snapshot_installed). No committed
    /// entries are handed out until then.
    pub snapshot_to_install: Option<SnapshotMeta>,
    /// Entries up to and including this index may now be purged from the log store (they
    /// are covered by a snapshot). Purging is not urgent and need not be synced.
    pub compact_log_to: Option<LogIndex>,
    /// Reads that may now be served from the local state machine.
    pub read_states: Vec<ReadState>,
    /// Reads that cannot be served; the client should retry (possibly elsewhere).
    pub failed_reads: Vec<FailedRead>,
    /// Storage reads that failed while the core handled inputs. The core carries on where it
    /// safely can (skipping a send, rejecting a message), but a read that failed because the
    /// storage is damaged will fail again on every retry: a runtime should stop the node on
    /// any error that is not [`StorageError::is_out_of_range`] rather than log it in a loop.
    pub storage_errors: Vec<StorageError>,
    /// Followers found to have lost entries they had acknowledged (leader only).
    pub regressed_peers: Vec<PeerRegression>,
}

/// A read that may be served: the state machine has applied at least up to `index`, which
/// was the leader's commit index when its leadership was confirmed (thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The runtime's id for the request.
    pub ctx: ReadCtx,
    /// The read index.
    pub index: LogIndex,
}

/// A read that will not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedRead {
    /// The runtime's id for the request.
    pub ctx: ReadCtx,
    /// Why.
    pub error: ReadError,
}

/// Why a proposal was refused. The command was not appended: it can be sent again (to the
/// leader named in `NotLeader`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the one this node knows of, if any, and
    /// `leader_address` where the configuration says it is reached.
    #[error(
        "not the leader: {}; send the command to the leader",
        LeaderHint::of(.leader, .leader_address)
    )]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
        /// Where the leader is reached, from the configuration's addresses.
        leader_address: Option<String>,
    },
    /// The command exceeds `max_proposal_bytes` (`raft.max_proposal_bytes`).
    #[error("command of {size} bytes exceeds raft.max_proposal_bytes = {max}; split it")]
    TooLarge {
        /// Payload size.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// A leader transfer is in progress; retry on the new leader shortly.
    #[error("leadership is being transferred to node {to}; retry shortly")]
    TransferInProgress {
        /// The transfer target.
        to: NodeId,
    },
    /// Too many bytes are appended but not committed (followers are slow or unreachable).
    #[error(
        "{uncommitted} bytes are waiting to commit (raft.max_uncommitted_bytes = {max}): the \
         followers are slow or unreachable; retry later"
    )]
    UncommittedLimit {
        /// Bytes appended by this leader and not yet committed.
        uncommitted: u64,
        /// The configured limit.
        max: u64,
    },
}

/// Why a read could not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// This node is not the leader and does not know one to forward to, or it lost
    /// leadership before the read was confirmed.
    #[error(
        "not the leader: {}; retry on the leader",
        LeaderHint::of(.leader, &None)
    )]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The leader has not yet committed an entry of its term, so it does not know the latest
    /// commit index (thesis §6.4); retry shortly.
    #[error("the leader has not yet committed an entry in its term; retry shortly")]
    LeaderNotReady,
}

/// How a read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: confirm leadership with a heartbeat round to a quorum (thesis §6.4).
    ReadIndex,
    /// Lease read: serve without a round trip while the leader's lease holds (thesis §6.4.1).
    /// Needs `check_quorum`; falls back to ReadIndex when the lease is not valid.
    Lease,
}
