//! The client workload: concurrent clients issuing put, linearizable get and compare-and-set
//! (an etcd `Txn`) on a few keys through the etcd v3 API, every operation recorded with its
//! invoke and complete times.
//!
//! What is recorded: a completed operation with its result; a write (put or compare-and-set)
//! that failed or timed out *after it was sent* as unknown (it may have happened); a read that
//! failed is left out (reads change nothing). An operation is only left out as "not executed"
//! when the connection could not even be made, so the request never left the client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use dengine_kv::proto::etcdserverpb::kv_client::KvClient;
use dengine_kv::proto::etcdserverpb::request_op::Request;
use dengine_kv::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use dengine_sim::linearizability::{Op, OpResult, Operation, Outcome};
use dengine_sim::rng::SimRng;
use tonic::transport::Channel;

use crate::cluster::{connect, key_bytes};

/// Counts for the progress line and the summary.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Completed operations.
    pub(crate) ok: AtomicU64,
    /// Writes with an unknown outcome.
    pub(crate) unknown: AtomicU64,
    /// Reads that failed (left out of the history) and connection failures (never sent).
    pub(crate) failed: AtomicU64,
}

/// Shared by the clients: where they record, when to stop.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The run's time origin; times are microseconds since it.
    pub(crate) origin: Instant,
    /// Every recorded operation.
    pub(crate) ops: Mutex<Vec<Operation>>,
    /// Counters.
    pub(crate) counters: Counters,
    /// Set to end the workload.
    pub(crate) stop: AtomicBool,
}

impl Recorder {
    /// A recorder whose time starts now.
    pub(crate) fn new() -> Recorder {
        Recorder {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        }
    }

    /// Microseconds since the origin.
    pub(crate) fn now(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    fn record(&self, op: Operation) {
        let c = match op.outcome {
            Outcome::Completed { .. } => &self.counters.ok,
            Outcome::Unknown => &self.counters.unknown,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }
}

/// A per-operation deadline: a few election timeouts, short enough that a client stuck on a
/// minority moves on (and that a key does not collect many unknown outcomes).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(2_000);

/// What went wrong with one request.
enum Failure {
    /// The request was never sent (no connection).
    NotSent,
    /// Sent; the outcome is unknown.
    Sent,
}

/// One client's session: a connection to one host at a time, moving to another on failure.
pub(crate) struct Session {
    hosts: usize,
    host: usize,
    channel: Option<Channel>,
}

impl Session {
    /// A session that starts on `host` of `hosts`.
    pub(crate) fn new(hosts: usize, host: usize) -> Session {
        Session {
            hosts,
            host,
            channel: None,
        }
    }

    async fn kv(&mut self) -> Result<KvClient<Channel>, Failure> {
        if self.channel.is_none() {
            match connect(self.host, Duration::from_millis(500)).await {
                Ok(c) => self.channel = Some(c),
                Err(_) => return Err(Failure::NotSent),
            }
        }
        match &self.channel {
            Some(c) => Ok(KvClient::new(c.clone())),
            None => Err(Failure::NotSent),
        }
    }

    /// Moves to another host (round robin from a random start is enough).
    fn rotate(&mut self, rng: &mut SimRng) {
        self.channel = None;
        self.host = 1 + rng.below(self.hosts as u64) as usize;
    }

    /// Runs `op` on `key`; the result, or what went wrong.
    async fn call(&mut self, key: u64, op: Op) -> Result<OpResult, Failure> {
        let mut kv = self.kv().await?;
        let k = key_bytes(key);
        let fut = async {
            match op {
                Op::Put { value } => kv
                    .put(PutRequest {
                        key: k,
                        value: Bytes::from(value.to_string()),
                        ..Default::default()
                    })
                    .await
                    .map(|_| OpResult::Put),
                Op::Get => kv
                    .range(RangeRequest {
                        key: k,
                        serializable: false,
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        OpResult::Get(r.into_inner().kvs.first().map(|kv| {
                            // A value that is not one of ours reads as one nobody wrote.
                            std::str::from_utf8(&kv.value)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(u64::MAX)
                        }))
                    }),
                Op::Cas { expected, new } => {
                    let compare = match expected {
                        Some(v) => Compare {
                            result: CompareResult::Equal as i32,
                            target: CompareTarget::Value as i32,
                            key: k.clone(),
                            target_union: Some(TargetUnion::Value(Bytes::from(v.to_string()))),
                            ..Default::default()
                        },
                        // Version 0: the key does not exist.
                        None => Compare {
                            result: CompareResult::Equal as i32,
                            target: CompareTarget::Version as i32,
                            key: k.clone(),
                            target_union: Some(TargetUnion::Version(0)),
                            ..Default::default()
                        },
                    };
                    kv.txn(TxnRequest {
                        compare: vec![compare],
                        success: vec![RequestOp {
                            request: Some(Request::RequestPut(PutRequest {
                                key: k,
                                value: Bytes::from(new.to_string()),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    })
                    .await
                    .map(|r| OpResult::Cas(r.into_inner().succeeded))
                }
            }
        };
        match tokio::time::timeout(OP_TIMEOUT + Duration::from_millis(500), fut).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) | Err(_) => Err(Failure::Sent),
        }
    }
}

/// Runs `op` on `key` through `session` and records it (as client `client`); the result if
/// it completed.
pub(crate) async fn run_op(
    rec: &Recorder,
    session: &mut Session,
    rng: &mut SimRng,
    client: u64,
    key: u64,
    op: Op,
) -> Option<OpResult> {
    let invoke = rec.now();
    match session.call(key, op).await {
        Ok(result) => {
            rec.record(Operation {
                client,
                key,
                op,
                invoke,
                outcome: Outcome::Completed {
                    at: rec.now(),
                    result,
                },
            });
            Some(result)
        }
        Err(failure) => {
            session.rotate(rng);
            match (failure, op) {
                (Failure::Sent, Op::Put { .. } | Op::Cas { .. }) => rec.record(Operation {
                    client,
                    key,
                    op,
                    invoke,
                    outcome: Outcome::Unknown,
                }),
                _ => {
                    rec.counters.failed.fetch_add(1, Ordering::Relaxed);
                    // Nobody answers: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            None
        }
    }
}

/// One client until `rec.stop`: 40 % puts, 40 % linearizable gets, 20 % compare-and-set
/// from the last value this client saw on the key. Every written value is unique:
/// `client * 1_000_000 + counter`.
pub(crate) async fn client(rec: Arc<Recorder>, client: u64, hosts: usize, keys: u64, seed: u64) {
    let mut rng = SimRng::new(seed.wrapping_mul(1_000_003).wrapping_add(client));
    let mut session = Session::new(hosts, 1 + rng.below(hosts as u64) as usize);
    let mut seen: Vec<Option<u64>> = vec![None; keys as usize];
    let mut counter = 0u64;
    while !rec.stop.load(Ordering::Relaxed) {
        let key = rng.below(keys);
        counter += 1;
        let value = client * 1_000_000 + counter;
        let op = match rng.below(10) {
            0..=3 => Op::Put { value },
            4..=7 => Op::Get,
            _ => Op::Cas {
                expected: seen[key as usize],
                new: value,
            },
        };
        match run_op(&rec, &mut session, &mut rng, client, key, op).await {
            Some(OpResult::Get(v)) => seen[key as usize] = v,
            Some(OpResult::Put) | Some(OpResult::Cas(true)) => seen[key as usize] = Some(value),
            _ => {}
        }
    }
}
