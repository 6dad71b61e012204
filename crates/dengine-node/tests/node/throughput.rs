//! Many concurrent proposals are batched (group commit) and all answered.

use std::time::Instant;

use bytes::Bytes;

use crate::common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_proposals_are_all_answered() {
    let mut c = Cluster::new(3).await;
    c.propose("warm=up").await;
    let leader = c.node(c.leader().await).clone();
    let started = Instant::now();
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let leader = leader.clone();
            tokio::spawn(async move { leader.propose(Bytes::from(format!("c{i}={i}"))).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap().is_err() {
            // Leadership moved (a stalled machine can miss heartbeats): retry elsewhere.
            c.propose(&format!("c{i}={i}")).await;
        }
    }
    let elapsed = started.elapsed();
    eprintln!("2000 proposals in {elapsed:?}");
    let st = leader.status().await.unwrap();
    assert!(st.commit_index >= 2002);
    assert_eq!(
        c.read(leader.id(), "c1999", dengine_node::Consistency::Stale)
            .await,
        "1999"
    );
    c.shutdown_all().await;
}
