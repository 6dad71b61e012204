//! A three-member `dengine-kv` cluster (real Raft, redb logs, gRPC on loopback) driven with the
//! `etcd-client` crate: reads and writes through the leader and through followers (write
//! forwarding, linearizable and serializable reads on followers), watches on followers, a
//! leader crash with writes and watches in flight, a restarted member catching up, a write
//! that waits out an election, and the Cluster/Maintenance APIs.
//!
//! The tests take turns (one cluster at a time): the machines that run them may have two
//! cores, and three clusters electing at once with 300 ms election timeouts could flap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dengine_kv::{AutoCompaction, KvConfig, StateStorage};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, GetResponse, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use tokio::time::{Instant, timeout};

mod cluster_support;
use cluster_support::{CLUSTER_ID, PATIENCE, SERIAL, TestCluster, ok, read, wait_for};

fn values(r: &GetResponse) -> Vec<(String, String)> {
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn next(stream: &mut WatchStream) -> WatchResponse {
    timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response in time")
        .unwrap()
        .expect("the watch stream open")
}

/// `(type, key, value, mod_revision, prev value)` of every event until `n` were received.
type Seen = (EventType, String, String, i64, Option<String>);

async fn events(stream: &mut WatchStream, n: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let r = next(stream).await;
        assert!(!r.canceled(), "watch canceled: {}", r.cancel_reason());
        for e in r.events() {
            let kv = e.kv().unwrap();
            // Every event of a response is at or below the response's revision.
            assert!(kv.mod_revision() <= r.header().unwrap().revision());
            seen.push((
                e.event_type(),
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_owned()),
            ));
        }
    }
    seen
}

