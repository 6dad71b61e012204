//! [`NodeBackend`]: the [`KvBackend`] of a real, replicated member: a `dengine_node::Node`
//! whose state machine is a [`KvStateMachine`](crate::KvStateMachine).
//!
//! Writes go through the Raft log; a follower passes them on to the leader with the internal
//! `dengine.kv.v1.Forward` service (served on the peer listener, with the peer TLS and
//! credentials), so a client may write through any member. Linearizable reads use the node's
//! read index (a follower asks the leader for it and serves the read locally); serializable
//! reads answer from the local state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::ProposeError as Refusal;
use dengine_core::{MembershipChange, NodeId, Role};
use dengine_net_grpc::GrpcTransport;
use dengine_node::{
    AdminError, Consistency, Leadership, Node, ProposeError, ReadError, SessionRefusal,
    Status as NodeStatus,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataKey;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::backend::{BackendError, HeaderInfo, KvBackend, MemberInfo, StatusInfo, members_of};
use crate::config::KvConfig;
use crate::error::KvError;
use crate::forward::{self, FORWARD_KIND, ForwardStreams, Link, ProposeForwarded, from_status};
use crate::forward_session::{Attempt, SessionSlot, backoff, local, remote};
use crate::lease_hub::LeaseHub;
use crate::proto::dengine::kv::v1::forward_client::ForwardClient;
use crate::proto::dengine::kv::v1::forward_server::{Forward, ForwardServer};
use crate::proto::dengine::kv::v1::membership_request::Op;
use crate::proto::dengine::kv::v1::{
    AddedMember, Command, ForwardBatch, ForwardReply, ForwardReplyBatch, ForwardRequest, InfoReply,
    InfoRequest, LeaseAtLeaderReply, LeaseAtLeaderRequest, MemberAddOp, MemberUpdateOp,
    MembershipReply, MembershipRequest,
};
use crate::proto::dengine::kv::v1::{ForwardSession, OpenSessionReply, OpenSessionRequest};
use crate::state_machine::encode_error_response;
use crate::validate;

/// What members reported of themselves (`Info`), by member id and peer address.
type PeerInfos = HashMap<(NodeId, String), PeerInfo>;

/// What a member reports of itself (`Info`) for `member list`.
#[derive(Clone, Debug, Default)]
struct PeerInfo {
    /// Where its clients connect.
    client_urls: Vec<String>,
    /// Its name (empty: none given).
    name: String,
}

/// A replicated member's backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeBackend {
    node: Node,
    cluster_id: u64,
    /// Connects to other members' peer listeners (TLS and credentials of the peer transport).
    transport: GrpcTransport,
    /// Where this member's clients connect (`http(s)://host:port`), for `member list`.
    client_urls: Vec<String>,
    /// Role, term and leader as the node publishes them: response headers need the term on
    /// every call, and a follower forwards writes to the leader named here.
    leadership: watch::Receiver<Leadership>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Writes forwarded to the leader, on one stream per leader address.
    streams: Arc<ForwardStreams>,
    /// This member's client session for its forwarded writes, when the node runs with
    /// client sessions (`forward_session.rs`).
    session: Arc<SessionSlot>,
    /// What other members reported of themselves (`Info`), by member id and peer address (a
    /// member moved with `MemberUpdate` is asked again).
    peer_infos: Arc<Mutex<PeerInfos>>,
    /// The client API's limits, applied again to writes forwarded by other members.
    config: Arc<KvConfig>,
    /// The leases the state machine publishes to; the leader's clock for them.
    leases: LeaseHub,
}

impl NodeBackend {
    /// The backend of `node` in cluster `cluster_id`, reaching the other members through
    /// `transport`'s peer connections; `client_urls` is where this member's clients connect.
    pub fn new(
        node: Node,
        cluster_id: u64,
        transport: GrpcTransport,
        client_urls: Vec<String>,
    ) -> Self {
        NodeBackend {
            leadership: node.watch_leadership(),
            node,
            cluster_id,
            transport,
            client_urls,
            channels: Arc::new(Mutex::new(HashMap::new())),
            streams: Arc::default(),
            session: Arc::default(),
            peer_infos: Arc::new(Mutex::new(HashMap::new())),
            config: Arc::new(KvConfig::default()),
            leases: LeaseHub::default(),
        }
    }

