//! [`KvBackend`]: what the gRPC services need from the replication layer (propose a write,
//! read with or without linearizability, membership and status), and [`LocalBackend`], a
//! single-node stand-in without Raft for tests.
//!
//! A Raft-backed implementation wraps a dengine node whose state machine is a
//! [`KvStateMachine`]: `propose` goes through the log, `read` through a read index (or the
//! local state when `serializable`).

use std::future::Future;

use bytes::Bytes;
use dengine_core::store::{SnapshotData, StorageError};
use dengine_core::{Membership, NodeId, StateMachine};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::auth::hub::AuthHub;
use crate::lease_hub::{LeaseHub, Renewal, internal};
use crate::proto::dengine::kv::v1::command;
use crate::proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};
use crate::state_machine::KvStateMachine;
use crate::watch::WatchHub;

/// Why the replication layer could not carry out a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// This member is not the leader and does not forward the request; the client should
    /// retry on the leader.
    #[error("etcdserver: not leader{}", leader_hint(*.leader_id, .leader_address.as_deref()))]
    NotLeader {
        /// The leader this member knows of, if any.
        leader_id: Option<NodeId>,
        /// Where the leader can be reached, if known.
        leader_address: Option<String>,
    },
    /// No leader is known (an election is in progress or the member is partitioned).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request was submitted but no answer came in time: for a write the outcome is
    /// unknown (it may still be applied).
    #[error("etcdserver: request timed out ({0}); a write may or may not have been applied")]
    Timeout(String),
    /// The member cannot serve the request now (shutting down, overloaded, too far behind).
    #[error("etcdserver: unavailable: {0}")]
    Unavailable(String),
    /// The request is not acceptable (for example an invalid membership change).
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    /// The member named in a membership request does not exist.
    #[error("etcdserver: member not found")]
    MemberNotFound(NodeId),
    /// A membership change is already in progress, or would leave the cluster without a
    /// quorum; retry later.
    #[error("etcdserver: {0}")]
    FailedPrecondition(String),
    /// Something failed that the client cannot fix (a storage failure on this member).
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
    /// The leader's answer to a forwarded request, passed on as it came (its message
    /// already says `etcdserver: ...`).
    #[error("{message}")]
    Forwarded {
        /// The leader's status code.
        code: Code,
        /// The leader's message.
        message: String,
    },
}

fn leader_hint(id: Option<NodeId>, address: Option<&str>) -> String {
    match (id, address) {
        (Some(id), Some(a)) => format!("; the leader is member {id:x} at {a}"),
        (Some(id), None) => format!("; the leader is member {id:x}"),
        _ => String::new(),
    }
}

impl BackendError {
    /// The gRPC status for this error. A lost leader or an unavailable member is
    /// `UNAVAILABLE` (clients retry elsewhere); a timeout is `DEADLINE_EXCEEDED`, the status
    /// gRPC defines for "may have completed".
    pub fn to_status(&self) -> Status {
        let code = match self {
            BackendError::NotLeader { .. } | BackendError::NoLeader => Code::Unavailable,
            BackendError::Unavailable(_) => Code::Unavailable,
            BackendError::Timeout(_) => Code::DeadlineExceeded,
            BackendError::InvalidArgument(_) => Code::InvalidArgument,
            BackendError::MemberNotFound(_) => Code::NotFound,
            BackendError::FailedPrecondition(_) => Code::FailedPrecondition,
            BackendError::Internal(_) => Code::Internal,
            BackendError::Forwarded { code, .. } => *code,
        };
        Status::new(code, self.to_string())
    }
}

impl From<BackendError> for Status {
    fn from(err: BackendError) -> Self {
        err.to_status()
    }
}

/// The member-specific fields of etcd's `ResponseHeader` (the revision comes from the store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Identifies the cluster.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// This member's current Raft term.
    pub raft_term: u64,
}

/// One cluster member, as etcd's `Member` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's id (the Raft node id).
    pub id: u64,
    /// A human-readable name (may be empty).
    pub name: String,
    /// URLs the members use to reach it.
    pub peer_urls: Vec<String>,
    /// URLs clients use to reach it (may be empty if unknown).
    pub client_urls: Vec<String>,
    /// Whether it is a learner (non-voting).
    pub is_learner: bool,
}

