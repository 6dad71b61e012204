//! The bounds at the client boundary: the size of a Range response (and of a transaction's
//! reads), the size of a write request and the number of operations of a transaction, in the
//! state machine and through the etcd API (with the `etcd-client` crate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use dengine_core::StateMachine;
use dengine_kv::proto::dengine::kv::v1::{
    Command, Query, command, command_response, query, query_response,
};
use dengine_kv::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, request_op::Request,
};
use dengine_kv::{
    KvConfig, KvError, KvStateMachine, WatchConfig, WatchHub, decode_command_response,
    decode_query_response, encode_command,
};
use etcd_client::{Client, Error, GetOptions, Txn, TxnOp};
use prost::Message;

mod common;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn apply(
    sm: &mut KvStateMachine,
    command: Bytes,
) -> Result<command_response::Result, KvError> {
    decode_command_response(&sm.apply_next(command).await.unwrap())
}

/// 100 keys `k000`..`k099`, each with a 100-byte value.
async fn hundred_keys() -> KvStateMachine {
    let mut sm = KvStateMachine::new(WatchHub::default());
    for i in 0..100 {
        let put = PutRequest {
            key: Bytes::from(format!("k{i:03}")),
            value: Bytes::from(vec![b'v'; 100]),
            ..Default::default()
        };
        apply(&mut sm, encode_command(command::Op::Put(put)))
            .await
            .unwrap();
    }
    sm
}

async fn range(sm: &KvStateMachine, req: RangeRequest, max: u64) -> Result<RangeResponse, KvError> {
    let query = Query {
        op: Some(query::Op::Range(req)),
        max_range_response_bytes: max,
        ..Query::default()
    };
    match decode_query_response(&sm.query(Bytes::from(query.encode_to_vec())).await.unwrap())? {
        query_response::Result::Range(r) => Ok(r),
        other => panic!("unexpected {other:?}"),
    }
}

fn all_keys() -> RangeRequest {
    RangeRequest {
        key: b("k"),
        range_end: b("l"),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_range_larger_than_the_bound_is_refused_and_pages_are_served() {
    let sm = hundred_keys().await;
    // Each key-value counts about 4 + 100 + 40 bytes: 100 of them pass 10 000 bytes.
    let err = range(&sm, all_keys(), 10_000).await.unwrap_err();
    let KvError::ResourceExhausted(message) = &err else {
        panic!("expected ResourceExhausted, got {err:?}");
    };
    assert!(message.contains("--limit"), "{message}");
    assert_eq!(err.to_status().code(), tonic::Code::ResourceExhausted);
    // The same read unbounded, and bounded with room to spare.
    assert_eq!(range(&sm, all_keys(), 0).await.unwrap().kvs.len(), 100);
    assert_eq!(range(&sm, all_keys(), 20_000).await.unwrap().kvs.len(), 100);
    // Paging with a limit stays under the bound, as etcd clients do.
    let mut seen = 0;
    let mut from = b("k");
    loop {
        let page = RangeRequest {
            key: from.clone(),
            range_end: b("l"),
            limit: 30,
            ..Default::default()
        };
        let r = range(&sm, page, 10_000).await.unwrap();
        seen += r.kvs.len();
        if !r.more {
            break;
        }
        let last = &r.kvs.last().unwrap().key;
        from = Bytes::from([last.as_ref(), b"\0"].concat());
    }
    assert_eq!(seen, 100);
    // Keys only and count only take less room.
    let keys_only = RangeRequest {
        keys_only: true,
        ..all_keys()
    };
    assert_eq!(range(&sm, keys_only, 10_000).await.unwrap().kvs.len(), 100);
    let count_only = RangeRequest {
        count_only: true,
        ..all_keys()
    };
    assert_eq!(range(&sm, count_only, 100).await.unwrap().count, 100);
    // A sort by value collects every key before the limit applies: bounded as a whole.
    let sorted = RangeRequest {
        limit: 1,
        sort_order: 1,
        sort_target: 4,
        ..all_keys()
    };
    assert!(matches!(
        range(&sm, sorted, 10_000).await,
        Err(KvError::ResourceExhausted(_))
    ));
}

fn get_op(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: b(key),
            range_end: b(end),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn a_transactions_reads_share_one_bound_and_it_fails_whole() {
    let mut sm = hundred_keys().await;
    let revision = sm.revision();
    // Two reads of half the keys each: about 7 200 bytes each, 14 400 together.
    let txn = TxnRequest {
        success: vec![
            get_op("k000", "k050"),
            get_op("k050", "k100"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b("written"),
                    value: b("x"),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let command = |max: u64| {
        Bytes::from(
            Command {
                op: Some(command::Op::Txn(txn.clone())),
                max_range_response_bytes: max,
                ..Command::default()
            }
            .encode_to_vec(),
        )
    };
    let err = apply(&mut sm, command(10_000)).await.unwrap_err();
    assert!(matches!(err, KvError::ResourceExhausted(_)), "{err:?}");
    assert_eq!(
        sm.revision(),
        revision,
        "nothing of the refused txn applied"
    );
    match apply(&mut sm, command(20_000)).await.unwrap() {
        command_response::Result::Txn(t) => assert_eq!(t.responses.len(), 3),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(sm.revision(), revision + 1);
}

async fn client(kv: KvConfig) -> Client {
    let url = common::serve_local_with(WatchConfig::default(), kv).await;
    Client::connect([url], None).await.unwrap()
}

fn status_of(err: Error) -> (String, String) {
    match err {
        Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn the_etcd_api_enforces_request_and_response_bounds() {
    let mut c = client(KvConfig {
        max_request_bytes: 4096,
        max_range_response_bytes: 2048,
        ..KvConfig::default()
    })
    .await;
    // A put larger than max_request_bytes: etcd's error, nothing written.
    let (code, message) = status_of(c.put("big", vec![b'x'; 5000], None).await.unwrap_err());
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("InvalidArgument", "etcdserver: request is too large")
    );
    assert_eq!(c.get("big", None).await.unwrap().kvs().len(), 0);
    // Twenty 200-byte values: about 4 800 bytes, over the 2 048-byte response bound.
    for i in 0..20 {
        c.put(format!("r/{i:02}"), vec![b'v'; 200], None)
            .await
            .unwrap();
    }
    let (code, message) = status_of(
        c.get("r/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "ResourceExhausted");
    assert!(message.contains("max_range_response_bytes"), "{message}");
    let page = c
        .get("r/", Some(GetOptions::new().with_prefix().with_limit(5)))
        .await
        .unwrap();
    assert_eq!((page.kvs().len(), page.more()), (5, true));
    // A transaction's read is bounded too.
    let (code, _) = status_of(
        c.txn(Txn::new().and_then([TxnOp::get("r/", Some(GetOptions::new().with_prefix()))]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "ResourceExhausted");
    // More operations than max_txn_ops (128).
    let puts: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("t/{i}"), "v", None))
        .collect();
    let (code, message) = status_of(c.txn(Txn::new().and_then(puts)).await.unwrap_err());
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "InvalidArgument",
            "etcdserver: too many operations in txn request"
        )
    );
}