    /// The same backend, with the lease hub its state machine publishes to (see
    /// [`KvStateMachine::lease_hub`](crate::KvStateMachine::lease_hub)). Without it, the
    /// member knows of no lease: keep-alives find none.
    pub fn with_lease_hub(mut self, leases: LeaseHub) -> Self {
        self.leases = leases;
        self
    }

    /// Asks the leader for lease `id` (`Forward/LeaseAtLeader`).
    async fn lease_at_remote_leader(&self, id: i64, ttl_only: bool) -> Result<i64, BackendError> {
        let address = {
            let now = self.leadership.borrow();
            match (now.leader, &now.leader_address) {
                (Some(leader), Some(address)) if leader != self.node.id() => address.clone(),
                _ => return Err(BackendError::NoLeader),
            }
        };
        let mut client = ForwardClient::new(self.channel(&address)?);
        let request = self.transport.peer_request(LeaseAtLeaderRequest {
            from: self.node.id(),
            id,
            time_to_live_only: ttl_only,
        });
        match client.lease_at_leader(request).await {
            Ok(reply) => Ok(reply.into_inner().ttl),
            Err(status) => Err(from_status(&status)),
        }
    }

    /// The same backend, checking forwarded writes against `config`'s limits (those the
    /// member's etcd API services use) instead of the defaults.
    pub fn with_config(mut self, config: KvConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// Whether this member leads, as its node last published.
    pub(crate) fn is_leader(&self) -> bool {
        self.leadership.borrow().role == Role::Leader
    }

    /// The internal service through which followers forward writes to this member.
    pub fn forward_service(&self) -> ForwardServer<NodeBackend> {
        ForwardServer::new(self.clone())
    }

    /// The peer channel to the member at `address` (its peer listener), kept for reuse.
    fn channel(&self, address: &str) -> Result<Channel, BackendError> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = self.transport.peer_channel(address).map_err(|e| {
            BackendError::Unavailable(format!("cannot reach member at {address}: {e}"))
        })?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Sends a client's write to the leader at `address` (on the stream to it, `forward.rs`),
    /// in a `forward_write` span whose trace context goes with it (the leader's
    /// `forwarded_write` span joins the trace).
    async fn forward(&self, address: &str, command: Bytes) -> Result<Bytes, BackendError> {
        let span = tracing::debug_span!("forward_write", leader = %address);
        async {
            if self.node.client_sessions() {
                // Resent through leader changes, applied once (`forward_session.rs`).
                return self.forward_exactly_once(command).await;
            }
            if !self.streams.is_unary_only(address) {
                let trace = dengine::observability::trace_headers();
                // Err(Unsupported): a leader of an older version, one call per write.
                if let Ok((answer, _)) = self
                    .streams
                    .forward(self.link(address), address, command.clone(), trace, None)
                    .await
                {
                    return answer;
                }
            }
            self.forward_unary(address, command).await
        }
        .instrument(span)
        .await
    }

    /// How a stream to the leader at `address` connects.
    fn link(&self, address: &str) -> impl FnOnce() -> Result<Link, BackendError> + '_ {
        let address = address.to_string();
        move || {
            Ok(Link {
                channel: self.channel(&address)?,
                address,
                transport: self.transport.clone(),
                from: self.node.id(),
            })
        }
    }

    /// Sends one write as its own `Forward/Propose` call (to a leader without the stream).
    async fn forward_unary(&self, address: &str, command: Bytes) -> Result<Bytes, BackendError> {
        {
            let mut client = ForwardClient::new(self.channel(address)?);
            let mut request = self.transport.peer_request(ForwardRequest {
                command,
                from: self.node.id(),
            });
            for (key, value) in dengine::observability::trace_headers() {
                if let (Ok(key), Ok(value)) =
                    (MetadataKey::from_bytes(key.as_bytes()), value.parse())
                {
                    request.metadata_mut().insert(key, value);
                }
            }
            match client.propose(request).await {
                Ok(reply) => Ok(reply.into_inner().response),
                Err(status) => Err(from_status(&status)),
            }
        }
    }

