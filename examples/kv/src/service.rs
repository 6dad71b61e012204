//! The etcd v3 gRPC services `KV`, `Cluster` and `Maintenance` over a [`KvBackend`], and
//! [`kv_services`], which bundles them with `Watch` and `Auth` into one set of tonic routes.
//!
//! Every request is identified first (its token or client certificate, see
//! [`Credentials`]); a write is checked against the member's auth state before it is
//! proposed (to refuse early) and carries its user into the log, where the state machine
//! checks it again when it applies it; a read carries its user into the query, checked when
//! it is served.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::auth::access::Needs;
use crate::auth::hub::AuthHub;
use crate::auth::identity::Credentials;
use crate::auth::user_of;
use crate::auth_service::AuthService;
use crate::backend::{KvBackend, MemberInfo};
use crate::config::KvConfig;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{
    Command, Query, StatsRequest, command, command_response, query, query_response,
};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Member,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberRemoveRequest, MemberRemoveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
    auth_server::AuthServer,
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    maintenance_server::{Maintenance, MaintenanceServer},
    response_op::Response as OpResponse,
    watch_server::WatchServer,
};
use crate::state_machine::{decode_command_response, decode_query_response};
use crate::unsupported::{self, Unsupported};
use crate::validate;
use crate::watch::WatchHub;
use crate::watch_service::WatchService;

/// The etcd API version reported by `Maintenance.Status`: the API level dengine-kv speaks.
/// Clients that gate features on the server version compare against it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// What every service shares.
#[derive(Debug)]
pub(crate) struct Shared<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) hub: WatchHub,
    pub(crate) auth: AuthHub,
    pub(crate) config: KvConfig,
}

impl<B: KvBackend> Shared<B> {
    /// A header with this member's fields and the given store revision.
    pub(crate) fn header(&self, revision: i64) -> ResponseHeader {
        let info = self.backend.header();
        ResponseHeader {
            cluster_id: info.cluster_id,
            member_id: info.member_id,
            revision,
            raft_term: info.raft_term,
        }
    }

    /// Completes a header the state machine filled with its revision.
    pub(crate) fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.hub.revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// A request's credentials.
    pub(crate) fn credentials<T>(&self, request: &Request<T>) -> Credentials {
        Credentials::of(request, self.config.client_cert_auth)
    }

    /// The user a request runs as (`None`: no credentials), or its refusal (an unknown
    /// token while auth is enabled).
    pub(crate) fn identify<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        Ok(self.auth.identify(&self.credentials(request))?)
    }

    /// Checks a write as the client API requires ([`validate::check_command`]) and against
    /// this member's auth state (a refusal costs no round through the log), then replicates
    /// it, run as `user`, and decodes the state machine's answer.
    pub(crate) async fn propose(
        &self,
        op: command::Op,
        user: Option<String>,
    ) -> Result<command_response::Result, Status> {
        let needs = Needs::command(&op);
        // Auth commands are the ones without key-value needs.
        let auth_change = needs.is_none();
        let command = Command {
            op: Some(op),
            user: user.unwrap_or_default(),
            max_range_response_bytes: u64::try_from(self.config.max_range_response_bytes)
                .unwrap_or(u64::MAX),
        };
        // The request's shape first, then its user's permissions, as etcd does.
        validate::check_command(&command, &self.config)?;
        if let Some(needs) = &needs {
            self.auth.store().authorize(user_of(&command.user), needs)?;
        }
        let response = self
            .backend
            .propose(Bytes::from(command.encode_to_vec()))
            .await?;
        if auth_change {
            self.applied_here().await;
        }
        Ok(decode_command_response(&response)?)
    }

    /// Waits until this member has applied every write committed so far (a linearizable
    /// read's barrier). A follower answers a forwarded write once the leader applied it; for
    /// auth changes that is not enough: this member checks its next requests against its own
    /// auth state and tokens (the token just issued, the user just added), so it answers
    /// only once it has applied the change too, as etcd does. If the barrier fails the change
    /// is applied all the same; it only shows here a little later.
    async fn applied_here(&self) {
        let barrier = Query {
            op: Some(query::Op::Stats(StatsRequest {})),
            ..Query::default()
        };
        if let Err(e) = self
            .backend
            .read(Bytes::from(barrier.encode_to_vec()), false)
            .await
        {
            tracing::debug!("no read barrier after an auth change: {e}");
        }
    }

    /// Runs a read as `user` (checked by the state machine when it serves it).
    pub(crate) async fn query(
        &self,
        op: query::Op,
        user: Option<String>,
        serializable: bool,
    ) -> Result<query_response::Result, Status> {
        let query = Query {
            op: Some(op),
            user: user.unwrap_or_default(),
            max_range_response_bytes: u64::try_from(self.config.max_range_response_bytes)
                .unwrap_or(u64::MAX),
        };
        let response = self
            .backend
            .read(Bytes::from(query.encode_to_vec()), serializable)
            .await?;
        Ok(decode_query_response(&response)?)
    }
}

pub(crate) fn unexpected(what: &str) -> Status {
    KvError::Internal(format!(
        "the state machine answered a {what} with another response type"
    ))
    .to_status()
}

/// The `KV` service.
#[derive(Debug)]
pub(crate) struct KvService<B> {
    shared: Arc<Shared<B>>,
}