/// The members of a Raft [`Membership`]: voters of both configurations, then learners, with
/// the recorded address as the single peer URL and `node-<id>` as the name.
pub fn members_of(membership: &Membership) -> Vec<MemberInfo> {
    membership
        .members()
        .map(|id| MemberInfo {
            id,
            name: format!("node-{id}"),
            peer_urls: membership
                .address(id)
                .map(|a| a.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            client_urls: Vec::new(),
            is_learner: membership.is_learner(id),
        })
        .collect()
}

/// This member's view of the cluster, for `Maintenance.Status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// The leader this member knows of (0: none).
    pub leader: u64,
    /// The last log index (etcd's `raftIndex`).
    pub raft_index: u64,
    /// The current term.
    pub raft_term: u64,
    /// The last applied log index.
    pub raft_applied_index: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Problems the member knows of (etcd's alarms and errors).
    pub errors: Vec<String>,
}

/// What the KV gRPC services need from the replication layer. Commands and queries are the
/// encoded [`KvStateMachine`] messages; responses are what its
/// `apply` and `query` return.
pub trait KvBackend: Send + Sync + 'static {
    /// Replicates and applies a write command; resolves to the state machine's response for
    /// it once applied on this member.
    fn propose(&self, command: Bytes) -> impl Future<Output = Result<Bytes, BackendError>> + Send;

    /// Answers a query. `serializable == false` asks for a linearizable read (read index);
    /// `true` allows answering from this member's state as it is (possibly stale).
    fn read(
        &self,
        query: Bytes,
        serializable: bool,
    ) -> impl Future<Output = Result<Bytes, BackendError>> + Send;

    /// The member fields of response headers. Called for every response: must be cheap.
    fn header(&self) -> HeaderInfo;

    /// The current members.
    fn members(&self) -> impl Future<Output = Result<Vec<MemberInfo>, BackendError>> + Send;

    /// This member's status.
    fn status(&self) -> impl Future<Output = Result<StatusInfo, BackendError>> + Send;

    /// Adds a member reached at `peer_urls`, as a learner or a voter; resolves to the new
    /// member once the change is committed.
    fn add_member(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> impl Future<Output = Result<MemberInfo, BackendError>> + Send;

    /// Removes a member; resolves once the change is committed.
    fn remove_member(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Makes the learner `id` a voter; resolves once the change is committed. Refused
    /// ([`BackendError::FailedPrecondition`]) for a member that is not a learner, or a
    /// learner too far behind the leader to vote soon.
    fn promote_member(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Changes the peer URLs of member `id` (the first one is where the others reach it);
    /// resolves once the change is committed.
    fn update_member(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Hands leadership to the voter `id` (sent to the leader); resolves once `id` leads.
    fn move_leader(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Reclaims this member's disk space (etcd's defragment): takes a snapshot of the state
    /// machine now and compacts the log behind it; resolves with the log index the snapshot
    /// covers.
    fn defragment(&self) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// A snapshot of this member's applied state for a backup (etcd's Snapshot, read on this
    /// member as etcd's): the log index it covers and the state machine's snapshot, read on
    /// demand (from the snapshot file on a member that keeps them).
    fn backup(&self) -> impl Future<Output = Result<(u64, SnapshotData), BackendError>> + Send;

    /// The term this member leads, `None` if it does not lead. Called often: must be cheap.
    fn leading_term(&self) -> Option<u64>;

    /// Resolves once this member has applied every write committed before the call (a
    /// linearizable barrier): on a new leader, every entry of earlier terms.
    fn barrier(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Proposes a command decided by this member as leader (a lease expiry or checkpoint):
    /// never forwarded, refused where this member does not lead.
    fn propose_as_leader(
        &self,
        command: Bytes,
    ) -> impl Future<Output = Result<Bytes, BackendError>> + Send;

    /// The leases the [`KvStateMachine`] publishes to.
    fn lease_hub(&self) -> &LeaseHub;

    /// The leader's answer for lease `id` (its clock decides expiry): a renewal
    /// (`ttl_only == false`) or the remaining TTL; -1 if there is no such lease. A follower
    /// asks the leader.
    fn lease_at_leader(
        &self,
        id: i64,
        ttl_only: bool,
    ) -> impl Future<Output = Result<i64, BackendError>> + Send;

    /// [`lease_at_leader`](Self::lease_at_leader) answered here, where this member leads: a
    /// renewal restarts the lease's TTL on this member's clock (recorded through the log
    /// first if the lease carries a checkpoint), or the remaining TTL is read off it. Refused
    /// (`UNAVAILABLE`, "not leader") where this member does not lead or has not taken the
    /// leases over yet.
    fn lease_at_this_leader(
        &self,
        id: i64,
        ttl_only: bool,
    ) -> impl Future<Output = Result<i64, BackendError>> + Send {
        async move {
            let hub = self.lease_hub();
            let not_leader =
                || BackendError::Unavailable("not leader (of the leases, yet); retry".into());
            if ttl_only {
                return match hub.remaining(id, Instant::now()) {
                    Ok(left) => Ok(left.unwrap_or(-1)),
                    Err(()) => Err(not_leader()),
                };
            }
            let mut renewal = hub.renew(id, Instant::now());
            if renewal == Renewal::NotFound {
                // A grant committed but not applied here yet: catch up once and look again.
                self.barrier().await?;
                renewal = hub.renew(id, Instant::now());
            }
            match renewal {
                Renewal::NotLeader => Err(not_leader()),
                Renewal::NotFound => Ok(-1),
                Renewal::Renewed { ttl, reset } => {
                    if reset {
                        let reset = command::Op::LeaseCheckpoint(LeaseCheckpointRequest {
                            checkpoints: vec![LeaseCheckpoint {
                                id,
                                remaining_ttl: 0,
                            }],
                        });
                        self.propose_as_leader(internal(reset)).await?;
                    }
                    Ok(ttl)
                }
            }
        }
    }
}

/// A single-member [`KvBackend`] without Raft, for tests and examples: every command is
/// applied at once to a [`KvStateMachine`] behind a mutex, at term 1. Membership changes take
/// a log index of their own, as they would in Raft, and change the backend's membership (the
/// state machine never sees them).
#[derive(Debug)]
pub struct LocalBackend {
    sm: tokio::sync::Mutex<KvStateMachine>,
    /// The membership and the last index used, readable without waiting.
    meta: Mutex<(Membership, u64)>,
    member_id: u64,
    auth: AuthHub,
    leases: LeaseHub,
}

/// The cluster id [`LocalBackend`] reports.
pub const LOCAL_CLUSTER_ID: u64 = 0x1_0ca1;

impl LocalBackend {
    /// A backend whose state machine publishes to `hub`, with one member (id 1) whose peer
    /// URL is `peer_url`.
    pub async fn new(hub: WatchHub, peer_url: &str) -> Result<Self, StorageError> {
        let mut sm = KvStateMachine::new(hub);
        let auth = sm.auth_hub().clone();
        let leases = sm.lease_hub().clone();
        // Index 1 holds the initial configuration, as a bootstrapped cluster's would.
        let membership = Membership::new([1]).with_address(1, peer_url);
        sm.apply(&[], 1).await?;
        Ok(LocalBackend {
            sm: tokio::sync::Mutex::new(sm),
            meta: Mutex::new((membership, 1)),
            member_id: 1,
            auth,
            leases,
        })
    }

    /// The auth hub of the backend's state machine (for [`kv_services`](crate::kv_services)).
    pub fn auth_hub(&self) -> &AuthHub {
        &self.auth
    }

    /// Applies one command at the next index and returns its response.
    async fn apply(&self, command: Bytes) -> Result<Bytes, BackendError> {
        let mut sm = self.sm.lock().await;
        let response = sm
            .apply_next(command)
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        self.meta.lock().1 = sm.applied_index();
        Ok(response)
    }

    /// Puts a new membership in force at the next index (what committing its entry does; the
    /// state machine only moves past the index).
    async fn change_membership(&self, membership: Membership) -> Result<(), BackendError> {
        let mut sm = self.sm.lock().await;
        let index = sm.applied_index() + 1;
        sm.apply(&[], index)
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        *self.meta.lock() = (membership, index);
        Ok(())
    }

    fn membership(&self) -> Membership {
        self.meta.lock().0.clone()
    }
}

impl KvBackend for LocalBackend {
    async fn propose(&self, command: Bytes) -> Result<Bytes, BackendError> {
        self.apply(command).await
    }

    async fn read(&self, query: Bytes, _serializable: bool) -> Result<Bytes, BackendError> {
        // One member, no replication: every read is linearizable.
        let sm = self.sm.lock().await;
        sm.query(query)
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))
    }

    fn header(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: LOCAL_CLUSTER_ID,
            member_id: self.member_id,
            raft_term: 1,
        }
    }

    async fn members(&self) -> Result<Vec<MemberInfo>, BackendError> {
        Ok(members_of(&self.membership()))
    }

    async fn status(&self) -> Result<StatusInfo, BackendError> {
        let applied = self.meta.lock().1;
        Ok(StatusInfo {
            leader: self.member_id,
            raft_index: applied,
            raft_term: 1,
            raft_applied_index: applied,
            is_learner: false,
            errors: Vec::new(),
        })
    }

    async fn add_member(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberInfo, BackendError> {
        if peer_urls.is_empty() {
            return Err(BackendError::InvalidArgument(
                "member add needs a peer URL".into(),
            ));
        }
        let mut membership = self.membership();
        let id = membership.members().max().unwrap_or(0) + 1;
        if is_learner {
            membership.learners.insert(id);
        } else {
            membership.voters.insert(id);
        }
        membership.addresses.insert(id, peer_urls.join(","));
        self.change_membership(membership.clone()).await?;
        members_of(&membership)
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| BackendError::Internal("added member vanished".into()))
    }

    async fn remove_member(&self, id: u64) -> Result<(), BackendError> {
        let mut membership = self.membership();
        if !membership.contains(id) {
            return Err(BackendError::MemberNotFound(id));
        }
        if id == self.member_id {
            return Err(BackendError::FailedPrecondition(
                "the local backend cannot remove its only voter".into(),
            ));
        }
        membership.voters.remove(&id);
        membership.learners.remove(&id);
        membership.addresses.remove(&id);
        self.change_membership(membership).await?;
        Ok(())
    }

    async fn promote_member(&self, id: u64) -> Result<(), BackendError> {
        let mut membership = self.membership();
        if !membership.contains(id) {
            return Err(BackendError::MemberNotFound(id));
        }
        if !membership.learners.remove(&id) {
            return Err(BackendError::FailedPrecondition(
                "can only promote a learner member".into(),
            ));
        }
        membership.voters.insert(id);
        self.change_membership(membership).await
    }

    async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<(), BackendError> {
        let mut membership = self.membership();
        if !membership.contains(id) {
            return Err(BackendError::MemberNotFound(id));
        }
        if peer_urls.is_empty() {
            return Err(BackendError::InvalidArgument(
                "member update needs a peer URL".into(),
            ));
        }
        membership.addresses.insert(id, peer_urls.join(","));
        self.change_membership(membership).await
    }

    async fn move_leader(&self, id: u64) -> Result<(), BackendError> {
        if id == self.member_id {
            return Ok(()); // It leads already.
        }
        if !self.membership().contains(id) {
            return Err(BackendError::MemberNotFound(id));
        }
        Err(BackendError::FailedPrecondition(
            "the local backend has no other member to hand leadership to".into(),
        ))
    }

    /// Nothing on disk to reclaim: the local backend keeps no log.
    async fn defragment(&self) -> Result<u64, BackendError> {
        Ok(self.meta.lock().1)
    }

    /// The state machine's snapshot, in memory (the local backend keeps no files).
    async fn backup(&self) -> Result<(u64, SnapshotData), BackendError> {
        let mut sm = self.sm.lock().await;
        let data = sm
            .snapshot()
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        Ok((sm.applied_index(), data.into()))
    }

    /// The only member: it always leads, in term 1.
    fn leading_term(&self) -> Option<u64> {
        Some(1)
    }

    /// Every command is applied when proposed: nothing to wait for.
    async fn barrier(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn propose_as_leader(&self, command: Bytes) -> Result<Bytes, BackendError> {
        self.apply(command).await
    }

    fn lease_hub(&self) -> &LeaseHub {
        &self.leases
    }

    async fn lease_at_leader(&self, id: i64, ttl_only: bool) -> Result<i64, BackendError> {
        self.lease_at_this_leader(id, ttl_only).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_map_to_grpc_statuses_with_clear_messages() {
        let not_leader = BackendError::NotLeader {
            leader_id: Some(0x2a),
            leader_address: Some("10.0.0.2:2380".into()),
        }
        .to_status();
        assert_eq!(not_leader.code(), Code::Unavailable);
        assert_eq!(
            not_leader.message(),
            "etcdserver: not leader; the leader is member 2a at 10.0.0.2:2380"
        );
        let timeout = BackendError::Timeout("no commit within 5s".into()).to_status();
        assert_eq!(timeout.code(), Code::DeadlineExceeded);
        assert!(
            timeout
                .message()
                .contains("may or may not have been applied")
        );
        assert_eq!(BackendError::NoLeader.to_status().code(), Code::Unavailable);
        let unavailable = BackendError::Unavailable("shutting down".into()).to_status();
        assert_eq!(
            (unavailable.code(), unavailable.message()),
            (Code::Unavailable, "etcdserver: unavailable: shutting down")
        );
        assert_eq!(
            BackendError::MemberNotFound(9).to_status().code(),
            Code::NotFound
        );
    }

    #[test]
    fn members_of_lists_voters_then_learners_with_addresses() {
        let m = Membership::new([1, 2])
            .with_learners([3])
            .with_address(1, "http://a:1")
            .with_address(3, "http://c:1,http://c:2");
        let members = members_of(&m);
        let ids: Vec<_> = members.iter().map(|m| (m.id, m.is_learner)).collect();
        assert_eq!(ids, [(1, false), (2, false), (3, true)]);
        assert_eq!(members[0].peer_urls, ["http://a:1"]);
        assert!(members[1].peer_urls.is_empty());
        assert_eq!(members[2].peer_urls, ["http://c:1", "http://c:2"]);
    }
}
