//! Nodes started with `dengine::start`: real gRPC on loopback, redb in temporary
//! directories. Failover after a crash and after a graceful shutdown, no acknowledged write
//! lost, a restarted node catching up, and the admin service over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use common::{fast_timing, free_ports, leader_of, put, wait_for};
use dengine::core::store::MemoryStateMachine;
use dengine::grpc::admin_pb::admin_client::AdminClient;
use dengine::grpc::admin_pb::{AddLearnerRequest, NodeRequest, StatusRequest};
use dengine::{Command, Consistency, LogIndex, Node, Running, Settings, StateMachine};

/// A [`MemoryStateMachine`] that counts the snapshots it installed, and those it installed
/// from a file (the runtime hands over the file a snapshot lies in, not bytes in memory).
#[derive(Default)]
struct CountingInstalls {
    inner: MemoryStateMachine,
    installs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    from_files: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StateMachine for CountingInstalls {
    type Error = <MemoryStateMachine as StateMachine>::Error;

    async fn apply(
        &mut self,
        commands: &[Command],
        up_to: LogIndex,
    ) -> Result<Vec<Bytes>, Self::Error> {
        self.inner.apply(commands, up_to).await
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        self.inner.snapshot().await
    }

    async fn install_snapshot(&mut self, data: Bytes, up_to: LogIndex) -> Result<(), Self::Error> {
        self.inner.install_snapshot(data, up_to).await
    }

    async fn install_snapshot_from(
        &mut self,
        data: dengine::core::store::SnapshotData,
        up_to: LogIndex,
    ) -> Result<(), dengine::core::store::SnapshotIoError> {
        self.installs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if matches!(data, dengine::core::store::SnapshotData::Source(_)) {
            self.from_files
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.install_snapshot_from(data, up_to).await
    }

    async fn query(&self, request: Bytes) -> Result<Bytes, Self::Error> {
        self.inner.query(request).await
    }
}

fn settings(id: u64, port: u16, dir: &Path, members: &BTreeMap<u64, String>) -> Settings {
    let mut s = Settings::default();
    s.node.id = id;
    s.node.cluster_id = 99;
    s.node.listen_addr = format!("127.0.0.1:{port}");
    s.node.data_dir = dir.join(format!("node{id}"));
    s.node.initial_members = members.clone();
    s.node.admin_addr = Some("127.0.0.1:0".into());
    fast_timing(&mut s);
    // Snapshot and compact often, so a node that was down catches up by snapshot.
    s.snapshot.every_entries = 8;
    s.snapshot.trailing_entries = 2;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_cluster_fails_over_without_losing_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let mut running: BTreeMap<u64, Running> = BTreeMap::new();
    for id in 1..=3 {
        let s = settings(id, ports[id as usize - 1], dir.path(), &members);
        running.insert(
            id,
            dengine::start(s, MemoryStateMachine::new()).await.unwrap(),
        );
    }
    let handles: Vec<Node> = running.values().map(|r| r.node().clone()).collect();
    for i in 0..20 {
        put(&handles, &format!("k{i}"), &format!("v{i}")).await;
    }

    // Crash the leader.
    let leader = leader_of(&handles).await;
    let crashed = leader.id();
    running.remove(&crashed).unwrap().kill().await;
    let survivors: Vec<Node> = handles
        .iter()
        .filter(|n| n.id() != crashed)
        .cloned()
        .collect();
    let new_leader = leader_of(&survivors).await;
    assert_ne!(new_leader.id(), crashed);
    for i in 20..30 {
        put(&survivors, &format!("k{i}"), &format!("v{i}")).await;
    }
    for i in 0..30 {
        let v = new_leader
            .read(Bytes::from(format!("k{i}")), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(v, format!("v{i}"), "acknowledged write k{i} survived");
    }

    // The survivors compacted past what the crashed node has.
    let leader_snapshot = new_leader.status().await.unwrap().snapshot.unwrap();
    assert!(
        leader_snapshot.last_included.index > 20,
        "{leader_snapshot:?}"
    );

    // Restart the crashed node from its data directory: it catches up, by snapshot over gRPC.
    let s = settings(crashed, ports[crashed as usize - 1], dir.path(), &members);
    let counting = CountingInstalls::default();
    let (installs, from_files) = (counting.installs.clone(), counting.from_files.clone());
    let restarted = dengine::start(s, counting).await.unwrap();
    let node = restarted.node().clone();
    wait_for("the restarted node to catch up", async || {
        let v = node
            .read(Bytes::from_static(b"k29"), Consistency::Stale)
            .await
            .ok()?;
        (v == "v29").then_some(())
    })
    .await;
    let installed = node.status().await.unwrap().snapshot.unwrap();
    assert!(
        installed.last_included.index >= leader_snapshot.last_included.index,
        "caught up through the leader's snapshot: {installed:?}"
    );
    // Its own snapshot file at the restart, then the leader's, both installed from files.
    let installs = installs.load(std::sync::atomic::Ordering::SeqCst);
    assert!(installs >= 2, "{installs} snapshots installed");
    assert_eq!(
        from_files.load(std::sync::atomic::Ordering::SeqCst),
        installs,
        "every snapshot was installed from a file, none from bytes in memory"
    );
    running.insert(crashed, restarted);

    // Graceful shutdown of the current leader hands leadership over.
    let handles: Vec<Node> = running.values().map(|r| r.node().clone()).collect();
    let leader = leader_of(&handles).await;
    let id = leader.id();
    running.remove(&id).unwrap().shutdown().await;
    let rest: Vec<Node> = handles.iter().filter(|n| n.id() != id).cloned().collect();
    put(&rest, "after", "shutdown").await;
    for (_, r) in running {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_adds_promotes_and_removes_nodes_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let mut running = Vec::new();
    for id in 1..=3 {
        let s = settings(id, ports[id as usize - 1], dir.path(), &members);
        running.push(dengine::start(s, MemoryStateMachine::new()).await.unwrap());
    }
    let nodes: Vec<Node> = running.iter().map(|r| r.node().clone()).collect();
    let admin_addrs: BTreeMap<u64, String> = running
        .iter()
        .map(|r| (r.node().id(), r.admin_addr().unwrap().to_string()))
        .collect();
    put(&nodes, "a", "1").await;
    let leader = leader_of(&nodes).await;

    // The admin API is not on the peer listener.
    let mut on_peer_port = AdminClient::connect(format!("http://{}", members[&leader.id()]))
        .await
        .unwrap();
    let err = on_peer_port.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(
        err.code(),
        dengine::grpc::tonic::Code::Unimplemented,
        "{err:?}"
    );

    // Node 4 starts empty (no initial members) and waits to be added.
    let s4 = settings(4, ports[3], dir.path(), &BTreeMap::new());
    let four = dengine::start(s4, MemoryStateMachine::new()).await.unwrap();

    let mut admin = AdminClient::connect(format!("http://{}", admin_addrs[&leader.id()]))
        .await
        .unwrap();
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.role, "leader");
    assert_eq!(status.membership.as_ref().unwrap().voters.len(), 3);

    let reply = admin
        .add_learner(AddLearnerRequest {
            id: 4,
            address: format!("127.0.0.1:{}", ports[3]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.membership.unwrap().learners, vec![4]);
    let node4 = four.node().clone();
    wait_for("the learner to catch up", async || {
        let v = node4
            .read(Bytes::from_static(b"a"), Consistency::Stale)
            .await
            .ok()?;
        (v == "1").then_some(())
    })
    .await;
    let reply = admin
        .promote(NodeRequest { id: 4 })
        .await
        .unwrap()
        .into_inner();
    let m = reply.membership.unwrap();
    assert!(m.voters.contains(&4), "{m:?}");

    // A follower answers admin requests with where the leader is.
    let follower = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
    let mut follower_admin =
        AdminClient::connect(format!("http://{}", admin_addrs[&follower.id()]))
            .await
            .unwrap();
    let err = follower_admin
        .remove(NodeRequest { id: 4 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic_code_failed_precondition());
    assert!(
        err.message().contains("not the leader"),
        "{}",
        err.message()
    );

    let reply = admin
        .remove(NodeRequest { id: 4 })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.membership.unwrap().voters.contains(&4));
    // A removed member stops and says why (here it learns it from the committed
    // configuration, or from a member refusing its traffic).
    let node4 = four.node().clone();
    wait_for("the removed member to stop", async || {
        node4.is_stopped().then_some(())
    })
    .await;
    let reason = node4.fatal_error().unwrap_or_default();
    assert!(reason.contains("removed from the cluster"), "{reason}");
    four.shutdown().await;
    for r in running {
        r.shutdown().await;
    }
}

fn tonic_code_failed_precondition() -> dengine::grpc::tonic::Code {
    dengine::grpc::tonic::Code::FailedPrecondition
}