    /// What member `id` at peer address `address` reports of itself (client URLs, name):
    /// asked once (with a short timeout) and remembered; empty while it cannot be reached
    /// (etcd lists an unstarted member without name or client URLs too).
    async fn info_of(&self, id: NodeId, address: &str) -> PeerInfo {
        if id == self.node.id() {
            return PeerInfo {
                client_urls: self.client_urls.clone(),
                name: self.config.name.clone(),
            };
        }
        let key = (id, address.to_string());
        let known = self.peer_infos.lock().get(&key).cloned();
        if let Some(info) = known {
            return info;
        }
        let Ok(channel) = self.channel(address) else {
            return PeerInfo::default();
        };
        let request = self.transport.peer_request(InfoRequest {
            from: self.node.id(),
        });
        let asked = tokio::time::timeout(
            Duration::from_secs(1),
            ForwardClient::new(channel).info(request),
        )
        .await;
        match asked {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                let info = PeerInfo {
                    client_urls: reply.client_urls,
                    name: reply.name,
                };
                self.peer_infos.lock().insert(key, info.clone());
                info
            }
            _ => PeerInfo::default(),
        }
    }
}

impl NodeBackend {
    /// A membership change a client asked this member for: carried out here if it leads,
    /// otherwise passed on to the leader it knows (`Forward/ChangeMembers`), as etcd passes
    /// membership calls on from any member.
    async fn change_members(&self, op: Op) -> Result<MembershipReply, BackendError> {
        let status = self.node.status().await.map_err(admin_error)?;
        if status.role == Role::Leader {
            return self.change_members_here(status, op).await;
        }
        let (Some(leader), Some(address)) = (status.leader, status.leader_address.as_deref())
        else {
            return Err(match status.leader {
                None => BackendError::NoLeader,
                leader_id => BackendError::NotLeader {
                    leader_id,
                    leader_address: None,
                },
            });
        };
        let span = tracing::info_span!("forward_membership_change", leader, op = ?op);
        let mut client = ForwardClient::new(self.channel(address)?);
        let request = self.transport.peer_request(MembershipRequest {
            from: self.node.id(),
            op: Some(op),
        });
        match tokio::time::timeout(forward::FORWARD_DEADLINE, client.change_members(request))
            .instrument(span)
            .await
        {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            // A leader of an older version: the client must go to it itself, as before.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                Err(BackendError::NotLeader {
                    leader_id: Some(leader),
                    leader_address: Some(address.to_string()),
                })
            }
            Ok(Err(status)) => Err(forward::from_status(&status)),
            Err(_) => Err(BackendError::Timeout(format!(
                "the leader did not answer a forwarded membership change within {:?}; it may \
                 or may not have been applied (check with member list)",
                forward::FORWARD_DEADLINE
            ))),
        }
    }

    /// Carries out a membership change as the leader; a member that does not lead refuses it
    /// (a change forwarded to a leader that was deposed meanwhile is not passed on again).
    async fn change_members_here(
        &self,
        status: NodeStatus,
        op: Op,
    ) -> Result<MembershipReply, BackendError> {
        if status.role != Role::Leader {
            return Err(BackendError::NotLeader {
                leader_id: status.leader,
                leader_address: status.leader_address,
            });
        }
        match op {
            Op::Add(add) => {
                let first = add.peer_urls.first().ok_or_else(|| {
                    BackendError::InvalidArgument("a new member needs a peer URL".into())
                })?;
                let address = address_of(first)?;
                // Member ids are small integers here; a new member gets the next one never
                // used (ids are never reused, so a removed member can never be mistaken for
                // the new one).
                let id: NodeId = status
                    .membership
                    .highest_id
                    .max(status.membership.largest_member_id())
                    + 1;
                let change = if add.is_learner {
                    MembershipChange::AddLearner(id)
                } else {
                    MembershipChange::AddVoter(id)
                };
                let m = self
                    .node
                    .change_membership(vec![change], BTreeMap::from([(id, address.clone())]))
                    .await
                    .map_err(admin_error)?;
                Ok(MembershipReply {
                    added: Some(AddedMember {
                        id,
                        // Unstarted until it runs (see `members`).
                        name: String::new(),
                        peer_urls: vec![url(&address)],
                        is_learner: m.is_learner(id),
                    }),
                })
            }
            Op::Remove(id) => {
                if !status.membership.contains(id) {
                    return Err(BackendError::MemberNotFound(id));
                }
                self.node.remove(id).await.map_err(admin_error)?;
                Ok(MembershipReply::default())
            }
            Op::Update(update) => {
                if !status.membership.contains(update.id) {
                    return Err(BackendError::MemberNotFound(update.id));
                }
                let first = update.peer_urls.first().ok_or_else(|| {
                    BackendError::InvalidArgument("member update needs a peer URL".into())
                })?;
                let address = address_of(first)?;
                // No member changes: the configuration entry carries the new address, and
                // every member's transport dials it from then on.
                self.node
                    .change_membership(Vec::new(), BTreeMap::from([(update.id, address)]))
                    .await
                    .map_err(admin_error)?;
                Ok(MembershipReply::default())
            }
            Op::Promote(id) => {
                if !status.membership.contains(id) {
                    return Err(BackendError::MemberNotFound(id));
                }
                if !status.membership.is_learner(id) {
                    return Err(BackendError::FailedPrecondition(
                        "can only promote a learner member".into(),
                    ));
                }
                // etcd's rule: a learner votes once it holds at least 90% of the leader's
                // log (a voter far behind would slow every commit that needs it).
                let lag = status.peers.get(&id).map_or(u64::MAX, |p| p.lag);
                if lag.saturating_mul(10) > status.last_log_index {
                    return Err(BackendError::FailedPrecondition(format!(
                        "can only promote a learner member which is in sync with leader \
                         (member {id:x} is {} entries behind); retry once it has caught up",
                        if lag == u64::MAX {
                            "an unknown number of".to_string()
                        } else {
                            lag.to_string()
                        }
                    )));
                }
                self.node.promote(id).await.map_err(admin_error)?;
                Ok(MembershipReply::default())
            }
        }
    }
}

