//! The `dengine.admin.v1.Admin` gRPC service on a [`dengine_node::Node`]:
//! status, membership changes, leader transfer and snapshots over the network.
//!
//! Errors map to gRPC codes: `FAILED_PRECONDITION` when this node does not lead (the message
//! names the leader and its address), `INVALID_ARGUMENT` for a change the protocol refuses,
//! `DEADLINE_EXCEEDED` when the outcome is unknown, `UNAVAILABLE` while shutting down or after
//! a fatal error.

use std::collections::BTreeMap;

use dengine_core::{MembershipChange, ReplicationState};
use dengine_net_grpc::tonic::service::Interceptor;
use dengine_net_grpc::tonic::service::interceptor::InterceptedService;
use dengine_net_grpc::tonic::{Request, Response, Status};
use dengine_node::{AdminError, Node};

use dengine_net_grpc::admin_pb;
use dengine_net_grpc::admin_pb::admin_server::{Admin, AdminServer};
use dengine_net_grpc::admin_pb::membership_change::Kind;
use dengine_net_grpc::convert;
use dengine_net_grpc::pb;

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

    /// The tonic service, admitting only requests that carry `authorization: Bearer <token>`
    /// when `token` is set (compared in constant time). Operators' rights on the admin
    /// listener come from this token, from client certificates of the admin CA, or from the
    /// listener being reachable from this host only.
    pub fn server_with_token(
        self,
        token: Option<String>,
    ) -> InterceptedService<AdminServer<AdminService>, AdminToken> {
        AdminServer::with_interceptor(self, AdminToken { token })
    }
}

/// Checks the admin bearer token (see [`AdminService::server_with_token`]).
#[derive(Clone, Debug)]
pub struct AdminToken {
    token: Option<String>,
}

impl Interceptor for AdminToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if dengine_net_grpc::auth::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "the admin API needs `authorization: Bearer <token>` with the token of \
                 admin.token_file",
            ))
        }
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

#[dengine_net_grpc::tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<admin_pb::StatusRequest>,
    ) -> Result<Response<admin_pb::StatusReply>, Status> {
        let s = self.node.status().await.map_err(admin_status)?;
        let membership = membership_reply(&s.membership).membership;
        Ok(Response::new(admin_pb::StatusReply {
            id: s.id,
            role: s.role.to_string(),
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
