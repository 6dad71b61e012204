//! The `dengine.admin.v1.Admin` gRPC service on a [`dengine_node::Node`] (feature `node`):
//! status, membership changes, leader transfer and snapshots over the network.
//!
//! Errors map to gRPC codes: `FAILED_PRECONDITION` when this node does not lead (the message
//! names the leader and its address), `INVALID_ARGUMENT` for a change the protocol refuses,
//! `DEADLINE_EXCEEDED` when the outcome is unknown, `UNAVAILABLE` while shutting down or after
//! a fatal error.

use std::collections::BTreeMap;

use dengine_core::{MembershipChange, ReplicationState, Role};
use dengine_node::{AdminError, Node};
use tonic::{Request, Response, Status};

use crate::admin_pb;
use crate::admin_pb::admin_server::{Admin, AdminServer};
use crate::admin_pb::membership_change::Kind;
use crate::convert;
use crate::pb;

/// Serves the admin API of one node. Add it to a tonic server with [`AdminService::server`].
#[derive(Clone, Debug)]
pub struct AdminService {
    node: Node,
}

impl AdminService {
    /// The admin service of `node`.
    pub fn new(node: Node) -> Self {
        AdminService { node }
    }

    /// The tonic service, ready for `Server::builder().add_service(..)`.
    pub fn server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
    }
}

/// The gRPC status for an admin error.
pub fn admin_status(e: AdminError) -> Status {
    let message = e.to_string();
    match e {
        AdminError::NotLeader { .. } => Status::failed_precondition(message),
        AdminError::Membership(_) | AdminError::Transfer(_) => Status::invalid_argument(message),
        AdminError::Timeout | AdminError::TransferFailed { .. } => {
            Status::deadline_exceeded(message)
        }
        AdminError::Overwritten { .. } => Status::aborted(message),
        AdminError::ShuttingDown | AdminError::Stopped { .. } => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

fn role_name(role: Role) -> String {
    role.to_string()
}

fn state_name(state: ReplicationState) -> String {
    match state {
        ReplicationState::Probe => "probe".into(),
        ReplicationState::Replicate => "replicate".into(),
        ReplicationState::Snapshot { .. } => "snapshot".into(),
    }
}

fn membership_reply(m: &dengine_core::Membership) -> admin_pb::MembershipReply {
    admin_pb::MembershipReply {
        membership: Some(convert::encode_membership(m)),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<admin_pb::StatusRequest>,
    ) -> Result<Response<admin_pb::StatusReply>, Status> {
        let s = self.node.status().await.map_err(admin_status)?;
        let membership = membership_reply(&s.membership).membership;
        Ok(Response::new(admin_pb::StatusReply {
            id: s.id,
            role: role_name(s.role),
            term: s.term,
            leader: s.leader.unwrap_or(0),
            leader_address: s.leader_address.unwrap_or_default(),
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
            membership,
            membership_index: s.membership_index,
            snapshot_index: s.snapshot.map_or(0, |m| m.last_included.index),
            peers: s
                .peers
                .iter()
                .map(|(id, p)| admin_pb::PeerStatus {
                    id: *id,
                    match_index: p.progress.match_index,
                    next_index: p.progress.next_index,
                    state: state_name(p.progress.state),
                    lag: p.lag,
                })
                .collect(),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<admin_pb::AddLearnerRequest>,
    ) -> Result<Response<admin_pb::MembershipReply>, Status> {
        let r = request.into_inner();
        if r.address.is_empty() {
            return Err(Status::invalid_argument(
                "a learner needs the address other nodes reach it at",
            ));
        }
        let m = self
            .node
            .add_learner(r.id, r.address)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(membership_reply(&m)))
    }

    async fn promote(
        &self,
        request: Request<admin_pb::NodeRequest>,
    ) -> Result<Response<admin_pb::MembershipReply>, Status> {
        let m = self
            .node
            .promote(request.into_inner().id)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(membership_reply(&m)))
    }

    async fn remove(
        &self,
        request: Request<admin_pb::NodeRequest>,
    ) -> Result<Response<admin_pb::MembershipReply>, Status> {
        let m = self
            .node
            .remove(request.into_inner().id)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(membership_reply(&m)))
    }

    async fn change_membership(
        &self,
        request: Request<admin_pb::ChangeMembershipRequest>,
    ) -> Result<Response<admin_pb::MembershipReply>, Status> {
        let mut changes = Vec::new();
        let mut addresses = BTreeMap::new();
        for c in request.into_inner().changes {
            let change = match c.kind() {
                Kind::AddVoter => MembershipChange::AddVoter(c.id),
                Kind::AddLearner => MembershipChange::AddLearner(c.id),
                Kind::Remove => MembershipChange::Remove(c.id),
                Kind::Unspecified => {
                    return Err(Status::invalid_argument(format!(
                        "membership change for node {} has no kind (add voter, add learner, \
                         remove)",
                        c.id
                    )));
                }
            };
            if !c.address.is_empty() {
                addresses.insert(c.id, c.address);
            }
            changes.push(change);
        }
        let m = self
            .node
            .change_membership(changes, addresses)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(membership_reply(&m)))
    }

    async fn transfer_leader(
        &self,
        request: Request<admin_pb::NodeRequest>,
    ) -> Result<Response<admin_pb::TransferLeaderReply>, Status> {
        self.node
            .transfer_leader(request.into_inner().id)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(admin_pb::TransferLeaderReply {}))
    }

    async fn trigger_snapshot(
        &self,
        _request: Request<admin_pb::TriggerSnapshotRequest>,
    ) -> Result<Response<admin_pb::TriggerSnapshotReply>, Status> {
        let meta = self.node.trigger_snapshot().await.map_err(admin_status)?;
        Ok(Response::new(admin_pb::TriggerSnapshotReply {
            last_included: Some(pb::EntryId {
                term: meta.last_included.term,
                index: meta.last_included.index,
            }),
        }))
    }
}