fn propose_error(e: ProposeError) -> BackendError {
    match e {
        ProposeError::Refused(Refusal::NotLeader {
            leader: None,
            leader_address: _,
        }) => BackendError::NoLeader,
        ProposeError::Refused(Refusal::NotLeader {
            leader,
            leader_address,
        }) => BackendError::NotLeader {
            leader_id: leader,
            leader_address,
        },
        ProposeError::Refused(Refusal::TooLarge { .. }) => {
            BackendError::InvalidArgument(e.to_string())
        }
        // A write the node took before it began to stop has an unknown outcome: a client
        // told "unavailable" would retry it and might apply it twice.
        ProposeError::Timeout | ProposeError::Interrupted(_) | ProposeError::ShuttingDown => {
            BackendError::Timeout(e.to_string())
        }
        ProposeError::Stopped { .. } => BackendError::Internal(e.to_string()),
        _ => BackendError::Unavailable(e.to_string()),
    }
}

fn read_error(e: ReadError) -> BackendError {
    match e {
        ReadError::Timeout => BackendError::Timeout(e.to_string()),
        ReadError::StateMachine(_) | ReadError::Stopped { .. } => {
            BackendError::Internal(e.to_string())
        }
        _ => BackendError::Unavailable(e.to_string()),
    }
}

fn admin_error(e: AdminError) -> BackendError {
    match e {
        AdminError::NotLeader {
            leader,
            leader_address,
        } => BackendError::NotLeader {
            leader_id: leader,
            leader_address,
        },
        AdminError::Membership(_) | AdminError::Transfer(_) => {
            BackendError::FailedPrecondition(e.to_string())
        }
        AdminError::Timeout => BackendError::Timeout(e.to_string()),
        _ => BackendError::Unavailable(e.to_string()),
    }
}

/// `http://host:port` for an address recorded as `host:port`.
fn url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// `host:port` from a peer URL such as `http://host:port`.
fn address_of(peer_url: &str) -> Result<String, BackendError> {
    let rest = peer_url.split("://").last().unwrap_or(peer_url);
    let hostport = rest.trim_end_matches('/');
    if hostport
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(BackendError::InvalidArgument(format!(
            "peer URL {peer_url:?} is not of the form http://host:port"
        )));
    }
    Ok(hostport.to_string())
}

/// How long a write to a member that knows no leader waits for one before it fails with
/// "no leader": an election normally ends within one to two election timeouts (0.5–1 s with
/// the default settings), and etcd too has a write wait out an election. A client's own
/// deadline (`grpc-timeout`) ends the wait sooner.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Writes through the leader.
impl NodeBackend {
    /// One attempt at a write: forwarded to the leader this member knows, else proposed to
    /// its own node (which takes it if it leads, or names the leader to forward to).
    async fn propose_once(&self, command: Bytes) -> Result<Bytes, BackendError> {
        // A follower that knows where the leader is forwards at once: its own node would only
        // refuse the write (and count a refused proposal). If the leader has just changed, the
        // one forwarded to refuses it in turn, as the node would have.
        let leader = {
            let now = self.leadership.borrow();
            match (now.role, now.leader, &now.leader_address) {
                (Role::Leader, ..) => None,
                (_, Some(id), Some(address)) if id != self.node.id() => Some(address.clone()),
                _ => None,
            }
        };
        if let Some(address) = leader {
            return self.forward(&address, command).await;
        }
        match self.node.propose(command.clone()).await {
            Ok(response) => Ok(response),
            Err(e) => match e.leader() {
                Some((leader, Some(address))) if leader != self.node.id() => {
                    let address = address.to_owned();
                    self.forward(&address, command).await
                }
                _ => Err(propose_error(e)),
            },
        }
    }

