//! A cluster of in-process nodes on a `LocalNetwork`, and polling helpers.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::store::{MemoryStateMachine, MemoryStore, StateMachine};
use dengine_core::{LogStore, NodeId, Role};
use dengine_node::testing::LocalNetwork;
use dengine_node::{
    AdminError, Consistency, Node, NodeBuilder, NodeConfig, ProposeError, SessionLimits,
    StartError, Status,
};
use tokio::time::{Instant, sleep};

/// How long any condition may take on a loaded 2-core machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) fn settings(id: NodeId) -> NodeConfig {
    let mut s = NodeConfig::new(id);
    s.raft.tick_ms = 10;
    s.raft.election_timeout_ms = 300;
    s.raft.heartbeat_interval_ms = 50;
    s.raft.lease_drift_ms = 40;
    s.client.propose_timeout_ms = 5000;
    s.client.read_timeout_ms = 5000;
    s.shutdown.transfer_timeout_ms = 1000;
    s.snapshot.every_entries = 0;
    s.snapshot.every_bytes = 0;
    s
}

pub(crate) fn address(id: NodeId) -> String {
    format!("local-{id}")
}

/// Polls `cond` every 20 ms until it returns `Some`, or panics after [`PATIENCE`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) struct Cluster {
    pub(crate) net: LocalNetwork,
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    pub(crate) stores: BTreeMap<NodeId, MemoryStore>,
    pub(crate) settings: fn(NodeId) -> NodeConfig,
    /// When set, node `id` keeps snapshot files in `<root>/<id>`.
    pub(crate) snapshot_root: Option<std::path::PathBuf>,
    /// Client sessions on every node, when set.
    pub(crate) sessions: Option<SessionLimits>,
}

impl Cluster {
    /// Bootstraps nodes `1..=n`.
    pub(crate) async fn new(n: u64) -> Cluster {
        Self::with_settings(n, settings).await
    }

    pub(crate) async fn with_settings(n: u64, settings: fn(NodeId) -> NodeConfig) -> Cluster {
        Self::build(n, settings, None).await
    }

    pub(crate) async fn build(
        n: u64,
        settings: fn(NodeId) -> NodeConfig,
        snapshot_root: Option<std::path::PathBuf>,
    ) -> Cluster {
        Self::build_with_sessions(n, settings, snapshot_root, None).await
    }

