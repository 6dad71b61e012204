//! One write that changes more keys than the watch history holds (`del --prefix` over
//! 100 000 keys): the watchers that want its events get all of them, whole or in fragments as
//! they asked, and a watcher on an unrelated key is not canceled. Driven with the generated
//! gRPC client, which shows the `fragment` flag.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use dengine_kv::proto::dengine::kv::v1::command;
use dengine_kv::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    WatchResponse, kv_client::KvClient, request_op::Request, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use dengine_kv::proto::mvccpb::event::EventType;
use dengine_kv::{KvBackend, KvConfig, WatchConfig, encode_command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

mod common;

fn create(key: &str, range_end: &str, watch_id: i64, fragment: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            watch_id,
            fragment,
            ..Default::default()
        })),
    }
}

async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("watch response in time")
        .unwrap()
        .expect("stream open")
}

/// Deleted keys seen by each watcher, and the responses (events, fragment flag) of each.
#[derive(Default)]
struct Seen {
    deletes: Vec<Bytes>,
    responses: Vec<(usize, bool)>,
    puts: Vec<Bytes>,
}

/// Writes `n` keys `r/000000`.. in one command (through the backend: the client API would
/// split it into 128-operation transactions), then, through the etcd API, deletes them with
/// one prefix delete and writes the unrelated key `x`, which pushes the delete's revision out
/// of the history while the watchers are still delivering it. Returns what watchers 1
/// (on `r/`), 2 (on `r/`, with fragments) and 3 (on `x`) received.
async fn delete_many(n: usize, watch: WatchConfig) -> [Seen; 3] {
    let max_events = watch.max_events_per_response;
    let (url, backend) = common::start_local(watch, KvConfig::default()).await;
    let puts = (0..n)
        .map(|i| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from(format!("r/{i:06}")),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })),
        })
        .collect();
    let load = TxnRequest {
        success: puts,
        ..Default::default()
    };
    backend
        .propose(encode_command(command::Op::Txn(load)))
        .await
        .unwrap();

    // A small buffer: the stream task blocks on the first watcher's responses until the
    // test reads them, after the writes are done.
    let (tx, rx) = mpsc::channel(4);
    let mut client = WatchClient::connect(url.clone()).await.unwrap();
    let mut stream = client
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for (id, key, end, fragment) in [
        (1, "r/", "r0", false),
        (2, "r/", "r0", true),
        (3, "x", "", false),
    ] {
        tx.send(create(key, end, id, fragment)).await.unwrap();
        let created = next(&mut stream).await;
        assert!(created.created && !created.canceled, "{created:?}");
    }
    let mut kv = KvClient::connect(url).await.unwrap();
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: Bytes::from_static(b"r/"),
            range_end: Bytes::from_static(b"r0"),
            prev_kv: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, n as i64);
    let delete_revision = deleted.header.unwrap().revision;
    // Once a first response is out, the stream has taken up the delete; the unrelated write
    // then comes while it is still delivering (the buffer is full).
    let first = next(&mut stream).await;
    kv.put(PutRequest {
        key: Bytes::from_static(b"x"),
        value: Bytes::from_static(b"after"),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut seen: [Seen; 3] = Default::default();
    let mut pending = Some(first);
    while seen[0].deletes.len() < n || seen[1].deletes.len() < n || seen[2].puts.is_empty() {
        let r = match pending.take() {
            Some(r) => r,
            None => next(&mut stream).await,
        };
        assert!(
            !r.canceled,
            "watcher {} canceled: {} (compact revision {})",
            r.watch_id, r.cancel_reason, r.compact_revision
        );
        let s = &mut seen[usize::try_from(r.watch_id).unwrap() - 1];
        s.responses.push((r.events.len(), r.fragment));
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            if e.r#type == EventType::Delete as i32 {
                assert_eq!(kv.mod_revision, delete_revision);
                s.deletes.push(kv.key.clone());
            } else {
                s.puts.push(kv.value.clone());
            }
        }
    }
    for (i, s) in seen.iter().take(2).enumerate() {
        let expected: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("r/{i:06}"))).collect();
        assert_eq!(s.deletes, expected, "watcher {}", i + 1);
    }
    assert_eq!(seen[2].puts, [Bytes::from_static(b"after")]);
    assert!(seen[2].deletes.is_empty());
    // Without `fragment`, the revision comes whole; with it, split at the response bound with
    // `fragment` set on all but the last piece.
    assert_eq!(seen[0].responses, [(n, false)]);
    let pieces = n.div_ceil(max_events);
    let mut expected = vec![(max_events, true); pieces - 1];
    expected.push((n - max_events * (pieces - 1), false));
    assert_eq!(seen[1].responses, expected);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_deletes_reach_their_watchers_and_cancel_no_one() {
    // The scenario with the default bounds: 10 000 events of history, 1 000 events
    // per response.
    delete_many(100_000, WatchConfig::default()).await;
}

#[tokio::test]
async fn a_revision_larger_than_a_small_history_is_delivered_in_fragments() {
    let config = WatchConfig {
        max_history_events: 100,
        max_events_per_response: 64,
        ..WatchConfig::default()
    };
    delete_many(1_000, config).await;
}
