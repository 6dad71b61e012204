//! etcd's `Lease` service: grant, revoke, keep-alive, time-to-live and list, on any member.
//!
//! Grants and revokes go through the log like any write. Keep-alives and remaining TTLs are
//! the leader's to answer (its clock decides expiry, `lease.rs`): a follower asks the leader
//! for each request, over the peer connection.

use std::pin::Pin;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::backend::KvBackend;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{command, command_response, query, query_response};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::shared::{Shared, unexpected};
use crate::store::MAX_LEASE_TTL;

/// Keep-alive requests a stream may have waiting for their answers: a client that sends
/// faster than the leader answers is slowed down, not buffered without bound.
const KEEPALIVE_QUEUE: usize = 64;

/// The `Lease` service of one member.
#[derive(Debug)]
pub(crate) struct LeaseService<B> {
    pub(crate) shared: Arc<Shared<B>>,
}

/// A random positive lease id (etcd's ids are positive 63-bit numbers).
fn new_lease_id() -> Result<i64, Status> {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::internal("etcdserver: no randomness for a lease id"))?;
    let id = i64::from_le_bytes(bytes) & i64::MAX;
    Ok(if id == 0 { 1 } else { id })
}

impl<B: KvBackend> LeaseService<B> {
    async fn grant(
        &self,
        user: Option<String>,
        id: i64,
        ttl: i64,
    ) -> Result<LeaseGrantResponse, Status> {
        let op = command::Op::LeaseGrant(LeaseGrantRequest { ttl, id });
        match self.shared.propose(op, user).await? {
            command_response::Result::LeaseGrant(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(unexpected("lease grant")),
        }
    }

    /// One keep-alive: the lease's TTL after the renewal, 0 if it is gone.
    async fn keep_alive_one(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let ttl = self.shared.backend.lease_at_leader(id, false).await?;
        Ok(LeaseKeepAliveResponse {
            header: Some(self.shared.header(self.shared.hub.revision())),
            id,
            ttl: ttl.max(0),
        })
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: KvBackend> Lease for LeaseService<B> {
    /// etcd's rules: a TTL below the minimum is raised to it; above the maximum it is
    /// refused; id 0 asks the member to choose one.
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge.into());
        }
        if req.id < 0 {
            return Err(
                KvError::InvalidArgument(format!("lease id {} is negative", req.id)).into(),
            );
        }
        let max_leases = self.shared.config.leases.max_leases;
        let held = self.shared.backend.lease_hub().len();
        if held >= max_leases {
            return Err(KvError::ResourceExhausted(format!(
                "etcdserver: too many leases: the cluster holds {held}, the most this member \
                 grants is {max_leases} (--max-leases); revoke leases that are no longer used, \
                 or raise the bound on every member"
            ))
            .into());
        }
        let ttl = req.ttl.max(self.shared.config.leases.min_ttl_secs);
        if req.id != 0 {
            return Ok(Response::new(self.grant(user, req.id, ttl).await?));
        }
        // A chosen id is taken only by a collision of 63 random bits: try a few.
        let mut last = None;
        for _ in 0..3 {
            match self.grant(user.clone(), new_lease_id()?, ttl).await {
                Ok(resp) => return Ok(Response::new(resp)),
                Err(e) if e.message() == KvError::lease_exists().to_string() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| unexpected("lease grant")))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        match self
            .shared
            .propose(command::Op::LeaseRevoke(req), user)
            .await?
        {
            command_response::Result::LeaseRevoke(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease revoke")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each request on the stream in order; a failure (no leader, say) ends the
    /// stream with its status, and the client opens a new one, as etcd's clients do.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.shared.identify(&request)?;
        let mut inbound = request.into_inner();
        let service = LeaseService {
            shared: self.shared.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_QUEUE);
        tokio::spawn(async move {
            let closed = service.shared.hub.clone();
            loop {
                let next = tokio::select! {
                    () = closed.closed() => return,
                    next = inbound.next() => next,
                };
                let answer = match next {
                    Some(Ok(req)) => service.keep_alive_one(req.id).await,
                    // The client went away or broke the stream.
                    Some(Err(_)) | None => return,
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// The remaining TTL comes from the leader's clock; the granted TTL and the keys from
    /// the applied state, read linearizably. -1 for a lease that does not exist.
    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        let id = req.id;
        let mut resp = match self
            .shared
            .query(query::Op::LeaseTimeToLive(req), user, false)
            .await?
        {
            query_response::Result::LeaseTimeToLive(resp) => resp,
            _ => return Err(unexpected("lease time-to-live")),
        };
        if resp.ttl >= 0 {
            resp.ttl = self.shared.backend.lease_at_leader(id, true).await?;
            if resp.ttl < 0 {
                // Expired between the read and the leader's answer.
                resp.granted_ttl = 0;
                resp.keys.clear();
            }
        }
        self.shared.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let user = self.shared.identify(&request)?;
        match self
            .shared
            .query(query::Op::LeaseLeases(request.into_inner()), user, false)
            .await?
        {
            query_response::Result::LeaseLeases(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease list")),
        }
    }
}
