//! What the `Lock` and `Election` services share: etcd's concurrency recipes (its client's
//! `concurrency` package, which etcd's own lock and election servers run inside the member),
//! built here on the member's KV transactions, linearizable reads and [`WatchHub`].
//!
//! A lock or an election `name` is a queue of keys under `name + "/"`. Each caller puts one key
//! there (named after its lease, in hex, as etcd names it) in a transaction that only creates
//! it if it is missing; the key's create revision is its place in the queue. The caller whose
//! key has the lowest create revision holds the lock (leads the election); the others wait,
//! each for the deletion of the newest key created before its own, then look again.
//!
//! Every step runs as the requesting user: while auth is enabled, the transactions and reads
//! are checked as that user's `Txn` and `Range` would be.
//!
//! Waiting: a waiter reads the event history of the [`WatchHub`] from the revision of the
//! read that found the key it waits for, and wakes on every new revision. If the history no
//! longer holds that revision (a slow waiter under heavy writes), it reads the queue again:
//! nothing is missed, only a read is spent.
//!
//! Giving up: a wait runs in its own task ([`detached`]). When the client goes away (it
//! cancelled, its deadline passed, its connection closed) or the wait fails, the task still
//! deletes the key the call created, with a transaction that only deletes it if it is still
//! the same key (same create revision); a key that existed before the call is left alone.
//! A key whose caller vanished after it was answered stays until it is deleted (`Unlock`,
//! `Resign`, a delete of the key) or, if it was put with a lease, until the lease ends.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{oneshot, watch};
use tonic::{Code, Status};

use crate::backend::KvBackend;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{command, command_response, query, query_response};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request as OpRequest,
    response_op::Response as OpResponse,
    watch_create_request::FilterType,
};
use crate::proto::mvccpb::{Event, KeyValue};
use crate::shared::{Shared, unexpected};
use crate::watch::{WatchFilter, WatchHub};

/// Most events taken from the history in one read while waiting.
const EVENTS_PER_READ: usize = 1_000;

/// How many fresh ids a call without a lease tries before giving up (another key with the
/// same random id under the same name; never seen in practice).
const FRESH_ID_TRIES: usize = 4;

