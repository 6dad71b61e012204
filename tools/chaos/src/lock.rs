//! The lock workload: clients that take a lock built on a lease (etcd's lock recipe: a key
//! under a prefix, attached to the client's lease; the holder is the key with the lowest
//! create revision), do a guarded read-modify-write of a counter under it — a transaction
//! that compares the lock key's create revision (the fencing token) and the counter's mod
//! revision — and release it; one lease serves one to eight rounds of the lock, then it is
//! revoked or left to expire. A keep-alive task renews each client's lease every second.
//!
//! Two properties are checked ([`judge`]):
//!
//! * **Mutual exclusion, no lost update**: the acknowledged increments start from distinct
//!   counter values, their fencing tokens never go down along the counter's chain (no two
//!   holders' guarded writes interleave), and the final counter lies between the acknowledged
//!   increments and those plus the ones whose outcome is unknown.
//! * **Leases never expire early**: a keep-alive acknowledged for a request sent at `s`
//!   promises the lease until `s + TTL`. A client that sees its lock key gone (or the lease
//!   unknown to a keep-alive) before its promise, by more than [`margin`] — what the run's
//!   clock faults allow a leader's clock to run ahead — has seen a lease expire early.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use dengine_kv::proto::etcdserverpb::kv_client::KvClient;
use dengine_kv::proto::etcdserverpb::lease_client::LeaseClient;
use dengine_kv::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use dengine_kv::proto::etcdserverpb::request_op::Request;
use dengine_kv::proto::etcdserverpb::response_op::Response;
use dengine_kv::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use dengine_sim::rng::SimRng;
use tonic::transport::Channel;

use crate::cluster::connect;

/// The clients' lease TTL, in seconds: long against the run's clock faults (a leader's clock
/// may jump seconds ahead, which ends its leases early by as much).
pub(crate) const LEASE_TTL_SECS: i64 = 10;

/// How often a client renews its lease.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// A request's deadline.
const CALL: Duration = Duration::from_secs(2);

/// The prefix of the lock keys, and the counter the holders increment.
const LOCK_PREFIX: &str = "chaos-lock/";
const COUNTER: &str = "chaos-counter";

/// How early a lease may end and still be no violation: the clock faults of the run (a
/// leader's clock running 5 % fast, or jumping up to `max_jump` ahead) plus scheduling.
pub(crate) fn margin(max_jump: Duration) -> Duration {
    let ttl = Duration::from_secs(LEASE_TTL_SECS as u64);
    max_jump + ttl / 20 + Duration::from_millis(300)
}

/// One acknowledged or unknown guarded increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Increment {
    pub(crate) client: u64,
    /// The lock key's create revision: the fencing token.
    pub(crate) token: i64,
    /// The counter value it read and replaced with `from + 1`.
    pub(crate) from: i64,
    /// `true`: acknowledged; `false`: the outcome is unknown.
    pub(crate) acked: bool,
}

/// A lease seen gone before its promise ran out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EarlyExpiry {
    pub(crate) client: u64,
    pub(crate) lease: i64,
    /// How long before the promise it was seen gone.
    pub(crate) early: Duration,
    pub(crate) how: &'static str,
}

/// What the lock clients recorded.
#[derive(Debug, Default)]
pub(crate) struct LockLog {
    pub(crate) increments: Mutex<Vec<Increment>>,
    pub(crate) early: Mutex<Vec<EarlyExpiry>>,
    pub(crate) acquired: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) keepalives: AtomicU64,
    pub(crate) leases: AtomicU64,
    pub(crate) let_expire: AtomicU64,
    pub(crate) expired_seen: AtomicU64,
}

/// The promise of one lease: acknowledged keep-alives keep it alive until this instant.
#[derive(Debug)]
struct Promise {
    until: Mutex<Instant>,
    /// Set when the client itself ends the lease (revoke, or stops renewing it).
    released: AtomicBool,
}

