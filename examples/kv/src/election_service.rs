//! etcd's `Election` service (`v3electionpb.Election`): leader elections, served by the member
//! as etcd's server serves them with its client's `concurrency.Election` (see
//! [`concurrency`](crate::concurrency) for the queue of keys and how a campaigner waits).
//!
//! The campaigners of election `name` have keys under `name + "/"`; the one created first
//! leads, and its value is the election's proclamation. `Campaign` waits for leadership,
//! `Proclaim` replaces the leader's value, `Resign` deletes the leader's key, `Leader` reads
//! the leader's key, `Observe` streams the leader and each change of it.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::backend::KvBackend;
use crate::concurrency::{Caller, Gone, detached, next_events, plain_error, prefix_end, prefix_of};
use crate::proto::etcdserverpb::{ResponseHeader, watch_create_request::FilterType};
use crate::proto::mvccpb::{KeyValue, event::EventType};
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use crate::shared::Shared;
use crate::watch::WatchFilter;

/// etcd's `concurrency.ErrElectionNotLeader`: the leadership given is not (or no longer) the
/// key's (the key was deleted, or created again since).
const NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`: the election has no campaigner.
const NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`: `Proclaim` or `Resign` without a leadership.
const MISSING_LEADER: &str = "\"leader\" field must be provided";

/// Responses an `Observe` stream buffers before it waits for its client.
const OBSERVE_BUFFER: usize = 16;

/// The `Election` service.
#[derive(Debug)]
pub(crate) struct ElectionService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> ElectionService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        ElectionService { shared }
    }
}

impl<B: KvBackend> ElectionService<B> {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller<B>, Status> {
        Ok(Caller {
            shared: self.shared.clone(),
            user: self.shared.identify(request)?,
        })
    }
}

/// One `Campaign` call, in its own task (it outlives a client that goes away, to clean up).
async fn campaign<B: KvBackend>(
    caller: Caller<B>,
    req: CampaignRequest,
    mut gone: Gone,
) -> Result<CampaignResponse, Status> {
    let prefix = prefix_of(&req.name);
    let entry = caller
        .enqueue(&prefix, req.lease, req.value.clone())
        .await?;
    // The same lease campaigned before with another value: the new value is proclaimed, as
    // etcd's Campaign does.
    if !entry.created && entry.value != req.value {
        let (proclaimed, _) = caller
            .put_if_created_at(&entry.key, entry.rev, req.value.clone(), req.lease)
            .await?;
        if !proclaimed {
            return Err(plain_error(NOT_LEADER));
        }
    }
    let waited = tokio::select! {
        waited = caller.wait_for_older(&prefix, entry.rev) => waited,
        () = gone.wait() => Err(Status::cancelled("the client went away while campaigning")),
    };
    let checked = match waited {
        Ok(()) => caller.still_queued(&entry.key, entry.rev).await,
        Err(e) => Err(e),
    };
    match checked {
        // A client gone by now is not told it leads: resign for the next campaigner.
        Ok((true, header)) if !gone.now() => Ok(CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey {
                name: req.name,
                key: entry.key,
                rev: entry.rev,
                lease: req.lease,
            }),
        }),
        Ok((true, _)) => {
            caller.abandon(&entry).await;
            Err(Status::cancelled("the client went away"))
        }
        // The key was deleted while it waited: it does not lead.
        Ok((false, _)) => Err(plain_error(NOT_LEADER)),
        Err(e) => {
            caller.abandon(&entry).await;
            Err(e)
        }
    }
}

/// Sends one `Observe` response; `false` if the client is gone.
async fn send_leader<B: KvBackend>(
    caller: &Caller<B>,
    out: &mpsc::Sender<Result<LeaderResponse, Status>>,
    kv: KeyValue,
    revision: i64,
) -> bool {
    let response = LeaderResponse {
        header: Some(caller.shared.header(revision)),
        kv: Some(kv),
    };
    out.send(Ok(response)).await.is_ok()
}

