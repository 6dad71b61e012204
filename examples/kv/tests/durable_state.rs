//! The durable state machine (`KvStateMachine::open`): it answers exactly as the in-memory
//! one does, resumes after a restart from its file (applied index, keys, history, alarms),
//! and refuses a file it cannot trust.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use bytes::Bytes;
use dengine_core::StateMachine;
use dengine_core::store::Command as Committed;
use dengine_kv::proto::dengine::kv::v1::{
    HashRequest, StoreSnapshot, command, query, query_response,
};
use dengine_kv::proto::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
    alarm_request::AlarmAction,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
};
use dengine_kv::{
    AuthHub, KvStateMachine, WatchHub, decode_query_response, encode_command, encode_query,
};
use dengine_storage_common::FileRegion;
use prost::Message;

#[path = "support/xorshift.rs"]
mod xorshift;
use xorshift::Rng;

fn open(path: &Path) -> KvStateMachine {
    KvStateMachine::open(WatchHub::default(), AuthHub::default(), path, 4 << 20).unwrap()
}

/// One of 40 keys.
fn random_key(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("k/{:02}", rng.below(40)))
}

/// A random command over 40 keys: puts (some with prev_kv), range deletes, transactions that
/// compare and write, and compactions (some refused: too old or in the future).
fn random_command(rng: &mut Rng, revision: i64) -> command::Op {
    match rng.below(10) {
        0..=4 => command::Op::Put(PutRequest {
            key: random_key(rng),
            value: Bytes::from(vec![b'v'; rng.below(30) as usize]),
            prev_kv: rng.below(2) == 0,
            ..Default::default()
        }),
        5 => {
            let (a, b) = (random_key(rng), random_key(rng));
            command::Op::DeleteRange(DeleteRangeRequest {
                key: a.clone().min(b.clone()),
                range_end: if rng.below(3) == 0 {
                    Bytes::new()
                } else {
                    a.max(b)
                },
                prev_kv: rng.below(2) == 0,
            })
        }
        6..=8 => {
            let key = random_key(rng);
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: random_key(rng),
                    value: Bytes::from_static(b"txn"),
                    ..Default::default()
                })),
            };
            let delete = RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: random_key(rng),
                    ..Default::default()
                })),
            };
            let read = RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: Bytes::from_static(b"k/"),
                    range_end: Bytes::from_static(b"k0"),
                    revision: rng.below(revision.max(1) as u64 + 1) as i64,
                    ..Default::default()
                })),
            };
            command::Op::Txn(TxnRequest {
                compare: vec![Compare {
                    key,
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Version as i32,
                    target_union: Some(TargetUnion::Version(1)),
                    ..Default::default()
                }],
                success: vec![put.clone(), read.clone(), delete],
                failure: vec![read, put],
            })
        }
        _ => command::Op::Compact(CompactionRequest {
            revision: revision - rng.below(12) as i64 + 2,
            physical: false,
        }),
    }
}

/// Every read the two must agree on: all keys and a prefix at every revision still kept, and
/// the hash.
async fn reads(revision: i64) -> Vec<Bytes> {
    let mut out = Vec::new();
    for at in (revision - 15).max(0)..=revision {
        for (key, end) in [("\0", "\0"), ("k/1", "k/2")] {
            out.push(encode_query(query::Op::Range(RangeRequest {
                key: Bytes::from(key),
                range_end: Bytes::from(end),
                revision: at,
                ..Default::default()
            })));
        }
        out.push(encode_query(query::Op::Hash(HashRequest { revision: at })));
    }
    out
}

