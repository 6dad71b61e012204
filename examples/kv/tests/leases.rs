//! Leases: the state machine's rules (grant, attach, revoke in one revision, checkpoints,
//! snapshots, the state file), and etcd's Lease API through the `etcd-client` crate on a
//! single member and on a 3-member cluster across a leader crash.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use dengine_core::StateMachine;
use dengine_kv::proto::dengine::kv::v1::{command, command_response, query, query_response};
use dengine_kv::proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
};
use dengine_kv::proto::mvccpb::event::EventType;
use dengine_kv::{
    AuthHub, KvConfig, KvError, KvStateMachine, WatchConfig, WatchFilter, WatchHub,
    decode_command_response, decode_query_response, encode_command, encode_query,
};
use etcd_client::{
    Client, EventType as ClientEvent, GetOptions, LockOptions, PutOptions, WatchOptions,
};

mod cluster_support;
mod common;
use cluster_support::{SERIAL, TestCluster, ok, read, wait_for};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn cmd(
    sm: &mut KvStateMachine,
    op: command::Op,
) -> Result<command_response::Result, KvError> {
    let response = sm.apply_next(encode_command(op)).await.unwrap();
    decode_command_response(&response)
}

async fn grant(sm: &mut KvStateMachine, id: i64, ttl: i64) -> Result<(), KvError> {
    cmd(sm, command::Op::LeaseGrant(LeaseGrantRequest { ttl, id }))
        .await
        .map(drop)
}

async fn put(sm: &mut KvStateMachine, key: &str, lease: i64) -> Result<(), KvError> {
    let req = PutRequest {
        key: b(key),
        value: b("v"),
        lease,
        ..Default::default()
    };
    cmd(sm, command::Op::Put(req)).await.map(drop)
}

/// Every live key with its lease.
async fn leases_of_keys(sm: &KvStateMachine) -> Vec<(String, i64)> {
    let req = RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        ..Default::default()
    };
    let answer = sm.query(encode_query(query::Op::Range(req))).await.unwrap();
    match decode_query_response(&answer).unwrap() {
        query_response::Result::Range(r) => r
            .kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.lease))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// (remaining TTL as checkpointed, granted TTL, keys) of a lease, as the state machine holds it.
