//! The transport's trust boundary, tried the way an attacker or a broken peer would: idle
//! and excess connections, requests without the cluster secret, snapshot uploads that never
//! end or come from many senders, traffic from a removed member.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use dengine_core::{EntryId, Membership, SnapshotMeta, Transport};
use dengine_net_grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;

/// Whether the server closes `stream` within `within` (a read returns end-of-file or an
/// error) instead of keeping it open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server may send its HTTP/2 settings first; keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let mut config = fast(2, 7);
    config.listener.max_connections = 2;
    let b = node_with(config).await;
    let addr = b.server.local_addr();
    let mut held = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "a connection beyond the limit is closed, not left waiting"
    );
    // A freed slot is taken again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    assert!(!closed_within(&mut again, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_starts_http2_is_closed_after_the_handshake_timeout() {
    let mut config = fast(2, 7);
    config.listener.handshake_timeout = Duration::from_millis(300);
    config.listener.max_connections = 4;
    let b = node_with(config).await;
    let addr = b.server.local_addr();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle.write_all(b"PRI * HTTP").await.unwrap(); // 10 of the preface's 24 bytes
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut trickle, Duration::from_secs(3)).await);
    // Four slots, two freed: real peers still get through.
    let a = node_with(fast(1, 7)).await;
    a.transport.set_peer(2, addr.to_string());
    a.transport.send(append(1, 2, 1, 1));
    wait_until("a real append", || b.inbox.count() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_cluster_secret_are_refused() {
    let secret = |id| {
        let mut c = fast(id, 7);
        c.cluster_secret = Some("correct-horse-battery-staple".into());
        c
    };
    let a = node_with(secret(1)).await;
    let b = node_with(secret(2)).await;
    let addr = b.server.local_addr().to_string();
    a.transport.set_peer(2, addr.clone());
    a.transport.send(append(1, 2, 1, 1));
    wait_until("an append with the secret", || b.inbox.count() == 1).await;

    let mut wrong = fast(3, 7);
    wrong.cluster_secret = Some("incorrect-horse-battery-staple".into());
    for config in [fast(3, 7), wrong] {
        let c = node_with(config).await;
        c.transport.set_peer(2, addr.clone());
        let refused = b.transport.stats().refused;
        c.transport.send(append(3, 2, 1, 1));
        c.transport.send(vote(3, 2));
        wait_until("the refusals", || {
            b.transport.stats().refused >= refused + 2
        })
        .await;
        let snap = c
            .transport
            .send_snapshot(snapshot_message(3, 2), pattern(100).into())
            .await;
        assert!(snap.is_err(), "a snapshot without the secret is refused");
    }
    assert_eq!(b.inbox.count(), 1, "nothing without the secret arrived");
    assert!(b.inbox.snapshots.lock().unwrap().is_empty());

    let short = {
        let mut c = fast(4, 7);
        c.cluster_secret = Some("short".into());
        c
    };
    let err = dengine_net_grpc::GrpcTransport::new(short).unwrap_err();
    assert!(err.to_string().contains("at least 16"), "{err}");
}

fn vote(from: u64, to: u64) -> dengine_core::Message {
    dengine_core::Message {
        from,
        to,
        term: 9,
        body: dengine_core::MessageBody::VoteRequest(dengine_core::VoteRequest {
            pre_vote: true,
            last_log: EntryId::new(1, 1),
            leader_transfer: false,
        }),
    }
}

/// The first chunk of a snapshot of `total` bytes from `from`, carrying `len` bytes.
fn first_chunk(from: u64, total: u64, len: usize) -> pb::SnapshotChunk {
    let data = pattern(len);
    pb::SnapshotChunk {
        header: Some(pb::Header {
            cluster_id: 7,
            from,
            to: 2,
            incarnation: 0,
        }),
        term: 3,
        meta: Some(dengine_net_grpc::convert::encode_meta(&SnapshotMeta {
            last_included: EntryId::new(2, 500),
            membership: Membership::new([1, 2]),
        })),
        total_size: total,
        total_crc32: 0,
        offset: 0,
        crc32: crc32fast::hash(&data),
        data,
        last: false,
    }
}

type Upload = (
    tokio::sync::mpsc::Sender<pb::SnapshotChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::SnapshotReply>, tonic::Status>>,
);

/// Opens an upload from `from` and sends its first chunk, leaving the call open.
async fn open_upload(addr: &str, from: u64, total: u64) -> Upload {
    let mut client = pb::peer_client::PeerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first_chunk(from, total, 1000)).await.unwrap();
    let call = tokio::spawn(async move { client.install_snapshot(ReceiverStream::new(rx)).await });
    (tx, call)
}

fn spooled(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Before: five fake senders uploading 40 MiB each of never-finished snapshots took a member
/// from 13 MB to 225 MB, kept forever. Now partial uploads are files, bounded in total, one
/// per sender, and deleted when abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_uploads_are_spooled_bounded_one_per_sender_and_expire() {
    let spool = tempfile::tempdir().unwrap();
    let mut config = fast(2, 7);
    config.snapshot_spool_dir = Some(spool.path().to_path_buf());
    config.max_snapshot_spool_bytes = 1_000_000;
    config.snapshot_abandon_after = Duration::from_millis(400);
    config.snapshot_chunk_timeout = Duration::from_secs(30);
    let b = node_with(config).await;
    let addr = b.server.local_addr().to_string();

    let first = open_upload(&addr, 11, 400_000).await;
    let second = open_upload(&addr, 12, 400_000).await;
    wait_until("two partial uploads on disk", || {
        spooled(spool.path())
            .iter()
            .filter(|(_, len)| *len == 1000)
            .count()
            == 2
    })
    .await;
    // A third would pass the bound of the spool.
    let (_tx, third) = open_upload(&addr, 13, 400_000).await;
    let err = third.await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_snapshot_spool_bytes"),
        "{err:?}"
    );

    // One upload per sender: a new call of sender 11 takes over; the old one ends.
    let (_tx11, _call11) = open_upload(&addr, 11, 400_000).await;
    let old = first.1.await.unwrap().unwrap_err();
    assert_eq!(old.code(), tonic::Code::Aborted, "{old:?}");
    assert_eq!(spooled(spool.path()).len(), 2, "still one file per sender");

    // Senders that go quiet lose their uploads once abandoned.
    drop(second);
    drop(_tx11);
    drop(_call11);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_tx14, _call14) = open_upload(&addr, 14, 1_000).await;
    wait_until("abandoned uploads deleted", || {
        let files = spooled(spool.path());
        files.len() == 1 && files[0].0.starts_with("from-14-")
    })
    .await;
}

/// A member that a committed configuration removed is refused, and told so: its transport
/// reports the removal to its node, which stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_refused_and_learns_why() {
    let a = node_with(fast(1, 7)).await;
    let b = node_with(fast(2, 7)).await;
    b.inbox.retired.lock().unwrap().push(1);
    a.transport.set_peer(2, b.server.local_addr().to_string());
    a.transport.send(append(1, 2, 1, 1));
    a.transport.send(vote(1, 2));
    wait_until("the removed member to learn it", || {
        !a.inbox.removed.lock().unwrap().is_empty()
    })
    .await;
    let detail = a.inbox.removed.lock().unwrap()[0].clone();
    assert!(
        detail.contains("member 2") && detail.contains("removed node 1"),
        "{detail}"
    );
    let snap = a
        .transport
        .send_snapshot(snapshot_message(1, 2), Bytes::from_static(b"x").into())
        .await;
    assert!(snap.is_err());
    assert_eq!(b.inbox.count(), 0);
}
