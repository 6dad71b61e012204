//! Elections, proposals, reads, client limits and the start modes.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::store::{MemoryStateMachine, MemoryStore};
use dengine_core::{NodeId, Role};
use dengine_node::{Consistency, NodeBuilder, ProposeError, StartError};

use crate::common::{Cluster, address, eventually, settings, single, single_with, wait_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader() {
    let mut c = Cluster::new(3).await;
    let leader = c.leader().await;
    let st = c.status(leader).await.unwrap();
    assert_eq!(st.role, Role::Leader);
    assert_eq!(st.leader_address.as_deref(), Some(address(leader).as_str()));
    // The leader reports every peer's progress.
    assert_eq!(st.peers.len(), 2, "{st:?}");
    // Every transport was told where its peers are.
    for id in 1..=3u64 {
        let peers = c.net.peers_of(id);
        let expected: BTreeMap<NodeId, String> = (1..=3)
            .filter(|&p| p != id)
            .map(|p| (p, address(p)))
            .collect();
        assert_eq!(peers, expected);
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_returns_the_state_machines_response() {
    let mut c = Cluster::new(3).await;
    assert_eq!(c.propose("x=1").await, "");
    // MemoryStateMachine answers the previous value of the key.
    assert_eq!(c.propose("x=2").await, "1");
    let leader = c.leader().await;
    assert_eq!(c.read(leader, "x", Consistency::Linearizable).await, "2");
    c.shutdown_all().await;
}

/// `Node::barrier`: once it returns on a follower, every write committed before the call is
/// applied there, so a stale (local) read sees the last one (thesis §6.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_on_a_follower_waits_until_earlier_writes_are_applied() {
    let mut c = Cluster::new(3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    for round in 0..20 {
        c.propose(&format!("b={round}")).await;
        c.node(follower).barrier().await.unwrap();
        assert_eq!(
            c.read(follower, "b", Consistency::Stale).await,
            round.to_string(),
            "round {round}"
        );
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_carries_the_leaders_address() {
    let mut c = Cluster::new(3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    match c.node(follower).propose(Bytes::from_static(b"a=1")).await {
        Err(ProposeError::Refused(dengine_core::ProposeError::NotLeader {
            leader: l,
            leader_address,
        })) => {
            assert_eq!(l, Some(leader));
            assert_eq!(leader_address, Some(address(leader)));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_lease_and_stale_reads() {
    let mut c = Cluster::new(3).await;
    c.propose("k=v1").await;
    let leader = c.leader().await;
    for id in 1..=3 {
        // Linearizable reads on followers are confirmed through the leader.
        assert_eq!(c.read(id, "k", Consistency::Linearizable).await, "v1");
        assert_eq!(c.read(id, "k", Consistency::Lease).await, "v1");
    }
    // A stale read reflects the local state machine, which catches up.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.propose("k=v2").await;
    eventually("the follower's stale read to see v2", || {
        let node = c.node(follower).clone();
        async move {
            let v = node
                .read(Bytes::from_static(b"k"), Consistency::Stale)
                .await
                .ok()?;
            (v == "v2").then_some(())
        }
    })
    .await;
    // Reads of a key never written answer empty.
    assert_eq!(c.read(leader, "nope", Consistency::Lease).await, "");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_when_max_pending_is_exceeded() {
    fn small_pending(id: NodeId) -> dengine_node::NodeConfig {
        let mut s = settings(id);
        s.client.max_pending = 2;
        s.client.propose_timeout_ms = 3000;
        s
    }
    let mut c = Cluster::with_settings(3, small_pending).await;
    c.propose("warm=up").await;
    let leader = c.leader().await;
    // Cut the leader off: its proposals cannot commit and stay pending.
    c.net.isolate(leader);
    let node = c.node(leader).clone();
    let mut pending = Vec::new();
    for i in 0..2 {
        let node = node.clone();
        pending.push(tokio::spawn(async move {
            node.propose(Bytes::from(format!("p{i}=1"))).await
        }));
    }
    // Wait until both are accepted (hold their slots), then one more is refused.
    tokio::time::sleep(Duration::from_millis(50)).await;
    match node.propose(Bytes::from_static(b"third=1")).await {
        Err(ProposeError::Busy(_)) => {}
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(matches!(
        node.read(Bytes::from_static(b"k"), Consistency::Stale)
            .await,
        Err(dengine_node::ReadError::Busy)
    ));
    c.net.heal();
    for p in pending {
        // Either applied after healing, refused by a step-down, or timed out: never hangs.
        let _ = p.await.unwrap();
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_proposals_are_refused() {
    let mut c = Cluster::new(1).await;
    c.leader().await;
    let big = Bytes::from(vec![b'x'; 2 << 20]);
    assert!(matches!(
        c.node(1).propose(big).await,
        Err(ProposeError::Refused(
            dengine_core::ProposeError::TooLarge { .. }
        ))
    ));
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_of_a_non_empty_store_is_refused_and_restart_never_rebootstraps() {
    let mut c = Cluster::new(1).await;
    c.propose("a=1").await;
    let before = c.status(1).await.unwrap();
    c.shutdown(1).await;

    let store = c.stores[&1].clone();
    let refused = NodeBuilder::new(settings(1))
        .log_store(store.clone())
        .state_machine(MemoryStateMachine::new())
        .transport(c.net.transport(1))
        .bootstrap(BTreeMap::from([(1, address(1))]))
        .await;
    match refused {
        Err(StartError::AlreadyInitialized { term, last_index }) => {
            assert_eq!(term, before.term);
            assert!(last_index >= 2);
        }
        other => panic!("expected AlreadyInitialized, got {other:?}"),
    }

    // start() restarts from the store: same membership, the log replayed, a later term.
    let node = c.start(1).await;
    eventually("the restarted node to lead again", || {
        let node = node.clone();
        async move {
            let st = node.status().await.ok()?;
            (st.role == Role::Leader && st.applied_index >= before.applied_index).then_some(st)
        }
    })
    .await;
    let st = node.status().await.unwrap();
    assert_eq!(st.membership, before.membership);
    assert!(st.term > before.term);
    assert_eq!(c.read(1, "a", Consistency::Linearizable).await, "1");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_voter_leads_without_waiting_for_an_election_timeout() {
    // With a ten-minute election timeout, only the start-up campaign of a sole voter can make
    // this node lead within the test's patience, on bootstrap and on restart alike.
    let mut s = settings(1);
    s.raft.election_timeout_ms = 600_000;
    let store = MemoryStore::new();
    let node = single(store.clone(), s.clone()).await.unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from_static(b"a=1")).await.unwrap();
    node.shutdown().await;

    let node = single_with(store, s, false).await.unwrap();
    wait_leader(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_on_an_empty_store_waits_to_join() {
    let mut c = Cluster::new(1).await;
    c.leader().await;
    // A node started without bootstrap on an empty store never elects itself.
    let store = MemoryStore::new();
    c.stores.insert(2, store);
    let joiner = c.start(2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = joiner.status().await.unwrap();
    assert_eq!(st.role, Role::Follower);
    assert_eq!(st.term, 0);
    assert!(st.membership.voters.is_empty());
    assert!(matches!(
        joiner.propose(Bytes::from_static(b"a=1")).await,
        Err(ProposeError::Refused(
            dengine_core::ProposeError::NotLeader { leader: None, .. }
        ))
    ));
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_without_quorum_times_out_and_shutdown_fails_pending_ones() {
    fn short_timeout(id: NodeId) -> dengine_node::NodeConfig {
        let mut s = settings(id);
        s.client.propose_timeout_ms = 2000;
        s
    }
    let mut c = Cluster::with_settings(3, short_timeout).await;
    c.propose("a=1").await;

    // A pending request is failed (not left hanging) when the node shuts down.
    let leader = c.leader().await;
    c.net.isolate(leader);
    let node = c.node(leader).clone();
    let pending = {
        let node = node.clone();
        tokio::spawn(async move { node.propose(Bytes::from_static(b"c=1")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.shutdown(leader).await;
    let result = pending.await.unwrap();
    assert_eq!(result, Err(ProposeError::ShuttingDown));
    // New requests on the stopped node are refused at once.
    assert_eq!(
        node.propose(Bytes::from_static(b"d=1")).await,
        Err(ProposeError::ShuttingDown)
    );
    assert!(node.is_stopped());

    // Accepted by a leader that then loses its quorum: the outcome is unknown.
    c.net.heal();
    let leader = c.leader().await;
    c.net.isolate(leader);
    assert_eq!(
        c.node(leader).propose(Bytes::from_static(b"b=1")).await,
        Err(ProposeError::Timeout)
    );
    c.net.heal();
    c.shutdown_all().await;
}