#[tonic::async_trait]
impl<B: KvBackend> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        validate::check_range(&req)?;
        let serializable = req.serializable;
        match self
            .shared
            .query(query::Op::Range(req), user, serializable)
            .await?
        {
            query_response::Result::Range(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("range")),
        }
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        match self.shared.propose(command::Op::Put(req), user).await? {
            command_response::Result::Put(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        match self
            .shared
            .propose(command::Op::DeleteRange(req), user)
            .await?
        {
            command_response::Result::DeleteRange(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        match self.shared.propose(command::Op::Txn(req), user).await? {
            command_response::Result::Txn(mut resp) => {
                self.shared.fill(&mut resp.header);
                for op in &mut resp.responses {
                    fill_op(&self.shared, op.response.as_mut());
                }
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        match self.shared.propose(command::Op::Compact(req), user).await? {
            command_response::Result::Compact(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compaction")),
        }
    }
}

fn fill_op<B: KvBackend>(shared: &Shared<B>, op: Option<&mut OpResponse>) {
    match op {
        Some(OpResponse::ResponseRange(r)) => shared.fill(&mut r.header),
        Some(OpResponse::ResponsePut(r)) => shared.fill(&mut r.header),
        Some(OpResponse::ResponseDeleteRange(r)) => shared.fill(&mut r.header),
        Some(OpResponse::ResponseTxn(t)) => {
            shared.fill(&mut t.header);
            for op in &mut t.responses {
                fill_op(shared, op.response.as_mut());
            }
        }
        None => {}
    }
}

/// The `Cluster` service (MemberList, MemberAdd, MemberRemove).
#[derive(Debug)]
pub(crate) struct ClusterService<B> {
    shared: Arc<Shared<B>>,
}

fn to_member(m: MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

impl<B: KvBackend> ClusterService<B> {
    /// Membership changes are administration: root only while auth is enabled (checked on
    /// this member: they do not go through the state machine).
    fn check_root<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let user = self.shared.identify(request)?;
        Ok(self.shared.auth.store().check_root(user.as_deref())?)
    }

    async fn member_list(&self) -> Result<Vec<Member>, Status> {
        Ok(self
            .shared
            .backend
            .members()
            .await?
            .into_iter()
            .map(to_member)
            .collect())
    }
}

#[tonic::async_trait]
impl<B: KvBackend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.check_root(&request)?;
        let req = request.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(
                KvError::InvalidArgument("member add needs at least one peer URL".into()).into(),
            );
        }
        let member = self
            .shared
            .backend
            .add_member(req.peer_ur_ls, req.is_learner)
            .await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
            member: Some(to_member(member)),
            members: self.member_list().await?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_root(&request)?;
        self.shared
            .backend
            .remove_member(request.into_inner().id)
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
            members: self.member_list().await?,
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            // A linearizable read first: this member has then applied every membership
            // change committed before the request.
            self.shared
                .query(query::Op::Stats(StatsRequest {}), None, false)
                .await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
            members: self.member_list().await?,
        }))
    }
}

/// The `Maintenance` service (Status only).
#[derive(Debug)]
pub(crate) struct MaintenanceService<B> {
    shared: Arc<Shared<B>>,
}

#[tonic::async_trait]
impl<B: KvBackend> Maintenance for MaintenanceService<B> {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let stats = match self
            .shared
            .query(query::Op::Stats(StatsRequest {}), None, true)
            .await?
        {
            query_response::Result::Stats(s) => s,
            _ => return Err(unexpected("status")),
        };
        let status = self.shared.backend.status().await?;
        let db_size = i64::try_from(stats.size_bytes).unwrap_or(i64::MAX);
        Ok(Response::new(StatusResponse {
            header: Some(self.shared.header(stats.revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: status.leader,
            raft_index: status.raft_index,
            raft_term: status.raft_term,
            raft_applied_index: status.raft_applied_index,
            errors: status.errors,
            db_size_in_use: db_size,
            is_learner: status.is_learner,
        }))
    }
}

/// The etcd services over one backend: `KV`, `Watch`, `Cluster`, `Maintenance` and `Auth`
/// (plus stand-ins that answer every `Lease`, `Election` and `Lock` call with
/// `UNIMPLEMENTED` and a message saying why). `hub` and `auth` must be the ones the backend's
/// [`KvStateMachine`](crate::KvStateMachine) publishes to.
///
/// Serve them with tonic:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use dengine_kv::{KvConfig, LocalBackend, WatchHub, kv_services};
///
/// let hub = WatchHub::default();
/// let backend = Arc::new(LocalBackend::new(hub.clone(), "http://127.0.0.1:2380").await?);
/// let auth = backend.auth_hub().clone();
/// let routes = kv_services(backend, hub, auth, KvConfig::default());
/// tonic::transport::Server::builder()
///     .add_routes(routes)
///     .serve("127.0.0.1:2379".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
pub fn kv_services<B: KvBackend>(
    backend: Arc<B>,
    hub: WatchHub,
    auth: AuthHub,
    config: KvConfig,
) -> Routes {
    add_kv_services(Routes::default(), backend, hub, auth, config)
}

/// [`kv_services`], added to existing `routes` (to serve them on a port shared with other
/// services, such as dengine's peer and admin services).
pub fn add_kv_services<B: KvBackend>(
    routes: Routes,
    backend: Arc<B>,
    hub: WatchHub,
    auth: AuthHub,
    config: KvConfig,
) -> Routes {
    let shared = Arc::new(Shared {
        backend,
        hub,
        auth,
        config,
    });
    routes
        .add_service(KvServer::new(KvService {
            shared: shared.clone(),
        }))
        .add_service(WatchServer::new(WatchService::new(shared.clone())))
        .add_service(ClusterServer::new(ClusterService {
            shared: shared.clone(),
        }))
        .add_service(AuthServer::new(AuthService::new(shared.clone())))
        .add_service(MaintenanceServer::new(MaintenanceService { shared }))
        .add_service(Unsupported::<unsupported::Lease>::new())
        .add_service(Unsupported::<unsupported::Election>::new())
        .add_service(Unsupported::<unsupported::Lock>::new())
}
