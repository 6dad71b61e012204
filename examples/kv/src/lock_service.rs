//! etcd's `Lock` service (`v3lockpb.Lock`): named distributed locks, served by the member as
//! etcd's server serves them with its client's `concurrency.Mutex` (see
//! [`concurrency`](crate::concurrency) for the queue of keys and how a waiter waits).
//!
//! `Lock(name, lease)` puts the caller's key under `name + "/"` and answers once no key there
//! was created before it, with the key; `Unlock(key)` deletes the key. A waiting `Lock` whose
//! client goes away (or that fails) deletes the key it created.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::backend::KvBackend;
use crate::concurrency::{Caller, Gone, detached, plain_error, prefix_of};
use crate::proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use crate::shared::Shared;

/// etcd's `concurrency.ErrSessionExpired`: the caller's key was deleted while it waited (by
/// an `Unlock` of that key, a delete, or, with leases, its lease's end).
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The `Lock` service.
#[derive(Debug)]
pub(crate) struct LockService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> LockService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        LockService { shared }
    }
}

/// One `Lock` call, in its own task (it outlives a client that goes away, to clean up).
async fn acquire<B: KvBackend>(
    caller: Caller<B>,
    name: Bytes,
    lease: i64,
    mut gone: Gone,
) -> Result<LockResponse, Status> {
    let prefix = prefix_of(&name);
    // Not raced with the client going away: once the transaction is sent, only its answer
    // says whether there is a key to clean up.
    let entry = caller.enqueue(&prefix, lease, Bytes::new()).await?;
    let waited = tokio::select! {
        waited = caller.wait_for_older(&prefix, entry.rev) => waited,
        () = gone.wait() => Err(Status::cancelled("the client went away while waiting for the lock")),
    };
    let checked = match waited {
        Ok(()) => caller.still_queued(&entry.key, entry.rev).await,
        Err(e) => Err(e),
    };
    match checked {
        // A client gone by now is not told it holds the lock: release it for the next one.
        Ok((true, header)) if !gone.now() => Ok(LockResponse {
            header: Some(header),
            key: entry.key,
        }),
        Ok((true, _)) => {
            caller.abandon(&entry).await;
            Err(Status::cancelled("the client went away"))
        }
        Ok((false, _)) => Err(plain_error(SESSION_EXPIRED)),
        Err(e) => {
            caller.abandon(&entry).await;
            Err(e)
        }
    }
}

#[tonic::async_trait]
impl<B: KvBackend> Lock for LockService<B> {
    /// Waits until the caller holds the lock `name`; answers with its key. A call with
    /// `lease = 0` gets a key of its own (etcd's server grants such a call a lease; dengine-kv
    /// names the key after a random id) and holds the lock until `Unlock`. Two calls with the
    /// same lease are one hold, as in etcd.
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        let caller = Caller {
            shared: self.shared.clone(),
            user,
        };
        let response = detached(|gone| acquire(caller, req.name, req.lease, gone)).await?;
        Ok(Response::new(response))
    }

    /// Deletes the key a `Lock` call answered with (etcd deletes it whatever it is).
    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let user = self.shared.identify(&request)?;
        let req = request.into_inner();
        let caller = Caller {
            shared: self.shared.clone(),
            user,
        };
        let header = caller.delete(req.key).await?;
        Ok(Response::new(UnlockResponse {
            header: Some(header),
        }))
    }
}