    /// Waits until this member knows a leader, or `deadline`; whether it knows one.
    async fn wait_for_leader(&self, deadline: Instant) -> bool {
        let mut leadership = self.leadership.clone();
        let wait = async {
            if leadership.borrow_and_update().leader.is_some() {
                // The node found no leader after this was published: wait for the news
                // rather than try again at once.
                leadership.changed().await?;
            }
            leadership
                .wait_for(|l| l.leader.is_some())
                .await
                .map(|_| ())
        };
        matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(())))
    }
}

impl KvBackend for NodeBackend {
    /// Carries out a write through the leader; while this member knows no leader (an
    /// election is under way, or it has just started) it waits up to `LEADER_WAIT` for one
    /// instead of failing at once, as a write to etcd waits out an election.
    async fn propose(&self, command: Bytes) -> Result<Bytes, BackendError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.propose_once(command.clone()).await {
                Err(BackendError::NoLeader) if self.wait_for_leader(deadline).await => {}
                answer => return answer,
            }
        }
    }

    async fn read(&self, query: Bytes, serializable: bool) -> Result<Bytes, BackendError> {
        let consistency = if serializable {
            Consistency::Stale
        } else if self.config.lease_reads {
            Consistency::Lease
        } else {
            Consistency::Linearizable
        };
        self.node.read(query, consistency).await.map_err(read_error)
    }

    fn leading_term(&self) -> Option<u64> {
        let now = self.leadership.borrow();
        (now.role == Role::Leader).then_some(now.term)
    }

    async fn barrier(&self) -> Result<(), BackendError> {
        self.node.barrier().await.map_err(read_error)
    }

    async fn propose_as_leader(&self, command: Bytes) -> Result<Bytes, BackendError> {
        self.node.propose(command).await.map_err(propose_error)
    }

    fn lease_hub(&self) -> &LeaseHub {
        &self.leases
    }

    async fn lease_at_leader(&self, id: i64, ttl_only: bool) -> Result<i64, BackendError> {
        if self.leading_term().is_some() {
            self.lease_at_this_leader(id, ttl_only).await
        } else {
            self.lease_at_remote_leader(id, ttl_only).await
        }
    }

    fn header(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            raft_term: self.leadership.borrow().term,
        }
    }

    async fn members(&self) -> Result<Vec<MemberInfo>, BackendError> {
        let status = self.node.status().await.map_err(admin_error)?;
        let mut members = Vec::new();
        for mut m in members_of(&status.membership) {
            if let Some(address) = m.peer_urls.first().cloned() {
                let info = self.info_of(m.id, &address).await;
                m.client_urls = info.client_urls;
                if !info.name.is_empty() {
                    m.name = info.name;
                }
            }
            if m.client_urls.is_empty() {
                // Never reached: etcd lists a member that has not published its attributes
                // with an empty name, which etcdctl shows as "unstarted".
                m.name.clear();
            }
            m.peer_urls = m.peer_urls.iter().map(|a| url(a)).collect();
            members.push(m);
        }
        Ok(members)
    }

    async fn status(&self) -> Result<StatusInfo, BackendError> {
        let s = self.node.status().await.map_err(admin_error)?;
        Ok(StatusInfo {
            leader: s.leader.unwrap_or(0),
            raft_index: s.commit_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            is_learner: s.membership.is_learner(s.id),
            errors: self.node.fatal_error().into_iter().collect(),
        })
    }

    async fn add_member(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberInfo, BackendError> {
        let op = Op::Add(MemberAddOp {
            peer_urls,
            is_learner,
        });
        let added = self.change_members(op).await?.added.ok_or_else(|| {
            BackendError::Internal("the answer to a member add names no member".into())
        })?;
        Ok(MemberInfo {
            id: added.id,
            name: added.name,
            peer_urls: added.peer_urls,
            // Not started yet: etcd lists a new member without client URLs.
            client_urls: Vec::new(),
            is_learner: added.is_learner,
        })
    }

    async fn remove_member(&self, id: u64) -> Result<(), BackendError> {
        self.change_members(Op::Remove(id)).await.map(drop)
    }

    async fn promote_member(&self, id: u64) -> Result<(), BackendError> {
        self.change_members(Op::Promote(id)).await.map(drop)
    }

    async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<(), BackendError> {
        self.change_members(Op::Update(MemberUpdateOp { id, peer_urls }))
            .await
            .map(drop)
    }

    async fn move_leader(&self, id: u64) -> Result<(), BackendError> {
        let status = self.node.status().await.map_err(admin_error)?;
        if !status.membership.contains(id) {
            return Err(BackendError::MemberNotFound(id));
        }
        if status.role != Role::Leader {
            return Err(BackendError::NotLeader {
                leader_id: status.leader,
                leader_address: status.leader_address,
            });
        }
        if id == status.id {
            return Ok(()); // It leads already.
        }
        self.node.transfer_leader(id).await.map_err(admin_error)
    }

    async fn defragment(&self) -> Result<u64, BackendError> {
        let meta = self.node.trigger_snapshot().await.map_err(admin_error)?;
        Ok(meta.last_included.index)
    }

    /// A snapshot taken now (as `defragment` takes one), its data in the snapshot file.
    async fn backup(&self) -> Result<(u64, dengine_core::store::SnapshotData), BackendError> {
        let snapshot = self.node.snapshot().await.map_err(admin_error)?;
        Ok((snapshot.meta.last_included.index, snapshot.data))
    }
}