    pub(crate) async fn build_with_sessions(
        n: u64,
        settings: fn(NodeId) -> NodeConfig,
        snapshot_root: Option<std::path::PathBuf>,
        sessions: Option<SessionLimits>,
    ) -> Cluster {
        let mut cluster = Cluster {
            net: LocalNetwork::new(),
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            settings,
            snapshot_root,
            sessions,
        };
        let members: BTreeMap<NodeId, String> = (1..=n).map(|id| (id, address(id))).collect();
        for id in 1..=n {
            let store = MemoryStore::new();
            let builder = cluster.builder(id, store.clone());
            let node = builder.bootstrap(members.clone()).await.unwrap();
            cluster.stores.insert(id, store);
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    fn builder(
        &self,
        id: NodeId,
        store: MemoryStore,
    ) -> NodeBuilder<MemoryStore, MemoryStateMachine, dengine_node::testing::LocalTransport> {
        let mut builder = NodeBuilder::new((self.settings)(id))
            .log_store(store)
            .state_machine(MemoryStateMachine::new())
            .transport(self.net.transport(id));
        if let Some(root) = &self.snapshot_root {
            builder = builder.snapshot_dir(root.join(id.to_string()));
        }
        if let Some(limits) = self.sessions {
            builder = builder.client_sessions(limits);
        }
        self.net.register(id, builder.inbox());
        builder
    }

    /// Starts node `id` with `start()` on its old store (restart), or on a new empty store
    /// (join).
    pub(crate) async fn start(&mut self, id: NodeId) -> Node {
        let store = self.stores.entry(id).or_default().clone();
        let node = self.builder(id, store).start().await.unwrap();
        self.nodes.insert(id, node.clone());
        node
    }

    /// Starts a new node `id` on an empty store that waits to be added, telling its transport
    /// where the running members are.
    pub(crate) async fn join(&mut self, id: NodeId) -> Node {
        let store = self.stores.entry(id).or_default().clone();
        let peers = self.nodes.keys().map(|&p| (p, address(p))).collect();
        let node = self.builder(id, store).join(peers).await.unwrap();
        self.nodes.insert(id, node.clone());
        node
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub(crate) async fn shutdown(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
        self.net.unregister(id);
    }

    pub(crate) async fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.kill().await;
        }
        self.net.unregister(id);
    }

    pub(crate) async fn status(&self, id: NodeId) -> Option<Status> {
        self.nodes.get(&id)?.status().await.ok()
    }

    /// Waits until the running nodes agree on one leader in one term, and returns it.
    pub(crate) async fn leader(&self) -> NodeId {
        eventually("a leader the running nodes agree on", || async move {
            let mut leader = None;
            for (&id, node) in &self.nodes {
                let st = node.status().await.ok()?;
                if st.role == Role::Leader {
                    if leader.is_some() {
                        return None;
                    }
                    leader = Some((id, st.term));
                }
            }
            let (id, term) = leader?;
            for node in self.nodes.values() {
                let st = node.status().await.ok()?;
                if st.membership.contains(node.id()) && (st.leader != Some(id) || st.term != term) {
                    return None;
                }
            }
            Some(id)
        })
        .await
    }

    /// Proposes `command` until some leader applies it; returns the response.
    pub(crate) async fn propose(&self, command: &str) -> Bytes {
        let command = Bytes::copy_from_slice(command.as_bytes());
        eventually("a proposal to be applied", || {
            let command = command.clone();
            async move {
                let leader = self.current_leader().await?;
                match self.nodes.get(&leader)?.propose(command).await {
                    Ok(r) => Some(r),
                    Err(ProposeError::Timeout) => panic!("a proposal timed out"),
                    Err(_) => None,
                }
            }
        })
        .await
    }

    /// The leader some running node reports, if any, without waiting.
    pub(crate) async fn current_leader(&self) -> Option<NodeId> {
        for node in self.nodes.values() {
            if let Ok(st) = node.status().await
                && st.role == Role::Leader
            {
                return Some(st.id);
            }
        }
        None
    }

    /// Runs an admin call on whichever node currently leads, retrying while leadership moves.
    pub(crate) async fn on_leader<T, F, Fut>(&self, what: &str, mut call: F) -> T
    where
        F: FnMut(Node) -> Fut,
        Fut: Future<Output = Result<T, AdminError>>,
    {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(leader) = self.current_leader().await
                && let Some(node) = self.nodes.get(&leader)
            {
                match call(node.clone()).await {
                    Ok(v) => return v,
                    Err(AdminError::NotLeader { .. } | AdminError::Timeout) => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            assert!(Instant::now() < deadline, "timed out: {what}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub(crate) async fn wait_applied(&self, id: NodeId, index: u64) {
        eventually(
            &format!("node {id} to apply index {index}"),
            || async move {
                let st = self.status(id).await?;
                (st.applied_index >= index).then_some(())
            },
        )
        .await
    }

    pub(crate) async fn read(&self, id: NodeId, key: &str, consistency: Consistency) -> Bytes {
        self.node(id)
            .read(Bytes::copy_from_slice(key.as_bytes()), consistency)
            .await
            .unwrap()
    }

    pub(crate) async fn shutdown_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.shutdown(id).await;
        }
    }
}

/// A single-member cluster on `store`, bootstrapped.
pub(crate) async fn single<S: LogStore>(store: S, s: NodeConfig) -> Result<Node, StartError> {
    single_with(store, s, true).await
}

/// Member 1 of a single-member cluster on `store`: bootstrapped, or restarted from the store.
pub(crate) async fn single_with<S: LogStore>(
    store: S,
    s: NodeConfig,
    bootstrap: bool,
) -> Result<Node, StartError> {
    single_running(store, MemoryStateMachine::new(), s, bootstrap).await
}

/// Member 1 of a single-member cluster on `store` running `machine`: bootstrapped, or
/// restarted from the store.
pub(crate) async fn single_running<S: LogStore, M: StateMachine>(
    store: S,
    machine: M,
    s: NodeConfig,
    bootstrap: bool,
) -> Result<Node, StartError> {
    let net = LocalNetwork::new();
    let b = NodeBuilder::new(s)
        .log_store(store)
        .state_machine(machine)
        .transport(net.transport(1));
    net.register(1, b.inbox());
    if bootstrap {
        b.bootstrap([(1, address(1))].into()).await
    } else {
        b.start().await
    }
}

/// Settings that take a snapshot (and compact the whole log) every 5 entries.
pub(crate) fn compacting(id: NodeId) -> NodeConfig {
    let mut s = settings(id);
    s.snapshot.every_entries = 5;
    s.snapshot.trailing_entries = 0;
    s
}

/// On a cluster of [`compacting`] nodes: a follower misses 12 writes while down and catches
/// up through a snapshot. Returns the leader and that follower.
pub(crate) async fn catch_up_by_snapshot(c: &mut Cluster) -> (NodeId, NodeId) {
    c.propose("a=1").await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.shutdown(follower).await;
    for i in 0..12 {
        c.propose(&format!("k{i}=v")).await;
    }
    c.start(follower).await;
    let commit = c.status(leader).await.unwrap().commit_index;
    c.wait_applied(follower, commit).await;
    (leader, follower)
}

/// Waits until a single-member cluster's node leads and has applied its first entry.
pub(crate) async fn wait_leader(node: &Node) {
    eventually("the single node to lead", || {
        let node = node.clone();
        async move {
            let st = node.status().await.ok()?;
            (st.role == dengine_core::Role::Leader && st.applied_index >= 1).then_some(())
        }
    })
    .await;
}