/// `name + "/"`: the prefix of a lock's or an election's keys.
pub(crate) fn prefix_of(name: &[u8]) -> Bytes {
    let mut prefix = Vec::with_capacity(name.len() + 1);
    prefix.extend_from_slice(name);
    prefix.push(b'/');
    prefix.into()
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`): the
/// prefix with its last byte below `0xff` incremented and what follows dropped; `"\0"` (every
/// key from `prefix` on) when every byte is `0xff`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

/// A waiter's key: the prefix and the id in lowercase hex, as Go's `%x` prints an `int64`
/// (so a key made by etcd for the same lease is the same key).
pub(crate) fn key_of(prefix: &[u8], id: i64) -> Bytes {
    let hex = if id < 0 {
        format!("-{:x}", id.unsigned_abs())
    } else {
        format!("{id:x}")
    };
    let mut key = Vec::with_capacity(prefix.len() + hex.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(hex.as_bytes());
    key.into()
}

/// A fresh positive id for a call without a lease. etcd's servers grant such a call a lease
/// of their own, so every caller gets a key of its own; dengine-kv has no leases to grant and
/// names the key after a random id instead (the same shape as a lease id).
fn fresh_id() -> Result<i64, Status> {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::internal("no random bytes for a lock or campaign key"))?;
    // Positive and non-zero, as lease ids are.
    Ok((i64::from_be_bytes(bytes) & i64::MAX).max(1))
}

/// The refusal when this member stops while a call waits: the client may call again on
/// another member.
pub(crate) fn stopping() -> Status {
    Status::unavailable("etcdserver: the member is stopping; call again on another member")
}

/// An error etcd's lock and election servers return as a plain Go error: gRPC code
/// `UNKNOWN`, the error's text as the message (clients compare the text).
pub(crate) fn plain_error(message: &str) -> Status {
    Status::new(Code::Unknown, message)
}

/// A compare `create_revision(key) == revision` (0: the key does not exist).
fn created_at(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..PutRequest::default()
        })),
    }
}

fn get_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestRange(RangeRequest {
            key: key.clone(),
            ..RangeRequest::default()
        })),
    }
}

fn delete_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestDeleteRange(DeleteRangeRequest {
            key: key.clone(),
            ..DeleteRangeRequest::default()
        })),
    }
}

/// The operations one call runs, as the user who made it.
pub(crate) struct Caller<B> {
    pub(crate) shared: Arc<Shared<B>>,
    pub(crate) user: Option<String>,
}

impl<B> Clone for Caller<B> {
    fn clone(&self) -> Self {
        Caller {
            shared: self.shared.clone(),
            user: self.user.clone(),
        }
    }
}

/// A waiter's key in a queue, as the call's first transaction left it.
#[derive(Clone, Debug)]
pub(crate) struct Enqueued {
    /// The key.
    pub(crate) key: Bytes,
    /// Its create revision: its place in the queue.
    pub(crate) rev: i64,
    /// Whether this call created it (otherwise it existed: the same lease queued before).
    pub(crate) created: bool,
    /// Its value (the one put, or the one it had).
    pub(crate) value: Bytes,
}

impl<B: KvBackend> Caller<B> {
    /// Runs a transaction; its response with the headers filled in.
    pub(crate) async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, Status> {
        match self
            .shared
            .propose(command::Op::Txn(txn), self.user.clone())
            .await?
        {
            command_response::Result::Txn(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(unexpected("txn")),
        }
    }

    /// A linearizable read, headers filled in.
    pub(crate) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        match self
            .shared
            .query(query::Op::Range(req), self.user.clone(), false)
            .await?
        {
            query_response::Result::Range(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(unexpected("range")),
        }
    }

    /// Deletes one key; the response header.
    pub(crate) async fn delete(&self, key: Bytes) -> Result<ResponseHeader, Status> {
        let req = DeleteRangeRequest {
            key,
            ..DeleteRangeRequest::default()
        };
        match self
            .shared
            .propose(command::Op::DeleteRange(req), self.user.clone())
            .await?
        {
            command_response::Result::DeleteRange(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(resp.header.unwrap_or_default())
            }
            _ => Err(unexpected("delete")),
        }
    }

    /// Puts the caller's key under `prefix` unless it exists (etcd's `Mutex.tryAcquire` and
    /// `Election.Campaign`): named after `lease`, or after a fresh random id when `lease` is
    /// 0 (see [`fresh_id`]).
    pub(crate) async fn enqueue(
        &self,
        prefix: &[u8],
        lease: i64,
        value: Bytes,
    ) -> Result<Enqueued, Status> {
        if lease != 0 {
            return self.enqueue_key(key_of(prefix, lease), lease, value).await;
        }
        for _ in 0..FRESH_ID_TRIES {
            let entry = self
                .enqueue_key(key_of(prefix, fresh_id()?), 0, value.clone())
                .await?;
            if entry.created {
                return Ok(entry);
            }
        }
        Err(Status::internal(
            "no unused key for the call after several random ids",
        ))
    }

    /// One transaction: if `key` does not exist, put it; otherwise read it.
    async fn enqueue_key(&self, key: Bytes, lease: i64, value: Bytes) -> Result<Enqueued, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put_op(&key, value.clone(), lease)],
                failure: vec![get_op(&key)],
            })
            .await?;
        if resp.succeeded {
            let rev = resp.header.map_or(0, |h| h.revision);
            return Ok(Enqueued {
                key,
                rev,
                created: true,
                value,
            });
        }
        let existing = match resp.responses.into_iter().next().and_then(|r| r.response) {
            Some(OpResponse::ResponseRange(r)) => r.kvs.into_iter().next(),
            _ => None,
        };
        let kv = existing.ok_or_else(|| unexpected("txn's read of an existing key"))?;
        Ok(Enqueued {
            key,
            rev: kv.create_revision,
            created: false,
            value: kv.value,
        })
    }

    /// Puts `value` on `key` if its create revision is still `rev`; `false` if it is not
    /// (the key was deleted, or deleted and created again).
    pub(crate) async fn put_if_created_at(
        &self,
        key: &Bytes,
        rev: i64,
        value: Bytes,
        lease: i64,
    ) -> Result<(bool, ResponseHeader), Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, rev)],
                success: vec![put_op(key, value, lease)],
                failure: Vec::new(),
            })
            .await?;
        Ok((resp.succeeded, resp.header.unwrap_or_default()))
    }

    /// Deletes `key` if its create revision is still `rev` (never a key someone else
    /// created since).
    pub(crate) async fn delete_if_created_at(
        &self,
        key: &Bytes,
        rev: i64,
    ) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, rev)],
                success: vec![delete_op(key)],
                failure: Vec::new(),
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// The key under `prefix` created first (etcd's `WithFirstCreate`), with the read's
    /// header.
    pub(crate) async fn first_created(
        &self,
        prefix: &Bytes,
    ) -> Result<(Option<KeyValue>, ResponseHeader), Status> {
        let resp = self
            .range(RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SortOrder::Ascend as i32,
                sort_target: SortTarget::Create as i32,
                ..RangeRequest::default()
            })
            .await?;
        Ok((resp.kvs.into_iter().next(), resp.header.unwrap_or_default()))
    }

    /// Waits until no key under `prefix` was created before revision `rev` (etcd's
    /// `waitDeletes`): reads the newest such key and waits for its deletion, again and
    /// again. Keys created at `rev` or later do not count.
    pub(crate) async fn wait_for_older(&self, prefix: &Bytes, rev: i64) -> Result<(), Status> {
        // dengine-kv's first write is revision 1: nothing is older. (A `max_create_revision`
        // of 0 would mean no bound.)
        if rev <= 1 {
            return Ok(());
        }
        let hub = &self.shared.hub;
        let mut revisions = hub.subscribe();
        loop {
            let resp = self
                .range(RangeRequest {
                    key: prefix.clone(),
                    range_end: prefix_end(prefix),
                    limit: 1,
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Create as i32,
                    max_create_revision: rev - 1,
                    ..RangeRequest::default()
                })
                .await?;
            let Some(older) = resp.kvs.into_iter().next() else {
                return Ok(());
            };
            let at = resp.header.map_or(0, |h| h.revision);
            // Its deletion, or a gap in the history: either way, read the queue again.
            let deletes =
                WatchFilter::new(older.key, Bytes::new()).with_filters([FilterType::Noput]);
            let mut next = at + 1;
            next_events(hub, &mut revisions, &deletes, &mut next).await?;
        }
    }

    /// The key `key` if it exists with create revision `rev`, with the read's header.
    pub(crate) async fn still_queued(
        &self,
        key: &Bytes,
        rev: i64,
    ) -> Result<(bool, ResponseHeader), Status> {
        let resp = self
            .range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })
            .await?;
        let held = resp.kvs.iter().any(|kv| kv.create_revision == rev);
        Ok((held, resp.header.unwrap_or_default()))
    }

    /// Removes the key a call created and no longer needs (the wait failed, or the client
    /// went away); a failure is only logged (the key then stays until deleted).
    pub(crate) async fn abandon(&self, entry: &Enqueued) {
        if !entry.created {
            return;
        }
        if let Err(e) = self.delete_if_created_at(&entry.key, entry.rev).await {
            tracing::warn!(
                key = %String::from_utf8_lossy(&entry.key),
                error = %e,
                "could not delete the key of an abandoned lock or campaign; it stays until \
                 deleted (Unlock / Resign / a delete of the key)"
            );
        }
    }
}

/// Waits for the next events matching `filter` from revision `*next` on and moves `*next`
/// past what it read. `Ok(Some(events))`: matching events (not empty); `Ok(None)`: the
/// history no longer holds revision `*next` (the caller reads the state again); `Err`: the
/// member is stopping. `revisions` must have been subscribed before the state the caller
/// waits on was read, so that no new revision goes unnoticed.
pub(crate) async fn next_events(
    hub: &WatchHub,
    revisions: &mut watch::Receiver<i64>,
    filter: &WatchFilter,
    next: &mut i64,
) -> Result<Option<Vec<Event>>, Status> {
    loop {
        match hub.read_events(*next, filter, EVENTS_PER_READ) {
            Ok(batch) => {
                *next = batch.through_revision + 1;
                if !batch.events.is_empty() {
                    return Ok(Some(batch.events));
                }
                if batch.more {
                    continue;
                }
            }
            Err(_) => return Ok(None),
        }
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return Err(stopping());
                }
            }
            () = hub.closed() => return Err(stopping()),
        }
    }
}

/// Resolves when the call that started a [`detached`] task is gone (its future was dropped:
/// the client cancelled, its deadline passed, or its connection closed).
pub(crate) struct Gone(oneshot::Receiver<Infallible>);

impl Gone {
    /// Waits until the call is gone.
    pub(crate) async fn wait(&mut self) {
        let _ = (&mut self.0).await;
    }

    /// Whether the call is gone already.
    pub(crate) fn now(&mut self) -> bool {
        !matches!(self.0.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }
}

/// Runs `work` in a task of its own and waits for its answer. If the calling future is
/// dropped first, the task goes on: `work` learns it through its [`Gone`] and can clean up.
pub(crate) async fn detached<T, F, Fut>(work: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(Gone) -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    let (alive, gone) = oneshot::channel::<Infallible>();
    let task = tokio::spawn(work(Gone(gone)));
    let answer = task.await;
    drop(alive);
    answer.map_err(|e| {
        KvError::Internal(format!("a lock or election task failed: {e}")).to_status()
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_as_etcd_names_them() {
        assert_eq!(prefix_of(b"job"), Bytes::from_static(b"job/"));
        assert_eq!(
            key_of(b"job/", 0x694d_7e1c_3a2b_0f10),
            Bytes::from_static(b"job/694d7e1c3a2b0f10")
        );
        assert_eq!(key_of(b"job/", 255), Bytes::from_static(b"job/ff"));
        // Go's %x of a negative int64.
        assert_eq!(key_of(b"j/", -255), Bytes::from_static(b"j/-ff"));
        assert_eq!(prefix_end(b"job/"), Bytes::from_static(b"job0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }

    #[test]
    fn fresh_ids_are_positive_and_differ() {
        let a = fresh_id().unwrap();
        let b = fresh_id().unwrap();
        assert!(a > 0 && b > 0);
        assert_ne!(a, b);
    }
}