impl ProposeForwarded for NodeBackend {
    /// A write another member forwarded: checked as the client API would, then proposed, in
    /// a `forwarded_write` span that joins the sender's trace. Forwarded once only: a member
    /// that is not the leader refuses it.
    async fn propose_forwarded(
        &self,
        from: NodeId,
        command: Bytes,
        trace: BTreeMap<String, String>,
        session: Option<ForwardSession>,
    ) -> Result<Bytes, Status> {
        let span = tracing::debug_span!("forwarded_write", from);
        if !trace.is_empty() {
            dengine::observability::continue_trace(&span, |key| trace.get(key).cloned());
        }
        // The sender is another member, but what it forwards came from a client: the leader
        // proposes nothing the client API would refuse. A refusal travels back as the state
        // machine's own error response, so the client sees etcd's exact error.
        let checked = Command::decode(command.as_ref())
            .map_err(|e| KvError::InvalidArgument(format!("undecodable forwarded command: {e}")))
            .and_then(|c| validate::check_command(&c, &self.config));
        if let Err(e) = checked {
            return Ok(encode_error_response(&e));
        }
        let proposed = match session {
            Some(s) => {
                self.node
                    .propose_in_session(s.id, s.seq, s.first_unanswered, command)
                    .instrument(span)
                    .await
            }
            None => self.node.propose(command).instrument(span).await,
        };
        proposed.map_err(forwarded_status)
    }
}