impl crate::GrpcConfig {
    /// The transport configuration for a node's [`Settings`](dengine_node::Settings):
    /// `node.id`, `node.cluster_id`, `[network]` and the snapshot chunking of `[snapshot]`.
    pub fn from_settings(settings: &dengine_node::Settings) -> Self {
        use std::time::Duration;
        let n = &settings.network;
        let mut c = crate::GrpcConfig::new(settings.node.id, settings.node.cluster_id);
        c.peer_queue_len = n.peer_queue_len;
        c.connect_timeout = Duration::from_millis(n.connect_timeout_ms);
        c.reconnect_initial = Duration::from_millis(n.reconnect_initial_ms);
        c.reconnect_max = Duration::from_millis(n.reconnect_max_ms);
        c.compression = n.compression == dengine_node::settings::Compression::Gzip;
        c.max_message_bytes = n.max_message_bytes;
        c.snapshot_chunk_bytes = settings.snapshot.chunk_bytes;
        c.snapshot_chunk_timeout = Duration::from_millis(settings.snapshot.chunk_timeout_ms);
        c.tls = n.tls.as_ref().map(|t| crate::TlsConfig {
            cert: t.cert.clone(),
            key: t.key.clone(),
            ca: t.ca.clone(),
            require_client_cert: t.require_client_cert,
            server_name: t.server_name.clone(),
        });
        c
    }
}

impl crate::GrpcTransport {
    /// Binds `addr` and serves, on that one port, the peer service (delivering into
    /// `node`'s inbox), the admin service of `node`, and whatever `add` adds to the routes
    /// (`|routes| routes` for nothing more), until the handle is shut down or dropped.
    pub async fn serve_node(
        &self,
        addr: std::net::SocketAddr,
        node: &Node,
        add: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes,
    ) -> Result<crate::ServerHandle, crate::GrpcError> {
        let admin = AdminService::new(node.clone()).server();
        self.serve_with(addr, std::sync::Arc::new(node.inbox()), move |routes| {
            add(routes.add_service(admin))
        })
        .await
    }
}
