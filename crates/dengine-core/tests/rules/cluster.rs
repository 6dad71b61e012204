//! A tiny in-test router for multi-node rule tests: a set of cores with in-memory logs, a
//! network queue the test controls, partitions, and optionally held-back disk writes.
//! (The full fault-injecting simulator lives in `dengine-sim`.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use dengine_core::{
    Config, Entry, EntryId, EntryPayload, FailedRead, InitialState, Membership, MemoryStore,
    Message, PeerRegression, PersistRequest, Raft, ReadState, Ready, Role, SnapshotMeta,
    StorageError,
};

pub type Node = Raft<MemoryStore>;

/// The default test configuration: fixed seed per node, defaults otherwise.
pub fn config(id: u64) -> Config {
    let mut c = Config::new(id);
    c.seed = 42;
    c
}

pub fn new_node(id: u64, voters: &[u64], tweak: &dyn Fn(&mut Config)) -> Node {
    let mut c = config(id);
    tweak(&mut c);
    let initial = InitialState {
        membership: Membership::new(voters.iter().copied()),
        ..Default::default()
    };
    Raft::new(c, MemoryStore::new(), initial).unwrap()
}

/// A node restarted from a durable log holding `entries` at hard-state term `term`.
pub fn node_with_log(id: u64, voters: &[u64], entries: &[Entry], term: u64) -> Node {
    let log = MemoryStore::new();
    log.persist_now(&PersistRequest::new(None, entries.to_vec(), true))
        .unwrap();
    let initial = InitialState {
        hard_state: dengine_core::HardState {
            term,
            vote: None,
            commit: 0,
        },
        membership: Membership::new(voters.iter().copied()),
        applied: 0,
        snapshot: None,
    };
    let mut c = config(id);
    c.check_quorum = false; // no restart lease: these tests probe single rules
    Raft::new(c, log, initial).unwrap()
}

fn id_of(node: &Node) -> u64 {
    node.id()
}

pub fn data(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry::new(term, index, EntryPayload::Blank)
}

pub fn normal(term: u64, index: u64, s: &str) -> Entry {
    Entry::new(term, index, EntryPayload::Normal(data(s)))
}

/// Takes one ready and carries out its persistence immediately ("fsync") and reports it.
pub fn persist_now(node: &mut Node, ready: &Ready) {
    if let Some(write) = &ready.persist {
        node.log_reader().persist_now(write).unwrap();
        node.on_persisted(write.done());
    }
}

/// Carries out every ready of a node outside a `Cluster` (writes made durable at once,
/// nothing applied); returns the messages it sent, in order.
pub fn settle(node: &mut Node) -> Vec<Message> {
    let mut sent = Vec::new();
    while node.has_ready() {
        let ready = node.ready();
        persist_now(node, &ready);
        sent.extend(ready.messages);
    }
    sent
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    /// Messages sent and not yet delivered, in send order.
    pub network: VecDeque<Message>,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(u64, u64)>,
    /// Nodes whose disk writes are held until `release_writes`.
    slow_disk: BTreeSet<u64>,
    held_writes: BTreeMap<u64, VecDeque<PersistRequest>>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub reads: BTreeMap<u64, Vec<ReadState>>,
    pub failed_reads: BTreeMap<u64, Vec<FailedRead>>,
    /// Followers each leader found to have lost acknowledged entries.
    pub regressions: BTreeMap<u64, Vec<PeerRegression>>,
    /// Storage errors reported by the nodes in `expect_storage_errors` (any other node's
    /// storage error fails the test).
    pub storage_errors: BTreeMap<u64, Vec<StorageError>>,
    storage_errors_expected: BTreeSet<u64>,
    /// Every snapshot taken: its metadata and the entries applied up to it (the "data").
    pub snapshots: BTreeMap<EntryId, (SnapshotMeta, Vec<Entry>)>,
    /// Each node's newest durable snapshot.
    pub node_snapshot: BTreeMap<u64, EntryId>,
    tweak: Box<dyn Fn(&mut Config)>,
    voters: Vec<u64>,
}

impl Cluster {
    pub fn new(n: u64) -> Self {
        Self::with_config(n, |_| {})
    }

