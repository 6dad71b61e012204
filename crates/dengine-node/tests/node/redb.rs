//! A cluster on durable redb log stores in temporary directories: writes survive a restart
//! of a node from its files, and a store with state is never bootstrapped again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dengine_core::NodeId;
use dengine_core::store::MemoryStateMachine;
use dengine_node::testing::LocalNetwork;
use dengine_node::{Consistency, Node, NodeBuilder, StartError};
use dengine_storage_redb::RedbStore;

use crate::common::{address, eventually, settings};

async fn open(dir: &Path) -> RedbStore {
    // A store closed a moment ago may still be held by a finishing blocking task.
    for _ in 0..100 {
        if let Ok(store) = RedbStore::open_or_create(dir) {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    RedbStore::open_or_create(dir).unwrap()
}

fn builder(
    net: &LocalNetwork,
    id: NodeId,
    store: RedbStore,
) -> NodeBuilder<RedbStore, MemoryStateMachine, dengine_node::testing::LocalTransport> {
    let b = NodeBuilder::new(settings(id))
        .log_store(store)
        .state_machine(MemoryStateMachine::new())
        .transport(net.transport(id));
    net.register(id, b.inbox());
    b
}

async fn propose(nodes: &BTreeMap<NodeId, Node>, cmd: impl Into<String>) {
    let cmd = &bytes::Bytes::from(cmd.into());
    eventually("a proposal on redb", || async move {
        for node in nodes.values() {
            if node.propose(cmd.clone()).await.is_ok() {
                return Some(());
            }
        }
        None
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_cluster_survives_a_restart() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |id: NodeId| dirs[(id - 1) as usize].path().to_path_buf();
    let net = LocalNetwork::new();
    let members: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, address(id))).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let store = open(&dir(id)).await;
        let node = builder(&net, id, store)
            .bootstrap(members.clone())
            .await
            .unwrap();
        nodes.insert(id, node);
    }
    propose(&nodes, "a=1").await;
    propose(&nodes, "b=2").await;

    // Group commit: many concurrent proposals share fsyncs.
    let mut leader = None;
    for node in nodes.values() {
        if node.status().await.unwrap().role == dengine_core::Role::Leader {
            leader = Some(node.clone());
        }
    }
    let leader = leader.expect("a leader after two commits");
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let leader = leader.clone();
            tokio::spawn(async move {
                leader
                    .propose(bytes::Bytes::from(format!("g{i}={i}")))
                    .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap().is_err() {
            // Leadership moved (a stalled machine can miss heartbeats): retry elsewhere.
            propose(&nodes, format!("g{i}={i}")).await;
        }
    }
    eprintln!(
        "300 concurrent proposals on redb in {:?}",
        started.elapsed()
    );

    // Stop node 3 and restart it from its files.
    let node3 = nodes.remove(&3).unwrap();
    node3.shutdown().await;
    drop(node3);
    net.unregister(3);
    propose(&nodes, "c=3").await;

    let refused = builder(&net, 3, open(&dir(3)).await)
        .bootstrap(members.clone())
        .await;
    assert!(
        matches!(refused, Err(StartError::AlreadyInitialized { .. })),
        "{refused:?}"
    );
    let node3 = builder(&net, 3, open(&dir(3)).await).start().await.unwrap();
    nodes.insert(3, node3.clone());
    eventually("node 3 to catch up from its files and the leader", || {
        let node3 = node3.clone();
        async move {
            let v = node3
                .read(bytes::Bytes::from_static(b"c"), Consistency::Linearizable)
                .await
                .ok()?;
            (v == "3").then_some(())
        }
    })
    .await;
    assert_eq!(
        node3
            .read(bytes::Bytes::from_static(b"a"), Consistency::Stale)
            .await
            .unwrap(),
        "1"
    );
    for node in nodes.values() {
        node.shutdown().await;
    }
}