/// Puts `key = value` through whichever of `clients` acknowledges it, trying them in turn;
/// the one that did comes first next time. Retrying after an unknown outcome is safe: the
/// same value is written again (an extra revision, the same content).
async fn put_anywhere(clients: &mut [(u64, Client)], key: &str, value: &str) -> (u64, i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for i in 0..clients.len() {
            let (id, c) = &mut clients[i];
            if let Ok(Ok(r)) = timeout(Duration::from_secs(2), c.put(key, value, None)).await {
                let done = (*id, r.header().unwrap().revision());
                clients.rotate_left(i);
                return done;
            }
        }
        assert!(Instant::now() < deadline, "timed out writing {key}={value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_through_the_leader_and_through_followers() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let followers = cluster.running_except(leader);
    let (f1, f2) = (followers[0], followers[1]);
    let mut cl = cluster.client(leader).await;
    let mut c1 = cluster.client(f1).await;
    let mut c2 = cluster.client(f2).await;

    // A write through the leader; a linearizable read on a follower sees it at once.
    let put = ok("put via the leader", async || {
        cl.put("k/a", "1", None).await
    })
    .await;
    let h = put.header().unwrap();
    assert_eq!((h.revision(), h.member_id()), (1, leader));
    assert_eq!(h.cluster_id(), CLUSTER_ID);
    let got = read("linearizable get on a follower", async || {
        c1.get("k/a", None).await
    })
    .await;
    assert_eq!(values(&got), pairs(&[("k/a", "1")]));
    assert_eq!(got.header().unwrap().member_id(), f1);
    assert_eq!(got.header().unwrap().revision(), 1);
    let kv = &got.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (1, 1, 1)
    );

    // A write through a follower is forwarded to the leader; the answer is the state
    // machine's, with the follower's header.
    let put = ok("put via a follower", async || {
        c1.put("k/b", "2", None).await
    })
    .await;
    assert_eq!(put.header().unwrap().revision(), 2);
    assert_eq!(put.header().unwrap().member_id(), f1);
    let got = read("linearizable get on the leader", async || {
        cl.get("k/b", None).await
    })
    .await;
    assert_eq!(values(&got), pairs(&[("k/b", "2")]));
    let got = read("linearizable get on the other follower", async || {
        c2.get("k/b", None).await
    })
    .await;
    assert_eq!(values(&got), pairs(&[("k/b", "2")]));
    // A serializable read on the other follower sees it once applied there.
    wait_for("a serializable read on a follower to see k/b", async || {
        let r = c2
            .get("k/b", Some(GetOptions::new().with_serializable()))
            .await
            .ok()?;
        (values(&r) == pairs(&[("k/b", "2")])).then_some(())
    })
    .await;

    // Put with prev_kv through a follower.
    let put = ok("put with prev_kv via a follower", async || {
        c2.put("k/a", "1b", Some(PutOptions::new().with_prev_key()))
            .await
    })
    .await;
    let prev = put.prev_key().expect("prev_kv");
    assert_eq!((prev.value_str().unwrap(), prev.mod_revision()), ("1", 1));
    assert_eq!(put.header().unwrap().revision(), 3);

    // Prefix range through a follower, and through the leader.
    ok("an unrelated put", async || {
        cl.put("k0", "outside", None).await
    })
    .await;
    for (name, c) in [("follower", &mut c1), ("leader", &mut cl)] {
        let r = read(&format!("prefix get on the {name}"), async || {
            c.get("k/", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        assert_eq!(values(&r), pairs(&[("k/a", "1b"), ("k/b", "2")]), "{name}");
        assert_eq!(r.count(), 2);
        assert_eq!(r.header().unwrap().revision(), 4, "{name}");
    }

    // Compare-and-swap through a follower: the success branch, then the failure branch.
    let cas = |expect: &str| {
        Txn::new()
            .when([Compare::value("k/a", CompareOp::Equal, expect)])
            .and_then([
                TxnOp::put("k/a", "swapped", None),
                TxnOp::put("k/owner", "f", None),
            ])
            .or_else([TxnOp::get("k/a", None)])
    };
    let won = ok("CAS via a follower", async || c1.txn(cas("1b")).await).await;
    assert!(won.succeeded());
    assert_eq!(won.header().unwrap().revision(), 5);
    assert_eq!(won.header().unwrap().member_id(), f1);
    let lost = ok("CAS via a follower, lost", async || c1.txn(cas("1b")).await).await;
    assert!(!lost.succeeded());
    assert_eq!(lost.header().unwrap().revision(), 5);
    match &lost.op_responses()[0] {
        TxnOpResponse::Get(g) => {
            assert_eq!(values(g), pairs(&[("k/a", "swapped")]));
            assert_eq!(g.kvs()[0].mod_revision(), 5);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Through the leader, on mod_revision: the failure branch, then the success branch.
    let on_rev = |rev: i64| {
        Txn::new()
            .when([Compare::mod_revision("k/owner", CompareOp::Equal, rev)])
            .and_then([TxnOp::put("k/owner", "leader", None)])
            .or_else([TxnOp::get("k/owner", None)])
    };
    let lost = ok("CAS via the leader, lost", async || cl.txn(on_rev(4)).await).await;
    assert!(!lost.succeeded());
    match &lost.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(values(g), pairs(&[("k/owner", "f")])),
        other => panic!("unexpected {other:?}"),
    }
    let won = ok("CAS via the leader", async || cl.txn(on_rev(5)).await).await;
    assert!(won.succeeded());
    assert_eq!(won.header().unwrap().revision(), 6);
    let got = read("linearizable get on a follower", async || {
        c2.get("k/owner", None).await
    })
    .await;
    assert_eq!(values(&got), pairs(&[("k/owner", "leader")]));

    // Delete with prev_kv through a follower (a prefix), then through the leader (one key).
    let del = ok("prefix delete via a follower", async || {
        c2.delete(
            "k/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
    })
    .await;
    assert_eq!(del.deleted(), 3);
    let prev: Vec<(String, String)> = del
        .prev_kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        prev,
        pairs(&[("k/a", "swapped"), ("k/b", "2"), ("k/owner", "leader")])
    );
    assert_eq!(del.header().unwrap().revision(), 7);
    let del = ok("delete via the leader", async || {
        cl.delete("k0", Some(DeleteOptions::new().with_prev_key()))
            .await
    })
    .await;
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value_str().unwrap(), "outside");
    assert_eq!(del.header().unwrap().revision(), 8);
    let all = read("count on a follower", async || {
        c1.get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
    })
    .await;
    assert_eq!(all.count(), 0);
    assert_eq!(all.header().unwrap().revision(), 8);
    wait_for(
        "serializable reads everywhere to see the deletes",
        async || {
            for c in [&mut c1, &mut c2, &mut cl] {
                let r = c
                    .get(
                        "",
                        Some(
                            GetOptions::new()
                                .with_all_keys()
                                .with_count_only()
                                .with_serializable(),
                        ),
                    )
                    .await
                    .ok()?;
                if r.count() != 0 || r.header()?.revision() != 8 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    drop((cl, c1, c2));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_member_that_knows_no_leader_waits_for_an_election() {
    let _turn = SERIAL.lock().await;
    // Member 1 alone of three cannot elect a leader: a put to it waits (it used to fail at
    // once with "etcdserver: no leader") and goes through once member 2 starts and the two
    // elect one.
    let mut cluster = TestCluster::start_only(&[1]).await;
    let mut c1 = cluster.client(1).await;
    let put = tokio::spawn(async move { c1.put("waited", "1", None).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!put.is_finished(), "the put waits while no leader is known");
    cluster.start_member(2).await;
    let revision = timeout(PATIENCE, put)
        .await
        .expect("the put ends once a leader is elected")
        .unwrap()
        .expect("the put succeeds")
        .header()
        .unwrap()
        .revision();
    assert_eq!(revision, 1, "the put is the first revision");
    let mut c2 = cluster.client(2).await;
    let got = read("the waited put, on member 2", async || {
        c2.get("waited", None).await
    })
    .await;
    assert_eq!(values(&got), pairs(&[("waited", "1")]));
    cluster.start_member(3).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_sees_the_leaders_writes() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let followers = cluster.running_except(leader);
    let mut cl = cluster.client(leader).await;
    let mut c1 = cluster.client(followers[0]).await;
    let mut c2 = cluster.client(followers[1]).await;

    ok("a put before the watch", async || {
        cl.put("w/x", "0", None).await
    })
    .await;
    // Once the follower has applied it, a watch "from now" starts after it.
    wait_for("the follower to apply the first put", async || {
        let r = c1
            .get("w/x", Some(GetOptions::new().with_serializable()))
            .await
            .ok()?;
        (r.kvs().len() == 1).then_some(())
    })
    .await;
    let (_w, mut stream) = read("watch on a follower", async || {
        c1.watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
    })
    .await;
    let (_w2, mut plain) = read("watch without prev_kv on the follower", async || {
        c1.watch("w/x", None).await
    })
    .await;

    let r2 = ok("put", async || cl.put("w/x", "1", None).await).await;
    let r3 = ok("put", async || cl.put("other", "x", None).await).await;
    let r4 = ok("put", async || cl.put("w/y", "y", None).await).await;
    let r5 = ok("delete", async || cl.delete("w/x", None).await).await;
    let revs: Vec<i64> = [
        r2.header().unwrap().revision(),
        r3.header().unwrap().revision(),
        r4.header().unwrap().revision(),
        r5.header().unwrap().revision(),
    ]
    .to_vec();
    assert_eq!(revs, [2, 3, 4, 5]);

    let seen = events(&mut stream, 3).await;
    assert_eq!(
        seen,
        [
            (
                EventType::Put,
                "w/x".to_owned(),
                "1".to_owned(),
                2,
                Some("0".to_owned())
            ),
            (EventType::Put, "w/y".to_owned(), "y".to_owned(), 4, None),
            (
                EventType::Delete,
                "w/x".to_owned(),
                String::new(),
                5,
                Some("1".to_owned())
            ),
        ]
    );
    let seen = events(&mut plain, 2).await;
    assert_eq!(
        seen,
        [
            (EventType::Put, "w/x".to_owned(), "1".to_owned(), 2, None),
            (EventType::Delete, "w/x".to_owned(), String::new(), 5, None),
        ]
    );

    // A watch from a past revision on the other follower replays the history.
    let (_w3, mut replay) = read("watch from revision 1 on the other follower", async || {
        c2.watch(
            "w/x",
            Some(WatchOptions::new().with_start_revision(1).with_prev_key()),
        )
        .await
    })
    .await;
    let seen = events(&mut replay, 3).await;
    let summary: Vec<(EventType, i64, Option<String>)> =
        seen.into_iter().map(|(t, _, _, r, p)| (t, r, p)).collect();
    assert_eq!(
        summary,
        [
            (EventType::Put, 1, None),
            (EventType::Put, 2, Some("0".to_owned())),
            (EventType::Delete, 5, Some("1".to_owned())),
        ]
    );

    drop((_w, _w2, _w3, stream, plain, replay));
    drop((cl, c1, c2));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_crash_loses_no_acknowledged_write() {
    leader_crash_loses_nothing(KvConfig::default()).await;
}

/// The same with the keys in memory (`--state memory`): a restarted member rebuilds them from
/// its snapshot and log instead of resuming from its state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_crash_loses_no_acknowledged_write_with_the_state_in_memory() {
    leader_crash_loses_nothing(KvConfig {
        state: StateStorage::Memory,
        ..KvConfig::default()
    })
    .await;
}

async fn leader_crash_loses_nothing(kv: KvConfig) {
    let _turn = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with(None, kv).await;
    let leader = cluster.leader().await;
    let survivors = cluster.running_except(leader);

    // The writer writes f/0000, f/0001, ... one after the other, each through the first
    // member that acknowledges it (the leader first, then the survivors), and records
    // when each one was acknowledged.
    let mut clients = vec![(leader, cluster.client(leader).await)];
    for id in &survivors {
        clients.push((*id, cluster.client(*id).await));
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(String, Instant, u64)>>> = Arc::default();
    let writer = {
        let (acked, stop, log) = (acked.clone(), stop.clone(), log.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("f/{i:04}");
                let (via, _) = put_anywhere(&mut clients, &key, &format!("v{i}")).await;
                log.lock().unwrap().push((key, Instant::now(), via));
                acked.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    wait_for("20 writes before the crash", async || {
        (acked.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;
    let crashed_at = Instant::now();
    cluster.kill(leader).await;
    let before = acked.load(Ordering::Relaxed);
    wait_for("20 more writes after the crash", async || {
        (acked.load(Ordering::Relaxed) >= before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    timeout(PATIENCE, writer).await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();

    // (The crashed member may still acknowledge a write or two while it is being killed.)
    let first_after = log
        .iter()
        .find(|(_, at, via)| *at > crashed_at && *via != leader)
        .expect("writes acknowledged by the survivors after the crash");
    let gap = first_after.1 - crashed_at;
    eprintln!(
        "leader {leader} crashed; first write acknowledged {gap:?} later (via member {}); \
         {} writes acknowledged in all",
        first_after.2,
        log.len()
    );
    assert!(
        gap < Duration::from_secs(10),
        "writes acknowledged again only after {gap:?}"
    );

    // Every acknowledged write is there, read linearizably through each survivor.
    let expected: Vec<(String, String)> = log
        .iter()
        .enumerate()
        .map(|(i, (k, _, _))| (k.clone(), format!("v{i}")))
        .collect();
    for id in &survivors {
        let mut c = cluster.client(*id).await;
        let r = read("linearizable prefix get on a survivor", async || {
            c.get("f/", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        // The writer stops after an acknowledged write: no write of unknown outcome is left.
        assert_eq!(values(&r), expected, "member {id}");
    }

    // The crashed member restarts from its data directory and catches up.
    cluster.start_member(leader).await;
    let mut restarted = cluster.client(leader).await;
    wait_for("the restarted member to catch up", async || {
        let r = restarted
            .get(
                "f/",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .ok()?;
        (values(&r) == expected).then_some(())
    })
    .await;
    // And serves writes and linearizable reads again.
    let new_leader = cluster.leader().await;
    let mut all: Vec<(u64, Client)> = vec![(leader, restarted.clone())];
    put_anywhere(&mut all, "after", "restart").await;
    let r = read("linearizable get on the restarted member", async || {
        restarted.get("after", None).await
    })
    .await;
    assert_eq!(values(&r), pairs(&[("after", "restart")]));
    eprintln!("after the restart, member {new_leader} leads");

    drop((restarted, all));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_resumes_after_the_leader_crashes() {
    let _turn = SERIAL.lock().await;
    let mut cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let followers = cluster.running_except(leader);
    let (f1, f2) = (followers[0], followers[1]);
    let mut c1 = cluster.client(f1).await;
    let mut c2 = cluster.client(f2).await;

    let (_w, mut stream) = read("watch on a follower", async || {
        c1.watch(
            "x/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
    })
    .await;
    let r1 = ok("put", async || c2.put("x/1", "1", None).await).await;
    assert_eq!(r1.header().unwrap().revision(), 1);
    assert_eq!(
        events(&mut stream, 1).await,
        [(EventType::Put, "x/1".to_owned(), "1".to_owned(), 1, None)]
    );

    cluster.kill(leader).await;

    // The watch on the surviving follower goes on: it sees the writes made through the
    // survivors once a new leader is elected, in order, without gaps.
    let mut survivors = vec![(f2, c2.clone()), (f1, c1.clone())];
    let mut acked = Vec::new();
    for i in 2..=4 {
        let (_, rev) = put_anywhere(&mut survivors, "x/1", &i.to_string()).await;
        acked.push(rev);
    }
    let last = *acked.last().unwrap();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &Seen| e.3 < last) {
        seen.extend(events(&mut stream, 1).await);
    }
    let revs: Vec<i64> = seen.iter().map(|e| e.3).collect();
    let expected_revs: Vec<i64> = (2..=last).collect();
    assert_eq!(revs, expected_revs, "writes acknowledged at {acked:?}");
    // Each event's prev_kv is the previous event's value.
    let mut prev = "1".to_owned();
    for (t, key, value, _, p) in &seen {
        assert_eq!((*t, key.as_str()), (EventType::Put, "x/1"));
        assert_eq!(p.as_deref(), Some(prev.as_str()));
        prev.clone_from(value);
    }
    assert_eq!(prev, "4");
    if acked != [2, 3, 4] {
        eprintln!("writes retried after the crash: acknowledged at revisions {acked:?}");
    }

    // A watch opened on the other survivor after the crash replays from revision 1.
    let (_late, mut late) = read("watch from revision 1 on a survivor", async || {
        c2.watch(
            "x/",
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await
    })
    .await;
    let replayed: Vec<i64> = events(&mut late, 1 + seen.len())
        .await
        .iter()
        .map(|e| e.3)
        .collect();
    assert_eq!(replayed, (1..=last).collect::<Vec<_>>());

    drop((_w, _late, stream, late));
    drop((c1, c2, survivors));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_crashed_member_ends() {
    let _turn = SERIAL.lock().await;
    let mut cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let follower = cluster.running_except(leader)[0];
    let mut cl = cluster.client(leader).await;
    let mut cf = cluster.client(follower).await;

    let (_w, mut stream) = read("watch on the leader", async || {
        cl.watch("x/", Some(WatchOptions::new().with_prefix()))
            .await
    })
    .await;
    ok("put", async || cf.put("x/1", "1", None).await).await;
    assert_eq!(events(&mut stream, 1).await[0].3, 1);

    cluster.kill(leader).await;
    let killed_at = Instant::now();
    // The client sees an error or the end of the stream, not silence.
    let ended = timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(r)) if r.canceled() => break format!("canceled: {}", r.cancel_reason()),
                Ok(Some(r)) => assert!(r.events().is_empty(), "an event after the crash"),
                Ok(None) => break "the stream ended".to_owned(),
                Err(e) => break format!("error: {e:?}"),
            }
        }
    })
    .await;
    match ended {
        Ok(how) => eprintln!(
            "the watch on the crashed member ended {:?} after the crash: {how}",
            killed_at.elapsed()
        ),
        Err(_) => {
            // For the report: a new call to the crashed member, on the same client.
            let call = timeout(Duration::from_secs(3), cl.get("x/1", None)).await;
            panic!(
                "the watch on the crashed member neither ended nor failed within 10 s; \
                 meanwhile a new get on the same client gives {call:?}"
            );
        }
    }

    drop((_w, stream, cl, cf));
    cluster.stop().await;
}

/// The whole answer (status line, headers, body) to `GET path` over HTTP/1.1 at `addr`.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    answer
}

/// `(id, name, peer URLs, client URLs, is_learner)` of one member.
type MemberRow = (u64, String, Vec<String>, Vec<String>, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_and_status() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push((id, cluster.client(id).await));
    }
    ok("a put", async || clients[0].1.put("s", "1", None).await).await;

    let expected: Vec<MemberRow> = (1..=3)
        .map(|id| {
            (
                id,
                format!("node-{id}"),
                vec![format!("http://{}", cluster.addrs[&id])],
                vec![cluster.url(id)],
                false,
            )
        })
        .collect();
    for (id, c) in &mut clients {
        let list = read("member list", async || c.member_list().await).await;
        let mut got: Vec<MemberRow> = list
            .members()
            .iter()
            .map(|m| {
                (
                    m.id(),
                    m.name().to_owned(),
                    m.peer_urls().to_vec(),
                    m.client_urls().to_vec(),
                    m.is_learner(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(got, expected, "member list from member {id}");
        let h = list.header().unwrap();
        assert_eq!((h.cluster_id(), h.member_id()), (CLUSTER_ID, *id));
    }

    // Every member names the same leader in the same term (polled: the followers learn of
    // the put a little later, and an election may happen meanwhile on a loaded machine).
    let statuses = wait_for(
        "every member to report the put and the same leader and term",
        async || {
            let mut statuses = Vec::new();
            for (_, c) in &mut clients {
                let s = c.status().await.ok()?;
                if s.header()?.revision() != 1 || s.leader() == 0 {
                    return None;
                }
                statuses.push(s);
            }
            let agree = statuses.iter().all(|s| {
                (s.leader(), s.raft_term()) == (statuses[0].leader(), statuses[0].raft_term())
            });
            agree.then_some(statuses)
        },
    )
    .await;
    let mut leading = Vec::new();
    for ((id, _), s) in clients.iter().zip(&statuses) {
        let h = s.header().unwrap();
        assert_eq!(h.member_id(), *id);
        assert_eq!(s.version(), dengine_kv::ETCD_API_VERSION);
        assert!(!s.is_learner());
        assert!(s.raft_term() >= 1);
        assert!(
            s.raft_applied_index() >= 2,
            "{id}: {}",
            s.raft_applied_index()
        );
        assert!(s.raft_index() >= s.raft_applied_index());
        assert!(s.db_size() > 0);
        assert!(s.errors().is_empty(), "{:?}", s.errors());
        if s.leader() == h.member_id() {
            leading.push(*id);
        }
    }
    // Exactly one member says it is the leader: the one all of them name.
    assert_eq!(leading, [statuses[0].leader()]);
    if leading != [leader] {
        eprintln!("leadership moved from {leader} to {leading:?} during the test");
    }

    // HashKV: the members' key spaces hash alike at the same revision.
    let hashes = wait_for("every member's HashKV at one revision", async || {
        let mut seen = Vec::new();
        for (_, c) in &mut clients {
            let h = c.hash_kv(0).await.ok()?;
            seen.push((h.header()?.revision(), h.hash()));
        }
        seen.iter().all(|s| s.0 == seen[0].0).then_some(seen)
    })
    .await;
    assert!(hashes.iter().all(|h| h.1 == hashes[0].1), "{hashes:?}");

    // /metrics over HTTP/1.1 on the client port, next to the gRPC services (as etcd serves
    // it; `etcdctl check datascale` reads process_resident_memory_bytes there).
    let body = http_get(&cluster.clients[&1], "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\nprocess_resident_memory_bytes "), "{body}");

    // Defragment: the member asked (a follower here) takes a snapshot covering what it had
    // applied and compacts its log behind it; the others are not asked.
    let asked = (1..=3).find(|id| *id != statuses[0].leader()).unwrap();
    let node = cluster.members[&asked].node();
    let applied = node.status().await.unwrap().applied_index;
    let mut c = cluster.client(asked).await;
    ok("defragment", async || c.defragment().await).await;
    let snapshot = node.status().await.unwrap().snapshot;
    let covered = snapshot.map_or(0, |s| s.last_included.index);
    assert!(
        covered >= applied && covered > 0,
        "member {asked}'s snapshot covers {covered}, it had applied {applied}"
    );

    drop(clients);
    cluster.stop().await;
}

/// The gRPC code name and message of a failed call.
fn status_of(err: etcd_client::Error) -> (String, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_and_membership_calls_through_a_follower() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let target = (1..=3).find(|id| *id != leader).unwrap();

    // MoveLeader goes to the leader (etcdctl move-leader finds it); a follower refuses it.
    let (code, message) = status_of(
        cluster
            .client(target)
            .await
            .move_leader(target)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "Unavailable");
    assert!(message.contains("not leader"), "{message}");
    ok("move-leader", async || {
        let mut c = cluster.client(cluster.leader().await).await;
        c.move_leader(target).await
    })
    .await;
    wait_for("every member to name the new leader", async || {
        for id in 1..=3 {
            let s = cluster.client(id).await.status().await.ok()?;
            if s.leader() != target {
                return None;
            }
        }
        Some(())
    })
    .await;
    let mut c = cluster.client(target).await;
    let (code, _) = status_of(c.move_leader(99).await.unwrap_err());
    assert_eq!(code, "NotFound");

    // Membership calls work through any member: a follower passes them on to the leader, and
    // passes back its answer or refusal. MemberPromote: only a learner, and only one close
    // enough to the leader's log to vote.
    drop(c);
    let follower = (1..=3).find(|id| *id != target).unwrap();
    let mut c = cluster.client(follower).await;
    let added = ok("member add --learner", async || {
        c.member_add(
            ["http://127.0.0.1:9"],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
    })
    .await;
    let learner = added.member().unwrap().id();
    // Listed as etcd lists a member that has not run yet: no name (etcdctl: "unstarted").
    let list = read("member list", async || c.member_list().await).await;
    let row = list.members().iter().find(|m| m.id() == learner).unwrap();
    assert_eq!((row.name(), row.is_learner()), ("", true));
    assert!(row.client_urls().is_empty());
    let (code, message) = status_of(c.member_promote(learner).await.unwrap_err());
    assert_eq!(code, "FailedPrecondition");
    assert!(
        message.contains("can only promote a learner member which is in sync with leader"),
        "{message}"
    );
    let (code, message) = status_of(c.member_promote(leader).await.unwrap_err());
    assert_eq!(code, "FailedPrecondition");
    assert!(
        message.contains("can only promote a learner member"),
        "{message}"
    );
    let (code, _) = status_of(c.member_promote(99).await.unwrap_err());
    assert_eq!(code, "NotFound");
    let removed = ok("member remove", async || c.member_remove(learner).await).await;
    assert_eq!(removed.members().len(), 3);
    let list = read("member list", async || c.member_list().await).await;
    assert!(list.members().iter().all(|m| m.id() != learner));

    drop(c);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_get_the_client_apis_checks() {
    use dengine_kv::proto::dengine::kv::v1::{
        Command, ForwardRequest, command, forward_client::ForwardClient,
    };
    use dengine_kv::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
    use dengine_kv::{KvError, decode_command_response};
    use prost::Message;

    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let follower = cluster.running_except(leader)[0];
    let puts = |n: usize| -> Vec<RequestOp> {
        (0..n)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("t/{i:04}").into(),
                    value: "v".into(),
                    ..Default::default()
                })),
            })
            .collect()
    };
    let txn = |n: usize| Command {
        op: Some(command::Op::Txn(TxnRequest {
            success: puts(n),
            ..Default::default()
        })),
        ..Default::default()
    };
    // Straight to the leader's internal Forward service, as a follower forwards a write: the
    // 1 000-operation transaction the client API refuses is refused here too, with the same
    // error, and so are an oversized command and an undecodable one.
    // The internal service is served to members only: not on the client port.
    let mut on_client_port = ForwardClient::connect(cluster.url(leader)).await.unwrap();
    let err = on_client_port
        .propose(ForwardRequest {
            command: txn(1).encode_to_vec().into(),
            from: follower,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    let peer_url = format!("http://{}", cluster.addrs[&leader]);
    let mut forward = ForwardClient::connect(peer_url).await.unwrap();
    let mut send = async |command: bytes::Bytes| {
        let reply = forward
            .propose(ForwardRequest {
                command,
                from: follower,
            })
            .await
            .unwrap()
            .into_inner();
        decode_command_response(&reply.response)
    };
    assert_eq!(
        send(txn(1000).encode_to_vec().into()).await,
        Err(KvError::InvalidArgument(
            "too many operations in txn request".into()
        ))
    );
    let huge = Command {
        op: Some(command::Op::Put(PutRequest {
            key: "big".into(),
            value: vec![b'x'; 2 << 20].into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    assert_eq!(
        send(huge.encode_to_vec().into()).await,
        Err(KvError::InvalidArgument("request is too large".into()))
    );
    assert!(matches!(
        send(bytes::Bytes::from_static(b"\xff\xff")).await,
        Err(KvError::InvalidArgument(_))
    ));
    // Nothing reached the log.
    let mut c = cluster.client(follower).await;
    let all = read("count on a follower", async || {
        c.get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
    })
    .await;
    assert_eq!((all.count(), all.header().unwrap().revision()), (0, 0));
    // The client API refuses the big transaction too; one within the limit, written through
    // a follower (forwarded), is applied.
    let ops = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("t/{i:04}"), "v", None))
            .collect()
    };
    let refused = c.txn(Txn::new().and_then(ops(1000))).await.unwrap_err();
    assert!(
        refused.to_string().contains("too many operations"),
        "{refused}"
    );
    let done = ok("a 128-operation txn via a follower", async || {
        c.txn(Txn::new().and_then(ops(128))).await
    })
    .await;
    assert_eq!(done.header().unwrap().revision(), 1);

    // The same checks on the stream followers use (`Forward/ProposeStream`): every write of
    // a message is answered under its own id, the refused ones with the client API's error.
    use dengine_kv::proto::dengine::kv::v1::{ForwardBatch, ForwardItem, forward_result};
    let put = |key: &str| Command {
        op: Some(command::Op::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: "s".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let item = |id: u64, command: &Command| ForwardItem {
        id,
        command: command.encode_to_vec().into(),
        trace: Default::default(),
        session: None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ForwardBatch>(4);
    tx.send(ForwardBatch {
        from: follower,
        items: vec![
            item(7, &put("s/1")),
            item(8, &txn(1000)),
            item(9, &put("s/2")),
        ],
    })
    .await
    .unwrap();
    let mut answers = forward
        .propose_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut by_id = std::collections::BTreeMap::new();
    while by_id.len() < 3 {
        let batch = timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("answers in time")
            .unwrap()
            .expect("the stream open");
        for r in batch.results {
            let Some(forward_result::Outcome::Response(response)) = r.outcome else {
                panic!("write {} failed: {:?}", r.id, r.outcome);
            };
            by_id.insert(r.id, decode_command_response(&response).map(|_| ()));
        }
    }
    assert_eq!(
        by_id,
        std::collections::BTreeMap::from([
            (7, Ok(())),
            (
                8,
                Err(KvError::InvalidArgument(
                    "too many operations in txn request".into()
                ))
            ),
            (9, Ok(())),
        ])
    );
    // A message claiming another sender ends the stream with a refusal, and nothing of it is
    // proposed.
    tx.send(ForwardBatch {
        from: leader,
        items: vec![item(10, &put("s/forged"))],
    })
    .await
    .unwrap();
    let refused = timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("the refusal in time")
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let forged = read("s/forged on the leader", async || {
        c.get("s/forged", None).await
    })
    .await;
    assert_eq!(forged.count(), 0);
    assert_eq!(
        read("s/1 and s/2", async || c
            .get("s/", Some(GetOptions::new().with_prefix()))
            .await)
        .await
        .count(),
        2
    );

    drop(c);
    cluster.stop().await;
}

/// With client sessions on, a follower forwards writes in a session of its own (thesis
/// §6.3): a write whose leader crashed before answering is resent to the next leader and
/// applied once. The leader answers a resent item of a session with its first answer; and
/// writes through a follower across a leader crash all succeed, each applied once (every
/// key's version is 1), where without sessions a write caught by the crash fails with an
/// unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_in_a_session_apply_once_across_a_leader_crash() {
    use dengine_kv::proto::dengine::kv::v1::{
        Command, ForwardBatch, ForwardItem, ForwardSession, OpenSessionRequest, command,
        forward_client::ForwardClient, forward_result,
    };
    use dengine_kv::proto::etcdserverpb::PutRequest;
    use prost::Message;

    let _turn = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with_sessions(KvConfig::default()).await;
    let leader = cluster.leader().await;
    let follower = cluster.running_except(leader)[0];

    // The leader's side, as a follower would call it: one put sent twice in a session.
    let mut forward = ForwardClient::connect(format!("http://{}", cluster.addrs[&leader]))
        .await
        .unwrap();
    let session = forward
        .open_session(OpenSessionRequest { from: follower })
        .await
        .unwrap()
        .into_inner()
        .session;
    let put = Command {
        op: Some(command::Op::Put(PutRequest {
            key: "once/a".into(),
            value: "1".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let item = |id| ForwardItem {
        id,
        command: put.encode_to_vec().into(),
        trace: Default::default(),
        session: Some(ForwardSession {
            id: session,
            seq: 1,
            first_unanswered: 1,
        }),
    };
    let mut answers = Vec::new();
    for id in [1, 2] {
        let batch = ForwardBatch {
            from: follower,
            items: vec![item(id)],
        };
        let mut stream = forward
            .propose_stream(tokio_stream::iter([batch]))
            .await
            .unwrap()
            .into_inner();
        let reply = timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("one answer");
        match &reply.results[0].outcome {
            Some(forward_result::Outcome::Response(r)) => answers.push(r.clone()),
            other => panic!("item {id}: {other:?}"),
        }
    }
    assert_eq!(answers[0], answers[1], "the resend gets the first answer");
    let mut c = cluster.client(leader).await;
    let once = read("once/a", async || c.get("once/a", None).await).await;
    assert_eq!(once.kvs()[0].version(), 1, "applied once");

    // Writes through a follower while the leader crashes: every one succeeds, once.
    let mut via = cluster.client(follower).await;
    let writer = {
        let mut via = via.clone();
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..60 {
                let key = format!("once/f/{i:03}");
                if let Err(e) = via.put(key.clone(), "v", None).await {
                    failed.push(format!("{key}: {e}"));
                }
            }
            failed
        })
    };
    wait_for("10 writes through the follower", async || {
        let r = via
            .get(
                "once/f/",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .ok()?;
        (r.count() >= 10).then_some(())
    })
    .await;
    cluster.kill(leader).await;
    let failed = timeout(PATIENCE, writer).await.unwrap().unwrap();
    assert!(
        failed.is_empty(),
        "writes failed across the crash: {failed:?}"
    );
    let all = read("the follower's writes", async || {
        via.get("once/f/", Some(GetOptions::new().with_prefix()))
            .await
    })
    .await;
    assert_eq!(all.kvs().len(), 60);
    for kv in all.kvs() {
        assert_eq!(kv.version(), 1, "{:?} applied more than once", kv.key_str());
    }
    drop((c, via));
    cluster.stop().await;
}

/// `etcdctl snapshot save` and `dengine-kv serve --restore-from`: a backup streamed from one
/// cluster's leader founds a new cluster whose every member holds the same keys and revision,
/// and which takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_one_cluster_founds_another_with_its_keys() {
    let _turn = SERIAL.lock().await;
    let first = TestCluster::start().await;
    let leader = first.leader().await;
    let mut c = first.client(leader).await;
    for i in 0..40 {
        ok("a put", async || {
            c.put(format!("k{i:02}"), format!("v{i}"), None).await
        })
        .await;
    }
    ok("a delete", async || c.delete("k00", None).await).await;
    // The leader answered every write after applying it: its state holds them all.
    let mut stream = ok("snapshot", async || c.snapshot().await).await;
    let (mut file, mut remaining) = (Vec::new(), Vec::new());
    while let Some(message) = stream.message().await.unwrap() {
        file.extend_from_slice(message.blob());
        remaining.push(message.remaining_bytes());
    }
    assert_eq!(remaining.last(), Some(&0), "{remaining:?}");
    let seed = dengine::backup::decode(&file).unwrap();
    assert!(seed.index > 40, "the backup covers index {}", seed.index);
    let revision = ok("a read", async || c.get("k01", None).await)
        .await
        .header()
        .unwrap()
        .revision();
    drop(c);
    first.stop().await;

    let backups = cluster_support::TempDir::new();
    let path = backups.path().join("backup.db");
    std::fs::write(&path, &file).unwrap();
    let second = TestCluster::start_from(Some(path)).await;
    second.leader().await;
    for id in 1..=3 {
        let mut c = second.client(id).await;
        let all = read("the restored keys", async || {
            c.get("k", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        assert_eq!(all.kvs().len(), 39, "member {id}");
        assert_eq!(all.kvs()[0].key_str().unwrap(), "k01");
        assert_eq!(all.kvs()[0].value_str().unwrap(), "v1");
        assert_eq!(all.header().unwrap().revision(), revision, "member {id}");
    }
    let mut c = second.client(1).await;
    let put = ok("a put after the restore", async || {
        c.put("after", "yes", None).await
    })
    .await;
    assert_eq!(put.header().unwrap().revision(), revision + 1);
    drop(c);
    second.stop().await;
}

/// Auto-compaction (etcd's `--auto-compaction-mode=revision`): the leader compacts the MVCC
/// history to its last N revisions through the log, so every member compacts, and reads a
/// few revisions back still see the values of then; after the leader crashes, the new leader
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_the_history_to_its_last_revisions() {
    let _turn = SERIAL.lock().await;
    let kv = KvConfig {
        auto_compaction: AutoCompaction::Revisions(5),
        ..KvConfig::default()
    };
    let mut cluster = TestCluster::start_with(None, kv).await;
    let mut last = 0;
    for round in 0..2 {
        let leader = cluster.leader().await;
        let mut c = cluster.client(leader).await;
        for i in 0..20 {
            let put = ok("a put", async || {
                c.put("k", format!("v{round}-{i}"), None).await
            })
            .await;
            last = put.header().unwrap().revision();
        }
        for id in cluster.members.keys().copied().collect::<Vec<_>>() {
            let mut m = cluster.client(id).await;
            let at = |revision| {
                Some(
                    GetOptions::new()
                        .with_revision(revision)
                        .with_serializable(),
                )
            };
            wait_for(
                "the old revisions compacted on every member",
                async || match m.get("k", at(last - 10)).await {
                    Err(e) if e.to_string().contains("compacted") => Some(()),
                    _ => None,
                },
            )
            .await;
            let old = read("a read 3 revisions back", async || {
                m.get("k", at(last - 3)).await
            })
            .await;
            assert_eq!(
                old.kvs()[0].value_str().unwrap(),
                format!("v{round}-16"),
                "member {id}"
            );
        }
        if round == 0 {
            cluster.kill(leader).await;
        }
    }
    cluster.stop().await;
}
