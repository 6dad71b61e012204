//! Failover after a graceful shutdown and after a crash, and catching up after a restart by
//! log and by snapshot.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_core::NodeId;
use dengine_node::{Consistency, NodeConfig};

use crate::common::{Cluster, eventually, settings};

async fn failover(crash: bool) {
    let mut c = Cluster::new(3).await;
    c.propose("before=1").await;
    let old = c.leader().await;
    if crash {
        c.kill(old).await;
    } else {
        c.shutdown(old).await;
    }
    let new = c.leader().await;
    assert_ne!(new, old);
    // The write acknowledged before the failure survives it.
    assert_eq!(c.read(new, "before", Consistency::Linearizable).await, "1");
    c.propose("after=1").await;
    for id in c.nodes.keys().copied().collect::<Vec<NodeId>>() {
        assert_eq!(c.read(id, "after", Consistency::Linearizable).await, "1");
    }
    // The old leader comes back (same store) and catches up.
    let node = c.start(old).await;
    eventually("the old leader to catch up", || {
        let node = node.clone();
        async move {
            let v = node
                .read(Bytes::from_static(b"after"), Consistency::Stale)
                .await
                .ok()?;
            (v == "1").then_some(())
        }
    })
    .await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_the_leader_shuts_down() {
    failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_the_leader_crashes() {
    failover(true).await;
}

fn slow_elections(id: NodeId) -> NodeConfig {
    let mut s = settings(id);
    s.raft.election_timeout_ms = 3000;
    s.shutdown.transfer_timeout_ms = 2000;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_leadership_over() {
    let mut c = Cluster::with_settings(3, slow_elections).await;
    c.node(1).campaign().await.unwrap();
    c.propose("a=1").await;
    let old = c.leader().await;
    let term = c.status(old).await.unwrap().term;
    let stopped = Instant::now();
    c.shutdown(old).await;
    // Another node leads well before an election timeout (3 s, and the followers ignore
    // candidates for that long after the last heartbeat): leadership was handed over.
    let new = eventually("a new leader", || {
        let c = &c;
        async move { c.current_leader().await }
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        stopped.elapsed()
    );
    let st = c.status(new).await.unwrap();
    assert_ne!(new, old);
    assert!(st.term > term);
    assert_eq!(c.read(new, "a", Consistency::Linearizable).await, "1");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_by_log() {
    let mut c = Cluster::new(3).await;
    c.propose("k0=v").await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.shutdown(follower).await;
    for i in 1..=30 {
        c.propose(&format!("k{i}=v{i}")).await;
    }
    let commit = c.status(c.leader().await).await.unwrap().commit_index;
    c.start(follower).await;
    c.wait_applied(follower, commit).await;
    for i in [1, 15, 30] {
        let v = c.read(follower, &format!("k{i}"), Consistency::Stale).await;
        assert_eq!(v, format!("v{i}"));
    }
    assert!(
        c.status(follower)
            .await
            .unwrap()
            .snapshot
            .unwrap()
            .last_included
            .index
            == 0
    );
    c.shutdown_all().await;
}

fn compacting(id: NodeId) -> NodeConfig {
    let mut s = settings(id);
    s.snapshot.every_entries = 10;
    s.snapshot.trailing_entries = 3;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_by_snapshot_after_compaction() {
    let snapshots = tempfile::tempdir().unwrap();
    let mut c = Cluster::build(3, compacting, Some(snapshots.path().to_path_buf())).await;
    c.propose("k0=v0").await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.shutdown(follower).await;
    for i in 1..=40 {
        c.propose(&format!("k{i}=v{i}")).await;
    }
    let leader = c.leader().await;
    let st = c.status(leader).await.unwrap();
    let snap = st.snapshot.clone().unwrap().last_included.index;
    assert!(snap >= 20, "the leader snapshotted: {st:?}");

    c.start(follower).await;
    c.wait_applied(follower, st.commit_index).await;
    let fst = c.status(follower).await.unwrap();
    assert!(
        fst.snapshot.as_ref().unwrap().last_included.index >= snap,
        "the follower installed a snapshot: {fst:?}"
    );
    for i in [0, 1, 20, 40] {
        let v = c.read(follower, &format!("k{i}"), Consistency::Stale).await;
        assert_eq!(v, format!("v{i}"));
    }
    // The snapshot carried the membership: the follower still knows the cluster.
    assert_eq!(fst.membership.voters.len(), 3);
    // And it takes part in commits again.
    c.propose("late=1").await;
    assert_eq!(
        c.read(follower, "late", Consistency::Linearizable).await,
        "1"
    );
    // A manual snapshot on the follower works too.
    let meta = c.node(follower).trigger_snapshot().await.unwrap();
    assert!(meta.last_included.index >= st.commit_index);

    // The follower's log was reset to the snapshot; it restarts from its snapshot file.
    c.shutdown(follower).await;
    c.start(follower).await;
    assert_eq!(c.read(follower, "k20", Consistency::Stale).await, "v20");
    assert_eq!(
        c.read(follower, "late", Consistency::Linearizable).await,
        "1"
    );
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_despite_message_loss() {
    let mut c = Cluster::new(3).await;
    c.leader().await;
    c.net.set_drop_probability(0.1);
    for i in 0..30 {
        c.propose(&format!("lossy{i}=v{i}")).await;
    }
    c.net.heal();
    let leader = c.leader().await;
    let commit = c.status(leader).await.unwrap().commit_index;
    for id in 1..=3 {
        c.wait_applied(id, commit).await;
        for i in [0, 29] {
            let v = c.read(id, &format!("lossy{i}"), Consistency::Stale).await;
            assert_eq!(v, format!("v{i}"));
        }
    }
    let (_, dropped) = c.net.counts();
    assert!(dropped > 0);
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_rejoins_as_follower() {
    let mut c = Cluster::new(3).await;
    c.propose("x=1").await;
    let old = c.leader().await;
    c.net.isolate(old);
    // The majority elects a new leader; check-quorum makes the old one step down.
    let new = eventually("a new leader in the majority", || {
        let c = &c;
        async move {
            let leader = c.current_leader().await?;
            (leader != old).then_some(leader)
        }
    })
    .await;
    // The old leader cannot confirm reads on its own.
    let read = c
        .node(old)
        .read(Bytes::from_static(b"x"), Consistency::Linearizable);
    let write = c.node(new).propose(Bytes::from_static(b"x=2"));
    let (read, write) = tokio::join!(read, write);
    assert!(read.is_err() || read.unwrap() == "1");
    write.unwrap();
    c.net.heal();
    let leader = c.leader().await;
    assert_ne!(
        c.status(old).await.unwrap().role,
        dengine_core::Role::Leader
    );
    assert_eq!(c.read(old, "x", Consistency::Linearizable).await, "2");
    assert_eq!(c.read(leader, "x", Consistency::Lease).await, "2");
    c.shutdown_all().await;
}

fn snapshot_every_20(id: NodeId) -> NodeConfig {
    let mut s = settings(id);
    s.snapshot.every_entries = 20;
    s
}

/// Members snapshot by count at their own points of the log (`SnapshotSettings::next_point`),
/// not all at the same index: with 20 entries a period, members 1, 2 and 3 at indexes 12, 4
/// and 17 of every period (a snapshot covers the batch that reached the point, so it may be
/// an index or two past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_snapshot_at_staggered_points_of_the_log() {
    let mut c = Cluster::with_settings(3, snapshot_every_20).await;
    for i in 0..70 {
        c.propose(&format!("k{i}=v")).await;
    }
    let leader = c.leader().await;
    let commit = c.status(leader).await.unwrap().commit_index;
    let mut phases = Vec::new();
    for id in 1..=3 {
        c.wait_applied(id, commit).await;
        let phase = snapshot_every_20(id).snapshot.next_point(id, 0).unwrap() % 20;
        phases.push(phase);
        // Its newest snapshot by count is the last of its points that it has applied.
        let newest = (commit - phase) / 20 * 20 + phase;
        let c = &c;
        let at = eventually(
            &format!("node {id} to snapshot at {newest}"),
            || async move {
                let index = c.status(id).await?.snapshot?.last_included.index;
                (index >= newest).then_some(index)
            },
        )
        .await;
        assert!(
            at - newest < 3,
            "node {id}: snapshot at {at}, its point {newest}"
        );
    }
    assert_eq!(phases, [12, 4, 17]);
    c.shutdown_all().await;
}