#[tonic::async_trait]
impl Forward for NodeBackend {
    async fn propose(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let from = request.get_ref().from;
        self.transport.authorize_peer(&request, from)?;
        let trace: BTreeMap<String, String> = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|key| {
                let value = request.metadata().get(key)?.to_str().ok()?;
                Some((key.to_string(), value.to_string()))
            })
            .collect();
        let command = request.into_inner().command;
        let response = self.propose_forwarded(from, command, trace, None).await?;
        Ok(Response::new(ForwardReply { response }))
    }

    type ProposeStreamStream = ReceiverStream<Result<ForwardReplyBatch, Status>>;

    async fn propose_stream(
        &self,
        request: Request<Streaming<ForwardBatch>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("a forwarding stream must start with a message")
        })?;
        // The credentials travel with the stream's headers; they are checked against the
        // first message's sender now and against every later message's as it arrives.
        let credentials = Request::from_parts(metadata, extensions, ());
        self.transport.authorize_peer(&credentials, first.from)?;
        let transport = self.transport.clone();
        let authorize = move |from| transport.authorize_peer(&credentials, from);
        Ok(Response::new(forward::serve(
            self.clone(),
            first,
            inbound,
            authorize,
        )))
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        let from = request.get_ref().from;
        self.transport.authorize_peer(&request, from)?;
        Ok(Response::new(InfoReply {
            client_urls: self.client_urls.clone(),
            name: self.config.name.clone(),
        }))
    }

    async fn change_members(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let from = request.get_ref().from;
        self.transport.authorize_peer(&request, from)?;
        let op = request
            .into_inner()
            .op
            .ok_or_else(|| Status::invalid_argument("a membership change names no operation"))?;
        tracing::info!(from, op = ?op, "membership change forwarded by a member");
        let status = self.node.status().await.map_err(admin_error)?;
        Ok(Response::new(self.change_members_here(status, op).await?))
    }

    /// A follower opens the client session its forwarded writes go in: opened here (through
    /// the log) only while this member leads.
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionReply>, Status> {
        let from = request.get_ref().from;
        self.transport.authorize_peer(&request, from)?;
        let session = self
            .node
            .open_session()
            .await
            .map_err(|e| propose_error(e).to_status())?;
        tracing::debug!(from, session, "forwarding session opened for a member");
        Ok(Response::new(OpenSessionReply { session }))
    }

    /// A follower's client renews a lease or asks its remaining TTL: answered here only
    /// while this member leads (asked once, never passed on).
    async fn lease_at_leader(
        &self,
        request: Request<LeaseAtLeaderRequest>,
    ) -> Result<Response<LeaseAtLeaderReply>, Status> {
        let from = request.get_ref().from;
        self.transport.authorize_peer(&request, from)?;
        let req = request.into_inner();
        if self.leading_term().is_none() {
            return Err(BackendError::Unavailable(
                "not leader: the lease request reached a member that no longer leads".into(),
            )
            .to_status());
        }
        let ttl = self
            .lease_at_this_leader(req.id, req.time_to_live_only)
            .await?;
        Ok(Response::new(LeaseAtLeaderReply { ttl }))
    }
}

