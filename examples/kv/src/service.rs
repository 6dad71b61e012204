//! The etcd v3 gRPC services `KV`, `Cluster` and `Maintenance` over a [`KvBackend`]
//! (`routes.rs` bundles them with `Watch` and `Auth`; `shared.rs` is what they all use).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::backend::{KvBackend, MemberInfo};
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{
    HashRequest, HashResult, StatsRequest, command, command_response, query, query_response,
};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentRequest,
    DefragmentResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse,
    HashRequest as EtcdHashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    MoveLeaderRequest, MoveLeaderResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
    cluster_server::Cluster, kv_server::Kv, maintenance_server::Maintenance,
    response_op::Response as OpResponse,
};
use crate::shared::{Shared, unexpected};
use crate::validate;

/// The etcd API version reported by `Maintenance.Status`: the API level dengine-kv speaks.
/// Clients that gate features on the server version compare against it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// The `KV` service.
#[derive(Debug)]
pub(crate) struct KvService<B> {
    pub(crate) shared: Arc<Shared<B>>,
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
    pub(crate) shared: Arc<Shared<B>>,
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

/// Membership changes and leader transfers are administration: root only while auth is
/// enabled (checked on this member: they do not go through the state machine).
fn check_root<B: KvBackend, T>(shared: &Shared<B>, request: &Request<T>) -> Result<(), Status> {
    let user = shared.identify(request)?;
    Ok(shared.auth.store().check_root(user.as_deref())?)
}

impl<B: KvBackend> ClusterService<B> {
    fn check_root<T>(&self, request: &Request<T>) -> Result<(), Status> {
        check_root(&self.shared, request)
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

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check_root(&request)?;
        self.shared
            .backend
            .promote_member(request.into_inner().id)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
            members: self.member_list().await?,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check_root(&request)?;
        let req = request.into_inner();
        self.shared
            .backend
            .update_member(req.id, req.peer_ur_ls)
            .await?;
        Ok(Response::new(MemberUpdateResponse {
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

/// Bytes per message of a `Maintenance.Snapshot` stream (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// The `Maintenance` service (Status, MoveLeader, HashKV, Hash, Alarm, Defragment and
/// Snapshot).
#[derive(Debug)]
pub(crate) struct MaintenanceService<B> {
    pub(crate) shared: Arc<Shared<B>>,
}

impl<B: KvBackend> MaintenanceService<B> {
    /// This member's checksum of its key space (a local read, as etcd's: members are compared
    /// at equal revisions).
    async fn hash(&self, revision: i64) -> Result<HashResult, Status> {
        match self
            .shared
            .query(query::Op::Hash(HashRequest { revision }), None, true)
            .await?
        {
            query_response::Result::Hash(h) => Ok(h),
            _ => Err(unexpected("hash")),
        }
    }
}

#[tonic::async_trait]
impl<B: KvBackend> Maintenance for MaintenanceService<B> {
    type SnapshotStream = tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>;

    /// A backup of this member's state (a local read, as etcd snapshots the member it is sent
    /// to), in dengine's backup format (`dengine::backup`: the state machine's snapshot, the
    /// log index it covers, a checksum), streamed in [`SNAPSHOT_CHUNK`] pieces read from the
    /// snapshot file as they are sent (never the whole backup in memory). Root only with auth
    /// on, as etcd's. `dengine-kv serve --restore-from FILE` founds a cluster from it.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        check_root(&self.shared, &request)?;
        let (index, data) = self.shared.backend.backup().await?;
        let (mut encoder, head) = dengine::backup::Encoder::new(index, data.len());
        let total = encoder.file_len();
        tracing::info!(index, bytes = total, "streaming a backup");
        let header = self.shared.header(self.shared.hub.revision());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = 0u64;
            let message = |blob: bytes::Bytes, sent: &mut u64| {
                *sent += blob.len() as u64;
                Ok(SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total - *sent,
                    blob,
                })
            };
            if tx.send(message(head.into(), &mut sent)).await.is_err() {
                return; // the client went away
            }
            let mut at = 0;
            while at < data.len() {
                let source = data.clone();
                let read =
                    tokio::task::spawn_blocking(move || source.read_chunk(at, SNAPSHOT_CHUNK))
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r);
                let piece = match read {
                    Ok(piece) if !piece.is_empty() => piece,
                    Ok(_) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "the snapshot ended at byte {at} of {}",
                                data.len()
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the snapshot for a backup failed");
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "reading this member's snapshot for the backup failed: {e}"
                            ))))
                            .await;
                        return;
                    }
                };
                at += piece.len() as u64;
                encoder.data(&piece);
                if tx.send(message(piece, &mut sent)).await.is_err() {
                    return;
                }
            }
            let last = match encoder.finish() {
                Ok(tail) => message(tail.into(), &mut sent),
                Err(e) => Err(Status::internal(e.to_string())),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

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

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        check_root(&self.shared, &request)?;
        let h = self.hash(request.into_inner().revision).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.shared.header(h.revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
        }))
    }

    async fn hash(
        &self,
        request: Request<EtcdHashRequest>,
    ) -> Result<Response<HashResponse>, Status> {
        check_root(&self.shared, &request)?;
        let h = self.hash(0).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.shared.header(h.revision)),
            hash: h.hash,
        }))
    }

    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        check_root(&self.shared, &request)?;
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        let response = match AlarmAction::try_from(req.action) {
            // A linearizable read: the alarms raised before the request are listed.
            Ok(AlarmAction::Get) => {
                match self
                    .shared
                    .query(query::Op::Alarms(req), user, false)
                    .await?
                {
                    query_response::Result::Alarms(r) => r,
                    _ => return Err(unexpected("alarm list")),
                }
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                match self.shared.propose(command::Op::Alarm(req), user).await? {
                    command_response::Result::Alarm(r) => r,
                    _ => return Err(unexpected("alarm")),
                }
            }
            Err(_) => {
                return Err(KvError::InvalidArgument(format!(
                    "unknown alarm action {}",
                    req.action
                ))
                .into());
            }
        };
        Ok(Response::new(response))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        check_root(&self.shared, &request)?;
        self.shared
            .backend
            .move_leader(request.into_inner().target_id)
            .await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
        }))
    }

    /// etcd defragments its database file; dengine-kv's disk holds the Raft log and the
    /// snapshots, so this member takes a snapshot now and compacts its log behind it (on this
    /// member only, as etcd's). Root only with auth on, as etcd's.
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        check_root(&self.shared, &request)?;
        let index = self.shared.backend.defragment().await?;
        tracing::info!(
            index,
            "defragment: snapshot taken and log compacted up to it"
        );
        Ok(Response::new(DefragmentResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
        }))
    }
}