async fn time_to_live(sm: &KvStateMachine, id: i64) -> (i64, i64, Vec<String>) {
    let req = LeaseTimeToLiveRequest { id, keys: true };
    let answer = sm
        .query(encode_query(query::Op::LeaseTimeToLive(req)))
        .await
        .unwrap();
    match decode_query_response(&answer).unwrap() {
        query_response::Result::LeaseTimeToLive(r) => (
            r.ttl,
            r.granted_ttl,
            r.keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn keys_follow_their_leases_and_a_revoke_deletes_them_in_one_revision() {
    let hub = WatchHub::default();
    let mut sm = KvStateMachine::new(hub.clone());
    grant(&mut sm, 10, 60).await.unwrap();
    grant(&mut sm, 20, 60).await.unwrap();
    assert_eq!(grant(&mut sm, 10, 5).await, Err(KvError::lease_exists()));
    // A grant changes no key: the revision stays.
    assert_eq!(sm.revision(), 0);
    assert_eq!(put(&mut sm, "k", 99).await, Err(KvError::lease_not_found()));
    put(&mut sm, "a", 10).await.unwrap();
    put(&mut sm, "b", 10).await.unwrap();
    put(&mut sm, "c", 20).await.unwrap();
    put(&mut sm, "d", 0).await.unwrap();
    // A later put moves "c" to no lease; ignore_lease keeps "b"'s.
    put(&mut sm, "c", 0).await.unwrap();
    let keep = PutRequest {
        key: b("b"),
        value: b("w"),
        ignore_lease: true,
        ..Default::default()
    };
    cmd(&mut sm, command::Op::Put(keep)).await.unwrap();
    assert_eq!(
        leases_of_keys(&sm).await,
        [
            ("a".into(), 10),
            ("b".into(), 10),
            ("c".into(), 0),
            ("d".into(), 0)
        ]
    );
    assert_eq!(
        time_to_live(&sm, 10).await,
        (0, 60, vec!["a".into(), "b".into()])
    );
    assert_eq!(time_to_live(&sm, 20).await, (0, 60, Vec::new()));
    // A transaction compares on a key's lease.
    let compare = |lease| TxnRequest {
        compare: vec![Compare {
            key: b("a"),
            target: CompareTarget::Lease as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Lease(lease)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b("t"),
                value: b("1"),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    for (lease, succeeded) in [(10, true), (20, false)] {
        match cmd(&mut sm, command::Op::Txn(compare(lease)))
            .await
            .unwrap()
        {
            command_response::Result::Txn(t) => assert_eq!(t.succeeded, succeeded, "{lease}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The revoke: both keys gone at one new revision, watchers see two deletes.
    let mut events = hub.subscribe();
    let before = sm.revision();
    cmd(
        &mut sm,
        command::Op::LeaseRevoke(LeaseRevokeRequest { id: 10 }),
    )
    .await
    .unwrap();
    assert_eq!(sm.revision(), before + 1);
    events.changed().await.unwrap();
    let seen = hub
        .read_events(before + 1, &WatchFilter::new(b("\0"), b("\0")), 100)
        .unwrap();
    let deletes: Vec<_> = seen
        .events
        .iter()
        .map(|e| {
            assert_eq!(e.r#type, EventType::Delete as i32);
            String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned()
        })
        .collect();
    assert_eq!(deletes, ["a", "b"]);
    assert_eq!(
        leases_of_keys(&sm).await,
        [("c".into(), 0), ("d".into(), 0), ("t".into(), 0)]
    );
    assert_eq!(time_to_live(&sm, 10).await.0, -1);
    // Revoking a lease without keys changes no revision; an unknown one is refused.
    let at = sm.revision();
    cmd(
        &mut sm,
        command::Op::LeaseRevoke(LeaseRevokeRequest { id: 20 }),
    )
    .await
    .unwrap();
    assert_eq!(sm.revision(), at);
    assert_eq!(
        cmd(
            &mut sm,
            command::Op::LeaseRevoke(LeaseRevokeRequest { id: 20 })
        )
        .await,
        Err(KvError::lease_not_found())
    );
}

#[tokio::test]
async fn leases_survive_a_snapshot_and_a_restart_of_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let mut sm =
        KvStateMachine::open(WatchHub::default(), AuthHub::default(), &path, 8 << 20).unwrap();
    grant(&mut sm, 7, 30).await.unwrap();
    put(&mut sm, "x", 7).await.unwrap();
    put(&mut sm, "y", 7).await.unwrap();
    put(&mut sm, "z", 0).await.unwrap();
    let checkpoint =
        command::Op::LeaseCheckpoint(dengine_kv::proto::etcdserverpb::LeaseCheckpointRequest {
            checkpoints: vec![dengine_kv::proto::etcdserverpb::LeaseCheckpoint {
                id: 7,
                remaining_ttl: 12,
            }],
        });
    cmd(&mut sm, checkpoint).await.unwrap();
    let expected = (12, 30, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(time_to_live(&sm, 7).await, expected);

    // A snapshot carries them to another replica.
    let snapshot = sm.snapshot().await.unwrap();
    let mut other = KvStateMachine::new(WatchHub::default());
    other
        .install_snapshot(snapshot, sm.applied_index())
        .await
        .unwrap();
    assert_eq!(time_to_live(&other, 7).await, expected);
    assert_eq!(leases_of_keys(&other).await, leases_of_keys(&sm).await);

    // The state file keeps them across a restart.
    let keys = leases_of_keys(&sm).await;
    drop(sm);
    let mut sm =
        KvStateMachine::open(WatchHub::default(), AuthHub::default(), &path, 8 << 20).unwrap();
    assert_eq!(time_to_live(&sm, 7).await, expected);
    assert_eq!(leases_of_keys(&sm).await, keys);
    // And the reopened table still works: revoking deletes the keys.
    cmd(
        &mut sm,
        command::Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
    )
    .await
    .unwrap();
    assert_eq!(leases_of_keys(&sm).await, [("z".to_string(), 0)]);
}

#[tokio::test]
async fn the_lease_api_on_one_member_grants_renews_expires_and_revokes() {
    let url = common::serve_local_with(WatchConfig::default(), KvConfig::default()).await;
    let mut c = Client::connect([url], None).await.unwrap();
    // A TTL below the minimum (2 s by default) is raised to it.
    let short = c.lease_grant(1, None).await.unwrap();
    assert_eq!(short.ttl(), 2);
    assert!(short.id() > 0);
    let chosen = c
        .lease_grant(
            60,
            Some(etcd_client::LeaseGrantOptions::new().with_id(0x1234)),
        )
        .await
        .unwrap();
    assert_eq!(chosen.id(), 0x1234);
    let taken = c
        .lease_grant(
            60,
            Some(etcd_client::LeaseGrantOptions::new().with_id(0x1234)),
        )
        .await
        .unwrap_err();
    assert!(
        taken.to_string().contains("lease already exists"),
        "{taken}"
    );
    c.put("svc/a", "1", Some(PutOptions::new().with_lease(short.id())))
        .await
        .unwrap();
    c.put("svc/b", "2", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .unwrap();
    let got = c.get("svc/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].lease(), short.id());
    let ttl = c
        .lease_time_to_live(
            0x1234,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!((58..=60).contains(&ttl.ttl()), "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"svc/b".to_vec()]);
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    let mut want = vec![short.id(), 0x1234];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Kept alive past its TTL, the short lease's key stays.
    let (mut keeper, mut acks) = c.lease_keep_alive(short.id()).await.unwrap();
    for _ in 0..6 {
        keeper.keep_alive().await.unwrap();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!(ack.ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(c.get("svc/a", None).await.unwrap().count(), 1);
    // Left alone, it expires: its key is deleted and a watcher sees the delete.
    let (_watcher, mut stream) = c.watch("svc/a", Some(WatchOptions::new())).await.unwrap();
    drop(keeper);
    let deleted = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the key is deleted when its lease expires")
        .unwrap()
        .unwrap();
    assert_eq!(deleted.events()[0].event_type(), ClientEvent::Delete);
    let gone = c.lease_time_to_live(short.id(), None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    // A keep-alive of an expired lease answers TTL 0.
    let (mut keeper, mut acks) = c.lease_keep_alive(short.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().ttl(), 0);

    c.lease_revoke(0x1234).await.unwrap();
    assert_eq!(
        c.get("svc/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        0
    );
    let unknown = c.lease_revoke(0x1234).await.unwrap_err();
    assert!(
        unknown.to_string().contains("requested lease not found"),
        "{unknown}"
    );
}

/// A lease kept alive through a follower survives the leader's crash (the new leader extends
/// it); a lease nobody keeps alive expires under the new leader, and its key goes on every
/// member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_kept_alive_through_a_follower_and_survive_a_leader_crash() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let follower = cluster.running_except(leader)[0];
    let mut c = cluster.client(follower).await;
    let kept = ok("grant", async || c.lease_grant(3, None).await)
        .await
        .id();
    let lapsed = ok("grant", async || c.lease_grant(3, None).await)
        .await
        .id();
    ok("put", async || {
        c.put("kept", "1", Some(PutOptions::new().with_lease(kept)))
            .await
    })
    .await;
    ok("put", async || {
        c.put("lapsed", "1", Some(PutOptions::new().with_lease(lapsed)))
            .await
    })
    .await;
    // Keep-alives every 500 ms through the follower, from a task of their own.
    let keep_url = cluster.url(follower);
    let keeping = tokio::spawn(async move {
        let mut c = Client::connect([keep_url], None).await.unwrap();
        loop {
            if let Ok((mut keeper, mut acks)) = c.lease_keep_alive(kept).await {
                while keeper.keep_alive().await.is_ok() {
                    match tokio::time::timeout(Duration::from_secs(2), acks.message()).await {
                        Ok(Ok(Some(ack))) => assert!(ack.ttl() > 0, "the kept lease expired"),
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    cluster.kill(leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    // The lapsed lease expires (3 s + the extension); the kept one does not.
    let mut other = cluster.client(new_leader).await;
    wait_for("the lapsed lease's key to go", async || {
        let r = other.get("lapsed", None).await.ok()?;
        (r.count() == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = read("get kept", async || other.get("kept", None).await).await;
    assert_eq!(still.count(), 1, "a lease kept alive expired");
    let ttl = read("ttl", async || other.lease_time_to_live(kept, None).await).await;
    assert!(ttl.ttl() > 0, "{}", ttl.ttl());
    keeping.abort();
    cluster.stop().await;
}

/// A lock taken with a lease ends with the lease: the next locker gets it when the holder's
/// lease is revoked (as it would when it expires).
/// `max_leases` bounds the lease table: a grant beyond it is refused with RESOURCE_EXHAUSTED
/// and a message naming the setting, until a lease is revoked.
#[tokio::test]
async fn grants_beyond_max_leases_are_refused_until_a_lease_is_revoked() {
    let mut kv = KvConfig::default();
    kv.leases.max_leases = 3;
    let url = common::serve_local_with(WatchConfig::default(), kv).await;
    let mut c = Client::connect([url], None).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(c.lease_grant(60, None).await.unwrap().id());
    }
    // A chosen id is refused as a random one is.
    for options in [
        None,
        Some(etcd_client::LeaseGrantOptions::new().with_id(77)),
    ] {
        let refused = c.lease_grant(60, options).await.unwrap_err();
        match &refused {
            etcd_client::Error::GRpcStatus(s) => {
                // (etcd-client speaks an older tonic: compared by the code's number)
                assert_eq!(
                    s.code() as i32,
                    tonic::Code::ResourceExhausted as i32,
                    "{refused}"
                );
                assert!(s.message().contains("too many leases"), "{refused}");
                assert!(s.message().contains("--max-leases"), "{refused}");
                assert!(!s.message().contains("  "), "one line of prose: {refused}");
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other}"),
        }
    }
    assert_eq!(c.leases().await.unwrap().leases().len(), 3);
    c.lease_revoke(ids[0]).await.unwrap();
    let again = c.lease_grant(60, None).await.unwrap();
    assert!(again.id() > 0);
}

#[tokio::test]
async fn a_lock_held_with_a_lease_is_released_when_the_lease_ends() {
    let url = common::serve_local_with(WatchConfig::default(), KvConfig::default()).await;
    let mut c = Client::connect([url.clone()], None).await.unwrap();
    let first = c.lease_grant(60, None).await.unwrap().id();
    let second = c.lease_grant(60, None).await.unwrap().id();
    let held = c
        .lock("job", Some(LockOptions::new().with_lease(first)))
        .await
        .unwrap();
    assert!(held.key().starts_with(b"job/"));
    let mut other = Client::connect([url], None).await.unwrap();
    let waiting = tokio::spawn(async move {
        other
            .lock("job", Some(LockOptions::new().with_lease(second)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the second locker did not wait");
    c.lease_revoke(first).await.unwrap();
    let key = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second locker gets the lock once the first lease ends")
        .unwrap()
        .unwrap();
    assert_eq!(key, format!("job/{second:x}").into_bytes());
}
