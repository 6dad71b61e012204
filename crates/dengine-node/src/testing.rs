//! Test support (feature `testing`): [`LocalNetwork`], an in-process [`Transport`] for tests and
//! examples — messages go straight into the receiving node's [`NodeInbox`] (a tokio channel);
//! the network can isolate nodes, cut single links and drop a fraction of messages at random —
//! and [`MemorySnapshots`], a snapshot directory in memory for deterministic simulation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use dengine_core::store::SnapshotData;
use dengine_core::{Inbox, InboxError, Message, NodeId, Transport, TransportError};
use parking_lot::Mutex;

use crate::inbox::NodeInbox;

#[derive(Default)]
struct NetState {
    inboxes: HashMap<NodeId, NodeInbox>,
    isolated: HashSet<NodeId>,
    /// Cut links, one direction each: (from, to).
    cut: HashSet<(NodeId, NodeId)>,
    /// Probability, in parts per million, that a message is dropped.
    drop_ppm: u32,
    rng: u64,
    /// Addresses each node's transport was told about (`set_peer`).
    peers: HashMap<NodeId, BTreeMap<NodeId, String>>,
    delivered: u64,
    dropped: u64,
}

impl NetState {
    fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.isolated.contains(&from)
            && !self.isolated.contains(&to)
            && !self.cut.contains(&(from, to))
    }

    /// xorshift64*: deterministic enough for tests, no dependency.
    fn chance_drop(&mut self) -> bool {
        if self.drop_ppm == 0 {
            return false;
        }
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1_000_000) < u64::from(self.drop_ppm)
    }

    /// The inbox of `to` if the message may pass.
    fn route(&mut self, from: NodeId, to: NodeId) -> Option<NodeInbox> {
        if !self.link_up(from, to) || self.chance_drop() {
            self.dropped += 1;
            return None;
        }
        let inbox = self.inboxes.get(&to).cloned();
        if inbox.is_none() {
            self.dropped += 1;
        }
        inbox
    }
}

/// An in-process network connecting nodes of one test. Cheap to clone; clones share the
/// network.
///
/// Register each node's inbox with [`register`](LocalNetwork::register) (again after a
/// restart) and give each node the transport from [`transport`](LocalNetwork::transport).
/// Nodes are addressed by id; the addresses in the membership are recorded (see
/// [`peers_of`](LocalNetwork::peers_of)) but not needed for routing.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    state: Arc<Mutex<NetState>>,
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("LocalNetwork")
            .field("nodes", &s.inboxes.keys().collect::<Vec<_>>())
            .field("isolated", &s.isolated)
            .finish_non_exhaustive()
    }
}

impl LocalNetwork {
    /// An empty network.
    pub fn new() -> Self {
        LocalNetwork {
            state: Arc::new(Mutex::new(NetState {
                rng: 0x9E37_79B9_7F4A_7C15,
                ..NetState::default()
            })),
        }
    }

    /// Delivers messages for `id` to `inbox` from now on (replacing an earlier inbox).
    pub fn register(&self, id: NodeId, inbox: NodeInbox) {
        self.state.lock().inboxes.insert(id, inbox);
    }

    /// Stops delivering to `id` (its messages are dropped).
    pub fn unregister(&self, id: NodeId) {
        self.state.lock().inboxes.remove(&id);
    }

    /// The transport of node `id`.
    pub fn transport(&self, id: NodeId) -> LocalTransport {
        LocalTransport {
            id,
            net: self.clone(),
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        self.state.lock().isolated.insert(id);
    }

    /// Reconnects an isolated node.
    pub fn reconnect(&self, id: NodeId) {
        self.state.lock().isolated.remove(&id);
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.state.lock().cut.insert((from, to));
    }

    /// Restores every link and stops random drops.
    pub fn heal(&self) {
        let mut s = self.state.lock();
        s.isolated.clear();
        s.cut.clear();
        s.drop_ppm = 0;
    }

    /// Drops each message with probability `p` (0.0 to 1.0).
    pub fn set_drop_probability(&self, p: f64) {
        self.state.lock().drop_ppm = (p.clamp(0.0, 1.0) * 1_000_000.0) as u32;
    }

    /// The peer addresses node `id`'s transport was told about with `set_peer`.
    pub fn peers_of(&self, id: NodeId) -> BTreeMap<NodeId, String> {
        self.state
            .lock()
            .peers
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Messages delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.delivered, s.dropped)
    }

