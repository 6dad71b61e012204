//! The gRPC services over loopback, driven by the `etcd-client` crate (a real etcd v3 client
//! written elsewhere) against a `LocalBackend`: KV, transactions, watches, cluster, status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions, MemberAddOptions,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};

use dengine_kv::proto::etcdserverpb::{StatusRequest, StatusResponse};
use dengine_kv::{LOCAL_CLUSTER_ID, WatchConfig};
use prost::Message;

mod common;

async fn start(config: WatchConfig) -> Client {
    Client::connect([common::serve_local(config).await], None)
        .await
        .unwrap()
}

/// The gRPC code name and message of a failed call.
fn status_of(err: Error) -> (String, String) {
    match err {
        Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch response in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn put_get_prefix_and_delete() {
    let mut c = start(WatchConfig::default()).await;
    let put = c.put("foo", "bar", None).await.unwrap();
    let header = put.header().unwrap();
    assert_eq!(header.revision(), 1);
    assert_eq!(header.cluster_id(), LOCAL_CLUSTER_ID);
    assert_eq!(header.member_id(), 1);

    let prev = c
        .put("foo", "baz", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(prev.prev_key().unwrap().value_str().unwrap(), "bar");

    let got = c.get("foo", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (
            kv.value_str().unwrap(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        ("baz", 2, 1, 2)
    );

    c.put("foo/1", "1", None).await.unwrap();
    c.put("foo/2", "2", None).await.unwrap();
    c.put("other", "x", None).await.unwrap();
    let prefix = c
        .get("foo", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<_> = prefix
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["foo", "foo/1", "foo/2"]);
    assert_eq!(prefix.header().unwrap().revision(), 5);

    let limited = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await
        .unwrap();
    assert_eq!(
        (limited.kvs().len(), limited.more(), limited.count()),
        (1, true, 3)
    );
    let all = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((all.kvs().len(), all.count()), (0, 4));
    let serializable = c
        .get(
            "other",
            Some(GetOptions::new().with_serializable().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(serializable.kvs()[0].value(), b"");

    let del = c
        .delete(
            "foo/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 2);
    assert_eq!(del.prev_kvs().len(), 2);
    assert_eq!(del.header().unwrap().revision(), 6);
    assert_eq!(c.get("foo/1", None).await.unwrap().kvs().len(), 0);
}

#[tokio::test]
async fn txn_compare_and_swap() {
    let mut c = start(WatchConfig::default()).await;
    c.put("lock", "free", None).await.unwrap();
    let cas = |expect: &str| {
        Txn::new()
            .when([Compare::value("lock", CompareOp::Equal, expect)])
            .and_then([
                TxnOp::put("lock", "held", None),
                TxnOp::put("owner", "me", None),
            ])
            .or_else([TxnOp::get("lock", None)])
    };
    let won = c.txn(cas("free")).await.unwrap();
    assert!(won.succeeded());
    assert_eq!(won.header().unwrap().revision(), 2);

    let lost = c.txn(cas("free")).await.unwrap();
    assert!(!lost.succeeded());
    match &lost.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value_str().unwrap(), "held"),
        other => panic!("unexpected {other:?}"),
    }

    let by_version = Txn::new()
        .when([
            Compare::version("owner", CompareOp::Equal, 1),
            Compare::create_revision("lock", CompareOp::Less, 2),
            Compare::mod_revision("lock", CompareOp::Greater, 1),
        ])
        .and_then([TxnOp::delete("owner", None)]);
    assert!(c.txn(by_version).await.unwrap().succeeded());
    assert_eq!(c.get("owner", None).await.unwrap().kvs().len(), 0);

    let dup = Txn::new().and_then([TxnOp::put("x", "1", None), TxnOp::put("x", "2", None)]);
    let (code, message) = status_of(c.txn(dup).await.unwrap_err());
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "InvalidArgument",
            "etcdserver: duplicate key given in txn request"
        )
    );
}

#[tokio::test]
async fn errors_are_etcd_statuses() {
    let url = common::serve_local(WatchConfig::default()).await;
    let mut c = Client::connect([url.clone()], None).await.unwrap();
    for v in ["1", "2", "3"] {
        c.put("k", v, None).await.unwrap();
    }
    c.compact(2, None).await.unwrap();
    let (code, message) = status_of(
        c.get("k", Some(GetOptions::new().with_revision(1)))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "OutOfRange");
    assert_eq!(
        message,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let (code, _) = status_of(
        c.get("k", Some(GetOptions::new().with_revision(99)))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "OutOfRange");
    // At the compaction revision and after it, the history answers.
    let past = c
        .get("k", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(past.kvs()[0].value(), b"2");
    assert_eq!(past.header().unwrap().revision(), 3);
    let (code, _) = status_of(c.put("", "v", None).await.unwrap_err());
    assert_eq!(code, "InvalidArgument");
    let (code, message) = status_of(
        c.put("k", "v", Some(PutOptions::new().with_lease(5)))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "NotFound");
    assert_eq!(message, "etcdserver: requested lease not found");
    // Methods missing from services it does serve: named too (tonic alone sends no message).
    // (etcd 3.5's Downgrade, which no etcd-client call sends: called by its path.)
    let mut grpc = tonic::client::Grpc::new(
        tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(StatusRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/etcdserverpb.Maintenance/Downgrade",
            ),
            tonic_prost::ProstCodec::<StatusRequest, StatusResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status
            .message()
            .contains("not supported by dengine-kv: /etcdserverpb.Maintenance/Downgrade"),
        "{}",
        status.message()
    );
    // The implemented methods still answer.
    c.status().await.unwrap();
}

#[tokio::test]
async fn watch_from_now_with_prev_kv_and_cancel() {
    let mut c = start(WatchConfig::default()).await;
    c.put("w/a", "0", None).await.unwrap();
    let (mut watcher, mut stream) = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    c.put("w/a", "1", None).await.unwrap();
    c.put("elsewhere", "x", None).await.unwrap();
    c.delete("w/a", None).await.unwrap();

    let r = next(&mut stream).await;
    assert_eq!(r.watch_id(), watcher.watch_id());
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Put);
    assert_eq!(e.kv().unwrap().value_str().unwrap(), "1");
    assert_eq!(e.prev_kv().unwrap().value_str().unwrap(), "0");
    let r = next(&mut stream).await;
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Delete);
    assert_eq!(e.kv().unwrap().key_str().unwrap(), "w/a");
    assert_eq!(e.kv().unwrap().mod_revision(), 4);

    watcher.request_progress().await.unwrap();
    let progress = next(&mut stream).await;
    assert!(progress.events().is_empty());
    assert_eq!(progress.watch_id(), -1);
    assert_eq!(progress.header().unwrap().revision(), 4);

    watcher.cancel().await.unwrap();
    let r = next(&mut stream).await;
    assert!(r.canceled());
}

#[tokio::test]
async fn watch_from_a_past_revision_and_compacted() {
    let mut c = start(WatchConfig::default()).await;
    // A watch open from the start: the member keeps its event history of every revision.
    let (_follower, _follower_stream) = c.watch("elsewhere", None).await.unwrap();
    for v in ["1", "2", "3", "4"] {
        c.put("h", v, None).await.unwrap();
    }
    let (_w, mut stream) = c
        .watch("h", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next(&mut stream).await;
        seen.extend(
            r.events()
                .iter()
                .map(|e| e.kv().unwrap().value_str().unwrap().to_owned()),
        );
    }
    assert_eq!(seen, ["2", "3", "4"]);

    c.compact(3, None).await.unwrap();
    let (_w, mut stream) = c
        .watch("h", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let r = next(&mut stream).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 3);
    // Watching from the compaction revision itself works.
    let (_w, mut stream) = c
        .watch("h", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .unwrap();
    assert_eq!(
        next(&mut stream).await.events()[0]
            .kv()
            .unwrap()
            .mod_revision(),
        3
    );
}

// With no watch open, a member keeps no event history: a watch from an earlier revision is
// served from the MVCC history (previous values included), from the revision after the
// compaction point; at the compaction revision itself it is told where it may start.
#[tokio::test]
async fn watch_from_a_past_revision_with_nobody_watching_before() {
    let mut c = start(WatchConfig::default()).await;
    for v in ["1", "2", "3", "4"] {
        c.put("h", v, None).await.unwrap();
    }
    c.compact(2, None).await.unwrap();
    let (_w, mut stream) = c
        .watch(
            "h",
            Some(WatchOptions::new().with_start_revision(2).with_prev_key()),
        )
        .await
        .unwrap();
    let r = next(&mut stream).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 3, "{}", r.cancel_reason());
    let (_w, mut stream) = c
        .watch(
            "h",
            Some(WatchOptions::new().with_start_revision(3).with_prev_key()),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = next(&mut stream).await;
        assert!(!r.canceled(), "{}", r.cancel_reason());
        seen.extend(r.events().iter().map(|e| {
            (
                e.kv().unwrap().value_str().unwrap().to_owned(),
                e.prev_kv().unwrap().value_str().unwrap().to_owned(),
            )
        }));
    }
    assert_eq!(seen, [("3".into(), "2".into()), ("4".into(), "3".into())]);
}

#[tokio::test]
async fn periodic_progress_notifications() {
    let config = WatchConfig {
        progress_interval: Duration::from_millis(100),
        ..WatchConfig::default()
    };
    let mut c = start(config).await;
    c.put("p", "1", None).await.unwrap();
    let (_w, mut stream) = c
        .watch("quiet", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let r = next(&mut stream).await;
    assert!(r.events().is_empty() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), 1);
}

/// A watcher that reads nothing while far more is written than the transport buffers and
/// the event history (50 events) hold.
async fn slow_watcher(c: &mut Client) -> WatchStream {
    let (_w, stream) = c.watch("slow", None).await.unwrap();
    for i in 0..1500 {
        c.put("slow", format!("{i:04}{}", "x".repeat(4096)), None)
            .await
            .unwrap();
    }
    stream
}

fn slow_config() -> WatchConfig {
    WatchConfig {
        max_history_events: 50,
        max_events_per_response: 1,
        response_buffer: 1,
        ..WatchConfig::default()
    }
}

// Nothing is buffered for it (one response ahead); once it reads, it catches up from the
// MVCC history, in order, missing nothing, as etcd's unsynced watchers do.
#[tokio::test]
async fn a_slow_watcher_catches_up_from_the_mvcc_history() {
    let mut c = start(slow_config()).await;
    let mut stream = slow_watcher(&mut c).await;
    for i in 0..1500 {
        let r = next(&mut stream).await;
        assert!(!r.canceled(), "{}", r.cancel_reason());
        assert_eq!(r.events().len(), 1);
        let kv = r.events()[0].kv().unwrap();
        assert_eq!(kv.mod_revision(), i + 1);
        assert_eq!(&kv.value()[..4], format!("{i:04}").as_bytes());
    }
}

// ... unless the store was compacted past where it is: then it is canceled as in etcd, with
// the oldest revision it can watch from.
#[tokio::test]
async fn a_slow_watcher_behind_the_compaction_point_is_canceled() {
    let mut c = start(slow_config()).await;
    let mut stream = slow_watcher(&mut c).await;
    c.compact(1000, None).await.unwrap();
    let mut delivered = 0;
    let canceled = loop {
        let r = next(&mut stream).await;
        if r.canceled() {
            break r;
        }
        delivered += r.events().len();
    };
    assert!(delivered < 1000, "{delivered}");
    assert_eq!(canceled.compact_revision(), 1001);
    assert!(
        canceled.cancel_reason().contains("compacted"),
        "{}",
        canceled.cancel_reason()
    );
}

#[tokio::test]
async fn cluster_members_and_status() {
    let mut c = start(WatchConfig::default()).await;
    c.put("k", "v", None).await.unwrap();
    let list = c.member_list().await.unwrap();
    assert_eq!(list.members().len(), 1);
    let me = &list.members()[0];
    assert_eq!((me.id(), me.is_learner()), (1, false));
    assert_eq!(me.peer_urls(), ["http://127.0.0.1:2380"]);

    let added = c
        .member_add(
            ["http://127.0.0.1:2480"],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let new = added.member().unwrap();
    assert!(new.is_learner());
    assert_eq!(added.member_list().len(), 2);
    // A member's peer URL changes (etcdctl member update).
    let updated = c
        .member_update(new.id(), ["http://127.0.0.1:2490".to_string()])
        .await
        .unwrap();
    assert!(
        updated
            .members()
            .iter()
            .any(|m| m.id() == new.id() && m.peer_urls() == ["http://127.0.0.1:2490"]),
        "{:?}",
        updated.members()
    );
    let (code, _) = status_of(
        c.member_update(77, ["http://127.0.0.1:1".to_string()])
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "NotFound");
    // Promotion: a learner becomes a voter, once; only known members.
    let promoted = c.member_promote(new.id()).await.unwrap();
    assert!(
        promoted
            .members()
            .iter()
            .any(|m| m.id() == new.id() && !m.is_learner()),
        "{:?}",
        promoted.members()
    );
    let (code, message) = status_of(c.member_promote(new.id()).await.unwrap_err());
    assert_eq!(code, "FailedPrecondition");
    assert!(
        message.contains("can only promote a learner member"),
        "{message}"
    );
    let (code, _) = status_of(c.member_promote(77).await.unwrap_err());
    assert_eq!(code, "NotFound");
    // Leadership: the one member leads already; another cannot take it without Raft.
    c.move_leader(1).await.unwrap();
    let (code, _) = status_of(c.move_leader(new.id()).await.unwrap_err());
    assert_eq!(code, "FailedPrecondition");
    let removed = c.member_remove(new.id()).await.unwrap();
    assert_eq!(removed.members().len(), 1);
    let (code, _) = status_of(c.member_remove(77).await.unwrap_err());
    assert_eq!(code, "NotFound");

    let status = c.status().await.unwrap();
    assert_eq!(status.version(), dengine_kv::ETCD_API_VERSION);
    assert_eq!(status.leader(), 1);
    assert_eq!(status.raft_term(), 1);
    assert!(status.raft_applied_index() >= 2);
    assert_eq!(status.raft_index(), status.raft_applied_index());
    assert!(status.db_size() > 0);
    assert_eq!(status.header().unwrap().revision(), 1);
}

#[tokio::test]
async fn hash_kv_tells_states_apart_and_equal_states_alike() {
    async fn writes(c: &mut Client, last: &str) {
        c.put("a", "1", None).await.unwrap();
        c.put("b", "2", None).await.unwrap();
        c.put("a", last, None).await.unwrap();
    }
    let mut one = start(WatchConfig::default()).await;
    let mut two = start(WatchConfig::default()).await;
    let mut other = start(WatchConfig::default()).await;
    writes(&mut one, "3").await;
    writes(&mut two, "3").await;
    writes(&mut other, "4").await;
    let h = one.hash_kv(0).await.unwrap();
    let revision = h.header().unwrap().revision();
    assert_eq!(revision, 3);
    assert_eq!(h.hash(), two.hash_kv(0).await.unwrap().hash());
    assert_eq!(h.hash(), two.hash_kv(revision).await.unwrap().hash());
    assert_eq!(h.hash(), one.hash().await.unwrap().hash());
    assert_ne!(h.hash(), other.hash_kv(0).await.unwrap().hash());
    // The same value under another history (create revision, version) differs too.
    let mut rewritten = start(WatchConfig::default()).await;
    rewritten.put("b", "2", None).await.unwrap();
    rewritten.put("a", "3", None).await.unwrap();
    rewritten.put("b", "2", None).await.unwrap();
    assert_ne!(h.hash(), rewritten.hash_kv(0).await.unwrap().hash());
    // A past revision hashes the key space as it was then; a future one is etcd's error.
    let mut stopped = start(WatchConfig::default()).await;
    stopped.put("a", "1", None).await.unwrap();
    stopped.put("b", "2", None).await.unwrap();
    let at_two = one.hash_kv(2).await.unwrap().hash();
    assert_eq!(at_two, stopped.hash_kv(0).await.unwrap().hash());
    assert_ne!(at_two, h.hash());
    let (code, _) = status_of(one.hash_kv(9).await.unwrap_err());
    assert_eq!(code, "OutOfRange");
}

#[tokio::test]
async fn the_space_quota_raises_nospace_until_disarmed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let kv = dengine_kv::KvConfig {
        quota_bytes: 4096,
        ..dengine_kv::KvConfig::default()
    };
    let mut c = Client::connect(
        [common::serve_local_with(WatchConfig::default(), kv).await],
        None,
    )
    .await
    .unwrap();
    assert!(
        c.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );
    // Writes until one would pass the quota: refused with etcd's error, and the alarm is up.
    let value = vec![b'x'; 1000];
    let mut written = 0;
    let refusal = loop {
        match c.put(format!("k{written}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break status_of(e),
        }
        assert!(written < 10, "4 KiB of quota took {written} KiB");
    };
    assert!(written >= 2, "{written}");
    let no_space = (
        "ResourceExhausted".to_string(),
        "etcdserver: mvcc: database space exceeded".to_string(),
    );
    assert_eq!(refusal, no_space);
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    let raised: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(raised, [(1, AlarmType::Nospace)]);
    // While it is raised nothing that adds data goes in, even a small put or a transaction;
    // reads, deletes and compactions do.
    assert_eq!(
        status_of(c.put("small", "1", None).await.unwrap_err()),
        no_space
    );
    let txn = Txn::new().and_then([TxnOp::put("t", "1", None)]);
    assert_eq!(status_of(c.txn(txn).await.unwrap_err()), no_space);
    assert_eq!(c.get("k0", None).await.unwrap().kvs().len(), 1);
    for i in 0..written {
        c.delete(format!("k{i}"), None).await.unwrap();
    }
    assert_eq!(
        status_of(c.put("small", "1", None).await.unwrap_err()),
        no_space
    );
    // Disarmed (what `etcdctl alarm disarm` sends for each raised alarm): writes go in again.
    let mut member = AlarmOptions::new();
    member.with_member(1);
    let cleared = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(member))
        .await
        .unwrap();
    assert_eq!(cleared.alarms().len(), 1);
    assert!(
        c.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );
    c.put("small", "1", None).await.unwrap();
}

/// Maintenance.Snapshot (etcdctl snapshot save) streams a backup of the member's state: a
/// dengine backup file covering the index the state machine had applied.
#[tokio::test]
async fn snapshot_streams_a_backup_of_the_state() {
    let mut c = start(WatchConfig::default()).await;
    c.put("a", "1", None).await.unwrap();
    let last = c.put("b", "2", None).await.unwrap();
    let mut stream = c.snapshot().await.unwrap();
    let mut file = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        file.extend_from_slice(message.blob());
        assert_eq!(
            message.remaining_bytes() == 0,
            stream_done(&file),
            "{}",
            file.len()
        );
    }
    let seed = dengine::backup::decode(&file).unwrap();
    let state =
        dengine_kv::proto::dengine::kv::v1::StoreSnapshot::decode(seed.data.to_bytes().unwrap())
            .unwrap();
    // The backup covers the index the state machine had applied (the two puts and what came
    // before them).
    assert_eq!(seed.index, state.applied_index);
    assert!(seed.index >= 2, "{}", seed.index);
    assert_eq!(state.revision, last.header().unwrap().revision());
    let keys: Vec<_> = state.kvs.iter().map(|kv| kv.key.to_vec()).collect();
    assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
}

/// Whether `file` holds a whole backup (its announced length and the trailer).
fn stream_done(file: &[u8]) -> bool {
    dengine::backup::decode(file).is_ok()
}