    pub fn with_config(n: u64, tweak: impl Fn(&mut Config) + 'static) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| (id, new_node(id, &voters, &tweak)))
            .collect();
        Cluster {
            nodes,
            network: VecDeque::new(),
            blocked: BTreeSet::new(),
            slow_disk: BTreeSet::new(),
            held_writes: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            failed_reads: BTreeMap::new(),
            regressions: BTreeMap::new(),
            storage_errors: BTreeMap::new(),
            storage_errors_expected: BTreeSet::new(),
            snapshots: BTreeMap::new(),
            node_snapshot: BTreeMap::new(),
            tweak: Box::new(tweak),
            voters,
        }
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    /// From now on node `id`'s storage errors are recorded in `storage_errors` instead of
    /// failing the test.
    pub fn expect_storage_errors(&mut self, id: u64) {
        self.storage_errors_expected.insert(id);
    }

    /// Carries out every ready of node `id`; messages go to the network queue.
    pub fn drain(&mut self, id: u64) {
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            if !node.has_ready() {
                return;
            }
            let ready = node.ready();
            if let Some(write) = ready.persist {
                if self.slow_disk.contains(&id) {
                    self.held_writes.entry(id).or_default().push_back(write);
                } else {
                    node.log_reader().persist_now(&write).unwrap();
                    node.on_persisted(write.done());
                }
            }
            if let Some(to) = ready.compact_log_to {
                node.log_reader().purge_now(to).unwrap();
            }
            if let Some(meta) = &ready.snapshot_to_install {
                let id = meta.last_included;
                let (_, data) = self.snapshots[&id].clone();
                node.log_reader().reset_to_snapshot_now(meta).unwrap();
                self.applied.insert(id_of(node), data);
                self.node_snapshot.insert(id_of(node), id);
                node.on_snapshot_installed(id);
            }
            for e in &ready.committed_entries {
                node.on_applied(e.index);
            }
            self.applied
                .entry(id)
                .or_default()
                .extend(ready.committed_entries);
            self.reads.entry(id).or_default().extend(ready.read_states);
            self.failed_reads
                .entry(id)
                .or_default()
                .extend(ready.failed_reads);
            self.regressions
                .entry(id)
                .or_default()
                .extend(ready.regressed_peers);
            if self.storage_errors_expected.contains(&id) {
                self.storage_errors
                    .entry(id)
                    .or_default()
                    .extend(ready.storage_errors);
            } else {
                assert!(
                    ready.storage_errors.is_empty(),
                    "{:?}",
                    ready.storage_errors
                );
            }
            self.network.extend(ready.messages);
        }
    }

    /// Delivers every queued message (dropping blocked ones). Returns whether any was queued.
    pub fn deliver_all(&mut self) -> bool {
        let msgs: Vec<Message> = self.network.drain(..).collect();
        let any = !msgs.is_empty();
        for m in msgs {
            self.deliver(m);
        }
        any
    }

    pub fn deliver(&mut self, m: Message) {
        if self.blocked.contains(&(m.from, m.to)) {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&m.to) {
            node.step(m).unwrap();
        }
    }

