//! `KvStateMachine` through the `StateMachine` contract: etcd's revision, version, range,
//! transaction and compaction rules; snapshots; determinism; events published to the hub.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use dengine_core::StateMachine;
use dengine_core::store::Command as Committed;
use dengine_kv::proto::dengine::kv::v1::{
    HashRequest, Stats, StatsRequest, StoreSnapshot, WatchHistoryRequest, command,
    command_response, query, query_response,
};
use dengine_kv::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use dengine_kv::proto::mvccpb::{Event, KeyValue, event::EventType};
use dengine_kv::{
    AuthHub, KvError, KvStateMachine, WatchFilter, WatchHub, decode_command_response,
    decode_query_response, encode_command, encode_query,
};
use prost::Message;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

struct Harness {
    sm: KvStateMachine,
    /// The durable store's directory, removed when the harness is dropped.
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// A durable store in a new temporary directory (the tests below that build a second
    /// state machine use the in-memory store for it, so both are checked against each
    /// other).
    fn new() -> Self {
        Harness::durable(WatchHub::default())
    }

    fn durable(hub: WatchHub) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sm = KvStateMachine::open(
            hub,
            AuthHub::default(),
            &dir.path().join("kv.redb"),
            8 << 20,
        )
        .unwrap();
        Harness {
            sm,
            _dir: Some(dir),
        }
    }

    fn memory(sm: KvStateMachine) -> Self {
        Harness { sm, _dir: None }
    }

    async fn apply_command(&mut self, data: Bytes) -> Bytes {
        self.sm.apply_next(data).await.unwrap()
    }

    /// The log moves on by `n` entries that are Raft's own (no command).
    async fn skip(&mut self, n: u64) {
        let up_to = self.sm.applied_index() + n;
        assert!(self.sm.apply(&[], up_to).await.unwrap().is_empty());
    }

    async fn cmd(&mut self, op: command::Op) -> Result<command_response::Result, KvError> {
        let response = self.apply_command(encode_command(op)).await;
        decode_command_response(&response)
    }

    async fn put(&mut self, key: &str, value: &str) -> PutResponse {
        self.put_req(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
        .await
        .unwrap()
    }

    async fn put_req(&mut self, req: PutRequest) -> Result<PutResponse, KvError> {
        match self.cmd(command::Op::Put(req)).await? {
            command_response::Result::Put(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn delete(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, KvError> {
        match self.cmd(command::Op::DeleteRange(req)).await? {
            command_response::Result::DeleteRange(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, KvError> {
        match self.cmd(command::Op::Txn(req)).await? {
            command_response::Result::Txn(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        self.cmd(command::Op::Compact(CompactionRequest {
            revision,
            physical: false,
        }))
        .await
        .map(|_| ())
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, KvError> {
        range_of(&self.sm, req).await
    }

    async fn get(&self, key: &str) -> Option<KeyValue> {
        self.range(RangeRequest {
            key: b(key),
            ..Default::default()
        })
        .await
        .unwrap()
        .kvs
        .pop()
    }
}

async fn range_of(sm: &KvStateMachine, req: RangeRequest) -> Result<RangeResponse, KvError> {
    let response = sm.query(encode_query(query::Op::Range(req))).await.unwrap();
    match decode_query_response(&response)? {
        query_response::Result::Range(r) => Ok(r),
        other => panic!("unexpected {other:?}"),
    }
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

fn revision_of(resp: &Option<dengine_kv::proto::etcdserverpb::ResponseHeader>) -> i64 {
    resp.as_ref().unwrap().revision
}

#[tokio::test]
async fn revisions_and_versions_follow_etcd() {
    let mut h = Harness::new();
    let r = h.put("a", "1").await;
    assert_eq!(revision_of(&r.header), 1);
    let a = h.get("a").await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 1, 1));

    h.put("a", "2").await;
    let a = h.get("a").await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 2, 2));
    assert_eq!(a.value, b("2"));

    h.put("b", "x").await;
    assert_eq!(h.sm.revision(), 3);

    let d = h
        .delete(DeleteRangeRequest {
            key: b("a"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((d.deleted, revision_of(&d.header)), (1, 4));
    // Deleting nothing is not a write: the revision stays.
    let d = h
        .delete(DeleteRangeRequest {
            key: b("zz"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((d.deleted, revision_of(&d.header)), (0, 4));
    assert_eq!(h.sm.revision(), 4);

    // Recreated: a new create revision, and the version starts over.
    h.put("a", "3").await;
    let a = h.get("a").await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
    let read = h.range(range("a", "")).await.unwrap();
    assert_eq!(revision_of(&read.header), 5);
}

#[tokio::test]
async fn ranges_prefixes_and_all_keys() {
    let mut h = Harness::new();
    for k in ["a", "foo", "foo/1", "foo/2", "fop", "z"] {
        h.put(k, "v").await;
    }
    // A prefix as etcdctl sends it: [foo, fop).
    assert_eq!(
        keys(&h.range(range("foo", "fop")).await.unwrap()),
        ["foo", "foo/1", "foo/2"]
    );
    // "\0" as range_end: every key >= key.
    assert_eq!(
        keys(&h.range(range("foo/2", "\0")).await.unwrap()),
        ["foo/2", "fop", "z"]
    );
    // Every key: key "\0", range_end "\0".
    assert_eq!(keys(&h.range(range("\0", "\0")).await.unwrap()).len(), 6);
    // A single missing key, and an inverted range: nothing.
    assert!(h.range(range("nope", "")).await.unwrap().kvs.is_empty());
    let inverted = h.range(range("z", "a")).await.unwrap();
    assert!(inverted.kvs.is_empty());
    assert_eq!(inverted.count, 0);
    // An empty key is refused.
    assert!(matches!(
        h.range(range("", "")).await,
        Err(KvError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn limit_more_count_only_and_keys_only() {
    let mut h = Harness::new();
    for k in ["k1", "k2", "k3", "k4", "k5"] {
        h.put(k, "value").await;
    }
    let mut req = range("k", "l");
    req.limit = 2;
    let r = h.range(req.clone()).await.unwrap();
    assert_eq!(keys(&r), ["k1", "k2"]);
    assert!(r.more);
    assert_eq!(r.count, 5);

    req.limit = 5;
    let r = h.range(req.clone()).await.unwrap();
    assert_eq!(r.kvs.len(), 5);
    assert!(!r.more);

    let mut count_only = range("k", "l");
    count_only.count_only = true;
    let r = h.range(count_only).await.unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 5);

    let mut keys_only = range("k", "l");
    keys_only.keys_only = true;
    let r = h.range(keys_only).await.unwrap();
    assert_eq!(r.kvs.len(), 5);
    assert!(
        r.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1)
    );
}

#[tokio::test]
async fn sorting_and_revision_filters() {
    let mut h = Harness::new();
    h.put("b", "2").await; // rev 1
    h.put("a", "3").await; // rev 2
    h.put("c", "1").await; // rev 3
    let mut req = range("a", "\0");
    req.sort_order = SortOrder::Descend as i32;
    assert_eq!(keys(&h.range(req).await.unwrap()), ["c", "b", "a"]);

    let mut req = range("a", "\0");
    req.sort_target = SortTarget::Value as i32; // no order given: ascending, as in etcd
    assert_eq!(keys(&h.range(req).await.unwrap()), ["c", "b", "a"]);

    let mut req = range("a", "\0");
    req.sort_target = SortTarget::Mod as i32;
    req.sort_order = SortOrder::Descend as i32;
    req.limit = 2;
    let r = h.range(req).await.unwrap();
    assert_eq!(keys(&r), ["c", "a"]);
    assert!(r.more);

    let mut req = range("a", "\0");
    req.min_mod_revision = 2;
    assert_eq!(keys(&h.range(req).await.unwrap()), ["a", "c"]);
    let mut req = range("a", "\0");
    req.max_create_revision = 1;
    assert_eq!(keys(&h.range(req).await.unwrap()), ["b"]);
}

#[tokio::test]
async fn put_options_and_refusals() {
    let mut h = Harness::new();
    let r = h
        .put_req(PutRequest {
            key: b("k"),
            value: b("v1"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.prev_kv.is_none(), "no previous value");
    let r = h
        .put_req(PutRequest {
            key: b("k"),
            value: b("v2"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.prev_kv.unwrap().value, b("v1"));

    // ignore_value keeps the value and still makes a new revision.
    h.put_req(PutRequest {
        key: b("k"),
        ignore_value: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let k = h.get("k").await.unwrap();
    assert_eq!((k.value, k.version, k.mod_revision), (b("v2"), 3, 3));

    let missing = h
        .put_req(PutRequest {
            key: b("nope"),
            ignore_value: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        missing,
        Err(KvError::InvalidArgument("key not found".into()))
    );
    let empty = h
        .put_req(PutRequest {
            value: b("v"),
            ..Default::default()
        })
        .await;
    assert!(matches!(empty, Err(KvError::InvalidArgument(_))));
    let lease = h
        .put_req(PutRequest {
            key: b("k"),
            value: b("v"),
            lease: 7,
            ..Default::default()
        })
        .await;
    assert_eq!(lease, Err(KvError::lease_not_found()));
    // Refusals changed nothing.
    assert_eq!(h.sm.revision(), 3);
}

#[tokio::test]
async fn delete_range_with_prev_kv() {
    let mut h = Harness::new();
    for k in ["p/1", "p/2", "q"] {
        h.put(k, k).await;
    }
    let d = h
        .delete(DeleteRangeRequest {
            key: b("p/"),
            range_end: b("p0"),
            prev_kv: true,
        })
        .await
        .unwrap();
    assert_eq!(d.deleted, 2);
    let prev: Vec<_> = d
        .prev_kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(prev, [(b("p/1"), b("p/1")), (b("p/2"), b("p/2"))]);
    // Both deletes happened at one revision.
    assert_eq!(revision_of(&d.header), 4);
    assert!(h.get("p/1").await.is_none());
    assert!(h.get("q").await.is_some());
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: b(key),
        target_union: Some(value),
        range_end: Bytes::new(),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range(key, ""))),
    }
}

#[tokio::test]
async fn txn_compares_every_target_and_result() {
    let mut h = Harness::new();
    h.put("other", "x").await; // rev 1
    h.put("k", "m").await; // rev 2: k create 2, mod 2, version 1
    h.put("k", "m").await; // rev 3: k mod 3, version 2
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Mod, Value, Version};
    let cases = [
        (Value, Equal, TargetUnion::Value(b("m")), true),
        (Value, NotEqual, TargetUnion::Value(b("m")), false),
        (Value, Greater, TargetUnion::Value(b("a")), true),
        (Value, Less, TargetUnion::Value(b("a")), false),
        (Version, Equal, TargetUnion::Version(2), true),
        (Version, Greater, TargetUnion::Version(2), false),
        (Version, Less, TargetUnion::Version(3), true),
        (Version, NotEqual, TargetUnion::Version(1), true),
        (Create, Equal, TargetUnion::CreateRevision(2), true),
        (Create, Less, TargetUnion::CreateRevision(2), false),
        (Create, Greater, TargetUnion::CreateRevision(1), true),
        (Create, NotEqual, TargetUnion::CreateRevision(2), false),
        (Mod, Equal, TargetUnion::ModRevision(3), true),
        (Mod, Greater, TargetUnion::ModRevision(3), false),
        (Mod, Less, TargetUnion::ModRevision(4), true),
        (Mod, NotEqual, TargetUnion::ModRevision(2), true),
    ];
    for (target, result, value, expected) in cases {
        let txn = TxnRequest {
            compare: vec![cmp("k", target, result, value.clone())],
            success: vec![get_op("k")],
            failure: vec![],
        };
        let r = h.txn(txn).await.unwrap();
        assert_eq!(r.succeeded, expected, "{target:?} {result:?} {value:?}");
        // Read-only transactions do not advance the revision.
        assert_eq!(revision_of(&r.header), 3);
    }
    // A missing key has version/create/mod 0; a value comparison on it is false.
    let absent = |target, value| TxnRequest {
        compare: vec![cmp("missing", target, Equal, value)],
        ..Default::default()
    };
    assert!(
        h.txn(absent(Create, TargetUnion::CreateRevision(0)))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        h.txn(absent(Version, TargetUnion::Version(0)))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        !h.txn(absent(Value, TargetUnion::Value(Bytes::new())))
            .await
            .unwrap()
            .succeeded
    );
    // Over a range every key must match.
    let mut over_range = cmp("k", Version, Greater, TargetUnion::Version(0));
    over_range.range_end = b("\0");
    let all = TxnRequest {
        compare: vec![over_range.clone()],
        ..Default::default()
    };
    assert!(h.txn(all).await.unwrap().succeeded);
    over_range.target_union = Some(TargetUnion::Version(1));
    let not_all = TxnRequest {
        compare: vec![over_range],
        ..Default::default()
    };
    assert!(!h.txn(not_all).await.unwrap().succeeded);
}

#[tokio::test]
async fn txn_branches_run_atomically_at_one_revision() {
    let mut h = Harness::new();
    h.put("lock", "free").await; // rev 1
    let cas = |expect: &str| TxnRequest {
        compare: vec![cmp(
            "lock",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b(expect)),
        )],
        success: vec![
            put_op("lock", "held"),
            put_op("owner", "me"),
            get_op("owner"),
        ],
        failure: vec![get_op("lock")],
    };
    let r = h.txn(cas("free")).await.unwrap();
    assert!(r.succeeded);
    assert_eq!(revision_of(&r.header), 2, "two puts, one revision");
    // The read inside the transaction sees the put before it.
    match &r.responses[2].response {
        Some(Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b("me")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.get("owner").await.unwrap().mod_revision, 2);
    assert_eq!(h.get("lock").await.unwrap().mod_revision, 2);

    let r = h.txn(cas("free")).await.unwrap();
    assert!(!r.succeeded);
    match &r.responses[0].response {
        Some(Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b("held")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.sm.revision(), 2);

    // Writing a key twice in one transaction is refused, and nothing is applied.
    let dup = TxnRequest {
        success: vec![put_op("x", "1"), put_op("x", "2")],
        ..Default::default()
    };
    assert_eq!(
        h.txn(dup).await,
        Err(KvError::InvalidArgument(
            "duplicate key given in txn request".into()
        ))
    );
    let put_and_delete = TxnRequest {
        success: vec![
            put_op("y", "1"),
            RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b("x"),
                    range_end: b("z"),
                    prev_kv: false,
                })),
            },
        ],
        ..Default::default()
    };
    assert!(h.txn(put_and_delete).await.is_err());
    assert_eq!(h.sm.revision(), 2);

    // A failed precondition inside the chosen branch fails the whole transaction.
    let bad = TxnRequest {
        success: vec![
            put_op("fresh", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b("missing"),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(h.txn(bad).await.is_err());
    assert!(h.get("fresh").await.is_none());

    // Nested transactions: the inner compare sees the state before the outer one.
    let nested = TxnRequest {
        success: vec![
            put_op("lock", "again"),
            RequestOp {
                request: Some(Request::RequestTxn(cas("held"))),
            },
        ],
        ..Default::default()
    };
    let dup_inner = h.txn(nested).await;
    // `cas` writes `lock` too: a duplicate across the nesting.
    assert!(dup_inner.is_err());
    let nested = TxnRequest {
        success: vec![
            put_op("n", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    compare: vec![cmp(
                        "n",
                        CompareTarget::Version,
                        CompareResult::Equal,
                        TargetUnion::Version(0),
                    )],
                    success: vec![put_op("inner", "saw-no-n")],
                    failure: vec![put_op("inner", "saw-n")],
                })),
            },
        ],
        ..Default::default()
    };
    let r = h.txn(nested).await.unwrap();
    assert!(matches!(&r.responses[1].response, Some(Response::ResponseTxn(t)) if t.succeeded));
    assert_eq!(h.get("inner").await.unwrap().value, b("saw-no-n"));
    assert_eq!(h.sm.revision(), 3);
}

#[tokio::test]
async fn compaction_and_read_revisions() {
    let mut h = Harness::new();
    for v in ["1", "2", "3", "4"] {
        h.put("k", v).await;
    }
    h.compact(3).await.unwrap();
    assert_eq!(h.sm.compact_revision(), 3);
    assert_eq!(h.sm.revision(), 4, "compaction is not a write");
    let at = |rev| RangeRequest {
        key: b("k"),
        revision: rev,
        ..Default::default()
    };
    assert_eq!(h.range(at(2)).await, Err(KvError::Compacted));
    assert_eq!(
        h.range(at(2)).await.unwrap_err().to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(h.range(at(9)).await, Err(KvError::FutureRevision));
    // The compaction revision itself can still be read, from the history.
    assert_eq!(h.range(at(3)).await.unwrap().kvs[0].value, b("3"));
    assert_eq!(h.range(at(4)).await.unwrap().kvs[0].value, b("4"));
    assert_eq!(h.compact(3).await, Err(KvError::Compacted));
    assert_eq!(h.compact(2).await, Err(KvError::Compacted));
    assert_eq!(h.compact(5).await, Err(KvError::FutureRevision));
    h.compact(4).await.unwrap();
}

impl Harness {
    async fn stats(&self) -> Stats {
        let response = self
            .sm
            .query(encode_query(query::Op::Stats(StatsRequest {})))
            .await
            .unwrap();
        match decode_query_response(&response).unwrap() {
            query_response::Result::Stats(s) => s,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The events of revisions `from` to `through` as a watcher behind the event history
    /// gets them (`WatchHistory`), for every key.
    async fn watch_history(&self, from: i64, through: i64) -> Result<Vec<Event>, KvError> {
        history_of(&self.sm, from, through).await
    }

    async fn hash(&self, revision: i64) -> Result<u32, KvError> {
        let response = self
            .sm
            .query(encode_query(query::Op::Hash(HashRequest { revision })))
            .await
            .unwrap();
        match decode_query_response(&response)? {
            query_response::Result::Hash(h) => Ok(h.hash),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `(key, value, create, mod, version)` of each key a read returned.
fn rows(resp: &RangeResponse) -> Vec<(String, String, i64, i64, i64)> {
    resp.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

fn all_at(revision: i64) -> RangeRequest {
    RangeRequest {
        revision,
        ..range("\0", "\0")
    }
}

fn row(k: &str, v: &str, create: i64, m: i64, version: i64) -> (String, String, i64, i64, i64) {
    (k.into(), v.into(), create, m, version)
}

// etcd's MVCC rule: a read at revision R sees every key as the writes up to R left it.
#[tokio::test]
async fn reads_at_past_revisions_see_the_key_space_as_it_was() {
    let mut h = Harness::new();
    h.put("a", "1").await; // 1
    h.put("b", "1").await; // 2
    h.put("a", "2").await; // 3
    h.delete(DeleteRangeRequest {
        key: b("b"),
        ..Default::default()
    })
    .await
    .unwrap(); // 4
    h.put("b", "again").await; // 5: recreated
    let read = |r| h.range(all_at(r));
    assert_eq!(rows(&read(1).await.unwrap()), [row("a", "1", 1, 1, 1)]);
    assert_eq!(
        rows(&read(2).await.unwrap()),
        [row("a", "1", 1, 1, 1), row("b", "1", 2, 2, 1)]
    );
    assert_eq!(
        rows(&read(3).await.unwrap()),
        [row("a", "2", 1, 3, 2), row("b", "1", 2, 2, 1)]
    );
    assert_eq!(rows(&read(4).await.unwrap()), [row("a", "2", 1, 3, 2)]);
    assert_eq!(
        rows(&read(5).await.unwrap()),
        [row("a", "2", 1, 3, 2), row("b", "again", 5, 5, 1)]
    );
    let past = read(3).await.unwrap();
    assert_eq!(
        revision_of(&past.header),
        5,
        "etcd: the header has the current revision"
    );
    assert_eq!(past.count, 2);
    // Limits, counts and sorts apply to the past state.
    let limited = h
        .range(RangeRequest {
            limit: 1,
            ..all_at(3)
        })
        .await
        .unwrap();
    assert_eq!(
        (keys(&limited), limited.more, limited.count),
        (vec!["a".to_string()], true, 2)
    );
    let by_mod = h
        .range(RangeRequest {
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..all_at(3)
        })
        .await
        .unwrap();
    assert_eq!(keys(&by_mod), ["a", "b"]);
    let count_only = h
        .range(RangeRequest {
            count_only: true,
            ..all_at(4)
        })
        .await
        .unwrap();
    assert_eq!(count_only.count, 1);

    // Inside a transaction: a read at a past revision sees the history, a read at revision
    // 0 the transaction's own earlier writes.
    let at = |revision| RequestOp {
        request: Some(Request::RequestRange(all_at(revision))),
    };
    let delete_a = RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: b("a"),
            ..Default::default()
        })),
    };
    let t = h
        .txn(TxnRequest {
            success: vec![put_op("c", "x"), delete_a, at(5), at(0), at(2)],
            ..Default::default()
        })
        .await
        .unwrap(); // 6
    let read_in_txn = |i: usize| match &t.responses[i].response {
        Some(Response::ResponseRange(r)) => keys(r),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(read_in_txn(2), ["a", "b"]);
    assert_eq!(read_in_txn(3), ["b", "c"]);
    assert_eq!(read_in_txn(4), ["a", "b"]);
    assert_eq!(
        rows(&h.range(all_at(5)).await.unwrap()),
        [row("a", "2", 1, 3, 2), row("b", "again", 5, 5, 1)]
    );

    // A past revision's hash is the hash of a store that stopped there.
    let mut stopped = Harness::new();
    stopped.put("a", "1").await;
    stopped.put("b", "1").await;
    stopped.put("a", "2").await;
    assert_eq!(h.hash(3).await.unwrap(), stopped.hash(0).await.unwrap());
    assert_ne!(h.hash(3).await.unwrap(), h.hash(0).await.unwrap());

    // Compaction frees what no read from it on can see, and nothing else.
    let stats = h.stats().await;
    assert_eq!(stats.past_versions, 3, "a=1, b=1 and a=2 were replaced");
    h.compact(3).await.unwrap();
    assert_eq!(h.stats().await.past_versions, 2, "a=1 went at 3");
    assert_eq!(
        rows(&h.range(all_at(3)).await.unwrap()),
        [row("a", "2", 1, 3, 2), row("b", "1", 2, 2, 1)]
    );
    assert_eq!(h.range(all_at(2)).await, Err(KvError::Compacted));
    assert_eq!(h.hash(2).await, Err(KvError::Compacted));
    h.compact(6).await.unwrap();
    let stats = h.stats().await;
    assert_eq!(stats.past_versions, 0);
    // Only the live keys are left in the size: b=again and c=x, 48 bytes of overhead each.
    assert_eq!(stats.size_bytes, (1 + 5 + 48) + (1 + 1 + 48));
    assert_eq!(keys(&h.range(all_at(6)).await.unwrap()), ["b", "c"]);
}

/// [`Harness::watch_history`] of `sm`.
async fn history_of(sm: &KvStateMachine, from: i64, through: i64) -> Result<Vec<Event>, KvError> {
    let response = sm
        .query(encode_query(query::Op::WatchHistory(WatchHistoryRequest {
            key: b("\0"),
            range_end: b("\0"),
            from,
            through,
        })))
        .await
        .unwrap();
    match decode_query_response(&response)? {
        query_response::Result::WatchHistory(h) => Ok(h.events),
        other => panic!("unexpected {other:?}"),
    }
}

/// (type, key, value, mod revision, previous value) of each event.
fn event_rows(events: &[Event]) -> Vec<(i32, String, String, i64, Option<String>)> {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                e.r#type,
                text(&kv.key),
                text(&kv.value),
                kv.mod_revision,
                e.prev_kv.as_ref().map(|p| text(&p.value)),
            )
        })
        .collect()
}

// Nobody follows the event history here, so it keeps nothing: a watcher starting at an
// earlier revision is served from the MVCC history, every event of every revision after the
// compaction point, previous values included; at or before it, "compacted" (the
// compaction revision's own deletes are gone with the versions they removed).
#[tokio::test]
async fn with_nobody_following_the_events_come_from_the_mvcc_history() {
    let mut h = Harness::new();
    h.put("a", "1").await; // 1
    h.put("a", "2").await; // 2
    h.put("b", "1").await; // 3
    h.txn(TxnRequest {
        success: vec![
            put_op("b", "2"),
            RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b("a"),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    })
    .await
    .unwrap(); // 4
    h.put("c", "1").await; // 5
    assert_eq!(
        h.sm.watch_hub().oldest_revision(),
        6,
        "nobody followed: the event history is empty"
    );
    let (put, delete) = (EventType::Put as i32, EventType::Delete as i32);
    let through_5 = vec![
        (put, "a".into(), "2".into(), 2, Some("1".into())),
        (put, "b".into(), "1".into(), 3, None),
        (delete, "a".into(), "".into(), 4, Some("2".into())),
        (put, "b".into(), "2".into(), 4, Some("1".into())),
        (put, "c".into(), "1".into(), 5, None),
    ];
    assert_eq!(event_rows(&h.watch_history(2, 5).await.unwrap()), through_5);
    h.compact(3).await.unwrap();
    assert_eq!(h.watch_history(3, 5).await, Err(KvError::Compacted));
    assert_eq!(
        event_rows(&h.watch_history(4, 5).await.unwrap()),
        through_5[2..]
    );
    // Once someone follows, the history keeps what is published.
    let _follow = h.sm.watch_hub().subscribe();
    h.put("c", "2").await; // 6
    let all = WatchFilter::new(b("\0"), b("\0"));
    let kept = h.sm.watch_hub().read_events(6, &all, 10).unwrap();
    assert_eq!(kept.events.len(), 1);
    assert!(h.sm.watch_hub().read_events(5, &all, 10).is_err());
}

async fn build_state(h: &mut Harness) {
    h.skip(1).await; // a configuration entry
    for i in 0..20 {
        h.put(&format!("key/{i:02}"), &format!("v{i}")).await;
    }
    h.skip(1).await; // a new leader's blank entry
    h.delete(DeleteRangeRequest {
        key: b("key/05"),
        range_end: b("key/08"),
        prev_kv: false,
    })
    .await
    .unwrap();
    h.put("key/01", "again").await;
    h.compact(10).await.unwrap();
}

#[tokio::test]
async fn snapshot_install_round_trip_gives_identical_answers() {
    let mut h = Harness::new();
    // (The hub keeps its event history while someone follows it.)
    let _follow = h.sm.watch_hub().subscribe();
    build_state(&mut h).await;
    let snapshot = h.sm.snapshot().await.unwrap();
    let index = h.sm.applied_index();
    assert_eq!(
        index, 25,
        "20 puts, a delete, a put, a compaction and 2 Raft entries"
    );

    let hub = WatchHub::default();
    // A watch open on the copy: its event history is rebuilt from the snapshot.
    let _follow_copy = hub.subscribe();
    let mut copy = KvStateMachine::new(hub.clone());
    copy.install_snapshot(snapshot.clone(), index)
        .await
        .unwrap();
    assert_eq!(copy.applied_index(), index);
    assert_eq!(copy.revision(), h.sm.revision());
    assert_eq!(copy.compact_revision(), 10);
    assert_eq!(hub.revision(), h.sm.revision());
    for req in [
        range("\0", "\0"),
        range("key/01", ""),
        range("key/1", "key/2"),
        range("zzz", ""),
        all_at(10),
        all_at(15),
        all_at(21),
        RangeRequest {
            revision: 20,
            ..range("key/05", "key/09")
        },
    ] {
        assert_eq!(
            range_of(&copy, req.clone()).await,
            range_of(&h.sm, req).await
        );
    }
    assert_eq!(
        copy.snapshot().await.unwrap(),
        snapshot,
        "snapshot of the copy is the same"
    );
    // A watcher may resume on the copy from any revision after the compaction point: the
    // events are rebuilt from the history, with their previous values.
    let all = WatchFilter::new(b("\0"), b("\0")).with_prev_kv(true);
    let replayed = hub.read_events(11, &all, 1_000).unwrap();
    let original = h.sm.watch_hub().read_events(11, &all, 1_000).unwrap();
    assert_eq!(
        replayed.events.len(),
        14,
        "10 puts, 3 deletes in one revision, a put"
    );
    assert_eq!(replayed, original);
    assert!(hub.read_events(10, &all, 1_000).is_err(), "compacted at 10");
    // With nobody watching, none is rebuilt (the hub would drop them at its next publish): a
    // watcher that comes later gets the same events from the MVCC history.
    let unfollowed = WatchHub::default();
    let mut bare = KvStateMachine::new(unfollowed.clone());
    bare.install_snapshot(snapshot.clone(), index)
        .await
        .unwrap();
    assert_eq!(unfollowed.oldest_revision(), h.sm.revision() + 1);
    let from_history = history_of(&bare, 11, h.sm.revision()).await.unwrap();
    assert_eq!(from_history, replayed.events);

    // Both continue identically.
    let mut c = Harness::memory(copy);
    let next = PutRequest {
        key: b("key/01"),
        value: b("x"),
        prev_kv: true,
        ..Default::default()
    };
    assert_eq!(c.put_req(next.clone()).await, h.put_req(next).await);

    // A snapshot installed as covering another index than it does is refused.
    let mut other = KvStateMachine::new(WatchHub::default());
    assert!(other.install_snapshot(snapshot.clone(), 999).await.is_err());
    assert!(
        other
            .install_snapshot(Bytes::from_static(b"\xff\xff"), index)
            .await
            .is_err()
    );

    // A history out of order (or older than the compaction) is damage, refused.
    let mut decoded = StoreSnapshot::decode(snapshot.clone()).unwrap();
    assert!(decoded.history.len() >= 2, "{decoded:?}");
    let last = decoded.history.len() - 1;
    decoded.history.swap(0, last); // replaced at 21 and at 22
    let err = other
        .install_snapshot(Bytes::from(decoded.encode_to_vec()), index)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    // A compaction point after the revision (or negative revisions) is damage too, refused
    // rather than panicking while the watch history is rebuilt.
    for (revision, compact_revision) in [(22, 23), (-1, 0), (22, -5)] {
        let mut decoded = StoreSnapshot::decode(snapshot.clone()).unwrap();
        decoded.history.clear();
        (decoded.revision, decoded.compact_revision) = (revision, compact_revision);
        let err = other
            .install_snapshot(Bytes::from(decoded.encode_to_vec()), index)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("compaction point"), "{err}");
    }
    let mut decoded = StoreSnapshot::decode(snapshot).unwrap();
    decoded.history[0].superseded_revision = 10;
    assert!(
        other
            .install_snapshot(Bytes::from(decoded.encode_to_vec()), index)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn replicas_applying_the_same_commands_agree() {
    // Commands at increasing indexes, with gaps where Raft's own entries are.
    let mut commands = Vec::new();
    let mut index = 1; // 1: the initial configuration
    let mut push = |data| {
        index += if index % 7 == 0 { 2 } else { 1 };
        commands.push(Committed { index, data });
    };
    for i in 0..30u32 {
        let op = match i % 4 {
            0 | 1 => command::Op::Put(PutRequest {
                key: Bytes::from(format!("k{}", i % 5)),
                value: Bytes::from(format!("{i}")),
                prev_kv: true,
                ..Default::default()
            }),
            2 => command::Op::DeleteRange(DeleteRangeRequest {
                key: Bytes::from(format!("k{}", i % 3)),
                range_end: Bytes::new(),
                prev_kv: true,
            }),
            _ => command::Op::Txn(TxnRequest {
                compare: vec![cmp(
                    "k1",
                    CompareTarget::Version,
                    CompareResult::Greater,
                    TargetUnion::Version(1),
                )],
                success: vec![put_op("t", "s")],
                failure: vec![put_op("t", "f")],
            }),
        };
        push(encode_command(op));
    }
    push(Bytes::from_static(b"garbage"));
    let end = commands.last().unwrap().index + 1; // and a blank entry

    let mut a = KvStateMachine::new(WatchHub::default());
    let mut b_sm = KvStateMachine::new(WatchHub::default());
    let ra = a.apply(&commands, end).await.unwrap();
    // The other replica applies the same commands in differently sized batches.
    let mut rb = Vec::new();
    for chunk in commands.chunks(4) {
        let up_to = chunk.last().unwrap().index;
        rb.extend(b_sm.apply(chunk, up_to).await.unwrap());
    }
    b_sm.apply(&[], end).await.unwrap();
    assert_eq!(ra, rb);
    assert_eq!(ra.len(), commands.len());
    assert!(matches!(
        decode_command_response(ra.last().unwrap()),
        Err(KvError::InvalidArgument(_))
    ));
    assert_eq!(a.snapshot().await.unwrap(), b_sm.snapshot().await.unwrap());
    assert_eq!((a.applied_index(), b_sm.applied_index()), (end, end));
}

#[tokio::test]
async fn commands_out_of_order_or_twice_are_refused() {
    let mut sm = KvStateMachine::new(WatchHub::default());
    let put = |index| Committed {
        index,
        data: encode_command(command::Op::Put(PutRequest {
            key: b("k"),
            value: b("v"),
            ..Default::default()
        })),
    };
    sm.apply(&[put(2)], 3).await.unwrap();
    assert!(sm.apply(&[put(3)], 3).await.is_err(), "index 3 was covered");
    assert!(
        sm.apply(&[put(5), put(4)], 5).await.is_err(),
        "out of order"
    );
    assert!(
        sm.apply(&[put(7)], 6).await.is_err(),
        "beyond applied_up_to"
    );
    assert_eq!(
        sm.applied_index(),
        5,
        "the first command of the refused batch applied"
    );
}

#[tokio::test]
async fn writes_publish_events_to_the_hub() {
    let hub = WatchHub::default();
    let _follow = hub.subscribe();
    let mut h = Harness::durable(hub.clone());
    h.put("w/a", "1").await; // rev 1
    h.txn(TxnRequest {
        success: vec![put_op("w/a", "2"), put_op("w/b", "3")],
        ..Default::default()
    })
    .await
    .unwrap(); // rev 2
    h.delete(DeleteRangeRequest {
        key: b("w/"),
        range_end: b("w0"),
        prev_kv: false,
    })
    .await
    .unwrap(); // rev 3
    let filter = WatchFilter::new(b("w/"), b("w0")).with_prev_kv(true);
    let batch = hub.read_events(2, &filter, 100).unwrap();
    let summary: Vec<_> = batch
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                kv.key.clone(),
                kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    let put = EventType::Put as i32;
    let del = EventType::Delete as i32;
    assert_eq!(
        summary,
        [
            (put, b("w/a"), 2, Some(b("1"))),
            (put, b("w/b"), 2, None),
            (del, b("w/a"), 3, Some(b("2"))),
            (del, b("w/b"), 3, Some(b("3"))),
        ]
    );
    assert_eq!(batch.through_revision, 3);
}

#[tokio::test]
async fn a_batch_publishes_its_writes_to_the_hub_by_the_time_it_returns() {
    let hub = WatchHub::default();
    let mut h = Harness::durable(hub.clone());
    h.put("p/a", "0").await; // rev 1
    let mut woken = hub.subscribe();
    woken.mark_unchanged();
    let put = |key: &str, value: &str| {
        command::Op::Put(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
    };
    let commands: Vec<_> = [
        put("p/a", "1"), // rev 2
        put("p/b", "2"), // rev 3
        command::Op::Compact(CompactionRequest {
            revision: 3,
            physical: false,
        }),
        put("p/a", "3"), // rev 4
    ]
    .into_iter()
    .enumerate()
    .map(|(i, op)| Committed {
        index: h.sm.applied_index() + 1 + i as u64,
        data: encode_command(op),
    })
    .collect();
    let last = commands.last().unwrap().index;
    h.sm.apply(&commands, last).await.unwrap();
    // Once the batch's responses are out, every write in it is in the hub.
    assert_eq!(hub.revision(), 4);
    assert!(woken.has_changed().unwrap());
    assert_eq!(
        *woken.borrow_and_update(),
        4,
        "the watchers are woken at the newest revision"
    );
    let filter = WatchFilter::new(b("p/"), b("p0"));
    let events = hub.read_events(3, &filter, 100).unwrap().events;
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (kv.key.clone(), kv.mod_revision)
        })
        .collect();
    assert_eq!(seen, [(b("p/b"), 3), (b("p/a"), 4)]);
    // The compaction inside the batch applied to the hub after the writes before it.
    assert_eq!(hub.compact_revision(), 3);
    assert!(
        hub.read_events(2, &filter, 100).is_err(),
        "revision 2 is compacted"
    );
}

#[tokio::test]
async fn a_nospace_alarm_caps_writes_on_every_replica_and_survives_snapshots() {
    use dengine_kv::proto::etcdserverpb::{AlarmRequest, AlarmType, alarm_request::AlarmAction};
    async fn alarm(h: &mut Harness, action: AlarmAction) -> usize {
        let req = AlarmRequest {
            action: action as i32,
            member_id: 2,
            alarm: AlarmType::Nospace as i32,
        };
        match h.cmd(command::Op::Alarm(req)).await.unwrap() {
            command_response::Result::Alarm(r) => r.alarms.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut h = Harness::new();
    h.put("a", "1").await;
    assert_eq!(alarm(&mut h, AlarmAction::Activate).await, 1);
    assert_eq!(
        alarm(&mut h, AlarmAction::Activate).await,
        0,
        "raised already"
    );

    // Whatever member took it, the state machine refuses what adds data: a put, a
    // transaction with a put in a nested branch. Reads and deletes apply.
    let no_space = Some(KvError::ResourceExhausted(
        "mvcc: database space exceeded".into(),
    ));
    let put = PutRequest {
        key: b("a"),
        value: b("2"),
        ..Default::default()
    };
    assert_eq!(h.put_req(put.clone()).await.err(), no_space);
    let nested = TxnRequest {
        failure: vec![RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success: vec![put_op("b", "1")],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert_eq!(h.txn(nested.clone()).await.err(), no_space);
    let reads = TxnRequest {
        success: vec![get_op("a")],
        ..Default::default()
    };
    assert!(h.txn(reads).await.is_ok());
    assert_eq!(h.get("a").await.unwrap().value, b("1"));

    // A replica that starts from a snapshot holds the alarm too.
    let snapshot = h.sm.snapshot().await.unwrap();
    let mut copy = Harness::memory(KvStateMachine::new(WatchHub::default()));
    copy.sm
        .install_snapshot(snapshot, h.sm.applied_index())
        .await
        .unwrap();
    assert_eq!(copy.put_req(put.clone()).await.err(), no_space);

    // Cleared: writes apply again, on both.
    assert_eq!(alarm(&mut h, AlarmAction::Deactivate).await, 1);
    assert_eq!(alarm(&mut copy, AlarmAction::Deactivate).await, 1);
    assert!(h.put_req(put.clone()).await.is_ok());
    assert!(copy.put_req(put).await.is_ok());
    assert!(h.txn(nested).await.is_ok());
}

/// Writes applied while nobody follows the hub make no events (`KvStore::record_events`), yet
/// answer exactly as watched ones do: the same responses (the replaced versions when asked),
/// revisions and state. The hub moves past their revisions, so a reader who comes later is
/// told so, and the MVCC history (which the Watch service replays from) has every event.
#[tokio::test]
async fn writes_nobody_watches_answer_as_watched_ones_and_the_hub_moves_past_them() {
    let watched_hub = WatchHub::default();
    let _follow = watched_hub.subscribe();
    let unwatched_hub = WatchHub::default();
    let mut watched = Harness::durable(watched_hub.clone());
    let mut unwatched = Harness::durable(unwatched_hub.clone());
    let mut answers: [Vec<String>; 2] = Default::default();
    for (h, out) in [&mut watched, &mut unwatched].into_iter().zip(&mut answers) {
        for (key, value) in [("u/a", "1"), ("u/b", "2"), ("u/a", "3")] {
            let put = h
                .put_req(PutRequest {
                    key: b(key),
                    value: b(value),
                    prev_kv: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            out.push(format!("{put:?}"));
        }
        let txn = h
            .txn(TxnRequest {
                success: vec![put_op("u/b", "4"), put_op("u/c", "5")],
                ..Default::default()
            })
            .await
            .unwrap();
        out.push(format!("{txn:?}"));
        let deleted = h
            .delete(DeleteRangeRequest {
                key: b("u/a"),
                range_end: b("u/b\0"),
                prev_kv: true,
            })
            .await
            .unwrap();
        out.push(format!("{deleted:?}"));
        let all = h.range(range("\0", "\0")).await.unwrap();
        out.push(format!("{all:?}"));
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        answers[0][2].contains("prev_kv: Some"),
        "the replaced version is answered when asked: {}",
        answers[0][2]
    );
    assert_eq!(unwatched.sm.revision(), 5);
    assert_eq!((watched_hub.revision(), unwatched_hub.revision()), (5, 5));

    // The watched hub kept the events; the other moved its floor past them, so a reader who
    // comes now is told to look elsewhere, never handed a gap.
    let filter = WatchFilter::new(b("u/"), b("u0")).with_prev_kv(true);
    assert_eq!(
        watched_hub
            .read_events(1, &filter, 100)
            .unwrap()
            .events
            .len(),
        7
    );
    let _late = unwatched_hub.subscribe();
    assert_eq!(
        unwatched_hub
            .read_events(1, &filter, 100)
            .unwrap_err()
            .compact_revision,
        6
    );
    // The MVCC history rebuilds the same events for it.
    let rebuilt = unwatched.watch_history(1, 5).await.unwrap();
    assert_eq!(
        event_rows(&rebuilt),
        event_rows(&watched.watch_history(1, 5).await.unwrap())
    );
    assert_eq!(rebuilt.len(), 7);
    // With a reader now, the next write's events are kept.
    unwatched.put("u/d", "6").await;
    assert_eq!(
        unwatched_hub
            .read_events(6, &filter, 100)
            .unwrap()
            .events
            .len(),
        1
    );
}