impl Promise {
    fn new(granted_at: Instant) -> Arc<Promise> {
        Arc::new(Promise {
            until: Mutex::new(granted_at + Duration::from_secs(LEASE_TTL_SECS as u64)),
            released: AtomicBool::new(false),
        })
    }

    fn extend(&self, sent_at: Instant) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *until = (*until).max(sent_at + Duration::from_secs(LEASE_TTL_SECS as u64));
    }

    /// The lease was seen gone at `seen` (the end of the request that saw it): how early.
    fn early_by(&self, seen: Instant, margin: Duration) -> Option<Duration> {
        if self.released.load(Ordering::SeqCst) {
            return None;
        }
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        let early = until.checked_duration_since(seen)?;
        (early > margin).then_some(early)
    }
}

fn key(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn channel(rng: &mut SimRng, hosts: usize) -> Option<Channel> {
    connect(
        1 + rng.below(hosts as u64) as usize,
        Duration::from_millis(500),
    )
    .await
    .ok()
}

async fn within<T, E>(f: impl Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(CALL, f).await.ok()?.ok()
}

/// Renews `lease` every second through any member until `stop` or the promise is released;
/// records each acknowledgement in `promise`, and a lease the leader no longer knows as an
/// observation.
async fn keep_alive(
    lease: i64,
    promise: Arc<Promise>,
    hosts: usize,
    seed: u64,
    client: u64,
    log: Arc<LockLog>,
    margin: Duration,
) {
    let mut rng = SimRng::new(seed ^ (lease as u64));
    while !promise.released.load(Ordering::SeqCst) {
        let Some(ch) = channel(&mut rng, hosts).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut leases = LeaseClient::new(ch);
        let stream = tokio_stream_of(rx);
        let Some(resp) = within(leases.lease_keep_alive(stream)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut acks = resp.into_inner();
        loop {
            if promise.released.load(Ordering::SeqCst) {
                return;
            }
            let sent = Instant::now();
            if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                break;
            }
            match tokio::time::timeout(CALL, acks.message()).await {
                Ok(Ok(Some(ack))) if ack.ttl > 0 => {
                    promise.extend(sent);
                    log.keepalives.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Some(_))) => {
                    // The leader knows no such lease any more.
                    let how = "a keep-alive found the lease gone";
                    record_early(&log, &promise, client, lease, margin, how);
                    return;
                }
                _ => break,
            }
            tokio::time::sleep(KEEPALIVE_EVERY).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stream of keep-alive requests fed by `rx`.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<LeaseKeepAliveRequest>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = LeaseKeepAliveRequest> {
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One lock client until `stop`.
pub(crate) async fn client(
    log: Arc<LockLog>,
    stop: Arc<AtomicBool>,
    client: u64,
    hosts: usize,
    seed: u64,
    margin: Duration,
) {
    let mut rng = SimRng::new(seed.wrapping_mul(7_919).wrapping_add(client));
    while !stop.load(Ordering::Relaxed) {
        let Some(ch) = channel(&mut rng, hosts).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let granted_at = Instant::now();
        let mut leases = LeaseClient::new(ch);
        let grant = leases.lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL_SECS,
            id: 0,
        });
        let Some(grant) = within(grant).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let lease = grant.into_inner().id;
        log.leases.fetch_add(1, Ordering::Relaxed);
        let promise = Promise::new(granted_at);
        let keeper = tokio::spawn(keep_alive(
            lease,
            promise.clone(),
            hosts,
            seed,
            client,
            log.clone(),
            margin,
        ));
        // One lease for several rounds of the lock, so that leases kept alive outlive their
        // TTL several times over; the last round may leave its key to the lease's expiry.
        let let_expire = rng.chance(150);
        let rounds = 1 + rng.below(8);
        // The key left to the lease's expiry: the last round's, once that round ran and
        // left it in place (a round skipped, or ended early, leaves nothing to watch).
        let mut expiring = None;
        for round in 0..rounds {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // A round that ended early (a failed or unknown call) may have left its key in
            // place, which would hold up every later holder while the lease lives: deleted
            // first (again, if its release did), or this lease's rounds end here (its revoke
            // removes the key).
            if round > 0 && !delete_key(&mut rng, hosts, lock_key(lease, round - 1)).await {
                break;
            }
            let last = round + 1 == rounds;
            let held = hold(
                &log,
                &stop,
                &mut rng,
                hosts,
                client,
                lease,
                round,
                &promise,
                margin,
                !(last && let_expire),
            )
            .await;
            if last && let_expire && held {
                expiring = Some(round);
            }
            if !last {
                tokio::time::sleep(Duration::from_millis(rng.below(1_000))).await;
            }
        }
        if let Some(round) = expiring {
            // Stop renewing and wait (bounded) for the lease's key to go: expiry exercised.
            // The last acknowledged renewal's promise still holds: the key must not go before.
            keeper.abort();
            log.let_expire.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(2 * LEASE_TTL_SECS as u64);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Some(false) = lock_key_exists(&mut rng, hosts, lease, round).await {
                    log.expired_seen.fetch_add(1, Ordering::Relaxed);
                    record_early(
                        &log,
                        &promise,
                        client,
                        lease,
                        margin,
                        "the key of a lease left to expire went",
                    );
                    break;
                }
            }
            promise.released.store(true, Ordering::SeqCst);
        } else {
            promise.released.store(true, Ordering::SeqCst);
            if let Some(ch) = channel(&mut rng, hosts).await {
                let _ = within(LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id: lease }))
                    .await;
            }
        }
        keeper.abort();
    }
}