/// Forwarded writes in a client session (`forward_session.rs`): resent until answered.
impl NodeBackend {
    /// Forwards `command` to the leader in this member's session, resending it until it is
    /// answered: applied once whatever happens to the leaders meanwhile.
    async fn forward_exactly_once(&self, command: Bytes) -> Result<Bytes, BackendError> {
        let deadline = Instant::now() + forward::FORWARD_DEADLINE;
        let (mut id, mut seq) = self.session_number(deadline).await?;
        // Whether some attempt may have been applied.
        let mut taken = false;
        let mut failures = 0u32;
        loop {
            if Instant::now() >= deadline {
                self.session.settle(id, seq);
                return Err(if taken {
                    BackendError::Timeout(format!(
                        "no leader answered the forwarded write within {:?}; it may or may \
                         not have been applied",
                        forward::FORWARD_DEADLINE
                    ))
                } else {
                    BackendError::Unavailable(
                        "no leader took the forwarded write in time; it was not applied, retry"
                            .into(),
                    )
                });
            }
            let first_unanswered = self.session.first_unanswered(id, seq);
            let attempt = self
                .attempt_in_session(id, seq, first_unanswered, &command)
                .await;
            match attempt {
                Attempt::Done(result) => {
                    self.session.settle(id, seq);
                    return result;
                }
                Attempt::SessionGone => {
                    self.session.settle(id, seq);
                    self.session.forget(id);
                    if taken {
                        return Err(BackendError::Timeout(
                            "the forwarding session expired while the write's outcome was \
                             unknown; it may or may not have been applied"
                                .into(),
                        ));
                    }
                    // Never taken: the same write in a new session.
                    (id, seq) = self.session_number(deadline).await?;
                }
                Attempt::Retry { taken: t, why } => {
                    taken |= t;
                    tracing::debug!(session = id, seq, %why, "resending a forwarded write");
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// One attempt: on this member's node if it leads now, else forwarded to the leader.
    async fn attempt_in_session(
        &self,
        id: u64,
        seq: u64,
        first_unanswered: u64,
        command: &Bytes,
    ) -> Attempt {
        match self.leader_target() {
            None => Attempt::Retry {
                taken: false,
                why: "no leader known".into(),
            },
            Some(None) => local(
                self.node
                    .propose_in_session(id, seq, first_unanswered, command.clone())
                    .await,
            ),
            Some(Some(address)) => {
                let session = ForwardSession {
                    id,
                    seq,
                    first_unanswered,
                };
                let trace = dengine::observability::trace_headers();
                match self
                    .streams
                    .forward(
                        self.link(&address),
                        &address,
                        command.clone(),
                        trace,
                        Some(session),
                    )
                    .await
                {
                    Ok((answer, kind)) => remote(answer, &kind),
                    // A leader of a version without the stream knows no sessions either.
                    Err(forward::Unsupported) => {
                        Attempt::Done(Err(BackendError::Unavailable(format!(
                            "the leader at {address} is of an older version without \
                             forwarding sessions; the write was not applied"
                        ))))
                    }
                }
            }
        }
    }

    /// Where a session's call goes now: `Some(None)` this member (it leads), `Some(Some(address))`
    /// the leader at that peer address, `None` no leader known.
    fn leader_target(&self) -> Option<Option<String>> {
        let now = self.leadership.borrow();
        match (now.role, now.leader, &now.leader_address) {
            (Role::Leader, ..) => Some(None),
            (_, Some(leader), Some(address)) if leader != self.node.id() => {
                Some(Some(address.clone()))
            }
            _ => None,
        }
    }

    /// A number in this member's session, opening one first if there is none.
    async fn session_number(&self, deadline: Instant) -> Result<(u64, u64), BackendError> {
        if let Some(number) = self.session.number() {
            return Ok(number);
        }
        let _opening = self.session.opening.lock().await;
        if let Some(number) = self.session.number() {
            return Ok(number);
        }
        let id = self.open_session(deadline).await?;
        self.session.install(id);
        self.session.number().ok_or_else(|| {
            BackendError::Internal("the forwarding session was dropped as it opened".into())
        })
    }

    /// Opens a session through the leader (or on this node, if it leads).
    async fn open_session(&self, deadline: Instant) -> Result<u64, BackendError> {
        let mut last = String::from("no leader known");
        let mut failures = 0u32;
        while Instant::now() < deadline {
            let opened = match self.leader_target() {
                None => Err(last.clone()),
                Some(None) => self.node.open_session().await.map_err(|e| e.to_string()),
                Some(Some(address)) => match self.channel(&address) {
                    Ok(channel) => {
                        let request = self.transport.peer_request(OpenSessionRequest {
                            from: self.node.id(),
                        });
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            ForwardClient::new(channel).open_session(request),
                        )
                        .await
                        {
                            Ok(Ok(reply)) => Ok(reply.into_inner().session),
                            Ok(Err(status)) => Err(status.message().to_string()),
                            Err(_) => Err(format!("the leader at {address} did not answer")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            match opened {
                Ok(id) => return Ok(id),
                Err(why) => last = why,
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(failures)).await;
        }
        Err(BackendError::Unavailable(format!(
            "cannot open a session to forward the write ({last}); it was not applied, retry"
        )))
    }
}

/// The status of a forwarded write the leader could not propose; a session's own answer
/// says what it was in [`FORWARD_KIND`].
fn forwarded_status(e: ProposeError) -> tonic::Status {
    let kind = match &e {
        ProposeError::Session(SessionRefusal::UnknownSession) => Some("session-unknown"),
        ProposeError::Session(SessionRefusal::TooManyUnacknowledged) => Some("session-too-many"),
        ProposeError::Session(SessionRefusal::AlreadyAcknowledged) => Some("session-acknowledged"),
        ProposeError::Session(_) | ProposeError::SessionsOff => Some("session-invalid"),
        ProposeError::ResponseLost => Some("response-lost"),
        _ => None,
    };
    let mut status = propose_error(e).to_status();
    if let Some(kind) = kind {
        status.metadata_mut().insert(
            FORWARD_KIND,
            tonic::metadata::MetadataValue::from_static(kind),
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leader's side and the follower's agree: what the session said travels with the
    /// status and decides the follower's next step.
    #[test]
    fn the_kind_of_a_sessions_refusal_travels_with_its_status() {
        let follower_sees = |e: ProposeError| {
            let status = forwarded_status(e);
            let kind = status
                .metadata()
                .get(FORWARD_KIND)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            remote(Err(forward::from_status(&status)), &kind)
        };
        assert!(matches!(
            follower_sees(ProposeError::Session(SessionRefusal::UnknownSession)),
            Attempt::SessionGone
        ));
        assert!(matches!(
            follower_sees(ProposeError::ResponseLost),
            Attempt::Done(Err(BackendError::Timeout(m))) if m.contains("applied once")
        ));
        assert!(matches!(
            follower_sees(ProposeError::Timeout),
            Attempt::Retry { taken: true, .. }
        ));
        assert!(matches!(
            follower_sees(ProposeError::Session(SessionRefusal::TooManyUnacknowledged)),
            Attempt::Retry { taken: false, .. }
        ));
    }
}
