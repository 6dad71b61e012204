//! The plain data of the node's API: how a read is confirmed ([`Consistency`]), what
//! [`Node::status`](crate::Node::status) reports ([`Status`], [`PeerStatus`]) and what
//! [`Node::watch_leadership`](crate::Node::watch_leadership) publishes ([`Leadership`]). The
//! errors are in `error.rs`; the handle that takes requests is `node.rs`.

use std::collections::BTreeMap;

use dengine_core::{LogIndex, Membership, NodeId, PeerProgress, Role, SnapshotMeta, Term};

/// How a read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Linearizable through ReadIndex (thesis §6.4): the leader confirms its leadership with
    /// a heartbeat round to a majority, then the read is served once the local state machine
    /// has applied the leader's commit index. Followers forward the request to the leader.
    Linearizable,
    /// Linearizable through the leader's lease (thesis §6.4.1): no round trip while the lease
    /// holds; relies on bounded clock drift (`raft.lease_drift_ms`). Falls back to ReadIndex
    /// when the lease is not valid.
    Lease,
    /// From the local state machine right away: may miss recent writes (or, on a
    /// partitioned node, be arbitrarily old), never sees uncommitted ones.
    Stale,
}

/// The leader's view of one peer, in [`Status::peers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Replication progress.
    pub progress: PeerProgress,
    /// Entries the peer is behind the leader's last index.
    pub lag: u64,
}

/// A node's view of itself and the cluster, from [`Node::status`](crate::Node::status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Where the leader is reached, if the membership records it.
    pub leader_address: Option<String>,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Highest index applied to the state machine.
    pub applied_index: LogIndex,
    /// Index of the last log entry.
    pub last_log_index: LogIndex,
    /// The configuration in effect.
    pub membership: Membership,
    /// Index of the configuration entry in effect.
    pub membership_index: LogIndex,
    /// The newest snapshot this node has.
    pub snapshot: Option<SnapshotMeta>,
    /// On the leader: progress of every other member; empty elsewhere.
    pub peers: BTreeMap<NodeId, PeerStatus>,
}

/// Who leads, and with which members, as one node sees it: what
/// [`Node::watch_leadership`](crate::Node::watch_leadership) publishes each time any of it
/// changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// This node's role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it follows (itself when it leads), if it knows one.
    pub leader: Option<NodeId>,
    /// Where the leader is reached, if the membership records it.
    pub leader_address: Option<String>,
    /// The newest cluster configuration in its log (committed or not).
    pub membership: Membership,
}