/// The lock key of one round of `lease`. A key of its own per round: a release whose
/// answer was lost (a timeout) may still be applied seconds later, and with one key per lease
/// it would delete the next round's key — which the check would take for an early expiry.
fn lock_key(lease: i64, round: u64) -> Bytes {
    key(&format!("{LOCK_PREFIX}{lease:016x}/{round}"))
}

/// Whether the lock key of `round` of `lease` exists (`None`: no answer).
async fn lock_key_exists(rng: &mut SimRng, hosts: usize, lease: i64, round: u64) -> Option<bool> {
    let ch = channel(rng, hosts).await?;
    let r = within(KvClient::new(ch).range(RangeRequest {
        key: lock_key(lease, round),
        count_only: true,
        ..Default::default()
    }))
    .await?;
    Some(r.into_inner().count > 0)
}

fn record_early(
    log: &LockLog,
    promise: &Promise,
    client: u64,
    lease: i64,
    margin: Duration,
    how: &'static str,
) {
    if let Some(early) = promise.early_by(Instant::now(), margin) {
        log.early
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(EarlyExpiry {
                client,
                lease,
                early,
                how,
            });
    }
}

/// Takes the lock with `lease`, increments the counter under it a few times, and deletes
/// the lock key if `release` (the caller ends the lease). Gives up on a failure: the next
/// round starts afresh. Whether the lock key is known to be in place at the end.
#[allow(clippy::too_many_arguments)]
async fn hold(
    log: &LockLog,
    stop: &AtomicBool,
    rng: &mut SimRng,
    hosts: usize,
    client: u64,
    lease: i64,
    round: u64,
    promise: &Promise,
    margin: Duration,
    release: bool,
) -> bool {
    let Some(ch) = channel(rng, hosts).await else {
        return false;
    };
    let mut kv = KvClient::new(ch);
    let me = lock_key(lease, round);
    // Create the lock key (once: a retry finds it) and learn its create revision.
    let create = TxnRequest {
        compare: vec![Compare {
            key: me.clone(),
            target: CompareTarget::Create as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: me.clone(),
                lease,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: me.clone(),
                ..Default::default()
            })),
        }],
    };
    let Some(created) = within(kv.txn(create)).await else {
        return false;
    };
    let created = created.into_inner();
    let token = if created.succeeded {
        created.header.map_or(0, |h| h.revision)
    } else {
        match created.responses.first().and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(r)) => r.kvs.first().map_or(0, |kv| kv.create_revision),
            _ => 0,
        }
    };
    if token == 0 {
        return false;
    }
    // Wait until no lock key was created before ours.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return true;
        }
        let older = within(kv.range(RangeRequest {
            key: key(LOCK_PREFIX),
            range_end: key("chaos-lock0"),
            max_create_revision: token - 1,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        }))
        .await;
        match older {
            Some(r) if r.get_ref().kvs.is_empty() => break,
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            None => return true,
        }
    }
    log.acquired.fetch_add(1, Ordering::Relaxed);
    for _ in 0..1 + rng.below(4) {
        let Some(read) = within(kv.range(RangeRequest {
            key: key(COUNTER),
            ..Default::default()
        }))
        .await
        else {
            return true;
        };
        let (from, mod_revision) = match read.get_ref().kvs.first() {
            Some(kv) => (
                std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(-1),
                kv.mod_revision,
            ),
            None => (0, 0),
        };
        let guarded = TxnRequest {
            compare: vec![
                Compare {
                    key: me.clone(),
                    target: CompareTarget::Create as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::CreateRevision(token)),
                    ..Default::default()
                },
                Compare {
                    key: key(COUNTER),
                    target: CompareTarget::Mod as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                    ..Default::default()
                },
            ],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key(COUNTER),
                    value: Bytes::from((from + 1).to_string()),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: me.clone(),
                    count_only: true,
                    ..Default::default()
                })),
            }],
        };
        let outcome = tokio::time::timeout(CALL, kv.txn(guarded)).await;
        let record = |acked| {
            log.increments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Increment {
                    client,
                    token,
                    from,
                    acked,
                });
        };
        match outcome {
            Ok(Ok(r)) if r.get_ref().succeeded => record(true),
            Ok(Ok(r)) => {
                log.fenced.fetch_add(1, Ordering::Relaxed);
                let gone = matches!(
                    r.get_ref().responses.first().and_then(|o| o.response.as_ref()),
                    Some(Response::ResponseRange(range)) if range.count == 0
                );
                if gone {
                    record_early(log, promise, client, lease, margin, "the lock key was gone");
                }
                return !gone;
            }
            _ => {
                record(false);
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
    }
    if !release {
        return true;
    }
    // Release the lock (the caller ends the lease).
    !delete_key(rng, hosts, me).await
}

