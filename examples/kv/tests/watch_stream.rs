//! Watch-stream behaviour that `etcd-client` does not exercise, driven with the generated
//! gRPC client: several watchers on one stream, client-chosen and duplicate ids, filters, and
//! a client that half-closes its side.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use dengine_kv::WatchConfig;
use dengine_kv::proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
};

mod common;

async fn start() -> String {
    common::serve_local(WatchConfig::default()).await
}

fn create(key: &str, watch_id: i64, filters: Vec<FilterType>) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            watch_id,
            filters: filters.into_iter().map(|f| f as i32).collect(),
            ..Default::default()
        })),
    }
}

async fn put(url: &str, key: &str) {
    let mut kv = KvClient::connect(url.to_string()).await.unwrap();
    kv.put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch response in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn several_watchers_ids_and_filters_on_one_stream() {
    let url = start().await;
    let (tx, rx) = mpsc::channel(8);
    let mut client = WatchClient::connect(url.clone()).await.unwrap();
    let mut stream = client
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    tx.send(create("a", 0, vec![])).await.unwrap();
    let first = next(&mut stream).await;
    assert!(first.created);
    tx.send(create("b", 42, vec![FilterType::Noput]))
        .await
        .unwrap();
    let second = next(&mut stream).await;
    assert_eq!((second.created, second.watch_id), (true, 42));
    tx.send(create("c", 42, vec![])).await.unwrap();
    let dup = next(&mut stream).await;
    assert!(dup.created && dup.canceled, "a duplicate id is refused");
    assert!(
        dup.cancel_reason.contains("duplicate"),
        "{}",
        dup.cancel_reason
    );

    put(&url, "b").await; // filtered out for watcher 42
    put(&url, "a").await;
    let event = next(&mut stream).await;
    assert_eq!(event.watch_id, first.watch_id);
    assert_eq!(
        event.events[0].kv.as_ref().unwrap().key,
        Bytes::from_static(b"a")
    );
    assert_eq!(event.header.unwrap().revision, 2);
}

#[tokio::test]
async fn a_half_closed_stream_keeps_delivering() {
    let url = start().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(create("k", 0, vec![])).await.unwrap();
    drop(tx); // the client sends nothing more
    let mut client = WatchClient::connect(url.clone()).await.unwrap();
    let mut stream = client
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut stream).await.created);
    put(&url, "k").await;
    let event = next(&mut stream).await;
    assert_eq!(event.events.len(), 1);
}