#[tokio::test]
async fn a_durable_store_answers_every_command_and_read_as_the_memory_store_does() {
    for seed in [1u64, 7, 42] {
        let dir = tempfile::tempdir().unwrap();
        let mut durable = open(&dir.path().join("kv.redb"));
        let mut memory = KvStateMachine::new(WatchHub::default());
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut index = 0;
        for batch in 0..40 {
            // Batches of 1 to 8 commands, with a Raft entry (no command) between some.
            let mut commands = Vec::new();
            for _ in 0..=rng.below(8) {
                index += 1 + rng.below(2);
                let op = random_command(&mut rng, durable.revision());
                commands.push(Committed {
                    index,
                    data: encode_command(op),
                });
            }
            let a = durable.apply(&commands, index).await.unwrap();
            let b = memory.apply(&commands, index).await.unwrap();
            assert_eq!(a, b, "seed {seed}, batch {batch}: responses differ");
            assert_eq!(durable.revision(), memory.revision());
            for q in reads(durable.revision()).await {
                assert_eq!(
                    durable.query(q.clone()).await.unwrap(),
                    memory.query(q).await.unwrap(),
                    "seed {seed}, batch {batch}: reads differ"
                );
            }
        }
        assert!(
            durable.compact_revision() > 0,
            "seed {seed}: no compaction ran"
        );
        assert_eq!(
            durable.snapshot().await.unwrap(),
            memory.snapshot().await.unwrap(),
            "seed {seed}: snapshots differ"
        );
    }
}

fn put(key: &str, value: &str) -> command::Op {
    command::Op::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    })
}

async fn range_all(sm: &KvStateMachine, revision: i64) -> Bytes {
    sm.query(encode_query(query::Op::Range(RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        revision,
        ..Default::default()
    })))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_restart_resumes_from_the_file_with_keys_history_and_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let (before_now, before_past, snapshot) = {
        let mut sm = open(&path);
        assert_eq!(sm.applied_index(), 0, "a new file");
        let mut index = 1; // a configuration entry first
        for i in 0..30 {
            index += 1;
            let command = Committed {
                index,
                data: encode_command(put(&format!("r/{}", i % 7), &format!("v{i}"))),
            };
            sm.apply(&[command], index).await.unwrap();
        }
        let alarm = command::Op::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 9,
            alarm: AlarmType::Nospace as i32,
        });
        index += 1;
        let c = Committed {
            index,
            data: encode_command(alarm),
        };
        // Raft's own entries after the last command: the batch covers them too.
        sm.apply(&[c], index + 2).await.unwrap();
        assert_eq!(sm.applied_index(), 34);
        let now = range_all(&sm, 0).await;
        let past = range_all(&sm, 12).await;
        (now, past, sm.snapshot().await.unwrap())
    };
    let mut sm = open(&path);
    assert_eq!(
        sm.applied_index(),
        34,
        "the runtime resumes after this index"
    );
    assert_eq!(sm.revision(), 30);
    assert_eq!(range_all(&sm, 0).await, before_now);
    assert_eq!(
        range_all(&sm, 12).await,
        before_past,
        "the history survives"
    );
    assert_eq!(sm.snapshot().await.unwrap(), snapshot, "alarms and all");
    // The alarm still caps writes after the restart.
    let refused = sm
        .apply_next(encode_command(put("r/x", "1")))
        .await
        .unwrap();
    let refused = dengine_kv::decode_command_response(&refused).unwrap_err();
    assert!(refused.to_string().contains("space"), "{refused}");
    // The hub starts empty at the file's revision; older revisions come from the history.
    assert_eq!(sm.watch_hub().revision(), 30);
    let history = sm
        .query(encode_query(query::Op::WatchHistory(
            dengine_kv::proto::dengine::kv::v1::WatchHistoryRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                from: 25,
                through: 30,
            },
        )))
        .await
        .unwrap();
    match decode_query_response(&history).unwrap() {
        query_response::Result::WatchHistory(h) => assert_eq!(h.events.len(), 6),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_file_and_survives_a_restart() {
    let mut source = KvStateMachine::new(WatchHub::default());
    for i in 0..50 {
        source
            .apply_next(encode_command(put(&format!("s/{i:02}"), "x")))
            .await
            .unwrap();
    }
    let snapshot = source.snapshot().await.unwrap();
    // Encoded a key at a time, it decodes as one message.
    let decoded = StoreSnapshot::decode(snapshot.clone()).unwrap();
    assert_eq!((decoded.kvs.len(), decoded.revision), (50, 50));
    assert_eq!(decoded.kvs[7].key, Bytes::from_static(b"s/07"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let mut sm = open(&path);
        sm.apply_next(encode_command(put("old", "gone after the install")))
            .await
            .unwrap();
        // A damaged snapshot is refused and the file keeps what it had.
        assert!(
            sm.install_snapshot(Bytes::from_static(b"\x0a\xff"), 50)
                .await
                .is_err()
        );
        assert_eq!(sm.revision(), 1);
        sm.install_snapshot(snapshot.clone(), 50).await.unwrap();
    }
    let sm = open(&path);
    assert_eq!((sm.applied_index(), sm.revision()), (50, 50));
    assert_eq!(range_all(&sm, 0).await, range_all(&source, 0).await);
}

/// The runtime's path for large states: the snapshot written into a file a piece at a time
/// (`write_snapshot`) and installed from the file (`install_snapshot_from`), never read whole
/// into memory. A snapshot file cut short is refused and the state is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streams_through_a_file_and_a_cut_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = open(&dir.path().join("source.redb"));
    for i in 0..3000 {
        let key = format!("k/{:04}", i % 2000);
        source
            .apply_next(encode_command(put(&key, &"v".repeat(i % 50))))
            .await
            .unwrap();
    }
    let file = dir.path().join("snapshot");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        source.write_snapshot(&mut out).await.unwrap();
        std::io::Write::flush(&mut out).unwrap();
    }
    let len = std::fs::metadata(&file).unwrap().len();
    let whole = source.snapshot().await.unwrap();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        whole,
        "the same bytes either way"
    );
    let data = FileRegion::open(&file, 0, len).unwrap().into_data();
    let mut target = open(&dir.path().join("target.redb"));
    target
        .apply_next(encode_command(put("before", "kept if refused")))
        .await
        .unwrap();
    for cut in [1, len / 2, len - 1] {
        let short = FileRegion::open(&file, 0, cut).unwrap().into_data();
        let err = target.install_snapshot_from(short, 3000).await.unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert_eq!(
            target.revision(),
            1,
            "a refused snapshot changes nothing (cut at {cut})"
        );
    }
    target.install_snapshot_from(data, 3000).await.unwrap();
    assert_eq!(target.revision(), source.revision());
    for revision in [0, 1500, 2999] {
        assert_eq!(
            range_all(&target, revision).await,
            range_all(&source, revision).await,
            "revision {revision}"
        );
    }
}