/// Deletes `lock_key` (sent again, through any member, while the answer is lost: a delete is
/// idempotent); whether it is known gone.
async fn delete_key(rng: &mut SimRng, hosts: usize, lock_key: Bytes) -> bool {
    for _ in 0..3 {
        let Some(ch) = channel(rng, hosts).await else {
            continue;
        };
        let deleted = within(KvClient::new(ch).delete_range(DeleteRangeRequest {
            key: lock_key.clone(),
            ..Default::default()
        }))
        .await;
        if deleted.is_some() {
            return true;
        }
    }
    false
}

/// Reads the counter's final value through any member (retried until `deadline`).
pub(crate) async fn final_counter(
    hosts: usize,
    seed: u64,
    deadline: Instant,
) -> Result<i64, String> {
    let mut rng = SimRng::new(seed ^ 0x5eed);
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        if let Some(ch) = channel(&mut rng, hosts).await {
            match tokio::time::timeout(
                CALL,
                KvClient::new(ch).range(RangeRequest {
                    key: key(COUNTER),
                    ..Default::default()
                }),
            )
            .await
            {
                Ok(Ok(r)) => {
                    return Ok(match r.get_ref().kvs.first() {
                        Some(kv) => std::str::from_utf8(&kv.value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or("the counter holds no number")?,
                        None => 0,
                    });
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("the counter could not be read: {last}"))
}

/// The verdict on the lock workload: the violations found (empty: none).
pub(crate) fn judge(
    increments: &[Increment],
    early: &[EarlyExpiry],
    final_value: i64,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut acked: Vec<&Increment> = increments.iter().filter(|i| i.acked).collect();
    let unknown = increments.len() - acked.len();
    acked.sort_by_key(|i| i.from);
    for pair in acked.windows(2) {
        if pair[0].from == pair[1].from {
            problems.push(format!(
                "two acknowledged increments from counter value {} (clients {} and {}): an \
                 update was lost",
                pair[0].from, pair[0].client, pair[1].client
            ));
        } else if pair[1].token < pair[0].token {
            problems.push(format!(
                "holders' guarded writes interleave: client {} (token {}) incremented from {} \
                 after client {} (token {}) from {}",
                pair[1].client,
                pair[1].token,
                pair[1].from,
                pair[0].client,
                pair[0].token,
                pair[0].from
            ));
        }
    }
    if let Some(bad) = acked.iter().find(|i| i.from < 0 || i.from >= final_value) {
        problems.push(format!(
            "an acknowledged increment from {} is not in the final counter {final_value}",
            bad.from
        ));
    }
    let n = acked.len() as i64;
    if final_value < n || final_value > n + unknown as i64 {
        problems.push(format!(
            "final counter {final_value}, but {n} increments were acknowledged and {unknown} \
             have an unknown outcome"
        ));
    }
    for e in early.iter().take(5) {
        problems.push(format!(
            "lease {:x} of lock client {} expired early: {} {:.1} s before its last \
             acknowledged keep-alive's TTL ran out",
            e.lease,
            e.client,
            e.how,
            e.early.as_secs_f64()
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(client: u64, token: i64, from: i64, acked: bool) -> Increment {
        Increment {
            client,
            token,
            from,
            acked,
        }
    }

    #[test]
    fn a_clean_chain_passes_and_every_violation_is_named() {
        let clean = [
            inc(1, 5, 0, true),
            inc(1, 5, 1, true),
            inc(2, 9, 2, false),
            inc(2, 9, 3, true),
        ];
        assert!(judge(&clean, &[], 4).is_empty());
        // An increment from 3 was acknowledged: the counter reached 4.
        assert!(!judge(&clean, &[], 3).is_empty());
        // An unknown last increment may or may not have been applied.
        let open_end = [inc(1, 5, 0, true), inc(1, 5, 1, true), inc(2, 9, 2, false)];
        assert!(judge(&open_end, &[], 2).is_empty());
        assert!(judge(&open_end, &[], 3).is_empty());
        // A lost update: two acknowledged increments from one value.
        let lost = [inc(1, 5, 0, true), inc(2, 9, 0, true)];
        assert!(judge(&lost, &[], 1)[0].contains("update was lost"));
        // Interleaving holders: token 9 wrote, then token 5 again.
        let interleaved = [inc(1, 5, 0, true), inc(2, 9, 1, true), inc(1, 5, 2, true)];
        assert!(judge(&interleaved, &[], 3)[0].contains("interleave"));
        // A final value the increments do not explain.
        assert!(!judge(&clean, &[], 9).is_empty());
        assert!(!judge(&clean, &[], 2).is_empty());
        let early = [EarlyExpiry {
            client: 3,
            lease: 0xab,
            early: Duration::from_secs(4),
            how: "the lock key was gone",
        }];
        assert!(judge(&[], &early, 0)[0].contains("expired early"));
    }

    #[test]
    fn a_lease_is_promised_until_the_last_acknowledged_renewal_plus_its_ttl() {
        let t0 = Instant::now();
        let p = Promise::new(t0);
        p.extend(t0 + Duration::from_secs(5));
        let margin = Duration::from_secs(1);
        let ttl = Duration::from_secs(LEASE_TTL_SECS as u64);
        assert_eq!(p.early_by(t0 + Duration::from_secs(5) + ttl, margin), None);
        assert_eq!(
            p.early_by(t0 + Duration::from_secs(7), margin),
            Some(ttl - Duration::from_secs(2))
        );
        p.released.store(true, Ordering::SeqCst);
        assert_eq!(p.early_by(t0, margin), None);
    }
}