    fn deliver(&self, msg: Message) {
        let (from, to) = (msg.from, msg.to);
        let Some(inbox) = self.state.lock().route(from, to) else {
            return;
        };
        let ok = inbox.deliver(msg).is_ok();
        let mut s = self.state.lock();
        if ok {
            s.delivered += 1;
        } else {
            s.dropped += 1;
        }
    }

    fn deliver_snapshot(&self, msg: Message, data: SnapshotData) -> Result<(), TransportError> {
        let (from, to) = (msg.from, msg.to);
        let Some(inbox) = self.state.lock().route(from, to) else {
            return Err(TransportError::Unreachable {
                peer: to,
                detail: "link down in the local network".into(),
            });
        };
        inbox
            .deliver_snapshot(msg, data)
            .map_err(|e| TransportError::Rejected {
                peer: to,
                detail: match e {
                    InboxError::Full => "inbox full".into(),
                    other => other.to_string(),
                },
            })
    }
}

/// One node's [`Transport`] on a [`LocalNetwork`].
#[derive(Clone, Debug)]
pub struct LocalTransport {
    id: NodeId,
    net: LocalNetwork,
}

impl Transport for LocalTransport {
    fn send(&self, message: Message) {
        self.net.deliver(message);
    }

    fn send_snapshot(
        &self,
        message: Message,
        data: SnapshotData,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let result = self.net.deliver_snapshot(message, data);
        async move {
            // Let the receiver run first, as a real stream would take a while.
            tokio::task::yield_now().await;
            result
        }
    }

    fn set_peer(&self, id: NodeId, address: String) {
        self.net
            .state
            .lock()
            .peers
            .entry(self.id)
            .or_default()
            .insert(id, address);
    }

    fn remove_peer(&self, id: NodeId) {
        if let Some(peers) = self.net.state.lock().peers.get_mut(&self.id) {
            peers.remove(&id);
        }
    }
}

/// The newest snapshots of one node, kept in memory instead of files
/// ([`NodeBuilder::snapshot_memory`](crate::NodeBuilder::snapshot_memory)): what
/// [`snapshot_dir`](crate::NodeBuilder::snapshot_dir) keeps, for a deterministic simulation,
/// where file I/O on tokio's blocking pool would let the wall clock decide the order of events.
/// A save is atomic and "durable" for as long as any clone of the value lives: keep one across
/// a simulated crash and hand it to the restarted node. Cheap to clone; clones share the
/// snapshots.
#[derive(Clone, Debug, Default)]
pub struct MemorySnapshots {
    kept: Arc<Mutex<Vec<dengine_core::store::Snapshot>>>,
}

impl MemorySnapshots {
    /// No snapshots yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest snapshot kept, if any.
    pub fn latest(&self) -> Option<dengine_core::store::Snapshot> {
        self.kept.lock().last().cloned()
    }

    /// Keeps `snapshot` (replacing one at the same index), and only the newest `keep` in all,
    /// by index, as the snapshot files are kept.
    pub(crate) fn save(&self, snapshot: dengine_core::store::Snapshot, keep: usize) {
        let mut kept = self.kept.lock();
        let index = snapshot.meta.last_included.index;
        kept.retain(|s| s.meta.last_included.index != index);
        kept.push(snapshot);
        kept.sort_by_key(|s| s.meta.last_included.index);
        let excess = kept.len().saturating_sub(keep);
        kept.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use dengine_core::store::Snapshot;
    use dengine_core::{EntryId, Membership, SnapshotMeta};

    use super::*;

    fn snap(index: u64) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                last_included: EntryId::new(1, index),
                membership: Membership::new([1]),
            },
            data: SnapshotData::from(index.to_string().into_bytes()),
        }
    }

    #[test]
    fn the_newest_snapshots_by_index_are_kept_whatever_order_they_come_in() {
        let m = MemorySnapshots::new();
        assert!(m.latest().is_none());
        for index in [5, 9, 3, 7] {
            m.save(snap(index), 2);
        }
        assert_eq!(m.latest().map(|s| s.meta.last_included.index), Some(9));
        m.save(snap(9), 2);
        let kept: Vec<u64> = m
            .kept
            .lock()
            .iter()
            .map(|s| s.meta.last_included.index)
            .collect();
        assert_eq!(kept, vec![7, 9]);
    }
}