/// A durable store's snapshot is written from a frozen view on another thread while writes
/// go on (`snapshot_view`): the same bytes as `write_snapshot` at the moment of the view —
/// keys, history, leases and their keys — whatever is applied after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_a_frozen_view_is_the_state_as_of_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = open(&dir.path().join("source.redb"));
    source
        .apply_next(encode_command(command::Op::LeaseGrant(LeaseGrantRequest {
            ttl: 60,
            id: 7,
        })))
        .await
        .unwrap();
    for i in 0..2000 {
        let key = format!("k/{:04}", i % 700);
        let mut op = put(&key, &"v".repeat(i % 40));
        if let command::Op::Put(p) = &mut op {
            p.lease = if i % 9 == 0 { 7 } else { 0 };
        }
        source.apply_next(encode_command(op)).await.unwrap();
    }
    let expected = source.snapshot().await.unwrap();
    let view = source
        .snapshot_view()
        .unwrap()
        .expect("a durable store gives a view");
    for i in 0..500 {
        source
            .apply_next(encode_command(put(&format!("k/{:04}", i), "after")))
            .await
            .unwrap();
    }
    let written = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        view.write_to(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert_eq!(
        written, expected,
        "the view's snapshot is the state as of the view"
    );
    let head = StoreSnapshot::decode(written.as_slice()).unwrap();
    assert!(head.complete && head.key_count == 700 && head.history_count > 0);
    assert!(
        head.kvs.iter().any(|kv| kv.lease == 7),
        "keys keep their lease"
    );
    assert_ne!(
        source.snapshot().await.unwrap(),
        expected,
        "the state moved on"
    );
}

/// A store in memory has no view: its snapshots are written between applies.
#[tokio::test]
async fn a_store_in_memory_gives_no_view() {
    let mut sm = KvStateMachine::new(WatchHub::default());
    sm.apply_next(encode_command(put("a", "1"))).await.unwrap();
    assert!(sm.snapshot_view().unwrap().is_none());
}

#[tokio::test]
async fn a_damaged_or_foreign_state_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = KvStateMachine::open(WatchHub::default(), AuthHub::default(), &path, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("kv.redb"), "{err}");
    // The file is left for the operator to inspect, not overwritten.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
}