/// An `Observe` stream (etcd's `Election.Observe`): the leader's key, then each value it
/// puts, until it is deleted; then the next leader (or, while there is none, the first key
/// put under the prefix), and so on. If the event history moved past the stream (a slow
/// client under heavy writes), it reads the leader again: intermediate values may be
/// skipped, the latest is always sent, and nothing is sent twice. `first` is the leader read
/// when the call came in.
async fn observe<B: KvBackend>(
    caller: Caller<B>,
    prefix: Bytes,
    first: (Option<KeyValue>, ResponseHeader),
    out: mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    let hub = caller.shared.hub.clone();
    let mut revisions = hub.subscribe();
    // The key and mod revision last sent.
    let mut last: Option<(Bytes, i64)> = None;
    let mut read = Some(first);
    loop {
        let (current, header) = match read.take() {
            Some(first) => first,
            None => caller.first_created(&prefix).await?,
        };
        let (leader, at) = match current {
            Some(kv) => (kv, header.revision),
            None => {
                // No leader yet: the first key put under the prefix leads.
                let puts = WatchFilter::new(prefix.clone(), prefix_end(&prefix))
                    .with_filters([FilterType::Nodelete]);
                let mut next = header.revision + 1;
                let Some(events) = next_events(&hub, &mut revisions, &puts, &mut next).await?
                else {
                    continue;
                };
                let Some(kv) = events.into_iter().find_map(|e| e.kv) else {
                    continue;
                };
                let at = kv.mod_revision;
                (kv, at)
            }
        };
        let seen = (leader.key.clone(), leader.mod_revision);
        if last.as_ref() != Some(&seen) {
            last = Some(seen);
            if !send_leader(&caller, &out, leader.clone(), at).await {
                return Ok(());
            }
        }
        // Follow the leader's key: a put is a proclamation, a delete ends the leadership.
        let key = WatchFilter::new(leader.key, Bytes::new());
        let mut next = at + 1;
        'leader: while let Some(events) = next_events(&hub, &mut revisions, &key, &mut next).await?
        {
            for event in events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                let Some(kv) = event.kv else { continue };
                let at = kv.mod_revision;
                last = Some((kv.key.clone(), at));
                if !send_leader(&caller, &out, kv, at).await {
                    return Ok(());
                }
            }
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: KvBackend> Election for ElectionService<B> {
    type ObserveStream = ObserveStream;

    /// Waits until the caller leads election `name`, with `value` proclaimed; answers with
    /// its leadership. A call with `lease = 0` gets a key of its own (etcd's server grants
    /// such a call a lease; dengine-kv names the key after a random id) and leads until it
    /// resigns.
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let response = detached(|gone| campaign(caller, req, gone)).await?;
        Ok(Response::new(response))
    }

    /// Puts `value` on the leader's key if the leadership is still current (the key's create
    /// revision is still `leader.rev`); etcd's "election: not leader" otherwise.
    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(|| plain_error(MISSING_LEADER))?;
        let (proclaimed, header) = caller
            .put_if_created_at(&leader.key, leader.rev, req.value, leader.lease)
            .await?;
        if !proclaimed {
            return Err(plain_error(NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    /// The key under `name + "/"` created first, with its value; etcd's "election: no
    /// leader" if there is none.
    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = self.caller(&request)?;
        let prefix = prefix_of(&request.into_inner().name);
        match caller.first_created(&prefix).await? {
            (Some(kv), header) => Ok(Response::new(LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            })),
            (None, _) => Err(plain_error(NO_LEADER)),
        }
    }

    /// The leader now (or, if there is none, once there is one), then every change: each
    /// value proclaimed, each new leader. The stream ends when the client goes away; when
    /// the member stops, with `UNAVAILABLE`.
    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.caller(&request)?;
        let prefix = prefix_of(&request.into_inner().name);
        // Read once before answering: a refusal (permissions) is the call's error.
        let first = caller.first_created(&prefix).await?;
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        tokio::spawn(async move {
            let result = tokio::select! {
                result = observe(caller, prefix, first, tx.clone()) => result,
                () = tx.closed() => Ok(()),
            };
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Deletes the leader's key if the leadership is still current; nothing otherwise (as
    /// etcd).
    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(|| plain_error(MISSING_LEADER))?;
        let header = caller.delete_if_created_at(&leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}
