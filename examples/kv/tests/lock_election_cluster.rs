//! etcd's `Lock` and `Election` services on a three-member `dengine-kv` cluster (real Raft,
//! gRPC on loopback), driven by the `etcd-client` crate with one client per member: a lock
//! held through one member makes a `Lock` through another wait until it is released through
//! the third; a campaign through a follower waits for the leader's resignation, and an
//! observer on a third member sees every leader and proclamation.
//!
//! The tests take turns with the other cluster tests of this binary (see `cluster_support`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use etcd_client::{
    Client, Error, GetOptions, LeaderResponse, ObserveStream, ProclaimOptions, ResignOptions,
};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

mod cluster_support;
use cluster_support::{PATIENCE, SERIAL, TestCluster, ok, read};

/// How long a call that must block is watched not to return.
const BLOCKED: Duration = Duration::from_millis(500);

/// The keys under `prefix` (a linearizable read through `c`).
async fn queue(c: &Client, prefix: &str) -> Vec<String> {
    let mut c = c.clone();
    let r = read("get the queue", async || {
        c.get(prefix, Some(GetOptions::new().with_prefix())).await
    })
    .await;
    r.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

/// Waits until there are `n` keys under `prefix`.
async fn queue_of(c: &Client, prefix: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while queue(c, prefix).await.len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} keys under {prefix}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// The answer of a background call that must come soon.
async fn answer<T>(call: JoinHandle<Result<T, Error>>) -> T {
    timeout(PATIENCE, call)
        .await
        .expect("the call returns in time")
        .unwrap()
        .unwrap()
}

async fn observed(stream: &mut ObserveStream) -> LeaderResponse {
    timeout(PATIENCE, stream.message())
        .await
        .expect("an observe response in time")
        .unwrap()
        .expect("the observe stream open")
}

fn value_of(r: &LeaderResponse) -> String {
    r.kv().unwrap().value_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_and_an_election_across_three_members() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let follower = cluster.running_except(leader)[0];
    let other = cluster.running_except(leader)[1];
    let on_leader = cluster.client(leader).await;
    let on_follower = cluster.client(follower).await;
    let on_other = cluster.client(other).await;

    // --- Lock: held through a follower, waited for through the leader, released through
    // the third member.
    let mut c = on_follower.clone();
    let held = ok("lock through a follower", async || {
        c.lock("shared", None).await
    })
    .await;
    let mut c = on_leader.clone();
    let waiting = tokio::spawn(async move { c.lock("shared", None).await });
    queue_of(&on_other, "shared/", 2).await;
    sleep(BLOCKED).await;
    assert!(!waiting.is_finished(), "the second Lock waits");
    let mut c = on_other.clone();
    let key = held.key().to_vec();
    ok("unlock through the third member", async || {
        c.unlock(key.clone()).await
    })
    .await;
    let second = answer(waiting).await;
    assert_ne!(second.key(), held.key());
    assert_eq!(
        queue(&on_follower, "shared/").await,
        [std::str::from_utf8(second.key()).unwrap()]
    );
    let mut c = on_leader.clone();
    let key = second.key().to_vec();
    ok("unlock", async || c.unlock(key.clone()).await).await;

    // --- Election: observed on the third member, campaigns through a follower and the
    // leader.
    let mut c = on_other.clone();
    let mut observing = ok("observe", async || c.observe("chief").await).await;
    let mut c = on_follower.clone();
    let won = ok("campaign through a follower", async || {
        c.campaign("chief", "first", 0).await
    })
    .await;
    let first = won.leader().unwrap().clone();
    assert_eq!(value_of(&observed(&mut observing).await), "first");
    let mut c = on_leader.clone();
    let proclaim = ProclaimOptions::new().with_leader(first.clone());
    ok("proclaim through the leader", async || {
        c.proclaim("first, again", Some(proclaim.clone())).await
    })
    .await;
    assert_eq!(value_of(&observed(&mut observing).await), "first, again");

    let mut c = on_leader.clone();
    let campaigning = tokio::spawn(async move { c.campaign("chief", "second", 0).await });
    queue_of(&on_other, "chief/", 2).await;
    sleep(BLOCKED).await;
    assert!(!campaigning.is_finished(), "the second campaigner waits");
    let mut c = on_other.clone();
    let resign = ResignOptions::new().with_leader(first.clone());
    ok("resign through the third member", async || {
        c.resign(Some(resign.clone())).await
    })
    .await;
    let next = answer(campaigning).await.leader().unwrap().clone();
    assert_ne!(next.key(), first.key());
    let seen = observed(&mut observing).await;
    assert_eq!(value_of(&seen), "second");
    assert_eq!(seen.kv().unwrap().key(), next.key());
    let mut c = on_follower.clone();
    let now = read("leader", async || c.leader("chief").await).await;
    assert_eq!(value_of(&now), "second");

    drop(observing);
    cluster.stop().await;
}
