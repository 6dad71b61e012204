//! Pipelined writes: the event loop keeps working while a synced write is on the disk, and
//! the writes handed out meanwhile go to the disk together, in order, with one sync (group
//! commit across turns). Thesis §10.2.1 (the leader's write runs in parallel with the rest of
//! the work); the `Ready` contract (writes durable in the order they are handed out).

use std::time::Duration;

use bytes::Bytes;

use crate::common::{eventually, settings, single, wait_leader};
use crate::test_store::TestStore;

async fn last_log_index(node: &dengine_node::Node) -> Option<u64> {
    // Bounded: a loop stuck on the held write would never answer.
    let status = tokio::time::timeout(Duration::from_secs(1), node.status()).await;
    Some(status.ok()?.ok()?.last_log_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_during_a_slow_write_are_taken_and_written_together_after_it() {
    let store = TestStore::default();
    let node = single(store.clone(), settings(1)).await.unwrap();
    wait_leader(&node).await;
    // Everything so far (the new leader's entry included) written and applied.
    let before = eventually("the log to settle", || async {
        let st = node.status().await.ok()?;
        (st.applied_index >= 1 && st.applied_index == st.last_log_index)
            .then_some(st.last_log_index)
    })
    .await;

    store.hold_writes();
    let x = tokio::spawn({
        let node = node.clone();
        async move { node.propose(Bytes::from_static(b"x=1")).await }
    });
    // The loop answers while the write of x is held on the disk...
    eventually("x to be appended while its write is held", || async {
        (last_log_index(&node).await? == before + 1).then_some(())
    })
    .await;
    // ...and takes more proposals.
    let later: Vec<_> = ["y=2", "z=3"]
        .into_iter()
        .map(|p| {
            let node = node.clone();
            tokio::spawn(async move { node.propose(Bytes::from(p)).await })
        })
        .collect();
    eventually("y and z to be appended while x's write is held", || async {
        (last_log_index(&node).await? == before + 3).then_some(())
    })
    .await;
    assert!(
        !x.is_finished(),
        "x cannot be acknowledged before its write"
    );
    // A held write is recorded once it passes the gate.
    let written_before_release = store.entry_writes().len();

    store.release();
    x.await.unwrap().unwrap();
    for p in later {
        p.await.unwrap().unwrap();
    }
    let writes = store.entry_writes();
    assert_eq!(
        writes[written_before_release..],
        [vec![before + 1], vec![before + 2, before + 3]],
        "x's write, then one write for both proposals that arrived during it: {writes:?}"
    );
    // Every entry was written exactly once, in order.
    let all: Vec<u64> = writes.concat();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    node.shutdown().await;
}
