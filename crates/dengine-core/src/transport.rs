//! The [`Transport`] contract: how a runtime's messages reach its peers, and the [`Inbox`]
//! through which a transport hands messages from peers to the runtime.
//!
//! The core never calls these traits (it is sans-I/O); the runtime does. Raft tolerates lost,
//! duplicated and reordered messages (§5.3: "if followers crash or run slowly, or if network
//! packets are lost, the leader retries AppendEntries indefinitely"), so a transport is free
//! to drop a message rather than wait: it must never block the runtime's event loop.
//!
//! Implementations in this workspace: `dengine-net-grpc` (tonic; with a fault-injecting
//! wrapper for tests) and the simulator's in-process network.

use std::future::Future;

use crate::message::Message;
use crate::store::SnapshotData;
use crate::types::NodeId;

/// Sends messages to peers. One transport serves one node.
///
/// # Contract
///
/// * **Never blocks.** [`send`](Transport::send) queues the message and returns at once. When a
///   peer's queue is full, the peer is unknown or unreachable, the message is dropped and the
///   drop is counted; Raft resends what matters.
/// * **Per-peer order is best effort.** Messages to one peer usually arrive in the order sent;
///   the core copes when they do not.
/// * **Gating is the runtime's job.** The core only hands out a response after the state it
///   reports is durable (see `Ready`); the transport sends what it is given.
/// * **Snapshots are streamed separately.** An `InstallSnapshot` message (metadata only) goes
///   through [`send_snapshot`](Transport::send_snapshot) together with the state machine's
///   snapshot data; the runtime reports the outcome to the core with `Raft::report_snapshot`.
pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `message.to`; drops it if it cannot be queued now.
    fn send(&self, message: Message);

    /// Streams a snapshot to `message.to` (`message.body` is `InstallSnapshot`). Resolves `Ok`
    /// once the receiving node has accepted the whole snapshot, verified. A transport reads
    /// `data` piece by piece ([`SnapshotData::read_chunk`], blocking I/O when it lies in a
    /// file): a large snapshot is never held whole in memory.
    fn send_snapshot(
        &self,
        message: Message,
        data: SnapshotData,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sets (or changes) the address at which peer `id` is reached, e.g. when it joins.
    fn set_peer(&self, id: NodeId, address: String);

    /// Forgets peer `id` (it left the cluster): its queue is dropped, its connection closed.
    fn remove_peer(&self, id: NodeId);
}

/// Where a transport delivers what peers sent. Implemented by the runtime (usually by pushing
/// into its event loop's queue). Both methods must return quickly and never block.
pub trait Inbox: Send + Sync + 'static {
    /// A message from a peer, already checked to be addressed to this node.
    fn deliver(&self, message: Message) -> Result<(), InboxError>;

    /// A complete snapshot from a peer whose checksums were verified: `message.body` is
    /// `InstallSnapshot` with the metadata, `data` the state machine's serialized state (in
    /// memory, or in a file the transport received it into, which the runtime then owns: it
    /// is gone when the last handle is dropped).
    fn deliver_snapshot(&self, message: Message, data: SnapshotData) -> Result<(), InboxError>;
    /// Whether `from` left this cluster for good (a committed configuration retired it, see
    /// [`Membership::is_retired`](crate::Membership::is_retired)). A transport refuses such a
    /// sender's traffic — uploads included — and tells it why, so a removed member stops
    /// instead of disturbing the cluster. Default: no sender is retired.
    fn is_retired(&self, from: NodeId) -> bool {
        let _ = from;
        false
    }
    /// What this node knows of its cluster, for a node that is starting with an empty data
    /// directory and asks whether the cluster already exists. Default: `None` (unknown).
    fn describe(&self) -> Option<ClusterView> {
        None
    }
    /// A member refused this node's traffic because a committed configuration removed this
    /// node (`detail` says who and how). The runtime should stop the node and say so. Default:
    /// ignored.
    fn removed_from_cluster(&self, detail: String) {
        let _ = detail;
    }
}

/// A node's view of its cluster ([`Inbox::describe`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The node's current term (0: it never took part in an election).
    pub term: crate::types::Term,
    /// The index of its last log entry.
    pub last_index: crate::types::LogIndex,
    /// Its committed configuration.
    pub membership: crate::types::Membership,
}

/// Why an [`Inbox`] did not take a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The node's queue is full; the sender should treat the message as lost.
    #[error("the node's inbound queue is full; the message was dropped")]
    Full,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why a snapshot (or another transport operation) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No address is known for the peer.
    #[error("no address is known for node {peer}; add it with set_peer")]
    UnknownPeer {
        /// The peer.
        peer: NodeId,
    },
    /// The peer could not be reached or the connection broke.
    #[error("node {peer} is unreachable: {detail}")]
    Unreachable {
        /// The peer.
        peer: NodeId,
        /// What the network layer reported.
        detail: String,
    },
    /// The peer answered with a refusal (wrong cluster, bad checksum, full queue, ...).
    #[error("node {peer} refused: {detail}")]
    Rejected {
        /// The peer.
        peer: NodeId,
        /// The peer's reason.
        detail: String,
    },
    /// A step of the operation took longer than its timeout.
    #[error("timed out talking to node {peer}: {detail}")]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// Which step timed out.
        detail: String,
    },
    /// The transport is shutting down.
    #[error("the transport is shutting down")]
    ShuttingDown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inbox that implements only what it must.
    struct Minimal;

    impl Inbox for Minimal {
        fn deliver(&self, _: Message) -> Result<(), InboxError> {
            Ok(())
        }
        fn deliver_snapshot(&self, _: Message, _: SnapshotData) -> Result<(), InboxError> {
            Ok(())
        }
    }

    /// The documented defaults: no sender is retired, and the cluster is unknown (so a
    /// joining node is never told a made-up cluster exists).
    #[test]
    fn inbox_defaults_retire_no_one_and_describe_nothing() {
        assert!(!Minimal.is_retired(7));
        assert_eq!(Minimal.describe(), None);
        Minimal.removed_from_cluster("ignored".into());
    }
}