    /// Runs every node and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.drain(id);
            }
            if !self.deliver_all() {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    pub fn tick(&mut self, id: u64) {
        self.node_mut(id).tick();
    }

    /// Ticks every node `n` times, stabilizing after each tick.
    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id);
            }
            self.stabilize();
        }
    }

    /// Makes `id` campaign and checks it wins.
    pub fn elect(&mut self, id: u64) {
        self.node_mut(id).campaign();
        self.stabilize();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} failed to win"
        );
    }

    pub fn propose(&mut self, id: u64, s: &str) -> EntryId {
        self.node_mut(id).propose(data(s)).unwrap()
    }

    /// Cuts every link between `id` and the rest, both ways.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// Drops messages from `from` to `to` only.
    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((from, to));
    }

    /// Restores the link between `a` and `b`, both ways.
    pub fn unblock_pair(&mut self, a: u64, b: u64) {
        self.blocked.remove(&(a, b));
        self.blocked.remove(&(b, a));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Holds `id`'s writes (they are neither durable nor reported) until released.
    pub fn slow_disk(&mut self, id: u64) {
        self.slow_disk.insert(id);
    }

    /// Makes held writes of `id` durable, in order, and reports them.
    pub fn release_writes(&mut self, id: u64) {
        self.slow_disk.remove(&id);
        let writes = self.held_writes.remove(&id).unwrap_or_default();
        let node = self.nodes.get_mut(&id).unwrap();
        for w in writes {
            node.log_reader().persist_now(&w).unwrap();
            node.on_persisted(w.done());
        }
    }

    /// Crashes `id` (losing held writes) and restarts it from its durable log.
    pub fn restart(&mut self, id: u64) {
        self.held_writes.remove(&id);
        self.slow_disk.remove(&id);
        let old = self.nodes.remove(&id).unwrap();
        let log = old.log_reader().clone();
        let mut c = config(id);
        (self.tweak)(&mut c);
        let applied = self
            .applied
            .get(&id)
            .and_then(|a| a.last())
            .map_or(0, |e| e.index);
        let snapshot = self
            .node_snapshot
            .get(&id)
            .map(|sid| self.snapshots[sid].0.clone());
        let initial = InitialState {
            hard_state: log.hard_state(),
            membership: Membership::new(self.voters.iter().copied()),
            applied,
            snapshot,
        };
        self.nodes.insert(id, Raft::new(c, log, initial).unwrap());
    }

    /// Takes a snapshot of node `id`'s state machine at its applied index and tells the core.
    pub fn take_snapshot(&mut self, id: u64) -> EntryId {
        let node = &self.nodes[&id];
        let index = node.applied_index();
        let last = EntryId::new(node.log_term(index).unwrap(), index);
        let meta = SnapshotMeta {
            last_included: last,
            membership: node.membership().clone(),
        };
        let data: Vec<Entry> = self
            .applied
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|e| e.index <= index)
            .cloned()
            .collect();
        self.snapshots.insert(last, (meta.clone(), data));
        self.node_snapshot.insert(id, last);
        self.node_mut(id).on_snapshot_created(meta).unwrap();
        last
    }

    /// Adds a brand-new node that knows no configuration yet (it learns it from the leader).
    pub fn add_empty_node(&mut self, id: u64) {
        self.nodes.insert(id, new_node(id, &[], &self.tweak));
    }

    pub fn leaders(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| n.id())
            .collect()
    }

    /// Payloads of the normal entries `id` has applied.
    pub fn applied_data(&self, id: u64) -> Vec<String> {
        self.applied
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(d) => Some(String::from_utf8_lossy(d).into_owned()),
                _ => None,
            })
            .collect()
    }
}

// ----- helpers for the reads / proposals / ready-contract tests --------------------------------

impl Cluster {
    /// Makes `id` campaign and routes messages one at a time until it wins, then stops before
    /// the new leader's first `ready()`: its blank entry is appended but neither written nor
    /// sent. Messages not yet delivered stay in `network`.
    pub fn campaign_until_leader(&mut self, id: u64) {
        self.node_mut(id).campaign();
        for _ in 0..100 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for other in ids {
                self.drain(other);
            }
            let mut queued = std::mem::take(&mut self.network).into_iter();
            while let Some(m) = queued.next() {
                self.deliver(m);
                if self.node(id).role() == Role::Leader {
                    self.network.extend(queued);
                    return;
                }
            }
        }
        panic!("node {id} did not win");
    }

    /// Delivers the queued messages addressed to `to` (dropping blocked ones); the others stay
    /// queued in order.
    pub fn deliver_to(&mut self, to: u64) {
        let (mine, rest): (Vec<Message>, Vec<Message>) =
            self.network.drain(..).partition(|m| m.to == to);
        self.network.extend(rest);
        for m in mine {
            self.deliver(m);
        }
    }

    /// Read states `id` has handed out so far.
    pub fn reads_of(&self, id: u64) -> Vec<ReadState> {
        self.reads.get(&id).cloned().unwrap_or_default()
    }

    /// Failed reads `id` has handed out so far.
    pub fn failed_reads_of(&self, id: u64) -> Vec<FailedRead> {
        self.failed_reads.get(&id).cloned().unwrap_or_default()
    }
}
