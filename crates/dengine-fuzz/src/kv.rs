//! Target `kv`: dengine-kv's etcd v3 API as a client port sees it — `Range`, `Put`,
//! `DeleteRange`, `Txn`, `Compact`, `Watch` and the cluster, maintenance and role calls with
//! arbitrary bodies, one after another on one member (a [`LocalBackend`]: the same service
//! layer and state machine as a cluster member, without Raft), through the tower service
//! `dengine-kv serve` runs.
//!
//! Oracle: every unary call ends with a gRPC status within the hang limit (a watch may stay
//! open: it is read briefly and dropped, as a client that goes away); nothing panics; and the
//! member still answers a plain `Range` afterwards.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_kv::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, compare, request_op, watch_request,
};
use dengine_kv::{KvConfig, LocalBackend, WatchHub, kv_services};
use dengine_sim::fuzz::Input;
use prost::Message as _;

use crate::grpc::{body_from, call, frame};
use crate::support::runtime;

/// The calls the target makes. Password hashing calls (UserAdd, Authenticate, ...) are left
/// out: each costs ~0.1 s of PBKDF2 by design, which would starve the fuzzer.
const PATHS: [&str; 16] = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Lease/LeaseGrant",
];
const WATCH: usize = 5;
/// Longer than any honest answer takes: a unary call still open after this is a hang.
const HANG: Duration = Duration::from_secs(10);

/// Runs one input.
pub fn kv(data: &[u8]) {
    let mut input = Input::new(data);
    runtime().block_on(async {
        let hub = WatchHub::default();
        let backend = match LocalBackend::new(hub.clone(), "http://127.0.0.1:2380").await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("cannot start a local backend: {e}"),
        };
        let auth = backend.auth_hub().clone();
        let mut routes = kv_services(backend, hub, auth, KvConfig::default());
        for _ in 0..8 {
            if input.is_empty() {
                break;
            }
            let which = input.below(PATHS.len() as u64) as usize;
            let body = body_from(&mut input);
            let wait = if which == WATCH {
                Duration::from_millis(20)
            } else {
                HANG
            };
            let reply = call(&mut routes, PATHS[which], body, wait).await;
            assert_eq!(reply.http_status, 200, "{}: {reply:?}", PATHS[which]);
            if which != WATCH {
                assert!(
                    reply.grpc_status.is_some(),
                    "{} gave no gRPC status within {HANG:?}: {reply:?}",
                    PATHS[which]
                );
            }
        }
        let range = RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(&[0]),
            ..Default::default()
        };
        let reply = call(
            &mut routes,
            PATHS[0],
            frame(&range.encode_to_vec()).into(),
            HANG,
        )
        .await;
        assert!(
            reply.grpc_status.as_deref() == Some("0") && reply.body.len() > 5,
            "the member no longer serves a plain range: {reply:?}"
        );
    });
}

/// A put, a range, a txn, a delete, a compaction and a watch: one seed each, and one with
/// all of them in a row.
pub fn seeds() -> Vec<Vec<u8>> {
    let put = PutRequest {
        key: Bytes::from_static(b"k1"),
        value: Bytes::from_static(b"v1"),
        prev_kv: true,
        ..Default::default()
    };
    let range = RangeRequest {
        key: Bytes::from_static(b"k"),
        range_end: Bytes::from_static(b"l"),
        limit: 10,
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: Bytes::from_static(b"k1"),
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::Version(1)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from_static(b"k2"),
                value: Bytes::from_static(b"v2"),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range.clone())),
        }],
    };
    let delete = DeleteRangeRequest {
        key: Bytes::from_static(b"k1"),
        ..Default::default()
    };
    let compact = CompactionRequest {
        revision: 2,
        physical: false,
    };
    let watch = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: Bytes::from_static(b"k"),
                range_end: Bytes::from_static(b"l"),
                start_revision: 1,
                ..Default::default()
            },
        )),
    };
    let calls: Vec<(u8, Vec<u8>)> = vec![
        (1, put.encode_to_vec()),
        (0, range.encode_to_vec()),
        (3, txn.encode_to_vec()),
        (2, delete.encode_to_vec()),
        (4, compact.encode_to_vec()),
        (WATCH as u8, watch.encode_to_vec()),
    ];
    let one = |(path, message): &(u8, Vec<u8>)| {
        let mut out = vec![*path, 0];
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(message);
        out
    };
    let mut seeds: Vec<Vec<u8>> = calls.iter().map(one).collect();
    seeds.push(calls.iter().flat_map(one).collect());
    seeds
}
